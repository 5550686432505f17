//! The support agents' pages: log in, search by name, email, account number or payment
//! reference, and an account's page with its payments, timeline and the agent's actions
//! (refund, resend a receipt, set up a payment plan, record a check or money order).
//! Agents are staff: these pages are in English only.

use super::{
    Ctx, form_page, message, page, plausible_token, posted, service_failure, status_word, visit,
};
use crate::{AppState, session_cookies};
use askama::Template;
use axum::Router;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::NaiveDate;
use portal_core::audit::Actor;
use portal_core::delinquency::CoverageStatus;
use portal_core::ids::{AccountId, AgentId, PaymentId};
use portal_core::money::Money;
use portal_core::payment::{OfflineKind, PaymentStatus};
use portal_core::services::{OfflinePaymentForm, ServiceError};
use std::collections::HashMap;
use std::net::SocketAddr;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/support/login", get(login_page).post(login_submit))
        .route("/support", get(search))
        .route("/support/accounts/{id}", get(account_page))
        .route("/support/accounts/{id}/payments/{pid}/refund", post(refund))
        .route(
            "/support/accounts/{id}/payments/{pid}/receipt",
            post(resend_receipt),
        )
        .route("/support/accounts/{id}/plan", post(plan))
        .route("/support/accounts/{id}/offline", post(offline))
        .route("/support/test-clock", post(move_clock))
}

fn to_login() -> Response {
    Redirect::to("/support/login").into_response()
}

#[derive(Template)]
#[template(path = "support_login.html")]
struct LoginPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    message: Option<&'a str>,
}

async fn login_page(State(s): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let c = visit(&s, &headers, &uri).await;
    if c.agent_in {
        return Redirect::to("/support").into_response();
    }
    let html = LoginPage {
        c: &c,
        title: "Support agent log in",
        message: None,
    }
    .render();
    page(&s, &c, StatusCode::OK, html)
}

async fn login_submit(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let (c, form) = match posted(&s, &headers, &uri, form).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let username = form.get("username").map(|u| u.trim()).unwrap_or_default();
    let password = form.get("password").map(String::as_str).unwrap_or_default();
    let said = if s.limiter.check("agent-login", addr.ip()).is_err() {
        "Too many attempts from this address. Wait a minute, then try again.".to_owned()
    } else {
        match s.portal.agent_login(username, password).await {
            Ok(grant) => {
                let mut r = Redirect::to("/support").into_response();
                for v in session_cookies(&s, &grant) {
                    r.headers_mut().append(header::SET_COOKIE, v);
                }
                return r;
            }
            Err(ServiceError::Locked { until }) => format!(
                "Too many failed attempts: logging in is paused until {} UTC.",
                until.format("%Y-%m-%d %H:%M")
            ),
            Err(ServiceError::InvalidCredentials | ServiceError::Invalid(_)) => {
                "The username or password is incorrect.".to_owned()
            }
            Err(e) => return service_failure(&s, &c, &e),
        }
    };
    let html = LoginPage {
        c: &c,
        title: "Support agent log in",
        message: Some(&said),
    }
    .render();
    page(&s, &c, StatusCode::UNPROCESSABLE_ENTITY, html)
}

struct Found {
    id: AccountId,
    number: String,
    name: String,
    email: String,
    due: String,
}

#[derive(Template)]
#[template(path = "support_search.html")]
struct SearchPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    q: String,
    searched: bool,
    results: Vec<Found>,
    /// The deployment's date, when it has a test clock.
    clock: Option<String>,
    /// What the last move of the test clock did.
    clock_moved: Option<String>,
}

#[derive(serde::Deserialize, Default)]
struct SearchQuery {
    q: Option<String>,
    moved: Option<u32>,
}

async fn search(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    q: Result<Query<SearchQuery>, QueryRejection>,
) -> Response {
    let mut c = visit(&s, &headers, &uri).await;
    if c.agent.is_none() {
        return to_login();
    }
    let query = q.map(|Query(q)| q).unwrap_or_default();
    let moved = query.moved;
    let q = query.q.map(|q| q.trim().to_owned()).unwrap_or_default();
    let mut results = Vec::new();
    let searched = !q.is_empty();
    if searched {
        match s.portal.find_accounts(&q).await {
            Ok(ids) => {
                let today = s.portal.deps().clock.today();
                for id in ids {
                    match s.portal.account(id).await {
                        Ok(a) => {
                            let summary = a.summary(&s.portal.config().delinquency, today);
                            results.push(Found {
                                id: a.id,
                                number: a.number.to_string(),
                                name: a.holder.full_name(),
                                email: a
                                    .member
                                    .as_ref()
                                    .map(|m| m.email.to_string())
                                    .unwrap_or_default(),
                                due: c.money(summary.amount_due),
                            });
                        }
                        Err(e) => return service_failure(&s, &c, &e),
                    }
                }
            }
            Err(ServiceError::Invalid(v)) => c.fail_fields(&v.0, &[]),
            Err(e) => return service_failure(&s, &c, &e),
        }
    }
    // One match for a payment reference goes straight to the account, at the payment.
    if results.len() == 1 && portal_core::reference::PaymentReference::parse(&q).is_ok() {
        if let Some(r) = results.first() {
            return Redirect::to(&format!(
                "/support/accounts/{}?reference={}",
                r.id,
                q.to_uppercase()
            ))
            .into_response();
        }
    }
    let clock = s.portal.test_clock_today().ok();
    let html = SearchPage {
        c: &c,
        title: "Support search",
        q,
        searched,
        results,
        clock: clock.map(|d| c.date(d)),
        clock_moved: moved.filter(|_| clock.is_some()).map(|n| {
            let days = if n == 1 {
                "1 day".to_owned()
            } else {
                format!("{n} days")
            };
            format!("Moved the clock forward {days} and ran the daily jobs for each.")
        }),
    }
    .render();
    form_page(&s, &c, html)
}

/// The test clock's button (demo and staging only): move the date forward N days.
async fn move_clock(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let (mut c, form) = match posted(&s, &headers, &uri, form).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if c.agent.is_none() {
        return to_login();
    }
    if !s.portal.has_test_clock() {
        return message(
            &s,
            &c,
            StatusCode::NOT_FOUND,
            "Not found",
            "This deployment has no test clock.",
        );
    }
    let days = form.get("days").and_then(|d| d.trim().parse::<u32>().ok());
    let result = match days {
        Some(n) => s.portal.advance_test_clock(n).await.map(|_| n),
        None => Err(ServiceError::Invalid(
            portal_core::error::ValidationErrors::one(portal_core::error::FieldError::new(
                "days",
                "format",
                "enter a whole number of days",
            )),
        )),
    };
    match result {
        Ok(n) => Redirect::to(&format!("/support?moved={n}")).into_response(),
        Err(ServiceError::Invalid(v)) => {
            c.fail_fields(&v.0, &[]);
            let html = SearchPage {
                c: &c,
                title: "Support search",
                q: String::new(),
                searched: false,
                results: Vec::new(),
                clock: s.portal.test_clock_today().ok().map(|d| c.date(d)),
                clock_moved: None,
            }
            .render();
            form_page(&s, &c, html)
        }
        Err(e) => service_failure(&s, &c, &e),
    }
}

struct PaymentLine {
    id: PaymentId,
    date: String,
    reference: String,
    amount: String,
    method: String,
    status: String,
    refundable: bool,
    highlight: bool,
}

struct Event {
    at: String,
    actor: String,
    action: String,
    detail: String,
}

struct AccountView {
    id: AccountId,
    name: String,
    number: String,
    ssn: String,
    email: String,
    due: String,
    coverage: String,
    autopay: bool,
    payments: Vec<PaymentLine>,
    timeline: Vec<Event>,
}

#[derive(Template)]
#[template(path = "support_account.html")]
struct AccountPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    notice: Option<&'a str>,
    v: AccountView,
    key: String,
    today: String,
}

#[derive(serde::Deserialize, Default)]
struct AccountQuery {
    reference: Option<String>,
    done: Option<String>,
}

fn account_id(raw: &str) -> Option<AccountId> {
    uuid::Uuid::parse_str(raw).ok().map(AccountId)
}

async fn account_view(
    s: &AppState,
    c: &Ctx,
    id: AccountId,
    reference: Option<&str>,
) -> Result<AccountView, ServiceError> {
    let a = s.portal.account(id).await?;
    let today = s.portal.deps().clock.today();
    let summary = a.summary(&s.portal.config().delinquency, today);
    let coverage = summary
        .enrollments
        .iter()
        .map(|e| {
            let st = match &e.status {
                CoverageStatus::PendingBinder { due_date, deadline } => {
                    format!("pending first payment (due {due_date}, starts if paid by {deadline})")
                }
                CoverageStatus::Cancelled { deadline } => {
                    format!("cancelled: first payment not made by {deadline}; nothing owed")
                }
                CoverageStatus::Active => "active".to_owned(),
                CoverageStatus::InGrace { grace } => {
                    let (amount, by) = e
                        .to_keep_coverage
                        .map_or((e.past_due, grace.grace_ends_on), |d| (d.amount, d.by));
                    format!(
                        "in {:?} grace until {} (pay ${amount} by {by}; otherwise ends {})",
                        grace.kind, grace.grace_ends_on, grace.termination_effective
                    )
                }
                CoverageStatus::Terminated {
                    effective,
                    reinstatable_until,
                } => match e.to_keep_coverage.map(|d| (d.amount, d.by)) {
                    Some((amount, by)) => {
                        format!("terminated {effective}; pay ${amount} by {by} to reinstate")
                    }
                    None => {
                        format!("terminated {effective}; reinstatement closed {reinstatable_until}")
                    }
                },
            };
            format!("{}: {st}", e.plan_name)
        })
        .collect::<Vec<_>>()
        .join("; ");
    let mut payments: Vec<_> = a.ledger.payments.iter().collect();
    payments.sort_by_key(|p| std::cmp::Reverse(p.initiated_at));
    let payments = payments
        .into_iter()
        .map(|p| PaymentLine {
            id: p.id,
            date: c.date(p.initiated_on),
            reference: p.reference.to_string(),
            amount: c.money(p.amount),
            method: p.instrument.masked(),
            status: status_word(c, p),
            refundable: matches!(
                p.status,
                PaymentStatus::Succeeded | PaymentStatus::Refunded { full: false }
            ),
            highlight: reference.is_some_and(|r| r == p.reference.to_string()),
        })
        .collect();
    let mut timeline: Vec<Event> = s
        .portal
        .timeline(id)
        .await?
        .into_iter()
        .map(|t| Event {
            at: t.event.at.format("%Y-%m-%d %H:%M").to_string(),
            actor: t.event.actor.to_string(),
            action: t.event.action,
            detail: t.event.detail,
        })
        .collect();
    timeline.reverse();
    Ok(AccountView {
        id: a.id,
        name: a.holder.full_name(),
        number: a.number.to_string(),
        ssn: format!("***-**-{}", a.holder.ssn_last4),
        email: a
            .member
            .as_ref()
            .map(|m| m.email.to_string())
            .unwrap_or_else(|| "(no online account)".to_owned()),
        due: c.money(summary.amount_due),
        coverage,
        autopay: summary.autopay_active,
        payments,
        timeline,
    })
}

async fn render_account(
    s: &AppState,
    c: &Ctx,
    id: AccountId,
    reference: Option<&str>,
    notice: Option<&str>,
) -> Response {
    let v = match account_view(s, c, id, reference).await {
        Ok(v) => v,
        Err(e) => return service_failure(s, c, &e),
    };
    let title = v.name.clone();
    let html = AccountPage {
        c,
        title: &title,
        notice,
        v,
        key: s.portal.deps().ids.secret_token().expose().to_owned(),
        today: s.portal.deps().clock.today().to_string(),
    }
    .render();
    form_page(s, c, html)
}

async fn account_page(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(raw): Path<String>,
    q: Result<Query<AccountQuery>, QueryRejection>,
) -> Response {
    let c = visit(&s, &headers, &uri).await;
    if c.agent.is_none() {
        return to_login();
    }
    let Some(id) = account_id(&raw) else {
        return message(
            &s,
            &c,
            StatusCode::NOT_FOUND,
            "Not found",
            "No such account.",
        );
    };
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let notice = match q.done.as_deref() {
        Some("refund") => Some("Refund sent to the gateway."),
        Some("receipt") => Some("Receipt queued for the member's email."),
        Some("plan") => Some("Payment plan set up; the member was notified."),
        Some("offline") => Some("Payment recorded."),
        _ => None,
    };
    render_account(&s, &c, id, q.reference.as_deref(), notice).await
}

/// Reads a posted agent form: the agent, the account and the fields, or the response to give.
async fn agent_form(
    s: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    raw: &str,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Result<(Ctx, AgentId, AccountId, HashMap<String, String>), Response> {
    let (c, form) = posted(s, headers, uri, form).await?;
    let Some(agent) = c.agent else {
        return Err(to_login());
    };
    let Some(id) = account_id(raw) else {
        return Err(message(
            s,
            &c,
            StatusCode::NOT_FOUND,
            "Not found",
            "No such account.",
        ));
    };
    Ok((c, agent, id, form))
}

fn done(id: AccountId, what: &str) -> Response {
    Redirect::to(&format!("/support/accounts/{id}?done={what}")).into_response()
}

fn amount_of(c: &mut Ctx, form: &HashMap<String, String>) -> Option<Money> {
    let raw = form
        .get("amount")
        .map(|a| a.trim().trim_start_matches('$').replace(',', ""))
        .unwrap_or_default();
    match Money::parse_positive(&raw) {
        Ok(m) => Some(m),
        Err(e) => {
            c.fail("amount", portal_core::error::FieldError::from(e).message);
            None
        }
    }
}

async fn refund(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path((raw, pid)): Path<(String, String)>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let (mut c, agent, id, form) = match agent_form(&s, &headers, &uri, &raw, form).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Ok(pid) = uuid::Uuid::parse_str(&pid).map(PaymentId) else {
        return message(
            &s,
            &c,
            StatusCode::NOT_FOUND,
            "Not found",
            "No such payment.",
        );
    };
    let Some(amount) = amount_of(&mut c, &form) else {
        return render_account(&s, &c, id, None, None).await;
    };
    match s.portal.refund(agent, id, pid, amount).await {
        Ok(_) => done(id, "refund"),
        Err(ServiceError::Invalid(v)) => {
            c.fail_fields(&v.0, &[]);
            render_account(&s, &c, id, None, None).await
        }
        Err(ServiceError::Rejected(why)) => {
            c.fail("", why);
            render_account(&s, &c, id, None, None).await
        }
        Err(e) => service_failure(&s, &c, &e),
    }
}

async fn resend_receipt(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path((raw, pid)): Path<(String, String)>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let (c, agent, id, _) = match agent_form(&s, &headers, &uri, &raw, form).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Ok(pid) = uuid::Uuid::parse_str(&pid).map(PaymentId) else {
        return message(
            &s,
            &c,
            StatusCode::NOT_FOUND,
            "Not found",
            "No such payment.",
        );
    };
    match s.portal.resend_receipt(agent, id, pid).await {
        Ok(()) => done(id, "receipt"),
        Err(e) => service_failure(&s, &c, &e),
    }
}

async fn plan(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(raw): Path<String>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let (mut c, agent, id, form) = match agent_form(&s, &headers, &uri, &raw, form).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let n = form
        .get("installments")
        .and_then(|n| n.trim().parse::<u32>().ok());
    if n.is_none() {
        c.fail(
            "installments",
            "enter a number of installments from 2 to 12",
        );
    }
    let first_due = match form.get("first_due").map(|d| d.trim()) {
        None | Some("") => None,
        Some(d) => match NaiveDate::parse_from_str(d, "%Y-%m-%d") {
            Ok(d) => Some(d),
            Err(_) => {
                c.fail("first_due", "use YYYY-MM-DD");
                None
            }
        },
    };
    let Some(n) = n.filter(|_| c.errors.is_empty()) else {
        return render_account(&s, &c, id, None, None).await;
    };
    match s
        .portal
        .set_up_payment_plan(id, n, first_due, Actor::Agent { id: agent })
        .await
    {
        Ok(_) => done(id, "plan"),
        Err(ServiceError::Invalid(v)) => {
            c.fail_fields(&v.0, &[]);
            render_account(&s, &c, id, None, None).await
        }
        Err(ServiceError::Rejected(why) | ServiceError::Conflict(why)) => {
            c.fail("", why);
            render_account(&s, &c, id, None, None).await
        }
        Err(e) => service_failure(&s, &c, &e),
    }
}

async fn offline(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(raw): Path<String>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let (mut c, agent, id, form) = match agent_form(&s, &headers, &uri, &raw, form).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let amount = amount_of(&mut c, &form);
    let kind = match form.get("kind").map(String::as_str) {
        Some("money_order") => OfflineKind::MoneyOrder,
        Some("bank_bill_pay") => OfflineKind::BankBillPay,
        _ => OfflineKind::Check,
    };
    let received_on = form
        .get("received_on")
        .and_then(|d| NaiveDate::parse_from_str(d.trim(), "%Y-%m-%d").ok());
    if received_on.is_none() {
        c.fail("received_on", "use YYYY-MM-DD");
    }
    let key = form.get("key").filter(|k| plausible_token(k)).cloned();
    let (Some(amount), Some(received_on), Some(key)) = (amount, received_on, key) else {
        return render_account(&s, &c, id, None, None).await;
    };
    let document_number = form
        .get("document_number")
        .map(|d| d.trim().to_owned())
        .filter(|d| !d.is_empty());
    let recorded = s
        .portal
        .record_offline_payment(
            agent,
            id,
            OfflinePaymentForm {
                amount,
                kind,
                document_number,
                received_on,
                idempotency_key: format!("web-support:{key}"),
            },
        )
        .await;
    match recorded {
        Ok(_) => done(id, "offline"),
        Err(ServiceError::Invalid(v)) => {
            c.fail_fields(&v.0, &[]);
            render_account(&s, &c, id, None, None).await
        }
        Err(e) => service_failure(&s, &c, &e),
    }
}
