//! The portal's HTTP surface: a versioned JSON API under `/api/v1` over the core's use cases.
//!
//! Handlers parse input into commands, call one use case and map the result; every error is an
//! RFC 9457 problem (see [`problem`]). Browsers authenticate with an `HttpOnly` session cookie
//! plus a double-submit CSRF header on unsafe methods; API clients with `Authorization: Bearer`.
//! A member only ever reaches their own account: the account comes from the session, and a
//! foreign id answers 404.

mod more;
pub mod problem;
mod routes;
mod support;
mod test_clock;
pub mod web;

pub use routes::openapi;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use portal_core::account::{AccountSummary, Principal};
use portal_core::error::{FieldError, ValidationErrors, Validator};
use portal_core::ids::{AccountId, MethodId, PaymentId};
use portal_core::instrument::GatewayToken;
use portal_core::money::Money;
use portal_core::payment::Payment;
use portal_core::ports::GatewayEvent;
use portal_core::reference::PaymentReference;
use portal_core::services::{
    LoginOutcome, MakePayment, PayWith, Portal, RegistrationForm, SessionGrant,
};
use problem::{Body, Problem};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;

/// Checks a gateway webhook's signature and parses it (the gateway adapter provides this).
pub type WebhookVerifier =
    Arc<dyn Fn(Option<&str>, &[u8]) -> Result<GatewayEvent, String> + Send + Sync>;

/// HTTP settings.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Mark cookies `Secure` (when served over TLS).
    pub secure_cookies: bool,
    /// Largest request body.
    pub body_limit: usize,
    /// Longest time a request may take.
    pub request_timeout: Duration,
    /// Login and reset attempts per client address per minute.
    pub auth_attempts_per_minute: u32,
    /// What front ends need to know (gateway URL and publishable key for tokenization).
    pub client_config: Value,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            secure_cookies: false,
            body_limit: 64 * 1024,
            request_timeout: Duration::from_secs(30),
            auth_attempts_per_minute: 20,
            client_config: json!({}),
        }
    }
}

/// Readiness probe: `Ok` when the database answers.
pub type ReadyCheck = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + Sync,
>;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    portal: Portal,
    webhooks: WebhookVerifier,
    ready: ReadyCheck,
    config: HttpConfig,
    limiter: Arc<RateLimiter>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State over a portal, a webhook verifier and a readiness check.
    pub fn new(
        portal: Portal,
        webhooks: WebhookVerifier,
        ready: ReadyCheck,
        config: HttpConfig,
    ) -> Self {
        let per_minute = config.auth_attempts_per_minute;
        Self {
            portal,
            webhooks,
            ready,
            config,
            limiter: Arc::new(RateLimiter::new(per_minute)),
        }
    }
}

/// Requests seen per (route, client address): window start and count.
type Windows = HashMap<(&'static str, IpAddr), (Instant, u32)>;

/// A fixed-window limiter per (route, client address).
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    windows: Mutex<Windows>,
}

impl RateLimiter {
    fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn check(&self, route: &'static str, ip: IpAddr) -> Result<(), Problem> {
        let mut w = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if w.len() > 100_000 {
            w.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
        }
        let entry = w.entry((route, ip)).or_insert((now, 0));
        if now.duration_since(entry.0) >= Duration::from_secs(60) {
            *entry = (now, 0);
        }
        entry.1 += 1;
        if entry.1 > self.per_minute {
            let wait = 60 - i64::try_from(now.duration_since(entry.0).as_secs()).unwrap_or(0);
            return Err(Problem::too_many(wait));
        }
        Ok(())
    }
}

const SESSION_COOKIE: &str = "portal_session";
const CSRF_COOKIE: &str = "portal_csrf";
const CSRF_HEADER: &str = "x-csrf-token";

/// The CSRF token of a session: derived from the session token, so nothing extra is stored.
fn csrf_for(session_token: &str) -> String {
    Sha256::digest(format!("csrf:{session_token}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Resolves the caller: a bearer token, or a session cookie with its CSRF header on unsafe
/// methods. A cookie that is no session is `401` (log in again) before any CSRF check, which
/// only a live session can fail (`403`).
async fn principal(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Principal, Problem> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let from_cookie = bearer.is_none();
    let token = match bearer {
        Some(t) => t,
        None => cookie(headers, SESSION_COOKIE).ok_or_else(Problem::unauthenticated)?,
    };
    if token.is_empty() || token.len() > 256 {
        return Err(Problem::unauthenticated());
    }
    let principal = state.portal.authenticate(&token).await?;
    if from_cookie && !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        let sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if sent != csrf_for(&token) {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "CSRF check failed",
                "Reload the page and try again.",
            ));
        }
    }
    Ok(principal)
}

async fn member(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
) -> Result<AccountId, Problem> {
    match principal(state, method, headers).await? {
        Principal::Member { account_id } => Ok(account_id),
        Principal::Agent { .. } => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "Members only",
            "Support agents use the support endpoints.",
        )),
    }
}

/// The signed-in member, extracted from the request's session cookie or
/// bearer token (CSRF-checked for unsafe methods). Agents get 403.
pub(crate) struct Member(pub(crate) AccountId);

impl axum::extract::FromRequestParts<AppState> for Member {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Problem> {
        member(state, &parts.method, &parts.headers)
            .await
            .map(Member)
    }
}

/// The session and CSRF cookies of a new session.
fn session_cookies(state: &AppState, grant: &SessionGrant) -> Vec<HeaderValue> {
    let token = grant.token.expose();
    let secure = if state.config.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let max_age = (grant.expires_at - Utc::now()).num_seconds().max(0);
    [
        format!(
            "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
        ),
        format!(
            "{CSRF_COOKIE}={}; Path=/; SameSite=Lax; Max-Age={max_age}{secure}",
            csrf_for(token)
        ),
    ]
    .into_iter()
    .filter_map(|c| HeaderValue::from_str(&c).ok())
    .collect()
}

fn session_response(
    state: &AppState,
    grant: &SessionGrant,
    status: StatusCode,
    mut body: Value,
) -> Response {
    let token = grant.token.expose();
    if let Some(o) = body.as_object_mut() {
        o.insert("token".into(), json!(token));
        o.insert("expires_at".into(), json!(grant.expires_at));
        o.insert("csrf_token".into(), json!(csrf_for(token)));
    }
    let mut r = (status, axum::Json(body)).into_response();
    for v in session_cookies(state, grant) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

type Result<T, E = Problem> = std::result::Result<T, E>;

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

async fn openapi_json() -> Response {
    axum::Json(routes::openapi()).into_response()
}

async fn client_config(State(s): State<AppState>) -> Response {
    axum::Json(s.config.client_config.clone()).into_response()
}

async fn readyz(State(s): State<AppState>) -> Response {
    if (s.ready)().await {
        axum::Json(json!({ "status": "ready" })).into_response()
    } else {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not ready",
            "The database is not answering.",
        )
        .into_response()
    }
}

async fn register(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Result<Response> {
    s.limiter.check("register", addr.ip())?;
    let b = Body::parse(&body)?;
    let mut v = Validator::new();
    let fields = [
        "account_number",
        "first_name",
        "last_name",
        "date_of_birth",
        "ssn",
        "email",
        "username",
        "password",
        "language",
    ];
    b.only(&fields, &mut v);
    let mut get = |f: &str| b.str(f, &mut v).unwrap_or_default();
    let form = RegistrationForm {
        account_number: get("account_number"),
        first_name: get("first_name"),
        last_name: get("last_name"),
        date_of_birth: get("date_of_birth"),
        ssn: get("ssn"),
        email: get("email"),
        username: get("username"),
        password: get("password"),
        language: b.opt_str("language", &mut v).unwrap_or_default(),
    };
    if !v.is_ok() {
        return Err(v
            .finish::<()>(None)
            .err()
            .map(Problem::from)
            .unwrap_or_else(|| Problem::malformed("invalid")));
    }
    let pending = s.portal.register(&form).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(json!({ "account_id": pending.account_id, "email": pending.email_masked, "next": "confirm the code sent by email" }))).into_response())
}

fn account_id(raw: &str) -> Result<AccountId> {
    uuid::Uuid::parse_str(raw)
        .map(AccountId)
        .map_err(|_| Problem::not_found("registration"))
}

async fn confirm_registration(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    s.limiter.check("confirm", addr.ip())?;
    let b = Body::parse(&body)?;
    let mut v = Validator::new();
    b.only(&["code"], &mut v);
    let code = b.str("code", &mut v);
    let code = v.finish(code)?;
    let grant = s.portal.confirm_email(account_id(&id)?, &code).await?;
    Ok(session_response(
        &s,
        &grant,
        StatusCode::CREATED,
        json!({ "account_id": id }),
    ))
}

async fn resend_code(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Result<Response> {
    s.limiter.check("confirm", addr.ip())?;
    s.portal.resend_email_code(account_id(&id)?).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn login(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Result<Response> {
    s.limiter.check("login", addr.ip())?;
    let b = Body::parse(&body)?;
    let mut v = Validator::new();
    b.only(&["username", "password"], &mut v);
    let username = b.str("username", &mut v);
    let password = b.str("password", &mut v);
    let (username, password) = v.finish(username.zip(password))?;
    let LoginOutcome::LoggedIn(grant) = s.portal.login(&username, &password).await?;
    Ok(session_response(&s, &grant, StatusCode::CREATED, json!({})))
}

async fn logout(State(s): State<AppState>, method: Method, headers: HeaderMap) -> Result<Response> {
    principal(&s, &method, &headers).await?;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
        .or_else(|| cookie(&headers, SESSION_COOKIE))
        .unwrap_or_default();
    s.portal.logout(&token).await?;
    let mut r = StatusCode::NO_CONTENT.into_response();
    for name in [SESSION_COOKIE, CSRF_COOKIE] {
        if let Ok(v) = HeaderValue::from_str(&format!("{name}=; Path=/; Max-Age=0")) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    Ok(r)
}

async fn request_reset(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Result<Response> {
    s.limiter.check("reset", addr.ip())?;
    let b = Body::parse(&body)?;
    let mut v = Validator::new();
    b.only(&["identifier"], &mut v);
    let id = b.str("identifier", &mut v);
    let id = v.finish(id)?;
    s.portal.request_password_reset(&id).await?;
    // The same answer whether or not the account exists.
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(
            json!({ "message": "If an account matches, we sent a link to reset the password." }),
        ),
    )
        .into_response())
}

async fn complete_reset(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Result<Response> {
    s.limiter.check("reset", addr.ip())?;
    let b = Body::parse(&body)?;
    let mut v = Validator::new();
    b.only(&["token", "password"], &mut v);
    let token = b.str("token", &mut v);
    let password = b.str("password", &mut v);
    let (token, password) = v.finish(token.zip(password))?;
    s.portal.complete_password_reset(&token, &password).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) fn summary_json(s: &AccountSummary) -> Value {
    json!({
        "amount_due": s.amount_due,
        "open_total": s.open_total,
        "credit": s.credit,
        "next_due_date": s.next_due_date,
        "enrollments": s.enrollments,
        "pending_transfers": s.pending_transfers,
        "autopay_active": s.autopay_active,
        "active_plan": s.active_plan,
    })
}

async fn account(State(s): State<AppState>, Member(id): Member) -> Result<Response> {
    let a = s.portal.account(id).await?;
    let summary = a.summary(
        &s.portal.config().delinquency,
        s.portal.deps().clock.today(),
    );
    let m = a.member.as_ref();
    Ok(axum::Json(json!({
        "account_id": a.id,
        "account_number": a.number,
        "name": a.holder.full_name(),
        "ssn": format!("***-**-{}", a.holder.ssn_last4),
        "username": m.map(|m| m.username.to_string()),
        "email": m.map(|m| m.email.to_string()),
        "language": m.map(|m| m.language.code()),
        "summary": summary_json(&summary),
    }))
    .into_response())
}

async fn bills(State(s): State<AppState>, Member(id): Member) -> Result<Response> {
    let a = s.portal.account(id).await?;
    let list: Vec<Value> = a
        .bill_statuses()
        .into_iter()
        .map(|(b, status)| {
            json!({
                "id": b.id, "kind": b.kind, "coverage_month": b.coverage_month, "amount": b.amount,
                "paid": b.allocated, "open": b.open_amount(), "due_date": b.due_date, "status": status,
                "enrollment_id": b.enrollment_id,
            })
        })
        .collect();
    Ok(axum::Json(json!({ "bills": list })).into_response())
}

async fn methods(State(s): State<AppState>, Member(id): Member) -> Result<Response> {
    let a = s.portal.account(id).await?;
    let list: Vec<Value> = a
        .methods
        .iter()
        .filter(|m| m.removed_at.is_none())
        .map(|m| json!({ "id": m.id, "details": m.details, "label": m.details.masked(), "added_at": m.added_at }))
        .collect();
    Ok(axum::Json(json!({ "payment_methods": list })).into_response())
}

pub(crate) fn token_field(raw: Option<String>, v: &mut Validator) -> Option<GatewayToken> {
    raw.and_then(|t| v.check("token", GatewayToken::parse(&t)))
}

async fn add_method(
    State(s): State<AppState>,
    Member(id): Member,
    body: Bytes,
) -> Result<Response> {
    let b = Body::parse(&body)?;
    let mut v = Validator::new();
    b.only(&["token"], &mut v);
    let raw = b.str("token", &mut v);
    let token = token_field(raw, &mut v);
    let token = v.finish(token)?;
    let m = s.portal.add_payment_method(id, token).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "id": m.id, "details": m.details, "label": m.details.masked() })),
    )
        .into_response())
}

async fn remove_method(
    State(s): State<AppState>,
    Member(id): Member,
    Path(mid): Path<String>,
) -> Result<Response> {
    let mid = uuid::Uuid::parse_str(&mid)
        .map(MethodId)
        .map_err(|_| Problem::not_found("payment method"))?;
    s.portal.remove_payment_method(id, mid).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Reads `amount` and the method (`payment_method_id`, or `token` with optional `save`).
fn payment_body(b: &Body) -> std::result::Result<(Option<Money>, PayWith), ValidationErrors> {
    let mut v = Validator::new();
    b.only(&["amount", "payment_method_id", "token", "save"], &mut v);
    let amount = b
        .opt_str("amount", &mut v)
        .and_then(|a| v.check("amount", Money::parse_positive(&a)));
    let method_id = b.opt_str("payment_method_id", &mut v);
    let token = b.opt_str("token", &mut v);
    let save = b.opt_bool("save", &mut v).unwrap_or(false);
    let with = match (method_id, token) {
        (Some(id), None) => match uuid::Uuid::parse_str(&id) {
            Ok(u) => Some(PayWith::Saved(MethodId(u))),
            Err(_) => {
                v.push(FieldError::new(
                    "payment_method_id",
                    "format",
                    "choose one of your saved payment methods",
                ));
                None
            }
        },
        (None, Some(t)) => token_field(Some(t), &mut v).map(|token| PayWith::Token { token, save }),
        (Some(_), Some(_)) => {
            v.push(FieldError::new(
                "payment_method_id",
                "one_method",
                "send either payment_method_id or token, not both",
            ));
            None
        }
        (None, None) => {
            v.push(FieldError::new(
                "payment_method_id",
                "required",
                "choose a payment method",
            ));
            None
        }
    };
    v.finish(with.map(|w| (amount, w)))
}

pub(crate) fn payment_json(p: &Payment) -> Value {
    json!({
        "id": p.id,
        "reference": p.reference,
        "amount": p.amount,
        "refunded": p.refunded,
        "status": p.status.name(),
        "state": p.status,
        "method": p.instrument.masked(),
        "initiated_on": p.initiated_on,
        "initiated_at": p.initiated_at,
        "expected_settlement": p.expected_settlement,
        "decline_reason": match p.status {
            portal_core::payment::PaymentStatus::Failed { reason } => Some(json!({ "code": reason.code(), "message": reason.plain_language() })),
            _ => None,
        },
        "allocations": p.allocations,
        "history": p.history.iter().map(|t| json!({ "at": t.at, "to": t.to.name(), "cause": t.cause })).collect::<Vec<_>>(),
    })
}

async fn preview_payment(
    State(s): State<AppState>,
    Member(id): Member,
    body: Bytes,
) -> Result<Response> {
    let (amount, with) = payment_body(&Body::parse(&body)?)?;
    let p = s.portal.preview_payment(id, amount, &with).await?;
    Ok(axum::Json(json!({
        "amount": p.amount, "amount_due": p.amount_due, "due_date": p.due_date, "method": p.method,
        "bank_transfer": p.bank_transfer, "balance_after": p.balance_after,
    }))
    .into_response())
}

async fn make_payment(
    State(s): State<AppState>,
    Member(id): Member,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(key) = key else {
        return Err(Problem::invalid(ValidationErrors::one(FieldError::new(
            "Idempotency-Key",
            "required",
            "send an Idempotency-Key header (any unique value per payment)",
        ))));
    };
    let (amount, with) = payment_body(&Body::parse(&body)?)?;
    let receipt = s
        .portal
        .make_payment(MakePayment {
            account_id: id,
            amount,
            method: with,
            idempotency_key: key,
        })
        .await?;
    let p = receipt.payment();
    let status = if receipt.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let mut body = payment_json(p);
    if let Some(o) = body.as_object_mut() {
        o.insert("amount_due_after".into(), json!(receipt.amount_due_after));
        o.insert("replayed".into(), json!(receipt.replayed));
    }
    Ok((status, axum::Json(body)).into_response())
}

async fn get_payment(
    State(s): State<AppState>,
    Member(id): Member,
    Path(pid): Path<String>,
) -> Result<Response> {
    let pid = uuid::Uuid::parse_str(&pid)
        .map(PaymentId)
        .map_err(|_| Problem::not_found("payment"))?;
    Ok(axum::Json(payment_json(&s.portal.payment(id, pid).await?)).into_response())
}

async fn payment_by_reference(
    State(s): State<AppState>,
    Member(id): Member,
    Path(r): Path<String>,
) -> Result<Response> {
    let reference = PaymentReference::parse(&r)
        .map_err(|e| Problem::invalid(ValidationErrors::one(FieldError::from(e))))?;
    let (owner, p) = s.portal.payment_by_reference(&reference).await?;
    if owner != id {
        return Err(Problem::not_found("payment"));
    }
    Ok(axum::Json(payment_json(&p)).into_response())
}

#[derive(serde::Deserialize)]
struct ListQuery {
    status: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

async fn list_payments(
    State(s): State<AppState>,
    Member(id): Member,
    Query(q): Query<ListQuery>,
) -> Result<Response> {
    let mut v = Validator::new();
    let date = |field: &str, raw: &Option<String>, v: &mut Validator| {
        raw.as_ref()
            .and_then(|d| match chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d") {
                Ok(x) => Some(x),
                Err(_) => {
                    v.push(FieldError::new(field, "format", "use YYYY-MM-DD"));
                    None
                }
            })
    };
    let from = date("from", &q.from, &mut v);
    let to = date("to", &q.to, &mut v);
    let status = q.status.clone();
    if let Some(st) = &status {
        if !["pending", "succeeded", "failed", "returned", "refunded"].contains(&st.as_str()) {
            v.push(FieldError::new(
                "status",
                "unknown",
                "use pending, succeeded, failed, returned or refunded",
            ));
        }
    }
    let limit = match q.limit.as_deref().map(str::parse::<usize>) {
        None => 50,
        Some(Ok(n)) if (1..=200).contains(&n) => n,
        Some(_) => {
            v.push(FieldError::new(
                "limit",
                "out_of_range",
                "limit must be 1 to 200",
            ));
            50
        }
    };
    let cursor: Option<DateTime<Utc>> = match q.cursor.as_deref() {
        None => None,
        Some(c) => match DateTime::parse_from_rfc3339(c) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                v.push(FieldError::new(
                    "cursor",
                    "format",
                    "use the next_cursor of the previous page",
                ));
                None
            }
        },
    };
    v.finish(Some(()))?;
    let a = s.portal.account(id).await?;
    let mut list: Vec<&Payment> = a
        .ledger
        .payments
        .iter()
        .filter(|p| status.as_deref().is_none_or(|st| p.status.name() == st))
        .filter(|p| {
            from.is_none_or(|f| p.initiated_on >= f) && to.is_none_or(|t| p.initiated_on <= t)
        })
        .filter(|p| cursor.is_none_or(|c| p.initiated_at < c))
        .collect();
    list.sort_by_key(|p| std::cmp::Reverse(p.initiated_at));
    let next = if list.len() > limit {
        list.get(limit - 1).map(|p| p.initiated_at)
    } else {
        None
    };
    let page: Vec<Value> = list.into_iter().take(limit).map(payment_json).collect();
    Ok(axum::Json(json!({ "payments": page, "next_cursor": next })).into_response())
}

async fn webhook(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response> {
    let sig = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    let event = (s.webhooks)(sig, &body)
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "Webhook refused", e))?;
    match s.portal.record_gateway_event(event).await {
        Ok(_) => Ok(axum::Json(json!({ "received": true })).into_response()),
        // Not known yet (the payment is still being saved): the gateway retries later.
        Err(portal_core::services::ServiceError::NotFound(_)) => Err(Problem::not_found("payment")),
        Err(e) => Err(e.into()),
    }
}

/// Logs each request: method, path without the query, status and time taken. Never bodies,
/// headers or query strings, which may carry personal data or tokens.
async fn access_log(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let ms = started.elapsed().as_millis();
    if status >= 500 {
        tracing::warn!(%method, %path, status, ms, "request");
    } else {
        tracing::info!(%method, %path, status, ms, "request");
    }
    response
}

/// Whether a request may change state from where it comes: a browser says where a request
/// comes from (`Sec-Fetch-Site`, `Origin`), and only this site's own pages may send one. A
/// request that says nothing (an API client, the gateway's webhooks) is judged by its
/// credentials alone.
fn from_this_site(headers: &HeaderMap) -> bool {
    // A browser that sends Sec-Fetch-Site says it outright. (Its `Origin` can be `null` on
    // this site's own form posts, as some pages' referrer policy asks.)
    if let Some(site) = headers.get("sec-fetch-site") {
        return matches!(site.to_str(), Ok("same-origin" | "none"));
    }
    match headers.get(header::ORIGIN).map(HeaderValue::to_str) {
        None => true,
        Some(Ok(origin)) => {
            let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
            let authority = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            authority.is_some() && authority == host
        }
        Some(Err(_)) => false,
    }
}

/// Whether a body is declared JSON (`application/json` or `application/*+json`).
fn declared_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Refuses, before any handler runs, a state-changing request from another site (403), and
/// an API body not declared JSON (415): a cross-site form can send `text/plain` that parses as
/// JSON, which would log a victim into an attacker's account.
async fn request_guard(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let changes_state = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if changes_state {
        if !from_this_site(req.headers()) {
            return Problem::new(
                StatusCode::FORBIDDEN,
                "Cross-site request",
                "This request came from another site and was refused.",
            )
            .into_response();
        }
        let api = req.uri().path().starts_with("/api/");
        let h = req.headers();
        let has_body = h.contains_key(header::TRANSFER_ENCODING)
            || (h.get(header::CONTENT_LENGTH))
                .and_then(|v| v.to_str().ok())
                .is_some_and(|n| n.trim() != "0");
        if api && has_body && !declared_json(req.headers()) {
            return Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported media type",
                "Send the body as JSON, with Content-Type: application/json.",
            )
            .into_response();
        }
    }
    next.run(req).await
}

async fn fallback() -> Problem {
    Problem::not_found("endpoint")
}

/// The API routes with security headers, a body limit and a request timeout.
pub fn router(state: AppState) -> Router {
    let mut api = Router::new();
    for e in routes::endpoints() {
        // Methods on the same path merge into one route.
        api = api.route(e.path, (e.handler)());
    }
    let limit = state.config.body_limit;
    let timeout = state.config.request_timeout;
    // Served over HTTPS (secure cookies): browsers are told to use nothing else, for two years.
    let hsts = (state.config.secure_cookies)
        .then(|| HeaderValue::from_static("max-age=63072000; includeSubDomains"));
    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(web::routes())
        .fallback(fallback)
        .with_state(state)
        .layer(axum::middleware::from_fn(request_guard))
        .layer(axum::middleware::from_fn(access_log))
        .layer(DefaultBodyLimit::max(limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("x-content-type-options"),
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("x-frame-options"),
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            // Nothing leaves for other sites; this site's own requests carry their origin,
            // which browsers without Sec-Fetch-Site need for `request_guard` to let them in.
            HeaderName::from_static("referrer-policy"),
            HeaderValue::from_static("same-origin"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            HeaderName::from_static("content-security-policy"),
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            move |_: &Response| hsts.clone(),
        ))
}

/// Serves the router on a listener until `shutdown` resolves, finishing in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limiter_counts_per_route_and_address() {
        let limiter = RateLimiter::new(3);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..3 {
            assert!(limiter.check("login", a).is_ok());
        }
        assert!(
            limiter.check("login", a).is_err(),
            "the fourth in a minute is refused"
        );
        assert!(
            limiter.check("login", b).is_ok(),
            "other addresses are not affected"
        );
        assert!(
            limiter.check("reset", a).is_ok(),
            "other routes are counted apart"
        );
    }

    #[test]
    fn csrf_tokens_belong_to_their_session() {
        assert_eq!(csrf_for("abc"), csrf_for("abc"));
        assert_ne!(csrf_for("abc"), csrf_for("abd"));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; portal_session=tok; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("tok"));
        assert_eq!(cookie(&h, "missing"), None);
    }
}
