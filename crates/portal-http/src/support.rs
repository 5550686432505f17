//! Support-agent endpoints: log in as an agent, find a member or a payment, see an account and
//! its timeline, refund an overpayment, resend a receipt, set up a payment plan, record a check.

use crate::problem::{Body, Problem};
use crate::{AppState, payment_json, principal, session_response};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use portal_core::account::Principal;
use portal_core::audit::Actor;
use portal_core::error::{FieldError, ValidationErrors, Validator};
use portal_core::ids::{AccountId, AgentId, PaymentId};
use portal_core::money::Money;
use portal_core::payment::OfflineKind;
use portal_core::reference::PaymentReference;
use portal_core::services::OfflinePaymentForm;
use serde_json::{Value, json};
use std::net::SocketAddr;

type Result<T, E = Problem> = std::result::Result<T, E>;

pub(crate) async fn agent(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
) -> Result<AgentId> {
    match principal(state, method, headers).await? {
        Principal::Agent { agent_id } => Ok(agent_id),
        Principal::Member { .. } => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "Support agents only",
            "This is for support agents.",
        )),
    }
}

fn account_id(raw: &str) -> Result<AccountId> {
    uuid::Uuid::parse_str(raw)
        .map(AccountId)
        .map_err(|_| Problem::not_found("account"))
}

fn payment_id(raw: &str) -> Result<PaymentId> {
    uuid::Uuid::parse_str(raw)
        .map(PaymentId)
        .map_err(|_| Problem::not_found("payment"))
}

pub(crate) async fn login(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Result<Response> {
    s.limiter.check("agent-login", addr.ip())?;
    let b = Body::parse(&body)?;
    let mut v = Validator::new();
    b.only(&["username", "password"], &mut v);
    let username = b.str("username", &mut v);
    let password = b.str("password", &mut v);
    let (username, password) = v.finish(username.zip(password))?;
    let grant = s.portal.agent_login(&username, &password).await?;
    Ok(session_response(&s, &grant, StatusCode::CREATED, json!({})))
}

#[derive(serde::Deserialize)]
pub(crate) struct Search {
    q: Option<String>,
}

pub(crate) async fn search(
    State(s): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Query(q): Query<Search>,
) -> Result<Response> {
    agent(&s, &method, &headers).await?;
    let ids = s.portal.find_accounts(q.q.as_deref().unwrap_or("")).await?;
    let today = s.portal.deps().clock.today();
    let mut out = Vec::new();
    for id in ids {
        let a = s.portal.account(id).await?;
        let summary = a.summary(&s.portal.config().delinquency, today);
        out.push(json!({
            "account_id": a.id, "account_number": a.number, "name": a.holder.full_name(),
            "email": a.member.as_ref().map(|m| m.email.to_string()), "amount_due": summary.amount_due,
        }));
    }
    Ok(axum::Json(json!({ "accounts": out })).into_response())
}

pub(crate) async fn account(
    State(s): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    agent(&s, &method, &headers).await?;
    let a = s.portal.account(account_id(&id)?).await?;
    let summary = a.summary(
        &s.portal.config().delinquency,
        s.portal.deps().clock.today(),
    );
    let bills: Vec<Value> = a
        .bill_statuses()
        .into_iter()
        .map(|(b, status)| json!({ "id": b.id, "coverage_month": b.coverage_month, "amount": b.amount, "open": b.open_amount(), "due_date": b.due_date, "status": status }))
        .collect();
    let mut payments: Vec<&portal_core::payment::Payment> = a.ledger.payments.iter().collect();
    payments.sort_by_key(|p| std::cmp::Reverse(p.initiated_at));
    Ok(axum::Json(json!({
        "account_id": a.id,
        "account_number": a.number,
        "name": a.holder.full_name(),
        "ssn": format!("***-**-{}", a.holder.ssn_last4),
        "email": a.member.as_ref().map(|m| m.email.to_string()),
        "registered": a.member.is_some(),
        "summary": crate::summary_json(&summary),
        "bills": bills,
        "payments": payments.into_iter().map(payment_json).collect::<Vec<_>>(),
    }))
    .into_response())
}

pub(crate) async fn timeline(
    State(s): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    agent(&s, &method, &headers).await?;
    let events: Vec<Value> = s
        .portal
        .timeline(account_id(&id)?)
        .await?
        .into_iter()
        .map(|t| json!({ "at": t.event.at, "actor": t.event.actor.to_string(), "entity": t.event.entity, "action": t.event.action, "detail": t.event.detail }))
        .collect();
    Ok(axum::Json(json!({ "events": events })).into_response())
}

pub(crate) async fn by_reference(
    State(s): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Path(r): Path<String>,
) -> Result<Response> {
    agent(&s, &method, &headers).await?;
    let reference = PaymentReference::parse(&r)
        .map_err(|e| Problem::invalid(ValidationErrors::one(FieldError::from(e))))?;
    let (account, p) = s.portal.payment_by_reference(&reference).await?;
    Ok(axum::Json(json!({ "account_id": account, "payment": payment_json(&p) })).into_response())
}

pub(crate) async fn refund(
    State(s): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Path((id, pid)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response> {
    let agent_id = agent(&s, &method, &headers).await?;
    let b = Body::parse(&body)?;
    let mut v = Validator::new();
    b.only(&["amount"], &mut v);
    let amount = b
        .str("amount", &mut v)
        .and_then(|a| v.check("amount", Money::parse_positive(&a)));
    let amount = v.finish(amount)?;
    let receipt = s
        .portal
        .refund(agent_id, account_id(&id)?, payment_id(&pid)?, amount)
        .await?;
    Ok(axum::Json(payment_json(receipt.payment())).into_response())
}

pub(crate) async fn resend_receipt(
    State(s): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Path((id, pid)): Path<(String, String)>,
) -> Result<Response> {
    let agent_id = agent(&s, &method, &headers).await?;
    s.portal
        .resend_receipt(agent_id, account_id(&id)?, payment_id(&pid)?)
        .await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

pub(crate) async fn plan(
    State(s): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let agent_id = agent(&s, &method, &headers).await?;
    let b = Body::parse(&body)?;
    let mut v = Validator::new();
    let request = crate::more::plan_request(&b, &mut v);
    let (n, first_due) = v.finish(request)?;
    let p = s
        .portal
        .set_up_payment_plan(
            account_id(&id)?,
            n,
            first_due,
            Actor::Agent { id: agent_id },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "id": p.id, "total": p.total, "installments": p.installments.len() })),
    )
        .into_response())
}

pub(crate) async fn offline_payment(
    State(s): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let agent_id = agent(&s, &method, &headers).await?;
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
    b.only(
        &["amount", "kind", "document_number", "received_on"],
        &mut v,
    );
    let amount = b
        .str("amount", &mut v)
        .and_then(|a| v.check("amount", Money::parse_positive(&a)));
    let kind = match b.str("kind", &mut v).as_deref() {
        Some("check") => Some(OfflineKind::Check),
        Some("money_order") => Some(OfflineKind::MoneyOrder),
        Some("bank_bill_pay") => Some(OfflineKind::BankBillPay),
        Some(_) => {
            v.push(FieldError::new(
                "kind",
                "unknown",
                "use check, money_order or bank_bill_pay",
            ));
            None
        }
        None => None,
    };
    let document_number = b.opt_str("document_number", &mut v);
    let received_on = crate::more::required_date(&b, "received_on", &mut v);
    let form = (|| {
        Some(OfflinePaymentForm {
            amount: amount?,
            kind: kind?,
            document_number,
            received_on: received_on?,
            idempotency_key: key,
        })
    })();
    let form = v.finish(form)?;
    let receipt = s
        .portal
        .record_offline_payment(agent_id, account_id(&id)?, form)
        .await?;
    let status = if receipt.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(payment_json(receipt.payment()))).into_response())
}
