//! Webhook verification and parsing: `Stripe-Signature` (HMAC-SHA256 over `timestamp.payload`,
//! constant-time comparison, a tolerance window, any of several `v1` signatures), then the events
//! the portal acts on. Anything unsigned, stale, malformed or unknown is refused.

use crate::wire::{self, Charge, PaymentIntent};
use hmac::{Hmac, Mac};
use portal_core::ids::PaymentId;
use portal_core::money::Money;
use portal_core::payment::{PaymentEvent, ReturnCode};
use portal_core::ports::GatewayEvent;
use serde::Deserialize;
use sha2::Sha256;

/// Why a webhook was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// No `Stripe-Signature` header.
    #[error("the Stripe-Signature header is missing")]
    MissingSignature,
    /// The header could not be read.
    #[error("the Stripe-Signature header is malformed")]
    MalformedSignature,
    /// The timestamp is outside the tolerance window.
    #[error("the webhook timestamp is outside the {0}-second tolerance")]
    Stale(i64),
    /// No signature matches.
    #[error("no webhook signature matches")]
    BadSignature,
    /// The body is not a well-formed event.
    #[error("the webhook body is not a valid event: {0}")]
    Malformed(String),
    /// An event type the portal does not handle.
    #[error("unhandled event type {0}")]
    UnknownEvent(String),
}

/// Checks the `Stripe-Signature` header of `payload` at unix time `now`.
pub fn verify(
    header: Option<&str>,
    payload: &[u8],
    secret: &str,
    now: i64,
    tolerance_secs: i64,
) -> Result<(), WebhookError> {
    let header = header.ok_or(WebhookError::MissingSignature)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or(WebhookError::MalformedSignature)?;
        match k {
            "t" => {
                timestamp = Some(
                    v.parse::<i64>()
                        .map_err(|_| WebhookError::MalformedSignature)?,
                )
            }
            "v1" => signatures.push(decode_hex(v).ok_or(WebhookError::MalformedSignature)?),
            _ => {}
        }
    }
    let t = timestamp.ok_or(WebhookError::MalformedSignature)?;
    if signatures.is_empty() {
        return Err(WebhookError::MalformedSignature);
    }
    if (now - t).abs() > tolerance_secs {
        return Err(WebhookError::Stale(tolerance_secs));
    }
    for sig in signatures {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
            .map_err(|_| WebhookError::BadSignature)?;
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(payload);
        // verify_slice compares in constant time.
        if mac.verify_slice(&sig).is_ok() {
            return Ok(());
        }
    }
    Err(WebhookError::BadSignature)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

#[derive(Deserialize)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: EventData,
}

#[derive(Deserialize)]
struct EventData {
    object: serde_json::Value,
}

fn payment_id(meta: &std::collections::BTreeMap<String, String>) -> Option<PaymentId> {
    meta.get("payment_id")
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
        .map(PaymentId)
}

/// Parses a verified payload into the event the core applies. For refunds the amount is the
/// total refunded so far, as the gateway reports it.
pub fn parse(payload: &[u8], settlement_days: u64) -> Result<GatewayEvent, WebhookError> {
    let e: Event =
        serde_json::from_slice(payload).map_err(|err| WebhookError::Malformed(err.to_string()))?;
    let malformed = |err: serde_json::Error| WebhookError::Malformed(err.to_string());
    let intent =
        |v: serde_json::Value| serde_json::from_value::<PaymentIntent>(v).map_err(malformed);
    let charge = |v: serde_json::Value| serde_json::from_value::<Charge>(v).map_err(malformed);
    let (gateway_id, pid, event) =
        match e.kind.as_str() {
            "payment_intent.succeeded" => {
                let pi = intent(e.data.object)?;
                (
                    pi.id.clone(),
                    payment_id(&pi.metadata),
                    PaymentEvent::Settled,
                )
            }
            "payment_intent.processing" => {
                let pi = intent(e.data.object)?;
                let expected_settlement = wire::expected_settlement(pi.created, settlement_days);
                (
                    pi.id.clone(),
                    payment_id(&pi.metadata),
                    PaymentEvent::Processing {
                        expected_settlement,
                    },
                )
            }
            "payment_intent.payment_failed" => {
                let pi = intent(e.data.object)?;
                let err = pi.last_payment_error.as_ref();
                let reason = wire::decline_reason(
                    err.and_then(|x| x.code.as_deref()),
                    err.and_then(|x| x.decline_code.as_deref()),
                );
                (
                    pi.id.clone(),
                    payment_id(&pi.metadata),
                    PaymentEvent::Declined { reason },
                )
            }
            "charge.refunded" => {
                let ch = charge(e.data.object)?;
                let pi = ch.payment_intent.clone().ok_or_else(|| {
                    WebhookError::Malformed("charge without payment_intent".into())
                })?;
                if ch.amount_refunded <= 0 {
                    return Err(WebhookError::Malformed("refund without an amount".into()));
                }
                (
                    pi,
                    payment_id(&ch.metadata),
                    PaymentEvent::Refunded {
                        amount: Money::from_cents(ch.amount_refunded),
                    },
                )
            }
            // A bank transfer reversed after it settled.
            "charge.failed" => {
                let ch = charge(e.data.object)?;
                let pi = ch.payment_intent.clone().ok_or_else(|| {
                    WebhookError::Malformed("charge without payment_intent".into())
                })?;
                let failure = ch.failure_code.as_deref().ok_or_else(|| {
                    WebhookError::Malformed("failed charge without failure_code".into())
                })?;
                let code = ReturnCode::parse(wire::return_code(failure))
                    .map_err(|x| WebhookError::Malformed(x.to_string()))?;
                (
                    pi,
                    payment_id(&ch.metadata),
                    PaymentEvent::Returned { code },
                )
            }
            other => return Err(WebhookError::UnknownEvent(other.chars().take(80).collect())),
        };
    if gateway_id.is_empty() || gateway_id.len() > 255 {
        return Err(WebhookError::Malformed("bad object id".into()));
    }
    Ok(GatewayEvent {
        event_id: e.id,
        gateway_id,
        payment_id: pid,
        event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(secret: &str, t: i64, payload: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(payload);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("t={t},v1={hex}")
    }

    #[test]
    fn signatures() {
        let body = br#"{"id":"evt_1"}"#;
        let now = 1_800_000_000;
        let good = signed("whsec_a", now, body);
        assert_eq!(verify(Some(&good), body, "whsec_a", now + 10, 300), Ok(()));
        assert_eq!(
            verify(None, body, "whsec_a", now, 300),
            Err(WebhookError::MissingSignature)
        );
        assert_eq!(
            verify(Some(&good), body, "whsec_b", now, 300),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify(Some(&good), b"{\"id\":\"evt_2\"}", "whsec_a", now, 300),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify(Some(&good), body, "whsec_a", now + 301, 300),
            Err(WebhookError::Stale(300))
        );
        let two = format!(
            "{},v1={}",
            signed("whsec_old", now, body),
            good.split("v1=").nth(1).unwrap()
        );
        assert_eq!(
            verify(Some(&two), body, "whsec_a", now, 300),
            Ok(()),
            "any v1 may match"
        );
        for bad in ["", "t=abc,v1=00", "v1=00", "t=1", "t=1,v1=zz", "garbage"] {
            assert!(
                verify(Some(bad), body, "whsec_a", now, 300).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn events() {
        let pi = |t: &str, extra: &str| {
            format!(
                r#"{{"id":"evt_9","type":"{t}","data":{{"object":{{"id":"pi_1","amount":100,"status":"x","created":1800000000,"metadata":{{"payment_id":"00000000-0000-0000-0000-000000000007"}}{extra}}}}}}}"#
            )
        };
        let e = parse(pi("payment_intent.succeeded", "").as_bytes(), 4).unwrap();
        assert_eq!(
            (e.gateway_id.as_str(), e.event),
            ("pi_1", PaymentEvent::Settled)
        );
        assert_eq!(e.payment_id, Some(PaymentId(uuid::Uuid::from_u128(7))));
        let failed = pi(
            "payment_intent.payment_failed",
            r#","last_payment_error":{"type":"card_error","code":"insufficient_funds"}"#,
        );
        assert!(matches!(
            parse(failed.as_bytes(), 4).unwrap().event,
            PaymentEvent::Declined { .. }
        ));
        let ret = r#"{"id":"evt_3","type":"charge.failed","data":{"object":{"id":"ch_1","payment_intent":"pi_1","status":"failed","failure_code":"debit_not_authorized"}}}"#;
        assert_eq!(
            parse(ret.as_bytes(), 4).unwrap().event,
            PaymentEvent::Returned {
                code: ReturnCode::R10
            }
        );
        assert!(matches!(
            parse(
                br#"{"id":"e","type":"customer.created","data":{"object":{}}}"#,
                4
            ),
            Err(WebhookError::UnknownEvent(_))
        ));
        assert!(matches!(
            parse(b"not json", 4),
            Err(WebhookError::Malformed(_))
        ));
        assert!(matches!(parse(br#"{"id":"e","type":"charge.failed","data":{"object":{"id":"ch","status":"failed"}}}"#, 4), Err(WebhookError::Malformed(_))));
    }
}
