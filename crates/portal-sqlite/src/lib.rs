//! SQLite storage, the embedded default: `SqliteStore` implements `Store`, `WorkQueue` and
//! `Outbox` of `portal-core` through the shared layer of `portal-sql`, with the same schema
//! and rules as the PostgreSQL store; this crate holds what SQLite does its own way.
//!
//! - An account commit is one transaction, written statement by statement from the rows the
//!   shared layer computes: the version check (`UPDATE .. WHERE version = $n`; SQLite runs one
//!   writer at a time, so the check cannot race), the rows that changed, audit entries, outbox
//!   rows, idempotency records, sessions and tokens. A unique violation rolls all of it back
//!   and is reported as `StoreError::Duplicate` naming the rule.
//! - The database runs in WAL mode, so loads read one consistent snapshot while a writer works.
//! - SQLite has one writer at a time; work and outbox claims are single `UPDATE .. RETURNING`
//!   statements, atomic by themselves, so several tasks of one process share them safely.

use chrono::{DateTime, Utc};
use portal_core::ports::{
    Changes, IssuedBills, JobRun, OutboxMessage, StoreError, Unique, WorkChunk,
};
use portal_sql::plan::{AccountWrite, AuditRow, BillRow, MemberWrite, OutboxRow};
use portal_sql::records::{ChunkRecord, ClaimedRecord, in_queue_order};
use portal_sql::sql::LoadSql;
use portal_sql::{StoreResult, corrupt};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;
use uuid::Uuid;

/// The embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Applies every pending migration; safe to run any number of times.
pub async fn migrate(pool: &SqlitePool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Opens (creating if needed) the database file with WAL, foreign keys and a busy timeout.
pub async fn open(path: &Path, max_connections: u32) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        // 16 MiB of page cache per connection (SQLite's default is 2 MiB): batch jobs read
        // whole chunks of accounts.
        .pragma("cache_size", "-16384")
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
}

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// A store over a migrated pool.
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// The pool, for health checks.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// Maps a database error to the core's terms; unique violations name the rule broken.
fn db_err(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        // SQLITE_CONSTRAINT_UNIQUE and SQLITE_CONSTRAINT_PRIMARYKEY name the columns only in
        // the message: "UNIQUE constraint failed: members.username_key".
        if matches!(db.code().as_deref(), Some("2067" | "1555")) {
            return match unique_rule(db.message()) {
                Some(u) => StoreError::Duplicate(u),
                None => StoreError::Conflict,
            };
        }
        if matches!(db.code().as_deref(), Some("5" | "6" | "517")) {
            return StoreError::Unavailable("the database is busy".into());
        }
    }
    StoreError::Unavailable(e.to_string())
}

fn unique_rule(message: &str) -> Option<Unique> {
    let columns = message.split_once("failed: ").map(|(_, c)| c)?;
    Some(match columns {
        "accounts.number" => Unique::AccountNumber,
        "members.username_key" => Unique::Username,
        "members.email_key" => Unique::Email,
        "members.ssn_digest" => Unique::Ssn,
        "idempotency_records.scope, idempotency_records.key" => Unique::IdempotencyKey,
        "payments.reference" | "payments.gateway_id" => Unique::PaymentReference,
        "bills.enrollment_id, bills.coverage_month" => Unique::Bill,
        "outbox.dedupe_key" => Unique::Notice,
        // An insert of an id that exists: someone else created it first.
        _ => return None,
    })
}

/// `IN` over the ids bound as `$1`: a JSON array of hex ids (SQLite binds no arrays).
fn load_sql() -> &'static (LoadSql, LoadSql) {
    static SQL: OnceLock<(LoadSql, LoadSql)> = OnceLock::new();
    portal_sql::sql::load_sql_once(&SQL, |c| {
        format!("{c} IN (SELECT unhex(value) FROM json_each($1))")
    })
}

fn ids_arg(ids: &[Uuid]) -> String {
    let hex: Vec<String> = ids.iter().map(|i| i.simple().to_string()).collect();
    serde_json::to_string(&hex).unwrap_or_else(|_| "[]".into())
}

portal_sql::sql_store!(SqliteStore, sqlx::Sqlite);

impl SqliteStore {
    /// Loads accounts whole, in id order: the shared load queries, in one read transaction
    /// (in WAL mode it sees one snapshot from its first read on).
    async fn load_scope(
        &self,
        range: Option<(Uuid, Uuid)>,
        ids: &[Uuid],
    ) -> StoreResult<Vec<portal_core::account::Account>> {
        let (by_ids, by_range) = load_sql();
        let ids = ids_arg(ids);
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let records = match range {
            Some((first, last)) => portal_sql::fetch_records!(tx, by_range, first, last),
            None => portal_sql::fetch_records!(tx, by_ids, &ids),
        };
        tx.commit().await.map_err(db_err)?;
        records.into_accounts()
    }
}

type Tx<'a> = Transaction<'a, Sqlite>;

async fn exec<'q>(
    tx: &mut Tx<'_>,
    q: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
) -> StoreResult<u64> {
    Ok(q.execute(&mut **tx).await.map_err(db_err)?.rows_affected())
}

/// Writes one account's rows; `Conflict` when its version moved on or a row id belongs to
/// another account.
async fn write_account(tx: &mut Tx<'_>, w: &AccountWrite) -> StoreResult<()> {
    let h = &w.header;
    let q = match w.loaded_version {
        None => sqlx::query(
            "INSERT INTO accounts (number, holder_first_name, holder_last_name, holder_search,
                 date_of_birth, ssn_digest, ssn_last4, contact_email, reminders, created_at, id,
                 version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 1)",
        ),
        Some(_) => sqlx::query(
            "UPDATE accounts SET version = version + 1, number = $1, holder_first_name = $2,
                 holder_last_name = $3, holder_search = $4, date_of_birth = $5, ssn_digest = $6,
                 ssn_last4 = $7, contact_email = $8, reminders = $9, created_at = $10
             WHERE id = $11 AND version = $12",
        ),
    };
    let q = q
        .bind(&h.number)
        .bind(&h.first_name)
        .bind(&h.last_name)
        .bind(&h.search)
        .bind(h.date_of_birth)
        .bind(&h.ssn_digest)
        .bind(&h.ssn_last4)
        .bind(&h.contact_email)
        .bind(&h.reminders)
        .bind(h.created_at)
        .bind(w.id)
        .bind(w.loaded_version);
    if exec(tx, q).await? != 1 {
        return Err(StoreError::Conflict);
    }
    match &w.member {
        MemberWrite::Unchanged => {}
        MemberWrite::Delete => {
            exec(
                tx,
                sqlx::query("DELETE FROM members WHERE account_id = $1").bind(w.id),
            )
            .await?;
        }
        MemberWrite::Put(m) => {
            let q = sqlx::query(
                "INSERT INTO members (account_id, username, username_key, email, email_key, ssn_digest,
                     ssn_sealed, password_hash, language, email_verified_at, email_code,
                     password_changed_at, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                 ON CONFLICT (account_id) DO UPDATE SET username = $2, username_key = $3, email = $4,
                     email_key = $5, ssn_digest = $6, ssn_sealed = $7, password_hash = $8, language = $9,
                     email_verified_at = $10, email_code = $11, password_changed_at = $12, created_at = $13",
            )
            .bind(w.id)
            .bind(&m.username)
            .bind(&m.username_key)
            .bind(&m.email)
            .bind(&m.email_key)
            .bind(&m.ssn_digest)
            .bind(&m.ssn_sealed)
            .bind(&m.password_hash)
            .bind(m.language)
            .bind(m.email_verified_at)
            .bind(&m.email_code)
            .bind(m.password_changed_at)
            .bind(m.created_at);
            exec(tx, q).await?;
        }
    }
    for c in &w.collections {
        let t = c.table;
        if let Some(keep) = &c.keep {
            let sql = format!(
                "DELETE FROM {t} WHERE account_id = $1
                 AND id NOT IN (SELECT unhex(value) FROM json_each($2))"
            );
            exec(tx, sqlx::query(&sql).bind(w.id).bind(ids_arg(keep))).await?;
        }
        let sql = format!(
            "INSERT INTO {t} (id, account_id, position, data) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET position = excluded.position, data = excluded.data
             WHERE {t}.account_id = excluded.account_id"
        );
        for (id, pos, data) in &c.rows {
            let q = sqlx::query(&sql).bind(id).bind(w.id).bind(pos).bind(data);
            if exec(tx, q).await? != 1 {
                // The id belongs to another account.
                return Err(StoreError::Conflict);
            }
        }
    }
    for b in &w.bills {
        write_bill(tx, b, true).await?;
    }
    for p in &w.payments {
        let q = sqlx::query(
            "INSERT INTO payments (id, account_id, position, reference, gateway_id, amount_cents,
                 refunded_cents, status, idempotency_key, initiated_at, initiated_on, expected_settlement, data)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (id) DO UPDATE SET position = $3, reference = $4, gateway_id = $5,
                 amount_cents = $6, refunded_cents = $7, status = $8, idempotency_key = $9,
                 initiated_at = $10, initiated_on = $11, expected_settlement = $12, data = $13
             WHERE payments.account_id = $2",
        )
        .bind(p.id)
        .bind(w.id)
        .bind(p.position)
        .bind(&p.reference)
        .bind(&p.gateway_id)
        .bind(p.amount_cents)
        .bind(p.refunded_cents)
        .bind(p.status)
        .bind(&p.idempotency_key)
        .bind(p.initiated_at)
        .bind(p.initiated_on)
        .bind(p.expected_settlement)
        .bind(&p.data);
        if exec(tx, q).await? != 1 {
            return Err(StoreError::Conflict);
        }
    }
    // Changed allocations are rewritten whole (a handful of rows).
    for p in &w.allocated {
        let q = sqlx::query("DELETE FROM allocations WHERE payment_id = $1").bind(p);
        exec(tx, q).await?;
    }
    for al in &w.allocations {
        let q = sqlx::query(
            "INSERT INTO allocations (payment_id, bill_id, position, amount_cents) VALUES ($1, $2, $3, $4)",
        )
        .bind(al.payment_id)
        .bind(al.bill_id)
        .bind(al.position)
        .bind(al.amount_cents);
        exec(tx, q).await?;
    }
    Ok(())
}

/// Inserts a bill; with `upsert`, updates it instead if the account already has it.
async fn write_bill(tx: &mut Tx<'_>, b: &BillRow, upsert: bool) -> StoreResult<()> {
    let on_conflict = if upsert {
        " ON CONFLICT (id) DO UPDATE SET position = $3, enrollment_id = $4, kind_name = $5,
             kind = $6, coverage_month = $7, amount_cents = $8, allocated_cents = $9,
             transferred_cents = $10, due_date = $11, issued_on = $12, void = $13, notices = $14,
             late_fee_assessed = $15
         WHERE bills.account_id = $2"
    } else {
        ""
    };
    let sql = format!(
        "INSERT INTO bills (id, account_id, position, enrollment_id, kind_name, kind, coverage_month,
             amount_cents, allocated_cents, transferred_cents, due_date, issued_on, void, notices,
             late_fee_assessed)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15){on_conflict}"
    );
    let q = sqlx::query(&sql)
        .bind(b.id)
        .bind(b.account_id)
        .bind(b.position)
        .bind(b.enrollment_id)
        .bind(b.kind_name)
        .bind(&b.kind)
        .bind(b.coverage_month)
        .bind(b.amount_cents)
        .bind(b.allocated_cents)
        .bind(b.transferred_cents)
        .bind(b.due_date)
        .bind(b.issued_on)
        .bind(b.void)
        .bind(&b.notices)
        .bind(b.late_fee_assessed);
    if exec(tx, q).await? != 1 {
        return Err(StoreError::Conflict);
    }
    Ok(())
}

async fn append_audit(tx: &mut Tx<'_>, rows: &[AuditRow]) -> StoreResult<()> {
    for e in rows {
        let q = sqlx::query(
            "INSERT INTO audit_log (account_id, at, actor, entity, action, detail)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(e.account_id)
        .bind(e.at)
        .bind(&e.actor)
        .bind(&e.entity)
        .bind(&e.action)
        .bind(&e.detail);
        exec(tx, q).await?;
    }
    Ok(())
}

/// Queues notices, skipping any whose dedupe key was queued before.
async fn queue_notices(tx: &mut Tx<'_>, rows: &[OutboxRow]) -> StoreResult<()> {
    for n in rows {
        let q = sqlx::query(
            "INSERT INTO outbox (id, dedupe_key, account_id, notice, created_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (dedupe_key) DO NOTHING",
        )
        .bind(n.id)
        .bind(&n.dedupe_key)
        .bind(n.account_id)
        .bind(&n.notice)
        .bind(Utc::now());
        exec(tx, q).await?;
    }
    Ok(())
}

/// Sessions, reset tokens, throttles and idempotency records.
async fn write_records(tx: &mut Tx<'_>, c: &Changes) -> StoreResult<()> {
    for s in &c.put_sessions {
        let q = sqlx::query(
            "INSERT INTO sessions (digest, id, principal, account_id, created_at, last_seen_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (digest) DO UPDATE SET principal = $3, account_id = $4, created_at = $5,
                 last_seen_at = $6",
        )
        .bind(&s.digest.0)
        .bind(s.id.uuid())
        .bind(portal_sql::to_json("principal", &s.principal)?)
        .bind(portal_sql::session_account(&s.principal))
        .bind(s.created_at)
        .bind(s.last_seen_at);
        exec(tx, q).await?;
    }
    // A session written in this commit is never also deleted by it.
    let put: Vec<&str> = c.put_sessions.iter().map(|s| s.digest.0.as_str()).collect();
    let keep = serde_json::to_string(&put).map_err(|e| corrupt("sessions", e))?;
    for d in &c.delete_sessions {
        let q = sqlx::query(
            "DELETE FROM sessions WHERE digest = $1 AND digest NOT IN (SELECT value FROM json_each($2))",
        );
        exec(tx, q.bind(&d.0).bind(&keep)).await?;
    }
    if let Some(acc) = c.delete_all_sessions_of {
        let q = sqlx::query(
            "DELETE FROM sessions WHERE account_id = $1
             AND digest NOT IN (SELECT value FROM json_each($2))",
        );
        exec(tx, q.bind(acc.uuid()).bind(&keep)).await?;
    }
    for t in &c.put_reset_tokens {
        let q = sqlx::query(
            "INSERT INTO reset_tokens (digest, account_id, expires_at, used_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (digest) DO UPDATE SET expires_at = $3, used_at = $4",
        )
        .bind(&t.digest.0)
        .bind(t.account_id.uuid())
        .bind(t.expires_at)
        .bind(t.used_at);
        exec(tx, q).await?;
    }
    if let Some((digest, at)) = &c.consume_reset_token {
        let q = sqlx::query(
            "UPDATE reset_tokens SET used_at = $2 WHERE digest = $1 AND used_at IS NULL",
        )
        .bind(&digest.0)
        .bind(*at);
        if exec(tx, q).await? != 1 {
            return Err(StoreError::Duplicate(Unique::ResetTokenUse));
        }
    }
    for t in &c.put_throttles {
        let q = sqlx::query(
            "INSERT INTO login_throttles (key, failures, window_started_at, locked_until)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (key) DO UPDATE SET failures = $2, window_started_at = $3, locked_until = $4",
        )
        .bind(&t.key)
        .bind(i32::try_from(t.failures).unwrap_or(i32::MAX))
        .bind(t.window_started_at)
        .bind(t.locked_until);
        exec(tx, q).await?;
    }
    for r in &c.idempotency {
        let q = sqlx::query(
            "INSERT INTO idempotency_records (scope, key, request_digest, payment_id, account_id, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&r.scope)
        .bind(&r.key)
        .bind(&r.request_digest)
        .bind(r.payment_id.uuid())
        .bind(r.account_id.uuid())
        .bind(r.created_at);
        exec(tx, q).await?;
    }
    Ok(())
}

fn rows<T, R>(items: &[T], f: impl Fn(&T) -> StoreResult<R>) -> StoreResult<Vec<R>> {
    items.iter().map(f).collect()
}

impl SqliteStore {
    async fn write(&self, changes: Changes) -> StoreResult<()> {
        let account = changes.account.as_ref().map(AccountWrite::of).transpose()?;
        let audit = rows(&changes.audit, AuditRow::of)?;
        let outbox = rows(&changes.outbox, OutboxRow::of)?;
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        if let Some(w) = &account {
            write_account(&mut tx, w).await?;
        }
        write_records(&mut tx, &changes).await?;
        append_audit(&mut tx, &audit).await?;
        queue_notices(&mut tx, &outbox).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn write_bills(&self, batch: Vec<IssuedBills>) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        for b in &batch {
            let version = i64::try_from(b.version).map_err(|e| corrupt("version", e))?;
            let q = sqlx::query(
                "UPDATE accounts SET version = version + 1 WHERE id = $1 AND version = $2",
            )
            .bind(b.account.uuid())
            .bind(version);
            if exec(&mut tx, q).await? != 1 {
                return Err(StoreError::Conflict);
            }
            for (pos, bill) in &b.bills {
                write_bill(&mut tx, &BillRow::of(b.account.uuid(), *pos, bill)?, false).await?;
            }
            append_audit(&mut tx, &rows(&b.audit, AuditRow::of)?).await?;
            queue_notices(&mut tx, &rows(&b.outbox, OutboxRow::of)?).await?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn plan(&self, run: JobRun, chunk_size: u32) -> StoreResult<u64> {
        // One statement, and SQLite runs one writer at a time: a second planner finds the run
        // planned.
        let done = sqlx::query(
            "INSERT INTO work_items (job, period, account_id, last_account_id)
             SELECT $1, $2, min(id), max(id)
             FROM (SELECT id, (row_number() OVER (ORDER BY id) - 1) / $3 AS chunk FROM accounts)
             WHERE NOT EXISTS (SELECT 1 FROM work_items WHERE job = $1 AND period = $2)
             GROUP BY chunk",
        )
        .bind(run.job)
        .bind(run.period)
        .bind(i64::from(chunk_size.max(1)))
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
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
            // One statement: atomic, and SQLite runs one writer at a time.
            "UPDATE work_items SET leased_by = $3, leased_until = $5
             WHERE rowid IN (SELECT rowid FROM work_items
                             WHERE job = $1 AND period = $2 AND finished_at IS NULL
                               AND (leased_until IS NULL OR leased_until <= $4)
                             ORDER BY account_id LIMIT $6)
             RETURNING account_id, last_account_id",
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
        let firsts: Vec<Uuid> = chunks.into_iter().map(|c| c.first.uuid()).collect();
        sqlx::query(
            "UPDATE work_items SET finished_at = $3, leased_until = NULL
             WHERE job = $1 AND period = $2
               AND account_id IN (SELECT unhex(value) FROM json_each($4))",
        )
        .bind(run.job)
        .bind(run.period)
        .bind(now)
        .bind(ids_arg(&firsts))
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
            "UPDATE outbox SET leased_by = $1, leased_until = $3
             WHERE seq IN (SELECT seq FROM outbox
                           WHERE sent_at IS NULL AND NOT dead AND (due_at IS NULL OR due_at <= $2)
                             AND (leased_until IS NULL OR leased_until <= $2)
                           ORDER BY seq LIMIT $4)
             RETURNING seq, id, notice, created_at, attempts",
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
