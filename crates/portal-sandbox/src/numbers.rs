//! The documented test numbers and what they do (Stripe's published numbers where they exist).

use portal_core::instrument::CardBrand;

/// What a test card does when charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardBehaviour {
    /// Succeeds.
    Succeed,
    /// Declined with this code, decline code and message.
    Decline(&'static str, Option<&'static str>, &'static str),
}

impl CardBehaviour {
    pub(crate) fn decline(self) -> Option<(&'static str, Option<&'static str>, &'static str)> {
        match self {
            CardBehaviour::Succeed => None,
            CardBehaviour::Decline(c, d, m) => Some((c, d, m)),
        }
    }
}

/// What a test bank account does when debited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BankBehaviour {
    /// Processing, then settles.
    Settle,
    /// Processing, then fails before settling (Stripe failure code).
    FailBeforeSettling(&'static str),
    /// Settles, then is returned with this NACHA code.
    ReturnAfterSettling(&'static str),
}

/// Test cards: number, what happens.
pub const TEST_CARDS: &[(&str, &str)] = &[
    ("4242424242424242", "succeeds (Visa)"),
    ("5555555555554444", "succeeds (Mastercard)"),
    ("378282246310005", "succeeds (American Express)"),
    ("6011111111111117", "succeeds (Discover)"),
    (
        "4000000000000002",
        "declined: card_declined / generic_decline",
    ),
    (
        "4000000000009995",
        "declined: card_declined / insufficient_funds",
    ),
    ("4000000000000069", "declined: expired_card"),
    ("4000000000000127", "declined: incorrect_cvc"),
    ("4000000000000119", "declined: processing_error"),
];

/// The routing number of the test bank (valid ABA checksum).
pub const TEST_ROUTING_NUMBER: &str = "110000000";

/// Test bank accounts (with routing number 110000000): account number, what happens.
pub const TEST_BANK_ACCOUNTS: &[(&str, &str)] = &[
    (
        "000123456789",
        "processing, then settles after the settlement delay",
    ),
    (
        "000222222227",
        "processing, then fails before settling: insufficient_funds",
    ),
    (
        "000111111113",
        "processing, then fails before settling: account_closed",
    ),
    (
        "000000000001",
        "settles, then is returned R01 (insufficient funds)",
    ),
    (
        "000000000002",
        "settles, then is returned R02 (account closed)",
    ),
    (
        "000000000003",
        "settles, then is returned R03 (no account / unable to locate)",
    ),
    (
        "000000000010",
        "settles, then is returned R10 (customer advises not authorized)",
    ),
];

pub(crate) fn card_behaviour(number: &str) -> CardBehaviour {
    match number {
        "4000000000000002" => CardBehaviour::Decline(
            "card_declined",
            Some("generic_decline"),
            "Your card was declined.",
        ),
        "4000000000009995" => CardBehaviour::Decline(
            "card_declined",
            Some("insufficient_funds"),
            "Your card has insufficient funds.",
        ),
        "4000000000000069" => CardBehaviour::Decline(
            "expired_card",
            Some("expired_card"),
            "Your card has expired.",
        ),
        "4000000000000127" => CardBehaviour::Decline(
            "incorrect_cvc",
            Some("incorrect_cvc"),
            "Your card's security code is incorrect.",
        ),
        "4000000000000119" => CardBehaviour::Decline(
            "processing_error",
            Some("processing_error"),
            "An error occurred while processing your card. Try again in a little bit.",
        ),
        _ => CardBehaviour::Succeed,
    }
}

pub(crate) fn bank_behaviour(account: &str) -> BankBehaviour {
    match account {
        "000222222227" => BankBehaviour::FailBeforeSettling("insufficient_funds"),
        "000111111113" => BankBehaviour::FailBeforeSettling("account_closed"),
        "000000000001" => BankBehaviour::ReturnAfterSettling("R01"),
        "000000000002" => BankBehaviour::ReturnAfterSettling("R02"),
        "000000000003" => BankBehaviour::ReturnAfterSettling("R03"),
        "000000000010" => BankBehaviour::ReturnAfterSettling("R10"),
        _ => BankBehaviour::Settle,
    }
}

pub(crate) fn bank_message(code: &str) -> &'static str {
    match code {
        "insufficient_funds" => {
            "The customer's account has insufficient funds to cover this payment."
        }
        "account_closed" => "The customer's bank account has been closed.",
        _ => "The payment failed.",
    }
}

/// Stripe's ACH failure code for a NACHA return code.
pub(crate) fn return_failure_code(code: &str) -> &'static str {
    match code {
        "R01" => "insufficient_funds",
        "R02" => "account_closed",
        "R03" => "no_account",
        "R10" => "debit_not_authorized",
        _ => "bank_account_restricted",
    }
}

pub(crate) fn return_message(code: &str) -> &'static str {
    match code {
        "R01" => "R01: Insufficient funds.",
        "R02" => "R02: Account closed.",
        "R03" => "R03: No account / unable to locate account.",
        "R10" => "R10: Customer advises not authorized.",
        _ => "Returned.",
    }
}

pub(crate) fn brand(b: &CardBrand) -> &'static str {
    match b {
        CardBrand::Visa => "visa",
        CardBrand::Mastercard => "mastercard",
        CardBrand::Amex => "amex",
        CardBrand::Discover => "discover",
        CardBrand::Unknown => "unknown",
    }
}
