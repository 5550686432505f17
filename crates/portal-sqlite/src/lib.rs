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

use portal_core::ports::{Changes, IssuedBills, JobRun, StoreError, Unique};
use portal_sql::plan::{self, AccountWrite, MemberWrite, Row, Table, Value};
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
    lane: std::sync::Arc<portal_sql::lane::Lane<sqlx::Sqlite>>,
    cache: std::sync::Arc<portal_sql::cache::AccountCache>,
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
    SQL.get_or_init(|| {
        let ids = |c: &str| format!("{c} IN (SELECT unhex(value) FROM json_each($1))");
        (LoadSql::new(ids), LoadSql::by_range())
    })
}

/// The id and version of each account of the list `$1`.
const ACCOUNT_VERSIONS: &str =
    "SELECT id, version FROM accounts WHERE id IN (SELECT unhex(value) FROM json_each($1))";

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

type Query<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

async fn exec(tx: &mut Tx<'_>, q: Query<'_>) -> StoreResult<u64> {
    Ok(q.execute(&mut **tx).await.map_err(db_err)?.rows_affected())
}

/// Binds `v` to `q`.
fn bind(q: Query<'_>, v: Value) -> Query<'_> {
    match v {
        Value::Id(x) => q.bind(x),
        Value::Text(x) | Value::Json(x) | Value::Jsonb(x) => q.bind(x),
        Value::Int(x) => q.bind(x),
        Value::Bool(x) => q.bind(x),
        Value::Date(x) => q.bind(x),
        Value::Time(x) => q.bind(x),
        Value::Bytes(x) => q.bind(x),
    }
}

/// Inserts a table's rows one by one, with its conflict clause; `Conflict` when a checked row
/// is not written (its id belongs to another account).
async fn put(tx: &mut Tx<'_>, t: Table) -> StoreResult<()> {
    let (name, columns, conflict, checked) = (t.name, t.columns, t.on_conflict_sql(), t.checked());
    let more: String = (2..=t.names().count()).map(|i| format!(", ${i}")).collect();
    let sql = format!("INSERT INTO {name} ({columns}) VALUES ($1{more}){conflict}");
    each_row(tx, &sql, t.rows, checked).await
}

/// Bumps each account's version (`id`, `version`, then what is written) where it is still
/// the one it was loaded at; `Conflict` when it moved on.
async fn versions(tx: &mut Tx<'_>, t: Table, is_new: bool) -> StoreResult<()> {
    if is_new {
        return put(tx, t).await;
    }
    let sets: String = (t.names().enumerate().skip(2))
        .map(|(i, c)| format!(", {c} = ${}", i + 1))
        .collect();
    let sql =
        format!("UPDATE accounts SET version = version + 1{sets} WHERE id = $1 AND version = $2");
    each_row(tx, &sql, t.rows, true).await
}

/// Runs `sql` for each row, its values bound; `Conflict` when `checked` and a row is not
/// written.
async fn each_row(tx: &mut Tx<'_>, sql: &str, rows: Vec<Row>, checked: bool) -> StoreResult<()> {
    for row in rows {
        if exec(tx, row.into_iter().fold(sqlx::query(sql), bind)).await? != 1 && checked {
            return Err(StoreError::Conflict);
        }
    }
    Ok(())
}

/// Writes one account's rows; `Conflict` when its version moved on or a row id belongs to
/// another account.
async fn write_account(tx: &mut Tx<'_>, w: AccountWrite) -> StoreResult<()> {
    versions(tx, w.header, w.is_new).await?;
    match w.member {
        MemberWrite::Unchanged => {}
        MemberWrite::Delete => {
            let q = sqlx::query("DELETE FROM members WHERE account_id = $1").bind(w.id);
            exec(tx, q).await?;
        }
        MemberWrite::Put(t) => put(tx, t).await?,
    }
    for c in w.collections {
        if let Some(keep) = &c.keep {
            let sql = format!(
                "DELETE FROM {} WHERE account_id = $1
                 AND id NOT IN (SELECT unhex(value) FROM json_each($2))",
                c.rows.name
            );
            exec(tx, sqlx::query(&sql).bind(w.id).bind(ids_arg(keep))).await?;
        }
        put(tx, c.rows).await?;
    }
    put(tx, w.bills).await?;
    put(tx, w.payments).await?;
    // Changed allocations are rewritten whole (a handful of rows).
    for p in &w.allocated {
        let q = sqlx::query("DELETE FROM allocations WHERE payment_id = $1").bind(p);
        exec(tx, q).await?;
    }
    put(tx, w.allocations).await
}

/// The deletes of sessions and the use of a reset token.
async fn removals(tx: &mut Tx<'_>, c: &Changes) -> StoreResult<()> {
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
    if let Some((acc, at)) = &c.end_reset_tokens_of {
        let q = sqlx::query(
            "UPDATE reset_tokens SET used_at = $2 WHERE account_id = $1 AND used_at IS NULL",
        )
        .bind(acc.uuid())
        .bind(*at);
        exec(tx, q).await?;
    }
    Ok(())
}

impl SqliteStore {
    async fn write(&self, changes: &Changes) -> StoreResult<()> {
        let account = changes.account.as_ref().map(AccountWrite::of).transpose()?;
        let records = plan::records(changes)?;
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        if let Some(w) = account {
            write_account(&mut tx, w).await?;
        }
        removals(&mut tx, changes).await?;
        for t in records {
            put(&mut tx, t).await?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn write_bills(&self, batch: Vec<IssuedBills>) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        for b in &batch {
            let version = i64::try_from(b.version).map_err(|e| corrupt("version", e))?;
            let row = vec![b.account.uuid().into(), version.into()];
            versions(&mut tx, plan::versions("id, version", vec![row]), false).await?;
            let bills = (b.bills.iter())
                .map(|(pos, bill)| plan::bill_row(b.account.uuid(), *pos, bill))
                .collect::<StoreResult<_>>()?;
            put(&mut tx, plan::bills(bills, false)).await?;
            put(&mut tx, plan::audit(&b.audit)?).await?;
            put(&mut tx, plan::outbox(&b.outbox)?).await?;
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
}

/// Leases up to `$6` unfinished chunks of run `$1`/`$2` whose lease is free at `$4` to worker
/// `$3` until `$5`: one statement, atomic, and SQLite runs one writer at a time.
const CLAIM_CHUNKS: &str = "UPDATE work_items SET leased_by = $3, leased_until = $5
     WHERE rowid IN (SELECT rowid FROM work_items
                     WHERE job = $1 AND period = $2 AND finished_at IS NULL
                       AND (leased_until IS NULL OR leased_until <= $4)
                     ORDER BY account_id LIMIT $6)
     RETURNING account_id, last_account_id";

/// Marks the chunks starting at the ids `$4` of run `$1`/`$2` finished at `$3`.
const FINISH_CHUNKS: &str = "UPDATE work_items SET finished_at = $3, leased_until = NULL
     WHERE job = $1 AND period = $2 AND account_id IN (SELECT unhex(value) FROM json_each($4))";

/// Leases up to `$4` messages due at `$2` to worker `$1` until `$3`.
const CLAIM_DUE: &str = "UPDATE outbox SET leased_by = $1, leased_until = $3
     WHERE seq IN (SELECT seq FROM outbox
                   WHERE sent_at IS NULL AND NOT dead AND (due_at IS NULL OR due_at <= $2)
                     AND (leased_until IS NULL OR leased_until <= $2)
                   ORDER BY seq LIMIT $4)
     RETURNING seq, id, notice, created_at, attempts";
