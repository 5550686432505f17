//! What members do, over HTTP.

use crate::{DEMO_PASSWORD, DEMO_USER, TestApp};
use portal_core::notice::NoticeBody;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

fn registration(username: &str) -> Value {
    json!({
        "account_number": "HC1000002", "first_name": "María", "last_name": "López",
        "date_of_birth": "1980-05-17", "ssn": "234-56-7890", "email": format!("{username}.o'neil+drop--table@example.com"),
        "username": username, "password": "a long and happy passphrase", "language": "es",
    })
}

/// Registers the second demo household and returns its session token.
async fn register_second(app: &TestApp) -> String {
    let (status, body) = app
        .post("/registrations", None, registration("maria"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let account = body["account_id"].as_str().unwrap().to_owned();
    let code = app
        .outbox()
        .await
        .into_iter()
        .find_map(|n| match n.body {
            NoticeBody::EmailVerification { code, .. } => Some(code),
            _ => None,
        })
        .expect("a verification code was emailed");
    let (status, body) = app
        .post(
            &format!("/registrations/{account}/confirmation"),
            None,
            json!({ "code": code }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

pub async fn the_member_guide_journey(app: &TestApp) {
    // The API describes itself.
    let doc: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(
        doc["paths"]["/api/v1/payments"]["post"]["parameters"]
            .to_string()
            .contains("Idempotency-Key")
    );
    // Create Account, verify by emailed code, land logged in.
    let maria = register_second(app).await;
    let (_, me) = app.get("/account", &maria).await;
    assert_eq!(me["language"], "es");
    assert_eq!(
        me["email"], "maria.o'neil+drop--table@example.com",
        "stored and returned verbatim"
    );
    assert_eq!(me["ssn"], "***-**-7890");
    // Log in, see what is due on the dashboard.
    let token = app.login(DEMO_USER, DEMO_PASSWORD).await;
    let (status, account) = app.get("/account", &token).await;
    assert_eq!(status, StatusCode::OK);
    let due = account["summary"]["amount_due"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(due, "0.00");
    let (_, bills) = app.get("/bills", &token).await;
    assert!(!bills["bills"].as_array().unwrap().is_empty());
    // Make a Payment: amount defaults to the amount due; review; submit; reference number.
    let card = app.card("4242424242424242").await;
    let (status, review) = app
        .post("/payments/preview", Some(&token), json!({ "token": card }))
        .await;
    assert_eq!(status, StatusCode::OK, "{review}");
    assert_eq!(review["amount"], due.as_str());
    assert_eq!(review["method"], "Visa •••• 4242");
    let (status, paid) = app
        .pay(&token, "guide-1", json!({ "token": card, "save": true }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{paid}");
    assert_eq!(paid["status"], "succeeded");
    assert_eq!(paid["amount_due_after"], "0.00");
    let reference = paid["reference"].as_str().unwrap();
    let (status, found) = app
        .get(
            &format!("/payments/by-reference/{}", reference.to_lowercase()),
            &token,
        )
        .await;
    assert_eq!(
        (status, found["id"].clone()),
        (StatusCode::OK, paid["id"].clone())
    );
    // Payment History lists it; the saved card is there for next time.
    let (_, history) = app.get("/payments?status=succeeded", &token).await;
    let listed: Vec<&Value> = history["payments"].as_array().unwrap().iter().collect();
    assert_eq!(
        listed.len(),
        2,
        "the demo's first month, paid by check, and this"
    );
    assert_eq!(listed[0]["id"], paid["id"], "newest first");
    let (_, methods) = app.get("/payment-methods", &token).await;
    assert_eq!(methods["payment_methods"][0]["label"], "Visa •••• 4242");
    // The confirmation email is queued with the reference number.
    assert!(app.outbox().await.iter().any(|n| matches!(&n.body, NoticeBody::PaymentConfirmation { reference: r, .. } if r == reference)));
    // Log out ends the session.
    let (status, _) = app
        .send(
            Method::DELETE,
            "/sessions/current",
            Some(&token),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.get("/account", &token).await.0,
        StatusCode::UNAUTHORIZED
    );
}

pub async fn payment_retries_are_idempotent(app: &TestApp) {
    let token = app.login(DEMO_USER, DEMO_PASSWORD).await;
    let (_, before) = app.get("/payments", &token).await;
    let before = before["payments"].as_array().unwrap().len();
    let card = app.card("4242424242424242").await;
    let body = json!({ "amount": "10.00", "token": card });
    let (s1, p1) = app.pay(&token, "retry-key", body.clone()).await;
    let (s2, p2) = app.pay(&token, "retry-key", body).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::OK));
    assert_eq!(p1["id"], p2["id"]);
    assert_eq!(p2["replayed"], true);
    let (s3, p3) = app
        .pay(
            &token,
            "retry-key",
            json!({ "amount": "11.00", "token": card }),
        )
        .await;
    assert_eq!(s3, StatusCode::CONFLICT, "{p3}");
    let (_, history) = app.get("/payments", &token).await;
    assert_eq!(history["payments"].as_array().unwrap().len(), before + 1);
}

pub async fn a_declined_card_gives_its_reason_and_leaves_the_bill_open(app: &TestApp) {
    let token = app.login(DEMO_USER, DEMO_PASSWORD).await;
    let (_, before) = app.get("/account", &token).await;
    let (_, methods_before) = app.get("/payment-methods", &token).await;
    let card = app.card("4000000000009995").await;
    // Asked to save it: a declined card is not kept.
    let (status, p) = app
        .pay(&token, "nsf", json!({ "token": card, "save": true }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    assert_eq!(p["status"], "failed");
    let (_, methods_after) = app.get("/payment-methods", &token).await;
    assert_eq!(
        methods_after, methods_before,
        "the declined card was not saved"
    );
    assert_eq!(p["decline_reason"]["code"], "insufficient_funds");
    assert!(
        p["decline_reason"]["message"]
            .as_str()
            .unwrap()
            .contains("not enough funds")
    );
    let (_, after) = app.get("/account", &token).await;
    assert_eq!(
        after["summary"]["amount_due"],
        before["summary"]["amount_due"]
    );
}

async fn wait_for_status(app: &TestApp, token: &str, id: &str, wanted: &str) -> Value {
    for _ in 0..100 {
        let (_, p) = app.get(&format!("/payments/{id}"), token).await;
        if p["status"] == wanted {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("payment {id} never became {wanted}");
}

pub async fn a_bank_transfer_is_pending_then_settles_by_webhook(app: &TestApp) {
    let token = app.login(DEMO_USER, DEMO_PASSWORD).await;
    let bank = app.bank("000123456789").await;
    let (status, p) = app.pay(&token, "ach-1", json!({ "token": bank })).await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    assert_eq!(p["status"], "pending");
    assert!(p["expected_settlement"].is_string());
    let (_, account) = app.get("/account", &token).await;
    assert_eq!(
        account["summary"]["amount_due"], "0.00",
        "a processing transfer protects the bill"
    );
    assert_eq!(
        account["summary"]["pending_transfers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    app.advance_gateway_days(3).await;
    let settled = wait_for_status(app, &token, p["id"].as_str().unwrap(), "succeeded").await;
    assert!(
        settled["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["cause"].as_str().unwrap().contains("webhook"))
    );
}

pub async fn a_returned_transfer_reopens_the_bill(app: &TestApp) {
    let token = app.login(DEMO_USER, DEMO_PASSWORD).await;
    let (_, before) = app.get("/account", &token).await;
    let bank = app.bank("000000000001").await;
    let (_, p) = app.pay(&token, "ach-r01", json!({ "token": bank })).await;
    let id = p["id"].as_str().unwrap();
    app.advance_gateway_days(3).await;
    wait_for_status(app, &token, id, "succeeded").await;
    app.advance_gateway_days(2).await;
    let returned = wait_for_status(app, &token, id, "returned").await;
    assert_eq!(returned["state"]["code"], "R01");
    let (_, after) = app.get("/account", &token).await;
    assert_eq!(
        after["summary"]["amount_due"], before["summary"]["amount_due"],
        "the bill is open again"
    );
    assert!(
        app.outbox()
            .await
            .iter()
            .any(|n| matches!(n.body, NoticeBody::BankTransferReturned { .. }))
    );
}

pub async fn repeated_bad_passwords_lock_the_account(app: &TestApp) {
    for _ in 0..4 {
        let (status, body) = app
            .post(
                "/sessions",
                None,
                json!({ "username": DEMO_USER, "password": "not the password" }),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["detail"], "The username or password is incorrect.");
    }
    let (status, body) = app
        .post(
            "/sessions",
            None,
            json!({ "username": DEMO_USER, "password": "not the password" }),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["title"], "Account locked");
    let (status, _) = app
        .post(
            "/sessions",
            None,
            json!({ "username": DEMO_USER, "password": DEMO_PASSWORD }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "locked even with the right password"
    );
    // An unknown username answers exactly like a known one.
    let (status, body) = app
        .post(
            "/sessions",
            None,
            json!({ "username": "nobody-here", "password": "whatever it is" }),
        )
        .await;
    assert_eq!(
        (status, body["detail"].clone()),
        (
            StatusCode::UNAUTHORIZED,
            json!("The username or password is incorrect.")
        )
    );
}

/// Sets a new password with an emailed reset link's token.
async fn complete_reset(app: &TestApp, token: &str, password: &str) -> (StatusCode, Value) {
    app.post(
        "/password-resets/completion",
        None,
        json!({ "token": token, "password": password }),
    )
    .await
}

pub async fn a_reset_link_works_once(app: &TestApp) {
    let (status, _) = app
        .post(
            "/password-resets",
            None,
            json!({ "identifier": "dana.rivera@example.com" }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status_unknown, _) = app
        .post(
            "/password-resets",
            None,
            json!({ "identifier": "nobody@example.com" }),
        )
        .await;
    assert_eq!(
        status_unknown,
        StatusCode::ACCEPTED,
        "the same answer either way"
    );
    let token = app
        .outbox()
        .await
        .into_iter()
        .find_map(|n| match n.body {
            NoticeBody::PasswordReset { token, .. } => Some(token),
            _ => None,
        })
        .unwrap();
    let new = "a completely new passphrase";
    let (status, body) = complete_reset(app, &token, new).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = complete_reset(app, &token, "yet another passphrase").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    app.login(DEMO_USER, new).await;
}

pub async fn another_members_resources_answer_not_found(app: &TestApp) {
    let dana = app.login(DEMO_USER, DEMO_PASSWORD).await;
    let card = app.card("4242424242424242").await;
    let (_, p) = app
        .pay(
            &dana,
            "dana-1",
            json!({ "amount": "5.00", "token": card, "save": true }),
        )
        .await;
    let (_, methods) = app.get("/payment-methods", &dana).await;
    let method_id = methods["payment_methods"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let start = (chrono::Utc::now().date_naive() + chrono::Days::new(10)).to_string();
    let form = json!({ "payment_method_id": method_id, "amount_rule": "amount_due", "frequency": "monthly", "start_date": start });
    let (_, review) = app
        .post("/autopay/preview", Some(&dana), form.clone())
        .await;
    let mut accept = form.clone();
    accept["authorization_text"] = review["authorization_text"].clone();
    let (status, mandate) = app.post("/autopay", Some(&dana), accept.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{mandate}");
    let mandate_id = mandate["id"].as_str().unwrap().to_owned();
    let (_, dana_account) = app.get("/account", &dana).await;
    let enrollment = dana_account["summary"]["enrollments"][0]["enrollment_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let maria = register_second(app).await;
    assert_eq!(
        app.post(
            &format!("/autopay/{mandate_id}/pause"),
            Some(&maria),
            json!({})
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.post(
            &format!("/autopay/{mandate_id}/resume"),
            Some(&maria),
            json!({})
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.send(
            Method::DELETE,
            &format!("/autopay/{mandate_id}"),
            Some(&maria),
            None,
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.send(
            Method::PUT,
            &format!("/autopay/{mandate_id}"),
            Some(&maria),
            Some(accept.to_string()),
            None
        )
        .await
        .0,
        StatusCode::UNPROCESSABLE_ENTITY,
        "her own form check fails first: the method is not hers"
    );
    assert_eq!(
        app.get(&format!("/enrollments/{enrollment}/reinstatement"), &maria)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.post(
            &format!("/enrollments/{enrollment}/reinstatement"),
            Some(&maria),
            json!({})
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    assert!(app.get("/autopay", &maria).await.1["autopay"].is_null());
    let id = p["id"].as_str().unwrap();
    let reference = p["reference"].as_str().unwrap();
    assert_eq!(
        app.get(&format!("/payments/{id}"), &maria).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get(&format!("/payments/by-reference/{reference}"), &maria)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (status, _) = app
        .send(
            Method::DELETE,
            &format!("/payment-methods/{method_id}"),
            Some(&maria),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app
        .pay(&maria, "maria-1", json!({ "payment_method_id": method_id }))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (_, mine) = app.get("/payments", &maria).await;
    assert!(mine["payments"].as_array().unwrap().is_empty());
    assert_eq!(
        app.get("/payments/not-a-uuid", &maria).await.0,
        StatusCode::NOT_FOUND
    );
}

pub async fn bad_input_is_refused_with_the_field_named_and_nothing_written(app: &TestApp) {
    let token = app.login(DEMO_USER, DEMO_PASSWORD).await;
    let card = app.card("4242424242424242").await;
    let (_, before) = app.get("/payments", &token).await;
    let raw = |body: &str| {
        app.send(
            Method::POST,
            "/payments",
            Some(&token),
            Some(body.to_owned()),
            Some("bad-input"),
        )
    };
    let (status, body) = raw("{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(raw("[1,2]").await.0, StatusCode::BAD_REQUEST);
    let field_of = |b: &Value| {
        b["errors"]
            .as_array()
            .map(|e| {
                e.iter()
                    .map(|x| x["field"].as_str().unwrap_or("").to_owned())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let cases: Vec<(Value, &str)> = vec![
        (json!({ "amount": "12.345", "token": card }), "amount"),
        (json!({ "amount": "-5", "token": card }), "amount"),
        (json!({ "amount": "0", "token": card }), "amount"),
        (json!({ "amount": "0.00", "token": card }), "amount"),
        (json!({ "amount": "99999999999", "token": card }), "amount"),
        (json!({ "amount": 12.5, "token": card }), "amount"),
        (json!({ "amount": "ten", "token": card }), "amount"),
        (json!({ "token": 42 }), "token"),
        (json!({ "token": "4242424242424242" }), "token"),
        (json!({ "token": "x".repeat(5000) }), "token"),
        (
            json!({ "payment_method_id": "'; DROP TABLE payments; --" }),
            "payment_method_id",
        ),
        (json!({}), "payment_method_id"),
        (json!({ "token": card, "save": "yes" }), "save"),
        (json!({ "token": card, "surprise": true }), "surprise"),
    ];
    for (body, field) in cases {
        let (status, answer) = app.pay(&token, "bad-input", body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert!(
            field_of(&answer).iter().any(|f| f == field),
            "{body}: expected {field} in {answer}"
        );
    }
    let (status, answer) = app
        .send(
            Method::POST,
            "/payments",
            Some(&token),
            Some(json!({ "token": card }).to_string()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field_of(&answer), ["Idempotency-Key"]);
    let (_, history) = app.get("/payments", &token).await;
    assert!(history["payments"] == before["payments"], "nothing written");
    // Registration: every field named; SQL-looking and non-ASCII input handled as data.
    let (status, answer) = app
        .post("/registrations", None, json!({ "account_number": "HC1000002'; --", "first_name": "Zoë", "last_name": "<b>", "date_of_birth": "2030-01-01", "ssn": "000-00-0000", "email": "no", "username": "a", "password": "short", "language": "xx" }))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let fields = field_of(&answer);
    for f in [
        "account_number",
        "last_name",
        "date_of_birth",
        "ssn",
        "email",
        "username",
        "password",
        "language",
    ] {
        assert!(fields.iter().any(|x| x == f), "{f} missing from {answer}");
    }
    assert!(
        !fields.iter().any(|x| x == "first_name"),
        "non-ASCII names are fine"
    );
    let (status, _) = app
        .post(
            "/sessions",
            None,
            json!({ "username": "' OR 1=1 --", "password": "x' OR '1'='1" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, answer) = app
        .post("/sessions", None, json!({ "username": ["a"] }))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(
        app.get("/payments?limit=0", &token).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        app.get("/payments?from=2027-13-01", &token).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let huge = "x".repeat(100 * 1024);
    let (status, _) = app
        .send(
            Method::POST,
            "/sessions",
            None,
            Some(format!("{{\"username\":\"{huge}\"}}")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

pub async fn automatic_payments_guest_pay_and_preferences(app: &TestApp) {
    let token = app.login(DEMO_USER, DEMO_PASSWORD).await;
    let card = app.card("4242424242424242").await;
    let (status, m) = app
        .post("/payment-methods", Some(&token), json!({ "token": card }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{m}");
    let method_id = m["id"].as_str().unwrap().to_owned();
    let start = (chrono::Utc::now().date_naive() + chrono::Days::new(10)).to_string();
    let form = json!({ "payment_method_id": method_id, "amount_rule": "amount_due", "frequency": "monthly", "start_date": start });
    // Settings > Automatic Payments: review the summary and its authorization, then activate.
    let (status, review) = app
        .post("/autopay/preview", Some(&token), form.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{review}");
    let text = review["authorization_text"].as_str().unwrap().to_owned();
    assert!(text.contains("Visa •••• 4242"), "{text}");
    let mut wrong = form.clone();
    wrong["authorization_text"] = json!("I agree");
    assert_eq!(
        app.post("/autopay", Some(&token), wrong).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let mut accept = form.clone();
    accept["authorization_text"] = json!(text);
    let (status, mandate) = app.post("/autopay", Some(&token), accept).await;
    assert_eq!(status, StatusCode::CREATED, "{mandate}");
    let id = mandate["id"].as_str().unwrap();
    assert_eq!(mandate["next_debit_on"], start.as_str());
    let (_, account) = app.get("/account", &token).await;
    assert_eq!(account["summary"]["autopay_active"], true);
    let (status, paused) = app
        .post(&format!("/autopay/{id}/pause"), Some(&token), json!({}))
        .await;
    assert_eq!(
        (status, paused["status"]["state"].clone()),
        (StatusCode::OK, json!("paused"))
    );
    let (status, _) = app
        .send(
            Method::DELETE,
            &format!("/autopay/{id}"),
            Some(&token),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, after) = app.get("/autopay", &token).await;
    assert!(after["autopay"].is_null());
    // Bad autopay input names its fields.
    let (status, bad) = app.post("/autopay/preview", Some(&token), json!({ "payment_method_id": "x", "amount_rule": "most", "frequency": "weekly", "start_date": "tomorrow" })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    for f in [
        "payment_method_id",
        "amount_rule",
        "frequency",
        "start_date",
    ] {
        assert!(
            bad["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["field"] == f),
            "{f}: {bad}"
        );
    }
    // Language and reminders.
    let (status, _) = app
        .send(
            Method::PATCH,
            "/profile/preferences",
            Some(&token),
            Some(json!({ "language": "es", "due_date_reminders": false }).to_string()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(app.get("/account", &token).await.1["language"], "es");
    // Guest pay: no login, account number with name and date of birth.
    let who = json!({ "account_number": "hc-1000001", "first_name": "dana", "last_name": "RIVERA", "date_of_birth": account_birth(app, &token).await });
    let (status, found) = app.post("/guest/lookup", None, who.clone()).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    let mut wrong = who.clone();
    wrong["date_of_birth"] = json!("1999-01-01");
    let (status, nope) = app.post("/guest/lookup", None, wrong).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        nope["detail"],
        "The details you entered don't match our records."
    );
    let mut pay = who.clone();
    pay["token"] = json!(app.card("4242424242424242").await);
    pay["amount"] = json!("25.00");
    let (status, receipt) = app
        .send(
            Method::POST,
            "/guest/payments",
            None,
            Some(pay.to_string()),
            Some("guest-1"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{receipt}");
    assert_eq!(receipt["status"], "succeeded");
    assert!(receipt.get("allocations").is_none());
}

async fn account_birth(app: &TestApp, token: &str) -> String {
    // The demo holder's date of birth is on record; the test reads it back from the store.
    let (_, me) = app.get("/account", token).await;
    let id = uuid::Uuid::parse_str(me["account_id"].as_str().unwrap()).unwrap();
    let a = app
        .running
        .app
        .portal
        .account(portal_core::ids::AccountId(id))
        .await
        .unwrap();
    a.holder.date_of_birth.to_string()
}

pub async fn a_support_agent_finds_the_member_and_fixes_things(app: &TestApp) {
    let member = app.login(DEMO_USER, DEMO_PASSWORD).await;
    let card = app.card("4242424242424242").await;
    let (_, paid) = app
        .pay(&member, "support-1", json!({ "token": card }))
        .await;
    let reference = paid["reference"].as_str().unwrap().to_owned();
    let (agent_user, agent_password) = portal_app::wiring::DEMO_AGENT;
    let (status, session) = app
        .post(
            "/support/sessions",
            None,
            json!({ "username": agent_user, "password": agent_password }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{session}");
    let agent = session["token"].as_str().unwrap().to_owned();
    // Roles do not mix.
    assert_eq!(app.get("/account", &agent).await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        app.get("/support/accounts?q=rivera", &member).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, found) = app.get("/support/accounts?q=rivera", &agent).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    let account = found["accounts"][0]["account_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, by_ref) = app
        .get(
            &format!("/support/payments/by-reference/{reference}"),
            &agent,
        )
        .await;
    assert_eq!(by_ref["account_id"], account.as_str());
    let (_, detail) = app
        .get(&format!("/support/accounts/{account}"), &agent)
        .await;
    assert_eq!(detail["ssn"], "***-**-6789");
    // A check arrives for more than is owed: record it, then refund the overpayment.
    // The portal's today (its time zone, America/New_York by default), not UTC's: in the
    // evening in New York, UTC is already tomorrow and a check cannot arrive in the future.
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::America::New_York)
        .date_naive()
        .to_string();
    let check = json!({ "amount": "100.00", "kind": "check", "document_number": "1042", "received_on": today });
    let (status, recorded) = app
        .send(
            Method::POST,
            &format!("/support/accounts/{account}/offline-payments"),
            Some(&agent),
            Some(check.to_string()),
            Some("check-1042"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{recorded}");
    assert_eq!(recorded["method"], "Check");
    let (_, after) = app.get("/account", &member).await;
    assert_eq!(after["summary"]["credit"], "100.00");
    let pid = recorded["id"].as_str().unwrap();
    let (status, too_much) = app
        .post(
            &format!("/support/accounts/{account}/payments/{pid}/refund"),
            Some(&agent),
            json!({ "amount": "100.01" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{too_much}");
    let (status, refunded) = app
        .post(
            &format!("/support/accounts/{account}/payments/{pid}/refund"),
            Some(&agent),
            json!({ "amount": "100.00" }),
        )
        .await;
    assert_eq!(
        (status, refunded["status"].clone()),
        (StatusCode::OK, json!("refunded"))
    );
    let pay_id = paid["id"].as_str().unwrap();
    let (status, _) = app
        .post(
            &format!("/support/accounts/{account}/payments/{pay_id}/receipt"),
            Some(&agent),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, timeline) = app
        .get(&format!("/support/accounts/{account}/timeline"), &agent)
        .await;
    let actions: Vec<&str> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in ["payment.succeeded", "payment.refunded", "receipt.resent"] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    let (status, _) = app
        .post(
            "/support/sessions",
            None,
            json!({ "username": agent_user, "password": "wrong" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Every endpoint with a body, from the OpenAPI document: malformed JSON, a wrong type in each
/// field, an overlong value in each string field, an unknown field. Each answers 400 or 422 with
/// the field named, never 5xx, and nothing is written.
pub async fn every_endpoint_refuses_bad_bodies_naming_the_field(app: &TestApp) {
    let member = app.login(DEMO_USER, DEMO_PASSWORD).await;
    let (agent_user, agent_password) = portal_app::wiring::DEMO_AGENT;
    let (_, s) = app
        .post(
            "/support/sessions",
            None,
            json!({ "username": agent_user, "password": agent_password }),
        )
        .await;
    let agent = s["token"].as_str().unwrap().to_owned();
    let doc: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (_, before) = app.get("/payments", &member).await;
    let id = uuid::Uuid::now_v7().to_string();
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let Some(schema) = op.pointer("/requestBody/content/application~1json/schema") else {
                continue;
            };
            let token = match op["tags"][0].as_str() {
                Some("Support") if !path.ends_with("/sessions") => Some(agent.as_str()),
                _ if op["security"].as_array().is_some_and(|s| !s.is_empty()) => {
                    Some(member.as_str())
                }
                _ => None,
            };
            let path = path
                .trim_start_matches("/api/v1")
                .replace("{id}", &id)
                .replace("{payment}", &id)
                .replace("{reference}", "7KQM-2XTH-9RB4");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let send = |body: String| app.send(m.clone(), &path, token, Some(body), Some("matrix"));
            let (status, answer) = send("{\"broken\":".into()).await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{method} {path} malformed: {answer}"
            );
            let fields = schema["properties"].as_object().unwrap();
            for (field, spec) in fields {
                let wrong = if spec["type"] == "boolean" {
                    json!("yes")
                } else {
                    json!(12345)
                };
                let (status, answer) = send(json!({ field: wrong }).to_string()).await;
                assert_eq!(
                    status,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "{method} {path} {field}: {answer}"
                );
                assert!(
                    answer["errors"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|e| e["field"] == field.as_str()),
                    "{method} {path}: {field} not named in {answer}"
                );
                if spec["type"] == "string" {
                    let (status, answer) =
                        send(json!({ field: "x".repeat(1001) }).to_string()).await;
                    assert_eq!(
                        status,
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "{method} {path} long {field}: {answer}"
                    );
                    assert!(
                        answer["errors"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|e| e["field"] == field.as_str()),
                        "{method} {path}: long {field} not named in {answer}"
                    );
                }
            }
            let (status, answer) = send(json!({ "unexpected_field": true }).to_string()).await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{method} {path} unknown field: {answer}"
            );
            assert!(
                answer["errors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["field"] == "unexpected_field"),
                "{method} {path}: {answer}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} endpoints with bodies");
    let (_, after) = app.get("/payments", &member).await;
    assert_eq!(before, after, "nothing written");
}

pub async fn browsers_use_an_http_only_cookie_and_a_csrf_header(app: &TestApp) {
    let resp = app
        .http
        .post(app.url("/sessions"))
        .json(&json!({ "username": DEMO_USER, "password": DEMO_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let cookies: Vec<String> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let session = cookies
        .iter()
        .find(|c| c.starts_with("portal_session="))
        .unwrap();
    assert!(
        session.contains("HttpOnly")
            && session.contains("SameSite=Lax")
            && session.contains("Path=/"),
        "{session}"
    );
    assert!(!session.contains("Secure"), "not Secure over plain HTTP");
    let body: Value = resp.json().await.unwrap();
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
    let jar = cookies
        .iter()
        .map(|c| c.split(';').next().unwrap())
        .collect::<Vec<_>>()
        .join("; ");
    // Reading needs only the cookie.
    let r = app
        .http
        .get(app.url("/account"))
        .header("cookie", &jar)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Changing anything needs the CSRF header too.
    let r = app
        .http
        .delete(app.url("/sessions/current"))
        .header("cookie", &jar)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = app
        .http
        .delete(app.url("/sessions/current"))
        .header("cookie", &jar)
        .header("x-csrf-token", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = app
        .http
        .delete(app.url("/sessions/current"))
        .header("cookie", &jar)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .http
        .get(app.url("/account"))
        .header("cookie", &jar)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "logged out");
    // Security headers on every answer.
    let h = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(
            h.headers().get(name).and_then(|v| v.to_str().ok()),
            Some(value),
            "{name}"
        );
    }
}

/// The language switch sends the visitor back only to a page of this site: a `back` that a
/// browser would read as another site, or that holds line breaks, lands on the home page.
pub async fn the_language_switch_stays_on_this_site(app: &TestApp) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let cases = [
        ("/payments%3Fstatus%3Dfailed", "/payments?status=failed"),
        ("/dashboard", "/dashboard"),
        ("/%09/evil.example", "/"),
        ("/%0a/evil.example", "/"),
        ("%2F%2Fevil.example", "/"),
        ("/%5Cevil.example", "/"),
        ("https://evil.example", "/"),
        ("/%0d%0aSet-Cookie:%20planted=1", "/"),
        ("/%00", "/"),
    ];
    for (back, landing) in cases {
        let r = http
            .get(format!("{}/language?to=es&back={back}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "back={back}");
        let location = r.headers().get("location").and_then(|v| v.to_str().ok());
        assert_eq!(location, Some(landing), "back={back}");
        assert!(
            !r.headers().contains_key("set-cookie")
                || r.headers()
                    .get_all("set-cookie")
                    .iter()
                    .all(|c| !c.to_str().unwrap_or("").contains("planted")),
            "back={back}"
        );
    }
}

/// A member who asked for two reset links and used one: the other link no longer works, so a
/// link left in a mailbox cannot take the account over after the member chose a new password.
pub async fn completing_a_reset_ends_every_other_link(app: &TestApp) {
    for _ in 0..2 {
        let (status, _) = app
            .post("/password-resets", None, json!({ "identifier": DEMO_USER }))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let tokens: Vec<String> = app
        .outbox()
        .await
        .into_iter()
        .filter_map(|n| match n.body {
            NoticeBody::PasswordReset { token, .. } => Some(token),
            _ => None,
        })
        .collect();
    let [first, second] = tokens.as_slice() else {
        panic!("two reset links were sent: {tokens:?}");
    };
    let (status, body) = complete_reset(app, second, "a completely new passphrase").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = complete_reset(app, first, "the attacker's passphrase").await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the older link ended: {body}"
    );
    app.login(DEMO_USER, "a completely new passphrase").await;
}

/// Passwords that repeat one piece, run along the keyboard or the digits, or hold characters
/// that change the text direction are refused at registration, the password named with the
/// reason (no composition rules: a long phrase of plain words is fine).
pub async fn weak_passwords_are_refused_with_their_reason(app: &TestApp) {
    let cases = [
        ("aaaaaaaaaaaa", "repetitive"),
        ("123456789012", "repetitive"),
        ("passwordpassword", "repetitive"),
        ("            ", "repetitive"),
        ("correct\u{202e}horse battery", "direction_characters"),
    ];
    for (password, code) in cases {
        let mut body = registration("weakling");
        body["password"] = json!(password);
        let (status, answer) = app.post("/registrations", None, body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{password:?}: {answer}"
        );
        let errors = answer["errors"].as_array().cloned().unwrap_or_default();
        assert_eq!(errors.len(), 1, "{password:?}: {answer}");
        assert_eq!(errors[0]["field"], "password", "{answer}");
        assert_eq!(errors[0]["code"], code, "{password:?}: {answer}");
    }
}

/// Behind HTTPS (secure cookies on), every answer tells browsers to use HTTPS only; over
/// plain HTTP (local demo) none does, since browsers ignore it there anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_deployments_send_strict_transport_security() {
    let secure = TestApp::start_with(crate::Db::Sqlite, |c| c.secure_cookies = true)
        .await
        .unwrap();
    let plain = TestApp::start(crate::Db::Sqlite).await.unwrap();
    for path in ["/healthz", "/api/v1/client-config", "/login"] {
        let r = secure
            .http
            .get(format!("{}{path}", secure.base))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.headers()
                .get("strict-transport-security")
                .and_then(|v| v.to_str().ok()),
            Some("max-age=63072000; includeSubDomains"),
            "{path}"
        );
        let r = plain
            .http
            .get(format!("{}{path}", plain.base))
            .send()
            .await
            .unwrap();
        assert!(
            !r.headers().contains_key("strict-transport-security"),
            "{path}"
        );
    }
}

/// Login CSRF: a cross-site form posting `text/plain` that parses as JSON must not log the
/// victim into the attacker's account. API bodies must be declared JSON (415), and a
/// browser request from another site that would change state is refused (403).
pub async fn cross_site_and_undeclared_bodies_are_refused(app: &TestApp) {
    let login = json!({ "username": DEMO_USER, "password": DEMO_PASSWORD }).to_string();
    let post = |content_type: &str, headers: Vec<(&str, String)>| {
        let mut r = app
            .http
            .post(app.url("/sessions"))
            .header("content-type", content_type)
            .body(login.clone());
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r.send()
    };
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ] {
        let r = post(ct, vec![]).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}");
        assert!(
            r.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/problem+json")),
            "{ct}: a documented problem"
        );
        assert!(!r.headers().contains_key("set-cookie"), "{ct}: no session");
    }
    for (k, v) in [
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
        ("origin", "https://evil.example"),
        ("origin", "null"),
    ] {
        let r = post("application/json", vec![(k, v.to_owned())])
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{k}: {v}");
        assert!(!r.headers().contains_key("set-cookie"), "{k}: {v}");
    }
    // This site's own pages, and API clients that say nothing, still log in.
    for headers in [
        vec![],
        vec![("sec-fetch-site", "same-origin".to_owned())],
        vec![("origin", app.base.clone())],
    ] {
        let shown = format!("{headers:?}");
        let r = post("application/json; charset=utf-8", headers)
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{shown}");
    }
}

/// A session cookie that is no session (expired, forged, garbage) answers 401 on every
/// method, so a browser is sent to log in again rather than told to reload for CSRF.
pub async fn a_cookie_that_is_no_session_is_unauthenticated(app: &TestApp) {
    for (method, path) in [
        (Method::GET, "/account"),
        (Method::POST, "/payments/preview"),
        (Method::DELETE, "/sessions/current"),
    ] {
        let r = app
            .http
            .request(method.clone(), app.url(path))
            .header("cookie", "portal_session=garbage-not-a-session")
            .header("x-csrf-token", "whatever")
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
    }
}
