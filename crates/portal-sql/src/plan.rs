//! What a commit writes, as rows: computed once from `Changes` here, written by each dialect
//! its own way (PostgreSQL in one statement, SQLite statement by statement in a transaction).
//! Only what changed is here: a header always (it carries the version check), the member and
//! small-collection rows that differ from what was loaded, and the ledger's changed bills and
//! payments with their allocations.

use crate::{PaymentData, StoreResult, corrupt, to_json};
use chrono::{DateTime, NaiveDate, Utc};
use portal_core::account::{Account, RowChanges};
use portal_core::audit::AuditEvent;
use portal_core::billing::{Bill, BillKind};
use portal_core::ids::{BillId, PaymentId};
use portal_core::notice::Notice;
use portal_core::payment::Payment;
use serde::Serialize;
use std::collections::BTreeMap;
use uuid::Uuid;

/// The columns of `accounts` a commit writes.
#[derive(Debug)]
pub struct HeaderRow {
    pub number: String,
    pub first_name: String,
    pub last_name: String,
    /// Lower-cased full name, for support search.
    pub search: String,
    pub date_of_birth: NaiveDate,
    pub ssn_digest: String,
    pub ssn_last4: String,
    pub contact_email: Option<String>,
    /// JSON.
    pub reminders: String,
    pub created_at: DateTime<Utc>,
}

/// A `members` row.
#[derive(Debug)]
pub struct MemberRow {
    pub username: String,
    pub username_key: String,
    pub email: String,
    pub email_key: String,
    pub ssn_digest: String,
    pub ssn_sealed: Vec<u8>,
    pub password_hash: String,
    pub language: &'static str,
    pub email_verified_at: Option<DateTime<Utc>>,
    /// JSON.
    pub email_code: Option<String>,
    pub password_changed_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// The member login: unchanged, written, or removed.
#[derive(Debug)]
pub enum MemberWrite {
    Unchanged,
    Put(Box<MemberRow>),
    Delete,
}

/// The rows of one small collection that changed.
#[derive(Debug)]
pub struct CollectionWrite {
    pub table: &'static str,
    /// `Some(ids)` when a row is gone: every row of the account not in `ids` is deleted.
    pub keep: Option<Vec<Uuid>>,
    /// New, changed or moved rows: id, position, JSON.
    pub rows: Vec<(Uuid, i32, String)>,
}

/// A `bills` row.
#[derive(Debug)]
pub struct BillRow {
    pub id: Uuid,
    pub account_id: Uuid,
    pub position: i64,
    pub enrollment_id: Uuid,
    pub kind_name: &'static str,
    /// JSON.
    pub kind: String,
    pub coverage_month: NaiveDate,
    pub amount_cents: i64,
    pub allocated_cents: i64,
    pub transferred_cents: i64,
    pub due_date: NaiveDate,
    pub issued_on: NaiveDate,
    pub void: bool,
    /// JSON.
    pub notices: String,
    pub late_fee_assessed: bool,
}

/// The name of a bill's kind, the column the one-premium-per-month rule reads.
pub fn kind_name(k: &BillKind) -> &'static str {
    match k {
        BillKind::Binder => "binder",
        BillKind::Premium => "premium",
        BillKind::Installment { .. } => "installment",
        BillKind::LateFee { .. } => "late_fee",
    }
}

impl BillRow {
    /// The row of `bill`, at `position` in `account`'s ledger.
    pub fn of(account: Uuid, position: usize, b: &Bill) -> StoreResult<Self> {
        Ok(BillRow {
            id: b.id.uuid(),
            account_id: account,
            position: i64::try_from(position).map_err(|e| corrupt("position", e))?,
            enrollment_id: b.enrollment_id.uuid(),
            kind_name: kind_name(&b.kind),
            kind: to_json("kind", &b.kind)?,
            coverage_month: b.coverage_month.first_day(),
            amount_cents: b.amount.cents(),
            allocated_cents: b.allocated.cents(),
            transferred_cents: b.transferred.cents(),
            due_date: b.due_date,
            issued_on: b.issued_on,
            void: b.void,
            notices: to_json("notices", &b.notices)?,
            late_fee_assessed: b.late_fee_assessed,
        })
    }
}

/// A `payments` row.
#[derive(Debug)]
pub struct PaymentRow {
    pub id: Uuid,
    pub position: i64,
    pub reference: String,
    pub gateway_id: Option<String>,
    pub amount_cents: i64,
    pub refunded_cents: i64,
    pub status: &'static str,
    pub idempotency_key: String,
    pub initiated_at: DateTime<Utc>,
    pub initiated_on: NaiveDate,
    pub expected_settlement: Option<NaiveDate>,
    /// JSON ([`PaymentData`]).
    pub data: String,
}

impl PaymentRow {
    fn of(position: usize, p: &Payment) -> StoreResult<Self> {
        let data = PaymentData {
            instrument: p.instrument.clone(),
            channel: p.channel,
            status: p.status,
            history: p.history.clone(),
        };
        Ok(PaymentRow {
            id: p.id.uuid(),
            position: i64::try_from(position).map_err(|e| corrupt("position", e))?,
            reference: p.reference.to_string(),
            gateway_id: p.gateway_id.clone(),
            amount_cents: p.amount.cents(),
            refunded_cents: p.refunded.cents(),
            status: p.status.name(),
            idempotency_key: p.idempotency_key.clone(),
            initiated_at: p.initiated_at,
            initiated_on: p.initiated_on,
            expected_settlement: p.expected_settlement,
            data: to_json("payment data", &data)?,
        })
    }
}

/// An `allocations` row.
#[derive(Debug)]
pub struct AllocationRow {
    pub payment_id: Uuid,
    pub bill_id: Uuid,
    pub position: i32,
    pub amount_cents: i64,
}

/// Everything a commit writes of one account.
#[derive(Debug)]
pub struct AccountWrite {
    pub id: Uuid,
    /// `None` for a new account (inserted at version 1); otherwise the version it was loaded
    /// at, which the write must find and bump.
    pub loaded_version: Option<i64>,
    pub header: HeaderRow,
    pub member: MemberWrite,
    /// Only the collections with changes.
    pub collections: Vec<CollectionWrite>,
    pub bills: Vec<BillRow>,
    pub payments: Vec<PaymentRow>,
    /// Stored payments whose allocations changed: the store deletes each one's rows that are
    /// not in `allocations`.
    pub allocated: Vec<Uuid>,
    /// The allocation rows of new payments and of those in `allocated`, to insert or update.
    pub allocations: Vec<AllocationRow>,
}

fn collection<T: Serialize>(
    table: &'static str,
    all: &[T],
    changes: RowChanges<'_, T>,
    id_of: impl Fn(&T) -> Uuid,
) -> StoreResult<Option<CollectionWrite>> {
    if !changes.removed && changes.changed.is_empty() {
        return Ok(None);
    }
    let rows = changes
        .changed
        .into_iter()
        .map(|(pos, item)| {
            Ok((
                id_of(item),
                i32::try_from(pos).map_err(|e| corrupt("position", e))?,
                to_json(table, item)?,
            ))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Some(CollectionWrite {
        table,
        keep: changes.removed.then(|| all.iter().map(&id_of).collect()),
        rows,
    }))
}

impl AccountWrite {
    /// What committing `a` writes: a new account whole, a loaded one what changed.
    pub fn of(a: &Account) -> StoreResult<Self> {
        let id = a.id.uuid();
        let is_new = a.version == 0;
        let header = HeaderRow {
            number: a.number.as_ref().to_owned(),
            first_name: a.holder.first_name.to_string(),
            last_name: a.holder.last_name.to_string(),
            search: a.holder.full_name().to_lowercase(),
            date_of_birth: a.holder.date_of_birth,
            ssn_digest: a.holder.ssn_digest.0.clone(),
            ssn_last4: a.holder.ssn_last4.clone(),
            contact_email: a.contact_email.as_ref().map(|e| e.as_ref().to_owned()),
            reminders: to_json("reminders", &a.reminders)?,
            created_at: a.created_at,
        };
        let member = match &a.member {
            _ if !a.member_changed() => MemberWrite::Unchanged,
            None => MemberWrite::Delete,
            Some(m) => MemberWrite::Put(Box::new(MemberRow {
                username: m.username.to_string(),
                username_key: m.username.key(),
                email: m.email.to_string(),
                email_key: m.email.key(),
                ssn_digest: m.ssn_digest.0.clone(),
                ssn_sealed: m.ssn_sealed.0.clone(),
                password_hash: m.password_hash.0.clone(),
                language: m.language.code(),
                email_verified_at: m.email_verified_at,
                email_code: m
                    .email_code
                    .as_ref()
                    .map(|c| to_json("email_code", c))
                    .transpose()?,
                password_changed_at: m.password_changed_at,
                created_at: m.created_at,
            })),
        };
        let collections = [
            collection("enrollments", &a.enrollments, a.enrollment_changes(), |e| {
                e.id.uuid()
            })?,
            collection("payment_methods", &a.methods, a.method_changes(), |m| {
                m.id.uuid()
            })?,
            collection("mandates", &a.mandates, a.mandate_changes(), |m| {
                m.id.uuid()
            })?,
            collection("plans", &a.plans, a.plan_changes(), |p| p.id.uuid())?,
        ]
        .into_iter()
        .flatten()
        .collect();
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
        let pay_pos: BTreeMap<PaymentId, usize> = a
            .ledger
            .payments
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id, i))
            .collect();
        // A payment's allocation rows are written only when they differ from what the store
        // holds; a stored payment's other rows are then deleted.
        let mut allocations = Vec::new();
        let mut allocated = Vec::new();
        for p in &payments {
            match a.stored_allocations(p.id) {
                Some(before) if before == p.allocations.as_slice() => continue,
                Some(_) => allocated.push(p.id.uuid()),
                None => {}
            }
            for (i, al) in p.allocations.iter().enumerate() {
                allocations.push(AllocationRow {
                    payment_id: p.id.uuid(),
                    bill_id: al.bill_id.uuid(),
                    position: i32::try_from(i).map_err(|e| corrupt("position", e))?,
                    amount_cents: al.amount.cents(),
                });
            }
        }
        Ok(AccountWrite {
            id,
            loaded_version: if is_new {
                None
            } else {
                Some(i64::try_from(a.version).map_err(|e| corrupt("version", e))?)
            },
            header,
            member,
            collections,
            bills: bills
                .iter()
                .map(|b| BillRow::of(id, bill_pos.get(&b.id).copied().unwrap_or(0), b))
                .collect::<StoreResult<_>>()?,
            payments: payments
                .iter()
                .map(|p| PaymentRow::of(pay_pos.get(&p.id).copied().unwrap_or(0), p))
                .collect::<StoreResult<_>>()?,
            allocated,
            allocations,
        })
    }
}

/// An `audit_log` row.
#[derive(Debug)]
pub struct AuditRow {
    pub account_id: Uuid,
    pub at: DateTime<Utc>,
    /// JSON.
    pub actor: String,
    pub entity: String,
    pub action: String,
    pub detail: String,
}

impl AuditRow {
    /// The row of an audit entry.
    pub fn of(e: &AuditEvent) -> StoreResult<Self> {
        Ok(AuditRow {
            account_id: e.account_id.uuid(),
            at: e.at,
            actor: to_json("actor", &e.actor)?,
            entity: e.entity.clone(),
            action: e.action.clone(),
            detail: e.detail.clone(),
        })
    }
}

/// An `outbox` row.
#[derive(Debug)]
pub struct OutboxRow {
    pub id: Uuid,
    pub dedupe_key: String,
    pub account_id: Uuid,
    /// JSON.
    pub notice: String,
}

impl OutboxRow {
    /// The row queuing a notice. Time-ordered ids keep the primary key's inserts at its right
    /// edge; random ones would touch a different index page for every message.
    pub fn of(n: &Notice) -> StoreResult<Self> {
        Ok(OutboxRow {
            id: Uuid::now_v7(),
            dedupe_key: n.dedupe_key.clone(),
            account_id: n.account_id.uuid(),
            notice: to_json("notice", n)?,
        })
    }
}
