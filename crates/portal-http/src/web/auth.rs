//! Log in and out, Create Account (personal information, username and password, the emailed
//! code) and Forgot Password (the emailed link, a new password).

use super::*;

// ---- Log in, log out ----

#[derive(Template)]
#[template(path = "login.html")]
pub(super) struct LoginPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    username: &'a str,
    message: Option<String>,
}

pub(super) async fn login_page(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
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

pub(super) async fn login_submit(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let (mut c, form) = match posted(&s, &headers, &uri, form).await {
        Ok(x) => x,
        Err(r) => return r,
    };
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
                // In minutes from now: the server's time zone need not be the member's.
                let seconds = (until - s.portal.deps().clock.now()).num_seconds().max(0);
                let minutes = (seconds + 59) / 60;
                message = Some(format!(
                    "{} {} {}.",
                    c.t.locked_out,
                    minutes.max(1),
                    c.t.minutes
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

pub(super) async fn logout_submit(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let (c, _) = match posted(&s, &headers, &uri, form).await {
        Ok(x) => x,
        Err(r) => return r,
    };
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

// ---- Create Account ----

#[derive(Template)]
#[template(path = "register.html")]
pub(super) struct RegisterPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    message: Option<&'a str>,
    personal: Vec<Input>,
    login: Vec<Input>,
}

pub(super) fn register_form(
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
    page(s, c, c.status_with(message), html)
}

pub(super) async fn register_page(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let c = visit(&s, &headers, &uri).await;
    if c.signed_in {
        return Redirect::to("/dashboard").into_response();
    }
    register_form(&s, &c, &HashMap::new(), None)
}

#[derive(Template)]
#[template(path = "verify.html")]
pub(super) struct VerifyPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    account: String,
    email: String,
}

pub(super) fn verify_form(s: &AppState, c: &Ctx, account: AccountId, email: &str) -> Response {
    let html = VerifyPage {
        c,
        title: c.t.verify_title,
        account: account.to_string(),
        email: email.to_owned(),
    }
    .render();
    form_page(s, c, html)
}

pub(super) async fn register_submit(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let (mut c, form) = match posted(&s, &headers, &uri, form).await {
        Ok(x) => x,
        Err(r) => return r,
    };
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

pub(super) fn registration_id(raw: &str) -> Option<AccountId> {
    uuid::Uuid::parse_str(raw).ok().map(AccountId)
}

/// The emailed-code step again (a reload, or the page in the other language), while the
/// registration is still waiting for its code.
pub(super) async fn verify_page(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(raw): Path<String>,
) -> Response {
    let c = visit(&s, &headers, &uri).await;
    let Some(account) = registration_id(&raw) else {
        return not_found(&s, &c);
    };
    match s.portal.account(account).await {
        Ok(a) => match a.member {
            Some(m) if m.email_verified_at.is_none() => {
                verify_form(&s, &c, account, &m.email.masked())
            }
            _ => to_login(),
        },
        Err(ServiceError::NotFound(_)) => not_found(&s, &c),
        Err(e) => service_failure(&s, &c, &e),
    }
}

/// A posted form of the emailed-code step: the visitor, the form, its registration and the
/// masked address the step shows; or the answer to give instead (attempts are limited).
async fn code_step(
    s: &AppState,
    addr: SocketAddr,
    headers: &HeaderMap,
    uri: &Uri,
    raw: &str,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Result<(Ctx, HashMap<String, String>, AccountId, String), Response> {
    let (mut c, form) = posted(s, headers, uri, form).await?;
    let Some(account) = registration_id(raw) else {
        return Err(not_found(s, &c));
    };
    let email = form.get("email").cloned().unwrap_or_default();
    if s.limiter.check("confirm", addr.ip()).is_err() {
        c.fail("code", c.t.too_many_attempts);
        return Err(verify_form(s, &c, account, &email));
    }
    Ok((c, form, account, email))
}

pub(super) async fn verify_submit(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    Path(raw): Path<String>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let (mut c, form, account, email) = match code_step(&s, addr, &headers, &uri, &raw, form).await
    {
        Ok(x) => x,
        Err(r) => return r,
    };
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

pub(super) async fn resend_submit(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    Path(raw): Path<String>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let (c, _, account, email) = match code_step(&s, addr, &headers, &uri, &raw, form).await {
        Ok(x) => x,
        Err(r) => return r,
    };
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
pub(super) struct ForgotPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    sent: bool,
}

pub(super) async fn forgot_page(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let c = visit(&s, &headers, &uri).await;
    let html = ForgotPage {
        c: &c,
        title: c.t.forgot_title,
        sent: false,
    }
    .render();
    page(&s, &c, StatusCode::OK, html)
}

pub(super) async fn forgot_submit(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let (mut c, form) = match posted(&s, &headers, &uri, form).await {
        Ok(x) => x,
        Err(r) => return r,
    };
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
pub(super) struct ResetPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    token: String,
}

#[derive(serde::Deserialize)]
pub(super) struct ResetQuery {
    token: Option<String>,
}

pub(super) async fn reset_page(
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

pub(super) async fn reset_submit(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let (mut c, form) = match posted(&s, &headers, &uri, form).await {
        Ok(x) => x,
        Err(r) => return r,
    };
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

pub(super) async fn password_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../static/password.js"),
    )
        .into_response()
}
