//! PostgreSQL storage: `PgStore` implements `Store`, `WorkQueue` and `Outbox` of `portal-core`.
//!
//! - Money is stored as integer cents; the conversion is `Money::cents` / `Money::from_cents`.
//! - An account commit is one transaction: the version check (`UPDATE .. WHERE version = $n`,
//!   which also row-locks the account), the account's rows, audit entries, outbox rows,
//!   idempotency records, sessions and tokens. A unique violation rolls all of it back and is
//!   reported as `StoreError::Duplicate` naming the rule.
//! - Loads read in one `REPEATABLE READ` snapshot, so an aggregate is never half old, half new.
//! - Work and outbox claims use `FOR UPDATE SKIP LOCKED`, so any number of instances share them.

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
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{Postgres, Row, Transaction};
use std::collections::BTreeMap;
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
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
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

    /// Loads the scope's accounts from one consistent snapshot.
    async fn load(&self, scope: Scope<'_>) -> Result<Vec<Account>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let accounts = load_accounts(&mut tx, scope).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(accounts)
    }

    /// The pool, for health checks.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

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

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn get<'r, T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>>(
    row: &'r PgRow,
    col: &str,
) -> Result<T, StoreError> {
    row.try_get(col).map_err(|e| corrupt(col, e))
}

fn json<T: DeserializeOwned>(row: &PgRow, col: &str) -> Result<T, StoreError> {
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

fn bill_from(row: &PgRow) -> Result<Bill, StoreError> {
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

fn payment_from(row: &PgRow, allocations: Vec<Allocation>) -> Result<Payment, StoreError> {
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

fn member_from(row: &PgRow) -> Result<Member, StoreError> {
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

/// Which accounts a load reads.
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// These accounts.
    Ids(&'a [Uuid]),
    /// Every account from the first id to the last, inclusive: a chunk of job work, read by
    /// one index range scan per table instead of one index search per account.
    Range(Uuid, Uuid),
}

impl<'a> Scope<'a> {
    /// The condition on `column` that selects the scope's accounts (`$1`, or `$1` and `$2`).
    fn condition(self, column: &str) -> String {
        match self {
            Scope::Ids(_) => format!("{column} = ANY($1)"),
            Scope::Range(..) => format!("{column} BETWEEN $1 AND $2"),
        }
    }

    fn bind(self, q: PgQuery<'a>) -> PgQuery<'a> {
        match self {
            Scope::Ids(ids) => q.bind(ids),
            Scope::Range(first, last) => q.bind(first).bind(last),
        }
    }
}

/// One per-account collection of many accounts, grouped by account, each in position order.
/// An account's small collections, by account id.
type Small = (
    BTreeMap<Uuid, Vec<Enrollment>>,
    BTreeMap<Uuid, Vec<PaymentMethod>>,
    BTreeMap<Uuid, Vec<Mandate>>,
    BTreeMap<Uuid, Vec<PaymentPlan>>,
);

/// The four small collections of the accounts in `scope`, in one query (one round trip).
async fn small_collections(
    tx: &mut Transaction<'_, Postgres>,
    scope: Scope<'_>,
) -> Result<Small, StoreError> {
    let part = |n: u8, table: &str| {
        format!(
            "SELECT {n} AS kind, account_id, position, data FROM {table} WHERE {}",
            scope.condition("account_id")
        )
    };
    let sql = format!(
        "{} UNION ALL {} UNION ALL {} UNION ALL {} ORDER BY kind, account_id, position",
        part(0, "enrollments"),
        part(1, "payment_methods"),
        part(2, "mandates"),
        part(3, "plans")
    );
    let mut out: Small = Default::default();
    for r in scope
        .bind(sqlx::query(&sql))
        .fetch_all(&mut **tx)
        .await
        .map_err(db_err)?
    {
        let account: Uuid = get(&r, "account_id")?;
        let kind: i32 = get(&r, "kind")?;
        match kind {
            0 => out.0.entry(account).or_default().push(json(&r, "data")?),
            1 => out.1.entry(account).or_default().push(json(&r, "data")?),
            2 => out.2.entry(account).or_default().push(json(&r, "data")?),
            _ => out.3.entry(account).or_default().push(json(&r, "data")?),
        }
    }
    Ok(out)
}

/// Loads accounts whole, a handful of queries for any number of them; in id order.
async fn load_accounts(
    tx: &mut Transaction<'_, Postgres>,
    scope: Scope<'_>,
) -> Result<Vec<Account>, StoreError> {
    let sql = format!(
        "SELECT a.*, m.username, m.email, m.ssn_digest AS m_ssn_digest, m.ssn_sealed, m.password_hash,
                m.language, m.email_verified_at, m.email_code, m.password_changed_at,
                m.created_at AS m_created_at, m.account_id AS member_of
         FROM accounts a LEFT JOIN members m ON m.account_id = a.id WHERE {}
         ORDER BY a.id",
        scope.condition("a.id")
    );
    let headers = scope
        .bind(sqlx::query(&sql))
        .fetch_all(&mut **tx)
        .await
        .map_err(db_err)?;
    if headers.is_empty() {
        return Ok(Vec::new());
    }
    let (mut enrollments, mut methods, mut mandates, mut plans) =
        small_collections(tx, scope).await?;
    let mut bills: BTreeMap<Uuid, Vec<Bill>> = BTreeMap::new();
    let sql = format!(
        "SELECT * FROM bills WHERE {} ORDER BY account_id, position",
        scope.condition("account_id")
    );
    for r in scope
        .bind(sqlx::query(&sql))
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
    let sql = format!(
        "SELECT al.payment_id, al.bill_id, al.amount_cents FROM allocations al
         JOIN payments p ON p.id = al.payment_id WHERE {}
         ORDER BY al.payment_id, al.position",
        scope.condition("p.account_id")
    );
    for r in scope
        .bind(sqlx::query(&sql))
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
    let sql = format!(
        "SELECT * FROM payments WHERE {} ORDER BY account_id, position",
        scope.condition("account_id")
    );
    for r in scope
        .bind(sqlx::query(&sql))
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

fn to_json(what: &str, v: &impl Serialize) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| corrupt(what, e))
}

/// What a bill write does with bills already stored.
#[derive(Clone, Copy)]
enum Known {
    /// There are none: the bills are new.
    Absent,
    /// Updates them.
    Update,
}

/// Bills as columns, written in one statement however many there are.
#[derive(Default)]
struct BillColumns {
    id: Vec<Uuid>,
    account: Vec<Uuid>,
    position: Vec<i64>,
    enrollment: Vec<Uuid>,
    kind_name: Vec<&'static str>,
    kind: Vec<String>,
    month: Vec<NaiveDate>,
    amount: Vec<i64>,
    allocated: Vec<i64>,
    transferred: Vec<i64>,
    due: Vec<NaiveDate>,
    issued: Vec<NaiveDate>,
    void: Vec<bool>,
    notices: Vec<String>,
    late_fee: Vec<bool>,
}

impl BillColumns {
    fn push(&mut self, account: Uuid, position: usize, b: &Bill) -> Result<(), StoreError> {
        self.id.push(b.id.uuid());
        self.account.push(account);
        self.position
            .push(i64::try_from(position).map_err(|e| corrupt("position", e))?);
        self.enrollment.push(b.enrollment_id.uuid());
        self.kind_name.push(kind_name(&b.kind));
        self.kind.push(to_json("kind", &b.kind)?);
        self.month.push(month_date(b.coverage_month));
        self.amount.push(b.amount.cents());
        self.allocated.push(b.allocated.cents());
        self.transferred.push(b.transferred.cents());
        self.due.push(b.due_date);
        self.issued.push(b.issued_on);
        self.void.push(b.void);
        self.notices.push(to_json("notices", &b.notices)?);
        self.late_fee.push(b.late_fee_assessed);
        Ok(())
    }

    /// Inserts the bills; with `Known::Update`, bills already stored are updated instead (those
    /// of the same account only). `Known::Absent` is a plain insert: cheaper, for bills that are
    /// new by construction (an existing id then fails the whole write).
    async fn write(
        self,
        tx: &mut Transaction<'_, Postgres>,
        known: Known,
    ) -> Result<(), StoreError> {
        if self.id.is_empty() {
            return Ok(());
        }
        const INSERT: &str = "INSERT INTO bills (id, account_id, position, enrollment_id, kind_name, kind, coverage_month,
                 amount_cents, allocated_cents, transferred_cents, due_date, issued_on, void, notices,
                 late_fee_assessed)
             SELECT u.id, u.account_id, u.position, u.enrollment_id, u.kind_name, u.kind::json,
                 u.coverage_month, u.amount, u.allocated, u.transferred, u.due_date, u.issued_on,
                 u.void, u.notices::json, u.late_fee
             FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::uuid[], $5::text[], $6::text[],
                 $7::date[], $8::bigint[], $9::bigint[], $10::bigint[], $11::date[], $12::date[],
                 $13::bool[], $14::text[], $15::bool[])
                 AS u(id, account_id, position, enrollment_id, kind_name, kind, coverage_month, amount,
                      allocated, transferred, due_date, issued_on, void, notices, late_fee)";
        const UPSERT: &str = "
             ON CONFLICT (id) DO UPDATE SET position = EXCLUDED.position,
                 enrollment_id = EXCLUDED.enrollment_id, kind_name = EXCLUDED.kind_name,
                 kind = EXCLUDED.kind, coverage_month = EXCLUDED.coverage_month,
                 amount_cents = EXCLUDED.amount_cents, allocated_cents = EXCLUDED.allocated_cents,
                 transferred_cents = EXCLUDED.transferred_cents, due_date = EXCLUDED.due_date,
                 issued_on = EXCLUDED.issued_on, void = EXCLUDED.void, notices = EXCLUDED.notices,
                 late_fee_assessed = EXCLUDED.late_fee_assessed
             WHERE bills.account_id = EXCLUDED.account_id";
        let sql = match known {
            Known::Absent => INSERT.to_owned(),
            Known::Update => format!("{INSERT}{UPSERT}"),
        };
        sqlx::query(&sql)
            .bind(self.id)
            .bind(self.account)
            .bind(self.position)
            .bind(self.enrollment)
            .bind(self.kind_name)
            .bind(self.kind)
            .bind(self.month)
            .bind(self.amount)
            .bind(self.allocated)
            .bind(self.transferred)
            .bind(self.due)
            .bind(self.issued)
            .bind(self.void)
            .bind(self.notices)
            .bind(self.late_fee)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }
}

/// Audit entries as columns, appended in one statement.
#[derive(Default)]
struct AuditColumns {
    account: Vec<Uuid>,
    at: Vec<DateTime<Utc>>,
    actor: Vec<String>,
    entity: Vec<String>,
    action: Vec<String>,
    detail: Vec<String>,
}

impl AuditColumns {
    fn push(&mut self, e: &AuditEvent) -> Result<(), StoreError> {
        self.account.push(e.account_id.uuid());
        self.at.push(e.at);
        self.actor.push(to_json("actor", &e.actor)?);
        self.entity.push(e.entity.clone());
        self.action.push(e.action.clone());
        self.detail.push(e.detail.clone());
        Ok(())
    }

    async fn write(self, tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
        if self.account.is_empty() {
            return Ok(());
        }
        // WITH ORDINALITY keeps the entries' order in the log's sequence.
        sqlx::query(
            "INSERT INTO audit_log (account_id, at, actor, entity, action, detail)
             SELECT u.account_id, u.at, u.actor::json, u.entity, u.action, u.detail
             FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[])
                 WITH ORDINALITY AS u(account_id, at, actor, entity, action, detail, n)
             ORDER BY u.n",
        )
        .bind(self.account)
        .bind(self.at)
        .bind(self.actor)
        .bind(self.entity)
        .bind(self.action)
        .bind(self.detail)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }
}

/// Notices as columns, queued in one statement; a notice already queued is skipped.
#[derive(Default)]
struct OutboxColumns {
    id: Vec<Uuid>,
    key: Vec<String>,
    account: Vec<Uuid>,
    notice: Vec<String>,
}

impl OutboxColumns {
    fn push(&mut self, n: &Notice) -> Result<(), StoreError> {
        // Time-ordered ids keep the primary key's inserts at its right edge; random ones would
        // touch a different index page for every message.
        self.id.push(Uuid::now_v7());
        self.key.push(n.dedupe_key.clone());
        self.account.push(n.account_id.uuid());
        self.notice.push(to_json("notice", n)?);
        Ok(())
    }

    async fn write(self, tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
        if self.key.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO outbox (id, dedupe_key, account_id, notice)
             SELECT u.id, u.key, u.account_id, u.notice::json
             FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[])
                 WITH ORDINALITY AS u(id, key, account_id, notice, n)
             ORDER BY u.n
             ON CONFLICT (dedupe_key) DO NOTHING",
        )
        .bind(self.id)
        .bind(self.key)
        .bind(self.account)
        .bind(self.notice)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }
}

fn holder_search(a: &Account) -> String {
    a.holder.full_name().to_lowercase()
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// Binds the account header columns as `$1`..`$10`.
fn bind_header<'q>(q: PgQuery<'q>, a: &Account) -> PgQuery<'q> {
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

async fn write_account(tx: &mut Transaction<'_, Postgres>, a: &Account) -> Result<(), StoreError> {
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
    let mut columns = BillColumns::default();
    for b in bills {
        columns.push(id, bill_pos.get(&b.id).copied().unwrap_or(0), b)?;
    }
    columns.write(tx, Known::Update).await?;
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
    tx: &mut Transaction<'_, Postgres>,
    table: &str,
    account: Uuid,
    all: &[T],
    changes: RowChanges<'_, T>,
    id_of: impl Fn(&T) -> Uuid,
) -> Result<(), StoreError> {
    if changes.removed {
        let ids: Vec<Uuid> = all.iter().map(&id_of).collect();
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE account_id = $1 AND NOT (id = ANY($2))"
        ))
        .bind(account)
        .bind(&ids)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    }
    let changed = changes.changed;
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

fn outbox_from(row: &PgRow) -> Result<OutboxMessage, StoreError> {
    Ok(OutboxMessage {
        id: MessageId(get(row, "id")?),
        notice: json::<Notice>(row, "notice")?,
        created_at: get(row, "created_at")?,
        attempts: to_u32(get(row, "attempts")?, "attempts")?,
    })
}

#[async_trait]
impl Store for PgStore {
    async fn load_account(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        Ok(self.load_accounts(vec![id]).await?.pop())
    }

    async fn load_accounts(&self, ids: Vec<AccountId>) -> Result<Vec<Account>, StoreError> {
        let ids: Vec<Uuid> = ids.into_iter().map(AccountId::uuid).collect();
        self.load(Scope::Ids(&ids)).await
    }

    async fn load_chunk(&self, chunk: WorkChunk) -> Result<Vec<Account>, StoreError> {
        self.load(Scope::Range(chunk.first.uuid(), chunk.last.uuid()))
            .await
    }

    async fn issue_bills(&self, batch: Vec<IssuedBills>) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let ids: Vec<Uuid> = batch.iter().map(|b| b.account.uuid()).collect();
        let versions = batch
            .iter()
            .map(|b| i64::try_from(b.version).map_err(|e| corrupt("version", e)))
            .collect::<Result<Vec<i64>, _>>()?;
        let bumped = sqlx::query(
            "UPDATE accounts a SET version = a.version + 1
             FROM unnest($1::uuid[], $2::bigint[]) AS u(id, version)
             WHERE a.id = u.id AND a.version = u.version",
        )
        .bind(&ids)
        .bind(&versions)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if usize::try_from(bumped.rows_affected()).ok() != Some(batch.len()) {
            return Err(StoreError::Conflict);
        }
        let mut rows = BillColumns::default();
        let mut audit = AuditColumns::default();
        let mut outbox = OutboxColumns::default();
        for b in &batch {
            for (pos, bill) in &b.bills {
                rows.push(b.account.uuid(), *pos, bill)?;
            }
            for e in &b.audit {
                audit.push(e)?;
            }
            for n in &b.outbox {
                outbox.push(n)?;
            }
        }
        rows.write(&mut tx, Known::Absent).await?;
        audit.write(&mut tx).await?;
        outbox.write(&mut tx).await?;
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
        let rows = sqlx::query(
            "SELECT id FROM accounts WHERE $1::uuid IS NULL OR id > $1 ORDER BY id LIMIT $2",
        )
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
             WHERE a.holder_search LIKE $1 OR m.email_key LIKE $1 OR m.username_key LIKE $1
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
        let mut audit = AuditColumns::default();
        for e in &changes.audit {
            audit.push(e)?;
        }
        audit.write(&mut tx).await?;
        let mut outbox = OutboxColumns::default();
        for n in &changes.outbox {
            outbox.push(n)?;
        }
        outbox.write(&mut tx).await?;
        tx.commit().await.map_err(db_err)
    }
}

#[async_trait]
impl WorkQueue for PgStore {
    async fn plan_run(&self, run: JobRun, chunk_size: u32) -> Result<u64, StoreError> {
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

    async fn claim(
        &self,
        run: JobRun,
        worker: String,
        limit: u32,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<WorkChunk>, StoreError> {
        let rows = sqlx::query(
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
}

#[async_trait]
impl Outbox for PgStore {
    async fn claim_messages(
        &self,
        worker: String,
        limit: u32,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let rows = sqlx::query(
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
        let rows = sqlx::query("SELECT * FROM outbox WHERE dead ORDER BY seq LIMIT $1")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(outbox_from).collect()
    }

    async fn requeue(&self, id: MessageId, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE outbox SET dead = false, due_at = $2, attempts = 0 WHERE id = $1 AND dead",
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
            "SELECT * FROM outbox WHERE sent_at IS NULL AND NOT dead ORDER BY seq LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(outbox_from).collect()
    }
}
