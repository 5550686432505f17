//! The route table: every endpoint once, with its handler and its documentation. The router and
//! the OpenAPI 3.1 document are both built from it, so they cannot disagree.

use crate::{AppState, more, support};
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use serde_json::{Map, Value, json};

/// A request field.
pub(crate) struct Field {
    pub name: &'static str,
    pub ty: &'static str,
    pub required: bool,
    pub doc: &'static str,
}

const fn req(name: &'static str, doc: &'static str) -> Field {
    Field {
        name,
        ty: "string",
        required: true,
        doc,
    }
}

const fn opt(name: &'static str, doc: &'static str) -> Field {
    Field {
        name,
        ty: "string",
        required: false,
        doc,
    }
}

const fn int(name: &'static str, doc: &'static str) -> Field {
    Field {
        name,
        ty: "integer",
        required: true,
        doc,
    }
}

const fn flag(name: &'static str, doc: &'static str) -> Field {
    Field {
        name,
        ty: "boolean",
        required: false,
        doc,
    }
}

/// Who may call an endpoint.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Public,
    Member,
    Agent,
    Gateway,
}

/// One endpoint.
pub(crate) struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub tag: &'static str,
    pub access: Access,
    pub idempotency_key: bool,
    pub body: &'static [Field],
    pub query: &'static [Field],
    pub ok: u16,
    pub handler: fn() -> MethodRouter<AppState>,
}

const REGISTRATION: &[Field] = &[
    req(
        "account_number",
        "enrollment or billing account number on the invoice",
    ),
    req("first_name", "as on the enrollment"),
    req("last_name", "as on the enrollment"),
    req("date_of_birth", "YYYY-MM-DD"),
    req(
        "ssn",
        "Social Security number; used only to match the enrollment and stored sealed",
    ),
    req("email", "where the verification code is sent"),
    req("username", "3-32 letters, digits, . - _"),
    req("password", "12-128 characters, not a common password"),
    opt("language", "en or es"),
];
const PAYMENT: &[Field] = &[
    opt("amount", "\"125.50\"; default: the amount due"),
    opt("payment_method_id", "a saved method"),
    opt(
        "token",
        "a gateway token (pm_...) from tokenization; never a card or account number",
    ),
    flag("save", "save the token as a payment method"),
];
const AUTOPAY_PREVIEW: &[Field] = &[
    req("payment_method_id", "a saved method"),
    req("amount_rule", "amount_due or fixed"),
    opt("fixed_amount", "with amount_rule fixed"),
    opt("cap", "never debit more than this"),
    req("frequency", "monthly or quarterly"),
    req("start_date", "YYYY-MM-DD, first debit"),
    opt(
        "language",
        "en or es, the authorization text's language (default: the member's)",
    ),
];
const AUTOPAY_ACCEPT: &[Field] = &[
    req("payment_method_id", "a saved method"),
    req("amount_rule", "amount_due or fixed"),
    opt("fixed_amount", "with amount_rule fixed"),
    opt("cap", "never debit more than this"),
    req("frequency", "monthly or quarterly"),
    req("start_date", "YYYY-MM-DD, first debit"),
    req(
        "authorization_text",
        "the text from the preview, as accepted",
    ),
    opt("source", "web, api or phone"),
];
const GUEST: &[Field] = &[
    req("account_number", "enrollment or billing account number"),
    req("first_name", "as on the account"),
    req("last_name", "as on the account"),
    req("date_of_birth", "YYYY-MM-DD"),
];
const GUEST_PAY: &[Field] = &[
    req("account_number", "enrollment or billing account number"),
    req("first_name", "as on the account"),
    req("last_name", "as on the account"),
    req("date_of_birth", "YYYY-MM-DD"),
    req("token", "a one-time gateway token"),
    opt("amount", "default: the amount due"),
];

const AMOUNT: &[Field] = &[req("amount", "\"25.00\"")];
const CLOCK: &[Field] = &[int(
    "days",
    "1 to 400: days to move forward; every daily job runs for each",
)];
const OFFLINE: &[Field] = &[
    req("amount", "\"125.50\""),
    req("kind", "check, money_order or bank_bill_pay"),
    opt("document_number", "check or money-order number"),
    req("received_on", "YYYY-MM-DD; counts as the payment date"),
];
const SEARCH_QUERY: &[Field] = &[req(
    "q",
    "name, email, username, account number or payment reference",
)];
const CONFIRM: &[Field] = &[req("code", "the code from the email")];
const LOGIN: &[Field] = &[req("username", "username"), req("password", "password")];
const RESET_REQUEST: &[Field] = &[req("identifier", "username or email")];
const RESET_DONE: &[Field] = &[
    req("token", "from the link"),
    req("password", "the new password"),
];
const PREFERENCES: &[Field] = &[
    opt("language", "en or es"),
    flag("due_date_reminders", "email due-date reminders"),
];
const ADD_METHOD: &[Field] = &[req("token", "gateway token")];
const PAUSE: &[Field] = &[opt("until", "YYYY-MM-DD, resume after this day")];
const PLAN: &[Field] = &[
    req("installments", "2 to 12"),
    opt("first_due", "YYYY-MM-DD"),
];
const HISTORY_QUERY: &[Field] = &[
    opt("status", "pending, succeeded, failed, returned, refunded"),
    opt("from", "YYYY-MM-DD"),
    opt("to", "YYYY-MM-DD"),
    opt("limit", "1-200, default 50"),
    opt("cursor", "next_cursor of the previous page"),
];

/// Every endpoint under `/api/v1`.
pub(crate) fn endpoints() -> Vec<Endpoint> {
    use Access::{Agent, Gateway, Member, Public};
    let e = |method, path, summary, tag, access, body, ok, handler| Endpoint {
        method,
        path,
        summary,
        tag,
        access,
        idempotency_key: false,
        body,
        query: &[],
        ok,
        handler,
    };
    let mut v = vec![
        e(
            "post",
            "/registrations",
            "Create an account: check identity against the enrollment and email a code",
            "Accounts",
            Public,
            REGISTRATION,
            202,
            || post(crate::register),
        ),
        e(
            "post",
            "/registrations/{id}/confirmation",
            "Confirm the emailed code; logs in",
            "Accounts",
            Public,
            CONFIRM,
            201,
            || post(crate::confirm_registration),
        ),
        e(
            "post",
            "/registrations/{id}/code",
            "Email a new code",
            "Accounts",
            Public,
            &[],
            202,
            || post(crate::resend_code),
        ),
        e(
            "post",
            "/sessions",
            "Log in",
            "Accounts",
            Public,
            LOGIN,
            201,
            || post(crate::login),
        ),
        e(
            "delete",
            "/sessions/current",
            "Log out",
            "Accounts",
            Member,
            &[],
            204,
            || delete(crate::logout),
        ),
        e(
            "post",
            "/password-resets",
            "Email a reset link (same answer whether or not the account exists)",
            "Accounts",
            Public,
            RESET_REQUEST,
            202,
            || post(crate::request_reset),
        ),
        e(
            "post",
            "/password-resets/completion",
            "Set a new password with a reset link's token",
            "Accounts",
            Public,
            RESET_DONE,
            204,
            || post(crate::complete_reset),
        ),
        e(
            "get",
            "/account",
            "Profile and dashboard summary",
            "Accounts",
            Member,
            &[],
            200,
            || get(crate::account),
        ),
        e(
            "patch",
            "/profile/preferences",
            "Language and reminders",
            "Accounts",
            Member,
            PREFERENCES,
            204,
            || patch(more::preferences),
        ),
        e(
            "get",
            "/bills",
            "Bills, newest coverage month first",
            "Billing",
            Member,
            &[],
            200,
            || get(crate::bills),
        ),
        e(
            "get",
            "/payment-methods",
            "Saved payment methods",
            "Payments",
            Member,
            &[],
            200,
            || get(crate::methods),
        ),
        e(
            "post",
            "/payment-methods",
            "Save a payment method from a gateway token",
            "Payments",
            Member,
            ADD_METHOD,
            201,
            || post(crate::add_method),
        ),
        e(
            "delete",
            "/payment-methods/{id}",
            "Remove a saved payment method",
            "Payments",
            Member,
            &[],
            204,
            || delete(crate::remove_method),
        ),
        e(
            "post",
            "/payments/preview",
            "Review a payment before submitting it",
            "Payments",
            Member,
            PAYMENT,
            200,
            || post(crate::preview_payment),
        ),
        e(
            "get",
            "/payments/{id}",
            "One payment",
            "Payments",
            Member,
            &[],
            200,
            || get(crate::get_payment),
        ),
        e(
            "get",
            "/payments/by-reference/{reference}",
            "A payment by its reference number",
            "Payments",
            Member,
            &[],
            200,
            || get(crate::payment_by_reference),
        ),
        e(
            "get",
            "/autopay",
            "The current automatic payment",
            "Automatic payments",
            Member,
            &[],
            200,
            || get(more::get_autopay),
        ),
        e(
            "post",
            "/autopay/preview",
            "Review automatic-payment settings and get the authorization text",
            "Automatic payments",
            Member,
            AUTOPAY_PREVIEW,
            200,
            || post(more::preview_autopay),
        ),
        e(
            "post",
            "/autopay",
            "Activate automatic payments with the accepted authorization",
            "Automatic payments",
            Member,
            AUTOPAY_ACCEPT,
            201,
            || post(more::create_autopay),
        ),
        e(
            "put",
            "/autopay/{id}",
            "Change automatic payments with a newly accepted authorization",
            "Automatic payments",
            Member,
            AUTOPAY_ACCEPT,
            200,
            || put(more::change_autopay),
        ),
        e(
            "delete",
            "/autopay/{id}",
            "Cancel automatic payments",
            "Automatic payments",
            Member,
            &[],
            204,
            || delete(more::cancel_autopay),
        ),
        e(
            "post",
            "/autopay/{id}/pause",
            "Pause automatic payments",
            "Automatic payments",
            Member,
            PAUSE,
            200,
            || post(more::pause_autopay),
        ),
        e(
            "post",
            "/autopay/{id}/resume",
            "Resume automatic payments",
            "Automatic payments",
            Member,
            &[],
            200,
            || post(more::resume_autopay),
        ),
        e(
            "get",
            "/payment-plans",
            "Payment plans and their installments",
            "Missed payments",
            Member,
            &[],
            200,
            || get(more::plans),
        ),
        e(
            "post",
            "/payment-plans",
            "Spread the past-due balance over monthly installments",
            "Missed payments",
            Member,
            PLAN,
            201,
            || post(more::request_plan),
        ),
        e(
            "get",
            "/enrollments/{id}/reinstatement",
            "What restoring terminated coverage takes",
            "Missed payments",
            Member,
            &[],
            200,
            || get(more::reinstatement_quote),
        ),
        e(
            "post",
            "/enrollments/{id}/reinstatement",
            "Restore terminated coverage once paid",
            "Missed payments",
            Member,
            &[],
            204,
            || post(more::reinstate),
        ),
        e(
            "post",
            "/guest/lookup",
            "Guest pay: find the amount due without logging in",
            "Guest pay",
            Public,
            GUEST,
            200,
            || post(more::guest_lookup),
        ),
        e(
            "post",
            "/webhooks/gateway",
            "Signed payment-gateway events (Stripe-Signature)",
            "Gateway",
            Gateway,
            &[],
            200,
            || post(crate::webhook),
        ),
        e(
            "get",
            "/client-config",
            "Gateway URL and publishable key for tokenization",
            "Gateway",
            Public,
            &[],
            200,
            || get(crate::client_config),
        ),
    ];
    v.push(Endpoint {
        idempotency_key: true,
        ..e(
            "post",
            "/payments",
            "Pay; the reference number is in the answer",
            "Payments",
            Member,
            PAYMENT,
            201,
            || post(crate::make_payment),
        )
    });
    v.push(Endpoint {
        idempotency_key: true,
        ..e(
            "post",
            "/guest/payments",
            "Guest pay with a one-time token",
            "Guest pay",
            Public,
            GUEST_PAY,
            201,
            || post(more::guest_pay),
        )
    });
    v.push(Endpoint {
        query: HISTORY_QUERY,
        ..e(
            "get",
            "/payments",
            "Payment history, newest first",
            "Payments",
            Member,
            &[],
            200,
            || get(crate::list_payments),
        )
    });
    v.push(e(
        "post",
        "/support/sessions",
        "Log in as a support agent",
        "Support",
        Public,
        LOGIN,
        201,
        || post(support::login),
    ));
    v.push(Endpoint {
        query: SEARCH_QUERY,
        ..e(
            "get",
            "/support/accounts",
            "Find members by name, email, username, account number or reference",
            "Support",
            Agent,
            &[],
            200,
            || get(support::search),
        )
    });
    v.push(e(
        "get",
        "/support/accounts/{id}",
        "An account: summary, bills and payments",
        "Support",
        Agent,
        &[],
        200,
        || get(support::account),
    ));
    v.push(e(
        "get",
        "/support/accounts/{id}/timeline",
        "Every recorded change of an account",
        "Support",
        Agent,
        &[],
        200,
        || get(support::timeline),
    ));
    v.push(e(
        "get",
        "/test-clock",
        "The deployment's date (demo and staging only; 404 in production)",
        "Support",
        Agent,
        &[],
        200,
        || get(crate::test_clock::show),
    ));
    v.push(e(
        "post",
        "/test-clock",
        "Move the date forward, running every daily job for each day passed (demo and staging only; 404 in production)",
        "Support",
        Agent,
        CLOCK,
        200,
        || post(crate::test_clock::advance),
    ));
    v.push(e(
        "get",
        "/support/payments/by-reference/{reference}",
        "A payment and its account by reference number",
        "Support",
        Agent,
        &[],
        200,
        || get(support::by_reference),
    ));
    v.push(e(
        "post",
        "/support/accounts/{id}/payments/{payment}/refund",
        "Refund an overpayment",
        "Support",
        Agent,
        AMOUNT,
        200,
        || post(support::refund),
    ));
    v.push(e(
        "post",
        "/support/accounts/{id}/payments/{payment}/receipt",
        "Email the receipt again",
        "Support",
        Agent,
        &[],
        202,
        || post(support::resend_receipt),
    ));
    v.push(e(
        "post",
        "/support/accounts/{id}/payment-plans",
        "Set up a payment plan for a member",
        "Support",
        Agent,
        PLAN,
        201,
        || post(support::plan),
    ));
    v.push(Endpoint {
        idempotency_key: true,
        ..e(
            "post",
            "/support/accounts/{id}/offline-payments",
            "Record a check, money order or bank bill-pay",
            "Support",
            Agent,
            OFFLINE,
            201,
            || post(support::offline_payment),
        )
    });
    v.push(e(
        "get",
        "/openapi.json",
        "This document",
        "Gateway",
        Public,
        &[],
        200,
        || get(crate::openapi_json),
    ));
    v
}

fn field_schema(fields: &[Field]) -> Value {
    let mut props = Map::new();
    for f in fields {
        props.insert(f.name.into(), json!({ "type": f.ty, "description": f.doc }));
    }
    let required: Vec<&str> = fields
        .iter()
        .filter(|f| f.required)
        .map(|f| f.name)
        .collect();
    json!({ "type": "object", "additionalProperties": false, "properties": props, "required": required })
}

fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_owned();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let clean: String = part
            .trim_matches(|c| c == '{' || c == '}')
            .split(['-', '.'])
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_uppercase().chain(c).collect::<String>())
                    .unwrap_or_default()
            })
            .collect();
        id.push_str(&clean);
    }
    id
}

/// The OpenAPI 3.1 document of the API.
pub fn openapi() -> Value {
    let problem = json!({ "$ref": "#/components/schemas/Problem" });
    let mut paths: Map<String, Value> = Map::new();
    for e in endpoints() {
        let mut op = Map::new();
        op.insert("operationId".into(), json!(operation_id(e.method, e.path)));
        op.insert("summary".into(), json!(e.summary));
        op.insert("tags".into(), json!([e.tag]));
        let mut params: Vec<Value> = e
            .path
            .split('/')
            .filter_map(|p| p.strip_prefix('{').and_then(|p| p.strip_suffix('}')))
            .map(|p| json!({ "name": p, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        params.extend(e.query.iter().map(|f| json!({ "name": f.name, "in": "query", "required": false, "description": f.doc, "schema": { "type": "string" } })));
        if e.idempotency_key {
            params.push(json!({ "name": "Idempotency-Key", "in": "header", "required": true, "description": "unique per payment; a retry with the same key returns the same payment", "schema": { "type": "string", "maxLength": 255 } }));
        }
        if e.access == Access::Gateway && e.path.starts_with("/webhooks") {
            params.push(json!({ "name": "Stripe-Signature", "in": "header", "required": true, "schema": { "type": "string" } }));
        }
        if !params.is_empty() {
            op.insert("parameters".into(), json!(params));
        }
        if !e.body.is_empty() {
            op.insert("requestBody".into(), json!({ "required": true, "content": { "application/json": { "schema": field_schema(e.body) } } }));
        }
        match e.access {
            Access::Member | Access::Agent => {
                op.insert(
                    "security".into(),
                    json!([{ "bearer": [] }, { "sessionCookie": [], "csrfHeader": [] }]),
                );
            }
            Access::Public | Access::Gateway => {
                op.insert("security".into(), json!([]));
            }
        }
        let mut responses = Map::new();
        let ok = if e.ok == 204 {
            json!({ "description": "Done" })
        } else {
            json!({ "description": "OK", "content": { "application/json": { "schema": { "type": "object" } } } })
        };
        responses.insert(e.ok.to_string(), ok);
        let mut errors = vec![400, 422, 429, 503];
        if matches!(e.access, Access::Member | Access::Agent) {
            errors.extend([401, 403, 404]);
        }
        if e.idempotency_key {
            errors.push(409);
        }
        for code in errors {
            responses.insert(code.to_string(), json!({ "description": "Problem", "content": { "application/problem+json": { "schema": problem } } }));
        }
        op.insert("responses".into(), Value::Object(responses));
        let path = format!("/api/v1{}", e.path);
        let entry = paths.entry(path).or_insert_with(|| json!({}));
        if let Some(o) = entry.as_object_mut() {
            o.insert(e.method.into(), Value::Object(op));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Health Connector Payment Portal API", "version": "1", "description": "Errors are RFC 9457 problem details; amounts are decimal strings with at most two decimals." },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer" },
                "sessionCookie": { "type": "apiKey", "in": "cookie", "name": "portal_session" },
                "csrfHeader": { "type": "apiKey", "in": "header", "name": "X-CSRF-Token" },
            },
            "schemas": {
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "detail", "errors"],
                    "properties": {
                        "type": { "type": "string" }, "title": { "type": "string" }, "status": { "type": "integer" },
                        "detail": { "type": "string" },
                        "errors": { "type": "array", "items": { "$ref": "#/components/schemas/FieldError" } },
                    },
                },
                "FieldError": {
                    "type": "object",
                    "required": ["field", "code", "message"],
                    "properties": { "field": { "type": "string" }, "code": { "type": "string" }, "message": { "type": "string" } },
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_openapi_document_is_current() {
        let doc = serde_json::to_string_pretty(&openapi()).unwrap_or_default() + "\n";
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        if std::env::var("UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
            std::fs::write(&path, &doc).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == doc,
            "docs/openapi.json is stale: run `cargo xtask openapi` and commit it"
        );
    }

    #[test]
    fn every_endpoint_is_documented_once() {
        let mut seen = std::collections::HashSet::new();
        for e in endpoints() {
            assert!(
                seen.insert((e.method, e.path)),
                "{} {} twice",
                e.method,
                e.path
            );
            assert!(!e.summary.is_empty());
        }
        let doc = openapi();
        let n: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum();
        assert_eq!(n, seen.len());
    }
}
