//! Bills and the billing schedule: one bill per enrollment per coverage month, due on a
//! configured day of the month before, clamped to that month's end; the first is the binder.

use crate::calendar::{CoverageMonth, add_days, sub_days};
use crate::identity::input_error;
use crate::ids::{BillId, EnrollmentId, PlanId};
use crate::money::Money;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

input_error!(BillingPolicyError, "billing", {
    DueDay => ("due_day", "the due day must be between 1 and 31"),
    IssueLead => ("issue_days_before_due", "bills must be issued between 1 and 60 days before they are due"),
    ReminderDays => ("reminder_days", "reminder days must be between 1 and 30"),
});

/// How bills are scheduled and when reminders go out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingPolicy {
    due_day: u32,
    issue_days_before_due: u32,
    reminder_days: Vec<u32>,
}

impl Default for BillingPolicy {
    fn default() -> Self {
        Self {
            due_day: 23,
            issue_days_before_due: 21,
            reminder_days: vec![7, 2],
        }
    }
}

impl BillingPolicy {
    /// A policy: bills due on `due_day` of the month before coverage, issued
    /// `issue_days_before_due` days ahead, with reminders `reminder_days` before the due date.
    pub fn new(
        due_day: u32,
        issue_days_before_due: u32,
        mut reminder_days: Vec<u32>,
    ) -> Result<Self, BillingPolicyError> {
        if !(1..=31).contains(&due_day) {
            return Err(BillingPolicyError::DueDay);
        }
        if !(1..=60).contains(&issue_days_before_due) {
            return Err(BillingPolicyError::IssueLead);
        }
        if reminder_days.iter().any(|d| !(1..=30).contains(d)) {
            return Err(BillingPolicyError::ReminderDays);
        }
        reminder_days.sort_unstable_by(|a, b| b.cmp(a));
        reminder_days.dedup();
        Ok(Self {
            due_day,
            issue_days_before_due,
            reminder_days,
        })
    }

    /// The configured due day.
    pub fn due_day(&self) -> u32 {
        self.due_day
    }

    /// Days before the due date that reminders are sent, largest first.
    pub fn reminder_days(&self) -> &[u32] {
        &self.reminder_days
    }

    /// The due date of a coverage month's bill: the due day of the month before, clamped.
    pub fn due_date(&self, coverage: CoverageMonth) -> NaiveDate {
        coverage.previous().day_clamped(self.due_day)
    }

    /// The day a coverage month's bill is issued.
    pub fn issue_date(&self, coverage: CoverageMonth) -> NaiveDate {
        sub_days(self.due_date(coverage), self.issue_days_before_due)
    }

    /// Coverage months from `start` whose bills are issued on or before `today`, up to `end`.
    pub fn months_to_bill(
        &self,
        start: CoverageMonth,
        end: Option<CoverageMonth>,
        today: NaiveDate,
    ) -> Vec<CoverageMonth> {
        let mut out = Vec::new();
        let mut m = start;
        // Bounded: at most a few years of back-billing for an enrollment entered late.
        for _ in 0..120 {
            if end.is_some_and(|e| m > e) || self.issue_date(m) > today {
                break;
            }
            out.push(m);
            m = m.plus(1);
        }
        out
    }
}

/// What a bill is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BillKind {
    /// The first month: coverage starts only once it is paid.
    Binder,
    /// A regular monthly premium.
    Premium,
    /// An installment of a payment plan.
    Installment {
        /// The plan.
        plan_id: PlanId,
        /// 1-based number.
        number: u32,
        /// Installments in the plan.
        of: u32,
    },
    /// A late fee assessed on another bill.
    LateFee {
        /// The late bill.
        late_bill: BillId,
    },
}

impl BillKind {
    /// Whether this bill is a premium for a coverage month (binder or regular).
    pub fn is_premium(self) -> bool {
        matches!(self, BillKind::Binder | BillKind::Premium)
    }
}

/// Reminders and delinquency notices already sent for a bill, so reruns send nothing twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillNotice {
    /// The bill-issued notice.
    Issued,
    /// A due-date reminder sent this many days ahead.
    Reminder(u32),
    /// Past-due warning.
    PastDue,
    /// First termination warning.
    TerminationWarning,
    /// Second termination warning.
    SecondTerminationWarning,
}

/// A bill's state as shown to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillStatus {
    /// Nothing paid yet, not yet due.
    Open,
    /// Partly paid.
    PartiallyPaid,
    /// Fully covered by payments (some may still be processing).
    Paid,
    /// Moved into a payment plan.
    InPlan,
    /// Cancelled because coverage ended before its month.
    Void,
}

/// One bill of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bill {
    /// Id.
    pub id: BillId,
    /// The enrollment billed.
    pub enrollment_id: EnrollmentId,
    /// What it is for.
    pub kind: BillKind,
    /// The coverage month it pays for (for installments and fees, the month they fall due in).
    pub coverage_month: CoverageMonth,
    /// The amount billed (re-priced while unpaid when the subsidy changes).
    pub amount: Money,
    /// Paid by allocations of payments.
    pub allocated: Money,
    /// Moved into a payment plan's installments.
    pub transferred: Money,
    /// When it is due.
    pub due_date: NaiveDate,
    /// When it was issued.
    pub issued_on: NaiveDate,
    /// Cancelled because coverage ended.
    pub void: bool,
    /// Notices already sent for it.
    pub notices: Vec<BillNotice>,
    /// Whether a late fee has been assessed on it.
    pub late_fee_assessed: bool,
}

impl Bill {
    /// What is still owed on it.
    pub fn open_amount(&self) -> Money {
        if self.void {
            return Money::ZERO;
        }
        self.amount
            .saturating_sub(self.allocated)
            .saturating_sub(self.transferred)
    }

    /// The amount payments can cover: billed less what moved into a plan (zero when void).
    pub fn payable(&self) -> Money {
        if self.void {
            Money::ZERO
        } else {
            self.amount.saturating_sub(self.transferred)
        }
    }

    /// Status for display.
    pub fn status(&self) -> BillStatus {
        if self.void {
            BillStatus::Void
        } else if self.open_amount().is_zero()
            && self.transferred.is_positive()
            && self.allocated < self.amount
        {
            BillStatus::InPlan
        } else if self.open_amount().is_zero() {
            BillStatus::Paid
        } else if self.allocated.is_positive() {
            BillStatus::PartiallyPaid
        } else {
            BillStatus::Open
        }
    }

    /// Whether it is unpaid after its due date on `today`.
    pub fn is_past_due(&self, today: NaiveDate) -> bool {
        self.due_date < today && self.open_amount().is_positive()
    }

    /// Whether a notice was sent.
    pub fn sent(&self, n: BillNotice) -> bool {
        self.notices.contains(&n)
    }

    /// The earliest day reminders for this bill may go out.
    pub fn reminder_date(&self, days_before: u32) -> NaiveDate {
        sub_days(self.due_date, days_before)
    }

    /// The day after the due date.
    pub fn past_due_from(&self) -> NaiveDate {
        add_days(self.due_date, 1)
    }
}

/// The order payments are allocated in: premiums and installments before late fees (a fee
/// never takes money a premium needs, so an unpaid fee never costs coverage), then oldest due
/// date first, then coverage month, then id.
pub fn allocation_order(a: &Bill, b: &Bill) -> std::cmp::Ordering {
    let fee = |b: &Bill| matches!(b.kind, BillKind::LateFee { .. });
    (fee(a), a.due_date, a.coverage_month, a.id).cmp(&(fee(b), b.due_date, b.coverage_month, b.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Datelike;
    use proptest::prelude::*;

    fn month(y: i32, m: u32) -> CoverageMonth {
        CoverageMonth::new(y, m).unwrap()
    }

    #[test]
    fn default_due_date_is_the_23rd_of_the_month_before() {
        let p = BillingPolicy::default();
        assert_eq!(p.due_date(month(2027, 3)).to_string(), "2027-02-23");
        assert_eq!(p.due_date(month(2027, 1)).to_string(), "2026-12-23");
    }

    #[test]
    fn due_day_beyond_month_end_clamps() {
        let p = BillingPolicy::new(31, 21, vec![7, 2]).unwrap();
        assert_eq!(p.due_date(month(2027, 3)).to_string(), "2027-02-28");
        assert_eq!(p.due_date(month(2028, 3)).to_string(), "2028-02-29");
        assert_eq!(p.due_date(month(2027, 5)).to_string(), "2027-04-30");
        assert_eq!(
            BillingPolicy::new(0, 21, vec![]),
            Err(BillingPolicyError::DueDay)
        );
        assert_eq!(
            BillingPolicy::new(32, 21, vec![]),
            Err(BillingPolicyError::DueDay)
        );
        assert_eq!(
            BillingPolicy::new(23, 0, vec![]),
            Err(BillingPolicyError::IssueLead)
        );
        assert_eq!(
            BillingPolicy::new(23, 5, vec![0]),
            Err(BillingPolicyError::ReminderDays)
        );
    }

    #[test]
    fn months_to_bill_stops_at_the_issue_horizon() {
        let p = BillingPolicy::default();
        let today = NaiveDate::from_ymd_opt(2027, 2, 2).unwrap();
        // March's bill is due Feb 23 and issued Feb 2.
        let months = p.months_to_bill(month(2027, 1), None, today);
        assert_eq!(months, vec![month(2027, 1), month(2027, 2), month(2027, 3)]);
        let capped = p.months_to_bill(month(2027, 1), Some(month(2027, 2)), today);
        assert_eq!(capped.len(), 2);
    }

    proptest! {
        #[test]
        fn due_dates_fall_in_the_month_before_coverage_and_never_past_its_end(
            due_day in 1u32..=31, year in 2000i32..2200, m in 1u32..=12
        ) {
            let p = BillingPolicy::new(due_day, 21, vec![]).unwrap();
            let cov = month(year, m);
            let due = p.due_date(cov);
            let prev = cov.previous();
            prop_assert_eq!((due.year(), due.month()), (prev.year(), prev.month()));
            prop_assert!(due <= prev.last_day());
            prop_assert_eq!(due.day(), due_day.min(prev.last_day().day()));
            prop_assert!(p.issue_date(cov) < due);
        }
    }
}
