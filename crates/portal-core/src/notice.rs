//! Notices: the emails each rule produces, as data. Adapters render them (plain text and HTML,
//! English and Spanish) and deliver them from the outbox; the core only decides what is said.

use crate::calendar::CoverageMonth;
use crate::enrollment::TerminationReason;
use crate::identity::{Email, Language};
use crate::ids::AccountId;
use crate::money::Money;
use crate::payment::{DeclineReason, ReturnCode};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// Every kind of notice the portal sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// One-time code to confirm the email address during registration.
    EmailVerification,
    /// Account created.
    AccountCreated,
    /// Payment confirmation with the reference number.
    PaymentConfirmation,
    /// A payment was declined.
    PaymentFailed,
    /// A bank transfer was returned.
    BankTransferReturned,
    /// A new bill.
    BillIssued,
    /// A bill's amount changed (subsidy change).
    BillRepriced,
    /// Due-date reminder.
    DueDateReminder,
    /// Autopay pre-debit notice.
    AutopayPreDebit,
    /// An automatic payment failed (and whether autopay is now suspended).
    AutopayFailed,
    /// Past due; the grace period started.
    PastDue,
    /// Termination warning.
    TerminationWarning,
    /// Second termination warning.
    SecondTerminationWarning,
    /// Coverage terminated.
    CoverageTerminated,
    /// Coverage reinstated.
    CoverageReinstated,
    /// The binder was not paid by its deadline: the enrollment is cancelled.
    CoverageCancelled,
    /// A payment plan was set up.
    PaymentPlanSetUp,
    /// Password reset link.
    PasswordReset,
    /// Password changed.
    PasswordChanged,
    /// A refund was issued.
    RefundIssued,
}

impl NoticeKind {
    /// Every kind, so adapters can prove each has every template.
    pub const ALL: [NoticeKind; 20] = [
        NoticeKind::EmailVerification,
        NoticeKind::AccountCreated,
        NoticeKind::PaymentConfirmation,
        NoticeKind::PaymentFailed,
        NoticeKind::BankTransferReturned,
        NoticeKind::BillIssued,
        NoticeKind::BillRepriced,
        NoticeKind::DueDateReminder,
        NoticeKind::AutopayPreDebit,
        NoticeKind::AutopayFailed,
        NoticeKind::PastDue,
        NoticeKind::TerminationWarning,
        NoticeKind::SecondTerminationWarning,
        NoticeKind::CoverageTerminated,
        NoticeKind::CoverageReinstated,
        NoticeKind::CoverageCancelled,
        NoticeKind::PaymentPlanSetUp,
        NoticeKind::PasswordReset,
        NoticeKind::PasswordChanged,
        NoticeKind::RefundIssued,
    ];
}

/// Why an automatic payment did not go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AutopayFailure {
    /// The gateway or bank declined it.
    Declined {
        /// Why.
        reason: DeclineReason,
    },
    /// The bank returned it after it settled.
    Returned {
        /// NACHA code.
        code: ReturnCode,
    },
    /// The saved method was removed or has expired.
    MethodUnavailable,
}

/// What a notice says, by kind. Amounts are `Money`; methods are masked labels; nothing here
/// is ever an SSN, a full card or account number, or a password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NoticeBody {
    /// Registration code.
    EmailVerification {
        /// The one-time code (sent only in this email; stored hashed elsewhere).
        code: String,
        /// Until when it works.
        expires_at: DateTime<Utc>,
    },
    /// Welcome.
    AccountCreated {
        /// Username.
        username: String,
    },
    /// Payment received or processing.
    PaymentConfirmation {
        /// Reference number.
        reference: String,
        /// Amount.
        amount: Money,
        /// Masked method.
        method: String,
        /// Date initiated.
        paid_on: NaiveDate,
        /// For a bank transfer: when it should settle.
        settles_by: Option<NaiveDate>,
    },
    /// Declined.
    PaymentFailed {
        /// Reference.
        reference: String,
        /// Amount.
        amount: Money,
        /// Masked method.
        method: String,
        /// Why.
        reason: DeclineReason,
    },
    /// Returned bank transfer.
    BankTransferReturned {
        /// Reference.
        reference: String,
        /// Amount.
        amount: Money,
        /// Masked method.
        method: String,
        /// NACHA code.
        code: ReturnCode,
        /// What is owed now.
        amount_due: Money,
    },
    /// New bill.
    BillIssued {
        /// Coverage month.
        coverage_month: CoverageMonth,
        /// Plan name.
        plan_name: String,
        /// Amount.
        amount: Money,
        /// Due date.
        due_date: NaiveDate,
        /// Whether it is the binder payment.
        binder: bool,
        /// When autopay will take it, if set up.
        autopay_on: Option<NaiveDate>,
    },
    /// Bill amount changed.
    BillRepriced {
        /// Coverage month.
        coverage_month: CoverageMonth,
        /// Old amount.
        old_amount: Money,
        /// New amount.
        new_amount: Money,
        /// Due date.
        due_date: NaiveDate,
    },
    /// Reminder.
    DueDateReminder {
        /// What is owed.
        amount: Money,
        /// Due date.
        due_date: NaiveDate,
        /// Days left.
        days_before: u32,
    },
    /// Pre-debit notice.
    AutopayPreDebit {
        /// Amount to be debited (at most).
        amount: Money,
        /// Debit date.
        debit_date: NaiveDate,
        /// Masked method.
        method: String,
    },
    /// Autopay failed.
    AutopayFailed {
        /// Amount tried.
        amount: Money,
        /// Masked method.
        method: String,
        /// Why.
        reason: AutopayFailure,
        /// Next try, if any.
        retry_on: Option<NaiveDate>,
        /// Whether autopay is suspended now.
        suspended: bool,
    },
    /// Past due.
    PastDue {
        /// The enrollment it concerns.
        plan_name: String,
        /// What is past due on that enrollment.
        amount: Money,
        /// The missed due date.
        due_date: NaiveDate,
        /// End of the grace period.
        grace_ends_on: NaiveDate,
    },
    /// Termination warning (first or second).
    TerminationWarning {
        /// The enrollment it concerns.
        plan_name: String,
        /// What is past due on that enrollment.
        amount: Money,
        /// End of grace.
        grace_ends_on: NaiveDate,
        /// Last day of coverage if unpaid.
        termination_effective: NaiveDate,
    },
    /// Terminated.
    CoverageTerminated {
        /// Plan name.
        plan_name: String,
        /// Last day of coverage.
        effective: NaiveDate,
        /// Why.
        reason: TerminationReason,
        /// Until when paying reinstates it.
        reinstatable_until: NaiveDate,
        /// What reinstatement requires.
        amount_to_reinstate: Money,
    },
    /// Reinstated.
    CoverageCancelled {
        /// Plan name.
        plan_name: String,
        /// The binder deadline that passed.
        deadline: NaiveDate,
    },
    /// Coverage restored.
    CoverageReinstated {
        /// Plan name.
        plan_name: String,
    },
    /// Plan set up.
    PaymentPlanSetUp {
        /// Total.
        total: Money,
        /// Installments: amount and due date.
        installments: Vec<(Money, NaiveDate)>,
    },
    /// Reset link.
    PasswordReset {
        /// The single-use token for the link (sent only in this email; stored hashed).
        token: String,
        /// Until when it works.
        expires_at: DateTime<Utc>,
    },
    /// Password changed.
    PasswordChanged {
        /// When.
        changed_at: DateTime<Utc>,
    },
    /// Refund.
    RefundIssued {
        /// Reference of the refunded payment.
        reference: String,
        /// Amount refunded.
        amount: Money,
        /// Masked method it goes back to.
        method: String,
    },
}

impl NoticeBody {
    /// The kind of this body.
    pub fn kind(&self) -> NoticeKind {
        match self {
            NoticeBody::EmailVerification { .. } => NoticeKind::EmailVerification,
            NoticeBody::AccountCreated { .. } => NoticeKind::AccountCreated,
            NoticeBody::PaymentConfirmation { .. } => NoticeKind::PaymentConfirmation,
            NoticeBody::PaymentFailed { .. } => NoticeKind::PaymentFailed,
            NoticeBody::BankTransferReturned { .. } => NoticeKind::BankTransferReturned,
            NoticeBody::BillIssued { .. } => NoticeKind::BillIssued,
            NoticeBody::BillRepriced { .. } => NoticeKind::BillRepriced,
            NoticeBody::DueDateReminder { .. } => NoticeKind::DueDateReminder,
            NoticeBody::AutopayPreDebit { .. } => NoticeKind::AutopayPreDebit,
            NoticeBody::AutopayFailed { .. } => NoticeKind::AutopayFailed,
            NoticeBody::PastDue { .. } => NoticeKind::PastDue,
            NoticeBody::TerminationWarning { .. } => NoticeKind::TerminationWarning,
            NoticeBody::CoverageTerminated { .. } => NoticeKind::CoverageTerminated,
            NoticeBody::CoverageReinstated { .. } => NoticeKind::CoverageReinstated,
            NoticeBody::CoverageCancelled { .. } => NoticeKind::CoverageCancelled,
            NoticeBody::PaymentPlanSetUp { .. } => NoticeKind::PaymentPlanSetUp,
            NoticeBody::PasswordReset { .. } => NoticeKind::PasswordReset,
            NoticeBody::PasswordChanged { .. } => NoticeKind::PasswordChanged,
            NoticeBody::RefundIssued { .. } => NoticeKind::RefundIssued,
        }
    }
}

/// A notice to one member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// Kind (a second termination warning has a `TerminationWarning` body).
    pub kind: NoticeKind,
    /// The account.
    pub account_id: AccountId,
    /// Recipient.
    pub to: Email,
    /// Recipient's name for the greeting.
    pub name: String,
    /// Language.
    pub language: Language,
    /// Unique per real-world event, so the outbox never holds the same notice twice.
    pub dedupe_key: String,
    /// Content.
    pub body: NoticeBody,
}
