//! Human-readable payment reference numbers with a check character.
//!
//! A reference is 11 data symbols and 1 check symbol over a 31-symbol alphabet that leaves out
//! look-alikes (0, 1, I, O) and U, shown in groups of four: `7KQM-2XTH-9RB4`. The check symbol
//! makes the weighted sum `Σ v_i · 3^i` of all twelve values divisible by 31. Because 31 is
//! prime and 3 generates its multiplicative group, every single-symbol substitution and every
//! swap of two adjacent different symbols changes the sum by a non-zero amount mod 31, so it is
//! always detected.

use crate::identity::input_error;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The symbols, in value order.
pub const REFERENCE_ALPHABET: &[u8; 31] = b"23456789ABCDEFGHJKLMNPQRSTVWXYZ";
const MODULUS: u32 = 31;
const WEIGHT_BASE: u32 = 3;
/// Data symbols in a reference.
pub const REFERENCE_DATA_LEN: usize = 11;
const TOTAL_LEN: usize = REFERENCE_DATA_LEN + 1;

input_error!(ReferenceError, "reference", {
    Empty => ("required", "enter the payment reference number"),
    Length => ("length", "a payment reference number has 12 letters and digits, like 7KQM-2XTH-9RB4"),
    InvalidCharacter => ("invalid_character", "a payment reference number uses the digits 2-9 and letters other than I, O and U"),
    CheckFailed => ("check_failed", "this payment reference number has a typo; check it against your confirmation"),
});

/// A payment reference number; valid by construction.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PaymentReference([u8; TOTAL_LEN]);

fn value_of(symbol: u8) -> Option<u32> {
    REFERENCE_ALPHABET
        .iter()
        .position(|s| *s == symbol)
        .and_then(|p| u32::try_from(p).ok())
}

fn weighted_sum(values: &[u32]) -> u32 {
    let mut weight = 1;
    let mut sum = 0;
    for v in values {
        sum = (sum + v * weight) % MODULUS;
        weight = (weight * WEIGHT_BASE) % MODULUS;
    }
    sum
}

/// `3^n mod 31`.
fn weight_at(n: usize) -> u32 {
    (0..n).fold(1, |w, _| (w * WEIGHT_BASE) % MODULUS)
}

/// Modular inverse in the field of 31 elements (Fermat: a^(p-2)).
fn inverse(a: u32) -> u32 {
    (0..MODULUS - 2).fold(1, |acc, _| (acc * a) % MODULUS)
}

impl PaymentReference {
    /// Builds a reference from 11 data values (each taken mod 31), adding the check symbol.
    /// The id generator port calls this with random values.
    pub fn from_values(values: [u8; REFERENCE_DATA_LEN]) -> PaymentReference {
        let vals: Vec<u32> = values.iter().map(|v| u32::from(*v) % MODULUS).collect();
        let s = weighted_sum(&vals);
        // Need s + c·w = 0 (mod 31) where w is the weight of the check position.
        let w = weight_at(REFERENCE_DATA_LEN);
        let c = ((MODULUS - s) % MODULUS * inverse(w)) % MODULUS;
        let mut out = [0u8; TOTAL_LEN];
        for (slot, v) in out.iter_mut().zip(vals.iter().chain(std::iter::once(&c))) {
            *slot = REFERENCE_ALPHABET
                .get(*v as usize)
                .copied()
                .unwrap_or(REFERENCE_ALPHABET[0]);
        }
        PaymentReference(out)
    }

    /// Parses a reference as a member may type it: any case, with or without hyphens or spaces.
    pub fn parse(input: &str) -> Result<PaymentReference, ReferenceError> {
        let symbols: Vec<u8> = input
            .bytes()
            .filter(|b| !matches!(b, b'-' | b' '))
            .map(|b| b.to_ascii_uppercase())
            .collect();
        if symbols.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if symbols.len() != TOTAL_LEN {
            return Err(ReferenceError::Length);
        }
        let values: Vec<u32> = symbols
            .iter()
            .map(|s| value_of(*s).ok_or(ReferenceError::InvalidCharacter))
            .collect::<Result<_, _>>()?;
        if weighted_sum(&values) != 0 {
            return Err(ReferenceError::CheckFailed);
        }
        let arr: [u8; TOTAL_LEN] = symbols.try_into().map_err(|_| ReferenceError::Length)?;
        Ok(PaymentReference(arr))
    }
}

impl fmt::Display for PaymentReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, chunk) in self.0.chunks(4).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            f.write_str(&String::from_utf8_lossy(chunk))?;
        }
        Ok(())
    }
}

impl fmt::Debug for PaymentReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PaymentReference({self})")
    }
}

impl TryFrom<String> for PaymentReference {
    type Error = ReferenceError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        PaymentReference::parse(&s)
    }
}

impl From<PaymentReference> for String {
    fn from(r: PaymentReference) -> String {
        r.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data() -> impl Strategy<Value = [u8; REFERENCE_DATA_LEN]> {
        proptest::array::uniform11(0u8..31)
    }

    #[test]
    fn formats_in_groups_and_parses_loosely() {
        let r = PaymentReference::from_values([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        let shown = r.to_string();
        assert_eq!(shown.len(), 14);
        assert_eq!(shown.matches('-').count(), 2);
        assert_eq!(
            PaymentReference::parse(&shown.to_lowercase()),
            Ok(r.clone())
        );
        assert_eq!(PaymentReference::parse(&shown.replace('-', " ")), Ok(r));
        assert_eq!(PaymentReference::parse(""), Err(ReferenceError::Empty));
        assert_eq!(PaymentReference::parse("ABC"), Err(ReferenceError::Length));
        assert_eq!(
            PaymentReference::parse("0000-0000-0000"),
            Err(ReferenceError::InvalidCharacter)
        );
    }

    proptest! {
        #[test]
        fn reference_round_trips(values in data()) {
            let r = PaymentReference::from_values(values);
            prop_assert_eq!(PaymentReference::parse(&r.to_string()), Ok(r));
        }

        #[test]
        fn reference_detects_any_single_character_change(values in data(), pos in 0usize..TOTAL_LEN, replacement in 0usize..31) {
            let r = PaymentReference::from_values(values);
            let mut symbols = r.0;
            prop_assume!(symbols[pos] != REFERENCE_ALPHABET[replacement]);
            symbols[pos] = REFERENCE_ALPHABET[replacement];
            let typo = String::from_utf8(symbols.to_vec()).unwrap();
            prop_assert_eq!(PaymentReference::parse(&typo), Err(ReferenceError::CheckFailed));
        }

        #[test]
        fn reference_detects_any_adjacent_swap(values in data(), pos in 0usize..TOTAL_LEN - 1) {
            let r = PaymentReference::from_values(values);
            let mut symbols = r.0;
            prop_assume!(symbols[pos] != symbols[pos + 1]);
            symbols.swap(pos, pos + 1);
            let typo = String::from_utf8(symbols.to_vec()).unwrap();
            prop_assert_eq!(PaymentReference::parse(&typo), Err(ReferenceError::CheckFailed));
        }

        #[test]
        fn reference_parse_never_panics(s in "\\PC{0,30}") {
            let _ = PaymentReference::parse(&s);
        }
    }

    #[test]
    fn every_single_change_and_swap_is_detected_exhaustively_for_one_reference() {
        let r = PaymentReference::from_values([30, 0, 15, 7, 22, 3, 11, 29, 1, 8, 19]);
        for pos in 0..TOTAL_LEN {
            for sym in REFERENCE_ALPHABET {
                let mut s = r.0;
                if s[pos] == *sym {
                    continue;
                }
                s[pos] = *sym;
                assert!(PaymentReference::parse(std::str::from_utf8(&s).unwrap()).is_err());
            }
        }
    }
}
