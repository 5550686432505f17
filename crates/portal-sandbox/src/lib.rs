//! A sandbox payment gateway: a real HTTP server speaking the Stripe API dialect, keeping its
//! state in memory. Test card and bank numbers decide outcomes (see this crate's README); a
//! control endpoint advances its clock so bank transfers settle or come back on demand; signed
//! webhooks go to a configured URL, retried until delivered.
//!
//! Start it in-process with [`start`] (tests and the portal's default run) or as the
//! `portal-sandbox` binary.

// Handlers return early with a ready HTTP error response; its size is irrelevant here.
#![allow(clippy::result_large_err)]

mod numbers;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use numbers::{BankBehaviour, CardBehaviour};
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, oneshot};
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use numbers::{TEST_BANK_ACCOUNTS, TEST_CARDS, TEST_ROUTING_NUMBER};

/// How the sandbox is set up.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Secret key servers authenticate with (`Authorization: Bearer sk_test_...`).
    pub secret_key: String,
    /// Publishable key browsers tokenize with.
    pub publishable_key: String,
    /// Where signed webhooks go, if anywhere.
    pub webhook_url: Option<String>,
    /// The webhook signing secret (`whsec_...`).
    pub webhook_secret: String,
    /// Origins allowed to call the tokenization endpoint from a browser.
    pub allowed_origins: Vec<String>,
    /// Days a bank transfer is processing before it settles.
    pub ach_settle_days: i64,
    /// Days after settling that a returned transfer comes back.
    pub ach_return_days: i64,
    /// Webhook delivery attempts before giving up.
    pub webhook_attempts: u32,
    /// First retry delay for webhooks (doubles each time).
    pub webhook_retry_base: std::time::Duration,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            secret_key: "sk_test_sandbox".into(),
            publishable_key: "pk_test_sandbox".into(),
            webhook_url: None,
            webhook_secret: "whsec_sandbox".into(),
            allowed_origins: Vec::new(),
            ach_settle_days: 3,
            ach_return_days: 2,
            webhook_attempts: 8,
            webhook_retry_base: std::time::Duration::from_millis(200),
        }
    }
}

#[derive(Debug, Clone)]
enum MethodKind {
    Card {
        brand: &'static str,
        last4: String,
        exp_month: u32,
        exp_year: i32,
        behaviour: CardBehaviour,
    },
    Bank {
        last4: String,
        account_type: String,
        routing: String,
        behaviour: BankBehaviour,
    },
}

#[derive(Debug, Clone)]
struct MethodRecord {
    id: String,
    kind: MethodKind,
    created: i64,
}

#[derive(Debug, Clone)]
struct Intent {
    id: String,
    charge_id: String,
    amount: i64,
    amount_refunded: i64,
    status: &'static str,
    method_id: String,
    method_type: &'static str,
    metadata: BTreeMap<String, String>,
    last_error: Option<Value>,
    created: i64,
    settle_at: Option<DateTime<Utc>>,
    return_at: Option<DateTime<Utc>>,
    returned: Option<&'static str>,
}

/// A fault to inject into the next payment-intent creation, for retry tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Process the request, then answer 500.
    ErrorAfterProcessing,
    /// Process the request, then hold the answer longer than any sane client timeout.
    StallAfterProcessing,
    /// Answer 500 without processing.
    ErrorBeforeProcessing,
}

#[derive(Default)]
struct Inner {
    clock_offset: Duration,
    methods: HashMap<String, MethodRecord>,
    intents: HashMap<String, Intent>,
    intent_order: Vec<String>,
    idempotency: HashMap<String, (String, u16, Value)>,
    refunds: Vec<(String, String, i64)>,
    faults: VecDeque<Fault>,
    next: u64,
    events: Vec<Value>,
}

/// A running sandbox's shared state.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Mutex<Inner>>,
    config: Arc<SandboxConfig>,
    webhooks: mpsc::UnboundedSender<Value>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sandbox")
    }
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the sandbox has taken: for tests that check nothing was charged twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Payment intents that succeeded or are processing.
    pub charges: usize,
    /// Cents charged by them (returned transfers excluded).
    pub charged: i64,
    /// Cents refunded.
    pub refunded: i64,
}

impl Sandbox {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + lock(&self.inner).clock_offset
    }

    fn new_id(inner: &mut Inner, prefix: &str) -> String {
        inner.next += 1;
        format!(
            "{prefix}_{}{:06}",
            uuid::Uuid::new_v4()
                .simple()
                .to_string()
                .get(..10)
                .unwrap_or("0"),
            inner.next
        )
    }

    /// Money taken so far.
    pub fn totals(&self) -> Totals {
        let inner = lock(&self.inner);
        let live = inner
            .intents
            .values()
            .filter(|i| matches!(i.status, "succeeded" | "processing") && i.returned.is_none());
        let (charges, charged) = live.fold((0, 0), |(n, c), i| (n + 1, c + i.amount));
        Totals {
            charges,
            charged,
            refunded: inner.refunds.iter().map(|r| r.2).sum(),
        }
    }

    /// Queues a fault for the next payment-intent creation.
    pub fn inject(&self, fault: Fault) {
        lock(&self.inner).faults.push_back(fault);
    }

    /// Moves the sandbox clock forward and processes what fell due (settlements, returns).
    pub fn advance(&self, by: Duration) -> DateTime<Utc> {
        lock(&self.inner).clock_offset += by;
        self.process_due();
        self.now()
    }

    /// Every event emitted so far (also delivered as webhooks when a URL is configured).
    pub fn events(&self) -> Vec<Value> {
        lock(&self.inner).events.clone()
    }

    /// The events emitted after the first `seen`, for a caller reading them as they come.
    pub fn events_since(&self, seen: usize) -> Vec<Value> {
        lock(&self.inner)
            .events
            .get(seen..)
            .map(<[Value]>::to_vec)
            .unwrap_or_default()
    }

    fn emit(&self, inner: &mut Inner, kind: &str, object: Value) {
        let event = json!({
            "id": Self::new_id(inner, "evt"),
            "object": "event",
            "type": kind,
            "created": (Utc::now() + inner.clock_offset).timestamp(),
            "livemode": false,
            "data": { "object": object },
        });
        inner.events.push(event.clone());
        let _ = self.webhooks.send(event);
    }

    /// Settles, fails and returns bank transfers whose time has come.
    pub fn process_due(&self) {
        let mut inner = lock(&self.inner);
        let now = Utc::now() + inner.clock_offset;
        // Only transfers still in flight can change: processing, or settled with a return to come.
        let ids: Vec<String> = inner
            .intent_order
            .iter()
            .filter(|id| {
                inner.intents.get(*id).is_some_and(|i| {
                    i.status == "processing"
                        || (i.status == "succeeded"
                            && i.return_at.is_some()
                            && i.returned.is_none())
                })
            })
            .cloned()
            .collect();
        for id in ids {
            let Some(mut intent) = inner.intents.get(&id).cloned() else {
                continue;
            };
            let MethodKind::Bank { behaviour, .. } = inner
                .methods
                .get(&intent.method_id)
                .map(|m| m.kind.clone())
                .unwrap_or(MethodKind::Bank {
                    last4: String::new(),
                    account_type: String::new(),
                    routing: String::new(),
                    behaviour: BankBehaviour::Settle,
                })
            else {
                continue;
            };
            if intent.status == "processing" && intent.settle_at.is_some_and(|t| t <= now) {
                match behaviour {
                    BankBehaviour::FailBeforeSettling(code) => {
                        intent.status = "requires_payment_method";
                        intent.last_error = Some(error_object(
                            "card_error",
                            code,
                            None,
                            numbers::bank_message(code),
                            None,
                        ));
                        let obj = intent_json(&intent, &inner);
                        inner.intents.insert(id.clone(), intent.clone());
                        self.emit(&mut inner, "payment_intent.payment_failed", obj);
                    }
                    BankBehaviour::Settle | BankBehaviour::ReturnAfterSettling(_) => {
                        intent.status = "succeeded";
                        if let BankBehaviour::ReturnAfterSettling(_) = behaviour {
                            intent.return_at = intent
                                .settle_at
                                .map(|t| t + Duration::days(self.config.ach_return_days));
                        }
                        let obj = intent_json(&intent, &inner);
                        inner.intents.insert(id.clone(), intent.clone());
                        self.emit(&mut inner, "payment_intent.succeeded", obj);
                    }
                }
            }
            if let (BankBehaviour::ReturnAfterSettling(code), "succeeded", None) =
                (behaviour, intent.status, intent.returned)
            {
                if intent.return_at.is_some_and(|t| t <= now) {
                    intent.returned = Some(code);
                    let charge = charge_json(&intent, Some(code));
                    inner.intents.insert(id.clone(), intent);
                    self.emit(&mut inner, "charge.failed", charge);
                }
            }
        }
    }
}

fn error_object(
    kind: &str,
    code: &str,
    decline_code: Option<&str>,
    message: &str,
    intent: Option<Value>,
) -> Value {
    let mut e = serde_json::Map::new();
    e.insert("type".into(), json!(kind));
    e.insert("code".into(), json!(code));
    e.insert("message".into(), json!(message));
    if let Some(d) = decline_code {
        e.insert("decline_code".into(), json!(d));
    }
    if let Some(pi) = intent {
        e.insert("payment_intent".into(), pi);
    }
    Value::Object(e)
}

fn error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": error_object(kind, code, None, message, None) })),
    )
        .into_response()
}

fn method_json(m: &MethodRecord) -> Value {
    match &m.kind {
        MethodKind::Card {
            brand,
            last4,
            exp_month,
            exp_year,
            ..
        } => json!({
            "id": m.id, "object": "payment_method", "type": "card", "created": m.created, "livemode": false,
            "card": { "brand": brand, "last4": last4, "exp_month": exp_month, "exp_year": exp_year, "funding": "credit", "country": "US" },
        }),
        MethodKind::Bank {
            last4,
            account_type,
            routing,
            ..
        } => json!({
            "id": m.id, "object": "payment_method", "type": "us_bank_account", "created": m.created, "livemode": false,
            "us_bank_account": { "bank_name": "STRIPE TEST BANK", "last4": last4, "account_type": account_type,
                                 "account_holder_type": "individual", "routing_number": routing },
        }),
    }
}

fn intent_json(i: &Intent, _inner: &Inner) -> Value {
    json!({
        "id": i.id, "object": "payment_intent", "amount": i.amount,
        "amount_received": if i.status == "succeeded" { i.amount } else { 0 },
        "currency": "usd", "status": i.status, "payment_method": i.method_id,
        "payment_method_types": [i.method_type], "metadata": i.metadata, "created": i.created,
        "latest_charge": i.charge_id, "last_payment_error": i.last_error, "livemode": false,
    })
}

fn charge_json(i: &Intent, returned: Option<&str>) -> Value {
    json!({
        "id": i.charge_id, "object": "charge", "payment_intent": i.id, "amount": i.amount,
        "amount_refunded": i.amount_refunded, "refunded": i.amount_refunded == i.amount,
        "status": if returned.is_some() { "failed" } else { "succeeded" },
        "failure_code": returned.map(numbers::return_failure_code),
        "failure_message": returned.map(numbers::return_message),
        "metadata": i.metadata, "payment_method_details": { "type": i.method_type },
    })
}

/// Parses a Stripe-style form body (`a[b]=c&d[]=e`) into ordered pairs.
fn form(body: &Bytes) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn field<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

enum Auth {
    Secret,
    Publishable,
}

fn auth(sb: &Sandbox, headers: &HeaderMap) -> Option<Auth> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))?;
    if bearer == sb.config.secret_key {
        Some(Auth::Secret)
    } else if bearer == sb.config.publishable_key {
        Some(Auth::Publishable)
    } else {
        None
    }
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        "api_key_invalid",
        "Invalid API Key provided.",
    )
}

fn secret_only(sb: &Sandbox, headers: &HeaderMap) -> Result<(), Response> {
    match auth(sb, headers) {
        Some(Auth::Secret) => Ok(()),
        Some(Auth::Publishable) => Err(error(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "secret_key_required",
            "This request needs a secret key.",
        )),
        None => Err(unauthorized()),
    }
}

/// Replays the stored answer for an idempotency key, or refuses a key reused with other
/// parameters, as Stripe does.
fn replay(
    sb: &Sandbox,
    headers: &HeaderMap,
    path: &str,
    body: &Bytes,
) -> Result<Option<String>, Response> {
    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    if key.is_empty() || key.len() > 255 {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "idempotency_key_invalid",
            "Idempotency keys are 1 to 255 characters.",
        ));
    }
    let scoped = format!("{path}:{key}");
    let fingerprint = String::from_utf8_lossy(body).into_owned();
    let inner = lock(&sb.inner);
    match inner.idempotency.get(&scoped) {
        Some((fp, status, value)) if *fp == fingerprint => {
            let mut r = (
                StatusCode::from_u16(*status).unwrap_or(StatusCode::OK),
                axum::Json(value.clone()),
            )
                .into_response();
            r.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            Err(r)
        }
        Some(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "idempotency_error",
            "idempotency_key_in_use",
            "Keys for idempotent requests can only be used with the same parameters they were first used with.",
        )),
        None => Ok(Some(scoped)),
    }
}

fn remember(sb: &Sandbox, scoped: Option<String>, body: &Bytes, status: StatusCode, value: &Value) {
    if let Some(k) = scoped {
        lock(&sb.inner).idempotency.insert(
            k,
            (
                String::from_utf8_lossy(body).into_owned(),
                status.as_u16(),
                value.clone(),
            ),
        );
    }
}

async fn create_method(State(sb): State<Sandbox>, headers: HeaderMap, body: Bytes) -> Response {
    if auth(&sb, &headers).is_none() {
        return unauthorized();
    }
    let p = form(&body);
    let now = sb.now();
    let kind = match field(&p, "type") {
        Some("card") => {
            let number: String = field(&p, "card[number]")
                .unwrap_or("")
                .chars()
                .filter(char::is_ascii_digit)
                .collect();
            let check = match portal_core::instrument::check_card_number(&number) {
                Ok(c) => c,
                Err(_) => {
                    return error(
                        StatusCode::PAYMENT_REQUIRED,
                        "card_error",
                        "incorrect_number",
                        "Your card number is incorrect.",
                    );
                }
            };
            let month = field(&p, "card[exp_month]").and_then(|m| m.trim().parse::<u32>().ok());
            let year = field(&p, "card[exp_year]")
                .and_then(|y| y.trim().parse::<i32>().ok())
                .map(|y| if y < 100 { y + 2000 } else { y });
            let (Some(month), Some(year)) = (month, year) else {
                return error(
                    StatusCode::PAYMENT_REQUIRED,
                    "card_error",
                    "invalid_expiry_year",
                    "Your card's expiration date is incomplete.",
                );
            };
            if portal_core::instrument::CardExpiry::new(month, year, now.date_naive()).is_err() {
                return error(
                    StatusCode::PAYMENT_REQUIRED,
                    "card_error",
                    "invalid_expiry_year",
                    "Your card's expiration year is in the past.",
                );
            }
            let cvc = field(&p, "card[cvc]").unwrap_or("");
            if !cvc.is_empty() && !(3..=4).contains(&cvc.len()) {
                return error(
                    StatusCode::PAYMENT_REQUIRED,
                    "card_error",
                    "invalid_cvc",
                    "Your card's security code is invalid.",
                );
            }
            MethodKind::Card {
                brand: numbers::brand(&check.brand),
                last4: check.last4,
                exp_month: month,
                exp_year: year,
                behaviour: numbers::card_behaviour(&number),
            }
        }
        Some("us_bank_account") => {
            let routing: String = field(&p, "us_bank_account[routing_number]")
                .unwrap_or("")
                .to_owned();
            let account: String = field(&p, "us_bank_account[account_number]")
                .unwrap_or("")
                .to_owned();
            if portal_core::instrument::check_routing_number(&routing).is_err() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "routing_number_invalid",
                    "The routing number is not valid.",
                );
            }
            let Ok(last4) = portal_core::instrument::check_bank_account_number(&account) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "account_number_invalid",
                    "The account number is not valid.",
                );
            };
            let account_type = match field(&p, "us_bank_account[account_type]") {
                Some("savings") => "savings",
                _ => "checking",
            };
            MethodKind::Bank {
                last4,
                account_type: account_type.into(),
                routing,
                behaviour: numbers::bank_behaviour(&account),
            }
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "parameter_invalid_empty",
                "type must be card or us_bank_account.",
            );
        }
    };
    let mut inner = lock(&sb.inner);
    let id = Sandbox::new_id(&mut inner, "pm");
    let record = MethodRecord {
        id: id.clone(),
        kind,
        created: now.timestamp(),
    };
    let out = method_json(&record);
    inner.methods.insert(id, record);
    (StatusCode::OK, axum::Json(out)).into_response()
}

async fn get_method(
    State(sb): State<Sandbox>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = secret_only(&sb, &headers) {
        return r;
    }
    match lock(&sb.inner).methods.get(&id) {
        Some(m) => axum::Json(method_json(m)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "resource_missing",
            &format!("No such PaymentMethod: '{id}'"),
        ),
    }
}

async fn create_intent(State(sb): State<Sandbox>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = secret_only(&sb, &headers) {
        return r;
    }
    // Faults model the network between client and gateway: they hit replays too.
    let fault = lock(&sb.inner).faults.pop_front();
    if fault == Some(Fault::ErrorBeforeProcessing) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "internal",
            "An error occurred with our connection to Stripe.",
        );
    }
    let answer = match replay(&sb, &headers, "pi", &body) {
        Err(replayed) => replayed,
        Ok(scoped) => match confirm_intent(&sb, &form(&body)) {
            Ok((status, body_out)) => {
                remember(&sb, scoped, &body, status, &body_out);
                (status, axum::Json(body_out)).into_response()
            }
            Err(r) => r,
        },
    };
    match fault {
        Some(Fault::ErrorAfterProcessing) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "internal",
            "An error occurred with our connection to Stripe.",
        ),
        Some(Fault::StallAfterProcessing) => {
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            answer
        }
        _ => answer,
    }
}

/// Creates and confirms a PaymentIntent: cards succeed or decline at once, bank debits go
/// `processing`.
fn confirm_intent(sb: &Sandbox, p: &[(String, String)]) -> Result<(StatusCode, Value), Response> {
    let amount = field(p, "amount").and_then(|a| a.parse::<i64>().ok());
    let Some(amount) = amount.filter(|a| *a >= 50 && *a <= 99_999_999) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "amount_too_small",
            "Amount must be a whole number of cents from 50 to 99999999.",
        ));
    };
    if field(p, "currency") != Some("usd") {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "currency_invalid",
            "Only usd is supported.",
        ));
    }
    let Some(method_id) = field(p, "payment_method").map(str::to_owned) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "parameter_missing",
            "Missing required param: payment_method.",
        ));
    };
    let metadata: BTreeMap<String, String> = p
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("metadata[")
                .and_then(|k| k.strip_suffix(']'))
                .map(|k| (k.to_owned(), v.clone()))
        })
        .collect();
    let now = sb.now();
    let mut inner = lock(&sb.inner);
    let Some(method) = inner.methods.get(&method_id).cloned() else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "resource_missing",
            &format!("No such PaymentMethod: '{method_id}'"),
        ));
    };
    let id = Sandbox::new_id(&mut inner, "pi");
    let charge_id = Sandbox::new_id(&mut inner, "ch");
    let mut intent = Intent {
        id: id.clone(),
        charge_id,
        amount,
        amount_refunded: 0,
        status: "succeeded",
        method_id,
        method_type: "card",
        metadata,
        last_error: None,
        created: now.timestamp(),
        settle_at: None,
        return_at: None,
        returned: None,
    };
    let (status, declined, event) = match &method.kind {
        MethodKind::Card { behaviour, .. } => match behaviour.decline() {
            None => (StatusCode::OK, None, "payment_intent.succeeded"),
            Some((code, decline, message)) => {
                intent.status = "requires_payment_method";
                intent.last_error = Some(error_object("card_error", code, decline, message, None));
                (
                    StatusCode::PAYMENT_REQUIRED,
                    Some((code, decline, message)),
                    "payment_intent.payment_failed",
                )
            }
        },
        MethodKind::Bank { .. } => {
            intent.method_type = "us_bank_account";
            intent.status = "processing";
            intent.settle_at = Some(now + Duration::days(sb.config.ach_settle_days));
            (StatusCode::OK, None, "payment_intent.processing")
        }
    };
    let pi = intent_json(&intent, &inner);
    inner.intents.insert(id.clone(), intent);
    inner.intent_order.push(id);
    sb.emit(&mut inner, event, pi.clone());
    let body = match declined {
        None => pi,
        Some((code, decline, message)) => {
            json!({ "error": error_object("card_error", code, decline, message, Some(pi)) })
        }
    };
    Ok((status, body))
}

async fn get_intent(
    State(sb): State<Sandbox>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = secret_only(&sb, &headers) {
        return r;
    }
    let inner = lock(&sb.inner);
    match inner.intents.get(&id) {
        Some(i) => axum::Json(intent_json(i, &inner)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "resource_missing",
            &format!("No such payment_intent: '{id}'"),
        ),
    }
}

#[derive(serde::Deserialize)]
struct SearchQuery {
    query: String,
}

/// `GET /v1/payment_intents/search?query=metadata['key']:'value'` (the only form supported).
async fn search_intents(
    State(sb): State<Sandbox>,
    headers: HeaderMap,
    Query(q): Query<SearchQuery>,
) -> Response {
    if let Err(r) = secret_only(&sb, &headers) {
        return r;
    }
    let parsed = q
        .query
        .strip_prefix("metadata['")
        .and_then(|r| r.split_once("']:'"))
        .and_then(|(k, v)| v.strip_suffix('\'').map(|v| (k.to_owned(), v.to_owned())));
    let Some((key, value)) = parsed else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "parameter_invalid",
            "Search supports metadata['key']:'value' only.",
        );
    };
    let inner = lock(&sb.inner);
    let data: Vec<Value> = inner
        .intent_order
        .iter()
        .filter_map(|id| inner.intents.get(id))
        .filter(|i| i.metadata.get(&key) == Some(&value))
        .map(|i| intent_json(i, &inner))
        .collect();
    axum::Json(json!({ "object": "search_result", "data": data, "has_more": false }))
        .into_response()
}

async fn create_refund(State(sb): State<Sandbox>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = secret_only(&sb, &headers) {
        return r;
    }
    let scoped = match replay(&sb, &headers, "re", &body) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let p = form(&body);
    let Some(pi_id) = field(&p, "payment_intent").map(str::to_owned) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "parameter_missing",
            "Missing required param: payment_intent.",
        );
    };
    let mut inner = lock(&sb.inner);
    let Some(mut intent) = inner.intents.get(&pi_id).cloned() else {
        drop(inner);
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "resource_missing",
            &format!("No such payment_intent: '{pi_id}'"),
        );
    };
    if intent.status != "succeeded" || intent.returned.is_some() {
        drop(inner);
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "charge_not_refundable",
            "Only succeeded payments can be refunded.",
        );
    }
    let remaining = intent.amount - intent.amount_refunded;
    let amount = match field(&p, "amount") {
        None => remaining,
        Some(a) => match a.parse::<i64>() {
            Ok(v) if v > 0 => v,
            _ => {
                drop(inner);
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "parameter_invalid_integer",
                    "amount must be a positive integer.",
                );
            }
        },
    };
    if amount > remaining {
        drop(inner);
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "amount_too_large",
            "Refund amount is greater than the unrefunded amount.",
        );
    }
    intent.amount_refunded += amount;
    let id = Sandbox::new_id(&mut inner, "re");
    inner.refunds.push((id.clone(), pi_id.clone(), amount));
    let refund = json!({ "id": id, "object": "refund", "amount": amount, "payment_intent": pi_id, "charge": intent.charge_id, "status": "succeeded", "currency": "usd" });
    let charge = charge_json(&intent, None);
    inner.intents.insert(pi_id, intent);
    sb.emit(&mut inner, "charge.refunded", charge);
    drop(inner);
    remember(&sb, scoped, &body, StatusCode::OK, &refund);
    axum::Json(refund).into_response()
}

struct Advance {
    days: i64,
    seconds: i64,
}

/// `POST /v1/test_helpers/advance` with `days` and/or `seconds`: moves the sandbox clock.
async fn advance(State(sb): State<Sandbox>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = secret_only(&sb, &headers) {
        return r;
    }
    let p = form(&body);
    let days = field(&p, "days").map_or(Ok(0), str::parse::<i64>);
    let seconds = field(&p, "seconds").map_or(Ok(0), str::parse::<i64>);
    let (Ok(days), Ok(seconds)) = (days, seconds) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "parameter_invalid_integer",
            "days and seconds must be integers.",
        );
    };
    let a = Advance { days, seconds };
    if !(0..=3650).contains(&a.days) || !(0..=86_400 * 365).contains(&a.seconds) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "parameter_invalid_integer",
            "days must be 0-3650 and seconds 0-31536000.",
        );
    }
    let now = sb.advance(Duration::days(a.days) + Duration::seconds(a.seconds));
    axum::Json(json!({ "object": "test_clock", "frozen_time": now.timestamp() })).into_response()
}

/// `POST /v1/test_helpers/faults` with `fault` = `error_after_processing`,
/// `stall_after_processing` or `error_before_processing`: the next payment-intent creation
/// misbehaves that way.
async fn faults(State(sb): State<Sandbox>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = secret_only(&sb, &headers) {
        return r;
    }
    let fault = match field(&form(&body), "fault") {
        Some("error_after_processing") => Fault::ErrorAfterProcessing,
        Some("stall_after_processing") => Fault::StallAfterProcessing,
        Some("error_before_processing") => Fault::ErrorBeforeProcessing,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "parameter_invalid",
                "unknown fault",
            );
        }
    };
    sb.inject(fault);
    axum::Json(json!({ "object": "fault", "queued": true })).into_response()
}

/// `GET /v1/test_helpers/totals`: what has been charged and refunded.
async fn totals(State(sb): State<Sandbox>, headers: HeaderMap) -> Response {
    if let Err(r) = secret_only(&sb, &headers) {
        return r;
    }
    let t = sb.totals();
    axum::Json(json!({ "charges": t.charges, "charged": t.charged, "refunded": t.refunded }))
        .into_response()
}

/// The Stripe-Signature header for a payload: `t=<unix>,v1=<hex hmac of "t.payload">`.
pub fn sign(secret: &str, timestamp: i64, payload: &[u8]) -> String {
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    let sig: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={timestamp},v1={sig}")
}

async fn deliver_webhooks(config: Arc<SandboxConfig>, mut rx: mpsc::UnboundedReceiver<Value>) {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    while let Some(event) = rx.recv().await {
        let Some(url) = config.webhook_url.clone() else {
            continue;
        };
        let payload = event.to_string();
        let mut delay = config.webhook_retry_base;
        for _ in 0..config.webhook_attempts.max(1) {
            let signature = sign(
                &config.webhook_secret,
                Utc::now().timestamp(),
                payload.as_bytes(),
            );
            let sent = client
                .post(&url)
                .header("content-type", "application/json")
                .header("stripe-signature", signature)
                .body(payload.clone())
                .send()
                .await;
            if sent.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2);
        }
    }
}

/// A running sandbox.
#[derive(Debug)]
pub struct SandboxHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state, for tests.
    pub sandbox: Sandbox,
    shutdown: Option<oneshot::Sender<()>>,
}

impl SandboxHandle {
    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server.
    pub fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The sandbox's routes over its state.
pub fn router(sandbox: Sandbox) -> Router {
    let origins: Vec<HeaderValue> = sandbox
        .config
        .allowed_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]);
    let tokenize = Router::new()
        .route("/v1/payment_methods", post(create_method))
        .layer(cors);
    Router::new()
        .route("/v1/payment_methods/{id}", get(get_method))
        .route("/v1/payment_intents", post(create_intent))
        .route("/v1/payment_intents/search", get(search_intents))
        .route("/v1/payment_intents/{id}", get(get_intent))
        .route("/v1/refunds", post(create_refund))
        .route("/v1/test_helpers/advance", post(advance))
        .route("/v1/test_helpers/faults", post(faults))
        .route("/v1/test_helpers/totals", get(totals))
        .merge(tokenize)
        .with_state(sandbox)
}

/// Starts the sandbox on `addr` (port 0 picks a free port) in the current runtime.
pub async fn start(config: SandboxConfig, addr: SocketAddr) -> std::io::Result<SandboxHandle> {
    let config = Arc::new(config);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(deliver_webhooks(config.clone(), rx));
    let sandbox = Sandbox {
        inner: Arc::new(Mutex::new(Inner::default())),
        config,
        webhooks: tx,
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let app = router(sandbox.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await;
    });
    // Real time passes too: settle what falls due every second.
    let ticker = sandbox.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            ticker.process_due();
        }
    });
    Ok(SandboxHandle {
        addr,
        sandbox,
        shutdown: Some(stop_tx),
    })
}
