//! The member web portal: server-rendered pages (askama templates compiled into the binary)
//! over the same use cases as the JSON API, in English and Spanish.
//!
//! Sessions are the API's `HttpOnly` cookie. Every form carries a CSRF token: for a signed-in
//! member it is derived from the session (as the API's header is); before logging in it is a
//! random value also set as a cookie (double submit). Card and bank details never reach these
//! handlers: the payment page's script sends them straight to the gateway's tokenization
//! endpoint and submits only the token.

mod support;
mod text;

use crate::{
    AppState, CSRF_COOKIE, SESSION_COOKIE, cookie, csrf_for, session_cookies, token_field,
};
use askama::Template;
use axum::Router;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::NaiveDate;
use portal_core::account::{Account, Principal};
use portal_core::delinquency::CoverageStatus;
use portal_core::error::{FieldError, Validator};
use portal_core::identity::Language;
use portal_core::ids::{AccountId, AgentId, MandateId, MethodId, PaymentId};
use portal_core::locale;
use portal_core::mandate::{AmountRule, ConsentSource, Frequency, MandateStatus};
use portal_core::money::Money;
use portal_core::payment::{Payment, PaymentStatus};
use portal_core::reference::PaymentReference;
use portal_core::services::{
    AutopayForm, GuestMatch, GuestPayForm, LoginOutcome, MakePayment, PayWith, ServiceError,
};
use std::collections::HashMap;
use std::net::SocketAddr;
pub use text::Text;

const LANG_COOKIE: &str = "portal_lang";

/// The page routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_page).post(login_submit))
        .route("/logout", post(logout_submit))
        .route("/dashboard", get(dashboard))
        .route("/pay", get(pay_page))
        .route("/pay/review", post(pay_review))
        .route("/pay/submit", post(pay_submit))
        .route("/payments/{id}", get(payment_page))
        .route("/help", get(help))
        .route("/language", get(language))
        .route("/static/portal.css", get(css))
        .route("/static/pay.js", get(pay_js))
        .route("/static/password.js", get(password_js))
        .route("/register", get(register_page).post(register_submit))
        .route("/register/{id}/verify", post(verify_submit))
        .route("/register/{id}/resend", post(resend_submit))
        .route("/forgot-password", get(forgot_page).post(forgot_submit))
        .route("/reset-password", get(reset_page).post(reset_submit))
        .route("/payments", get(history))
        .route("/payments.csv", get(history_csv))
        .route("/settings/autopay", get(autopay_page))
        .route("/settings/autopay/review", post(autopay_review))
        .route("/settings/autopay/activate", post(autopay_activate))
        .route("/settings/autopay/{id}/status", post(autopay_status))
        .route("/guest", get(guest_page).post(guest_identify))
        .route("/guest/pay", post(guest_submit))
        .route("/status", get(status_page))
        .merge(support::routes())
}

/// One field's error as the page shows it.
#[derive(Debug, Clone)]
pub(crate) struct PageError {
    /// The input's id (empty for a page-level error).
    pub field: String,
    /// What to fix.
    pub message: String,
}

/// What every page knows about the request.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub t: &'static Text,
    pub lang: Language,
    pub csrf: String,
    pub path: String,
    pub signed_in: bool,
    /// A support agent is signed in.
    pub agent_in: bool,
    pub errors: Vec<PageError>,
    /// A fresh pre-login CSRF token to set as a cookie.
    new_csrf: Option<String>,
    /// The session token, when the visitor has a valid one.
    session: Option<String>,
    /// The signed-in member.
    member: Option<AccountId>,
    /// The signed-in support agent.
    agent: Option<AgentId>,
}

impl Ctx {
    /// The error of one field, if any.
    pub fn error(&self, field: &str) -> Option<&str> {
        self.errors
            .iter()
            .find(|e| e.field == field)
            .map(|e| e.message.as_str())
    }

    /// Whether a field has an error.
    pub fn has_error(&self, field: &str) -> bool {
        self.error(field).is_some()
    }

    fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(PageError {
            field: field.to_owned(),
            message: message.into(),
        });
    }

    /// The core's field errors, each on its input (`rename` maps core field names to input ids).
    fn fail_fields(&mut self, errors: &[FieldError], rename: &[(&str, &str)]) {
        for e in errors {
            let field = rename
                .iter()
                .find(|(from, _)| *from == e.field)
                .map_or(e.field.as_str(), |(_, to)| *to);
            self.fail(field, e.message.clone());
        }
    }

    fn money(&self, m: Money) -> String {
        locale::money(m)
    }

    fn date(&self, d: NaiveDate) -> String {
        locale::date(self.lang, d)
    }
}

/// Resolves the visitor: session, language and CSRF token.
async fn visit(s: &AppState, headers: &HeaderMap, uri: &Uri) -> Ctx {
    let mut session = cookie(headers, SESSION_COOKIE).filter(|t| !t.is_empty() && t.len() <= 256);
    let mut member = None;
    let mut agent = None;
    if let Some(token) = &session {
        match s.portal.authenticate(token).await {
            Ok(Principal::Member { account_id }) => member = Some(account_id),
            Ok(Principal::Agent { agent_id }) => agent = Some(agent_id),
            Err(_) => session = None,
        }
    }
    let chosen = cookie(headers, LANG_COOKIE).and_then(|l| Language::parse(&l).ok());
    let lang = match chosen {
        Some(l) => l,
        None => match member {
            Some(id) => s
                .portal
                .account(id)
                .await
                .ok()
                .and_then(|a| a.member.map(|m| m.language))
                .unwrap_or(browser_language(headers)),
            None => browser_language(headers),
        },
    };
    let (csrf, new_csrf) = match &session {
        Some(token) => (csrf_for(token), None),
        None => match cookie(headers, CSRF_COOKIE).filter(|c| plausible_token(c)) {
            Some(c) => (c, None),
            None => {
                let fresh = s.portal.deps().ids.secret_token().expose().to_owned();
                (fresh.clone(), Some(fresh))
            }
        },
    };
    Ctx {
        t: Text::of(lang),
        lang,
        csrf,
        path: uri.path().to_owned(),
        signed_in: member.is_some(),
        agent_in: agent.is_some(),
        errors: Vec::new(),
        new_csrf,
        session,
        member,
        agent,
    }
}

fn plausible_token(t: &str) -> bool {
    (16..=128).contains(&t.len())
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn browser_language(headers: &HeaderMap) -> Language {
    let wants_spanish = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|first| first.trim().to_ascii_lowercase().starts_with("es"));
    if wants_spanish {
        Language::Es
    } else {
        Language::En
    }
}

/// Whether a submitted form carries this visitor's CSRF token.
fn csrf_ok(c: &Ctx, headers: &HeaderMap, form: &HashMap<String, String>) -> bool {
    let Some(sent) = form.get("csrf") else {
        return false;
    };
    match &c.session {
        Some(_) => *sent == c.csrf,
        None => cookie(headers, CSRF_COOKIE).is_some_and(|k| k == *sent) && *sent == c.csrf,
    }
}

/// The page's Content-Security-Policy: scripts and styles from the portal only; the payment
/// page's script may also talk to the gateway's tokenization endpoint.
fn csp(gateway: Option<&str>) -> String {
    let connect = gateway.map_or_else(|| "'self'".to_owned(), |g| format!("'self' {g}"));
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src {connect}; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
}

/// Renders a template into an HTML response with the page headers.
fn page(
    s: &AppState,
    c: &Ctx,
    status: StatusCode,
    html: Result<String, askama::Error>,
) -> Response {
    let body = match html {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "page rendering failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, "page rendering failed").into_response();
        }
    };
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response();
    let policy = csp(gateway_url(s).as_deref());
    if let Ok(v) = HeaderValue::from_str(&policy) {
        r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    if let Some(fresh) = &c.new_csrf {
        let secure = if s.config.secure_cookies {
            "; Secure"
        } else {
            ""
        };
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{CSRF_COOKIE}={fresh}; Path=/; SameSite=Lax{secure}"
        )) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

fn gateway_url(s: &AppState) -> Option<String> {
    s.config
        .client_config
        .get("gateway_url")
        .and_then(|v| v.as_str())
        .map(|g| g.trim_end_matches('/').to_owned())
}

fn publishable_key(s: &AppState) -> String {
    s.config
        .client_config
        .get("publishable_key")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned()
}

fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

/// A page that says one thing and links back.
#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    c: &'a Ctx,
    title: &'a str,
    message: &'a str,
    back_href: &'a str,
    back_label: &'a str,
}

fn message(s: &AppState, c: &Ctx, status: StatusCode, title: &str, text: &str) -> Response {
    let (back_href, back_label) = if c.signed_in {
        ("/dashboard", c.t.back_to_dashboard)
    } else {
        ("/", c.t.portal_name)
    };
    let html = MessagePage {
        c,
        title,
        message: text,
        back_href,
        back_label,
    }
    .render();
    page(s, c, status, html)
}

/// What a failed use case shows: its field errors on the form, or one plain message.
fn service_failure(s: &AppState, c: &Ctx, e: &ServiceError) -> Response {
    match e {
        ServiceError::NotFound(_) => {
            message(s, c, StatusCode::NOT_FOUND, c.t.not_found, c.t.not_found)
        }
        ServiceError::Unauthenticated => to_login(),
        ServiceError::Store(_) | ServiceError::Internal(_) | ServiceError::Gateway(_) => {
            tracing::warn!(error = %e, "page request failed");
            message(
                s,
                c,
                StatusCode::SERVICE_UNAVAILABLE,
                c.t.something_failed,
                c.t.something_failed,
            )
        }
        other => message(
            s,
            c,
            StatusCode::UNPROCESSABLE_ENTITY,
            c.t.error_summary,
            &other.to_string(),
        ),
    }
}

fn form_expired(s: &AppState, c: &Ctx) -> Response {
    message(
        s,
        c,
        StatusCode::FORBIDDEN,
        c.t.form_expired,
        c.t.form_expired,
    )
}

// ---- Home, help, language, static files ----

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage<'a> {
    c: &'a Ctx,
    title: &'a str,
}

async fn home(State(s): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let c = visit(&s, &headers, &uri).await;
    let html = HomePage {
        c: &c,
        title: c.t.home_title,
    }
    .render();
    page(&s, &c, StatusCode::OK, html)
}

#[derive(Template)]
#[template(path = "help.html")]
struct HelpPage<'a> {
    c: &'a Ctx,
    title: &'a str,
}

async fn help(State(s): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let c = visit(&s, &headers, &uri).await;
    let html = HelpPage {
        c: &c,
        title: c.t.help_title,
    }
    .render();
    page(&s, &c, StatusCode::OK, html)
}

#[derive(serde::Deserialize)]
struct LanguageQuery {
    to: Option<String>,
    back: Option<String>,
}

/// Switches the page language (a cookie) and returns to the page the visitor was on.
async fn language(State(s): State<AppState>, Query(q): Query<LanguageQuery>) -> Response {
    let lang =
        q.to.as_deref()
            .and_then(|l| Language::parse(l).ok())
            .unwrap_or(Language::En);
    // Only paths of this site: never an open redirect.
    let back = q
        .back
        .filter(|b| b.starts_with('/') && !b.starts_with("//") && !b.contains('\\'))
        .unwrap_or_else(|| "/".to_owned());
    let mut r = Redirect::to(&back).into_response();
    let secure = if s.config.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{LANG_COOKIE}={}; Path=/; SameSite=Lax; Max-Age=31536000{secure}",
        lang.code()
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../static/portal.css"),
    )
        .into_response()
}

async fn pay_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../static/pay.js"),
    )
        .into_response()
}

// ---- Log in, log out ----

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    username: &'a str,
    message: Option<String>,
}

async fn login_page(State(s): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let c = visit(&s, &headers, &uri).await;
    if c.signed_in {
        return Redirect::to("/dashboard").into_response();
    }
    let html = LoginPage {
        c: &c,
        title: c.t.login_title,
        username: "",
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
    let mut c = visit(&s, &headers, &uri).await;
    let Ok(Form(form)) = form else {
        return form_expired(&s, &c);
    };
    if !csrf_ok(&c, &headers, &form) {
        return form_expired(&s, &c);
    }
    let username = form.get("username").map(|u| u.trim()).unwrap_or_default();
    let password = form.get("password").map(String::as_str).unwrap_or_default();
    let mut message = None;
    if s.limiter.check("login", addr.ip()).is_err() {
        message = Some(c.t.too_many_attempts.to_owned());
    } else if username.is_empty() || password.is_empty() {
        if username.is_empty() {
            c.fail("username", format!("{}: {}", c.t.username, c.t.required));
        }
        if password.is_empty() {
            c.fail("password", format!("{}: {}", c.t.password, c.t.required));
        }
    } else {
        match s.portal.login(username, password).await {
            Ok(LoginOutcome::LoggedIn(grant)) => {
                let mut r = Redirect::to("/dashboard").into_response();
                for v in session_cookies(&s, &grant) {
                    r.headers_mut().append(header::SET_COOKIE, v);
                }
                return r;
            }
            Err(ServiceError::InvalidCredentials) => {
                message = Some(c.t.wrong_credentials.to_owned());
            }
            Err(ServiceError::Locked { until }) => {
                let local = until.with_timezone(&chrono::Local);
                message = Some(format!(
                    "{} {} {}.",
                    c.t.locked_out,
                    c.date(local.date_naive()),
                    local.format("%H:%M")
                ));
            }
            Err(ServiceError::EmailNotVerified { .. }) => {
                message = Some(c.t.email_not_confirmed.to_owned());
            }
            Err(ServiceError::Invalid(v)) => c.fail_fields(&v.0, &[]),
            Err(e) => return service_failure(&s, &c, &e),
        }
    }
    let html = LoginPage {
        c: &c,
        title: c.t.login_title,
        username,
        message,
    }
    .render();
    page(&s, &c, StatusCode::UNPROCESSABLE_ENTITY, html)
}

async fn logout_submit(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let c = visit(&s, &headers, &uri).await;
    let Ok(Form(form)) = form else {
        return form_expired(&s, &c);
    };
    if !csrf_ok(&c, &headers, &form) {
        return form_expired(&s, &c);
    }
    if let Some(token) = &c.session {
        if let Err(e) = s.portal.logout(token).await {
            return service_failure(&s, &c, &e);
        }
    }
    let mut r = Redirect::to("/").into_response();
    for name in [SESSION_COOKIE, CSRF_COOKIE] {
        if let Ok(v) = HeaderValue::from_str(&format!("{name}=; Path=/; Max-Age=0")) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

// ---- Dashboard ----

struct Alert {
    kind: &'static str,
    text: String,
}

struct CoverageRow {
    plan: String,
    share: String,
    status: String,
}

struct PaymentRow {
    id: PaymentId,
    date: String,
    amount: String,
    method: String,
    status: String,
    reference: String,
}

struct DashboardView {
    name: String,
    account_number: String,
    has_due: bool,
    amount_due: String,
    due_date: Option<String>,
    credit: Option<String>,
    autopay_on: bool,
    alerts: Vec<Alert>,
    coverage: Vec<CoverageRow>,
    payments: Vec<PaymentRow>,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    v: DashboardView,
}

fn status_word(c: &Ctx, p: &Payment) -> String {
    match p.status {
        PaymentStatus::Pending { .. } => c.t.payment_status_pending,
        PaymentStatus::Succeeded => c.t.payment_status_succeeded,
        PaymentStatus::Failed { .. } => c.t.payment_status_failed,
        PaymentStatus::Returned { .. } => c.t.payment_status_returned,
        PaymentStatus::Refunded { .. } => c.t.payment_status_refunded,
    }
    .to_owned()
}

fn dashboard_view(s: &AppState, c: &Ctx, a: &Account) -> DashboardView {
    let today = s.portal.deps().clock.today();
    let summary = a.summary(&s.portal.config().delinquency, today);
    let mut alerts = Vec::new();
    let coverage = summary
        .enrollments
        .iter()
        .map(|e| {
            let status = match &e.status {
                CoverageStatus::PendingBinder { due_date } => {
                    format!("{} {}", c.t.status_pending_binder, c.date(*due_date))
                }
                CoverageStatus::Active => match e.paid_through {
                    Some(d) => {
                        format!("{} · {} {}", c.t.status_active, c.t.paid_through, c.date(d))
                    }
                    None => c.t.status_active.to_owned(),
                },
                CoverageStatus::InGrace { grace } => {
                    alerts.push(Alert {
                        kind: "past-due",
                        text: format!(
                            "{} {} {}.",
                            c.t.alert_past_due,
                            c.t.alert_grace_ends,
                            c.date(grace.grace_ends_on)
                        ),
                    });
                    format!(
                        "{} · {} {}",
                        c.t.status_in_grace,
                        c.t.alert_grace_ends,
                        c.date(grace.grace_ends_on)
                    )
                }
                CoverageStatus::Terminated {
                    effective,
                    reinstatable_until,
                } => {
                    alerts.push(Alert {
                        kind: "terminated",
                        text: format!("{} {}.", c.t.alert_terminated, c.date(*reinstatable_until)),
                    });
                    format!("{} {}", c.t.status_terminated, c.date(*effective))
                }
            };
            CoverageRow {
                plan: e.plan_name.clone(),
                share: c.money(e.premium_share),
                status,
            }
        })
        .collect();
    // The latest payment's trouble, if its outcome is the latest word.
    let mut recent: Vec<&Payment> = a.ledger.payments.iter().collect();
    recent.sort_by_key(|p| std::cmp::Reverse(p.initiated_at));
    if let Some(p) = recent.first() {
        match p.status {
            PaymentStatus::Failed { reason } => alerts.push(Alert {
                kind: "declined",
                text: format!(
                    "{} {} ({})",
                    c.t.alert_declined,
                    locale::decline_reason(c.lang, reason),
                    p.reference
                ),
            }),
            PaymentStatus::Returned { code } => alerts.push(Alert {
                kind: "returned",
                text: format!(
                    "{} {} ({})",
                    c.t.alert_returned,
                    locale::return_reason(c.lang, code),
                    p.reference
                ),
            }),
            _ => {}
        }
    }
    for t in &summary.pending_transfers {
        alerts.push(Alert {
            kind: "pending",
            text: format!(
                "{} {} ({}, {})",
                c.t.alert_pending_transfer,
                t.expected_settlement.map(|d| c.date(d)).unwrap_or_default(),
                c.money(t.amount),
                t.reference
            ),
        });
    }
    let payments = recent
        .iter()
        .take(5)
        .map(|p| PaymentRow {
            id: p.id,
            date: c.date(p.initiated_on),
            amount: c.money(p.amount),
            method: p.instrument.masked(),
            status: status_word(c, p),
            reference: p.reference.to_string(),
        })
        .collect();
    DashboardView {
        name: a.holder.first_name.to_string(),
        account_number: a.number.to_string(),
        has_due: summary.amount_due.cents() > 0,
        amount_due: c.money(summary.amount_due),
        due_date: summary.next_due_date.map(|d| c.date(d)),
        credit: (summary.credit.cents() > 0).then(|| c.money(summary.credit)),
        autopay_on: summary.autopay_active,
        alerts,
        coverage,
        payments,
    }
}

async fn dashboard(State(s): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let c = visit(&s, &headers, &uri).await;
    let Some(id) = c.member else {
        return to_login();
    };
    let a = match s.portal.account(id).await {
        Ok(a) => a,
        Err(e) => return service_failure(&s, &c, &e),
    };
    let v = dashboard_view(&s, &c, &a);
    let html = DashboardPage {
        c: &c,
        title: c.t.dashboard,
        v,
    }
    .render();
    page(&s, &c, StatusCode::OK, html)
}

// ---- Make a Payment ----

struct MethodChoice {
    id: String,
    label: String,
}

#[derive(Template)]
#[template(path = "pay.html")]
struct PayPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    amount: String,
    amount_due: String,
    due_date: Option<String>,
    methods: Vec<MethodChoice>,
    chosen: String,
    gateway_url: String,
    publishable_key: String,
}

fn pay_form(s: &AppState, c: &Ctx, a: &Account, amount: Option<&str>, chosen: &str) -> Response {
    let summary = a.summary(
        &s.portal.config().delinquency,
        s.portal.deps().clock.today(),
    );
    let methods: Vec<MethodChoice> = a
        .methods
        .iter()
        .filter(|m| m.removed_at.is_none())
        .map(|m| MethodChoice {
            id: m.id.to_string(),
            label: m.details.masked(),
        })
        .collect();
    let chosen = if chosen.is_empty() {
        methods
            .first()
            .map_or_else(|| "card".to_owned(), |m| m.id.clone())
    } else {
        chosen.to_owned()
    };
    let html = PayPage {
        c,
        title: c.t.pay_title,
        amount: amount.map_or_else(|| summary.amount_due.to_string(), str::to_owned),
        amount_due: c.money(summary.amount_due),
        due_date: summary.next_due_date.map(|d| c.date(d)),
        methods,
        chosen,
        gateway_url: gateway_url(s).unwrap_or_default(),
        publishable_key: publishable_key(s),
    }
    .render();
    let status = if c.errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    page(s, c, status, html)
}

async fn pay_page(State(s): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let c = visit(&s, &headers, &uri).await;
    let Some(id) = c.member else {
        return to_login();
    };
    match s.portal.account(id).await {
        Ok(a) => pay_form(&s, &c, &a, None, ""),
        Err(e) => service_failure(&s, &c, &e),
    }
}

/// The amount and method of a payment form; errors land on `c`.
fn read_payment(c: &mut Ctx, form: &HashMap<String, String>) -> Option<(Option<Money>, PayWith)> {
    let mut v = Validator::new();
    let amount = form
        .get("amount")
        .map(|a| a.trim().trim_start_matches('$').replace(',', ""))
        .filter(|a| !a.is_empty())
        .and_then(|a| v.check("amount", Money::parse_positive(&a)));
    let method = form.get("method").map(String::as_str).unwrap_or_default();
    let token = form.get("token").filter(|t| !t.is_empty()).cloned();
    let save = form.get("save").is_some_and(|s| s == "true");
    let with = match method {
        "card" | "bank" => match token {
            Some(t) => token_field(Some(t), &mut v).map(|token| PayWith::Token { token, save }),
            None => {
                v.push(FieldError::new("method", "required", c.t.needs_javascript));
                None
            }
        },
        "" => {
            v.push(FieldError::new("method", "required", c.t.choose_method));
            None
        }
        id => match uuid::Uuid::parse_str(id) {
            Ok(u) => Some(PayWith::Saved(MethodId(u))),
            Err(_) => {
                v.push(FieldError::new("method", "format", c.t.choose_method));
                None
            }
        },
    };
    match v.finish(with) {
        Ok(with) => Some((amount, with)),
        Err(errors) => {
            c.fail_fields(&errors.0, &[("token", "method")]);
            None
        }
    }
}

#[derive(Template)]
#[template(path = "review.html")]
struct ReviewPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    amount: String,
    amount_raw: String,
    due_date: Option<String>,
    method_label: String,
    balance_after: String,
    bank_transfer: bool,
    method: String,
    token: String,
    save: bool,
    key: String,
}

async fn pay_review(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let mut c = visit(&s, &headers, &uri).await;
    let Some(id) = c.member else {
        return to_login();
    };
    let Ok(Form(form)) = form else {
        return form_expired(&s, &c);
    };
    if !csrf_ok(&c, &headers, &form) {
        return form_expired(&s, &c);
    }
    let account = match s.portal.account(id).await {
        Ok(a) => a,
        Err(e) => return service_failure(&s, &c, &e),
    };
    let raw_amount = form.get("amount").map(String::as_str);
    let method = form.get("method").cloned().unwrap_or_default();
    let Some((amount, with)) = read_payment(&mut c, &form) else {
        return pay_form(&s, &c, &account, raw_amount, &method);
    };
    let preview = match s.portal.preview_payment(id, amount, &with).await {
        Ok(p) => p,
        Err(ServiceError::Invalid(v)) => {
            c.fail_fields(
                &v.0,
                &[("token", "method"), ("payment_method_id", "method")],
            );
            return pay_form(&s, &c, &account, raw_amount, &method);
        }
        Err(e) => return service_failure(&s, &c, &e),
    };
    let balance_after = if preview.balance_after.cents() < 0 {
        format!(
            "{} ({})",
            c.money(Money::from_cents(0)),
            c.money(Money::from_cents(-preview.balance_after.cents()))
        )
    } else {
        c.money(preview.balance_after)
    };
    let html = ReviewPage {
        c: &c,
        title: c.t.review_title,
        amount: c.money(preview.amount),
        amount_raw: preview.amount.to_string(),
        due_date: preview.due_date.map(|d| c.date(d)),
        method_label: preview.method.clone(),
        balance_after,
        bank_transfer: preview.bank_transfer,
        method,
        token: form.get("token").cloned().unwrap_or_default(),
        save: form.get("save").is_some_and(|s| s == "true"),
        // One key per reviewed payment: submitting twice charges once.
        key: s.portal.deps().ids.secret_token().expose().to_owned(),
    }
    .render();
    page(&s, &c, StatusCode::OK, html)
}

async fn pay_submit(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let mut c = visit(&s, &headers, &uri).await;
    let Some(id) = c.member else {
        return to_login();
    };
    let Ok(Form(form)) = form else {
        return form_expired(&s, &c);
    };
    if !csrf_ok(&c, &headers, &form) {
        return form_expired(&s, &c);
    }
    let key = form.get("key").filter(|k| plausible_token(k)).cloned();
    let parsed = read_payment(&mut c, &form);
    let (Some(key), Some((amount, with))) = (key, parsed) else {
        let method = form.get("method").cloned().unwrap_or_default();
        return match s.portal.account(id).await {
            Ok(a) => pay_form(&s, &c, &a, form.get("amount").map(String::as_str), &method),
            Err(e) => service_failure(&s, &c, &e),
        };
    };
    let made = s
        .portal
        .make_payment(MakePayment {
            account_id: id,
            amount,
            method: with,
            idempotency_key: format!("web:{key}"),
        })
        .await;
    match made.and_then(|r| r.payment().map(|p| p.id)) {
        Ok(pid) => Redirect::to(&format!("/payments/{pid}")).into_response(),
        Err(ServiceError::Invalid(v)) => {
            c.fail_fields(
                &v.0,
                &[("token", "method"), ("payment_method_id", "method")],
            );
            let method = form.get("method").cloned().unwrap_or_default();
            match s.portal.account(id).await {
                Ok(a) => pay_form(&s, &c, &a, form.get("amount").map(String::as_str), &method),
                Err(e) => service_failure(&s, &c, &e),
            }
        }
        Err(e) => service_failure(&s, &c, &e),
    }
}

#[derive(Template)]
#[template(path = "confirmation.html")]
struct PaymentPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    reference: String,
    amount: String,
    method: String,
    status: String,
    date: String,
    declined: Option<&'static str>,
    pending: bool,
    expected: Option<String>,
}

async fn payment_page(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(pid): Path<String>,
) -> Response {
    let c = visit(&s, &headers, &uri).await;
    let Some(id) = c.member else {
        return to_login();
    };
    let Ok(pid) = uuid::Uuid::parse_str(&pid).map(PaymentId) else {
        return message(&s, &c, StatusCode::NOT_FOUND, c.t.not_found, c.t.not_found);
    };
    let p = match s.portal.payment(id, pid).await {
        Ok(p) => p,
        Err(e) => return service_failure(&s, &c, &e),
    };
    payment_view(&s, &c, &p)
}

/// A payment's page: its reference number to save, its status, or its decline reason.
fn payment_view(s: &AppState, c: &Ctx, p: &Payment) -> Response {
    let declined = match p.status {
        PaymentStatus::Failed { reason } => Some(locale::decline_reason(c.lang, reason)),
        _ => None,
    };
    let title = if declined.is_some() {
        c.t.declined_title
    } else {
        c.t.confirmation_title
    };
    let html = PaymentPage {
        c,
        title,
        reference: p.reference.to_string(),
        amount: c.money(p.amount),
        method: p.instrument.masked(),
        status: status_word(c, p),
        date: c.date(p.initiated_on),
        declined,
        pending: matches!(p.status, PaymentStatus::Pending { .. }),
        expected: p.expected_settlement.map(|d| c.date(d)),
    }
    .render();
    page(s, c, StatusCode::OK, html)
}

// ---- Create Account ----

/// One input of the account-creation form.
struct Input {
    name: &'static str,
    label: &'static str,
    hint: &'static str,
    kind: &'static str,
    autocomplete: &'static str,
    value: String,
}

#[derive(Template)]
#[template(path = "register.html")]
struct RegisterPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    message: Option<&'a str>,
    personal: Vec<Input>,
    login: Vec<Input>,
}

fn register_form(
    s: &AppState,
    c: &Ctx,
    form: &HashMap<String, String>,
    message: Option<&str>,
) -> Response {
    let t = c.t;
    // What the member typed comes back, except the SSN and the password.
    let kept = |name: &str| form.get(name).cloned().unwrap_or_default();
    let input = |name, label, hint, kind, autocomplete, value| Input {
        name,
        label,
        hint,
        kind,
        autocomplete,
        value,
    };
    let personal = vec![
        input(
            "account_number",
            t.account_number_label,
            t.account_number_hint,
            "text",
            "off",
            kept("account_number"),
        ),
        input(
            "first_name",
            t.first_name,
            "",
            "text",
            "given-name",
            kept("first_name"),
        ),
        input(
            "last_name",
            t.last_name,
            "",
            "text",
            "family-name",
            kept("last_name"),
        ),
        input(
            "date_of_birth",
            t.date_of_birth,
            t.dob_hint,
            "date",
            "bday",
            kept("date_of_birth"),
        ),
        input("ssn", t.ssn, t.ssn_hint, "password", "off", String::new()),
    ];
    let login = vec![
        input("email", t.email, "", "email", "email", kept("email")),
        input(
            "username",
            t.username,
            t.username_hint,
            "text",
            "username",
            kept("username"),
        ),
        input(
            "password",
            t.password,
            t.password_hint,
            "password",
            "new-password",
            String::new(),
        ),
    ];
    let html = RegisterPage {
        c,
        title: t.register_title,
        message,
        personal,
        login,
    }
    .render();
    let status = if c.errors.is_empty() && message.is_none() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    page(s, c, status, html)
}

async fn register_page(State(s): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let c = visit(&s, &headers, &uri).await;
    if c.signed_in {
        return Redirect::to("/dashboard").into_response();
    }
    register_form(&s, &c, &HashMap::new(), None)
}

#[derive(Template)]
#[template(path = "verify.html")]
struct VerifyPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    account: String,
    email: String,
}

fn verify_form(s: &AppState, c: &Ctx, account: AccountId, email: &str) -> Response {
    let html = VerifyPage {
        c,
        title: c.t.verify_title,
        account: account.to_string(),
        email: email.to_owned(),
    }
    .render();
    let status = if c.errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    page(s, c, status, html)
}

async fn register_submit(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let mut c = visit(&s, &headers, &uri).await;
    let Ok(Form(form)) = form else {
        return form_expired(&s, &c);
    };
    if !csrf_ok(&c, &headers, &form) {
        return form_expired(&s, &c);
    }
    if s.limiter.check("register", addr.ip()).is_err() {
        return register_form(&s, &c, &form, Some(c.t.too_many_attempts));
    }
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    let registration = portal_core::services::RegistrationForm {
        account_number: get("account_number"),
        first_name: get("first_name"),
        last_name: get("last_name"),
        date_of_birth: get("date_of_birth"),
        ssn: get("ssn"),
        email: get("email"),
        username: get("username"),
        password: get("password"),
        language: get("language"),
    };
    match s.portal.register(&registration).await {
        Ok(pending) => match pending.account_id {
            Some(account) => verify_form(&s, &c, account, &pending.email_masked),
            None => register_form(&s, &c, &form, Some(c.t.identity_no_match)),
        },
        Err(ServiceError::Invalid(v)) => {
            c.fail_fields(&v.0, &[]);
            register_form(&s, &c, &form, None)
        }
        Err(ServiceError::NoMatch) => register_form(&s, &c, &form, Some(c.t.identity_no_match)),
        Err(ServiceError::Conflict(why)) => register_form(&s, &c, &form, Some(&why)),
        Err(e) => service_failure(&s, &c, &e),
    }
}

fn registration_id(raw: &str) -> Option<AccountId> {
    uuid::Uuid::parse_str(raw).ok().map(AccountId)
}

async fn verify_submit(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    Path(raw): Path<String>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let mut c = visit(&s, &headers, &uri).await;
    let Ok(Form(form)) = form else {
        return form_expired(&s, &c);
    };
    if !csrf_ok(&c, &headers, &form) {
        return form_expired(&s, &c);
    }
    let Some(account) = registration_id(&raw) else {
        return message(&s, &c, StatusCode::NOT_FOUND, c.t.not_found, c.t.not_found);
    };
    let email = form.get("email").cloned().unwrap_or_default();
    if s.limiter.check("confirm", addr.ip()).is_err() {
        c.fail("code", c.t.too_many_attempts);
        return verify_form(&s, &c, account, &email);
    }
    let code = form.get("code").map(|x| x.trim()).unwrap_or_default();
    match s.portal.confirm_email(account, code).await {
        Ok(grant) => {
            let mut r = Redirect::to("/dashboard").into_response();
            for v in session_cookies(&s, &grant) {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            r
        }
        Err(ServiceError::InvalidToken | ServiceError::Invalid(_) | ServiceError::NotFound(_)) => {
            c.fail("code", c.t.verify_bad_code);
            verify_form(&s, &c, account, &email)
        }
        Err(e) => service_failure(&s, &c, &e),
    }
}

async fn resend_submit(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    Path(raw): Path<String>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let mut c = visit(&s, &headers, &uri).await;
    let Ok(Form(form)) = form else {
        return form_expired(&s, &c);
    };
    if !csrf_ok(&c, &headers, &form) {
        return form_expired(&s, &c);
    }
    let Some(account) = registration_id(&raw) else {
        return message(&s, &c, StatusCode::NOT_FOUND, c.t.not_found, c.t.not_found);
    };
    let email = form.get("email").cloned().unwrap_or_default();
    if s.limiter.check("confirm", addr.ip()).is_err() {
        c.fail("code", c.t.too_many_attempts);
        return verify_form(&s, &c, account, &email);
    }
    match s.portal.resend_email_code(account).await {
        Ok(()) | Err(ServiceError::NotFound(_) | ServiceError::Rejected(_)) => {
            verify_form(&s, &c, account, &email)
        }
        Err(e) => service_failure(&s, &c, &e),
    }
}

// ---- Forgot Password ----

#[derive(Template)]
#[template(path = "forgot.html")]
struct ForgotPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    sent: bool,
}

async fn forgot_page(State(s): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let c = visit(&s, &headers, &uri).await;
    let html = ForgotPage {
        c: &c,
        title: c.t.forgot_title,
        sent: false,
    }
    .render();
    page(&s, &c, StatusCode::OK, html)
}

async fn forgot_submit(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let mut c = visit(&s, &headers, &uri).await;
    let Ok(Form(form)) = form else {
        return form_expired(&s, &c);
    };
    if !csrf_ok(&c, &headers, &form) {
        return form_expired(&s, &c);
    }
    let identifier = form.get("identifier").map(|x| x.trim()).unwrap_or_default();
    let mut sent = false;
    if s.limiter.check("reset", addr.ip()).is_err() {
        c.fail("identifier", c.t.too_many_attempts);
    } else if identifier.is_empty() {
        c.fail(
            "identifier",
            format!("{}: {}", c.t.forgot_identifier, c.t.required),
        );
    } else {
        match s.portal.request_password_reset(identifier).await {
            // The same answer whether or not an account matches.
            Ok(()) => sent = true,
            Err(ServiceError::Invalid(v)) => c.fail_fields(&v.0, &[]),
            Err(e) => return service_failure(&s, &c, &e),
        }
    }
    let html = ForgotPage {
        c: &c,
        title: c.t.forgot_title,
        sent,
    }
    .render();
    let status = if sent {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    page(&s, &c, status, html)
}

#[derive(Template)]
#[template(path = "reset.html")]
struct ResetPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    token: String,
}

#[derive(serde::Deserialize)]
struct ResetQuery {
    token: Option<String>,
}

async fn reset_page(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<ResetQuery>,
) -> Response {
    let c = visit(&s, &headers, &uri).await;
    let token = q.token.unwrap_or_default();
    if !plausible_token(&token) {
        return message(
            &s,
            &c,
            StatusCode::NOT_FOUND,
            c.t.reset_title,
            c.t.reset_invalid,
        );
    }
    let html = ResetPage {
        c: &c,
        title: c.t.reset_title,
        token,
    }
    .render();
    page(&s, &c, StatusCode::OK, html)
}

async fn reset_submit(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let mut c = visit(&s, &headers, &uri).await;
    let Ok(Form(form)) = form else {
        return form_expired(&s, &c);
    };
    if !csrf_ok(&c, &headers, &form) {
        return form_expired(&s, &c);
    }
    let token = form.get("token").cloned().unwrap_or_default();
    let password = form.get("password").cloned().unwrap_or_default();
    if s.limiter.check("reset", addr.ip()).is_err() {
        c.fail("password", c.t.too_many_attempts);
    } else {
        match s.portal.complete_password_reset(&token, &password).await {
            Ok(()) => {
                return message(&s, &c, StatusCode::OK, c.t.reset_title, c.t.reset_done);
            }
            Err(ServiceError::InvalidToken) => {
                return message(&s, &c, StatusCode::GONE, c.t.reset_title, c.t.reset_invalid);
            }
            Err(ServiceError::Invalid(v)) => c.fail_fields(&v.0, &[]),
            Err(e) => return service_failure(&s, &c, &e),
        }
    }
    let html = ResetPage {
        c: &c,
        title: c.t.reset_title,
        token,
    }
    .render();
    page(&s, &c, StatusCode::UNPROCESSABLE_ENTITY, html)
}

async fn password_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../static/password.js"),
    )
        .into_response()
}

// ---- Payment History ----

#[derive(serde::Deserialize, Default)]
struct HistoryQuery {
    status: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

const STATUSES: [&str; 5] = ["succeeded", "pending", "failed", "returned", "refunded"];

/// The member's payments matching the filters, newest first; bad filters land on `c`.
fn filtered<'a>(c: &mut Ctx, a: &'a Account, q: &HistoryQuery) -> Vec<&'a Payment> {
    let mut date = |field: &str, raw: &Option<String>| match raw.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(d) => match NaiveDate::parse_from_str(d, "%Y-%m-%d") {
            Ok(x) => Some(x),
            Err(_) => {
                c.fail(field, format!("{}: YYYY-MM-DD", c.t.date));
                None
            }
        },
    };
    let from = date("from", &q.from);
    let to = date("to", &q.to);
    let status = q
        .status
        .as_deref()
        .filter(|st| STATUSES.contains(st))
        .map(str::to_owned);
    let mut list: Vec<&Payment> = a
        .ledger
        .payments
        .iter()
        .filter(|p| status.as_deref().is_none_or(|st| p.status.name() == st))
        .filter(|p| {
            from.is_none_or(|f| p.initiated_on >= f) && to.is_none_or(|t| p.initiated_on <= t)
        })
        .collect();
    list.sort_by_key(|p| std::cmp::Reverse(p.initiated_at));
    list
}

#[derive(Template)]
#[template(path = "history.html")]
struct HistoryPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    statuses: Vec<(&'static str, &'static str)>,
    status: String,
    from: String,
    to: String,
    rows: Vec<PaymentRow>,
}

async fn history(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Response {
    let mut c = visit(&s, &headers, &uri).await;
    let Some(id) = c.member else {
        return to_login();
    };
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let a = match s.portal.account(id).await {
        Ok(a) => a,
        Err(e) => return service_failure(&s, &c, &e),
    };
    let list = filtered(&mut c, &a, &q);
    let rows = list
        .iter()
        .map(|p| PaymentRow {
            id: p.id,
            date: c.date(p.initiated_on),
            amount: c.money(p.amount),
            method: p.instrument.masked(),
            status: status_word(&c, p),
            reference: p.reference.to_string(),
        })
        .collect();
    let t = c.t;
    let html = HistoryPage {
        c: &c,
        title: t.payment_history,
        statuses: vec![
            ("", t.all_statuses),
            ("succeeded", t.payment_status_succeeded),
            ("pending", t.payment_status_pending),
            ("failed", t.payment_status_failed),
            ("returned", t.payment_status_returned),
            ("refunded", t.payment_status_refunded),
        ],
        status: q.status.clone().unwrap_or_default(),
        from: q.from.clone().unwrap_or_default(),
        to: q.to.clone().unwrap_or_default(),
        rows,
    }
    .render();
    let status = if c.errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    page(&s, &c, status, html)
}

/// A CSV field, quoted when it needs to be; a leading formula character is defused so a
/// spreadsheet never runs it.
fn csv_field(v: &str) -> String {
    let v = if v.starts_with(['=', '+', '-', '@']) {
        format!("'{v}")
    } else {
        v.to_owned()
    };
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v
    }
}

async fn history_csv(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Response {
    let mut c = visit(&s, &headers, &uri).await;
    let Some(id) = c.member else {
        return to_login();
    };
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let a = match s.portal.account(id).await {
        Ok(a) => a,
        Err(e) => return service_failure(&s, &c, &e),
    };
    let list = filtered(&mut c, &a, &q);
    if let Some(e) = c.errors.first() {
        return (StatusCode::UNPROCESSABLE_ENTITY, e.message.clone()).into_response();
    }
    let mut out = String::from("date,reference,amount,method,status,expected_settlement\r\n");
    for p in list {
        let row = [
            p.initiated_on.to_string(),
            p.reference.to_string(),
            p.amount.to_string(),
            p.instrument.masked(),
            p.status.name().to_owned(),
            p.expected_settlement
                .map(|d| d.to_string())
                .unwrap_or_default(),
        ];
        let line: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"payment-history.csv\"",
            ),
        ],
        out,
    )
        .into_response()
}

// ---- Settings → Automatic Payments ----

struct MandateView {
    id: String,
    status: String,
    method: String,
    rule: String,
    frequency: String,
    start: String,
    /// (action, button label)
    actions: Vec<(&'static str, &'static str)>,
}

#[derive(Template)]
#[template(path = "autopay.html")]
struct AutopayPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    notice: Option<&'a str>,
    mandates: Vec<MandateView>,
    can_set_up: bool,
    methods: Vec<MethodChoice>,
    chosen: String,
    rule: String,
    fixed_amount: String,
    frequency: String,
    start_date: String,
    gateway_url: String,
    publishable_key: String,
}

fn rule_label(c: &Ctx, rule: AmountRule) -> String {
    match rule {
        AmountRule::AmountDue => c.t.rule_amount_due.to_owned(),
        AmountRule::Fixed { amount } => format!("{} ({})", c.t.rule_fixed, c.money(amount)),
    }
}

fn frequency_label(c: &Ctx, f: Frequency) -> &'static str {
    match f {
        Frequency::Monthly => c.t.monthly,
        Frequency::Quarterly => c.t.quarterly,
    }
}

fn autopay_form_page(
    s: &AppState,
    c: &Ctx,
    a: &Account,
    form: &HashMap<String, String>,
    notice: Option<&str>,
) -> Response {
    let mandates: Vec<MandateView> = a
        .mandates
        .iter()
        .filter(|m| m.status != MandateStatus::Cancelled)
        .map(|m| {
            let (status, actions) = match m.status {
                MandateStatus::Active => (
                    c.t.mandate_active,
                    vec![("pause", c.t.pause), ("cancel", c.t.cancel_autopay)],
                ),
                MandateStatus::Paused { .. } => (
                    c.t.mandate_paused,
                    vec![("resume", c.t.resume), ("cancel", c.t.cancel_autopay)],
                ),
                MandateStatus::Suspended => {
                    (c.t.mandate_suspended, vec![("cancel", c.t.cancel_autopay)])
                }
                MandateStatus::Cancelled => (c.t.mandate_cancelled, Vec::new()),
            };
            MandateView {
                id: m.id.to_string(),
                status: status.to_owned(),
                method: a
                    .method(m.method_id)
                    .map(|x| x.details.masked())
                    .unwrap_or_default(),
                rule: rule_label(c, m.amount_rule),
                frequency: frequency_label(c, m.frequency).to_owned(),
                start: c.date(m.start_date),
                actions,
            }
        })
        .collect();
    let can_set_up = !a.mandates.iter().any(|m| {
        matches!(
            m.status,
            MandateStatus::Active | MandateStatus::Paused { .. }
        )
    });
    let methods: Vec<MethodChoice> = a
        .methods
        .iter()
        .filter(|m| m.removed_at.is_none())
        .map(|m| MethodChoice {
            id: m.id.to_string(),
            label: m.details.masked(),
        })
        .collect();
    let kept = |k: &str| form.get(k).cloned().unwrap_or_default();
    let chosen = match form.get("method") {
        Some(m) if !m.is_empty() => m.clone(),
        _ => methods
            .first()
            .map_or_else(|| "card".to_owned(), |m| m.id.clone()),
    };
    let today = s.portal.deps().clock.today();
    let summary = a.summary(&s.portal.config().delinquency, today);
    let default_start = summary
        .next_due_date
        .filter(|d| *d > today)
        .unwrap_or(today + chrono::Days::new(1));
    let html = AutopayPage {
        c,
        title: c.t.automatic_payments,
        notice,
        mandates,
        can_set_up,
        methods,
        chosen,
        rule: kept("rule"),
        fixed_amount: kept("fixed_amount"),
        frequency: kept("frequency"),
        start_date: form
            .get("start_date")
            .cloned()
            .unwrap_or_else(|| default_start.to_string()),
        gateway_url: gateway_url(s).unwrap_or_default(),
        publishable_key: publishable_key(s),
    }
    .render();
    let status = if c.errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    page(s, c, status, html)
}

#[derive(serde::Deserialize, Default)]
struct AutopayQuery {
    done: Option<String>,
}

async fn autopay_page(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    q: Result<Query<AutopayQuery>, QueryRejection>,
) -> Response {
    let c = visit(&s, &headers, &uri).await;
    let Some(id) = c.member else {
        return to_login();
    };
    let notice = match q.ok().and_then(|Query(q)| q.done).as_deref() {
        Some("activated") => Some(c.t.autopay_activated),
        Some("changed") => Some(c.t.autopay_changed),
        _ => None,
    };
    match s.portal.account(id).await {
        Ok(a) => autopay_form_page(&s, &c, &a, &HashMap::new(), notice),
        Err(e) => service_failure(&s, &c, &e),
    }
}

/// The autopay terms of a form whose method is already a saved one; errors land on `c`.
fn read_autopay(c: &mut Ctx, form: &HashMap<String, String>) -> Option<AutopayForm> {
    let mut v = Validator::new();
    let method = form
        .get("method")
        .and_then(|m| uuid::Uuid::parse_str(m).ok())
        .map(MethodId);
    if method.is_none() {
        v.push(FieldError::new("method", "required", c.t.choose_method));
    }
    let amount_rule = match form.get("rule").map(String::as_str) {
        Some("fixed") => {
            let raw = form
                .get("fixed_amount")
                .map(|a| a.trim().trim_start_matches('$').replace(',', ""))
                .unwrap_or_default();
            v.check("fixed_amount", Money::parse_positive(&raw))
                .map(|amount| AmountRule::Fixed { amount })
        }
        _ => Some(AmountRule::AmountDue),
    };
    let frequency = match form.get("frequency").map(String::as_str) {
        Some("quarterly") => Frequency::Quarterly,
        _ => Frequency::Monthly,
    };
    let start = form
        .get("start_date")
        .and_then(|d| NaiveDate::parse_from_str(d.trim(), "%Y-%m-%d").ok());
    if start.is_none() {
        v.push(FieldError::new(
            "start_date",
            "format",
            format!("{}: YYYY-MM-DD", c.t.start_date),
        ));
    }
    let parsed = match (method, amount_rule, start) {
        (Some(method_id), Some(amount_rule), Some(start_date)) => Some(AutopayForm {
            method_id,
            amount_rule,
            cap: None,
            frequency,
            start_date,
        }),
        _ => None,
    };
    match v.finish(parsed) {
        Ok(f) => Some(f),
        Err(errors) => {
            c.fail_fields(&errors.0, &[("payment_method_id", "method")]);
            None
        }
    }
}

#[derive(Template)]
#[template(path = "autopay_review.html")]
struct AutopayReviewPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    method: String,
    method_id: String,
    rule: String,
    rule_label: String,
    fixed_amount: String,
    frequency: String,
    frequency_label: String,
    start_date: String,
    first_debit: String,
    estimated: String,
    authorization: String,
}

async fn autopay_review(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let mut c = visit(&s, &headers, &uri).await;
    let Some(id) = c.member else {
        return to_login();
    };
    let Ok(Form(mut form)) = form else {
        return form_expired(&s, &c);
    };
    if !csrf_ok(&c, &headers, &form) {
        return form_expired(&s, &c);
    }
    // A new card or bank account is saved first: automatic payments debit saved methods.
    if matches!(
        form.get("method").map(String::as_str),
        Some("card" | "bank")
    ) {
        let mut v = Validator::new();
        let token = token_field(form.get("token").filter(|t| !t.is_empty()).cloned(), &mut v);
        match token {
            Some(token) => match s.portal.add_payment_method(id, token).await {
                Ok(m) => {
                    form.insert("method".into(), m.id.to_string());
                }
                Err(ServiceError::Invalid(v)) => c.fail_fields(&v.0, &[("token", "method")]),
                Err(e) => return service_failure(&s, &c, &e),
            },
            None => c.fail("method", c.t.needs_javascript),
        }
    }
    let account = match s.portal.account(id).await {
        Ok(a) => a,
        Err(e) => return service_failure(&s, &c, &e),
    };
    if !c.errors.is_empty() {
        return autopay_form_page(&s, &c, &account, &form, None);
    }
    let Some(terms) = read_autopay(&mut c, &form) else {
        return autopay_form_page(&s, &c, &account, &form, None);
    };
    let preview = match s.portal.preview_autopay(id, &terms).await {
        Ok(p) => p,
        Err(ServiceError::Invalid(v)) => {
            c.fail_fields(&v.0, &[("payment_method_id", "method")]);
            return autopay_form_page(&s, &c, &account, &form, None);
        }
        Err(e) => return service_failure(&s, &c, &e),
    };
    let kept = |k: &str| form.get(k).cloned().unwrap_or_default();
    let html = AutopayReviewPage {
        c: &c,
        title: c.t.autopay_review_title,
        method: preview.method.clone(),
        method_id: terms.method_id.to_string(),
        rule: kept("rule"),
        rule_label: rule_label(&c, terms.amount_rule),
        fixed_amount: kept("fixed_amount"),
        frequency: kept("frequency"),
        frequency_label: frequency_label(&c, terms.frequency).to_owned(),
        start_date: terms.start_date.to_string(),
        first_debit: c.date(preview.first_debit),
        estimated: c.money(preview.estimated_amount),
        authorization: preview.authorization_text,
    }
    .render();
    page(&s, &c, StatusCode::OK, html)
}

async fn autopay_activate(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let mut c = visit(&s, &headers, &uri).await;
    let Some(id) = c.member else {
        return to_login();
    };
    let Ok(Form(form)) = form else {
        return form_expired(&s, &c);
    };
    if !csrf_ok(&c, &headers, &form) {
        return form_expired(&s, &c);
    }
    let account = match s.portal.account(id).await {
        Ok(a) => a,
        Err(e) => return service_failure(&s, &c, &e),
    };
    let Some(terms) = read_autopay(&mut c, &form) else {
        return autopay_form_page(&s, &c, &account, &form, None);
    };
    if form.get("accept").is_none_or(|a| a != "yes") {
        // Back to the review, with the box to tick.
        c.fail("accept", c.t.accept_required);
        let preview = match s.portal.preview_autopay(id, &terms).await {
            Ok(p) => p,
            Err(e) => return service_failure(&s, &c, &e),
        };
        let kept = |k: &str| form.get(k).cloned().unwrap_or_default();
        let html = AutopayReviewPage {
            c: &c,
            title: c.t.autopay_review_title,
            method: preview.method.clone(),
            method_id: terms.method_id.to_string(),
            rule: kept("rule"),
            rule_label: rule_label(&c, terms.amount_rule),
            fixed_amount: kept("fixed_amount"),
            frequency: kept("frequency"),
            frequency_label: frequency_label(&c, terms.frequency).to_owned(),
            start_date: terms.start_date.to_string(),
            first_debit: c.date(preview.first_debit),
            estimated: c.money(preview.estimated_amount),
            authorization: preview.authorization_text,
        }
        .render();
        return page(&s, &c, StatusCode::UNPROCESSABLE_ENTITY, html);
    }
    let accepted = form.get("authorization").cloned().unwrap_or_default();
    match s
        .portal
        .set_up_autopay(id, &terms, &accepted, ConsentSource::Web)
        .await
    {
        Ok(_) => Redirect::to("/settings/autopay?done=activated").into_response(),
        Err(ServiceError::Invalid(v)) => {
            c.fail_fields(&v.0, &[("payment_method_id", "method")]);
            autopay_form_page(&s, &c, &account, &form, None)
        }
        Err(e) => service_failure(&s, &c, &e),
    }
}

async fn autopay_status(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(raw): Path<String>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let c = visit(&s, &headers, &uri).await;
    let Some(id) = c.member else {
        return to_login();
    };
    let Ok(Form(form)) = form else {
        return form_expired(&s, &c);
    };
    if !csrf_ok(&c, &headers, &form) {
        return form_expired(&s, &c);
    }
    let Ok(mandate) = uuid::Uuid::parse_str(&raw).map(MandateId) else {
        return message(&s, &c, StatusCode::NOT_FOUND, c.t.not_found, c.t.not_found);
    };
    let status = match form.get("action").map(String::as_str) {
        Some("pause") => MandateStatus::Paused { until: None },
        Some("resume") => MandateStatus::Active,
        Some("cancel") => MandateStatus::Cancelled,
        _ => return form_expired(&s, &c),
    };
    match s.portal.set_autopay_status(id, mandate, status).await {
        Ok(_) => Redirect::to("/settings/autopay?done=changed").into_response(),
        Err(e) => service_failure(&s, &c, &e),
    }
}

// ---- Guest pay ----

#[derive(Template)]
#[template(path = "guest.html")]
struct GuestPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    message: Option<&'a str>,
    fields: Vec<Input>,
}

const GUEST_FIELDS: [&str; 4] = ["account_number", "first_name", "last_name", "date_of_birth"];

fn guest_identify_page(
    s: &AppState,
    c: &Ctx,
    form: &HashMap<String, String>,
    message: Option<&str>,
) -> Response {
    let t = c.t;
    let kept = |name: &str| form.get(name).cloned().unwrap_or_default();
    let fields = vec![
        Input {
            name: "account_number",
            label: t.account_number,
            hint: t.account_number_hint,
            kind: "text",
            autocomplete: "off",
            value: kept("account_number"),
        },
        Input {
            name: "first_name",
            label: t.first_name,
            hint: "",
            kind: "text",
            autocomplete: "given-name",
            value: kept("first_name"),
        },
        Input {
            name: "last_name",
            label: t.last_name,
            hint: "",
            kind: "text",
            autocomplete: "family-name",
            value: kept("last_name"),
        },
        Input {
            name: "date_of_birth",
            label: t.date_of_birth,
            hint: t.dob_hint,
            kind: "date",
            autocomplete: "bday",
            value: kept("date_of_birth"),
        },
    ];
    let html = GuestPage {
        c,
        title: t.guest_title,
        message,
        fields,
    }
    .render();
    let status = if c.errors.is_empty() && message.is_none() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    page(s, c, status, html)
}

async fn guest_page(State(s): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let c = visit(&s, &headers, &uri).await;
    guest_identify_page(&s, &c, &HashMap::new(), None)
}

fn guest_form(form: &HashMap<String, String>) -> GuestPayForm {
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    GuestPayForm {
        account_number: get("account_number"),
        first_name: get("first_name"),
        last_name: get("last_name"),
        date_of_birth: get("date_of_birth"),
    }
}

#[derive(Template)]
#[template(path = "guest_pay.html")]
struct GuestPayPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    amount_due: String,
    due_date: Option<String>,
    amount: String,
    identity: Vec<(&'static str, String)>,
    key: String,
    methods: Vec<MethodChoice>,
    chosen: String,
    gateway_url: String,
    publishable_key: String,
}

fn guest_pay_page(
    s: &AppState,
    c: &Ctx,
    form: &HashMap<String, String>,
    matched: &GuestMatch,
) -> Response {
    let html = GuestPayPage {
        c,
        title: c.t.guest_pay_title,
        amount_due: c.money(matched.amount_due),
        due_date: matched.due_date.map(|d| c.date(d)),
        amount: form
            .get("amount")
            .cloned()
            .unwrap_or_else(|| matched.amount_due.to_string()),
        identity: GUEST_FIELDS
            .iter()
            .map(|f| (*f, form.get(*f).cloned().unwrap_or_default()))
            .collect(),
        key: s.portal.deps().ids.secret_token().expose().to_owned(),
        methods: Vec::new(),
        chosen: form
            .get("method")
            .filter(|m| *m == "bank")
            .cloned()
            .unwrap_or_else(|| "card".to_owned()),
        gateway_url: gateway_url(s).unwrap_or_default(),
        publishable_key: publishable_key(s),
    }
    .render();
    let status = if c.errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    page(s, c, status, html)
}

async fn guest_identify(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let mut c = visit(&s, &headers, &uri).await;
    let Ok(Form(form)) = form else {
        return form_expired(&s, &c);
    };
    if !csrf_ok(&c, &headers, &form) {
        return form_expired(&s, &c);
    }
    if s.limiter.check("guest", addr.ip()).is_err() {
        return guest_identify_page(&s, &c, &form, Some(c.t.too_many_attempts));
    }
    match s.portal.guest_match(&guest_form(&form)).await {
        Ok(matched) => guest_pay_page(&s, &c, &form, &matched),
        Err(ServiceError::Invalid(v)) => {
            c.fail_fields(&v.0, &[]);
            guest_identify_page(&s, &c, &form, None)
        }
        Err(ServiceError::NoMatch | ServiceError::NotFound(_)) => {
            guest_identify_page(&s, &c, &form, Some(c.t.guest_no_match))
        }
        Err(e) => service_failure(&s, &c, &e),
    }
}

async fn guest_submit(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let mut c = visit(&s, &headers, &uri).await;
    let Ok(Form(form)) = form else {
        return form_expired(&s, &c);
    };
    if !csrf_ok(&c, &headers, &form) {
        return form_expired(&s, &c);
    }
    if s.limiter.check("guest", addr.ip()).is_err() {
        return guest_identify_page(&s, &c, &form, Some(c.t.too_many_attempts));
    }
    let guest = guest_form(&form);
    let matched = match s.portal.guest_match(&guest).await {
        Ok(m) => m,
        Err(ServiceError::NoMatch | ServiceError::NotFound(_) | ServiceError::Invalid(_)) => {
            return guest_identify_page(&s, &c, &form, Some(c.t.guest_no_match));
        }
        Err(e) => return service_failure(&s, &c, &e),
    };
    let key = form.get("key").filter(|k| plausible_token(k)).cloned();
    let Some((amount, with)) = read_payment(&mut c, &form) else {
        return guest_pay_page(&s, &c, &form, &matched);
    };
    let (Some(key), PayWith::Token { token, .. }) = (key, with) else {
        c.fail("method", c.t.needs_javascript);
        return guest_pay_page(&s, &c, &form, &matched);
    };
    let made = s
        .portal
        .guest_pay(&guest, amount, token, &format!("web-guest:{key}"))
        .await;
    match made.and_then(|r| r.payment().cloned()) {
        Ok(p) => payment_view(&s, &c, &p),
        Err(ServiceError::Invalid(v)) => {
            c.fail_fields(&v.0, &[("token", "method")]);
            guest_pay_page(&s, &c, &form, &matched)
        }
        Err(e) => service_failure(&s, &c, &e),
    }
}

// ---- Payment status by reference ----

struct StatusResult {
    reference: String,
    status: String,
    amount: String,
    date: String,
    expected: Option<String>,
    declined: Option<&'static str>,
}

#[derive(Template)]
#[template(path = "status.html")]
struct StatusPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    reference: String,
    result: Option<StatusResult>,
}

#[derive(serde::Deserialize, Default)]
struct StatusQuery {
    reference: Option<String>,
}

async fn status_page(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    q: Result<Query<StatusQuery>, QueryRejection>,
) -> Response {
    let mut c = visit(&s, &headers, &uri).await;
    let raw = q
        .ok()
        .and_then(|Query(q)| q.reference)
        .map(|r| r.trim().to_owned())
        .unwrap_or_default();
    let mut result = None;
    if !raw.is_empty() {
        if s.limiter.check("status", addr.ip()).is_err() {
            c.fail("reference", c.t.too_many_attempts);
        } else {
            match PaymentReference::parse(&raw) {
                Err(e) => c.fail("reference", FieldError::from(e).message),
                Ok(reference) => match s.portal.payment_by_reference(&reference).await {
                    Ok((_, p)) => {
                        result = Some(StatusResult {
                            reference: p.reference.to_string(),
                            status: status_word(&c, &p),
                            amount: c.money(p.amount),
                            date: c.date(p.initiated_on),
                            expected: matches!(p.status, PaymentStatus::Pending { .. })
                                .then_some(p.expected_settlement)
                                .flatten()
                                .map(|d| c.date(d)),
                            declined: match p.status {
                                PaymentStatus::Failed { reason } => {
                                    Some(locale::decline_reason(c.lang, reason))
                                }
                                _ => None,
                            },
                        });
                    }
                    Err(ServiceError::NotFound(_)) => c.fail("reference", c.t.status_not_found),
                    Err(e) => return service_failure(&s, &c, &e),
                },
            }
        }
    }
    let html = StatusPage {
        c: &c,
        title: c.t.status_title,
        reference: raw,
        result,
    }
    .render();
    let status = if c.errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    page(&s, &c, status, html)
}
