//! What a commit writes, as rows: computed once from `Changes` here, written by each dialect
//! its own way (PostgreSQL in one statement, SQLite statement by statement in a transaction).
//! Only what changed is here: a header always (it carries the version check), the member and
//! small-collection rows that differ from what was loaded, and the ledger's changed bills and
//! payments with their allocations.
//!
//! Every insert is a [`Table`]: its columns named once, here, its rows as [`Value`]s, and what
//! a duplicate key does. A dialect decides only how the values travel: PostgreSQL binds each
//! column as one array, SQLite one row at a time.

use crate::{PaymentData, StoreResult, corrupt, to_json};
use chrono::{DateTime, NaiveDate, Utc};
use portal_core::account::{Account, RowChanges};
use portal_core::audit::AuditEvent;
use portal_core::billing::{Bill, BillKind};
use portal_core::notice::Notice;
use portal_core::payment::Payment;
use portal_core::ports::Changes;
use serde::Serialize;
use uuid::Uuid;

/// A column's value, as both dialects bind it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Id(Option<Uuid>),
    Text(Option<String>),
    /// JSON text, stored as `json` in PostgreSQL (a payload only ever read back whole), as
    /// text in SQLite.
    Json(Option<String>),
    /// JSON text, stored as `jsonb` in PostgreSQL, as text in SQLite.
    Jsonb(Option<String>),
    Int(i64),
    Bool(bool),
    Date(Option<NaiveDate>),
    Time(Option<DateTime<Utc>>),
    Bytes(Vec<u8>),
}

impl Value {
    /// `v` as the JSON text a `json` column keeps.
    pub fn json(what: &str, v: &impl Serialize) -> StoreResult<Self> {
        Ok(Value::Json(Some(to_json(what, v)?)))
    }

    /// `v` as the JSON text a `jsonb` column keeps.
    pub fn jsonb(what: &str, v: &impl Serialize) -> StoreResult<Self> {
        Ok(Value::Jsonb(Some(to_json(what, v)?)))
    }

    /// The PostgreSQL type the value binds as.
    pub fn pg_type(&self) -> &'static str {
        match self {
            Value::Id(_) => "uuid",
            Value::Text(_) => "text",
            Value::Json(_) => "json",
            Value::Jsonb(_) => "jsonb",
            Value::Int(_) => "bigint",
            Value::Bool(_) => "bool",
            Value::Date(_) => "date",
            Value::Time(_) => "timestamptz",
            Value::Bytes(_) => "bytea",
        }
    }
}

macro_rules! value_from {
    ($($t:ty => $v:ident($e:expr)),* $(,)?) => {
        $(impl From<$t> for Value {
            fn from(x: $t) -> Self {
                #[allow(clippy::redundant_closure_call)]
                Value::$v(($e)(x))
            }
        })*
    };
}

value_from! {
    Uuid => Id(Some),
    Option<Uuid> => Id(|x| x),
    String => Text(Some),
    &str => Text(|x: &str| Some(x.to_owned())),
    Option<String> => Text(|x| x),
    i64 => Int(|x| x),
    i32 => Int(i64::from),
    bool => Bool(|x| x),
    NaiveDate => Date(Some),
    Option<NaiveDate> => Date(|x| x),
    DateTime<Utc> => Time(Some),
    Option<DateTime<Utc>> => Time(|x| x),
    Vec<u8> => Bytes(|x| x),
}

/// A row's values, in its table's column order.
pub type Row = Vec<Value>;

/// What inserting a row whose key exists does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnConflict {
    /// The commit fails (a unique violation, which names the rule).
    Fail,
    /// The row is skipped.
    Skip,
    /// The row is updated.
    Update,
    /// The row is updated where it belongs to the same account; another account's row is left
    /// alone and the commit is refused (the dialect checks that every row was written).
    UpdateOwn,
}

/// Rows to insert into one table.
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    /// The column names, comma-separated.
    pub columns: &'static str,
    /// The conflict target, comma-separated.
    pub key: &'static str,
    pub on_conflict: OnConflict,
    /// Each row's values, in column order.
    pub rows: Vec<Row>,
    /// Whether the rows must go in in their order (the table numbers its rows).
    pub ordered: bool,
}

impl Table {
    fn new(
        name: &'static str,
        columns: &'static str,
        key: &'static str,
        on_conflict: OnConflict,
        rows: Vec<Row>,
    ) -> Self {
        Table {
            name,
            columns,
            key,
            on_conflict,
            rows,
            ordered: false,
        }
    }

    fn in_order(self) -> Self {
        Table {
            ordered: true,
            ..self
        }
    }

    /// The column names.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + use<> {
        self.columns.split(", ")
    }

    /// Whether the dialect must check that every row was written.
    pub fn checked(&self) -> bool {
        self.on_conflict == OnConflict::UpdateOwn
    }

    /// The `ON CONFLICT` clause (both dialects write it alike), with a leading space.
    pub fn on_conflict_sql(&self) -> String {
        let key = self.key;
        let sets = || {
            let sets: Vec<String> = self
                .names()
                .filter(|c| !key.split(", ").any(|k| k == *c))
                .map(|c| format!("{c} = excluded.{c}"))
                .collect();
            sets.join(", ")
        };
        match self.on_conflict {
            OnConflict::Fail => String::new(),
            OnConflict::Skip => format!(" ON CONFLICT ({key}) DO NOTHING"),
            OnConflict::Update => format!(" ON CONFLICT ({key}) DO UPDATE SET {}", sets()),
            OnConflict::UpdateOwn => format!(
                " ON CONFLICT ({key}) DO UPDATE SET {} WHERE {t}.account_id = excluded.account_id",
                sets(),
                t = self.name
            ),
        }
    }

    /// The rows' values column by column.
    pub fn into_columns(self) -> Vec<Vec<Value>> {
        let mut cols: Vec<Vec<Value>> = self
            .names()
            .map(|_| Vec::with_capacity(self.rows.len()))
            .collect();
        for row in self.rows {
            for (col, v) in cols.iter_mut().zip(row) {
                col.push(v);
            }
        }
        cols
    }
}

/// The member login: unchanged, written, or removed.
#[derive(Debug)]
pub enum MemberWrite {
    Unchanged,
    Put(Table),
    Delete,
}

/// The rows of one small collection that changed.
#[derive(Debug)]
pub struct CollectionWrite {
    /// `Some(ids)` when a row is gone: every row of the account not in `ids` is deleted.
    pub keep: Option<Vec<Uuid>>,
    /// New, changed or moved rows.
    pub rows: Table,
}

/// The rows of `bills`: inserted, or with `upsert` updated where the account has them.
pub fn bills(rows: Vec<Row>, upsert: bool) -> Table {
    let on_conflict = if upsert {
        OnConflict::UpdateOwn
    } else {
        OnConflict::Fail
    };
    Table::new("bills", BILL_COLUMNS, "id", on_conflict, rows)
}

const BILL_COLUMNS: &str = "id, account_id, position, enrollment_id, kind_name, kind, \
    coverage_month, amount_cents, allocated_cents, transferred_cents, due_date, issued_on, void, \
    notices, late_fee_assessed";

/// The row of `bill`, at `position` in `account`'s ledger.
pub fn bill_row(account: Uuid, position: usize, b: &Bill) -> StoreResult<Row> {
    Ok(vec![
        b.id.uuid().into(),
        account.into(),
        position_of(position)?,
        b.enrollment_id.uuid().into(),
        kind_name(&b.kind).into(),
        Value::json("kind", &b.kind)?,
        b.coverage_month.first_day().into(),
        b.amount.cents().into(),
        b.allocated.cents().into(),
        b.transferred.cents().into(),
        b.due_date.into(),
        b.issued_on.into(),
        b.void.into(),
        Value::json("notices", &b.notices)?,
        b.late_fee_assessed.into(),
    ])
}

fn position_of(position: usize) -> StoreResult<Value> {
    Ok(i64::try_from(position)
        .map_err(|e| corrupt("position", e))?
        .into())
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

fn payment_row(account: Uuid, position: usize, p: &Payment) -> StoreResult<Row> {
    let data = PaymentData {
        instrument: p.instrument.clone(),
        channel: p.channel,
        status: p.status,
        history: p.history.clone(),
    };
    Ok(vec![
        p.id.uuid().into(),
        account.into(),
        position_of(position)?,
        p.reference.to_string().into(),
        p.gateway_id.clone().into(),
        p.amount.cents().into(),
        p.refunded.cents().into(),
        p.status.name().into(),
        p.idempotency_key.clone().into(),
        p.initiated_at.into(),
        p.initiated_on.into(),
        p.expected_settlement.into(),
        Value::jsonb("payment data", &data)?,
    ])
}

/// Everything a commit writes of one account.
#[derive(Debug)]
pub struct AccountWrite {
    pub id: Uuid,
    /// Whether the account is new: its header is inserted at version 1. Otherwise the header
    /// row carries the version the account was loaded at, which the write must find and bump.
    pub is_new: bool,
    /// `accounts`: `id`, `version`, then the columns written.
    pub header: Table,
    pub member: MemberWrite,
    /// Only the collections with changes.
    pub collections: Vec<CollectionWrite>,
    pub bills: Table,
    pub payments: Table,
    /// Stored payments whose allocations changed: the store deletes each one's rows that are
    /// not in `allocations`.
    pub allocated: Vec<Uuid>,
    /// The allocation rows of new payments and of those in `allocated`, to insert or update.
    pub allocations: Table,
}

/// The rows of `accounts` whose versions a write checks and bumps: `id`, `version`, then
/// `columns`, each row's values in that order.
pub fn versions(columns: &'static str, rows: Vec<Row>) -> Table {
    Table::new("accounts", columns, "id", OnConflict::Fail, rows)
}

fn collection<T: Serialize>(
    table: &'static str,
    account: Uuid,
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
            Ok(vec![
                id_of(item).into(),
                account.into(),
                position_of(pos)?,
                Value::jsonb(table, item)?,
            ])
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let columns = "id, account_id, position, data";
    Ok(Some(CollectionWrite {
        keep: changes.removed.then(|| all.iter().map(&id_of).collect()),
        rows: Table::new(table, columns, "id", OnConflict::UpdateOwn, rows),
    }))
}

impl AccountWrite {
    /// What committing `a` writes: a new account whole, a loaded one what changed.
    pub fn of(a: &Account) -> StoreResult<Self> {
        let id = a.id.uuid();
        let is_new = a.version == 0;
        let version = if is_new { 1 } else { a.version };
        let version: Value = i64::try_from(version)
            .map_err(|e| corrupt("version", e))?
            .into();
        // An unchanged header only has its version bumped.
        let header = if !is_new && !a.header_changed() {
            versions("id, version", vec![vec![id.into(), version]])
        } else {
            versions(
                "id, version, number, holder_first_name, holder_last_name, holder_search, \
                    date_of_birth, ssn_digest, ssn_last4, contact_email, reminders, created_at",
                vec![vec![
                    id.into(),
                    version,
                    a.number.as_ref().into(),
                    a.holder.first_name.to_string().into(),
                    a.holder.last_name.to_string().into(),
                    a.holder.full_name().to_lowercase().into(),
                    a.holder.date_of_birth.into(),
                    a.holder.ssn_digest.0.clone().into(),
                    a.holder.ssn_last4.clone().into(),
                    a.contact_email
                        .as_ref()
                        .map(|e| e.as_ref().to_owned())
                        .into(),
                    Value::jsonb("reminders", &a.reminders)?,
                    a.created_at.into(),
                ]],
            )
        };
        let member = match &a.member {
            _ if !a.member_changed() => MemberWrite::Unchanged,
            None => MemberWrite::Delete,
            Some(m) => MemberWrite::Put(Table::new(
                "members",
                "account_id, username, username_key, email, email_key, ssn_digest, \
                        ssn_sealed, password_hash, language, email_verified_at, email_code, \
                        password_changed_at, created_at",
                "account_id",
                OnConflict::Update,
                vec![vec![
                    id.into(),
                    m.username.to_string().into(),
                    m.username.key().into(),
                    m.email.to_string().into(),
                    m.email.key().into(),
                    m.ssn_digest.0.clone().into(),
                    m.ssn_sealed.0.clone().into(),
                    m.password_hash.0.clone().into(),
                    m.language.code().into(),
                    m.email_verified_at.into(),
                    Value::Jsonb(
                        m.email_code
                            .as_ref()
                            .map(|c| to_json("email_code", c))
                            .transpose()?,
                    ),
                    m.password_changed_at.into(),
                    m.created_at.into(),
                ]],
            )),
        };
        let collections = [
            collection(
                "enrollments",
                id,
                &a.enrollments,
                a.enrollment_changes(),
                |e| e.id.uuid(),
            )?,
            collection("payment_methods", id, &a.methods, a.method_changes(), |m| {
                m.id.uuid()
            })?,
            collection("mandates", id, &a.mandates, a.mandate_changes(), |m| {
                m.id.uuid()
            })?,
            collection("plans", id, &a.plans, a.plan_changes(), |p| p.id.uuid())?,
        ]
        .into_iter()
        .flatten()
        .collect();
        let (bills_changed, payments): (Vec<&Bill>, Vec<&Payment>) = if is_new {
            (
                a.ledger.bills.iter().collect(),
                a.ledger.payments.iter().collect(),
            )
        } else {
            a.ledger.changed()
        };
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
                allocations.push(vec![
                    p.id.uuid().into(),
                    al.bill_id.uuid().into(),
                    position_of(i)?,
                    al.amount.cents().into(),
                ]);
            }
        }
        let payment_columns = "id, account_id, position, reference, gateway_id, amount_cents, \
            refunded_cents, status, idempotency_key, initiated_at, initiated_on, \
            expected_settlement, data";
        Ok(AccountWrite {
            id,
            is_new,
            header,
            member,
            collections,
            bills: bills(
                bills_changed
                    .iter()
                    .map(|b| {
                        bill_row(
                            id,
                            a.ledger
                                .bills
                                .iter()
                                .position(|x| x.id == b.id)
                                .unwrap_or(0),
                            b,
                        )
                    })
                    .collect::<StoreResult<_>>()?,
                true,
            ),
            payments: Table::new(
                "payments",
                payment_columns,
                "id",
                OnConflict::UpdateOwn,
                payments
                    .iter()
                    .map(|p| {
                        payment_row(
                            id,
                            a.ledger
                                .payments
                                .iter()
                                .position(|x| x.id == p.id)
                                .unwrap_or(0),
                            p,
                        )
                    })
                    .collect::<StoreResult<_>>()?,
            ),
            allocated,
            allocations: Table::new(
                "allocations",
                "payment_id, bill_id, position, amount_cents",
                "payment_id, bill_id",
                OnConflict::Update,
                allocations,
            ),
        })
    }
}

/// The `audit_log` rows of audit entries, in order (the entries' order is the log's sequence).
pub fn audit<'a>(entries: impl IntoIterator<Item = &'a AuditEvent>) -> StoreResult<Table> {
    let rows = entries
        .into_iter()
        .map(|e| {
            Ok(vec![
                e.account_id.uuid().into(),
                e.at.into(),
                Value::json("actor", &e.actor)?,
                e.entity.clone().into(),
                e.action.clone().into(),
                e.detail.clone().into(),
            ])
        })
        .collect::<StoreResult<_>>()?;
    let columns = "account_id, at, actor, entity, action, detail";
    Ok(Table::new("audit_log", columns, "", OnConflict::Fail, rows).in_order())
}

/// The `outbox` rows queuing notices, in order; a notice whose dedupe key was queued before
/// is skipped. Time-ordered ids keep the primary key's inserts at its right edge; random ones
/// would touch a different index page for every message.
pub fn outbox<'a>(notices: impl IntoIterator<Item = &'a Notice>) -> StoreResult<Table> {
    let now = Utc::now();
    let rows = notices
        .into_iter()
        .map(|n| {
            Ok(vec![
                Uuid::now_v7().into(),
                n.dedupe_key.clone().into(),
                n.account_id.uuid().into(),
                Value::json("notice", n)?,
                now.into(),
            ])
        })
        .collect::<StoreResult<_>>()?;
    let columns = "id, dedupe_key, account_id, notice, created_at";
    Ok(Table::new("outbox", columns, "dedupe_key", OnConflict::Skip, rows).in_order())
}

/// The rows of sessions, reset tokens, login throttles and idempotency records a commit
/// puts, and its audit and outbox rows: every table with rows.
pub fn records(c: &Changes) -> StoreResult<Vec<Table>> {
    let upsert =
        |name, columns, key, rows| Table::new(name, columns, key, OnConflict::Update, rows);
    let sessions = c.put_sessions.iter().map(|s| {
        Ok(vec![
            s.digest.0.clone().into(),
            s.id.uuid().into(),
            Value::jsonb("principal", &s.principal)?,
            crate::session_account(&s.principal).into(),
            s.created_at.into(),
            s.last_seen_at.into(),
        ])
    });
    let tokens = c.put_reset_tokens.iter().map(|t| {
        let digest = t.digest.0.clone().into();
        vec![
            digest,
            t.account_id.uuid().into(),
            t.expires_at.into(),
            t.used_at.into(),
        ]
    });
    let throttles = c.put_throttles.iter().map(|t| {
        let failures = i32::try_from(t.failures).unwrap_or(i32::MAX).into();
        vec![
            t.key.clone().into(),
            failures,
            t.window_started_at.into(),
            t.locked_until.into(),
        ]
    });
    let idempotency = c.idempotency.iter().map(|r| {
        vec![
            r.scope.clone().into(),
            r.key.clone().into(),
            r.request_digest.clone().into(),
            r.payment_id.uuid().into(),
            r.account_id.uuid().into(),
            r.created_at.into(),
        ]
    });
    let tables = [
        upsert(
            "sessions",
            "digest, id, principal, account_id, created_at, last_seen_at",
            "digest",
            sessions.collect::<StoreResult<_>>()?,
        ),
        upsert(
            "reset_tokens",
            "digest, account_id, expires_at, used_at",
            "digest",
            tokens.collect(),
        ),
        upsert(
            "login_throttles",
            "key, failures, window_started_at, locked_until",
            "key",
            throttles.collect(),
        ),
        Table::new(
            "idempotency_records",
            "scope, key, request_digest, payment_id, account_id, created_at",
            "",
            OnConflict::Fail,
            idempotency.collect(),
        ),
        audit(&c.audit)?,
        outbox(&c.outbox)?,
    ];
    Ok(tables.into_iter().filter(|t| !t.rows.is_empty()).collect())
}
