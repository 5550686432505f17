//! Settings → Automatic Payments: set up with the authorization to accept, pause, resume, cancel.

use super::*;

// ---- Settings → Automatic Payments ----

pub(super) struct MandateView {
    id: String,
    status: String,
    method: String,
    rule: String,
    frequency: String,
    start: String,
    /// (action, button label)
    actions: Vec<(&'static str, &'static str)>,
    /// Active or paused: its settings can be changed.
    changeable: bool,
}

#[derive(Template)]
#[template(path = "autopay.html")]
pub(super) struct AutopayPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    notice: Option<&'a str>,
    mandates: Vec<MandateView>,
    can_set_up: bool,
    /// The automatic payment being changed, when the form changes one.
    changing: Option<String>,
    methods: Vec<MethodChoice>,
    chosen: String,
    rule: String,
    fixed_amount: String,
    frequency: String,
    start_date: String,
    gateway_url: String,
    publishable_key: String,
}

pub(super) fn rule_label(c: &Ctx, rule: AmountRule) -> String {
    match rule {
        AmountRule::AmountDue => c.t.rule_amount_due.to_owned(),
        AmountRule::Fixed { amount } => format!("{} ({})", c.t.rule_fixed, c.money(amount)),
    }
}

pub(super) fn frequency_label(c: &Ctx, f: Frequency) -> &'static str {
    match f {
        Frequency::Monthly => c.t.monthly,
        Frequency::Quarterly => c.t.quarterly,
    }
}

pub(super) fn autopay_form_page(
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
                changeable: matches!(
                    m.status,
                    MandateStatus::Active | MandateStatus::Paused { .. }
                ),
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
    let changing = form
        .get("mandate")
        .filter(|id| a.mandates.iter().any(|m| m.id.to_string() == **id))
        .cloned();
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
        changing,
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
    form_page(s, c, html)
}

#[derive(serde::Deserialize, Default)]
pub(super) struct AutopayQuery {
    done: Option<String>,
    /// The automatic payment to change.
    change: Option<String>,
}

pub(super) async fn autopay_page(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    q: Result<Query<AutopayQuery>, QueryRejection>,
) -> Response {
    let (c, id) = match member_visit(&s, &headers, &uri).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let notice = match q.done.as_deref() {
        Some("activated") => Some(c.t.autopay_activated),
        Some("changed") => Some(c.t.autopay_changed),
        _ => None,
    };
    let a = match s.portal.account(id).await {
        Ok(a) => a,
        Err(e) => return service_failure(&s, &c, &e),
    };
    let form = match q.change {
        Some(raw) => {
            let today = s.portal.deps().clock.today();
            let Some(m) = a.mandates.iter().find(|m| {
                m.id.to_string() == raw
                    && matches!(
                        m.status,
                        MandateStatus::Active | MandateStatus::Paused { .. }
                    )
            }) else {
                return not_found(&s, &c);
            };
            current_terms(m, today)
        }
        None => HashMap::new(),
    };
    autopay_form_page(&s, &c, &a, &form, notice)
}

/// An automatic payment's current settings as the form's fields, to start a change from.
/// A start date already passed moves to the first scheduled debit after today.
fn current_terms(m: &portal_core::mandate::Mandate, today: NaiveDate) -> HashMap<String, String> {
    let start = m
        .period_at(today)
        .map_or(m.start_date, |k| m.debit_date(k + 1));
    let (rule, fixed) = match m.amount_rule {
        AmountRule::AmountDue => ("due", String::new()),
        AmountRule::Fixed { amount } => ("fixed", amount.to_string()),
    };
    let frequency = match m.frequency {
        Frequency::Monthly => "monthly",
        Frequency::Quarterly => "quarterly",
    };
    HashMap::from([
        ("mandate".to_owned(), m.id.to_string()),
        ("method".to_owned(), m.method_id.to_string()),
        ("rule".to_owned(), rule.to_owned()),
        ("fixed_amount".to_owned(), fixed),
        ("frequency".to_owned(), frequency.to_owned()),
        ("start_date".to_owned(), start.to_string()),
    ])
}

/// The autopay terms of a form whose method is already a saved one; errors land on `c`.
pub(super) fn read_autopay(c: &mut Ctx, form: &HashMap<String, String>) -> Option<AutopayForm> {
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
pub(super) struct AutopayReviewPage<'a> {
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
    /// The automatic payment being changed, if any.
    mandate: String,
}

pub(super) async fn autopay_review(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let (mut c, mut form, id) = match member_posted(&s, &headers, &uri, form).await {
        Ok(x) => x,
        Err(r) => return r,
    };
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
    let preview = match s.portal.preview_autopay(id, &terms, Some(c.lang)).await {
        Ok(p) => p,
        Err(ServiceError::Invalid(v)) => {
            c.fail_fields(&v.0, &[("payment_method_id", "method")]);
            return autopay_form_page(&s, &c, &account, &form, None);
        }
        Err(e) => return service_failure(&s, &c, &e),
    };
    review_page(&s, &c, &form, &terms, preview, StatusCode::OK)
}

/// The review: the terms, the first debit and the authorization text to accept.
fn review_page(
    s: &AppState,
    c: &Ctx,
    form: &HashMap<String, String>,
    terms: &AutopayForm,
    preview: AutopayPreview,
    status: StatusCode,
) -> Response {
    let kept = |k: &str| form.get(k).cloned().unwrap_or_default();
    let html = AutopayReviewPage {
        c,
        title: c.t.autopay_review_title,
        method: preview.method.clone(),
        method_id: terms.method_id.to_string(),
        rule: kept("rule"),
        rule_label: rule_label(c, terms.amount_rule),
        fixed_amount: kept("fixed_amount"),
        frequency: kept("frequency"),
        frequency_label: frequency_label(c, terms.frequency).to_owned(),
        start_date: terms.start_date.to_string(),
        first_debit: c.date(preview.first_debit),
        estimated: c.money(preview.estimated_amount),
        authorization: preview.authorization_text,
        mandate: kept("mandate"),
    }
    .render();
    page(s, c, status, html)
}

pub(super) async fn autopay_activate(
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
    let Some(terms) = read_autopay(&mut c, &form) else {
        return autopay_form_page(&s, &c, &account, &form, None);
    };
    if form.get("accept").is_none_or(|a| a != "yes") {
        // Back to the review, with the box to tick.
        c.fail("accept", c.t.accept_required);
        let preview = match s.portal.preview_autopay(id, &terms, Some(c.lang)).await {
            Ok(p) => p,
            Err(e) => return service_failure(&s, &c, &e),
        };
        return review_page(
            &s,
            &c,
            &form,
            &terms,
            preview,
            StatusCode::UNPROCESSABLE_ENTITY,
        );
    }
    let accepted = form.get("authorization").cloned().unwrap_or_default();
    let changing = form.get("mandate").filter(|m| !m.is_empty());
    let outcome = match changing {
        Some(raw) => {
            let Ok(mandate) = uuid::Uuid::parse_str(raw).map(MandateId) else {
                return not_found(&s, &c);
            };
            s.portal
                .change_autopay(id, mandate, &terms, &accepted, ConsentSource::Web)
                .await
        }
        None => {
            s.portal
                .set_up_autopay(id, &terms, &accepted, ConsentSource::Web)
                .await
        }
    };
    let done = if changing.is_some() {
        "changed"
    } else {
        "activated"
    };
    match outcome {
        Ok(_) => Redirect::to(&format!("/settings/autopay?done={done}")).into_response(),
        Err(ServiceError::Invalid(v)) => {
            c.fail_fields(&v.0, &[("payment_method_id", "method")]);
            autopay_form_page(&s, &c, &account, &form, None)
        }
        Err(e) => service_failure(&s, &c, &e),
    }
}

pub(super) async fn autopay_status(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(raw): Path<String>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let (c, form, id) = match member_posted(&s, &headers, &uri, form).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Ok(mandate) = uuid::Uuid::parse_str(&raw).map(MandateId) else {
        return not_found(&s, &c);
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

#[cfg(test)]
mod tests {
    use super::current_terms;
    use chrono::{NaiveDate, Utc};
    use portal_core::ids::{AccountId, MandateId, MethodId};
    use portal_core::mandate::{
        AmountRule, Consent, ConsentSource, Frequency, Mandate, MandateTerms,
    };
    use portal_core::money::Money;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).expect("a real date")
    }

    fn mandate(frequency: Frequency) -> Mandate {
        Mandate::new(
            MandateId(uuid::Uuid::nil()),
            AccountId(uuid::Uuid::nil()),
            MandateTerms {
                method_id: MethodId(uuid::Uuid::nil()),
                amount_rule: AmountRule::Fixed {
                    amount: Money::from_cents(15_000),
                },
                cap: None,
                frequency,
                start_date: d(2026, 1, 31),
            },
            Consent {
                text: "accepted".into(),
                accepted_at: Utc::now(),
                source: ConsentSource::Web,
            },
        )
        .expect("valid terms")
    }

    #[test]
    fn a_change_starts_from_the_current_settings_and_the_next_debit() {
        let monthly = mandate(Frequency::Monthly);
        let before = current_terms(&monthly, d(2026, 1, 10));
        assert_eq!(
            before["start_date"], "2026-01-31",
            "not started yet: unchanged"
        );
        assert_eq!(before["rule"], "fixed");
        assert_eq!(before["fixed_amount"], "150.00");
        assert_eq!(before["frequency"], "monthly");
        // Passed: the first debit after today, on the same (clamped) day of the month.
        let later = current_terms(&monthly, d(2026, 3, 5));
        assert_eq!(later["start_date"], "2026-03-31");
        let on_the_day = current_terms(&monthly, d(2026, 2, 28));
        assert_eq!(on_the_day["start_date"], "2026-03-31");
        let quarterly = current_terms(&mandate(Frequency::Quarterly), d(2026, 3, 5));
        assert_eq!(quarterly["start_date"], "2026-04-30");
        assert_eq!(quarterly["frequency"], "quarterly");
    }
}
