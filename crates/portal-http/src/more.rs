//! Automatic payments, payment plans, reinstatement, preferences and guest pay.

use crate::problem::{Body, Problem};
use crate::{AppState, Member, payment_json, token_field};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::NaiveDate;
use portal_core::audit::Actor;
use portal_core::error::{FieldError, ValidationErrors, Validator};
use portal_core::identity::Language;
use portal_core::ids::{EnrollmentId, MandateId, MethodId};
use portal_core::mandate::{AmountRule, ConsentSource, Frequency, Mandate, MandateStatus};
use portal_core::money::Money;
use portal_core::services::{AutopayForm, GuestPayForm};
use serde_json::{Value, json};
use std::net::SocketAddr;

type Result<T, E = Problem> = std::result::Result<T, E>;

/// An optional `YYYY-MM-DD` field.
pub(crate) fn date_field(b: &Body, field: &str, v: &mut Validator) -> Option<NaiveDate> {
    b.opt_str(field, v)
        .and_then(|d| match NaiveDate::parse_from_str(d.trim(), "%Y-%m-%d") {
            Ok(x) => Some(x),
            Err(_) => {
                v.push(FieldError::new(field, "format", "use YYYY-MM-DD"));
                None
            }
        })
}

fn uuid_field(raw: Option<String>, field: &str, v: &mut Validator) -> Option<uuid::Uuid> {
    raw.and_then(|r| match uuid::Uuid::parse_str(r.trim()) {
        Ok(u) => Some(u),
        Err(_) => {
            v.push(FieldError::new(field, "format", "not a known id"));
            None
        }
    })
}

/// Reads the automatic-payment form; `extra` names the other fields the endpoint accepts.
fn autopay_form(b: &Body, extra: &[&str], v: &mut Validator) -> Option<AutopayForm> {
    let mut allowed = vec![
        "payment_method_id",
        "amount_rule",
        "fixed_amount",
        "cap",
        "frequency",
        "start_date",
    ];
    allowed.extend_from_slice(extra);
    b.only(&allowed, v);
    let method = b.str("payment_method_id", v);
    let method_id = uuid_field(method, "payment_method_id", v).map(MethodId);
    // Read (and type-check) the fixed amount whatever the rule, so a bad one is always reported.
    let fixed = b
        .opt_str("fixed_amount", v)
        .and_then(|a| v.check("fixed_amount", Money::parse_positive(&a)));
    let rule = match b.str("amount_rule", v).as_deref() {
        Some("amount_due") => Some(AmountRule::AmountDue),
        Some("fixed") => {
            if !b_has(b, "fixed_amount") {
                v.push(FieldError::new(
                    "fixed_amount",
                    "required",
                    "a fixed amount is required with amount_rule fixed",
                ));
            }
            fixed.map(|amount| AmountRule::Fixed { amount })
        }
        Some(_) => {
            v.push(FieldError::new(
                "amount_rule",
                "unknown",
                "use amount_due or fixed",
            ));
            None
        }
        None => None,
    };
    let cap = b
        .opt_str("cap", v)
        .and_then(|c| v.check("cap", Money::parse_positive(&c)));
    let frequency = match b.str("frequency", v).as_deref() {
        Some("monthly") => Some(Frequency::Monthly),
        Some("quarterly") => Some(Frequency::Quarterly),
        Some(_) => {
            v.push(FieldError::new(
                "frequency",
                "unknown",
                "use monthly or quarterly",
            ));
            None
        }
        None => None,
    };
    let start = date_field(b, "start_date", v);
    if !b_has(b, "start_date") {
        v.push(FieldError::new(
            "start_date",
            "required",
            "this field is required",
        ));
    }
    Some(AutopayForm {
        method_id: method_id?,
        amount_rule: rule?,
        cap,
        frequency: frequency?,
        start_date: start?,
    })
}

fn b_has(b: &Body, field: &str) -> bool {
    let mut scratch = Validator::new();
    b.opt_str(field, &mut scratch).is_some()
}

fn mandate_json(m: &Mandate, today: NaiveDate) -> Value {
    json!({
        "id": m.id, "payment_method_id": m.method_id, "amount_rule": m.amount_rule, "cap": m.cap,
        "frequency": m.frequency, "start_date": m.start_date, "status": m.status,
        "next_debit_on": m.next_debit_on(today), "consent": { "text": m.consent.text, "accepted_at": m.consent.accepted_at },
    })
}

pub(crate) async fn get_autopay(State(s): State<AppState>, Member(id): Member) -> Result<Response> {
    let a = s.portal.account(id).await?;
    let today = s.portal.deps().clock.today();
    Ok(
        axum::Json(json!({ "autopay": a.current_mandate().map(|m| mandate_json(m, today)) }))
            .into_response(),
    )
}

pub(crate) async fn preview_autopay(
    State(s): State<AppState>,
    Member(id): Member,
    body: Bytes,
) -> Result<Response> {
    let b = Body::parse(&body)?;
    let mut v = Validator::new();
    let form = autopay_form(&b, &["language"], &mut v);
    let language = b
        .opt_str("language", &mut v)
        .and_then(|l| v.check("language", Language::parse(&l)));
    let form = v.finish(form)?;
    let p = s.portal.preview_autopay(id, &form, language).await?;
    Ok(axum::Json(json!({ "method": p.method, "first_debit": p.first_debit, "estimated_amount": p.estimated_amount, "authorization_text": p.authorization_text })).into_response())
}

fn accepted(b: &Body, v: &mut Validator) -> Option<(String, ConsentSource)> {
    let text = b.str("authorization_text", v);
    let source = match b.opt_str("source", v).as_deref() {
        None | Some("web") => Some(ConsentSource::Web),
        Some("api") => Some(ConsentSource::Api),
        Some("phone") => Some(ConsentSource::Phone),
        Some(_) => {
            v.push(FieldError::new(
                "source",
                "unknown",
                "use web, api or phone",
            ));
            None
        }
    };
    text.zip(source)
}

pub(crate) async fn create_autopay(
    State(s): State<AppState>,
    Member(id): Member,
    body: Bytes,
) -> Result<Response> {
    let b = Body::parse(&body)?;
    let mut v = Validator::new();
    let form = autopay_form(&b, &["authorization_text", "source"], &mut v);
    let consent = accepted(&b, &mut v);
    let (form, (text, source)) = v.finish(form.zip(consent))?;
    let m = s.portal.set_up_autopay(id, &form, &text, source).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(mandate_json(&m, s.portal.deps().clock.today())),
    )
        .into_response())
}

fn mandate_id(raw: &str) -> Result<MandateId> {
    uuid::Uuid::parse_str(raw)
        .map(MandateId)
        .map_err(|_| Problem::not_found("automatic payment"))
}

pub(crate) async fn change_autopay(
    State(s): State<AppState>,
    Member(id): Member,
    Path(mid): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let mid = mandate_id(&mid)?;
    let b = Body::parse(&body)?;
    let mut v = Validator::new();
    let form = autopay_form(&b, &["authorization_text", "source"], &mut v);
    let consent = accepted(&b, &mut v);
    let (form, (text, source)) = v.finish(form.zip(consent))?;
    let m = s
        .portal
        .change_autopay(id, mid, &form, &text, source)
        .await?;
    Ok(axum::Json(mandate_json(&m, s.portal.deps().clock.today())).into_response())
}

pub(crate) async fn pause_autopay(
    State(s): State<AppState>,
    Member(id): Member,
    Path(mid): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let mid = mandate_id(&mid)?;
    let b = Body::parse(&body)?;
    let mut v = Validator::new();
    b.only(&["until"], &mut v);
    let until = date_field(&b, "until", &mut v);
    v.finish(Some(()))?;
    let m = s
        .portal
        .set_autopay_status(id, mid, MandateStatus::Paused { until })
        .await?;
    Ok(axum::Json(mandate_json(&m, s.portal.deps().clock.today())).into_response())
}

pub(crate) async fn resume_autopay(
    State(s): State<AppState>,
    Member(id): Member,
    Path(mid): Path<String>,
) -> Result<Response> {
    let m = s
        .portal
        .set_autopay_status(id, mandate_id(&mid)?, MandateStatus::Active)
        .await?;
    Ok(axum::Json(mandate_json(&m, s.portal.deps().clock.today())).into_response())
}

pub(crate) async fn cancel_autopay(
    State(s): State<AppState>,
    Member(id): Member,
    Path(mid): Path<String>,
) -> Result<Response> {
    s.portal
        .set_autopay_status(id, mandate_id(&mid)?, MandateStatus::Cancelled)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn plans(State(s): State<AppState>, Member(id): Member) -> Result<Response> {
    let a = s.portal.account(id).await?;
    let list: Vec<Value> = a
        .plans
        .iter()
        .map(|p| {
            let installments: Vec<Value> = p
                .installments
                .iter()
                .filter_map(|b| a.ledger.bill(*b))
                .map(|b| json!({ "amount": b.amount, "due_date": b.due_date, "open": b.open_amount(), "status": b.status() }))
                .collect();
            json!({ "id": p.id, "total": p.total, "status": p.status, "created_at": p.created_at, "installments": installments })
        })
        .collect();
    Ok(axum::Json(json!({ "payment_plans": list })).into_response())
}

pub(crate) async fn request_plan(
    State(s): State<AppState>,
    Member(id): Member,
    body: Bytes,
) -> Result<Response> {
    let b = Body::parse(&body)?;
    let mut v = Validator::new();
    let request = plan_request(&b, &mut v);
    let (n, first_due) = v.finish(request)?;
    let p = s
        .portal
        .set_up_payment_plan(id, n, first_due, Actor::Member)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(json!({ "id": p.id, "total": p.total, "installments": p.installments.len(), "status": p.status }))).into_response())
}

/// A required `YYYY-MM-DD` field.
pub(crate) fn required_date(b: &Body, field: &str, v: &mut Validator) -> Option<NaiveDate> {
    b.str(field, v)
        .and_then(|d| match NaiveDate::parse_from_str(d.trim(), "%Y-%m-%d") {
            Ok(x) => Some(x),
            Err(_) => {
                v.push(FieldError::new(field, "format", "use YYYY-MM-DD"));
                None
            }
        })
}

/// The body of a payment-plan request: `installments` (2-12, as a string) and `first_due`.
pub(crate) fn plan_request(b: &Body, v: &mut Validator) -> Option<(u32, Option<NaiveDate>)> {
    b.only(&["installments", "first_due"], v);
    let n = b
        .str("installments", v)
        .and_then(|n| match n.trim().parse::<u32>() {
            Ok(x) => Some(x),
            Err(_) => {
                v.push(FieldError::new(
                    "installments",
                    "format",
                    "send the number of installments, 2 to 12, as a string",
                ));
                None
            }
        });
    let first_due = date_field(b, "first_due", v);
    n.map(|n| (n, first_due))
}

fn enrollment_id(raw: &str) -> Result<EnrollmentId> {
    uuid::Uuid::parse_str(raw)
        .map(EnrollmentId)
        .map_err(|_| Problem::not_found("enrollment"))
}

pub(crate) async fn reinstatement_quote(
    State(s): State<AppState>,
    Member(id): Member,
    Path(e): Path<String>,
) -> Result<Response> {
    let q = s.portal.reinstatement_quote(id, enrollment_id(&e)?).await?;
    Ok(axum::Json(
        json!({ "required": q.required, "credit": q.credit, "to_pay": q.to_pay, "until": q.until }),
    )
    .into_response())
}

pub(crate) async fn reinstate(
    State(s): State<AppState>,
    Member(id): Member,
    Path(e): Path<String>,
) -> Result<Response> {
    s.portal
        .reinstate(id, enrollment_id(&e)?, Actor::Member)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn preferences(
    State(s): State<AppState>,
    Member(id): Member,
    body: Bytes,
) -> Result<Response> {
    let b = Body::parse(&body)?;
    let mut v = Validator::new();
    b.only(&["language", "due_date_reminders"], &mut v);
    let language = b
        .opt_str("language", &mut v)
        .and_then(|l| v.check("language", Language::parse(&l)));
    let reminders = b.opt_bool("due_date_reminders", &mut v);
    v.finish(Some(()))?;
    s.portal.update_preferences(id, language, reminders).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn guest_form(b: &Body, extra: &[&str], v: &mut Validator) -> GuestPayForm {
    let mut allowed = vec!["account_number", "first_name", "last_name", "date_of_birth"];
    allowed.extend_from_slice(extra);
    b.only(&allowed, v);
    GuestPayForm {
        account_number: b.str("account_number", v).unwrap_or_default(),
        first_name: b.str("first_name", v).unwrap_or_default(),
        last_name: b.str("last_name", v).unwrap_or_default(),
        date_of_birth: b.str("date_of_birth", v).unwrap_or_default(),
    }
}

/// Guest pay, step 1: find the bill without logging in.
pub(crate) async fn guest_lookup(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Result<Response> {
    s.limiter.check("guest", addr.ip())?;
    let b = Body::parse(&body)?;
    let mut v = Validator::new();
    let form = guest_form(&b, &[], &mut v);
    v.finish(Some(()))?;
    let m = s.portal.guest_match(&form).await?;
    Ok(axum::Json(json!({ "amount_due": m.amount_due, "due_date": m.due_date })).into_response())
}

/// Guest pay, step 2: pay with a one-time token.
pub(crate) async fn guest_pay(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    s.limiter.check("guest", addr.ip())?;
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return Err(Problem::invalid(ValidationErrors::one(FieldError::new(
            "Idempotency-Key",
            "required",
            "send an Idempotency-Key header",
        ))));
    };
    let b = Body::parse(&body)?;
    let mut v = Validator::new();
    let form = guest_form(&b, &["amount", "token"], &mut v);
    let amount = b
        .opt_str("amount", &mut v)
        .and_then(|a| v.check("amount", Money::parse_positive(&a)));
    let raw = b.str("token", &mut v);
    let token = token_field(raw, &mut v);
    let token = v.finish(token)?;
    let receipt = s.portal.guest_pay(&form, amount, token, &key).await?;
    let p = receipt.payment();
    let mut out = payment_json(p);
    if let Some(o) = out.as_object_mut() {
        // A guest sees the receipt, not the account's history.
        o.remove("allocations");
        o.insert("amount_due_after".into(), json!(receipt.amount_due_after));
    }
    Ok((
        if receipt.replayed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        axum::Json(out),
    )
        .into_response())
}
