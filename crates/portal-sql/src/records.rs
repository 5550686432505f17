//! Rows as both databases return them (`sqlx::FromRow`, generic over the database), and their
//! conversion to the domain. A dialect runs the queries of [`crate::sql`] and hands the rows
//! here; nothing in this module knows which database read them.

use crate::{PaymentData, StoreResult, corrupt};
use chrono::{DateTime, NaiveDate, Utc};
use portal_core::account::{
    Account, EmailCode, Holder, IdempotencyRecord, LoginThrottle, LookupDigest, Member,
    PasswordHash, Principal, ReminderPreferences, ResetToken, SealedSecret, Session, Stored,
    TokenDigest,
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
use portal_core::payment::{Allocation, Payment};
use portal_core::plan::PaymentPlan;
use portal_core::ports::OutboxMessage;
use portal_core::reference::PaymentReference;
use serde::de::DeserializeOwned;
use sqlx::types::Json;
use std::collections::BTreeMap;
use uuid::Uuid;

/// An account's header with its member login, if any (`accounts LEFT JOIN members`).
#[derive(Debug, sqlx::FromRow, serde::Deserialize)]
pub struct HeaderRecord {
    id: Uuid,
    version: i64,
    number: String,
    holder_first_name: String,
    holder_last_name: String,
    date_of_birth: NaiveDate,
    ssn_digest: String,
    ssn_last4: String,
    contact_email: Option<String>,
    reminders: Json<ReminderPreferences>,
    created_at: DateTime<Utc>,
    member_of: Option<Uuid>,
    username: Option<String>,
    email: Option<String>,
    m_ssn_digest: Option<String>,
    #[serde(default, deserialize_with = "bytea")]
    ssn_sealed: Option<Vec<u8>>,
    password_hash: Option<String>,
    language: Option<String>,
    email_verified_at: Option<DateTime<Utc>>,
    email_code: Option<Json<EmailCode>>,
    password_changed_at: Option<DateTime<Utc>>,
    m_created_at: Option<DateTime<Utc>>,
}

/// A `bytea` as PostgreSQL's JSON writes it: `"\\x"` and hex digits.
fn bytea<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    use serde::de::Error;
    let Some(s) = <Option<String> as serde::Deserialize>::deserialize(d)? else {
        return Ok(None);
    };
    let hex = s
        .strip_prefix("\\x")
        .ok_or_else(|| D::Error::custom("bytea is not hex"))?;
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(|| D::Error::custom("bytea is not hex"))
        })
        .collect::<Result<Vec<u8>, _>>()
        .map(Some)
}

fn required<T>(v: Option<T>, col: &str) -> StoreResult<T> {
    v.ok_or_else(|| corrupt(col, "missing in a member row"))
}

impl HeaderRecord {
    fn member(&mut self) -> StoreResult<Option<Member>> {
        if self.member_of.is_none() {
            return Ok(None);
        }
        let username = required(self.username.take(), "username")?;
        let email = required(self.email.take(), "email")?;
        let language = required(self.language.take(), "language")?;
        Ok(Some(Member {
            username: Username::parse(&username).map_err(|e| corrupt("username", e))?,
            email: Email::parse(&email).map_err(|e| corrupt("email", e))?,
            email_verified_at: self.email_verified_at,
            email_code: self.email_code.take().map(|Json(c)| c),
            password_hash: PasswordHash(required(self.password_hash.take(), "password_hash")?),
            password_changed_at: required(self.password_changed_at, "password_changed_at")?,
            language: Language::parse(&language).map_err(|e| corrupt("language", e))?,
            ssn_sealed: SealedSecret(required(self.ssn_sealed.take(), "ssn_sealed")?),
            ssn_digest: LookupDigest(required(self.m_ssn_digest.take(), "m_ssn_digest")?),
            created_at: required(self.m_created_at, "m_created_at")?,
        }))
    }
}

/// A row of one of the four small collections, tagged with which (`kind` 0 to 3: enrollments,
/// payment methods, mandates, plans), its JSON as text.
#[derive(Debug, sqlx::FromRow, serde::Deserialize)]
pub struct CollectionRecord {
    kind: i32,
    account_id: Uuid,
    data: String,
}

/// A bill row.
#[derive(Debug, sqlx::FromRow, serde::Deserialize)]
pub struct BillRecord {
    id: Uuid,
    account_id: Uuid,
    enrollment_id: Uuid,
    kind: Json<BillKind>,
    coverage_month: NaiveDate,
    amount_cents: i64,
    allocated_cents: i64,
    transferred_cents: i64,
    due_date: NaiveDate,
    issued_on: NaiveDate,
    void: bool,
    notices: Json<Vec<BillNotice>>,
    late_fee_assessed: bool,
}

impl BillRecord {
    fn into_bill(self) -> Bill {
        Bill {
            id: BillId(self.id),
            enrollment_id: EnrollmentId(self.enrollment_id),
            kind: self.kind.0,
            coverage_month: CoverageMonth::of(self.coverage_month),
            amount: Money::from_cents(self.amount_cents),
            allocated: Money::from_cents(self.allocated_cents),
            transferred: Money::from_cents(self.transferred_cents),
            due_date: self.due_date,
            issued_on: self.issued_on,
            void: self.void,
            notices: self.notices.0,
            late_fee_assessed: self.late_fee_assessed,
        }
    }
}

/// An allocation row (in the payment's order).
#[derive(Debug, sqlx::FromRow, serde::Deserialize)]
pub struct AllocationRecord {
    payment_id: Uuid,
    bill_id: Uuid,
    amount_cents: i64,
}

/// A payment row.
#[derive(Debug, sqlx::FromRow, serde::Deserialize)]
pub struct PaymentRecord {
    id: Uuid,
    account_id: Uuid,
    reference: String,
    gateway_id: Option<String>,
    amount_cents: i64,
    refunded_cents: i64,
    idempotency_key: String,
    initiated_at: DateTime<Utc>,
    initiated_on: NaiveDate,
    expected_settlement: Option<NaiveDate>,
    data: Json<PaymentData>,
}

impl PaymentRecord {
    fn into_payment(self, allocations: Vec<Allocation>) -> StoreResult<Payment> {
        let Json(data) = self.data;
        Ok(Payment {
            id: PaymentId(self.id),
            reference: PaymentReference::parse(&self.reference)
                .map_err(|e| corrupt("reference", e))?,
            amount: Money::from_cents(self.amount_cents),
            refunded: Money::from_cents(self.refunded_cents),
            instrument: data.instrument,
            channel: data.channel,
            status: data.status,
            gateway_id: self.gateway_id,
            idempotency_key: self.idempotency_key,
            initiated_at: self.initiated_at,
            initiated_on: self.initiated_on,
            expected_settlement: self.expected_settlement,
            allocations,
            history: data.history,
        })
    }
}

/// Everything the load queries of [`crate::sql::load`] returned for some accounts.
#[derive(Debug, Default)]
pub struct AccountRecords {
    /// Headers, in id order.
    pub headers: Vec<HeaderRecord>,
    /// Small collections, by kind, account and position.
    pub collections: Vec<CollectionRecord>,
    /// Bills, by account and position.
    pub bills: Vec<BillRecord>,
    /// Allocations, by payment and position.
    pub allocations: Vec<AllocationRecord>,
    /// Payments, by account and position.
    pub payments: Vec<PaymentRecord>,
}

fn from_json<T: DeserializeOwned>(what: &str, s: &str) -> StoreResult<T> {
    serde_json::from_str(s).map_err(|e| corrupt(what, e))
}

/// The small collections of one account.
#[derive(Default)]
struct Small {
    enrollments: Vec<Enrollment>,
    methods: Vec<PaymentMethod>,
    mandates: Vec<Mandate>,
    plans: Vec<PaymentPlan>,
}

impl AccountRecords {
    /// The accounts, whole, in id order; each remembers what the store holds.
    pub fn into_accounts(self) -> StoreResult<Vec<Account>> {
        let mut small: BTreeMap<Uuid, Small> = BTreeMap::new();
        for r in self.collections {
            let s = small.entry(r.account_id).or_default();
            match r.kind {
                0 => s.enrollments.push(from_json("enrollments", &r.data)?),
                1 => s.methods.push(from_json("payment_methods", &r.data)?),
                2 => s.mandates.push(from_json("mandates", &r.data)?),
                3 => s.plans.push(from_json("plans", &r.data)?),
                k => return Err(corrupt("collection kind", k)),
            }
        }
        let mut bills: BTreeMap<Uuid, Vec<Bill>> = BTreeMap::new();
        for r in self.bills {
            bills.entry(r.account_id).or_default().push(r.into_bill());
        }
        let mut allocations: BTreeMap<Uuid, Vec<Allocation>> = BTreeMap::new();
        for r in self.allocations {
            allocations
                .entry(r.payment_id)
                .or_default()
                .push(Allocation {
                    bill_id: BillId(r.bill_id),
                    amount: Money::from_cents(r.amount_cents),
                });
        }
        let mut payments: BTreeMap<Uuid, Vec<Payment>> = BTreeMap::new();
        for r in self.payments {
            let own = allocations.remove(&r.id).unwrap_or_default();
            payments
                .entry(r.account_id)
                .or_default()
                .push(r.into_payment(own)?);
        }
        let mut out = Vec::with_capacity(self.headers.len());
        for mut h in self.headers {
            let member = h.member()?;
            let s = small.remove(&h.id).unwrap_or_default();
            let mut account = Account {
                id: AccountId(h.id),
                version: u64::try_from(h.version).map_err(|e| corrupt("version", e))?,
                number: AccountNumber::parse(&h.number).map_err(|e| corrupt("number", e))?,
                holder: Holder {
                    first_name: PersonName::parse(&h.holder_first_name)
                        .map_err(|e| corrupt("holder_first_name", e))?,
                    last_name: PersonName::parse(&h.holder_last_name)
                        .map_err(|e| corrupt("holder_last_name", e))?,
                    date_of_birth: h.date_of_birth,
                    ssn_digest: LookupDigest(h.ssn_digest),
                    ssn_last4: h.ssn_last4,
                },
                contact_email: h
                    .contact_email
                    .map(|c| Email::parse(&c).map_err(|e| corrupt("contact_email", e)))
                    .transpose()?,
                enrollments: s.enrollments,
                ledger: Ledger::new(
                    bills.remove(&h.id).unwrap_or_default(),
                    payments.remove(&h.id).unwrap_or_default(),
                ),
                methods: s.methods,
                mandates: s.mandates,
                plans: s.plans,
                member,
                reminders: h.reminders.0,
                created_at: h.created_at,
                stored: Stored::default(),
            };
            account.remember_stored();
            out.push(account);
        }
        Ok(out)
    }
}

/// An idempotency record row.
#[derive(Debug, sqlx::FromRow)]
pub struct IdempotencyRow {
    scope: String,
    key: String,
    request_digest: String,
    payment_id: Uuid,
    account_id: Uuid,
    created_at: DateTime<Utc>,
}

impl From<IdempotencyRow> for IdempotencyRecord {
    fn from(r: IdempotencyRow) -> Self {
        IdempotencyRecord {
            scope: r.scope,
            key: r.key,
            request_digest: r.request_digest,
            payment_id: PaymentId(r.payment_id),
            account_id: AccountId(r.account_id),
            created_at: r.created_at,
        }
    }
}

/// A session row.
#[derive(Debug, sqlx::FromRow)]
pub struct SessionRecord {
    digest: String,
    id: Uuid,
    principal: Json<Principal>,
    created_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
}

impl From<SessionRecord> for Session {
    fn from(r: SessionRecord) -> Self {
        Session {
            id: SessionId(r.id),
            digest: TokenDigest(r.digest),
            principal: r.principal.0,
            created_at: r.created_at,
            last_seen_at: r.last_seen_at,
        }
    }
}

/// A password-reset token row.
#[derive(Debug, sqlx::FromRow)]
pub struct ResetTokenRecord {
    digest: String,
    account_id: Uuid,
    expires_at: DateTime<Utc>,
    used_at: Option<DateTime<Utc>>,
}

impl From<ResetTokenRecord> for ResetToken {
    fn from(r: ResetTokenRecord) -> Self {
        ResetToken {
            digest: TokenDigest(r.digest),
            account_id: AccountId(r.account_id),
            expires_at: r.expires_at,
            used_at: r.used_at,
        }
    }
}

/// A login-throttle row.
#[derive(Debug, sqlx::FromRow)]
pub struct ThrottleRecord {
    key: String,
    failures: i32,
    window_started_at: DateTime<Utc>,
    locked_until: Option<DateTime<Utc>>,
}

impl TryFrom<ThrottleRecord> for LoginThrottle {
    type Error = portal_core::ports::StoreError;
    fn try_from(r: ThrottleRecord) -> StoreResult<Self> {
        Ok(LoginThrottle {
            key: r.key,
            failures: u32::try_from(r.failures).map_err(|e| corrupt("failures", e))?,
            window_started_at: r.window_started_at,
            locked_until: r.locked_until,
        })
    }
}

/// An audit-log row.
#[derive(Debug, sqlx::FromRow)]
pub struct AuditRecord {
    at: DateTime<Utc>,
    account_id: Uuid,
    actor: Json<Actor>,
    entity: String,
    action: String,
    detail: String,
}

impl From<AuditRecord> for AuditEvent {
    fn from(r: AuditRecord) -> Self {
        AuditEvent {
            at: r.at,
            account_id: AccountId(r.account_id),
            actor: r.actor.0,
            entity: r.entity,
            action: r.action,
            detail: r.detail,
        }
    }
}

/// An outbox row.
#[derive(Debug, sqlx::FromRow)]
pub struct OutboxRecord {
    id: Uuid,
    notice: Json<Notice>,
    created_at: DateTime<Utc>,
    attempts: i32,
}

impl TryFrom<OutboxRecord> for OutboxMessage {
    type Error = portal_core::ports::StoreError;
    fn try_from(r: OutboxRecord) -> StoreResult<Self> {
        Ok(OutboxMessage {
            id: MessageId(r.id),
            notice: r.notice.0,
            created_at: r.created_at,
            attempts: u32::try_from(r.attempts).map_err(|e| corrupt("attempts", e))?,
        })
    }
}

/// An outbox row as a claim returns it, with its place in the queue.
#[derive(Debug, sqlx::FromRow)]
pub struct ClaimedRecord {
    seq: i64,
    #[sqlx(flatten)]
    message: OutboxRecord,
}

/// Claimed messages in queue order.
pub fn in_queue_order(mut rows: Vec<ClaimedRecord>) -> StoreResult<Vec<OutboxMessage>> {
    rows.sort_by_key(|r| r.seq);
    rows.into_iter().map(|r| r.message.try_into()).collect()
}

/// A claimed chunk of job work.
#[derive(Debug, sqlx::FromRow)]
pub struct ChunkRecord {
    account_id: Uuid,
    last_account_id: Uuid,
}

impl From<ChunkRecord> for portal_core::ports::WorkChunk {
    fn from(r: ChunkRecord) -> Self {
        portal_core::ports::WorkChunk {
            first: AccountId(r.account_id),
            last: AccountId(r.last_account_id),
        }
    }
}
