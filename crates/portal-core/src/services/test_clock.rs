//! The test clock (demo and staging only, spec §3 "Test clock"): move the deployment's date
//! forward and run every daily job for each day passed, as the worker would have.

use super::jobs::JobSummary;
use super::{Portal, ServiceError};
use crate::error::{FieldError, ValidationErrors};
use chrono::NaiveDate;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The port that moves the clock, kept by the portal.
#[derive(Clone)]
pub(crate) struct Control(pub(crate) Arc<dyn crate::ports::ClockControl>);

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestClock")
    }
}

/// The most days one request may move the clock.
pub const MAX_ADVANCE_DAYS: u32 = 400;

/// What moving the test clock did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockAdvance {
    /// The date before.
    pub from: NaiveDate,
    /// The date now.
    pub today: NaiveDate,
    /// The daily jobs' counts over the days passed.
    pub jobs: JobSummary,
}

impl Portal {
    /// Whether this deployment has a test clock.
    pub fn has_test_clock(&self) -> bool {
        self.test_clock.is_some()
    }

    /// The deployment's date, when it has a test clock.
    pub fn test_clock_today(&self) -> Result<NaiveDate, ServiceError> {
        self.test_clock
            .as_ref()
            .map(|_| self.today())
            .ok_or(ServiceError::NotFound("test clock"))
    }

    /// Moves the test clock forward `days` days (1 to 400), running every daily job for each
    /// day it passes. One advance at a time: a second one while the first runs is a conflict.
    pub async fn advance_test_clock(&self, days: u32) -> Result<ClockAdvance, ServiceError> {
        let Some(control) = self.test_clock.clone() else {
            return Err(ServiceError::NotFound("test clock"));
        };
        if !(1..=MAX_ADVANCE_DAYS).contains(&days) {
            return Err(ValidationErrors::one(FieldError::new(
                "days",
                "out_of_range",
                format!("move the clock forward between 1 and {MAX_ADVANCE_DAYS} days"),
            ))
            .into());
        }
        if self.clock_busy.swap(true, Ordering::SeqCst) {
            return Err(ServiceError::Conflict(
                "the test clock is already moving; try again when it is done".into(),
            ));
        }
        let from = self.today();
        let mut jobs = JobSummary::default();
        let mut outcome = Ok(());
        for _ in 0..days {
            control.0.advance_days(1);
            match self.run_daily().await {
                Ok(r) => {
                    jobs.done += r.summary.done;
                    jobs.skipped += r.summary.skipped;
                    jobs.failed += r.summary.failed;
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        self.clock_busy.store(false, Ordering::SeqCst);
        outcome?;
        Ok(ClockAdvance {
            from,
            today: self.today(),
            jobs,
        })
    }
}
