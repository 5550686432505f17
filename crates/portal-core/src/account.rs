//! The household billing account — the aggregate every use case loads and commits — and the
//! records around it: the member's login, sessions, reset tokens, login throttles and
//! idempotency records.

use crate::audit::{Actor, AuditEvent};
use crate::billing::{Bill, BillKind, BillNotice, BillStatus};
use crate::calendar::CoverageMonth;
use crate::coverage::{self, CoverageEvent, CoverageState, Facts};
use crate::delinquency::{CoverageStatus, DelinquencyPolicy};
use crate::enrollment::Enrollment;
use crate::identity::{AccountNumber, Email, Language, PersonName, Username};
use crate::ids::{AccountId, EnrollmentId, MandateId, MethodId, PaymentId, PlanId, SessionId};
use crate::instrument::PaymentMethod;
use crate::ledger::Ledger;
use crate::mandate::{Mandate, MandateStatus};
use crate::money::Money;
use crate::notice::{Notice, NoticeBody, NoticeKind};
use crate::payment::{Payment, PaymentStatus, PendingStage};
use crate::plan::{PaymentPlan, PlanStatus};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeSet;
use std::fmt;

/// A keyed hash (HMAC) of a secret value, for lookups that must not reveal the value (SSN).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LookupDigest(pub String);

impl fmt::Debug for LookupDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LookupDigest({}…)", self.0.get(..8).unwrap_or(""))
    }
}

/// Ciphertext of a sealed secret (AES-GCM or similar; the sealer port decides).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SealedSecret(pub Vec<u8>);

impl fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedSecret({} bytes)", self.0.len())
    }
}

/// An Argon2id (PHC string) password hash.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PasswordHash(pub String);

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

/// A random secret token (session, reset link, email code) as given to the user once.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken(String);

impl SecretToken {
    /// Wraps a freshly generated token.
    pub fn new(value: String) -> SecretToken {
        SecretToken(value)
    }

    /// The token, to hand to the user (cookie, link, email).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The SHA-256 digest under which it is stored; the token itself is never stored.
    pub fn digest(&self) -> TokenDigest {
        TokenDigest::of(&self.0)
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretToken(<redacted>)")
    }
}

/// SHA-256 of a secret token, hex-encoded. Tokens have 128+ bits of entropy, so an unkeyed
/// hash suffices.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokenDigest(pub String);

impl TokenDigest {
    /// The digest of a presented token.
    pub fn of(token: &str) -> TokenDigest {
        let hash = Sha256::digest(token.as_bytes());
        TokenDigest(hash.iter().map(|b| format!("{b:02x}")).collect())
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenDigest({}…)", self.0.get(..8).unwrap_or(""))
    }
}

/// The primary subscriber as the marketplace has them on record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// First name.
    pub first_name: PersonName,
    /// Last name.
    pub last_name: PersonName,
    /// Date of birth.
    pub date_of_birth: NaiveDate,
    /// Keyed hash of the SSN on record.
    pub ssn_digest: LookupDigest,
    /// Last four digits of the SSN, for the masked display.
    pub ssn_last4: String,
}

impl Holder {
    /// "First Last".
    pub fn full_name(&self) -> String {
        format!("{} {}", self.first_name, self.last_name)
    }
}

/// A pending email-verification code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailCode {
    /// Digest of the code.
    pub digest: TokenDigest,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// Wrong guesses so far.
    pub failed_attempts: u32,
}

/// The member's portal login, attached to the account at registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Username (unique, case-insensitive).
    pub username: Username,
    /// Email address.
    pub email: Email,
    /// When the email address was confirmed; login needs it.
    pub email_verified_at: Option<DateTime<Utc>>,
    /// The pending code, while unconfirmed.
    pub email_code: Option<EmailCode>,
    /// Argon2id hash.
    pub password_hash: PasswordHash,
    /// When the password last changed.
    pub password_changed_at: DateTime<Utc>,
    /// Preferred language.
    pub language: Language,
    /// The SSN given at registration, sealed.
    pub ssn_sealed: SealedSecret,
    /// Keyed digest of that SSN: one login per SSN.
    pub ssn_digest: LookupDigest,
    /// When the login was created.
    pub created_at: DateTime<Utc>,
}

/// Reminder preferences.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReminderPreferences {
    /// Whether due-date reminders are emailed.
    pub due_date_reminders: bool,
}

impl Default for ReminderPreferences {
    fn default() -> Self {
        Self {
            due_date_reminders: true,
        }
    }
}

/// A household billing account with everything billed and paid on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Id.
    pub id: AccountId,
    /// Optimistic-concurrency version: a commit succeeds only against the version it loaded.
    pub version: u64,
    /// The marketplace account number.
    pub number: AccountNumber,
    /// The subscriber on record.
    pub holder: Holder,
    /// An email on record from the marketplace, used until the member registers.
    pub contact_email: Option<Email>,
    /// Enrollments (health, dental, ...), each billed separately.
    pub enrollments: Vec<Enrollment>,
    /// Bills and payments.
    pub ledger: Ledger,
    /// Saved payment methods.
    pub methods: Vec<PaymentMethod>,
    /// Automatic-payment mandates.
    pub mandates: Vec<Mandate>,
    /// Payment plans.
    pub plans: Vec<PaymentPlan>,
    /// The portal login, once registered.
    pub member: Option<Member>,
    /// Reminder preferences.
    pub reminders: ReminderPreferences,
    /// When the account was created.
    pub created_at: DateTime<Utc>,
    /// The small collections as a store last read or wrote them (not part of the value).
    #[serde(skip)]
    pub stored: Stored,
}

/// An account's member and small collections (enrollments, methods, mandates, plans) as a
/// store last read or wrote them, so a commit writes only the rows that changed. Empty for an
/// account no store has seen (everything is written). Kept by the stores and by
/// `Portal::update_loaded`; never part of the account's value: two accounts compare equal
/// whatever it holds.
#[derive(Debug, Clone, Default)]
pub struct Stored(Option<Box<Snapshot>>);

#[derive(Debug, Clone)]
struct Snapshot {
    /// The header's columns: number, holder, contact email, reminders, creation time.
    header: (
        AccountNumber,
        Holder,
        Option<Email>,
        ReminderPreferences,
        DateTime<Utc>,
    ),
    member: Option<Member>,
    enrollments: Vec<Enrollment>,
    methods: Vec<PaymentMethod>,
    mandates: Vec<Mandate>,
    plans: Vec<PaymentPlan>,
    /// Each stored payment's allocation rows.
    allocations: std::collections::BTreeMap<PaymentId, Vec<crate::payment::Allocation>>,
}

impl PartialEq for Stored {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Stored {}

/// What a commit has to write of one small collection.
#[derive(Debug)]
pub struct RowChanges<'a, T> {
    /// Whether a row the store holds is gone (the store deletes the rows not in the account).
    pub removed: bool,
    /// The rows to write, with their positions: new, changed or moved.
    pub changed: Vec<(usize, &'a T)>,
}

fn row_changes<'a, T: PartialEq, K: PartialEq>(
    now: &'a [T],
    before: Option<&[T]>,
    key: impl Fn(&T) -> K,
) -> RowChanges<'a, T> {
    let Some(before) = before else {
        return RowChanges {
            removed: true,
            changed: now.iter().enumerate().collect(),
        };
    };
    RowChanges {
        removed: before.iter().any(|b| !now.iter().any(|n| key(n) == key(b))),
        changed: now
            .iter()
            .enumerate()
            .filter(|(i, n)| before.get(*i) != Some(*n))
            .collect(),
    }
}

/// One pending bank transfer, shown as protecting the bills it pays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingTransfer {
    /// Payment.
    pub payment_id: PaymentId,
    /// Reference.
    pub reference: String,
    /// Amount.
    pub amount: Money,
    /// Expected settlement.
    pub expected_settlement: Option<NaiveDate>,
    /// Coverage months of the bills it pays.
    pub protects: Vec<CoverageMonth>,
}

/// An amount to pay and the last day paying it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Deadline {
    /// How much.
    pub amount: Money,
    /// By when.
    pub by: NaiveDate,
}

/// A notice the coverage rules will send, and when, if nothing is paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UpcomingNotice {
    /// Which.
    pub kind: NoticeKind,
    /// When.
    pub on: NaiveDate,
}

/// The status of one enrollment as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnrollmentSummary {
    /// Enrollment.
    pub enrollment_id: EnrollmentId,
    /// Plan name.
    pub plan_name: String,
    /// Monthly premium share.
    pub premium_share: Money,
    /// Coverage status.
    pub status: CoverageStatus,
    /// Paid through this day.
    pub paid_through: Option<NaiveDate>,
    /// "Coverage at risk on DATE": the last day paying keeps (or starts) coverage, when
    /// something is unpaid.
    pub at_risk_on: Option<NaiveDate>,
    /// Past due on this enrollment's bills now.
    pub past_due: Money,
    /// What keeps (or starts, or restores) coverage, and by when.
    pub to_keep_coverage: Option<Deadline>,
    /// The next notice about this coverage and the day it goes out if nothing is paid
    /// (past due, the termination warnings, the termination).
    pub next_notice: Option<UpcomingNotice>,
    /// Coverage months voided by a termination.
    pub voided: Vec<CoverageMonth>,
}

/// What the member sees first: what is due, when, and the state of coverage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountSummary {
    /// Owed now across open bills (before credit).
    pub open_total: Money,
    /// Unused credit.
    pub credit: Money,
    /// What to pay now: open bills less credit, never negative.
    pub amount_due: Money,
    /// Earliest due date among open bills.
    pub next_due_date: Option<NaiveDate>,
    /// The next bill (oldest open) amount and due date.
    pub next_bill: Option<(Money, NaiveDate)>,
    /// Per enrollment.
    pub enrollments: Vec<EnrollmentSummary>,
    /// Pending bank transfers.
    pub pending_transfers: Vec<PendingTransfer>,
    /// Whether an automatic payment is active.
    pub autopay_active: bool,
    /// Active payment plan, if any.
    pub active_plan: Option<PlanId>,
}

impl Account {
    /// An enrollment by id.
    pub fn enrollment(&self, id: EnrollmentId) -> Option<&Enrollment> {
        self.enrollments.iter().find(|e| e.id == id)
    }

    /// A saved method by id (also removed ones).
    pub fn method(&self, id: MethodId) -> Option<&PaymentMethod> {
        self.methods.iter().find(|m| m.id == id)
    }

    /// A mandate by id.
    pub fn mandate(&self, id: MandateId) -> Option<&Mandate> {
        self.mandates.iter().find(|m| m.id == id)
    }

    /// A mutable mandate by id.
    pub fn mandate_mut(&mut self, id: MandateId) -> Option<&mut Mandate> {
        self.mandates.iter_mut().find(|m| m.id == id)
    }

    /// The active or paused mandate (one at a time).
    pub fn current_mandate(&self) -> Option<&Mandate> {
        self.mandates
            .iter()
            .find(|m| !matches!(m.status, MandateStatus::Cancelled))
    }

    /// The active payment plan, if any.
    pub fn active_plan(&self) -> Option<&PaymentPlan> {
        self.plans.iter().find(|p| p.status == PlanStatus::Active)
    }

    /// Bills of one enrollment.
    pub fn bills_of(&self, enrollment: EnrollmentId) -> Vec<&Bill> {
        self.ledger
            .bills
            .iter()
            .filter(|b| b.enrollment_id == enrollment)
            .collect()
    }

    /// What to pay now: open bills less credit.
    pub fn amount_due(&self) -> Money {
        self.ledger
            .open_total()
            .saturating_sub(self.ledger.credit())
    }

    /// What is owed on bills due before `date`, less credit (for autopay's amount-due rule).
    pub fn amount_due_before(&self, date: NaiveDate) -> Money {
        let open = Money::sum(
            self.ledger
                .bills
                .iter()
                .filter(|b| b.due_date < date)
                .map(Bill::open_amount),
        )
        .unwrap_or(Money::ZERO);
        open.saturating_sub(self.ledger.credit())
    }

    /// Where to send notices and in which language: the member's verified email, else the
    /// marketplace contact email.
    pub fn recipient(&self) -> Option<(Email, Language)> {
        match &self.member {
            Some(m) if m.email_verified_at.is_some() => Some((m.email.clone(), m.language)),
            _ => self.contact_email.clone().map(|e| (e, Language::En)),
        }
    }

    /// A notice to the account's recipient, if it has one.
    pub fn notice(&self, dedupe_key: String, body: NoticeBody) -> Option<Notice> {
        let (to, language) = self.recipient()?;
        Some(Notice {
            kind: body.kind(),
            account_id: self.id,
            to,
            name: self.holder.first_name.to_string(),
            language,
            dedupe_key,
            body,
        })
    }

    /// An audit entry for this account.
    pub fn audit(
        &self,
        at: DateTime<Utc>,
        actor: Actor,
        entity: impl Into<String>,
        action: &str,
        detail: impl Into<String>,
    ) -> AuditEvent {
        AuditEvent {
            at,
            account_id: self.id,
            actor,
            entity: entity.into(),
            action: action.to_owned(),
            detail: detail.into(),
        }
    }

    /// Everything the dashboard shows, from the core alone: the coverage machine walked to
    /// `today` on a copy (what the daily job will record), then read.
    pub fn summary(&self, policy: &DelinquencyPolicy, today: NaiveDate) -> AccountSummary {
        let mut walked = self.clone();
        walked.advance_coverage(policy, today);
        walked.summary_as_is(policy, today)
    }

    /// The summary from the coverage states as they are (already walked to `today`).
    pub fn summary_as_is(&self, policy: &DelinquencyPolicy, today: NaiveDate) -> AccountSummary {
        let enrollments = self
            .enrollments
            .iter()
            .map(|e| self.enrollment_summary(e, policy, today))
            .collect();
        let mut open: Vec<&Bill> = self
            .ledger
            .bills
            .iter()
            .filter(|b| b.open_amount().is_positive())
            .collect();
        open.sort_by(|a, b| crate::billing::allocation_order(a, b));
        let pending_transfers = self
            .ledger
            .payments
            .iter()
            .filter(|p| {
                p.status
                    == PaymentStatus::Pending {
                        stage: PendingStage::Processing,
                    }
            })
            .map(|p| PendingTransfer {
                payment_id: p.id,
                reference: p.reference.to_string(),
                amount: p.amount,
                expected_settlement: p.expected_settlement,
                protects: p
                    .allocations
                    .iter()
                    .filter_map(|a| self.ledger.bill(a.bill_id).map(|b| b.coverage_month))
                    .collect(),
            })
            .collect();
        AccountSummary {
            open_total: self.ledger.open_total(),
            credit: self.ledger.credit(),
            amount_due: self.amount_due(),
            next_due_date: open.first().map(|b| b.due_date),
            next_bill: open.first().map(|b| (b.open_amount(), b.due_date)),
            enrollments,
            pending_transfers,
            autopay_active: self
                .current_mandate()
                .is_some_and(|m| m.status == MandateStatus::Active),
            active_plan: self.active_plan().map(|p| p.id),
        }
    }

    fn enrollment_summary(
        &self,
        e: &Enrollment,
        policy: &DelinquencyPolicy,
        today: NaiveDate,
    ) -> EnrollmentSummary {
        let facts = Facts {
            enrollment: e,
            bills: &self.ledger.bills,
            payments: &self.ledger.payments,
            policy,
        };
        let bills = self.bills_of(e.id);
        let past_due = Money::sum(
            bills
                .iter()
                .filter(|b| b.due_date < today)
                .map(|b| b.open_amount()),
        )
        .unwrap_or(Money::ZERO);
        let open_through = |date: NaiveDate| {
            Money::sum(
                bills
                    .iter()
                    .filter(|b| b.due_date <= date)
                    .map(|b| b.open_amount()),
            )
            .unwrap_or(Money::ZERO)
        };
        let earliest_open = bills
            .iter()
            .filter(|b| b.open_amount().is_positive())
            .map(|b| b.due_date)
            .min();
        let mut voided = Vec::new();
        let mut next_notice = None;
        let (status, to_keep) = match &e.coverage.state {
            CoverageState::PendingBinder => match bills.iter().find(|b| b.kind == BillKind::Binder)
            {
                Some(binder) => {
                    let deadline =
                        crate::calendar::add_days(binder.due_date, policy.binder_grace_days);
                    (
                        CoverageStatus::PendingBinder {
                            due_date: binder.due_date,
                            deadline,
                        },
                        Some((binder.open_amount(), deadline)),
                    )
                }
                None => (CoverageStatus::Active, None),
            },
            CoverageState::Active => {
                // Unpaid on its due date, the day after starts the grace period.
                next_notice =
                    earliest_open.map(|d| (NoticeKind::PastDue, crate::calendar::add_days(d, 1)));
                (
                    CoverageStatus::Active,
                    earliest_open.map(|d| (open_through(d), d)),
                )
            }
            CoverageState::InGrace { grace } => {
                let end = grace.grace_ends_on;
                next_notice = [
                    (
                        BillNotice::PastDue,
                        NoticeKind::PastDue,
                        grace.past_due_since,
                    ),
                    (
                        BillNotice::TerminationWarning,
                        NoticeKind::TerminationWarning,
                        grace.first_warning_on,
                    ),
                    (
                        BillNotice::SecondTerminationWarning,
                        NoticeKind::SecondTerminationWarning,
                        grace.second_warning_on,
                    ),
                ]
                .into_iter()
                .find(|(n, _, on)| *on > today && !e.coverage.notices.iter().any(|x| x >= n))
                .map(|(_, kind, on)| (kind, on))
                .or(Some((
                    NoticeKind::CoverageTerminated,
                    crate::calendar::add_days(end, 1),
                )));
                (
                    CoverageStatus::InGrace { grace: *grace },
                    Some((past_due, end)),
                )
            }
            CoverageState::Terminated {
                grace,
                reinstatable_until,
                voided: v,
                ..
            } => {
                voided = v.clone();
                let keep = (today <= *reinstatable_until).then(|| {
                    (
                        self.reinstatement_amount(e.id, today)
                            .saturating_sub(self.ledger.credit()),
                        *reinstatable_until,
                    )
                });
                (
                    CoverageStatus::Terminated {
                        effective: grace.termination_effective,
                        reinstatable_until: *reinstatable_until,
                    },
                    keep,
                )
            }
            CoverageState::Cancelled { deadline, .. } => (
                CoverageStatus::Cancelled {
                    deadline: *deadline,
                },
                None,
            ),
        };
        let to_keep = to_keep
            .filter(|(m, _)| m.is_positive())
            .map(|(amount, by)| Deadline { amount, by });
        EnrollmentSummary {
            enrollment_id: e.id,
            plan_name: e.plan_name.clone(),
            premium_share: e.premium_share(),
            status,
            paid_through: coverage::paid_through(&facts, &e.coverage.state, today),
            at_risk_on: to_keep.map(|d| d.by),
            past_due,
            to_keep_coverage: to_keep,
            next_notice: next_notice.map(|(kind, on)| UpcomingNotice { kind, on }),
            voided,
        }
    }

    /// What reinstating an enrollment needs: its past-due balance (including the months voided
    /// at termination, which reinstatement restores) plus the next month's premium.
    pub fn reinstatement_amount(&self, enrollment: EnrollmentId, today: NaiveDate) -> Money {
        let next = CoverageMonth::of(today).plus(1);
        let bills = self.bills_of(enrollment);
        let mut total = Money::ZERO;
        for b in &bills {
            let owed = if b.void {
                b.amount.saturating_sub(b.transferred)
            } else {
                b.open_amount()
            };
            if b.coverage_month <= next
                && (b.void || b.due_date <= today || b.coverage_month == next)
            {
                total = total.checked_add(owed).unwrap_or(total);
            }
        }
        let next_billed = bills
            .iter()
            .any(|b| b.kind.is_premium() && b.coverage_month == next);
        if !next_billed {
            if let Some(e) = self.enrollment(enrollment) {
                total = total
                    .checked_add(e.premium_share_for(next))
                    .unwrap_or(total);
            }
        }
        total
    }

    /// The credit the account held at the end of `day` from payments initiated (or received)
    /// by then: a payment made later never reinstates coverage as of an earlier day.
    pub fn credit_as_of(&self, day: NaiveDate) -> Money {
        let paid = Money::sum(
            self.ledger
                .payments
                .iter()
                .filter(|p| p.initiated_on <= day)
                .map(Payment::net),
        )
        .unwrap_or(Money::ZERO);
        let billed = Money::sum(self.ledger.bills.iter().map(Bill::payable)).unwrap_or(Money::ZERO);
        paid.saturating_sub(billed).min(self.ledger.credit())
    }

    /// Whether terminated enrollment `e` is reinstated by `day`: on a day of its window up to
    /// `day` (today, or a day a payment was made or a check received on), the credit from
    /// payments made by then covered what reinstating it needed then. However late a check
    /// received inside the window is recorded, it reinstates; a payment after the window
    /// never does.
    fn reinstates_by(&self, e: &Enrollment, day: NaiveDate) -> bool {
        let CoverageState::Terminated {
            processed_on,
            reinstatable_until,
            ..
        } = &e.coverage.state
        else {
            return false;
        };
        let last = day.min(*reinstatable_until);
        if last < *processed_on {
            return false;
        }
        let mut days: BTreeSet<NaiveDate> = self
            .ledger
            .payments
            .iter()
            .map(|p| p.initiated_on)
            .collect();
        days.insert(last);
        days.range(*processed_on..=last)
            .any(|y| self.credit_as_of(*y) >= self.reinstatement_amount(e.id, *y))
    }

    /// Walks every enrollment's coverage machine from where it was last evaluated to `today`,
    /// a day at a time, applying each transition's effect on the ledger (voiding months,
    /// restoring them, taking voided months out of payment plans). Returns the transitions.
    pub fn advance_coverage(
        &mut self,
        policy: &DelinquencyPolicy,
        today: NaiveDate,
    ) -> Vec<(EnrollmentId, NaiveDate, CoverageEvent)> {
        let mut out = Vec::new();
        // A machine walked before starts from its last evaluation, at most a day back: its
        // state is what that evaluation left, so a day already evaluated today is not walked
        // again from today's state (a payment made today must not count for yesterday). Days
        // the job did not run are caught up in one step, which the as-of rules make
        // equivalent. A new machine starts from its first due date.
        let yesterday = today.pred_opt().unwrap_or(today);
        let earliest = today - chrono::Duration::days(800);
        let starts: Vec<NaiveDate> = self
            .enrollments
            .iter()
            .map(|e| match e.coverage.evaluated_on {
                Some(d) => d.max(yesterday),
                None => self
                    .bills_of(e.id)
                    .iter()
                    .map(|b| b.due_date)
                    .min()
                    .unwrap_or(today)
                    .min(today),
            })
            .map(|d| d.max(earliest))
            .collect();
        let Some(start) = starts.iter().min().copied() else {
            return out;
        };
        // Days on which something can change without new money: a day after a due date or a
        // binder deadline, a notice day, the day after a grace period ends.
        let mut marks: BTreeSet<NaiveDate> = self
            .ledger
            .bills
            .iter()
            .flat_map(|b| {
                [
                    crate::calendar::add_days(b.due_date, 1),
                    crate::calendar::add_days(b.due_date, policy.binder_grace_days + 1),
                ]
            })
            .collect();
        marks.insert(start);
        marks.insert(today);
        let mut day = start;
        while day <= today {
            for e in &self.enrollments {
                if let CoverageState::InGrace { grace } = &e.coverage.state {
                    marks.extend([
                        grace.first_warning_on,
                        grace.second_warning_on,
                        crate::calendar::add_days(grace.grace_ends_on, 1),
                    ]);
                }
            }
            if marks.contains(&day) {
                self.coverage_day(policy, day, &starts, &mut out);
            }
            let Some(next) = marks.range(day.succ_opt().unwrap_or(day)..).next().copied() else {
                break;
            };
            if next <= day {
                break;
            }
            day = next;
        }
        out
    }

    fn coverage_day(
        &mut self,
        policy: &DelinquencyPolicy,
        day: NaiveDate,
        starts: &[NaiveDate],
        out: &mut Vec<(EnrollmentId, NaiveDate, CoverageEvent)>,
    ) {
        // Money one enrollment's end frees (its voided months' payments) may pay another's
        // bills the same day, so the household is judged again until nothing moves money.
        for _ in 0..=self.enrollments.len() {
            if !self.coverage_pass(policy, day, starts, out) {
                break;
            }
        }
    }

    /// One pass over the enrollments on `day`; whether a transition moved money.
    fn coverage_pass(
        &mut self,
        policy: &DelinquencyPolicy,
        day: NaiveDate,
        starts: &[NaiveDate],
        out: &mut Vec<(EnrollmentId, NaiveDate, CoverageEvent)>,
    ) -> bool {
        let mut moved = false;
        for i in 0..self.enrollments.len() {
            let Some(e) = self.enrollments.get(i) else {
                continue;
            };
            if starts.get(i).is_some_and(|s| *s > day) {
                continue;
            }
            let reinstates = self.reinstates_by(e, day);
            let facts = Facts {
                enrollment: e,
                bills: &self.ledger.bills,
                payments: &self.ledger.payments,
                policy,
            };
            let events = coverage::step(&e.coverage, &facts, day, reinstates);
            let id = e.id;
            for event in events {
                moved |= matches!(
                    event,
                    CoverageEvent::Cancelled { .. }
                        | CoverageEvent::CancellationReversed
                        | CoverageEvent::Terminated { .. }
                        | CoverageEvent::TerminationReversed
                        | CoverageEvent::Reinstated
                );
                self.coverage_effect(id, &event);
                if let Some(e) = self.enrollments.get_mut(i) {
                    if e.coverage.apply(&event, day).is_err() {
                        break;
                    }
                }
                out.push((id, day, event));
            }
            if let Some(e) = self.enrollments.get_mut(i) {
                e.coverage.evaluated_on = Some(day);
            }
        }
        moved
    }

    /// What a transition does to the ledger.
    fn coverage_effect(&mut self, enrollment: EnrollmentId, event: &CoverageEvent) {
        let state = self
            .enrollment(enrollment)
            .map(|e| e.coverage.state.clone());
        let ids = |a: &Account, f: &dyn Fn(&Bill) -> bool| -> Vec<crate::ids::BillId> {
            a.ledger
                .bills
                .iter()
                .filter(|b| b.enrollment_id == enrollment && f(b))
                .map(|b| b.id)
                .collect()
        };
        match event {
            CoverageEvent::Cancelled { .. } => {
                for id in ids(self, &|b| !b.void) {
                    let _ = self.ledger.void_bill(id);
                }
            }
            CoverageEvent::CancellationReversed => {
                for id in ids(self, &|b| b.void) {
                    let _ = self.ledger.unvoid_bill(id);
                }
            }
            CoverageEvent::Terminated { voided, .. } => {
                let to_void = ids(self, &|b| {
                    b.kind.is_premium() && !b.void && voided.contains(&b.coverage_month)
                });
                let moved = Money::sum(
                    to_void
                        .iter()
                        .filter_map(|id| self.ledger.bill(*id))
                        .map(|b| b.transferred),
                )
                .unwrap_or(Money::ZERO);
                for id in to_void {
                    let _ = self.ledger.void_bill(id);
                }
                self.take_out_of_plans(enrollment, moved);
            }
            CoverageEvent::TerminationReversed | CoverageEvent::Reinstated => {
                if let Some(CoverageState::Terminated { voided, .. }) = state {
                    for id in ids(self, &|b| {
                        b.kind.is_premium() && b.void && voided.contains(&b.coverage_month)
                    }) {
                        let _ = self.ledger.unvoid_bill(id);
                    }
                }
            }
            _ => {}
        }
    }

    /// A payment plan never turns a voided month into debt: what moved into plans from
    /// months now voided comes off the enrollment's unpaid installments, latest first.
    fn take_out_of_plans(&mut self, enrollment: EnrollmentId, mut amount: Money) {
        let mut installments: Vec<(NaiveDate, crate::ids::BillId)> = self
            .ledger
            .bills
            .iter()
            .filter(|b| {
                b.enrollment_id == enrollment
                    && matches!(b.kind, BillKind::Installment { .. })
                    && b.open_amount().is_positive()
            })
            .map(|b| (b.due_date, b.id))
            .collect();
        installments.sort();
        for (_, id) in installments.into_iter().rev() {
            if amount.is_zero() {
                break;
            }
            let Some(b) = self.ledger.bill(id) else {
                continue;
            };
            let cut = b.open_amount().min(amount);
            let new_amount = b.amount.saturating_sub(cut);
            amount = amount.saturating_sub(cut);
            let _ = self.ledger.reprice_bill(id, new_amount);
        }
    }

    /// Bills as shown to the member, newest coverage month first.
    pub fn bill_statuses(&self) -> Vec<(&Bill, BillStatus)> {
        let mut v: Vec<(&Bill, BillStatus)> =
            self.ledger.bills.iter().map(|b| (b, b.status())).collect();
        v.sort_by_key(|b| std::cmp::Reverse(b.0.coverage_month));
        v
    }
}

/// Who a session belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Principal {
    /// A member, acting on their own account.
    Member {
        /// Their account.
        account_id: AccountId,
    },
    /// A support agent.
    Agent {
        /// The agent.
        agent_id: crate::ids::AgentId,
    },
}

/// A login session, stored under the digest of its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Id.
    pub id: SessionId,
    /// Digest of the token.
    pub digest: TokenDigest,
    /// Who.
    pub principal: Principal,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last used.
    pub last_seen_at: DateTime<Utc>,
}

/// A password-reset token, stored under its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetToken {
    /// Digest.
    pub digest: TokenDigest,
    /// The account.
    pub account_id: AccountId,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// When it was used; a used token never works again.
    pub used_at: Option<DateTime<Utc>>,
}

/// Failed-login bookkeeping per username key, kept whether or not the username exists, so
/// responses never reveal which usernames exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginThrottle {
    /// Lower-cased username.
    pub key: String,
    /// Failures in the current window.
    pub failures: u32,
    /// Start of the current window.
    pub window_started_at: DateTime<Utc>,
    /// Locked until.
    pub locked_until: Option<DateTime<Utc>>,
}

/// A stored idempotent request: the same key with the same request returns the same result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// Scope: the account (or guest-pay account) the key belongs to.
    pub scope: String,
    /// The client's key.
    pub key: String,
    /// Digest of the request body it was first used with.
    pub request_digest: String,
    /// The payment it created.
    pub payment_id: PaymentId,
    /// The account the payment belongs to.
    pub account_id: AccountId,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A new account for an enrollment on record (marketplace data feed, demo seed, tests).
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// Account number.
    pub number: AccountNumber,
    /// Subscriber.
    pub holder: Holder,
    /// Contact email on record.
    pub contact_email: Option<Email>,
    /// Enrollments.
    pub enrollments: Vec<Enrollment>,
}

impl Account {
    /// The account as a successful commit of it left the store: its version bumped, nothing
    /// changed since, the collections remembered as stored. What a load now returns.
    pub fn committed(mut self) -> Self {
        self.version += 1;
        self.ledger.clear_changes();
        self.remember_stored();
        self
    }

    /// Remembers the member and small collections as the store now holds them (after a load or
    /// a commit).
    pub fn remember_stored(&mut self) {
        self.stored = Stored(Some(Box::new(Snapshot {
            header: self.header(),
            member: self.member.clone(),
            enrollments: self.enrollments.clone(),
            methods: self.methods.clone(),
            mandates: self.mandates.clone(),
            plans: self.plans.clone(),
            allocations: self
                .ledger
                .payments
                .iter()
                .map(|p| (p.id, p.allocations.clone()))
                .collect(),
        })));
    }

    /// The allocation rows the store holds for a payment; `None` when it holds no such
    /// payment (a new one).
    pub fn stored_allocations(&self, id: PaymentId) -> Option<&[crate::payment::Allocation]> {
        self.stored
            .0
            .as_ref()
            .and_then(|s| s.allocations.get(&id))
            .map(Vec::as_slice)
    }

    /// Whether the header (number, holder, contact email, reminders, creation time) differs
    /// from what the store holds, or nothing was stored.
    pub fn header_changed(&self) -> bool {
        self.stored
            .0
            .as_ref()
            .is_none_or(|s| s.header != self.header())
    }

    fn header(
        &self,
    ) -> (
        AccountNumber,
        Holder,
        Option<Email>,
        ReminderPreferences,
        DateTime<Utc>,
    ) {
        (
            self.number.clone(),
            self.holder.clone(),
            self.contact_email.clone(),
            self.reminders.clone(),
            self.created_at,
        )
    }

    /// Whether the member row differs from what the store holds.
    pub fn member_changed(&self) -> bool {
        self.stored
            .0
            .as_ref()
            .is_none_or(|s| s.member != self.member)
    }

    /// The enrollment rows a commit writes.
    pub fn enrollment_changes(&self) -> RowChanges<'_, Enrollment> {
        row_changes(
            &self.enrollments,
            self.stored.0.as_ref().map(|s| s.enrollments.as_slice()),
            |e| e.id,
        )
    }

    /// The payment-method rows a commit writes.
    pub fn method_changes(&self) -> RowChanges<'_, PaymentMethod> {
        row_changes(
            &self.methods,
            self.stored.0.as_ref().map(|s| s.methods.as_slice()),
            |m| m.id,
        )
    }

    /// The mandate rows a commit writes.
    pub fn mandate_changes(&self) -> RowChanges<'_, Mandate> {
        row_changes(
            &self.mandates,
            self.stored.0.as_ref().map(|s| s.mandates.as_slice()),
            |m| m.id,
        )
    }

    /// The payment-plan rows a commit writes.
    pub fn plan_changes(&self) -> RowChanges<'_, PaymentPlan> {
        row_changes(
            &self.plans,
            self.stored.0.as_ref().map(|s| s.plans.as_slice()),
            |p| p.id,
        )
    }

    /// A fresh account at version 0.
    pub fn open(id: AccountId, new: NewAccount, now: DateTime<Utc>) -> Account {
        Account {
            id,
            version: 0,
            number: new.number,
            holder: new.holder,
            contact_email: new.contact_email,
            enrollments: new.enrollments,
            ledger: Ledger::default(),
            methods: Vec::new(),
            mandates: Vec::new(),
            plans: Vec::new(),
            member: None,
            reminders: ReminderPreferences::default(),
            created_at: now,
            stored: Stored::default(),
        }
    }
}
