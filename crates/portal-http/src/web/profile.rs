//! Profile and reminders: the member's details on record, language and due-date reminders,
//! and the saved payment methods.

use super::*;

struct SavedMethod {
    id: String,
    label: String,
    /// Automatic payments use it, so it cannot be removed.
    in_use: bool,
}

#[derive(Template)]
#[template(path = "profile.html")]
struct ProfilePage<'a> {
    c: &'a Ctx,
    title: &'a str,
    notice: Option<&'a str>,
    name: String,
    account_number: String,
    username: String,
    email: String,
    language: &'static str,
    reminders: bool,
    methods: Vec<SavedMethod>,
}

fn profile_page(s: &AppState, c: &Ctx, a: &Account, notice: Option<&str>) -> Response {
    let autopay_method = a.current_mandate().map(|m| m.method_id);
    let methods = a
        .methods
        .iter()
        .filter(|m| m.removed_at.is_none())
        .map(|m| SavedMethod {
            id: m.id.to_string(),
            label: m.details.masked(),
            in_use: autopay_method == Some(m.id),
        })
        .collect();
    let (username, email, language) = match &a.member {
        Some(m) => (
            m.username.to_string(),
            m.email.to_string(),
            m.language.code(),
        ),
        None => (String::new(), String::new(), Language::En.code()),
    };
    let html = ProfilePage {
        c,
        title: c.t.profile,
        notice,
        name: format!("{} {}", a.holder.first_name, a.holder.last_name),
        account_number: a.number.to_string(),
        username,
        email,
        language,
        reminders: a.reminders.due_date_reminders,
        methods,
    }
    .render();
    form_page(s, c, html)
}

#[derive(serde::Deserialize, Default)]
pub(super) struct ProfileQuery {
    done: Option<String>,
}

pub(super) async fn profile(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    q: Result<Query<ProfileQuery>, QueryRejection>,
) -> Response {
    let (c, id) = match member_visit(&s, &headers, &uri).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let notice = match q.ok().and_then(|Query(q)| q.done).as_deref() {
        Some("saved") => Some(c.t.preferences_saved),
        Some("removed") => Some(c.t.method_removed),
        _ => None,
    };
    match s.portal.account(id).await {
        Ok(a) => profile_page(&s, &c, &a, notice),
        Err(e) => service_failure(&s, &c, &e),
    }
}

/// Saves the language and reminder choice; the pages switch to the chosen language at once.
pub(super) async fn preferences_submit(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let (mut c, form, id) = match member_posted(&s, &headers, &uri, form).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let language = match Language::parse(form.get("language").map_or("", String::as_str)) {
        Ok(l) => l,
        Err(e) => {
            c.fail_fields(&[e.into()], &[("language", "language-en")]);
            return match s.portal.account(id).await {
                Ok(a) => profile_page(&s, &c, &a, None),
                Err(e) => service_failure(&s, &c, &e),
            };
        }
    };
    // An unticked checkbox is not sent at all.
    let reminders = form.get("reminders").is_some_and(|v| v == "on");
    match s
        .portal
        .update_preferences(id, Some(language), Some(reminders))
        .await
    {
        Ok(()) => {
            let mut r = Redirect::to("/profile?done=saved").into_response();
            if let Some(v) = language_cookie(&s, language) {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) => service_failure(&s, &c, &e),
    }
}

/// Removes a saved payment method (not the one automatic payments use).
pub(super) async fn remove_method(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(raw): Path<String>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let (mut c, _, id) = match member_posted(&s, &headers, &uri, form).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Ok(method) = uuid::Uuid::parse_str(&raw).map(MethodId) else {
        return not_found(&s, &c);
    };
    match s.portal.remove_payment_method(id, method).await {
        Ok(()) => Redirect::to("/profile?done=removed").into_response(),
        Err(ServiceError::Rejected(_)) => {
            c.fail("", c.t.method_in_use);
            match s.portal.account(id).await {
                Ok(a) => profile_page(&s, &c, &a, None),
                Err(e) => service_failure(&s, &c, &e),
            }
        }
        Err(e) => service_failure(&s, &c, &e),
    }
}
