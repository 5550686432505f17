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
//! - Single statements (commits, loads by id, lookups, claims) run on a `portal_sql::lane::Lane`
//!   of the pool's size; transactions (a chunk's load, planning) on the pool.

use portal_core::ports::{Changes, IssuedBills, JobRun, StoreError, Unique};
use portal_sql::lane::Lane;
use portal_sql::plan::{self, AccountWrite, MemberWrite, Table, Value};
use portal_sql::records::{
    AccountRecords, AllocationRecord, BillRecord, CollectionRecord, HeaderRecord, PaymentRecord,
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
        // No round trip to test a connection on every acquire: a connection the server
        // dropped fails its next statement, which the caller sees as `Unavailable`, and the
        // pool replaces it. (The pool serves transactions; single statements run on the
        // store's `Lane`, which also skips sqlx's round trip when a connection comes back.)
        .test_before_acquire(false)
        .connect_with(options)
        .await
}

/// The PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    lane: std::sync::Arc<portal_sql::lane::Lane<sqlx::Postgres>>,
    cache: std::sync::Arc<portal_sql::cache::AccountCache>,
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
            by_range: LoadSql::by_range(),
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
        let mut lease = self.lane.lease().await.map_err(db_err)?;
        let row = q.fetch_one(lease.conn().map_err(db_err)?).await;
        let row = lease.settle(row).map_err(db_err)?;
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

    /// Binds one column's values as an array; returns `$n::type[]`.
    fn column(&mut self, col: Vec<Value>) -> StoreResult<String> {
        let ty = col.first().map_or("text", Value::pg_type);
        macro_rules! typed {
            ($variant:ident) => {
                self.arg(
                    col.into_iter()
                        .map(|v| match v {
                            Value::$variant(x) => Ok(x),
                            other => Err(corrupt("column", format!("{other:?} among {ty}"))),
                        })
                        .collect::<StoreResult<Vec<_>>>()?,
                )?
            };
        }
        let p = match col.first() {
            Some(Value::Id(_)) => typed!(Id),
            Some(Value::Text(_)) => typed!(Text),
            Some(Value::Json(_)) => typed!(Json),
            Some(Value::Jsonb(_)) => typed!(Jsonb),
            Some(Value::Int(_)) => typed!(Int),
            Some(Value::Bool(_)) => typed!(Bool),
            Some(Value::Date(_)) => typed!(Date),
            Some(Value::Time(_)) => typed!(Time),
            Some(Value::Bytes(_)) => typed!(Bytes),
            None => return Err(corrupt("column", "no rows")),
        };
        Ok(format!("{p}::{ty}[]"))
    }

    /// Binds each column of a table's rows as an array; returns the arrays, comma-separated.
    fn columns(&mut self, t: Table) -> StoreResult<String> {
        let arrays: Vec<String> = (t.into_columns().into_iter())
            .map(|c| self.column(c))
            .collect::<StoreResult<_>>()?;
        Ok(arrays.join(", "))
    }

    /// Binds one value; returns `$n::type`.
    fn value(&mut self, v: Value) -> StoreResult<String> {
        let ty = v.pg_type();
        let p = match v {
            Value::Id(x) => self.arg(x)?,
            Value::Text(x) | Value::Json(x) | Value::Jsonb(x) => self.arg(x)?,
            Value::Int(x) => self.arg(x)?,
            Value::Bool(x) => self.arg(x)?,
            Value::Date(x) => self.arg(x)?,
            Value::Time(x) => self.arg(x)?,
            Value::Bytes(x) => self.arg(x)?,
        };
        Ok(format!("{p}::{ty}"))
    }

    /// `INSERT INTO table (..) SELECT .. FROM unnest(..)`, each column bound as one array,
    /// gated, with the table's conflict clause; rows in their order where the table says so.
    fn insert(&mut self, t: Table) -> StoreResult<String> {
        let (table, names, conflict) = (t.name, t.columns, t.on_conflict_sql());
        let order = if t.ordered && t.rows.len() > 1 {
            " ORDER BY u.n"
        } else {
            ""
        };
        let values: Vec<String> = t.names().map(|c| format!("u.{c}")).collect();
        Ok(format!(
            "INSERT INTO {table} ({names}) SELECT {} FROM unnest({}) WITH ORDINALITY
                 AS u({names}, n){}{order}{conflict}",
            values.join(", "),
            self.columns(t)?,
            self.gate("WHERE"),
        ))
    }

    /// Adds the insert of a table's rows, if it has any, refused unless every row is written
    /// where the table says so; returns the part's name (its rows return their keys).
    fn put(&mut self, t: Table) -> StoreResult<Option<String>> {
        if t.rows.is_empty() {
            return Ok(None);
        }
        let (count, checked) = (t.rows.len(), t.checked());
        let returning = if t.key.is_empty() {
            "1".into()
        } else {
            t.key.to_owned()
        };
        let sql = format!("{} RETURNING {returning}", self.insert(t)?);
        Ok(Some(if checked {
            self.counted(sql, count, "conflict")
        } else {
            self.part(sql)
        }))
    }

    /// Adds a part; returns its name.
    fn part(&mut self, sql: String) -> String {
        let name = format!("w{}", self.ctes.len());
        self.ctes.push(format!("{name} AS ({sql})"));
        name
    }

    /// Adds a part whose `RETURNING` rows must number `count`, or the statement is refused.
    fn counted(&mut self, sql: String, count: usize, refusal: &'static str) -> String {
        let name = self.part(sql);
        self.checks
            .push((format!("(SELECT count(*) FROM {name}) = {count}"), refusal));
        name
    }

    /// The condition (after `word`, `WHERE` or `AND`) that holds a part back until the
    /// account's header is written.
    fn gate(&self, word: &str) -> String {
        if self.gated {
            format!(" {word} EXISTS (SELECT FROM acct)")
        } else {
            String::new()
        }
    }

    async fn run(self, lane: &Lane<Postgres>) -> StoreResult<()> {
        if self.ctes.is_empty() {
            return Ok(());
        }
        let cases: String = (self.checks.iter())
            .map(|(cond, refusal)| format!(" WHEN NOT {cond} THEN portal_refuse('{refusal}')"))
            .collect();
        let verdict = if cases.is_empty() {
            "0".into()
        } else {
            format!("CASE{cases} ELSE 0 END")
        };
        let sql = format!("WITH {} SELECT {verdict}", self.ctes.join(",\n"));
        let mut lease = lane.lease().await.map_err(db_err)?;
        let done = (sqlx::query_with(&sql, self.args))
            .execute(lease.conn().map_err(db_err)?)
            .await;
        lease.settle(done).map_err(db_err)?;
        Ok(())
    }

    /// The accounts' header rows (`id`, `version`, then what is written): inserted when new,
    /// otherwise updated where each still has the version it was loaded at, its version
    /// bumped. Any other outcome refuses the statement; every later part waits for this one.
    fn versions(&mut self, t: Table, is_new: bool) -> StoreResult<()> {
        let count = t.rows.len();
        let sql = match t.rows.as_slice() {
            _ if is_new => format!("{} RETURNING id", self.insert(t)?),
            [row] => {
                let p = (row.iter().cloned())
                    .map(|v| self.value(v))
                    .collect::<StoreResult<Vec<_>>>()?;
                let sets: String = (t.names().zip(&p).skip(2))
                    .map(|(c, p)| format!(", {c} = {p}"))
                    .collect();
                let (Some(id), Some(version)) = (p.first(), p.get(1)) else {
                    return Err(corrupt("accounts", "no id and version"));
                };
                format!(
                    "UPDATE accounts SET version = version + 1{sets}
                     WHERE id = {id} AND version = {version} RETURNING id"
                )
            }
            _ => {
                let names = t.columns;
                let sets: String = t
                    .names()
                    .skip(2)
                    .map(|c| format!(", {c} = u.{c}"))
                    .collect();
                format!(
                    "UPDATE accounts a SET version = a.version + 1{sets}
                     FROM unnest({}) AS u({names})
                     WHERE a.id = u.id AND a.version = u.version RETURNING a.id",
                    self.columns(t)?
                )
            }
        };
        self.ctes.push(format!("acct AS ({sql})"));
        self.checks
            .push((format!("(SELECT count(*) FROM acct) = {count}"), "conflict"));
        self.gated = true;
        Ok(())
    }

    fn account(&mut self, w: AccountWrite) -> StoreResult<()> {
        self.versions(w.header, w.is_new)?;
        let deletes = matches!(w.member, MemberWrite::Delete)
            || w.collections.iter().any(|c| c.keep.is_some());
        let id = if deletes {
            self.arg(w.id)?
        } else {
            String::new()
        };
        let gate = self.gate("AND");
        match w.member {
            MemberWrite::Unchanged => {}
            MemberWrite::Delete => {
                self.part(format!("DELETE FROM members WHERE account_id = {id}{gate}"));
            }
            MemberWrite::Put(t) => {
                self.put(t)?;
            }
        }
        for c in w.collections {
            if let Some(keep) = c.keep {
                let (t, keep) = (c.rows.name, self.arg(keep)?);
                self.part(format!(
                    "DELETE FROM {t} WHERE account_id = {id} AND NOT (id = ANY({keep})){gate}"
                ));
            }
            // An id of another account's row is not overwritten, and the count check refuses.
            self.put(c.rows)?;
        }
        self.put(w.bills)?;
        self.put(w.payments)?;
        // Each rewritten payment's allocations become exactly its rows: the others go (a set
        // disjoint from the rows upserted, so no row is touched twice).
        let written = self.put(w.allocations)?;
        if !w.allocated.is_empty() {
            let payments = self.arg(w.allocated)?;
            let others = written.map_or(String::new(), |n| {
                format!(
                    " AND NOT EXISTS (SELECT FROM {n} WHERE {n}.payment_id = al.payment_id
                                     AND {n}.bill_id = al.bill_id)"
                )
            });
            self.part(format!(
                "DELETE FROM allocations al WHERE al.payment_id = ANY({payments}){others}{gate}"
            ));
        }
        Ok(())
    }

    /// The deletes of sessions and the use of a reset token.
    fn removals(&mut self, c: &Changes) -> StoreResult<()> {
        // A session written in this commit is never also deleted by it.
        let put: Vec<String> = c.put_sessions.iter().map(|s| s.digest.0.clone()).collect();
        let keep = self.arg(put)?;
        let gate = self.gate("AND");
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
        // One statement updates a row at most once: the token consumed here is left out of
        // the tokens ended with it.
        let mut consumed = String::from("NULL::text");
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
            consumed = digest;
        }
        if let Some((acc, at)) = &c.end_reset_tokens_of {
            let acc = self.arg(acc.uuid())?;
            let at = self.arg(*at)?;
            self.part(format!(
                "UPDATE reset_tokens SET used_at = {at}
                 WHERE account_id = {acc} AND used_at IS NULL
                   AND digest IS DISTINCT FROM {consumed}{gate}"
            ));
        }
        Ok(())
    }
}

impl PgStore {
    async fn write(&self, changes: &Changes) -> StoreResult<()> {
        let mut s = Statement::default();
        if let Some(a) = &changes.account {
            s.account(AccountWrite::of(a)?)?;
        }
        s.removals(changes)?;
        for t in plan::records(changes)? {
            s.put(t)?;
        }
        s.run(&self.lane).await
    }

    /// New bills of many accounts in one statement: every account's version is checked and
    /// bumped, or nothing is written.
    async fn write_bills(&self, batch: Vec<IssuedBills>) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut s = Statement::default();
        let (mut versions, mut bills) = (Vec::new(), Vec::new());
        for b in &batch {
            let version = i64::try_from(b.version).map_err(|e| corrupt("version", e))?;
            versions.push(vec![b.account.uuid().into(), version.into()]);
            for (pos, bill) in &b.bills {
                bills.push(plan::bill_row(b.account.uuid(), *pos, bill)?);
            }
        }
        s.versions(plan::versions("id, version", versions), false)?;
        // The bills are new by construction: a plain insert (an existing id fails it all).
        s.put(plan::bills(bills, false))?;
        s.put(plan::audit(batch.iter().flat_map(|b| &b.audit))?)?;
        s.put(plan::outbox(batch.iter().flat_map(|b| &b.outbox))?)?;
        s.run(&self.lane).await
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
}

/// Leases up to `$6` unfinished chunks of run `$1`/`$2` whose lease is free at `$4` to worker
/// `$3` until `$5`. MATERIALIZED: the selection must run once; a subquery in UPDATE .. FROM
/// can be re-run per row and, after the first rows are leased, pick more than LIMIT.
const CLAIM_CHUNKS: &str = "WITH c AS MATERIALIZED (
         SELECT account_id FROM work_items
         WHERE job = $1 AND period = $2 AND finished_at IS NULL
           AND (leased_until IS NULL OR leased_until <= $4)
         ORDER BY account_id LIMIT $6 FOR UPDATE SKIP LOCKED)
     UPDATE work_items w SET leased_by = $3, leased_until = $5
     FROM c WHERE w.job = $1 AND w.period = $2 AND w.account_id = c.account_id
     RETURNING w.account_id, w.last_account_id";

/// Marks the chunks starting at the ids `$4` of run `$1`/`$2` finished at `$3`.
const FINISH_CHUNKS: &str = "UPDATE work_items SET finished_at = $3, leased_until = NULL
     WHERE job = $1 AND period = $2 AND account_id = ANY($4)";

/// Leases up to `$4` messages due at `$2` to worker `$1` until `$3`.
const CLAIM_DUE: &str = "WITH c AS MATERIALIZED (
         SELECT id FROM outbox
         WHERE sent_at IS NULL AND NOT dead AND (due_at IS NULL OR due_at <= $2)
           AND (leased_until IS NULL OR leased_until <= $2)
         ORDER BY seq LIMIT $4 FOR UPDATE SKIP LOCKED)
     UPDATE outbox o SET leased_by = $1, leased_until = $3
     FROM c WHERE o.id = c.id
     RETURNING o.seq, o.id, o.notice, o.created_at, o.attempts";

/// The id and version of each account of the list `$1`.
const ACCOUNT_VERSIONS: &str = "SELECT id, version FROM accounts WHERE id = ANY($1)";

/// A list of ids as a statement binds it.
fn ids_arg(ids: &[Uuid]) -> Vec<Uuid> {
    ids.to_vec()
}
