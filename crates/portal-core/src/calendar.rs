//! Calendar arithmetic on plain dates: coverage months, month ends, clamping.

use crate::identity::input_error;
use chrono::{Datelike, Days, Months, NaiveDate};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A calendar month of coverage (`2027-03`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CoverageMonth {
    year: i32,
    month: u32,
}

input_error!(MonthError, "month", {
    Format => ("format", "enter the month as YYYY-MM"),
    OutOfRange => ("out_of_range", "the month must be between 2000-01 and 2200-12"),
});

impl CoverageMonth {
    /// A month in 2000-01..=2200-12.
    pub fn new(year: i32, month: u32) -> Result<CoverageMonth, MonthError> {
        if (2000..=2200).contains(&year) && (1..=12).contains(&month) {
            Ok(CoverageMonth { year, month })
        } else {
            Err(MonthError::OutOfRange)
        }
    }

    /// The month containing `date` (dates outside the supported years are clamped into range).
    pub fn of(date: NaiveDate) -> CoverageMonth {
        CoverageMonth {
            year: date.year().clamp(2000, 2200),
            month: date.month(),
        }
    }

    /// Parses `YYYY-MM`.
    pub fn parse(input: &str) -> Result<CoverageMonth, MonthError> {
        let (y, m) = input.trim().split_once('-').ok_or(MonthError::Format)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(MonthError::Format);
        }
        let y: i32 = y.parse().map_err(|_| MonthError::Format)?;
        let m: u32 = m.parse().map_err(|_| MonthError::Format)?;
        CoverageMonth::new(y, m)
    }

    /// Year.
    pub fn year(self) -> i32 {
        self.year
    }

    /// Month number, 1-12.
    pub fn month(self) -> u32 {
        self.month
    }

    /// The first day of the month.
    pub fn first_day(self) -> NaiveDate {
        NaiveDate::from_ymd_opt(self.year, self.month, 1).unwrap_or(NaiveDate::MIN)
    }

    /// The last day of the month.
    pub fn last_day(self) -> NaiveDate {
        let first = self.first_day();
        first
            .checked_add_months(Months::new(1))
            .and_then(|d| d.checked_sub_days(Days::new(1)))
            .unwrap_or(first)
    }

    /// Day `day` of this month, clamped to the month's last day.
    pub fn day_clamped(self, day: u32) -> NaiveDate {
        let last = self.last_day();
        NaiveDate::from_ymd_opt(self.year, self.month, day.clamp(1, last.day())).unwrap_or(last)
    }

    /// The month `n` months later (or earlier for negative `n`).
    pub fn plus(self, n: i32) -> CoverageMonth {
        let idx = self.year * 12 + (self.month as i32 - 1) + n;
        let year = idx.div_euclid(12);
        let month = u32::try_from(idx.rem_euclid(12)).unwrap_or(0) + 1;
        CoverageMonth { year, month }
    }

    /// The month before.
    pub fn previous(self) -> CoverageMonth {
        self.plus(-1)
    }

    /// Months from `self` to `later` (negative if `later` is earlier).
    pub fn months_until(self, later: CoverageMonth) -> i32 {
        (later.year * 12 + later.month as i32) - (self.year * 12 + self.month as i32)
    }
}

impl fmt::Display for CoverageMonth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}
impl fmt::Debug for CoverageMonth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CoverageMonth({self})")
    }
}
impl TryFrom<String> for CoverageMonth {
    type Error = MonthError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        CoverageMonth::parse(&s)
    }
}
impl From<CoverageMonth> for String {
    fn from(m: CoverageMonth) -> String {
        m.to_string()
    }
}

/// `date + n` days, saturating at the calendar's end.
pub fn add_days(date: NaiveDate, n: u32) -> NaiveDate {
    date.checked_add_days(Days::new(u64::from(n)))
        .unwrap_or(NaiveDate::MAX)
}

/// `date - n` days, saturating at the calendar's start.
pub fn sub_days(date: NaiveDate, n: u32) -> NaiveDate {
    date.checked_sub_days(Days::new(u64::from(n)))
        .unwrap_or(NaiveDate::MIN)
}

/// `date` plus `n` months, clamped to the end of the target month (Jan 31 + 1 = Feb 28/29).
pub fn add_months_clamped(date: NaiveDate, n: u32) -> NaiveDate {
    date.checked_add_months(Months::new(n))
        .unwrap_or(NaiveDate::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_arithmetic() {
        let m = CoverageMonth::new(2027, 1).unwrap();
        assert_eq!(m.previous().to_string(), "2026-12");
        assert_eq!(m.plus(13).to_string(), "2028-02");
        assert_eq!(
            CoverageMonth::new(2028, 2).unwrap().last_day().to_string(),
            "2028-02-29"
        );
        assert_eq!(
            CoverageMonth::new(2027, 2)
                .unwrap()
                .day_clamped(31)
                .to_string(),
            "2027-02-28"
        );
        assert_eq!(m.months_until(m.plus(5)), 5);
        assert_eq!(CoverageMonth::parse("2027-13"), Err(MonthError::OutOfRange));
        assert_eq!(CoverageMonth::parse("27-1"), Err(MonthError::Format));
        assert_eq!(CoverageMonth::new(2027, 0), Err(MonthError::OutOfRange));
        assert_eq!(CoverageMonth::new(1999, 12), Err(MonthError::OutOfRange));
    }
}
