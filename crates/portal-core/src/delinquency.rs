//! Missed payments: past due, grace period, premium payment threshold, the notice sequence,
//! termination for non-payment, reinstatement, and late fees.
//!
//! The grace period is counted in coverage months from the first unpaid month: 3 for members
//! who receive a subsidy and have paid at least one full month in the benefit year, 1 otherwise.
//! It ends on the last day of its last month. Coverage left unpaid at its end terminates: for
//! subsidised members back to the last day of the first grace month, otherwise at the end of
//! the last paid month.

use crate::billing::{Bill, BillKind, BillNotice};
use crate::calendar::{CoverageMonth, add_days, sub_days};
use crate::enrollment::Enrollment;
use crate::identity::input_error;
use crate::money::Money;
use chrono::{Datelike, NaiveDate};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Late-fee policy (default: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LateFeePolicy {
    /// No late fees.
    #[default]
    None,
    /// A fixed fee per late bill.
    Fixed {
        /// The fee.
        amount: Money,
    },
    /// A percentage of the late bill, optionally capped.
    Percent {
        /// Percent (e.g. 5 for 5%).
        percent: Decimal,
        /// Largest fee.
        max: Option<Money>,
    },
}

impl LateFeePolicy {
    /// The fee for a late bill of `amount`, if any.
    pub fn fee_for(&self, amount: Money) -> Option<Money> {
        let fee = match self {
            LateFeePolicy::None => return None,
            LateFeePolicy::Fixed { amount } => *amount,
            LateFeePolicy::Percent { percent, max } => {
                let raw =
                    Money::round_half_up(amount.amount() * *percent / Decimal::ONE_HUNDRED).ok()?;
                max.map_or(raw, |m| raw.min(m))
            }
        };
        fee.is_positive().then_some(fee)
    }
}

input_error!(DelinquencyPolicyError, "delinquency", {
    GraceMonths => ("grace_months", "grace periods must be between 1 and 6 months"),
    Threshold => ("threshold_percent", "the payment threshold must be between 50% and 100%"),
    Shortfall => ("threshold_shortfall", "the threshold shortfall cannot be negative"),
    Reinstatement => ("reinstatement_days", "the reinstatement window must be between 0 and 90 days"),
    LateFee => ("late_fee", "a late fee must be positive and a percentage at most 25%"),
    Warnings => ("warning_days", "the first termination warning must come before the second"),
});

/// Configurable delinquency rules; defaults follow the Massachusetts Health Connector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelinquencyPolicy {
    /// Grace months for subsidised members with a full month paid this benefit year.
    pub grace_months_subsidised: u32,
    /// Grace months for everyone else.
    pub grace_months_other: u32,
    /// A bill paid at least this percent counts as paid for delinquency.
    pub threshold_percent: Decimal,
    /// A bill short by at most this counts as paid for delinquency.
    pub threshold_shortfall: Money,
    /// The first termination warning goes out this many days before the grace period ends
    /// (never before it starts).
    pub first_warning_days_before_end: u32,
    /// The second termination warning goes out this many days before it ends.
    pub second_warning_days_before_end: u32,
    /// Days after termination that paying what is owed reinstates coverage.
    pub reinstatement_days: u32,
    /// Late fees.
    pub late_fee: LateFeePolicy,
}

impl Default for DelinquencyPolicy {
    fn default() -> Self {
        Self {
            grace_months_subsidised: 3,
            grace_months_other: 1,
            threshold_percent: Decimal::from(95),
            threshold_shortfall: Money::from_cents(1000),
            first_warning_days_before_end: 30,
            second_warning_days_before_end: 10,
            reinstatement_days: 35,
            late_fee: LateFeePolicy::None,
        }
    }
}

impl DelinquencyPolicy {
    /// Checks a configured policy.
    pub fn check(&self) -> Result<(), DelinquencyPolicyError> {
        if !(1..=6).contains(&self.grace_months_subsidised)
            || !(1..=6).contains(&self.grace_months_other)
        {
            return Err(DelinquencyPolicyError::GraceMonths);
        }
        if self.threshold_percent < Decimal::from(50)
            || self.threshold_percent > Decimal::ONE_HUNDRED
        {
            return Err(DelinquencyPolicyError::Threshold);
        }
        if self.threshold_shortfall.is_negative() {
            return Err(DelinquencyPolicyError::Shortfall);
        }
        if self.reinstatement_days > 90 {
            return Err(DelinquencyPolicyError::Reinstatement);
        }
        if self.first_warning_days_before_end <= self.second_warning_days_before_end {
            return Err(DelinquencyPolicyError::Warnings);
        }
        match self.late_fee {
            LateFeePolicy::Fixed { amount } if !amount.is_positive() => {
                Err(DelinquencyPolicyError::LateFee)
            }
            LateFeePolicy::Percent { percent, .. }
                if percent <= Decimal::ZERO || percent > Decimal::from(25) =>
            {
                Err(DelinquencyPolicyError::LateFee)
            }
            _ => Ok(()),
        }
    }

    /// Whether a bill counts as paid for delinquency purposes.
    pub fn counts_as_paid(&self, bill: &Bill) -> bool {
        bill.meets_threshold(self.threshold_percent, self.threshold_shortfall)
    }
}

/// The grace-period dates for a first unpaid coverage month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraceDates {
    /// The first unpaid coverage month.
    pub first_unpaid_month: CoverageMonth,
    /// The day the account became past due (the day after the bill's due date).
    pub past_due_since: NaiveDate,
    /// Last day of the grace period.
    pub grace_ends_on: NaiveDate,
    /// First termination warning date.
    pub first_warning_on: NaiveDate,
    /// Second termination warning date.
    pub second_warning_on: NaiveDate,
    /// The last day of coverage if still unpaid when grace ends.
    pub termination_effective: NaiveDate,
    /// Grace months that apply.
    pub grace_months: u32,
}

/// Grace and termination dates for an unpaid bill due on `due_date` for `month`.
pub fn grace_dates(
    month: CoverageMonth,
    due_date: NaiveDate,
    long_grace: bool,
    policy: &DelinquencyPolicy,
) -> GraceDates {
    let grace_months = if long_grace {
        policy.grace_months_subsidised
    } else {
        policy.grace_months_other
    };
    let past_due_since = add_days(due_date, 1);
    let grace_ends_on = month
        .plus(i32::try_from(grace_months.max(1) - 1).unwrap_or(0))
        .last_day()
        .max(past_due_since);
    let termination_effective = if long_grace {
        month.last_day()
    } else {
        month.previous().last_day()
    };
    let first_warning_on =
        sub_days(grace_ends_on, policy.first_warning_days_before_end).max(past_due_since);
    let second_warning_on =
        sub_days(grace_ends_on, policy.second_warning_days_before_end).max(first_warning_on);
    GraceDates {
        first_unpaid_month: month,
        past_due_since,
        grace_ends_on,
        first_warning_on,
        second_warning_on,
        termination_effective,
        grace_months,
    }
}

/// Coverage status of one enrollment, as shown to the member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CoverageStatus {
    /// The binder bill is not paid yet: coverage has not started.
    PendingBinder {
        /// The binder's due date.
        due_date: NaiveDate,
    },
    /// Covered and up to date.
    Active,
    /// A bill is past due: the grace period runs until `grace.grace_ends_on`.
    InGrace {
        /// The grace dates.
        grace: GraceDates,
    },
    /// Terminated for non-payment.
    Terminated {
        /// Last day of coverage.
        effective: NaiveDate,
        /// Until when paying what is owed reinstates it.
        reinstatable_until: NaiveDate,
    },
}

/// Bills that drive delinquency: premiums and installments, not late fees.
fn drives_delinquency(b: &Bill) -> bool {
    !b.void && !matches!(b.kind, BillKind::LateFee { .. })
}

/// Whether a full month was paid in the benefit year of `month` (earlier months only).
fn paid_a_full_month(bills: &[&Bill], month: CoverageMonth) -> bool {
    bills.iter().any(|b| {
        b.kind.is_premium()
            && b.coverage_month < month
            && b.coverage_month.year() == month.year()
            && b.open_amount().is_zero()
            && b.transferred.is_zero()
    })
}

/// The enrollment's coverage status on `today`, from its bills alone.
pub fn coverage_status(
    enrollment: &Enrollment,
    bills: &[&Bill],
    policy: &DelinquencyPolicy,
    today: NaiveDate,
) -> CoverageStatus {
    if let Some(t) = &enrollment.termination {
        return CoverageStatus::Terminated {
            effective: t.effective,
            reinstatable_until: t.reinstatable_until,
        };
    }
    if let Some(binder) = bills.iter().find(|b| b.kind == BillKind::Binder && !b.void) {
        if !policy.counts_as_paid(binder) {
            return CoverageStatus::PendingBinder {
                due_date: binder.due_date,
            };
        }
    }
    let first_unpaid = bills
        .iter()
        .filter(|b| drives_delinquency(b) && b.due_date < today && !policy.counts_as_paid(b))
        .min_by_key(|b| (b.due_date, b.coverage_month));
    match first_unpaid {
        None => CoverageStatus::Active,
        Some(b) => {
            let long = enrollment.is_subsidised() && paid_a_full_month(bills, b.coverage_month);
            CoverageStatus::InGrace {
                grace: grace_dates(b.coverage_month, b.due_date, long, policy),
            }
        }
    }
}

/// What the delinquency run must do for one enrollment on a day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DelinquencyStep {
    /// Send this notice about the first unpaid bill (and record it on the bill).
    Notice {
        /// Which.
        notice: BillNotice,
        /// Dates to quote.
        grace: GraceDates,
    },
    /// Terminate coverage.
    Terminate {
        /// Dates.
        grace: GraceDates,
    },
}

/// The next step of the notice sequence on `today`, given what was already sent for the first
/// unpaid bill: past-due warning, termination warning, second termination warning, then
/// termination. Catching up after missed runs sends only the latest notice that applies.
pub fn next_step(
    status: &CoverageStatus,
    first_unpaid_notices: &[BillNotice],
    today: NaiveDate,
) -> Option<DelinquencyStep> {
    let CoverageStatus::InGrace { grace } = status else {
        return None;
    };
    if today > grace.grace_ends_on {
        return Some(DelinquencyStep::Terminate { grace: *grace });
    }
    let due = if today >= grace.second_warning_on {
        BillNotice::SecondTerminationWarning
    } else if today >= grace.first_warning_on {
        BillNotice::TerminationWarning
    } else {
        BillNotice::PastDue
    };
    let already = first_unpaid_notices.iter().any(|n| {
        matches!(
            n,
            BillNotice::PastDue
                | BillNotice::TerminationWarning
                | BillNotice::SecondTerminationWarning
        ) && *n >= due
    });
    (!already).then_some(DelinquencyStep::Notice {
        notice: due,
        grace: *grace,
    })
}

/// The day reinstatement closes for a termination processed on `processed_on`.
pub fn reinstatable_until(processed_on: NaiveDate, policy: &DelinquencyPolicy) -> NaiveDate {
    add_days(processed_on, policy.reinstatement_days)
}

/// "Coverage at risk on DATE": the due date of the earliest open bill, when anything is unpaid.
pub fn at_risk_on(bills: &[&Bill]) -> Option<NaiveDate> {
    bills
        .iter()
        .filter(|b| drives_delinquency(b) && b.open_amount().is_positive())
        .map(|b| b.due_date)
        .min()
}

/// The paid-through date: the last day of the last coverage month paid with every month
/// before it also paid.
pub fn paid_through(
    enrollment: &Enrollment,
    bills: &[&Bill],
    policy: &DelinquencyPolicy,
) -> Option<NaiveDate> {
    let mut months: Vec<&&Bill> = bills
        .iter()
        .filter(|b| b.kind.is_premium() && !b.void)
        .collect();
    months.sort_by_key(|b| b.coverage_month);
    let mut through = None;
    let mut expected = enrollment.coverage_start;
    for b in months {
        if b.coverage_month != expected || !policy.counts_as_paid(b) {
            break;
        }
        through = Some(b.coverage_month.last_day());
        expected = expected.plus(1);
    }
    through
}

/// Whether `today` is within a month's last days (used by notices to say "this month").
pub fn is_same_month(a: NaiveDate, b: NaiveDate) -> bool {
    (a.year(), a.month()) == (b.year(), b.month())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::BillingPolicy;
    use proptest::prelude::*;

    fn m(y: i32, mo: u32) -> CoverageMonth {
        CoverageMonth::new(y, mo).unwrap()
    }

    #[test]
    fn subsidised_member_gets_three_months_and_terminates_back_to_the_first() {
        let p = DelinquencyPolicy::default();
        let g = grace_dates(
            m(2027, 3),
            NaiveDate::from_ymd_opt(2027, 2, 23).unwrap(),
            true,
            &p,
        );
        assert_eq!(g.grace_ends_on.to_string(), "2027-05-31");
        assert_eq!(g.termination_effective.to_string(), "2027-03-31");
        assert_eq!(g.past_due_since.to_string(), "2027-02-24");
        assert_eq!(g.first_warning_on.to_string(), "2027-05-01");
        assert_eq!(g.second_warning_on.to_string(), "2027-05-21");
    }

    #[test]
    fn other_members_get_one_month_and_end_with_the_last_paid_month() {
        let p = DelinquencyPolicy::default();
        let g = grace_dates(
            m(2027, 3),
            NaiveDate::from_ymd_opt(2027, 2, 23).unwrap(),
            false,
            &p,
        );
        assert_eq!(g.grace_ends_on.to_string(), "2027-03-31");
        assert_eq!(g.termination_effective.to_string(), "2027-02-28");
        assert_eq!(g.first_warning_on.to_string(), "2027-03-01");
    }

    #[test]
    fn notice_sequence_catches_up_to_the_latest_only() {
        let p = DelinquencyPolicy::default();
        let g = grace_dates(
            m(2027, 3),
            NaiveDate::from_ymd_opt(2027, 2, 23).unwrap(),
            true,
            &p,
        );
        let s = CoverageStatus::InGrace { grace: g };
        let on = |y, mo, d| NaiveDate::from_ymd_opt(y, mo, d).unwrap();
        assert_eq!(
            next_step(&s, &[], on(2027, 2, 23)),
            Some(DelinquencyStep::Notice {
                notice: BillNotice::PastDue,
                grace: g
            })
        );
        assert_eq!(next_step(&s, &[BillNotice::PastDue], on(2027, 3, 10)), None);
        assert_eq!(
            next_step(&s, &[BillNotice::PastDue], on(2027, 5, 2)),
            Some(DelinquencyStep::Notice {
                notice: BillNotice::TerminationWarning,
                grace: g
            })
        );
        assert_eq!(
            next_step(&s, &[], on(2027, 5, 25)),
            Some(DelinquencyStep::Notice {
                notice: BillNotice::SecondTerminationWarning,
                grace: g
            })
        );
        assert_eq!(
            next_step(&s, &[BillNotice::SecondTerminationWarning], on(2027, 5, 30)),
            None
        );
        assert_eq!(
            next_step(&s, &[], on(2027, 6, 1)),
            Some(DelinquencyStep::Terminate { grace: g })
        );
        assert_eq!(
            next_step(&CoverageStatus::Active, &[], on(2027, 6, 1)),
            None
        );
    }

    #[test]
    fn late_fee_policy() {
        assert_eq!(LateFeePolicy::None.fee_for(Money::from_cents(10_000)), None);
        let pct = LateFeePolicy::Percent {
            percent: Decimal::from(5),
            max: Some(Money::from_cents(1_000)),
        };
        assert_eq!(
            pct.fee_for(Money::from_cents(10_001)),
            Some(Money::from_cents(500))
        );
        assert_eq!(
            pct.fee_for(Money::from_cents(100_000)),
            Some(Money::from_cents(1_000))
        );
        let bad = DelinquencyPolicy {
            late_fee: LateFeePolicy::Fixed {
                amount: Money::ZERO,
            },
            ..DelinquencyPolicy::default()
        };
        assert_eq!(bad.check(), Err(DelinquencyPolicyError::LateFee));
        assert_eq!(DelinquencyPolicy::default().check(), Ok(()));
    }

    proptest! {
        #[test]
        fn grace_and_termination_dates_are_monotone_in_the_due_date(
            y in 2001i32..2100, mo in 1u32..=12, gap in 0i32..36, due_day in 1u32..=31, long in any::<bool>()
        ) {
            let policy = DelinquencyPolicy::default();
            let billing = BillingPolicy::new(due_day, 21, vec![]).unwrap();
            let a = m(y, mo);
            let b = a.plus(gap);
            let ga = grace_dates(a, billing.due_date(a), long, &policy);
            let gb = grace_dates(b, billing.due_date(b), long, &policy);
            prop_assert!(billing.due_date(a) <= billing.due_date(b));
            prop_assert!(ga.grace_ends_on <= gb.grace_ends_on);
            prop_assert!(ga.termination_effective <= gb.termination_effective);
            prop_assert!(ga.first_warning_on <= gb.first_warning_on);
            prop_assert!(ga.second_warning_on <= gb.second_warning_on);
            // Within one bill: past due, then warnings, then the end of grace; termination never later than grace end.
            prop_assert!(ga.past_due_since <= ga.first_warning_on);
            prop_assert!(ga.first_warning_on <= ga.second_warning_on);
            prop_assert!(ga.second_warning_on <= ga.grace_ends_on);
            prop_assert!(ga.termination_effective < ga.grace_ends_on);
        }
    }
}
