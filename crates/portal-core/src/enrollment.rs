//! Enrollments: a coverage line of a household (health, dental), with its gross premium and
//! subsidy (advance premium tax credit), and so the member's premium share.

use crate::calendar::CoverageMonth;
use crate::identity::input_error;
use crate::ids::EnrollmentId;
use crate::money::Money;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// The kind of coverage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoverageKind {
    /// Health insurance.
    Health,
    /// Dental insurance.
    Dental,
}

input_error!(PremiumError, "premium", {
    SubsidyExceedsPremium => ("subsidy_exceeds_premium", "the subsidy cannot be larger than the gross premium"),
    NegativePremium => ("negative", "a premium cannot be negative"),
});

/// Why coverage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TerminationReason {
    /// Premiums not paid by the end of the grace period.
    NonPayment,
}

/// A termination of coverage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Termination {
    /// Last day of coverage.
    pub effective: NaiveDate,
    /// Why.
    pub reason: TerminationReason,
    /// When the termination was processed.
    pub processed_on: NaiveDate,
    /// Last day the member can be reinstated by paying what is owed.
    pub reinstatable_until: NaiveDate,
}

/// One enrollment of a household.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    /// Id.
    pub id: EnrollmentId,
    /// Health or dental.
    pub kind: CoverageKind,
    /// The plan's name as shown to members.
    pub plan_name: String,
    /// Monthly gross premium.
    pub gross_premium: Money,
    /// Monthly subsidy (APTC).
    pub subsidy: Money,
    /// First coverage month.
    pub coverage_start: CoverageMonth,
    /// Last coverage month, if the plan year ends.
    pub coverage_end: Option<CoverageMonth>,
    /// Set when coverage was terminated.
    pub termination: Option<Termination>,
}

impl Enrollment {
    /// Checks premium and subsidy and builds an enrollment.
    pub fn new(
        id: EnrollmentId,
        kind: CoverageKind,
        plan_name: impl Into<String>,
        gross_premium: Money,
        subsidy: Money,
        coverage_start: CoverageMonth,
    ) -> Result<Enrollment, PremiumError> {
        check_premium(gross_premium, subsidy)?;
        Ok(Enrollment {
            id,
            kind,
            plan_name: plan_name.into(),
            gross_premium,
            subsidy,
            coverage_start,
            coverage_end: None,
            termination: None,
        })
    }

    /// The member's monthly share: gross premium minus subsidy.
    pub fn premium_share(&self) -> Money {
        self.gross_premium.saturating_sub(self.subsidy)
    }

    /// Whether the household receives a subsidy on this enrollment.
    pub fn is_subsidised(&self) -> bool {
        self.subsidy.is_positive()
    }

    /// Whether coverage for `month` falls within the enrollment and is not terminated.
    pub fn covers(&self, month: CoverageMonth) -> bool {
        month >= self.coverage_start
            && self.coverage_end.is_none_or(|e| month <= e)
            && self
                .termination
                .as_ref()
                .is_none_or(|t| month <= CoverageMonth::of(t.effective))
    }
}

/// Premium and subsidy must be non-negative and the subsidy at most the premium.
pub fn check_premium(gross: Money, subsidy: Money) -> Result<(), PremiumError> {
    if gross.is_negative() || subsidy.is_negative() {
        return Err(PremiumError::NegativePremium);
    }
    if subsidy > gross {
        return Err(PremiumError::SubsidyExceedsPremium);
    }
    Ok(())
}
