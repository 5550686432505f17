//! PostgreSQL storage: `PgStore` implements `Store`, `WorkQueue` and `Outbox` of `portal-core`
//! through the shared layer of `portal-sql`; this crate holds what PostgreSQL does its own way.
//!
//! - A commit is **one statement**: data-modifying CTEs write the account header with its
//!   version check, the rows that changed, audit entries, outbox rows, idempotency records,
//!   sessions and tokens, and the final `SELECT` refuses (raises, so nothing is written) when a
//!   check fails. A single statement is atomic by itself: one round trip, no `BEGIN`/`COMMIT`.
//!   Every write of an account's rows waits for the header's update (`EXISTS (SELECT FROM
//!   acct)`), so the account row is always locked first and concurrent commits never deadlock
//!   on its rows. A unique violation is reported as `StoreError::Duplicate` naming the rule.
//! - A load of accounts by id is one statement too (each table's rows aggregated to a JSON
//!   array), so an aggregate is read from one snapshot, never half old, half new; a job's
//!   chunk (a range of ids) reads typed rows in one `REPEATABLE READ` transaction.
//! - Work and outbox claims use `FOR UPDATE SKIP LOCKED`, so any number of instances share them.

use chrono::{DateTime, Utc};
use portal_core::ports::{
    Changes, IssuedBills, JobRun, OutboxMessage, StoreError, Unique, WorkChunk,
};
use portal_sql::plan::{
    AccountWrite, AuditRow, BillRow, CollectionWrite, HeaderRow, MemberWrite, OutboxRow,
};
use portal_sql::records::{
    AccountRecords, AllocationRecord, BillRecord, ChunkRecord, ClaimedRecord, CollectionRecord,
    HeaderRecord, PaymentRecord, in_queue_order,
};
use portal_sql::sql::LoadSql;
use portal_sql::{StoreResult, corrupt};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{Arguments, Encode, Postgres, Type};
use std::sync::OnceLock;
use std::time::Duration;
use uuid::Uuid;

/// The embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Applies every pending migration; safe to run any number of times and from several
/// instances at once (sqlx takes an advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Connects a pool with sensible timeouts.
///
/// Its sessions plan each prepared statement once (`plan_cache_mode = force_generic_plan`).
/// Every statement of the store is an index lookup by key, id list or id range whose best
/// plan does not depend on the values bound; left to choose, PostgreSQL re-plans the
/// `= ANY($1)` loads on every call (a custom plan looks cheaper than a generic one for an
/// array of unknown length), and planning the three account queries cost more than running
/// them (0.76 ms against 0.32 ms per load, measured with `pg_stat_statements`).
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options = url.parse::<PgConnectOptions>()?.options([
        ("plan_cache_mode", "force_generic_plan"),
        // The load reads a member's sealed SSN from JSON, where bytea is written as set.
        ("bytea_output", "hex"),
    ]);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
}

/// The PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// A store over a migrated pool.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool, for health checks.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// The SQLSTATE `portal_refuse` raises (migration 0005); its message names the refusal.
const REFUSED: &str = "PT409";

/// Maps a database error to the core's terms; unique violations name the rule broken.
fn db_err(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        match db.code().as_deref() {
            Some("23505") => {
                return match unique_rule(db.constraint()) {
                    Some(u) => StoreError::Duplicate(u),
                    None => StoreError::Conflict,
                };
            }
            Some("40001" | "40P01") => return StoreError::Conflict,
            Some(REFUSED) if db.message() == "reset_token_use" => {
                return StoreError::Duplicate(Unique::ResetTokenUse);
            }
            Some(REFUSED) => return StoreError::Conflict,
            _ => {}
        }
    }
    StoreError::Unavailable(e.to_string())
}

fn unique_rule(constraint: Option<&str>) -> Option<Unique> {
    Some(match constraint? {
        "accounts_number_unique" => Unique::AccountNumber,
        "members_username_unique" => Unique::Username,
        "members_email_unique" => Unique::Email,
        "members_ssn_unique" => Unique::Ssn,
        "idempotency_records_pkey" => Unique::IdempotencyKey,
        "payments_reference_unique" | "payments_gateway_id_unique" => Unique::PaymentReference,
        "bills_one_premium_per_month" => Unique::Bill,
        "outbox_dedupe_unique" => Unique::Notice,
        // An insert of an id that exists: someone else created it first.
        _ => return None,
    })
}

/// The load of a list of ids (`$1`) as one statement: the shared load queries, each
/// aggregated to a JSON array. One statement reads one snapshot, in one round trip, instead
/// of a `REPEATABLE READ` transaction of five queries (eight round trips): what a request
/// loading one account wants. A job's chunk of thousands of accounts reads faster as typed
/// rows (`load_chunk` of a million accounts: 22 s, against 33 s through JSON), so a range
/// runs the five queries of `by_range` in a `REPEATABLE READ` transaction.
struct Loads {
    by_ids: String,
    by_range: LoadSql,
}

fn load_sql() -> &'static Loads {
    static SQL: OnceLock<Loads> = OnceLock::new();
    SQL.get_or_init(|| {
        let q = LoadSql::new(|c| format!("{c} = ANY($1)"));
        Loads {
            by_ids: format!(
                "SELECT (SELECT json_agg(t ORDER BY t.id) FROM ({}) t) AS headers,
                    (SELECT json_agg(t ORDER BY t.kind, t.account_id, t.position) FROM ({}) t)
                        AS collections,
                    (SELECT json_agg(t ORDER BY t.account_id, t.position) FROM ({}) t) AS bills,
                    (SELECT json_agg(t ORDER BY t.payment_id, t.position) FROM ({}) t)
                        AS allocations,
                    (SELECT json_agg(t ORDER BY t.account_id, t.position) FROM ({}) t)
                        AS payments",
                q.headers, q.collections, q.bills, q.allocations, q.payments
            ),
            by_range: LoadSql::new(|c| format!("{c} BETWEEN $1 AND $2")),
        }
    })
}

/// The statement that loads accounts by a list of ids (`$1`, `uuid[]`), for benchmarks that
/// replay the store's SQL.
pub fn load_statement() -> &'static str {
    &load_sql().by_ids
}

/// The five JSON arrays of the load (`NULL` when empty).
#[derive(sqlx::FromRow)]
struct LoadRow {
    headers: Option<Json<Vec<HeaderRecord>>>,
    collections: Option<Json<Vec<CollectionRecord>>>,
    bills: Option<Json<Vec<BillRecord>>>,
    allocations: Option<Json<Vec<AllocationRecord>>>,
    payments: Option<Json<Vec<PaymentRecord>>>,
}

fn all<T>(v: Option<Json<Vec<T>>>) -> Vec<T> {
    v.map(|Json(v)| v).unwrap_or_default()
}

impl PgStore {
    /// Loads accounts whole from one snapshot, in id order, in one statement.
    async fn load_scope(
        &self,
        range: Option<(Uuid, Uuid)>,
        ids: &[Uuid],
    ) -> StoreResult<Vec<portal_core::account::Account>> {
        let sql = load_sql();
        if let Some((first, last)) = range {
            let mut tx = self.pool.begin().await.map_err(db_err)?;
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            let records = portal_sql::fetch_records!(tx, &sql.by_range, first, last);
            tx.commit().await.map_err(db_err)?;
            return records.into_accounts();
        }
        let q = sqlx::query_as::<_, LoadRow>(&sql.by_ids).bind(ids);
        let row = q.fetch_one(&self.pool).await.map_err(db_err)?;
        AccountRecords {
            headers: all(row.headers),
            collections: all(row.collections),
            bills: all(row.bills),
            allocations: all(row.allocations),
            payments: all(row.payments),
        }
        .into_accounts()
    }
}

portal_sql::sql_store!(PgStore, sqlx::Postgres);

/// One commit as one statement, built part by part: each part is a data-modifying CTE, each
/// check a condition the final `SELECT` refuses the whole statement on.
#[derive(Default)]
struct Statement {
    ctes: Vec<String>,
    checks: Vec<(String, &'static str)>,
    args: PgArguments,
    n: usize,
    /// Whether the statement writes an account: every other part then waits for its header.
    gated: bool,
}

impl Statement {
    /// Binds a value; returns its placeholder.
    fn arg<T>(&mut self, v: T) -> StoreResult<String>
    where
        T: for<'q> Encode<'q, Postgres> + Type<Postgres> + Send + 'static,
    {
        self.args.add(v).map_err(|e| corrupt("argument", e))?;
        self.n += 1;
        Ok(format!("${}", self.n))
    }

    /// Binds one column of `rows` as an array.
    fn col<R, T>(&mut self, rows: &[R], f: impl Fn(&R) -> T) -> StoreResult<String>
    where
        Vec<T>: for<'q> Encode<'q, Postgres> + Type<Postgres> + Send + 'static,
    {
        self.arg(rows.iter().map(f).collect::<Vec<T>>())
    }

    /// Binds one column of `rows` as an array of `ty`; returns `$n::ty[]`.
    fn array<R, T>(&mut self, rows: &[R], ty: &str, f: impl Fn(&R) -> T) -> StoreResult<String>
    where
        Vec<T>: for<'q> Encode<'q, Postgres> + Type<Postgres> + Send + 'static,
    {
        Ok(format!("{}::{ty}[]", self.col(rows, f)?))
    }

    /// `INSERT INTO table (..) SELECT .. FROM unnest(..)`, each column bound as an array;
    /// `json` names the columns that travel as text and are stored as `json` or `jsonb`.
    /// With `ordered`, rows go in in their order (`WITH ORDINALITY`). Gated.
    fn insert(
        &self,
        table: &str,
        cols: &[(&str, String)],
        json: &[(&str, &str)],
        ordered: bool,
    ) -> String {
        let names: Vec<&str> = cols.iter().map(|c| c.0).collect();
        let exprs: Vec<String> = names
            .iter()
            .map(|n| match json.iter().find(|j| j.0 == *n) {
                Some((_, t)) => format!("u.{n}::{t}"),
                None => format!("u.{n}"),
            })
            .collect();
        let arrays: Vec<&str> = cols.iter().map(|c| c.1.as_str()).collect();
        let (ord, n, order) = if ordered {
            (" WITH ORDINALITY", ", n", " ORDER BY u.n")
        } else {
            ("", "", "")
        };
        format!(
            "INSERT INTO {table} ({names}) SELECT {exprs} FROM unnest({arrays}){ord} AS u({names}{n}){gate}{order}",
            names = names.join(", "),
            exprs = exprs.join(", "),
            arrays = arrays.join(", "),
            gate = self.where_gate(),
        )
    }

    /// Adds a part; returns its name.
    fn part(&mut self, sql: String) -> String {
        let name = format!("w{}", self.ctes.len());
        self.ctes.push(format!("{name} AS ({sql})"));
        name
    }

    /// Adds a part whose `RETURNING` rows must number `count`, or the statement is refused.
    fn counted(&mut self, sql: String, count: usize, refusal: &'static str) {
        let name = self.part(sql);
        self.checks
            .push((format!("(SELECT count(*) FROM {name}) = {count}"), refusal));
    }

    /// `WHERE` clause that holds a part back until the account's header is written.
    fn where_gate(&self) -> &'static str {
        if self.gated {
            " WHERE EXISTS (SELECT FROM acct)"
        } else {
            ""
        }
    }

    fn and_gate(&self) -> &'static str {
        if self.gated {
            " AND EXISTS (SELECT FROM acct)"
        } else {
            ""
        }
    }

    async fn run(self, pool: &PgPool) -> StoreResult<()> {
        if self.ctes.is_empty() {
            return Ok(());
        }
        let mut verdict = String::from("SELECT ");
        if !self.checks.is_empty() {
            verdict.push_str("CASE");
            for (cond, refusal) in &self.checks {
                verdict.push_str(&format!(" WHEN NOT {cond} THEN portal_refuse('{refusal}')"));
            }
            verdict.push_str(" ELSE 0 END");
        } else {
            verdict.push('0');
        }
        let sql = format!("WITH {} {verdict}", self.ctes.join(",\n"));
        sqlx::query_with(&sql, self.args)
            .execute(pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    fn header(&mut self, w: &AccountWrite) -> StoreResult<()> {
        let h: &HeaderRow = &w.header;
        let id = self.arg(w.id)?;
        let cols = [
            ("number", self.arg(h.number.clone())?),
            ("holder_first_name", self.arg(h.first_name.clone())?),
            ("holder_last_name", self.arg(h.last_name.clone())?),
            ("holder_search", self.arg(h.search.clone())?),
            ("date_of_birth", self.arg(h.date_of_birth)?),
            ("ssn_digest", self.arg(h.ssn_digest.clone())?),
            ("ssn_last4", self.arg(h.ssn_last4.clone())?),
            ("contact_email", self.arg(h.contact_email.clone())?),
            (
                "reminders",
                format!("{}::jsonb", self.arg(h.reminders.clone())?),
            ),
            ("created_at", self.arg(h.created_at)?),
        ];
        let sql = match w.loaded_version {
            None => {
                let names: Vec<&str> = cols.iter().map(|c| c.0).collect();
                let values: Vec<&str> = cols.iter().map(|c| c.1.as_str()).collect();
                format!(
                    "INSERT INTO accounts (id, version, {}) VALUES ({id}, 1, {}) RETURNING id",
                    names.join(", "),
                    values.join(", ")
                )
            }
            Some(v) => {
                let version = self.arg(v)?;
                let sets: Vec<String> = cols.iter().map(|(c, v)| format!("{c} = {v}")).collect();
                format!(
                    "UPDATE accounts SET version = version + 1, {}
                     WHERE id = {id} AND version = {version} RETURNING id",
                    sets.join(", ")
                )
            }
        };
        self.ctes.push(format!("acct AS ({sql})"));
        self.checks
            .push(("(SELECT count(*) FROM acct) = 1".into(), "conflict"));
        self.gated = true;
        Ok(())
    }

    fn account(&mut self, w: &AccountWrite) -> StoreResult<()> {
        self.header(w)?;
        let id = self.arg(w.id)?;
        match &w.member {
            MemberWrite::Unchanged => {}
            MemberWrite::Delete => {
                let gate = self.and_gate();
                self.part(format!("DELETE FROM members WHERE account_id = {id}{gate}"));
            }
            MemberWrite::Put(m) => {
                let cols = [
                    ("account_id", id.clone()),
                    ("username", self.arg(m.username.clone())?),
                    ("username_key", self.arg(m.username_key.clone())?),
                    ("email", self.arg(m.email.clone())?),
                    ("email_key", self.arg(m.email_key.clone())?),
                    ("ssn_digest", self.arg(m.ssn_digest.clone())?),
                    ("ssn_sealed", self.arg(m.ssn_sealed.clone())?),
                    ("password_hash", self.arg(m.password_hash.clone())?),
                    ("language", self.arg(m.language)?),
                    ("email_verified_at", self.arg(m.email_verified_at)?),
                    (
                        "email_code",
                        format!("{}::jsonb", self.arg(m.email_code.clone())?),
                    ),
                    ("password_changed_at", self.arg(m.password_changed_at)?),
                    ("created_at", self.arg(m.created_at)?),
                ];
                let names: Vec<&str> = cols.iter().map(|c| c.0).collect();
                let values: Vec<&str> = cols.iter().map(|c| c.1.as_str()).collect();
                let gate = self.where_gate();
                self.part(format!(
                    "INSERT INTO members ({}) SELECT {}{gate}
                     ON CONFLICT (account_id) DO UPDATE SET {}",
                    names.join(", "),
                    values.join(", "),
                    set_excluded(&cols)
                ));
            }
        }
        for c in &w.collections {
            self.collection(&id, w.id, c)?;
        }
        self.bills(&w.bills, true)?;
        self.payments(w)?;
        Ok(())
    }

    fn collection(&mut self, id: &str, account: Uuid, c: &CollectionWrite) -> StoreResult<()> {
        let t = c.table;
        if let Some(keep) = &c.keep {
            let keep = self.arg(keep.clone())?;
            let gate = self.and_gate();
            self.part(format!(
                "DELETE FROM {t} WHERE account_id = {id} AND NOT (id = ANY({keep})){gate}"
            ));
        }
        if c.rows.is_empty() {
            return Ok(());
        }
        let cols = [
            ("id", self.array(&c.rows, "uuid", |r| r.0)?),
            ("account_id", self.array(&c.rows, "uuid", |_| account)?),
            ("position", self.array(&c.rows, "int", |r| r.1)?),
            ("data", self.array(&c.rows, "text", |r| r.2.clone())?),
        ];
        // An id of another account's row is not overwritten, and the count check refuses.
        let insert = self.insert(t, &cols, &[("data", "jsonb")], false);
        self.counted(
            format!(
                "{insert} ON CONFLICT (id) DO UPDATE SET position = excluded.position,
                     data = excluded.data WHERE {t}.account_id = excluded.account_id RETURNING 1"
            ),
            c.rows.len(),
            "conflict",
        );
        Ok(())
    }

    /// Bills: inserted, or with `upsert` updated where the account already has them.
    fn bills(&mut self, rows: &[BillRow], upsert: bool) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let cols = [
            ("id", self.array(rows, "uuid", |b| b.id)?),
            ("account_id", self.array(rows, "uuid", |b| b.account_id)?),
            ("position", self.array(rows, "bigint", |b| b.position)?),
            (
                "enrollment_id",
                self.array(rows, "uuid", |b| b.enrollment_id)?,
            ),
            ("kind_name", self.array(rows, "text", |b| b.kind_name)?),
            ("kind", self.array(rows, "text", |b| b.kind.clone())?),
            (
                "coverage_month",
                self.array(rows, "date", |b| b.coverage_month)?,
            ),
            (
                "amount_cents",
                self.array(rows, "bigint", |b| b.amount_cents)?,
            ),
            (
                "allocated_cents",
                self.array(rows, "bigint", |b| b.allocated_cents)?,
            ),
            (
                "transferred_cents",
                self.array(rows, "bigint", |b| b.transferred_cents)?,
            ),
            ("due_date", self.array(rows, "date", |b| b.due_date)?),
            ("issued_on", self.array(rows, "date", |b| b.issued_on)?),
            ("void", self.array(rows, "bool", |b| b.void)?),
            ("notices", self.array(rows, "text", |b| b.notices.clone())?),
            (
                "late_fee_assessed",
                self.array(rows, "bool", |b| b.late_fee_assessed)?,
            ),
        ];
        let insert = self.insert(
            "bills",
            &cols,
            &[("kind", "json"), ("notices", "json")],
            false,
        );
        let on_conflict = if upsert {
            format!(
                " ON CONFLICT (id) DO UPDATE SET {} WHERE bills.account_id = excluded.account_id",
                set_excluded(&cols)
            )
        } else {
            String::new()
        };
        self.counted(
            format!("{insert}{on_conflict} RETURNING 1"),
            rows.len(),
            "conflict",
        );
        Ok(())
    }

    fn payments(&mut self, w: &AccountWrite) -> StoreResult<()> {
        let rows = &w.payments;
        if rows.is_empty() {
            return Ok(());
        }
        let cols = [
            ("id", self.array(rows, "uuid", |p| p.id)?),
            ("account_id", self.array(rows, "uuid", |_| w.id)?),
            ("position", self.array(rows, "bigint", |p| p.position)?),
            (
                "reference",
                self.array(rows, "text", |p| p.reference.clone())?,
            ),
            (
                "gateway_id",
                self.array(rows, "text", |p| p.gateway_id.clone())?,
            ),
            (
                "amount_cents",
                self.array(rows, "bigint", |p| p.amount_cents)?,
            ),
            (
                "refunded_cents",
                self.array(rows, "bigint", |p| p.refunded_cents)?,
            ),
            ("status", self.array(rows, "text", |p| p.status)?),
            (
                "idempotency_key",
                self.array(rows, "text", |p| p.idempotency_key.clone())?,
            ),
            (
                "initiated_at",
                self.array(rows, "timestamptz", |p| p.initiated_at)?,
            ),
            (
                "initiated_on",
                self.array(rows, "date", |p| p.initiated_on)?,
            ),
            (
                "expected_settlement",
                self.array(rows, "date", |p| p.expected_settlement)?,
            ),
            ("data", self.array(rows, "text", |p| p.data.clone())?),
        ];
        let insert = self.insert("payments", &cols, &[("data", "jsonb")], false);
        self.counted(
            format!(
                "{insert} ON CONFLICT (id) DO UPDATE SET {}
                 WHERE payments.account_id = excluded.account_id RETURNING 1",
                set_excluded(&cols)
            ),
            rows.len(),
            "conflict",
        );
        // Each rewritten payment's allocations become exactly its rows: the others go (a set
        // disjoint from the rows upserted, so no row is touched twice).
        let al = &w.allocations;
        let ap = self.array(al, "uuid", |a| a.payment_id)?;
        let ab = self.array(al, "uuid", |a| a.bill_id)?;
        if !w.allocated.is_empty() {
            let payments = self.arg(w.allocated.clone())?;
            let gate = self.and_gate();
            self.part(format!(
                "DELETE FROM allocations al WHERE al.payment_id = ANY({payments})
                     AND NOT EXISTS (SELECT FROM unnest({ap}, {ab}) AS n(p, b)
                                     WHERE n.p = al.payment_id AND n.b = al.bill_id){gate}"
            ));
        }
        if al.is_empty() {
            return Ok(());
        }
        let cols = [
            ("payment_id", ap),
            ("bill_id", ab),
            ("position", self.array(al, "int", |a| a.position)?),
            (
                "amount_cents",
                self.array(al, "bigint", |a| a.amount_cents)?,
            ),
        ];
        let insert = self.insert("allocations", &cols, &[], false);
        self.part(format!(
            "{insert} ON CONFLICT (payment_id, bill_id) DO UPDATE SET position = excluded.position,
                 amount_cents = excluded.amount_cents"
        ));
        Ok(())
    }

    fn audit(&mut self, rows: &[AuditRow]) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let cols = [
            ("account_id", self.array(rows, "uuid", |e| e.account_id)?),
            ("at", self.array(rows, "timestamptz", |e| e.at)?),
            ("actor", self.array(rows, "text", |e| e.actor.clone())?),
            ("entity", self.array(rows, "text", |e| e.entity.clone())?),
            ("action", self.array(rows, "text", |e| e.action.clone())?),
            ("detail", self.array(rows, "text", |e| e.detail.clone())?),
        ];
        // In order: the entries' order is the log's sequence.
        let insert = self.insert("audit_log", &cols, &[("actor", "json")], true);
        self.part(insert);
        Ok(())
    }

    fn outbox(&mut self, rows: &[OutboxRow]) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let cols = [
            ("id", self.array(rows, "uuid", |n| n.id)?),
            (
                "dedupe_key",
                self.array(rows, "text", |n| n.dedupe_key.clone())?,
            ),
            ("account_id", self.array(rows, "uuid", |n| n.account_id)?),
            ("notice", self.array(rows, "text", |n| n.notice.clone())?),
        ];
        let insert = self.insert("outbox", &cols, &[("notice", "json")], true);
        self.part(format!("{insert} ON CONFLICT (dedupe_key) DO NOTHING"));
        Ok(())
    }

    /// Sessions, reset tokens, throttles and idempotency records.
    fn records(&mut self, c: &Changes) -> StoreResult<()> {
        // A session written in this commit is never also deleted by it.
        let put: Vec<String> = c.put_sessions.iter().map(|s| s.digest.0.clone()).collect();
        if !c.put_sessions.is_empty() {
            let s = &c.put_sessions;
            let principals = s
                .iter()
                .map(|s| portal_sql::to_json("principal", &s.principal))
                .collect::<StoreResult<Vec<String>>>()?;
            let cols = [
                ("digest", format!("{}::text[]", self.arg(put.clone())?)),
                ("id", self.array(s, "uuid", |s| s.id.uuid())?),
                ("principal", format!("{}::text[]", self.arg(principals)?)),
                (
                    "account_id",
                    self.array(s, "uuid", |s| portal_sql::session_account(&s.principal))?,
                ),
                (
                    "created_at",
                    self.array(s, "timestamptz", |s| s.created_at)?,
                ),
                (
                    "last_seen_at",
                    self.array(s, "timestamptz", |s| s.last_seen_at)?,
                ),
            ];
            let insert = self.insert("sessions", &cols, &[("principal", "jsonb")], false);
            self.part(format!(
                "{insert} ON CONFLICT (digest) DO UPDATE SET {}",
                set_excluded(cols.get(1..).unwrap_or_default())
            ));
        }
        let keep = self.arg(put)?;
        let gate = self.and_gate();
        if !c.delete_sessions.is_empty() {
            let d: Vec<String> = c.delete_sessions.iter().map(|d| d.0.clone()).collect();
            let d = self.arg(d)?;
            self.part(format!(
                "DELETE FROM sessions WHERE digest = ANY({d}) AND NOT (digest = ANY({keep})){gate}"
            ));
        }
        if let Some(acc) = c.delete_all_sessions_of {
            let acc = self.arg(acc.uuid())?;
            self.part(format!(
                "DELETE FROM sessions WHERE account_id = {acc} AND NOT (digest = ANY({keep})){gate}"
            ));
        }
        if !c.put_reset_tokens.is_empty() {
            let t = &c.put_reset_tokens;
            let cols = [
                ("digest", self.array(t, "text", |t| t.digest.0.clone())?),
                (
                    "account_id",
                    self.array(t, "uuid", |t| t.account_id.uuid())?,
                ),
                (
                    "expires_at",
                    self.array(t, "timestamptz", |t| t.expires_at)?,
                ),
                ("used_at", self.array(t, "timestamptz", |t| t.used_at)?),
            ];
            let insert = self.insert("reset_tokens", &cols, &[], false);
            self.part(format!(
                "{insert} ON CONFLICT (digest) DO UPDATE SET {}",
                set_excluded(cols.get(1..).unwrap_or_default())
            ));
        }
        if let Some((digest, at)) = &c.consume_reset_token {
            let digest = self.arg(digest.0.clone())?;
            let at = self.arg(*at)?;
            // Used once, even under concurrent use: the second finds it used and is refused.
            self.counted(
                format!(
                    "UPDATE reset_tokens SET used_at = {at}
                     WHERE digest = {digest} AND used_at IS NULL{gate} RETURNING 1"
                ),
                1,
                "reset_token_use",
            );
        }
        if !c.put_throttles.is_empty() {
            let t = &c.put_throttles;
            let cols = [
                ("key", self.array(t, "text", |t| t.key.clone())?),
                (
                    "failures",
                    self.array(t, "int", |t| i32::try_from(t.failures).unwrap_or(i32::MAX))?,
                ),
                (
                    "window_started_at",
                    self.array(t, "timestamptz", |t| t.window_started_at)?,
                ),
                (
                    "locked_until",
                    self.array(t, "timestamptz", |t| t.locked_until)?,
                ),
            ];
            let insert = self.insert("login_throttles", &cols, &[], false);
            self.part(format!(
                "{insert} ON CONFLICT (key) DO UPDATE SET {}",
                set_excluded(&cols)
            ));
        }
        if !c.idempotency.is_empty() {
            let r = &c.idempotency;
            let cols = [
                ("scope", self.array(r, "text", |r| r.scope.clone())?),
                ("key", self.array(r, "text", |r| r.key.clone())?),
                (
                    "request_digest",
                    self.array(r, "text", |r| r.request_digest.clone())?,
                ),
                (
                    "payment_id",
                    self.array(r, "uuid", |r| r.payment_id.uuid())?,
                ),
                (
                    "account_id",
                    self.array(r, "uuid", |r| r.account_id.uuid())?,
                ),
                (
                    "created_at",
                    self.array(r, "timestamptz", |r| r.created_at)?,
                ),
            ];
            let insert = self.insert("idempotency_records", &cols, &[], false);
            self.part(insert);
        }
        Ok(())
    }
}

/// `a = excluded.a, ..` for the columns (all but the first, the key).
fn set_excluded(cols: &[(&str, String)]) -> String {
    let sets: Vec<String> = cols
        .iter()
        .skip(1)
        .map(|(c, _)| format!("{c} = excluded.{c}"))
        .collect();
    sets.join(", ")
}

impl PgStore {
    async fn write(&self, changes: Changes) -> StoreResult<()> {
        let mut s = Statement::default();
        if let Some(a) = &changes.account {
            s.account(&AccountWrite::of(a)?)?;
        }
        s.records(&changes)?;
        let audit = changes
            .audit
            .iter()
            .map(AuditRow::of)
            .collect::<StoreResult<Vec<_>>>()?;
        s.audit(&audit)?;
        let outbox = changes
            .outbox
            .iter()
            .map(OutboxRow::of)
            .collect::<StoreResult<Vec<_>>>()?;
        s.outbox(&outbox)?;
        s.run(&self.pool).await
    }

    /// New bills of many accounts in one statement: every account's version is checked and
    /// bumped, or nothing is written.
    async fn write_bills(&self, batch: Vec<IssuedBills>) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut s = Statement::default();
        let ids = s.col(&batch, |b| b.account.uuid())?;
        let versions = batch
            .iter()
            .map(|b| i64::try_from(b.version).map_err(|e| corrupt("version", e)))
            .collect::<StoreResult<Vec<i64>>>()?;
        let versions = s.arg(versions)?;
        s.ctes.push(format!(
            "acct AS (UPDATE accounts a SET version = a.version + 1
                 FROM unnest({ids}::uuid[], {versions}::bigint[]) AS u(id, version)
                 WHERE a.id = u.id AND a.version = u.version RETURNING a.id)"
        ));
        s.checks.push((
            format!("(SELECT count(*) FROM acct) = {}", batch.len()),
            "conflict",
        ));
        s.gated = true;
        let (mut bills, mut audit, mut outbox) = (Vec::new(), Vec::new(), Vec::new());
        for b in &batch {
            for (pos, bill) in &b.bills {
                bills.push(BillRow::of(b.account.uuid(), *pos, bill)?);
            }
            for e in &b.audit {
                audit.push(AuditRow::of(e)?);
            }
            for n in &b.outbox {
                outbox.push(OutboxRow::of(n)?);
            }
        }
        // The bills are new by construction: a plain insert (an existing id fails it all).
        s.bills(&bills, false)?;
        s.audit(&audit)?;
        s.outbox(&outbox)?;
        s.run(&self.pool).await
    }

    async fn plan(&self, run: JobRun, chunk_size: u32) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        // One planner per run at a time; the second finds the run planned.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))")
            .bind(&run.job)
            .bind(&run.period)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let done = sqlx::query(
            "INSERT INTO work_items (job, period, account_id, last_account_id)
             SELECT $1, $2, min(id::text)::uuid, max(id::text)::uuid -- (no min(uuid) before 16)
             FROM (SELECT id, (row_number() OVER (ORDER BY id) - 1) / $3 AS chunk FROM accounts) c
             WHERE NOT EXISTS (SELECT 1 FROM work_items WHERE job = $1 AND period = $2)
             GROUP BY chunk",
        )
        .bind(&run.job)
        .bind(&run.period)
        .bind(i64::from(chunk_size.max(1)))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(done.rows_affected())
    }

    async fn claim_chunks(
        &self,
        run: JobRun,
        worker: String,
        limit: u32,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<Vec<WorkChunk>> {
        let rows: Vec<ChunkRecord> = sqlx::query_as(
            // MATERIALIZED: the selection must run once; a subquery in UPDATE .. FROM can be
            // re-run per row and, after the first rows are leased, pick more than LIMIT.
            "WITH c AS MATERIALIZED (
                 SELECT account_id FROM work_items
                 WHERE job = $1 AND period = $2 AND finished_at IS NULL
                   AND (leased_until IS NULL OR leased_until <= $4)
                 ORDER BY account_id LIMIT $6 FOR UPDATE SKIP LOCKED)
             UPDATE work_items w SET leased_by = $3, leased_until = $5
             FROM c WHERE w.job = $1 AND w.period = $2 AND w.account_id = c.account_id
             RETURNING w.account_id, w.last_account_id",
        )
        .bind(run.job)
        .bind(run.period)
        .bind(worker)
        .bind(now)
        .bind(lease_until)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn finish_chunks(
        &self,
        run: JobRun,
        chunks: Vec<WorkChunk>,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let ids: Vec<Uuid> = chunks.into_iter().map(|c| c.first.uuid()).collect();
        sqlx::query(
            "UPDATE work_items SET finished_at = $3, leased_until = NULL
             WHERE job = $1 AND period = $2 AND account_id = ANY($4)",
        )
        .bind(run.job)
        .bind(run.period)
        .bind(now)
        .bind(&ids)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn claim_due(
        &self,
        worker: String,
        limit: u32,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<Vec<OutboxMessage>> {
        let rows: Vec<ClaimedRecord> = sqlx::query_as(
            "WITH c AS MATERIALIZED (
                 SELECT id FROM outbox
                 WHERE sent_at IS NULL AND NOT dead AND (due_at IS NULL OR due_at <= $2)
                   AND (leased_until IS NULL OR leased_until <= $2)
                 ORDER BY seq LIMIT $4 FOR UPDATE SKIP LOCKED)
             UPDATE outbox o SET leased_by = $1, leased_until = $3
             FROM c WHERE o.id = c.id
             RETURNING o.seq, o.id, o.notice, o.created_at, o.attempts",
        )
        .bind(worker)
        .bind(now)
        .bind(lease_until)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        in_queue_order(rows)
    }
}
