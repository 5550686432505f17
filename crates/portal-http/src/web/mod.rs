//! The member web portal: server-rendered pages (askama templates compiled into the binary)
//! over the same use cases as the JSON API, in English and Spanish.
//!
//! Sessions are the API's `HttpOnly` cookie. Every form carries a CSRF token: for a signed-in
//! member it is derived from the session (as the API's header is); before logging in it is a
//! random value also set as a cookie (double submit). Card and bank details never reach these
//! handlers: the payment page's script sends them straight to the gateway's tokenization
//! endpoint and submits only the token.

mod account;
mod auth;
mod autopay;
mod pay;
mod profile;
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
    AutopayForm, AutopayPreview, GuestMatch, GuestPayForm, LoginOutcome, MakePayment, PayWith,
    ServiceError,
};
use std::collections::HashMap;
use std::net::SocketAddr;
pub use text::Text;

const LANG_COOKIE: &str = "portal_lang";

/// The page routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/help", get(help))
        .route("/language", get(language))
        .route("/static/portal.css", get(css))
        .route("/static/pay.js", get(pay_js))
        .route("/static/password.js", get(auth::password_js))
        .route("/login", get(auth::login_page).post(auth::login_submit))
        .route("/logout", post(auth::logout_submit))
        .route(
            "/register",
            get(auth::register_page).post(auth::register_submit),
        )
        .route(
            "/register/{id}/verify",
            get(auth::verify_page).post(auth::verify_submit),
        )
        .route("/register/{id}/resend", post(auth::resend_submit))
        .route(
            "/forgot-password",
            get(auth::forgot_page).post(auth::forgot_submit),
        )
        .route(
            "/reset-password",
            get(auth::reset_page).post(auth::reset_submit),
        )
        .route("/dashboard", get(account::dashboard))
        .route("/payments", get(account::history))
        .route("/payments.csv", get(account::history_csv))
        .route("/plan", get(account::plan).post(account::plan_submit))
        .route("/profile", get(profile::profile))
        .route("/profile/preferences", post(profile::preferences_submit))
        .route("/profile/methods/{id}/remove", post(profile::remove_method))
        .route("/pay", get(pay::pay_page))
        .route("/pay/review", post(pay::pay_review))
        .route("/pay/submit", post(pay::pay_submit))
        .route("/payments/{id}", get(pay::payment_page))
        .route("/guest", get(pay::guest_page).post(pay::guest_identify))
        .route("/guest/pay", post(pay::guest_submit))
        .route("/status", get(pay::status_page))
        .route("/settings/autopay", get(autopay::autopay_page))
        .route("/settings/autopay/review", post(autopay::autopay_review))
        .route(
            "/settings/autopay/activate",
            post(autopay::autopay_activate),
        )
        .route(
            "/settings/autopay/{id}/status",
            post(autopay::autopay_status),
        )
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
    /// Where the language switch returns to: this page, or for a form's answer (which has no
    /// address of its own) the page of that form.
    pub back: String,
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
            self.fail(field, locale::field_message(self.lang, e));
        }
    }

    /// 200, or 422 when the submitted form has errors to show.
    fn status(&self) -> StatusCode {
        self.status_with(None)
    }

    /// 200, or 422 when the form has errors or the page says what went wrong (`problem`).
    fn status_with(&self, problem: Option<&str>) -> StatusCode {
        if self.errors.is_empty() && problem.is_none() {
            StatusCode::OK
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
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
        back: return_address(uri),
        signed_in: member.is_some(),
        agent_in: agent.is_some(),
        errors: Vec::new(),
        new_csrf,
        session,
        member,
        agent,
    }
}

/// The page to come back to after switching language: the address itself (with its query,
/// so filters and emailed links survive), except for addresses that only answer a form.
fn return_address(uri: &Uri) -> String {
    let path = uri.path();
    let page = match path {
        "/pay/review" | "/pay/submit" => "/pay",
        "/guest/pay" => "/guest",
        "/logout" => "/",
        "/profile/preferences" => "/profile",
        _ if path.starts_with("/settings/autopay/") => "/settings/autopay",
        _ if path.starts_with("/profile/methods/") => "/profile",
        _ => {
            if let Some(id) = path
                .strip_prefix("/register/")
                .and_then(|r| r.strip_suffix("/resend"))
            {
                return format!("/register/{id}/verify");
            }
            if let Some((id, _)) = path
                .strip_prefix("/support/accounts/")
                .and_then(|r| r.split_once('/'))
            {
                return format!("/support/accounts/{id}");
            }
            return uri
                .path_and_query()
                .map_or_else(|| path.to_owned(), |pq| pq.as_str().to_owned());
        }
    };
    page.to_owned()
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

/// A posted form and its visitor, the form's CSRF token checked; or the answer to give when
/// the form cannot be read or its token is not this visitor's.
async fn posted(
    s: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Result<(Ctx, HashMap<String, String>), Response> {
    let c = visit(s, headers, uri).await;
    match form {
        Ok(Form(form)) if csrf_ok(&c, headers, &form) => Ok((c, form)),
        _ => Err(form_expired(s, &c)),
    }
}

/// A signed-in member's posted form, its CSRF token checked; or the answer to give instead
/// (the log-in page for a visitor who is not signed in).
async fn member_posted(
    s: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Result<(Ctx, HashMap<String, String>, AccountId), Response> {
    let (c, form) = posted(s, headers, uri, form).await?;
    match c.member {
        Some(id) => Ok((c, form, id)),
        None => Err(to_login()),
    }
}

/// The signed-in member's visit, or the log-in page.
async fn member_visit(
    s: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<(Ctx, AccountId), Response> {
    let c = visit(s, headers, uri).await;
    match c.member {
        Some(id) => Ok((c, id)),
        None => Err(to_login()),
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

/// Renders a form's page: 200, or 422 with the errors shown on it.
fn form_page(s: &AppState, c: &Ctx, html: Result<String, askama::Error>) -> Response {
    page(s, c, c.status(), html)
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

/// The page for an address or record that does not exist (or is not this visitor's).
fn not_found(s: &AppState, c: &Ctx) -> Response {
    message(s, c, StatusCode::NOT_FOUND, c.t.not_found, c.t.not_found)
}

/// What a failed use case shows: its field errors on the form, or one plain message.
fn service_failure(s: &AppState, c: &Ctx, e: &ServiceError) -> Response {
    match e {
        ServiceError::NotFound(_) => not_found(s, c),
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
    let back = q
        .back
        .filter(|b| is_local_path(b))
        .unwrap_or_else(|| "/".to_owned());
    let mut r = Redirect::to(&back).into_response();
    if let Some(v) = language_cookie(&s, lang) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// Whether `back` is a path of this site, safe to send a visitor back to: it starts with one
/// `/` and holds only the characters of a path and query (no spaces, controls or
/// backslashes, which browsers strip or read as `/`, so `/\t/evil.example` would leave the
/// site), and no `//` anywhere.
fn is_local_path(back: &str) -> bool {
    back.starts_with('/')
        && !back.contains("//")
        && back.len() <= 2048
        && back
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-._~?=&%+:@!$'()*,;".contains(&b))
}

/// The cookie that keeps the chosen page language for a year.
fn language_cookie(s: &AppState, lang: Language) -> Option<HeaderValue> {
    let secure = if s.config.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{LANG_COOKIE}={}; Path=/; SameSite=Lax; Max-Age=31536000{secure}",
        lang.code()
    ))
    .ok()
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

struct MethodChoice {
    id: String,
    label: String,
}

/// One labelled input of a form.
struct Input {
    name: &'static str,
    label: &'static str,
    hint: &'static str,
    kind: &'static str,
    autocomplete: &'static str,
    value: String,
}

#[cfg(test)]
mod tests {
    use super::return_address;
    use axum::http::Uri;

    fn back(address: &str) -> String {
        return_address(&address.parse::<Uri>().expect("a valid address"))
    }

    #[test]
    fn the_language_switch_returns_to_the_same_page() {
        // Filters, looked-up references and emailed links keep their query.
        assert_eq!(
            back("/payments?status=failed&page=2"),
            "/payments?status=failed&page=2"
        );
        assert_eq!(
            back("/reset-password?token=abc"),
            "/reset-password?token=abc"
        );
        assert_eq!(back("/dashboard"), "/dashboard");
        assert_eq!(back("/register/r1/verify"), "/register/r1/verify");
    }

    #[test]
    fn the_language_switch_sends_visitors_only_to_this_site() {
        for local in [
            "/",
            "/dashboard",
            "/payments?status=failed&page=2",
            "/reset-password?token=a-b_c",
        ] {
            assert!(super::is_local_path(local), "{local}");
        }
        for away in [
            "//evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/\\evil.example",
            "/ /evil.example",
            "/a//evil.example",
            "https://evil.example",
            "evil.example",
            "/\r\nSet-Cookie:x=1",
            "/\0",
            "/caf\u{e9}",
            "",
        ] {
            assert!(!super::is_local_path(away), "{away:?}");
        }
    }

    #[test]
    fn a_form_answer_returns_to_its_form() {
        assert_eq!(back("/pay/review"), "/pay");
        assert_eq!(back("/pay/submit"), "/pay");
        assert_eq!(back("/guest/pay"), "/guest");
        assert_eq!(back("/settings/autopay/review"), "/settings/autopay");
        assert_eq!(back("/settings/autopay/m1/status"), "/settings/autopay");
        assert_eq!(back("/profile/methods/m1/remove"), "/profile");
        assert_eq!(back("/register/r1/resend"), "/register/r1/verify");
        assert_eq!(
            back("/support/accounts/a1/payments/p1/refund"),
            "/support/accounts/a1"
        );
        assert_eq!(back("/logout"), "/");
    }
}
