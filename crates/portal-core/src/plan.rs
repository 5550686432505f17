//! Payment plans: a past-due balance split into N monthly installments, each a bill of its
//! own; a missed installment ends the plan.

use crate::calendar::add_months_clamped;
use crate::identity::input_error;
use crate::ids::{BillId, PlanId};
use crate::money::Money;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// Fewest installments.
pub const MIN_INSTALLMENTS: u32 = 2;
/// Most installments.
pub const MAX_INSTALLMENTS: u32 = 12;

input_error!(PlanError, "installments", {
    Installments => ("out_of_range", "a payment plan has between 2 and 12 monthly installments"),
    NothingPastDue => ("nothing_past_due", "there is no past-due balance to put in a payment plan"),
    AlreadyActive => ("plan_active", "there is already an active payment plan on this account"),
    FirstDueInPast => ("first_due_in_past", "the first installment cannot be due in the past"),
    TooSmall => ("installment_too_small", "each installment must be at least $1.00; choose fewer installments"),
});

/// State of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PlanStatus {
    /// Installments are being paid.
    Active,
    /// Every installment is paid.
    Completed,
    /// An installment was missed; the plan ended and the rest is due now.
    Defaulted {
        /// When it was missed.
        on: NaiveDate,
    },
}

/// A payment plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentPlan {
    /// Id.
    pub id: PlanId,
    /// The past-due total it spreads.
    pub total: Money,
    /// Installment bills, in order.
    pub installments: Vec<BillId>,
    /// The past-due bills it took over, with the amount moved from each.
    pub source_bills: Vec<(BillId, Money)>,
    /// State.
    pub status: PlanStatus,
    /// When it was set up.
    pub created_at: DateTime<Utc>,
    /// Who set it up ("member", "agent <id>").
    pub created_by: String,
}

/// Checks a plan request and returns the installment amounts and due dates.
pub fn schedule(
    total: Money,
    installments: u32,
    first_due: NaiveDate,
    today: NaiveDate,
) -> Result<Vec<(Money, NaiveDate)>, PlanError> {
    if !(MIN_INSTALLMENTS..=MAX_INSTALLMENTS).contains(&installments) {
        return Err(PlanError::Installments);
    }
    if !total.is_positive() {
        return Err(PlanError::NothingPastDue);
    }
    if first_due < today {
        return Err(PlanError::FirstDueInPast);
    }
    let parts = total.split_even(installments);
    if parts.iter().any(|p| p.cents() < 100) {
        return Err(PlanError::TooSmall);
    }
    Ok(parts
        .into_iter()
        .enumerate()
        .map(|(i, amount)| {
            (
                amount,
                add_months_clamped(first_due, u32::try_from(i).unwrap_or(0)),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installments_add_up_and_fall_monthly() {
        let today = NaiveDate::from_ymd_opt(2027, 3, 5).unwrap();
        let s = schedule(
            Money::from_cents(100_001),
            3,
            NaiveDate::from_ymd_opt(2027, 3, 31).unwrap(),
            today,
        )
        .unwrap();
        assert_eq!(
            Money::sum(s.iter().map(|x| x.0)).unwrap(),
            Money::from_cents(100_001)
        );
        assert_eq!(s[1].1.to_string(), "2027-04-30");
        assert_eq!(s[2].1.to_string(), "2027-05-31");
        assert_eq!(
            schedule(Money::from_cents(100), 13, today, today),
            Err(PlanError::Installments)
        );
        assert_eq!(
            schedule(Money::from_cents(100), 1, today, today),
            Err(PlanError::Installments)
        );
        assert_eq!(
            schedule(Money::ZERO, 2, today, today),
            Err(PlanError::NothingPastDue)
        );
        assert_eq!(
            schedule(Money::from_cents(150), 2, today, today),
            Err(PlanError::TooSmall)
        );
    }
}
