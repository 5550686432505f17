//! Make a Payment (form, review, confirmation or decline), a payment's page, guest pay and a
//! payment's status by reference number.

use super::*;

// ---- Make a Payment ----

#[derive(Template)]
#[template(path = "pay.html")]
pub(super) struct PayPage<'a> {
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

pub(super) fn pay_form(
    s: &AppState,
    c: &Ctx,
    a: &Account,
    amount: Option<&str>,
    chosen: &str,
) -> Response {
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
    form_page(s, c, html)
}

#[derive(serde::Deserialize, Default)]
pub(super) struct PayQuery {
    /// An amount to start from (a link from an alert), instead of the amount due.
    amount: Option<String>,
}

pub(super) async fn pay_page(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    q: Result<Query<PayQuery>, QueryRejection>,
) -> Response {
    let (c, id) = match member_visit(&s, &headers, &uri).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    // Only a valid amount is taken; anything else leaves the amount due in the field.
    let suggested = q
        .ok()
        .and_then(|Query(q)| q.amount)
        .and_then(|a| Money::parse_positive(a.trim()).ok())
        .map(|m| m.to_string());
    match s.portal.account(id).await {
        Ok(a) => pay_form(&s, &c, &a, suggested.as_deref(), ""),
        Err(e) => service_failure(&s, &c, &e),
    }
}

/// The amount and method of a payment form; errors land on `c`.
pub(super) fn read_payment(
    c: &mut Ctx,
    form: &HashMap<String, String>,
) -> Option<(Option<Money>, PayWith)> {
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
pub(super) struct ReviewPage<'a> {
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

pub(super) async fn pay_review(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let (mut c, form, id) = match member_posted(&s, &headers, &uri, form).await {
        Ok(x) => x,
        Err(r) => return r,
    };
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

pub(super) async fn pay_submit(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let (mut c, form, id) = match member_posted(&s, &headers, &uri, form).await {
        Ok(x) => x,
        Err(r) => return r,
    };
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
    match made.map(|r| r.payment().id) {
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
pub(super) struct PaymentPage<'a> {
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

pub(super) async fn payment_page(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(pid): Path<String>,
) -> Response {
    let (c, id) = match member_visit(&s, &headers, &uri).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Ok(pid) = uuid::Uuid::parse_str(&pid).map(PaymentId) else {
        return not_found(&s, &c);
    };
    let p = match s.portal.payment(id, pid).await {
        Ok(p) => p,
        Err(e) => return service_failure(&s, &c, &e),
    };
    payment_view(&s, &c, &p)
}

/// A payment's page: its reference number to save, its status, or its decline reason.
pub(super) fn payment_view(s: &AppState, c: &Ctx, p: &Payment) -> Response {
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

// ---- Guest pay ----

#[derive(Template)]
#[template(path = "guest.html")]
pub(super) struct GuestPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    message: Option<&'a str>,
    fields: Vec<Input>,
}

pub(super) const GUEST_FIELDS: [&str; 4] =
    ["account_number", "first_name", "last_name", "date_of_birth"];

pub(super) fn guest_identify_page(
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
    page(s, c, c.status_with(message), html)
}

pub(super) async fn guest_page(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let c = visit(&s, &headers, &uri).await;
    guest_identify_page(&s, &c, &HashMap::new(), None)
}

pub(super) fn guest_form(form: &HashMap<String, String>) -> GuestPayForm {
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
pub(super) struct GuestPayPage<'a> {
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

pub(super) fn guest_pay_page(
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
    form_page(s, c, html)
}

pub(super) async fn guest_identify(
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

pub(super) async fn guest_submit(
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
    match made.map(|r| r.payment().clone()) {
        Ok(p) => payment_view(&s, &c, &p),
        Err(ServiceError::Invalid(v)) => {
            c.fail_fields(&v.0, &[("token", "method")]);
            guest_pay_page(&s, &c, &form, &matched)
        }
        Err(e) => service_failure(&s, &c, &e),
    }
}

// ---- Payment status by reference ----

pub(super) struct StatusResult {
    reference: String,
    status: String,
    amount: String,
    date: String,
    expected: Option<String>,
    declined: Option<&'static str>,
}

#[derive(Template)]
#[template(path = "status.html")]
pub(super) struct StatusPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    reference: String,
    result: Option<StatusResult>,
}

#[derive(serde::Deserialize, Default)]
pub(super) struct StatusQuery {
    reference: Option<String>,
}

pub(super) async fn status_page(
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
                Err(e) => {
                    let msg = locale::field_message(c.lang, &FieldError::from(e));
                    c.fail("reference", msg);
                }
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
    form_page(&s, &c, html)
}
