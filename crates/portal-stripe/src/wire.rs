//! Pure translation between the core's terms and the Stripe wire format: form bodies, cents,
//! PaymentIntent and PaymentMethod objects, error objects, decline codes. No I/O here.

use chrono::{DateTime, Days, NaiveDate, Utc};
use portal_core::instrument::{BankAccountType, CardBrand, CardExpiry, MethodDetails, MethodKind};
use portal_core::money::Money;
use portal_core::payment::DeclineReason;
use portal_core::ports::{ChargeOutcome, ChargeRequest, ChargeStatus, GatewayError, RefundRequest};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Stripe's error object.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    /// `card_error`, `invalid_request_error`, `api_error`, `idempotency_error`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Machine code.
    pub code: Option<String>,
    /// For card errors, the issuer's reason.
    pub decline_code: Option<String>,
    /// Human message.
    pub message: Option<String>,
    /// The PaymentIntent a card error belongs to.
    pub payment_intent: Option<Box<PaymentIntent>>,
}

#[derive(Debug, Deserialize)]
struct ErrorEnvelope {
    error: ApiError,
}

/// The fields of a PaymentIntent the portal reads.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct PaymentIntent {
    /// `pi_...`
    pub id: String,
    /// Cents.
    pub amount: i64,
    /// `succeeded`, `processing`, `requires_payment_method`, ...
    pub status: String,
    /// Unix seconds.
    pub created: i64,
    /// Why the last attempt failed.
    pub last_payment_error: Option<ApiError>,
    /// Our metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// The fields of a Charge the portal reads (refund and return events).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Charge {
    /// `ch_...`
    pub id: String,
    /// The PaymentIntent.
    pub payment_intent: Option<String>,
    /// Cents refunded in total.
    #[serde(default)]
    pub amount_refunded: i64,
    /// `succeeded`, `failed`, `pending`.
    pub status: String,
    /// ACH failure code for a return.
    pub failure_code: Option<String>,
    /// Our metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct WireCard {
    brand: String,
    last4: String,
    exp_month: u32,
    exp_year: i32,
}

#[derive(Debug, Deserialize)]
struct WireBank {
    bank_name: Option<String>,
    last4: String,
    account_type: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireMethod {
    #[serde(rename = "type")]
    kind: String,
    card: Option<WireCard>,
    us_bank_account: Option<WireBank>,
}

#[derive(Debug, Deserialize)]
struct SearchResult {
    data: Vec<PaymentIntent>,
}

/// Money to the wire's integer cents, refusing what is not a positive amount.
pub fn to_cents(m: Money) -> Result<i64, GatewayError> {
    if !m.is_positive() {
        return Err(GatewayError::Rejected(
            "amounts sent to the gateway must be positive".into(),
        ));
    }
    Ok(m.cents())
}

/// The form body of a confirmed PaymentIntent for a charge request.
pub fn charge_form(r: &ChargeRequest) -> Result<Vec<(&'static str, String)>, GatewayError> {
    let method_type = match r.kind {
        MethodKind::Card => "card",
        MethodKind::BankAccount => "us_bank_account",
    };
    Ok(vec![
        ("amount", to_cents(r.amount)?.to_string()),
        ("currency", "usd".into()),
        ("payment_method", r.token.as_ref().to_owned()),
        ("payment_method_types[]", method_type.into()),
        ("confirm", "true".into()),
        (
            "description",
            format!("Health Connector premium payment {}", r.reference),
        ),
        ("metadata[payment_id]", r.payment_id.to_string()),
        ("metadata[reference]", r.reference.to_string()),
        ("metadata[idempotency_key]", r.idempotency_key.clone()),
    ])
}

/// The form body of a refund.
pub fn refund_form(r: &RefundRequest) -> Result<Vec<(&'static str, String)>, GatewayError> {
    Ok(vec![
        ("payment_intent", r.gateway_id.clone()),
        ("amount", to_cents(r.amount)?.to_string()),
    ])
}

/// The search query that finds a PaymentIntent by the idempotency key it was created with.
pub fn lookup_query(idempotency_key: &str) -> String {
    let escaped = idempotency_key.replace('\\', "\\\\").replace('\'', "\\'");
    format!("metadata['idempotency_key']:'{escaped}'")
}

/// The plain-language reason for a Stripe decline (decline code first, then error code).
pub fn decline_reason(code: Option<&str>, decline_code: Option<&str>) -> DeclineReason {
    let pick = |c: &str| match c {
        "insufficient_funds" => Some(DeclineReason::InsufficientFunds),
        "expired_card" => Some(DeclineReason::ExpiredCard),
        "incorrect_cvc"
        | "invalid_cvc"
        | "incorrect_number"
        | "invalid_number"
        | "incorrect_zip"
        | "invalid_expiry_month"
        | "invalid_expiry_year"
        | "account_closed"
        | "no_account"
        | "invalid_account_number"
        | "routing_number_invalid"
        | "account_number_invalid" => Some(DeclineReason::IncorrectDetails),
        "processing_error" | "try_again_later" | "issuer_not_available" | "reenter_transaction" => {
            Some(DeclineReason::ProcessingError)
        }
        "card_declined"
        | "generic_decline"
        | "do_not_honor"
        | "lost_card"
        | "stolen_card"
        | "fraudulent"
        | "pickup_card"
        | "restricted_card"
        | "transaction_not_allowed" => Some(DeclineReason::CardDeclined),
        _ => None,
    };
    decline_code
        .and_then(pick)
        .or_else(|| code.and_then(pick))
        .unwrap_or(DeclineReason::CardDeclined)
}

/// The NACHA return code for Stripe's ACH failure code.
pub fn return_code(failure_code: &str) -> &'static str {
    match failure_code {
        "insufficient_funds" => "R01",
        "account_closed" => "R02",
        "no_account" | "invalid_account_number" => "R03",
        "debit_not_authorized" => "R10",
        "R01" => "R01",
        "R02" => "R02",
        "R03" => "R03",
        "R10" => "R10",
        _ => "R16",
    }
}

/// When a bank transfer created at `created` should settle.
pub fn expected_settlement(created: i64, settlement_days: u64) -> NaiveDate {
    let day = DateTime::<Utc>::from_timestamp(created, 0)
        .unwrap_or_default()
        .date_naive();
    day.checked_add_days(Days::new(settlement_days))
        .unwrap_or(day)
}

/// What a PaymentIntent says about the charge.
pub fn outcome(pi: &PaymentIntent, settlement_days: u64) -> Result<ChargeOutcome, GatewayError> {
    let status = match pi.status.as_str() {
        "succeeded" => ChargeStatus::Succeeded,
        "processing" => ChargeStatus::Processing {
            expected_settlement: expected_settlement(pi.created, settlement_days),
        },
        "requires_payment_method" | "canceled" => {
            let e = pi.last_payment_error.as_ref();
            ChargeStatus::Declined {
                reason: decline_reason(
                    e.and_then(|e| e.code.as_deref()),
                    e.and_then(|e| e.decline_code.as_deref()),
                ),
            }
        }
        // Needs a customer action (3-D Secure) this server-side flow cannot take.
        "requires_action" => ChargeStatus::Declined {
            reason: DeclineReason::CardDeclined,
        },
        other => {
            return Err(GatewayError::Protocol(format!(
                "unexpected PaymentIntent status {other}"
            )));
        }
    };
    Ok(ChargeOutcome {
        gateway_id: pi.id.clone(),
        status,
    })
}

/// Reads a PaymentIntent body.
pub fn parse_intent(body: &str) -> Result<PaymentIntent, GatewayError> {
    serde_json::from_str(body).map_err(|e| GatewayError::Protocol(format!("PaymentIntent: {e}")))
}

/// Reads a search result and returns its first PaymentIntent.
pub fn parse_search(body: &str) -> Result<Option<PaymentIntent>, GatewayError> {
    let r: SearchResult = serde_json::from_str(body)
        .map_err(|e| GatewayError::Protocol(format!("search result: {e}")))?;
    Ok(r.data.into_iter().next())
}

/// Reads an error envelope.
pub fn parse_error(body: &str) -> Option<ApiError> {
    serde_json::from_str::<ErrorEnvelope>(body)
        .ok()
        .map(|e| e.error)
}

/// Reads a PaymentMethod into display details.
pub fn parse_method(body: &str) -> Result<MethodDetails, GatewayError> {
    let m: WireMethod = serde_json::from_str(body)
        .map_err(|e| GatewayError::Protocol(format!("PaymentMethod: {e}")))?;
    match (m.kind.as_str(), m.card, m.us_bank_account) {
        ("card", Some(c), _) => Ok(MethodDetails::Card {
            brand: match c.brand.as_str() {
                "visa" => CardBrand::Visa,
                "mastercard" => CardBrand::Mastercard,
                "amex" => CardBrand::Amex,
                "discover" => CardBrand::Discover,
                _ => CardBrand::Unknown,
            },
            last4: last4(&c.last4)?,
            expiry: CardExpiry {
                month: c.exp_month,
                year: c.exp_year,
            },
        }),
        ("us_bank_account", _, Some(b)) => Ok(MethodDetails::BankAccount {
            bank_name: b
                .bank_name
                .unwrap_or_else(|| "Bank".into())
                .chars()
                .take(80)
                .collect(),
            last4: last4(&b.last4)?,
            account_type: match b.account_type.as_deref() {
                Some("savings") => BankAccountType::Savings,
                _ => BankAccountType::Checking,
            },
        }),
        (other, _, _) => Err(GatewayError::Protocol(format!(
            "unsupported payment method type {other}"
        ))),
    }
}

fn last4(s: &str) -> Result<String, GatewayError> {
    if s.len() == 4 && s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(s.to_owned())
    } else {
        Err(GatewayError::Protocol("last4 is not four digits".into()))
    }
}

/// Encodes a form body (`application/x-www-form-urlencoded`).
pub fn encode_form(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".into(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decline_codes_map_to_plain_reasons() {
        let r = |c: Option<&str>, d: Option<&str>| decline_reason(c, d);
        assert_eq!(
            r(Some("card_declined"), Some("insufficient_funds")),
            DeclineReason::InsufficientFunds
        );
        assert_eq!(
            r(Some("card_declined"), Some("generic_decline")),
            DeclineReason::CardDeclined
        );
        assert_eq!(r(Some("expired_card"), None), DeclineReason::ExpiredCard);
        assert_eq!(
            r(Some("incorrect_cvc"), None),
            DeclineReason::IncorrectDetails
        );
        assert_eq!(
            r(Some("processing_error"), None),
            DeclineReason::ProcessingError
        );
        assert_eq!(r(None, None), DeclineReason::CardDeclined);
        assert_eq!(
            r(Some("something_new"), Some("also_new")),
            DeclineReason::CardDeclined
        );
    }

    #[test]
    fn intents_become_outcomes() {
        let pi = |status: &str, err: Option<ApiError>| PaymentIntent {
            id: "pi_1".into(),
            amount: 100,
            status: status.into(),
            created: 1_800_000_000,
            last_payment_error: err,
            metadata: BTreeMap::new(),
        };
        assert_eq!(
            outcome(&pi("succeeded", None), 4).unwrap().status,
            ChargeStatus::Succeeded
        );
        assert!(matches!(
            outcome(&pi("processing", None), 4).unwrap().status,
            ChargeStatus::Processing { .. }
        ));
        let err = ApiError {
            kind: "card_error".into(),
            code: Some("card_declined".into()),
            decline_code: Some("insufficient_funds".into()),
            message: None,
            payment_intent: None,
        };
        assert_eq!(
            outcome(&pi("requires_payment_method", Some(err)), 4)
                .unwrap()
                .status,
            ChargeStatus::Declined {
                reason: DeclineReason::InsufficientFunds
            }
        );
        assert!(matches!(
            outcome(&pi("weird", None), 4),
            Err(GatewayError::Protocol(_))
        ));
    }

    #[test]
    fn malformed_bodies_are_typed_errors() {
        for body in [
            "",
            "{",
            "null",
            "[]",
            "{\"id\":1}",
            "{\"id\":\"pi\",\"amount\":\"x\"}",
        ] {
            assert!(
                matches!(parse_intent(body), Err(GatewayError::Protocol(_))),
                "{body}"
            );
        }
        assert!(parse_error("{}").is_none());
        assert!(matches!(
            parse_method("{\"type\":\"card\"}"),
            Err(GatewayError::Protocol(_))
        ));
        assert!(matches!(
            parse_method(
                "{\"type\":\"card\",\"card\":{\"brand\":\"visa\",\"last4\":\"42\",\"exp_month\":1,\"exp_year\":2030}}"
            ),
            Err(GatewayError::Protocol(_))
        ));
        assert!(matches!(
            parse_method("{\"type\":\"sepa_debit\"}"),
            Err(GatewayError::Protocol(_))
        ));
    }

    #[test]
    fn forms_encode_and_cents_are_exact() {
        assert_eq!(
            encode_form(&[("metadata[reference]", "7KQM-2XTH 9RB4".into())]),
            "metadata%5Breference%5D=7KQM-2XTH+9RB4"
        );
        assert_eq!(to_cents(Money::parse("123.45").unwrap()), Ok(12345));
        assert!(to_cents(Money::ZERO).is_err());
        assert_eq!(lookup_query("a'b"), "metadata['idempotency_key']:'a\\'b'");
        assert_eq!(return_code("debit_not_authorized"), "R10");
    }
}
