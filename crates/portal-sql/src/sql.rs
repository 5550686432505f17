//! The statements both dialects run with the same text. Parameters are `$n` (SQLite reads
//! them too); booleans are written `dead` / `NOT dead` / `FALSE`, which both accept.

/// The queries that load accounts whole, for a condition on the account id column that a
/// dialect supplies (a list of ids or a range of them).
#[derive(Debug)]
pub struct LoadSql {
    pub headers: String,
    pub collections: String,
    pub bills: String,
    pub allocations: String,
    pub payments: String,
}

impl LoadSql {
    /// The queries for the accounts whose ids lie between `$1` and `$2`.
    pub fn by_range() -> Self {
        Self::new(|c| format!("{c} BETWEEN $1 AND $2"))
    }

    /// The queries with `condition(column)` selecting the accounts.
    pub fn new(condition: impl Fn(&str) -> String) -> Self {
        let part = |kind: u8, table: &str| {
            format!(
                "SELECT {kind} AS kind, account_id, position, CAST(data AS TEXT) AS data FROM {table} WHERE {}",
                condition("account_id")
            )
        };
        LoadSql {
            headers: format!(
                "SELECT a.*, m.username, m.email, m.ssn_digest AS m_ssn_digest, m.ssn_sealed,
                        m.password_hash, m.language, m.email_verified_at, m.email_code,
                        m.password_changed_at, m.created_at AS m_created_at, m.account_id AS member_of
                 FROM accounts a LEFT JOIN members m ON m.account_id = a.id WHERE {}
                 ORDER BY a.id",
                condition("a.id")
            ),
            // The four small collections in one query (one round trip).
            collections: format!(
                "{} UNION ALL {} UNION ALL {} UNION ALL {} ORDER BY kind, account_id, position",
                part(0, "enrollments"),
                part(1, "payment_methods"),
                part(2, "mandates"),
                part(3, "plans")
            ),
            bills: format!(
                "SELECT * FROM bills WHERE {} ORDER BY account_id, position",
                condition("account_id")
            ),
            allocations: format!(
                "SELECT al.payment_id, al.bill_id, al.position, al.amount_cents FROM allocations al
                 JOIN payments p ON p.id = al.payment_id WHERE {}
                 ORDER BY al.payment_id, al.position",
                condition("p.account_id")
            ),
            payments: format!(
                "SELECT * FROM payments WHERE {} ORDER BY account_id, position",
                condition("account_id")
            ),
        }
    }
}

pub const ACCOUNT_BY_NUMBER: &str = "SELECT id FROM accounts WHERE number = $1";
pub const ACCOUNT_BY_USERNAME: &str =
    "SELECT account_id AS id FROM members WHERE username_key = $1";
pub const ACCOUNT_BY_EMAIL: &str = "SELECT account_id AS id FROM members WHERE email_key = $1";
pub const ACCOUNT_BY_MEMBER_SSN: &str =
    "SELECT account_id AS id FROM members WHERE ssn_digest = $1";
pub const PAYMENT_BY_REFERENCE: &str = "SELECT account_id, id FROM payments WHERE reference = $1";
pub const PAYMENT_BY_GATEWAY_ID: &str = "SELECT account_id, id FROM payments WHERE gateway_id = $1";
pub const PAYMENT_BY_ID: &str = "SELECT account_id, id FROM payments WHERE id = $1";
pub const IDEMPOTENCY_RECORD: &str =
    "SELECT * FROM idempotency_records WHERE scope = $1 AND key = $2";
pub const SESSION: &str = "SELECT * FROM sessions WHERE digest = $1";
pub const RESET_TOKEN: &str = "SELECT * FROM reset_tokens WHERE digest = $1";
pub const LOGIN_THROTTLE: &str = "SELECT * FROM login_throttles WHERE key = $1";
pub const ACCOUNT_IDS: &str =
    "SELECT id FROM accounts WHERE $1 IS NULL OR id > $1 ORDER BY id LIMIT $2";
pub const SEARCH_ACCOUNTS: &str = "SELECT a.id FROM accounts a
     LEFT JOIN members m ON m.account_id = a.id
     WHERE a.holder_search LIKE $1 ESCAPE '\\' OR m.email_key LIKE $1 ESCAPE '\\'
        OR m.username_key LIKE $1 ESCAPE '\\'
     ORDER BY a.id LIMIT $2";
/// The lease end of each unfinished chunk of run `$1`/`$2`.
pub const UNFINISHED_LEASES: &str =
    "SELECT leased_until FROM work_items WHERE job = $1 AND period = $2 AND finished_at IS NULL";
pub const AUDIT_TRAIL: &str = "SELECT * FROM audit_log WHERE account_id = $1 ORDER BY seq";

pub const MARK_SENT: &str = "UPDATE outbox SET sent_at = $2, message_id = $3,
         attempts = attempts + 1, leased_until = NULL
     WHERE id = $1";
pub const MARK_FAILED: &str = "UPDATE outbox SET attempts = attempts + 1, last_error = $2,
         leased_until = NULL, due_at = COALESCE($3, due_at), dead = ($3 IS NULL)
     WHERE id = $1";
pub const DEAD_LETTERS: &str = "SELECT * FROM outbox WHERE dead ORDER BY seq LIMIT $1";
pub const REQUEUE: &str =
    "UPDATE outbox SET dead = FALSE, due_at = $2, attempts = 0 WHERE id = $1 AND dead";
pub const PENDING_MESSAGES: &str =
    "SELECT * FROM outbox WHERE sent_at IS NULL AND NOT dead ORDER BY seq LIMIT $1";
