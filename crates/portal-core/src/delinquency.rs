//! Missed payments: the policy (grace months, premium payment threshold, binder deadline,
//! notice days, reinstatement window, late fees), grace-period dates, and the coverage status
//! shown to members. The state machine that applies them is `coverage`.
//!
//! The grace period is counted in coverage months from the first unpaid month: 3 for members
//! who receive a subsidy and have paid at least one full month in the benefit year, otherwise
//! the state rule. It ends on the last day of its last month. Coverage left unpaid at its end
//! terminates: for subsidised members back to the last day of the first grace month, otherwise
//! at the end of the last paid month.

use crate::calendar::{CoverageMonth, add_days, sub_days};
use crate::identity::input_error;
use crate::money::Money;
use chrono::NaiveDate;
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
    BinderDays => ("binder_grace_days", "the binder deadline must be between 0 and 30 days after its due date"),
});

/// Configurable delinquency rules; defaults follow the Massachusetts Health Connector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DelinquencyPolicy {
    /// Grace months for subsidised members with a full month paid this benefit year.
    pub grace_months_subsidised: u32,
    /// Grace months for everyone else (the state rule).
    pub grace_months_other: u32,
    /// Paying at least this percent of the total owed counts as paid in full.
    pub threshold_percent: Decimal,
    /// Short of the total owed by at most this counts as paid in full (off at zero, the
    /// default; a month with no payment at all is never forgiven).
    pub threshold_shortfall: Money,
    /// Days after the binder's due date that paying it still effectuates coverage.
    pub binder_grace_days: u32,
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
            threshold_shortfall: Money::ZERO,
            binder_grace_days: 0,
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
        if self.binder_grace_days > 30 {
            return Err(DelinquencyPolicyError::BinderDays);
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
}

/// Which rule a grace period follows, fixed when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GraceKind {
    /// Three months for an enrollee receiving APTC who paid a full month in the benefit year
    /// (45 CFR 156.270(d),(g)).
    Aptc,
    /// The state rule (default one month, 956 CMR 12.12).
    State,
}

/// The grace-period dates for a first unpaid coverage month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraceDates {
    /// Which rule.
    pub kind: GraceKind,
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
        kind: if long_grace {
            GraceKind::Aptc
        } else {
            GraceKind::State
        },
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
        /// The last day paying it starts coverage.
        deadline: NaiveDate,
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
    /// The binder was not paid by its deadline: coverage never started and nothing is owed.
    Cancelled {
        /// The deadline that passed.
        deadline: NaiveDate,
    },
}

/// The day reinstatement closes for a termination processed on `processed_on`.
pub fn reinstatable_until(processed_on: NaiveDate, policy: &DelinquencyPolicy) -> NaiveDate {
    add_days(processed_on, policy.reinstatement_days)
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
        use crate::billing::BillNotice;
        use crate::coverage::next_notice;
        let p = DelinquencyPolicy::default();
        let g = grace_dates(
            m(2027, 3),
            NaiveDate::from_ymd_opt(2027, 2, 23).unwrap(),
            true,
            &p,
        );
        let on = |y, mo, d| NaiveDate::from_ymd_opt(y, mo, d).unwrap();
        assert_eq!(
            next_notice(&g, &[], on(2027, 2, 24)),
            Some(BillNotice::PastDue)
        );
        assert_eq!(
            next_notice(&g, &[BillNotice::PastDue], on(2027, 3, 10)),
            None
        );
        assert_eq!(
            next_notice(&g, &[BillNotice::PastDue], on(2027, 5, 2)),
            Some(BillNotice::TerminationWarning)
        );
        assert_eq!(
            next_notice(&g, &[], on(2027, 5, 25)),
            Some(BillNotice::SecondTerminationWarning)
        );
        assert_eq!(
            next_notice(&g, &[BillNotice::SecondTerminationWarning], on(2027, 5, 30)),
            None
        );
        assert_eq!(next_notice(&g, &[], on(2027, 6, 1)), None, "grace is over");
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
