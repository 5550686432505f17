//! Payment methods as the portal keeps them (a gateway token plus display details), and the
//! checks front ends run on card and bank numbers before they tokenize them with the gateway.
//! The core never holds a full card or account number.

use crate::identity::input_error;
use crate::ids::{AccountId, MethodId};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

input_error!(CardNumberError, "card_number", {
    Empty => ("required", "enter the card number"),
    NotDigits => ("format", "a card number has digits only"),
    Length => ("length", "a card number has 12 to 19 digits"),
    Checksum => ("checksum", "this card number is not valid; check for a typo"),
});

input_error!(RoutingNumberError, "routing_number", {
    Empty => ("required", "enter the routing number"),
    Format => ("format", "a routing number has exactly 9 digits"),
    Checksum => ("checksum", "this routing number is not valid; check for a typo"),
});

input_error!(BankAccountNumberError, "account_number", {
    Empty => ("required", "enter the bank account number"),
    Format => ("format", "a bank account number has 4 to 17 digits"),
});

input_error!(ExpiryError, "expiry", {
    Format => ("format", "enter the expiry month (1-12) and a four-digit year"),
    Expired => ("expired", "this card has expired"),
});

/// Card networks, as far as the number's prefix tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CardBrand {
    /// Visa.
    Visa,
    /// Mastercard.
    Mastercard,
    /// American Express.
    Amex,
    /// Discover.
    Discover,
    /// Any other network.
    Unknown,
}

impl fmt::Display for CardBrand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CardBrand::Visa => "Visa",
            CardBrand::Mastercard => "Mastercard",
            CardBrand::Amex => "American Express",
            CardBrand::Discover => "Discover",
            CardBrand::Unknown => "Card",
        })
    }
}

/// What a valid card number tells: brand and last four; the number itself is not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardCheck {
    /// The network.
    pub brand: CardBrand,
    /// The last four digits.
    pub last4: String,
}

fn digits_of(input: &str) -> Vec<u8> {
    input
        .bytes()
        .filter(|b| !matches!(b, b' ' | b'-'))
        .collect()
}

/// Luhn (mod 10) check of a digit string.
pub fn luhn_valid(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let v = u32::from(d - b'0');
            if i % 2 == 1 {
                let dbl = v * 2;
                if dbl > 9 { dbl - 9 } else { dbl }
            } else {
                v
            }
        })
        .sum();
    sum % 10 == 0
}

/// Checks a card number (spaces and hyphens allowed) with the Luhn algorithm.
pub fn check_card_number(input: &str) -> Result<CardCheck, CardNumberError> {
    let d = digits_of(input);
    if d.is_empty() {
        return Err(CardNumberError::Empty);
    }
    if !d.iter().all(u8::is_ascii_digit) {
        return Err(CardNumberError::NotDigits);
    }
    if !(12..=19).contains(&d.len()) {
        return Err(CardNumberError::Length);
    }
    if !luhn_valid(&d) {
        return Err(CardNumberError::Checksum);
    }
    let prefix = |n: usize| -> u32 {
        d.iter()
            .take(n)
            .fold(0u32, |a, b| a * 10 + u32::from(b - b'0'))
    };
    let brand = if d.first() == Some(&b'4') {
        CardBrand::Visa
    } else if (51..=55).contains(&prefix(2)) || (2221..=2720).contains(&prefix(4)) {
        CardBrand::Mastercard
    } else if matches!(prefix(2), 34 | 37) {
        CardBrand::Amex
    } else if prefix(4) == 6011 || prefix(2) == 65 || (644..=649).contains(&prefix(3)) {
        CardBrand::Discover
    } else {
        CardBrand::Unknown
    };
    let last4 = String::from_utf8_lossy(d.get(d.len() - 4..).unwrap_or_default()).into_owned();
    Ok(CardCheck { brand, last4 })
}

/// Checks an ABA routing number: nine digits whose weighted sum (3, 7, 1, ...) is divisible by 10.
pub fn check_routing_number(input: &str) -> Result<(), RoutingNumberError> {
    let d = digits_of(input);
    if d.is_empty() {
        return Err(RoutingNumberError::Empty);
    }
    if d.len() != 9 || !d.iter().all(u8::is_ascii_digit) {
        return Err(RoutingNumberError::Format);
    }
    let sum: u32 = d
        .iter()
        .zip([3u32, 7, 1].iter().cycle())
        .map(|(digit, w)| u32::from(digit - b'0') * w)
        .sum();
    if sum % 10 != 0 {
        return Err(RoutingNumberError::Checksum);
    }
    Ok(())
}

/// Checks a bank account number's shape (4-17 digits) and returns its last four.
pub fn check_bank_account_number(input: &str) -> Result<String, BankAccountNumberError> {
    let d = digits_of(input);
    if d.is_empty() {
        return Err(BankAccountNumberError::Empty);
    }
    if !(4..=17).contains(&d.len()) || !d.iter().all(u8::is_ascii_digit) {
        return Err(BankAccountNumberError::Format);
    }
    Ok(String::from_utf8_lossy(d.get(d.len() - 4..).unwrap_or_default()).into_owned())
}

/// A card expiry month; valid through the last day of that month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardExpiry {
    /// 1-12.
    pub month: u32,
    /// Four-digit year.
    pub year: i32,
}

impl CardExpiry {
    /// Checks month and year and that the card has not expired on `today`.
    pub fn new(month: u32, year: i32, today: NaiveDate) -> Result<CardExpiry, ExpiryError> {
        if !(1..=12).contains(&month) || !(2000..=2100).contains(&year) {
            return Err(ExpiryError::Format);
        }
        let e = CardExpiry { month, year };
        if e.is_expired(today) {
            return Err(ExpiryError::Expired);
        }
        Ok(e)
    }

    /// Whether the card is past its expiry month on `today`.
    pub fn is_expired(&self, today: NaiveDate) -> bool {
        (today.year(), today.month()) > (self.year, self.month)
    }
}

/// The kind of a payment method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodKind {
    /// Credit or debit card: settles at once.
    Card,
    /// US bank account (ACH debit): processing for a few business days, may be returned.
    BankAccount,
}

/// Checking or savings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BankAccountType {
    /// Checking account.
    Checking,
    /// Savings account.
    Savings,
}

/// What may be shown of a method, as reported by the gateway for a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MethodDetails {
    /// A card.
    Card {
        /// Network.
        brand: CardBrand,
        /// Last four digits.
        last4: String,
        /// Expiry.
        expiry: CardExpiry,
    },
    /// A bank account.
    BankAccount {
        /// The bank's name.
        bank_name: String,
        /// Last four digits of the account number.
        last4: String,
        /// Checking or savings.
        account_type: BankAccountType,
    },
}

impl MethodDetails {
    /// Card or bank account.
    pub fn kind(&self) -> MethodKind {
        match self {
            MethodDetails::Card { .. } => MethodKind::Card,
            MethodDetails::BankAccount { .. } => MethodKind::BankAccount,
        }
    }

    /// The masked label shown to members and in notices, the same in every language:
    /// "Visa •••• 4242", "Test Bank •••• 6789".
    pub fn masked(&self) -> String {
        match self {
            MethodDetails::Card { brand, last4, .. } => format!("{brand} •••• {last4}"),
            MethodDetails::BankAccount {
                bank_name, last4, ..
            } => format!("{bank_name} •••• {last4}"),
        }
    }
}

/// An opaque gateway token for a payment method (`pm_...`); not a secret, never a number.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GatewayToken(String);

input_error!(TokenError, "payment_method_token", {
    Empty => ("required", "a payment method token is required"),
    Format => ("format", "a payment method token has 3 to 255 letters, digits and underscores"),
    LooksLikeCardNumber => ("card_number_not_allowed", "send a gateway token, never a card or account number"),
});

impl GatewayToken {
    /// Checks that a token is a plausible opaque id and not a raw card or account number.
    pub fn parse(input: &str) -> Result<GatewayToken, TokenError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(TokenError::Empty);
        }
        if !(3..=255).contains(&s.len())
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(TokenError::Format);
        }
        let digits = s.chars().filter(char::is_ascii_digit).count();
        if digits >= 9 && s.chars().all(|c| c.is_ascii_digit() || c == '-') {
            return Err(TokenError::LooksLikeCardNumber);
        }
        Ok(GatewayToken(s.to_owned()))
    }
}

impl AsRef<str> for GatewayToken {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
impl fmt::Debug for GatewayToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GatewayToken({})", self.0)
    }
}
impl TryFrom<String> for GatewayToken {
    type Error = TokenError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        GatewayToken::parse(&s)
    }
}
impl From<GatewayToken> for String {
    fn from(t: GatewayToken) -> String {
        t.0
    }
}

/// A saved payment method of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentMethod {
    /// Id.
    pub id: MethodId,
    /// Owner.
    pub account_id: AccountId,
    /// The gateway's reusable token.
    pub token: GatewayToken,
    /// What may be shown.
    pub details: MethodDetails,
    /// When it was added.
    pub added_at: DateTime<Utc>,
    /// When the member removed it; removed methods are kept for history but cannot be used.
    pub removed_at: Option<DateTime<Utc>>,
}

impl PaymentMethod {
    /// Whether the method can be charged on `today`.
    pub fn usable(&self, today: NaiveDate) -> bool {
        self.removed_at.is_none()
            && match &self.details {
                MethodDetails::Card { expiry, .. } => !expiry.is_expired(today),
                MethodDetails::BankAccount { .. } => true,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers() {
        let ok = check_card_number("4242 4242 4242 4242").unwrap();
        assert_eq!((ok.brand, ok.last4.as_str()), (CardBrand::Visa, "4242"));
        assert_eq!(
            check_card_number("5555555555554444").unwrap().brand,
            CardBrand::Mastercard
        );
        assert_eq!(
            check_card_number("378282246310005").unwrap().brand,
            CardBrand::Amex
        );
        assert_eq!(
            check_card_number("6011111111111117").unwrap().brand,
            CardBrand::Discover
        );
        assert_eq!(check_card_number(""), Err(CardNumberError::Empty));
        assert_eq!(check_card_number("4242x"), Err(CardNumberError::NotDigits));
        assert_eq!(check_card_number("4242"), Err(CardNumberError::Length));
        assert_eq!(
            check_card_number("4242424242424241"),
            Err(CardNumberError::Checksum)
        );
    }

    #[test]
    fn routing_numbers() {
        assert_eq!(check_routing_number("110000000"), Ok(()));
        assert_eq!(check_routing_number("011000015"), Ok(()));
        assert_eq!(
            check_routing_number("011000016"),
            Err(RoutingNumberError::Checksum)
        );
        assert_eq!(
            check_routing_number("11000000"),
            Err(RoutingNumberError::Format)
        );
        assert_eq!(check_routing_number(""), Err(RoutingNumberError::Empty));
        assert_eq!(
            check_bank_account_number("000123456789"),
            Ok("6789".to_owned())
        );
        assert_eq!(
            check_bank_account_number("12"),
            Err(BankAccountNumberError::Format)
        );
    }

    #[test]
    fn tokens_refuse_raw_numbers() {
        assert!(GatewayToken::parse("pm_1Nxyz").is_ok());
        assert_eq!(
            GatewayToken::parse("4242424242424242"),
            Err(TokenError::LooksLikeCardNumber)
        );
        assert_eq!(GatewayToken::parse("pm 1"), Err(TokenError::Format));
    }

    #[test]
    fn expiry() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
        assert!(CardExpiry::new(11, 2026, today).is_ok());
        assert_eq!(CardExpiry::new(10, 2026, today), Err(ExpiryError::Expired));
        assert_eq!(CardExpiry::new(13, 2026, today), Err(ExpiryError::Format));
    }
}
