//! US dollar amounts with exactly two decimal places, on `rust_decimal`; never a float.

use crate::error::InputError;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The largest amount accepted as input: $999,999,999.99.
const MAX_INPUT_CENTS: i64 = 99_999_999_999;
/// The largest magnitude any computed amount may reach before arithmetic reports overflow.
const MAX_CENTS: i64 = 1_000_000_000_000_000;

/// A USD amount, always at scale 2. It may be negative only as the result of arithmetic.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Money(Decimal);

/// Why an amount was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Nothing was entered.
    #[error("enter an amount")]
    Empty,
    /// Not a plain decimal number.
    #[error("enter the amount as a number, for example 125.50")]
    NotANumber,
    /// More than two decimal places.
    #[error("an amount can have at most two decimal places")]
    TooManyDecimals,
    /// Below zero.
    #[error("the amount cannot be negative")]
    Negative,
    /// Zero where a positive amount is needed.
    #[error("the amount must be greater than zero")]
    NotPositive,
    /// Above the largest accepted amount.
    #[error("the amount is larger than the largest accepted amount ($999,999,999.99)")]
    TooLarge,
    /// Arithmetic left the supported range.
    #[error("the amount is out of range")]
    Overflow,
}

impl InputError for MoneyError {
    fn field(&self) -> &'static str {
        "amount"
    }
    fn code(&self) -> &'static str {
        match self {
            Self::Empty => "required",
            Self::NotANumber => "not_a_number",
            Self::TooManyDecimals => "too_many_decimals",
            Self::Negative => "negative",
            Self::NotPositive => "not_positive",
            Self::TooLarge | Self::Overflow => "too_large",
        }
    }
}

impl Money {
    /// Zero dollars.
    pub const ZERO: Money = Money(Decimal::from_parts(0, 0, 0, false, 2));

    /// An amount from whole cents; the one place minor units become `Money`.
    pub fn from_cents(cents: i64) -> Money {
        Money(Decimal::new(cents, 2))
    }

    /// The amount in whole cents; the one place `Money` becomes minor units.
    pub fn cents(self) -> i64 {
        // Scale is always 2 and magnitude is bounded by MAX_CENTS, so the mantissa fits in i64.
        i64::try_from(self.0.mantissa()).unwrap_or(if self.0.is_sign_negative() {
            i64::MIN
        } else {
            i64::MAX
        })
    }

    /// Parses a non-negative input amount such as `125.5` or `125.50` (zero allowed).
    pub fn parse(input: &str) -> Result<Money, MoneyError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(MoneyError::Empty);
        }
        let (negative, body) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let (whole, frac) = match body.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (body, None),
        };
        let digits_ok = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && frac.is_none_or(str::is_empty))
            || !digits_ok(whole)
            || !frac.is_none_or(digits_ok)
            || frac.is_some_and(str::is_empty)
        {
            return Err(MoneyError::NotANumber);
        }
        if frac.is_some_and(|f| f.len() > 2) {
            return Err(MoneyError::TooManyDecimals);
        }
        let whole = whole.trim_start_matches('0');
        if whole.len() > 9 {
            return if negative {
                Err(MoneyError::Negative)
            } else {
                Err(MoneyError::TooLarge)
            };
        }
        let whole_cents: i64 = if whole.is_empty() {
            0
        } else {
            whole.parse::<i64>().map_err(|_| MoneyError::NotANumber)? * 100
        };
        let frac_cents: i64 = match frac {
            None => 0,
            Some(f) => {
                let padded = format!("{f:0<2}");
                padded.parse::<i64>().map_err(|_| MoneyError::NotANumber)?
            }
        };
        let cents = whole_cents + frac_cents;
        if negative && cents != 0 {
            return Err(MoneyError::Negative);
        }
        if cents > MAX_INPUT_CENTS {
            return Err(MoneyError::TooLarge);
        }
        Ok(Money::from_cents(cents))
    }

    /// Parses an input amount that must be greater than zero (a payment, a cap).
    pub fn parse_positive(input: &str) -> Result<Money, MoneyError> {
        Money::parse(input)?.require_positive()
    }

    /// Checks a decimal from a trusted typed source (a JSON number already parsed, a config value).
    pub fn from_decimal(d: Decimal) -> Result<Money, MoneyError> {
        if d.normalize().scale() > 2 {
            return Err(MoneyError::TooManyDecimals);
        }
        let mut v = d;
        v.rescale(2);
        let m = Money(v);
        if m.0.abs() > Decimal::new(MAX_CENTS, 2) {
            return Err(MoneyError::Overflow);
        }
        Ok(m)
    }

    /// Rounds a computed decimal (a percentage of a premium) to cents, half away from zero.
    ///
    /// Every rounding of money in the core goes through here, so the strategy is stated once.
    pub fn round_half_up(d: Decimal) -> Result<Money, MoneyError> {
        Money::from_decimal(d.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero))
    }

    /// `Ok(self)` if the amount is greater than zero.
    pub fn require_positive(self) -> Result<Money, MoneyError> {
        if self.0.is_sign_negative() && !self.0.is_zero() {
            Err(MoneyError::Negative)
        } else if self.0.is_zero() {
            Err(MoneyError::NotPositive)
        } else {
            Ok(self)
        }
    }

    /// The amount as a decimal at scale 2.
    pub fn amount(self) -> Decimal {
        self.0
    }

    /// Whether the amount is exactly zero.
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    /// Whether the amount is above zero.
    pub fn is_positive(self) -> bool {
        self.0 > Decimal::ZERO
    }

    /// Whether the amount is below zero.
    pub fn is_negative(self) -> bool {
        self.0 < Decimal::ZERO
    }

    /// `self + other`, or `Overflow`.
    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.0
            .checked_add(other.0)
            .ok_or(MoneyError::Overflow)
            .and_then(Money::bounded)
    }

    /// `self - other`, or `Overflow`.
    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.0
            .checked_sub(other.0)
            .ok_or(MoneyError::Overflow)
            .and_then(Money::bounded)
    }

    /// `self * n`, or `Overflow`.
    pub fn checked_mul(self, n: i64) -> Result<Money, MoneyError> {
        self.0
            .checked_mul(Decimal::from(n))
            .ok_or(MoneyError::Overflow)
            .and_then(Money::bounded)
    }

    /// The sum of amounts, or `Overflow`.
    pub fn sum<I: IntoIterator<Item = Money>>(items: I) -> Result<Money, MoneyError> {
        items
            .into_iter()
            .try_fold(Money::ZERO, |acc, m| acc.checked_add(m))
    }

    /// `self - other`, but never below zero.
    pub fn saturating_sub(self, other: Money) -> Money {
        if other >= self {
            Money::ZERO
        } else {
            Money(self.0 - other.0)
        }
    }

    /// Splits the amount into `n` parts that differ by at most one cent and add up exactly;
    /// earlier parts carry the extra cents. `n` of zero yields no parts.
    pub fn split_even(self, n: u32) -> Vec<Money> {
        if n == 0 {
            return Vec::new();
        }
        let cents = self.cents();
        let n64 = i64::from(n);
        let base = cents.div_euclid(n64);
        let extra = cents.rem_euclid(n64);
        (0..n64)
            .map(|i| Money::from_cents(base + i64::from(i < extra)))
            .collect()
    }

    fn bounded(d: Decimal) -> Result<Money, MoneyError> {
        if d.abs() > Decimal::new(MAX_CENTS, 2) {
            return Err(MoneyError::Overflow);
        }
        let mut v = d;
        v.rescale(2);
        Ok(Money(v))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2}", self.0)
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${:.2}", self.0)
    }
}

impl FromStr for Money {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Money::parse(s)
    }
}

impl TryFrom<String> for Money {
    type Error = MoneyError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Money::parse(&s)
    }
}

impl From<Money> for String {
    fn from(m: Money) -> String {
        m.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(input: &str, expected: Result<&str, MoneyError>) {
        let got = Money::parse(input).map(|m| m.to_string());
        assert_eq!(got, expected.map(str::to_owned), "input {input:?}");
    }

    #[test]
    fn parses_plain_amounts() {
        check("125", Ok("125.00"));
        check("125.5", Ok("125.50"));
        check(" 0.07 ", Ok("0.07"));
        check("0", Ok("0.00"));
        check(".5", Ok("0.50"));
        check("007.10", Ok("7.10"));
        check("999999999.99", Ok("999999999.99"));
    }

    #[test]
    fn rejects_bad_amounts_with_a_reason() {
        check("", Err(MoneyError::Empty));
        check("abc", Err(MoneyError::NotANumber));
        check("1.2.3", Err(MoneyError::NotANumber));
        check("1e3", Err(MoneyError::NotANumber));
        check("12.", Err(MoneyError::NotANumber));
        check(".", Err(MoneyError::NotANumber));
        check("$12", Err(MoneyError::NotANumber));
        check("1,000", Err(MoneyError::NotANumber));
        check("NaN", Err(MoneyError::NotANumber));
        check("12.345", Err(MoneyError::TooManyDecimals));
        check("-1", Err(MoneyError::Negative));
        check("1000000000", Err(MoneyError::TooLarge));
        check(
            "99999999999999999999999999999999",
            Err(MoneyError::TooLarge),
        );
        assert_eq!(Money::parse_positive("0.00"), Err(MoneyError::NotPositive));
        assert_eq!(MoneyError::TooManyDecimals.field(), "amount");
    }

    #[test]
    fn split_even_adds_up() {
        let parts = Money::from_cents(1000).split_even(3);
        assert_eq!(
            parts,
            vec![
                Money::from_cents(334),
                Money::from_cents(333),
                Money::from_cents(333)
            ]
        );
    }

    #[test]
    fn rounding_is_half_up() {
        assert_eq!(
            Money::round_half_up(Decimal::new(12345, 3)),
            Ok(Money::from_cents(1235))
        );
        assert_eq!(
            Money::round_half_up(Decimal::new(12344, 3)),
            Ok(Money::from_cents(1234))
        );
    }

    #[test]
    fn serde_uses_strings_and_validates() {
        let m: Money = serde_json::from_str("\"10.5\"").unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"10.50\"");
        assert!(serde_json::from_str::<Money>("\"10.555\"").is_err());
        assert!(serde_json::from_str::<Money>("10.5").is_err());
    }

    proptest! {
        #[test]
        fn money_parse_round_trips(cents in 0i64..=MAX_INPUT_CENTS) {
            let m = Money::from_cents(cents);
            prop_assert_eq!(Money::parse(&m.to_string()), Ok(m));
            prop_assert_eq!(m.cents(), cents);
        }

        #[test]
        fn money_parse_rejects_more_than_two_decimals(whole in 0u32..1_000_000, frac in 0u32..1000, extra in 1u32..10) {
            let s = format!("{whole}.{frac:03}{extra}");
            prop_assert_eq!(Money::parse(&s), Err(MoneyError::TooManyDecimals));
        }

        #[test]
        fn money_parse_rejects_negatives(cents in 1i64..=MAX_INPUT_CENTS) {
            let s = format!("-{}", Money::from_cents(cents));
            prop_assert_eq!(Money::parse(&s), Err(MoneyError::Negative));
        }

        #[test]
        fn money_parse_rejects_non_numbers(s in "[^0-9.+\\s-]+[0-9]*") {
            prop_assert_eq!(Money::parse(&s), Err(MoneyError::NotANumber));
        }

        #[test]
        fn money_parse_never_panics(s in "\\PC{0,40}") {
            let _ = Money::parse(&s);
        }

        #[test]
        fn split_even_never_loses_a_cent(cents in 0i64..10_000_000, n in 1u32..=60) {
            let parts = Money::from_cents(cents).split_even(n);
            prop_assert_eq!(parts.len(), n as usize);
            prop_assert_eq!(Money::sum(parts.iter().copied()), Ok(Money::from_cents(cents)));
            let max = parts.iter().map(|p| p.cents()).max().unwrap();
            let min = parts.iter().map(|p| p.cents()).min().unwrap();
            prop_assert!(max - min <= 1);
        }
    }
}
