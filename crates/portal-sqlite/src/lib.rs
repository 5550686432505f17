//! SQLite storage, the embedded default: `SqliteStore` implements `Store`, `WorkQueue` and
//! `Outbox` of `portal-core` with the same schema and rules as the PostgreSQL store.
//!
//! - Money is stored as integer cents; the conversion is `Money::cents` / `Money::from_cents`.
//! - An account commit is one transaction: the version check (`UPDATE .. WHERE version = $n`,
//!   which also row-locks the account), the account's rows, audit entries, outbox rows,
//!   idempotency records, sessions and tokens. A unique violation rolls all of it back and is
//!   reported as `StoreError::Duplicate` naming the rule.
//! - The database runs in WAL mode, so loads read one consistent snapshot while a writer works.
//! - SQLite has one writer at a time; work and outbox claims are single `UPDATE .. RETURNING`
//!   statements, atomic by themselves, so several tasks of one process share them safely.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use portal_core::account::{
    Account, EmailCode, Holder, IdempotencyRecord, LoginThrottle, LookupDigest, Member,
    PasswordHash, Principal, ReminderPreferences, ResetToken, RowChanges, SealedSecret, Session,
    Stored, TokenDigest,
};
use portal_core::audit::{Actor, AuditEvent};
use portal_core::billing::{Bill, BillKind, BillNotice};
use portal_core::calendar::CoverageMonth;
use portal_core::enrollment::Enrollment;
use portal_core::identity::{AccountNumber, Email, Language, PersonName, Username};
use portal_core::ids::{AccountId, BillId, EnrollmentId, MessageId, PaymentId, SessionId};
use portal_core::instrument::PaymentMethod;
use portal_core::ledger::Ledger;
use portal_core::mandate::Mandate;
use portal_core::money::Money;
use portal_core::notice::Notice;
use portal_core::payment::{
    Allocation, Payment, PaymentChannel, PaymentInstrument, PaymentStatus, Transition,
};
use portal_core::plan::PaymentPlan;
use portal_core::ports::{
    AccountLookup, Changes, IssuedBills, JobRun, Outbox, OutboxMessage, PaymentLookup, Store,
    StoreError, Unique, WorkChunk, WorkQueue,
};
use portal_core::reference::PaymentReference;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::types::Json;
use sqlx::{Row, Sqlite, Transaction};
use std::collections::BTreeMap;
use std::path::Path;
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

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn get<'r, T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>>(
    row: &'r SqliteRow,
    col: &str,
) -> Result<T, StoreError> {
    row.try_get(col).map_err(|e| corrupt(col, e))
}

fn json<T: DeserializeOwned>(row: &SqliteRow, col: &str) -> Result<T, StoreError> {
    let Json(v): Json<T> = row.try_get(col).map_err(|e| corrupt(col, e))?;
    Ok(v)
}

fn to_u32(v: i32, col: &str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|e| corrupt(col, e))
}

fn month_date(m: CoverageMonth) -> NaiveDate {
    m.first_day()
}

/// What of a payment lives in its JSON column (the rest are columns or rows of their own).
#[derive(Serialize, Deserialize)]
struct PaymentData {
    instrument: PaymentInstrument,
    channel: PaymentChannel,
    status: PaymentStatus,
    history: Vec<Transition>,
}

fn kind_name(k: &BillKind) -> &'static str {
    match k {
        BillKind::Binder => "binder",
        BillKind::Premium => "premium",
        BillKind::Installment { .. } => "installment",
        BillKind::LateFee { .. } => "late_fee",
    }
}

fn bill_from(row: &SqliteRow) -> Result<Bill, StoreError> {
    Ok(Bill {
        id: BillId(get(row, "id")?),
        enrollment_id: EnrollmentId(get(row, "enrollment_id")?),
        kind: json(row, "kind")?,
        coverage_month: CoverageMonth::of(get(row, "coverage_month")?),
        amount: Money::from_cents(get(row, "amount_cents")?),
        allocated: Money::from_cents(get(row, "allocated_cents")?),
        transferred: Money::from_cents(get(row, "transferred_cents")?),
        due_date: get(row, "due_date")?,
        issued_on: get(row, "issued_on")?,
        void: get(row, "void")?,
        notices: json::<Vec<BillNotice>>(row, "notices")?,
        late_fee_assessed: get(row, "late_fee_assessed")?,
    })
}

fn payment_from(row: &SqliteRow, allocations: Vec<Allocation>) -> Result<Payment, StoreError> {
    let data: PaymentData = json(row, "data")?;
    let reference: String = get(row, "reference")?;
    Ok(Payment {
        id: PaymentId(get(row, "id")?),
        reference: PaymentReference::parse(&reference).map_err(|e| corrupt("reference", e))?,
        amount: Money::from_cents(get(row, "amount_cents")?),
        refunded: Money::from_cents(get(row, "refunded_cents")?),
        instrument: data.instrument,
        channel: data.channel,
        status: data.status,
        gateway_id: get(row, "gateway_id")?,
        idempotency_key: get(row, "idempotency_key")?,
        initiated_at: get(row, "initiated_at")?,
        initiated_on: get(row, "initiated_on")?,
        expected_settlement: get(row, "expected_settlement")?,
        allocations,
        history: data.history,
    })
}

fn member_from(row: &SqliteRow) -> Result<Member, StoreError> {
    let username: String = get(row, "username")?;
    let email: String = get(row, "email")?;
    let language: String = get(row, "language")?;
    let code: Option<Json<EmailCode>> = get(row, "email_code")?;
    Ok(Member {
        username: Username::parse(&username).map_err(|e| corrupt("username", e))?,
        email: Email::parse(&email).map_err(|e| corrupt("email", e))?,
        email_verified_at: get(row, "email_verified_at")?,
        email_code: code.map(|Json(c)| c),
        password_hash: PasswordHash(get(row, "password_hash")?),
        password_changed_at: get(row, "password_changed_at")?,
        language: Language::parse(&language).map_err(|e| corrupt("language", e))?,
        ssn_sealed: SealedSecret(get(row, "ssn_sealed")?),
        ssn_digest: LookupDigest(get(row, "m_ssn_digest")?),
        created_at: get(row, "m_created_at")?,
    })
}

/// The ids as the JSON array `ids_in` takes: SQLite has no array parameters.
fn ids_json(ids: &[Uuid]) -> String {
    let hex: Vec<String> = ids.iter().map(|i| i.simple().to_string()).collect();
    serde_json::to_string(&hex).unwrap_or_else(|_| "[]".into())
}

/// `IN` over the ids bound as `$1` (a JSON array of hex ids from `ids_json`).
const IDS_IN: &str = "IN (SELECT unhex(value) FROM json_each($1))";

/// One per-account collection of many accounts, grouped by account, each in position order.
async fn collections<T: DeserializeOwned>(
    tx: &mut Transaction<'_, Sqlite>,
    table: &str,
    ids: &str,
) -> Result<BTreeMap<Uuid, Vec<T>>, StoreError> {
    let sql = format!(
        "SELECT account_id, data FROM {table} WHERE account_id {IDS_IN} ORDER BY account_id, position"
    );
    let mut out: BTreeMap<Uuid, Vec<T>> = BTreeMap::new();
    for r in sqlx::query(&sql)
        .bind(ids)
        .fetch_all(&mut **tx)
        .await
        .map_err(db_err)?
    {
        out.entry(get(&r, "account_id")?)
            .or_default()
            .push(json(&r, "data")?);
    }
    Ok(out)
}

/// Loads accounts whole, the same handful of queries for any number of them; in id order.
async fn load_accounts(
    tx: &mut Transaction<'_, Sqlite>,
    ids: &[Uuid],
) -> Result<Vec<Account>, StoreError> {
    let ids = ids_json(ids);
    let headers = sqlx::query(&format!(
        "SELECT a.*, m.username, m.email, m.ssn_digest AS m_ssn_digest, m.ssn_sealed, m.password_hash,
                m.language, m.email_verified_at, m.email_code, m.password_changed_at,
                m.created_at AS m_created_at, m.account_id AS member_of
         FROM accounts a LEFT JOIN members m ON m.account_id = a.id WHERE a.id {IDS_IN}
         ORDER BY a.id"
    ))
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await
    .map_err(db_err)?;
    if headers.is_empty() {
        return Ok(Vec::new());
    }
    let mut enrollments = collections::<Enrollment>(tx, "enrollments", &ids).await?;
    let mut methods = collections::<PaymentMethod>(tx, "payment_methods", &ids).await?;
    let mut mandates = collections::<Mandate>(tx, "mandates", &ids).await?;
    let mut plans = collections::<PaymentPlan>(tx, "plans", &ids).await?;
    let mut bills: BTreeMap<Uuid, Vec<Bill>> = BTreeMap::new();
    for r in sqlx::query(&format!(
        "SELECT * FROM bills WHERE account_id {IDS_IN} ORDER BY account_id, position"
    ))
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await
    .map_err(db_err)?
    {
        bills
            .entry(get(&r, "account_id")?)
            .or_default()
            .push(bill_from(&r)?);
    }
    let mut allocations: BTreeMap<Uuid, Vec<Allocation>> = BTreeMap::new();
    for r in sqlx::query(&format!(
        "SELECT al.payment_id, al.bill_id, al.amount_cents FROM allocations al
         JOIN payments p ON p.id = al.payment_id WHERE p.account_id {IDS_IN}
         ORDER BY al.payment_id, al.position"
    ))
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await
    .map_err(db_err)?
    {
        allocations
            .entry(get(&r, "payment_id")?)
            .or_default()
            .push(Allocation {
                bill_id: BillId(get(&r, "bill_id")?),
                amount: Money::from_cents(get(&r, "amount_cents")?),
            });
    }
    let mut payments: BTreeMap<Uuid, Vec<Payment>> = BTreeMap::new();
    for r in sqlx::query(&format!(
        "SELECT * FROM payments WHERE account_id {IDS_IN} ORDER BY account_id, position"
    ))
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await
    .map_err(db_err)?
    {
        let pid: Uuid = get(&r, "id")?;
        payments
            .entry(get(&r, "account_id")?)
            .or_default()
            .push(payment_from(
                &r,
                allocations.remove(&pid).unwrap_or_default(),
            )?);
    }
    let mut out = Vec::with_capacity(headers.len());
    for row in &headers {
        let id: Uuid = get(row, "id")?;
        let member = match get::<Option<Uuid>>(row, "member_of")? {
            Some(_) => Some(member_from(row)?),
            None => None,
        };
        let number: String = get(row, "number")?;
        let first: String = get(row, "holder_first_name")?;
        let last: String = get(row, "holder_last_name")?;
        let contact: Option<String> = get(row, "contact_email")?;
        let version: i64 = get(row, "version")?;
        let Json(reminders): Json<ReminderPreferences> = row
            .try_get("reminders")
            .map_err(|e| corrupt("reminders", e))?;
        out.push(Account {
            id: AccountId(id),
            version: u64::try_from(version).map_err(|e| corrupt("version", e))?,
            number: AccountNumber::parse(&number).map_err(|e| corrupt("number", e))?,
            holder: Holder {
                first_name: PersonName::parse(&first)
                    .map_err(|e| corrupt("holder_first_name", e))?,
                last_name: PersonName::parse(&last).map_err(|e| corrupt("holder_last_name", e))?,
                date_of_birth: get(row, "date_of_birth")?,
                ssn_digest: LookupDigest(get(row, "ssn_digest")?),
                ssn_last4: get(row, "ssn_last4")?,
            },
            contact_email: contact
                .map(|c| Email::parse(&c).map_err(|e| corrupt("contact_email", e)))
                .transpose()?,
            enrollments: enrollments.remove(&id).unwrap_or_default(),
            ledger: Ledger::new(
                bills.remove(&id).unwrap_or_default(),
                payments.remove(&id).unwrap_or_default(),
            ),
            methods: methods.remove(&id).unwrap_or_default(),
            mandates: mandates.remove(&id).unwrap_or_default(),
            plans: plans.remove(&id).unwrap_or_default(),
            member,
            reminders,
            created_at: get(row, "created_at")?,
            stored: Stored::default(),
        });
        if let Some(a) = out.last_mut() {
            a.remember_stored();
        }
    }
    Ok(out)
}

fn holder_search(a: &Account) -> String {
    a.holder.full_name().to_lowercase()
}

type SqlQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Binds the account header columns as `$1`..`$10`.
fn bind_header<'q>(q: SqlQuery<'q>, a: &Account) -> SqlQuery<'q> {
    q.bind(a.number.as_ref().to_owned())
        .bind(a.holder.first_name.to_string())
        .bind(a.holder.last_name.to_string())
        .bind(holder_search(a))
        .bind(a.holder.date_of_birth)
        .bind(a.holder.ssn_digest.0.clone())
        .bind(a.holder.ssn_last4.clone())
        .bind(a.contact_email.as_ref().map(|e| e.as_ref().to_owned()))
        .bind(Json(a.reminders.clone()))
        .bind(a.created_at)
}

/// Inserts a bill, or updates it if the account already has it.
async fn write_bill(
    tx: &mut Transaction<'_, Sqlite>,
    account: Uuid,
    position: usize,
    b: &Bill,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO bills (id, account_id, position, enrollment_id, kind_name, kind, coverage_month,
             amount_cents, allocated_cents, transferred_cents, due_date, issued_on, void, notices,
             late_fee_assessed)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
         ON CONFLICT (id) DO UPDATE SET position = $3, enrollment_id = $4, kind_name = $5, kind = $6,
             coverage_month = $7, amount_cents = $8, allocated_cents = $9, transferred_cents = $10,
             due_date = $11, issued_on = $12, void = $13, notices = $14, late_fee_assessed = $15
         WHERE bills.account_id = $2",
    )
    .bind(b.id.uuid())
    .bind(account)
    .bind(i64::try_from(position).map_err(|e| corrupt("position", e))?)
    .bind(b.enrollment_id.uuid())
    .bind(kind_name(&b.kind))
    .bind(Json(b.kind))
    .bind(month_date(b.coverage_month))
    .bind(b.amount.cents())
    .bind(b.allocated.cents())
    .bind(b.transferred.cents())
    .bind(b.due_date)
    .bind(b.issued_on)
    .bind(b.void)
    .bind(Json(&b.notices))
    .bind(b.late_fee_assessed)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

async fn append_audit(tx: &mut Transaction<'_, Sqlite>, e: &AuditEvent) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (account_id, at, actor, entity, action, detail) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(e.account_id.uuid())
    .bind(e.at)
    .bind(Json(&e.actor))
    .bind(e.entity.clone())
    .bind(e.action.clone())
    .bind(e.detail.clone())
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Queues a notice unless one with its dedupe key was queued before.
async fn queue_notice(tx: &mut Transaction<'_, Sqlite>, n: &Notice) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO outbox (id, dedupe_key, account_id, notice, created_at)
         VALUES ($4, $1, $2, $3, $5) ON CONFLICT (dedupe_key) DO NOTHING",
    )
    .bind(n.dedupe_key.clone())
    .bind(n.account_id.uuid())
    .bind(Json(n))
    .bind(Uuid::now_v7())
    .bind(Utc::now())
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

async fn write_account(tx: &mut Transaction<'_, Sqlite>, a: &Account) -> Result<(), StoreError> {
    let id = a.id.uuid();
    let version = i64::try_from(a.version).map_err(|e| corrupt("version", e))?;
    let header = |q| bind_header(q, a);
    let is_new = a.version == 0;
    if is_new {
        header(sqlx::query(
            "INSERT INTO accounts (id, version, number, holder_first_name, holder_last_name, holder_search,
                 date_of_birth, ssn_digest, ssn_last4, contact_email, reminders, created_at)
             VALUES ($11, 1, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        ))
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    } else {
        let done = header(sqlx::query(
            "UPDATE accounts SET version = version + 1, number = $1, holder_first_name = $2,
                 holder_last_name = $3, holder_search = $4, date_of_birth = $5, ssn_digest = $6,
                 ssn_last4 = $7, contact_email = $8, reminders = $9, created_at = $10
             WHERE id = $11 AND version = $12",
        ))
        .bind(id)
        .bind(version)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Conflict);
        }
    }
    match &a.member {
        _ if !a.member_changed() => {}
        Some(m) => {
            sqlx::query(
                "INSERT INTO members (account_id, username, username_key, email, email_key, ssn_digest,
                     ssn_sealed, password_hash, language, email_verified_at, email_code,
                     password_changed_at, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                 ON CONFLICT (account_id) DO UPDATE SET username = $2, username_key = $3, email = $4,
                     email_key = $5, ssn_digest = $6, ssn_sealed = $7, password_hash = $8, language = $9,
                     email_verified_at = $10, email_code = $11, password_changed_at = $12, created_at = $13",
            )
            .bind(id)
            .bind(m.username.to_string())
            .bind(m.username.key())
            .bind(m.email.to_string())
            .bind(m.email.key())
            .bind(m.ssn_digest.0.clone())
            .bind(m.ssn_sealed.0.clone())
            .bind(m.password_hash.0.clone())
            .bind(m.language.code())
            .bind(m.email_verified_at)
            .bind(m.email_code.clone().map(Json))
            .bind(m.password_changed_at)
            .bind(m.created_at)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        }
        None => {
            sqlx::query("DELETE FROM members WHERE account_id = $1")
                .bind(id)
                .execute(&mut **tx)
                .await
                .map_err(db_err)?;
        }
    }
    // Small collections: only the rows that differ from what the store holds.
    write_collection(
        tx,
        "enrollments",
        id,
        &a.enrollments,
        a.enrollment_changes(),
        |e| e.id.uuid(),
    )
    .await?;
    write_collection(
        tx,
        "payment_methods",
        id,
        &a.methods,
        a.method_changes(),
        |m| m.id.uuid(),
    )
    .await?;
    write_collection(tx, "mandates", id, &a.mandates, a.mandate_changes(), |m| {
        m.id.uuid()
    })
    .await?;
    write_collection(tx, "plans", id, &a.plans, a.plan_changes(), |p| p.id.uuid()).await?;

    // New accounts write their whole ledger; later commits what changed since loading.
    let (bills, payments): (Vec<&Bill>, Vec<&Payment>) = if is_new {
        (
            a.ledger.bills.iter().collect(),
            a.ledger.payments.iter().collect(),
        )
    } else {
        a.ledger.changed()
    };
    let bill_pos: BTreeMap<BillId, usize> = a
        .ledger
        .bills
        .iter()
        .enumerate()
        .map(|(i, b)| (b.id, i))
        .collect();
    for b in bills {
        write_bill(tx, id, bill_pos.get(&b.id).copied().unwrap_or(0), b).await?;
    }
    let pay_pos: BTreeMap<PaymentId, usize> = a
        .ledger
        .payments
        .iter()
        .enumerate()
        .map(|(i, p)| (p.id, i))
        .collect();
    for p in payments {
        let pos = i64::try_from(pay_pos.get(&p.id).copied().unwrap_or(0)).unwrap_or(0);
        let data = PaymentData {
            instrument: p.instrument.clone(),
            channel: p.channel,
            status: p.status,
            history: p.history.clone(),
        };
        sqlx::query(
            "INSERT INTO payments (id, account_id, position, reference, gateway_id, amount_cents,
                 refunded_cents, status, idempotency_key, initiated_at, initiated_on, expected_settlement, data)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (id) DO UPDATE SET position = $3, reference = $4, gateway_id = $5,
                 amount_cents = $6, refunded_cents = $7, status = $8, idempotency_key = $9,
                 initiated_at = $10, initiated_on = $11, expected_settlement = $12, data = $13
             WHERE payments.account_id = $2",
        )
        .bind(p.id.uuid())
        .bind(id)
        .bind(pos)
        .bind(p.reference.to_string())
        .bind(p.gateway_id.clone())
        .bind(p.amount.cents())
        .bind(p.refunded.cents())
        .bind(p.status.name())
        .bind(p.idempotency_key.clone())
        .bind(p.initiated_at)
        .bind(p.initiated_on)
        .bind(p.expected_settlement)
        .bind(Json(data))
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        sqlx::query("DELETE FROM allocations WHERE payment_id = $1")
            .bind(p.id.uuid())
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        for (i, al) in p.allocations.iter().enumerate() {
            sqlx::query("INSERT INTO allocations (payment_id, bill_id, position, amount_cents) VALUES ($1, $2, $3, $4)")
                .bind(p.id.uuid())
                .bind(al.bill_id.uuid())
                .bind(i32::try_from(i).unwrap_or(i32::MAX))
                .bind(al.amount.cents())
                .execute(&mut **tx)
                .await
                .map_err(db_err)?;
        }
    }
    Ok(())
}

async fn write_collection<T: Serialize>(
    tx: &mut Transaction<'_, Sqlite>,
    table: &str,
    account: Uuid,
    all: &[T],
    changes: RowChanges<'_, T>,
    id_of: impl Fn(&T) -> Uuid,
) -> Result<(), StoreError> {
    // A row gone: the collection is replaced whole (it is a handful of rows).
    let changed: Vec<(usize, &T)> = if changes.removed {
        sqlx::query(&format!("DELETE FROM {table} WHERE account_id = $1"))
            .bind(account)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        all.iter().enumerate().collect()
    } else {
        changes.changed
    };
    for (pos, item) in changed {
        let sql = format!(
            "INSERT INTO {table} (id, account_id, position, data) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET position = excluded.position, data = excluded.data
             WHERE {table}.account_id = excluded.account_id"
        );
        let done = sqlx::query(&sql)
            .bind(id_of(item))
            .bind(account)
            .bind(i32::try_from(pos).unwrap_or(i32::MAX))
            .bind(Json(item))
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        if done.rows_affected() != 1 {
            // The id belongs to another account.
            return Err(StoreError::Conflict);
        }
    }
    Ok(())
}

fn session_account(p: &Principal) -> Option<Uuid> {
    match p {
        Principal::Member { account_id } => Some(account_id.uuid()),
        Principal::Agent { .. } => None,
    }
}

fn outbox_from(row: &SqliteRow) -> Result<OutboxMessage, StoreError> {
    Ok(OutboxMessage {
        id: MessageId(get(row, "id")?),
        notice: json::<Notice>(row, "notice")?,
        created_at: get(row, "created_at")?,
        attempts: to_u32(get(row, "attempts")?, "attempts")?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn load_account(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        // In WAL mode a read transaction sees one snapshot from its first read on.
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let account = load_accounts(&mut tx, &[id.uuid()]).await?.pop();
        tx.commit().await.map_err(db_err)?;
        Ok(account)
    }

    async fn load_accounts(&self, ids: Vec<AccountId>) -> Result<Vec<Account>, StoreError> {
        let ids: Vec<Uuid> = ids.into_iter().map(AccountId::uuid).collect();
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let accounts = load_accounts(&mut tx, &ids).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(accounts)
    }

    async fn load_chunk(&self, chunk: WorkChunk) -> Result<Vec<Account>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let rows = sqlx::query("SELECT id FROM accounts WHERE id BETWEEN $1 AND $2 ORDER BY id")
            .bind(chunk.first.uuid())
            .bind(chunk.last.uuid())
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
        let ids = rows
            .iter()
            .map(|r| get::<Uuid>(r, "id"))
            .collect::<Result<Vec<_>, _>>()?;
        let accounts = load_accounts(&mut tx, &ids).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(accounts)
    }

    async fn issue_bills(&self, batch: Vec<IssuedBills>) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        for b in &batch {
            let version = i64::try_from(b.version).map_err(|e| corrupt("version", e))?;
            let done = sqlx::query(
                "UPDATE accounts SET version = version + 1 WHERE id = $1 AND version = $2",
            )
            .bind(b.account.uuid())
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            if done.rows_affected() != 1 {
                return Err(StoreError::Conflict);
            }
            for (pos, bill) in &b.bills {
                write_bill(&mut tx, b.account.uuid(), *pos, bill).await?;
            }
            for e in &b.audit {
                append_audit(&mut tx, e).await?;
            }
            for n in &b.outbox {
                queue_notice(&mut tx, n).await?;
            }
        }
        tx.commit().await.map_err(db_err)
    }

    async fn find_account(&self, by: AccountLookup) -> Result<Option<AccountId>, StoreError> {
        let q = match &by {
            AccountLookup::Number(n) => {
                sqlx::query("SELECT id FROM accounts WHERE number = $1").bind(n.as_ref().to_owned())
            }
            AccountLookup::Username(k) => {
                sqlx::query("SELECT account_id AS id FROM members WHERE username_key = $1")
                    .bind(k.clone())
            }
            AccountLookup::Email(k) => {
                sqlx::query("SELECT account_id AS id FROM members WHERE email_key = $1")
                    .bind(k.clone())
            }
            AccountLookup::MemberSsn(d) => {
                sqlx::query("SELECT account_id AS id FROM members WHERE ssn_digest = $1")
                    .bind(d.0.clone())
            }
        };
        let row = q.fetch_optional(&self.pool).await.map_err(db_err)?;
        row.map(|r| get::<Uuid>(&r, "id").map(AccountId))
            .transpose()
    }

    async fn find_payment(
        &self,
        by: PaymentLookup,
    ) -> Result<Option<(AccountId, PaymentId)>, StoreError> {
        let q = match &by {
            PaymentLookup::Reference(r) => {
                sqlx::query("SELECT account_id, id FROM payments WHERE reference = $1")
                    .bind(r.to_string())
            }
            PaymentLookup::GatewayId(g) => {
                sqlx::query("SELECT account_id, id FROM payments WHERE gateway_id = $1")
                    .bind(g.clone())
            }
            PaymentLookup::Id(id) => {
                sqlx::query("SELECT account_id, id FROM payments WHERE id = $1").bind(id.uuid())
            }
        };
        let row = q.fetch_optional(&self.pool).await.map_err(db_err)?;
        row.map(|r| Ok((AccountId(get(&r, "account_id")?), PaymentId(get(&r, "id")?))))
            .transpose()
    }

    async fn idempotency_record(
        &self,
        scope: String,
        key: String,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM idempotency_records WHERE scope = $1 AND key = $2")
            .bind(scope)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|r| {
            Ok(IdempotencyRecord {
                scope: get(&r, "scope")?,
                key: get(&r, "key")?,
                request_digest: get(&r, "request_digest")?,
                payment_id: PaymentId(get(&r, "payment_id")?),
                account_id: AccountId(get(&r, "account_id")?),
                created_at: get(&r, "created_at")?,
            })
        })
        .transpose()
    }

    async fn session(&self, digest: TokenDigest) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query("SELECT * FROM sessions WHERE digest = $1")
            .bind(digest.0.clone())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|r| {
            Ok(Session {
                id: SessionId(get(&r, "id")?),
                digest: TokenDigest(get(&r, "digest")?),
                principal: json(&r, "principal")?,
                created_at: get(&r, "created_at")?,
                last_seen_at: get(&r, "last_seen_at")?,
            })
        })
        .transpose()
    }

    async fn reset_token(&self, digest: TokenDigest) -> Result<Option<ResetToken>, StoreError> {
        let row = sqlx::query("SELECT * FROM reset_tokens WHERE digest = $1")
            .bind(digest.0.clone())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|r| {
            Ok(ResetToken {
                digest: TokenDigest(get(&r, "digest")?),
                account_id: AccountId(get(&r, "account_id")?),
                expires_at: get(&r, "expires_at")?,
                used_at: get(&r, "used_at")?,
            })
        })
        .transpose()
    }

    async fn login_throttle(&self, key: String) -> Result<Option<LoginThrottle>, StoreError> {
        let row = sqlx::query("SELECT * FROM login_throttles WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|r| {
            Ok(LoginThrottle {
                key: get(&r, "key")?,
                failures: to_u32(get(&r, "failures")?, "failures")?,
                window_started_at: get(&r, "window_started_at")?,
                locked_until: get(&r, "locked_until")?,
            })
        })
        .transpose()
    }

    async fn account_ids(
        &self,
        after: Option<AccountId>,
        limit: u32,
    ) -> Result<Vec<AccountId>, StoreError> {
        let rows =
            sqlx::query("SELECT id FROM accounts WHERE $1 IS NULL OR id > $1 ORDER BY id LIMIT $2")
                .bind(after.map(AccountId::uuid))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
        rows.iter().map(|r| get(r, "id").map(AccountId)).collect()
    }

    async fn search_accounts(
        &self,
        query: String,
        limit: u32,
    ) -> Result<Vec<AccountId>, StoreError> {
        let escaped: String = query
            .to_lowercase()
            .chars()
            .flat_map(|c| match c {
                '%' | '_' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        let pattern = format!("%{escaped}%");
        let rows = sqlx::query(
            "SELECT a.id FROM accounts a LEFT JOIN members m ON m.account_id = a.id
             WHERE a.holder_search LIKE $1 ESCAPE '\\' OR m.email_key LIKE $1 ESCAPE '\\'
                OR m.username_key LIKE $1 ESCAPE '\\'
             ORDER BY a.id LIMIT $2",
        )
        .bind(pattern)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(|r| get(r, "id").map(AccountId)).collect()
    }

    async fn audit_trail(&self, account: AccountId) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query("SELECT * FROM audit_log WHERE account_id = $1 ORDER BY seq")
            .bind(account.uuid())
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(AuditEvent {
                    at: get(r, "at")?,
                    account_id: AccountId(get(r, "account_id")?),
                    actor: json::<Actor>(r, "actor")?,
                    entity: get(r, "entity")?,
                    action: get(r, "action")?,
                    detail: get(r, "detail")?,
                })
            })
            .collect()
    }

    async fn commit(&self, changes: Changes) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        if let Some(a) = &changes.account {
            write_account(&mut tx, a).await?;
        }
        for s in &changes.put_sessions {
            sqlx::query(
                "INSERT INTO sessions (digest, id, principal, account_id, created_at, last_seen_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (digest) DO UPDATE SET principal = $3, account_id = $4, created_at = $5, last_seen_at = $6",
            )
            .bind(s.digest.0.clone())
            .bind(s.id.uuid())
            .bind(Json(&s.principal))
            .bind(session_account(&s.principal))
            .bind(s.created_at)
            .bind(s.last_seen_at)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        for d in &changes.delete_sessions {
            sqlx::query("DELETE FROM sessions WHERE digest = $1")
                .bind(d.0.clone())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        if let Some(acc) = changes.delete_all_sessions_of {
            sqlx::query("DELETE FROM sessions WHERE account_id = $1")
                .bind(acc.uuid())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        for t in &changes.put_reset_tokens {
            sqlx::query(
                "INSERT INTO reset_tokens (digest, account_id, expires_at, used_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (digest) DO UPDATE SET expires_at = $3, used_at = $4",
            )
            .bind(t.digest.0.clone())
            .bind(t.account_id.uuid())
            .bind(t.expires_at)
            .bind(t.used_at)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        if let Some((digest, at)) = &changes.consume_reset_token {
            let done = sqlx::query(
                "UPDATE reset_tokens SET used_at = $2 WHERE digest = $1 AND used_at IS NULL",
            )
            .bind(digest.0.clone())
            .bind(*at)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            if done.rows_affected() != 1 {
                return Err(StoreError::Duplicate(Unique::ResetTokenUse));
            }
        }
        for t in &changes.put_throttles {
            sqlx::query(
                "INSERT INTO login_throttles (key, failures, window_started_at, locked_until) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (key) DO UPDATE SET failures = $2, window_started_at = $3, locked_until = $4",
            )
            .bind(t.key.clone())
            .bind(i32::try_from(t.failures).unwrap_or(i32::MAX))
            .bind(t.window_started_at)
            .bind(t.locked_until)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        for r in &changes.idempotency {
            sqlx::query(
                "INSERT INTO idempotency_records (scope, key, request_digest, payment_id, account_id, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(r.scope.clone())
            .bind(r.key.clone())
            .bind(r.request_digest.clone())
            .bind(r.payment_id.uuid())
            .bind(r.account_id.uuid())
            .bind(r.created_at)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        for e in &changes.audit {
            append_audit(&mut tx, e).await?;
        }
        for n in &changes.outbox {
            queue_notice(&mut tx, n).await?;
        }
        tx.commit().await.map_err(db_err)
    }
}

#[async_trait]
impl WorkQueue for SqliteStore {
    async fn plan_run(&self, run: JobRun, chunk_size: u32) -> Result<u64, StoreError> {
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

    async fn claim(
        &self,
        run: JobRun,
        worker: String,
        limit: u32,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<WorkChunk>, StoreError> {
        let rows = sqlx::query(
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
        let mut chunks = rows
            .iter()
            .map(|r| {
                Ok(WorkChunk {
                    first: AccountId(get(r, "account_id")?),
                    last: AccountId(get(r, "last_account_id")?),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        chunks.sort();
        Ok(chunks)
    }

    async fn finish(
        &self,
        run: JobRun,
        chunks: Vec<WorkChunk>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        for c in chunks {
            sqlx::query(
                "UPDATE work_items SET finished_at = $3, leased_until = NULL
                 WHERE job = $1 AND period = $2 AND account_id = $4",
            )
            .bind(run.job.clone())
            .bind(run.period.clone())
            .bind(now)
            .bind(c.first.uuid())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }
}

#[async_trait]
impl Outbox for SqliteStore {
    async fn claim_messages(
        &self,
        worker: String,
        limit: u32,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let rows = sqlx::query(
            "UPDATE outbox SET leased_by = $1, leased_until = $3
             WHERE seq IN (SELECT seq FROM outbox
                           WHERE sent_at IS NULL AND dead = 0 AND (due_at IS NULL OR due_at <= $2)
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
        let mut out = rows
            .iter()
            .map(|r| Ok((get::<i64>(r, "seq")?, outbox_from(r)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.sort_by_key(|(seq, _)| *seq);
        Ok(out.into_iter().map(|(_, m)| m).collect())
    }

    async fn mark_sent(
        &self,
        id: MessageId,
        message_id: String,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox SET sent_at = $2, message_id = $3, attempts = attempts + 1, leased_until = NULL
             WHERE id = $1",
        )
        .bind(id.uuid())
        .bind(now)
        .bind(message_id)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn mark_failed(
        &self,
        id: MessageId,
        error: String,
        retry_at: Option<DateTime<Utc>>,
        _now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $2, leased_until = NULL,
                 due_at = COALESCE($3, due_at), dead = ($3 IS NULL)
             WHERE id = $1",
        )
        .bind(id.uuid())
        .bind(error)
        .bind(retry_at)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<OutboxMessage>, StoreError> {
        let rows = sqlx::query("SELECT * FROM outbox WHERE dead = 1 ORDER BY seq LIMIT $1")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(outbox_from).collect()
    }

    async fn requeue(&self, id: MessageId, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE outbox SET dead = 0, due_at = $2, attempts = 0 WHERE id = $1 AND dead = 1",
        )
        .bind(id.uuid())
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn pending_messages(&self, limit: u32) -> Result<Vec<OutboxMessage>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM outbox WHERE sent_at IS NULL AND dead = 0 ORDER BY seq LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(outbox_from).collect()
    }
}
