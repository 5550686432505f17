//! Enrollments: a coverage line of a household (health, dental), with its gross premium and
//! subsidy (advance premium tax credit), and so the member's premium share.

use crate::calendar::CoverageMonth;
use crate::coverage::{Coverage, CoverageState};
use crate::identity::input_error;
use crate::ids::EnrollmentId;
use crate::money::Money;
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
    /// Monthly subsidy (APTC) from the latest change on.
    pub subsidy: Money,
    /// Earlier subsidies: each applies from its month until the next change.
    #[serde(default)]
    pub subsidy_history: Vec<(CoverageMonth, Money)>,
    /// First coverage month.
    pub coverage_start: CoverageMonth,
    /// Last coverage month, if the plan year ends.
    pub coverage_end: Option<CoverageMonth>,
    /// Coverage: the state machine of spec §3.
    #[serde(default)]
    pub coverage: Coverage,
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
            subsidy_history: Vec::new(),
            coverage: Coverage::default(),
        })
    }

    /// The member's monthly share: gross premium minus subsidy.
    pub fn premium_share(&self) -> Money {
        self.gross_premium.saturating_sub(self.subsidy)
    }

    /// The subsidy for a coverage month, as changes over time set it.
    pub fn subsidy_for(&self, month: CoverageMonth) -> Money {
        self.subsidy_history
            .iter()
            .rev()
            .find(|(from, _)| *from <= month)
            .map_or(self.subsidy, |(_, s)| *s)
    }

    /// The member's share for a coverage month.
    pub fn premium_share_for(&self, month: CoverageMonth) -> Money {
        self.gross_premium.saturating_sub(self.subsidy_for(month))
    }

    /// Records a subsidy change from `effective` on; months before keep what they had.
    pub fn change_subsidy(&mut self, subsidy: Money, effective: CoverageMonth) {
        let before: Vec<(CoverageMonth, Money)> = {
            let mut months: Vec<CoverageMonth> = self
                .subsidy_history
                .iter()
                .map(|(m, _)| *m)
                .filter(|m| *m < effective)
                .collect();
            months.insert(0, self.coverage_start.min(effective));
            months.sort();
            months.dedup();
            months
                .into_iter()
                .filter(|m| *m < effective)
                .map(|m| (m, self.subsidy_for(m)))
                .collect()
        };
        self.subsidy_history = before;
        self.subsidy = subsidy;
        // The latest subsidy applies from `effective`; the history says what came before.
        self.subsidy_history.push((effective, subsidy));
    }

    /// Whether coverage for `month` falls within the enrollment and is not terminated.
    pub fn covers(&self, month: CoverageMonth) -> bool {
        month >= self.coverage_start
            && self.coverage_end.is_none_or(|e| month <= e)
            && match &self.coverage.state {
                CoverageState::Cancelled { .. } => false,
                CoverageState::Terminated { grace, .. } => {
                    month <= CoverageMonth::of(grace.termination_effective)
                }
                _ => true,
            }
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
