//! No personal data or secret reaches the logs: a full registration, login, card payment and
//! password reset run with every log line captured at debug level, then the lines are searched.

use crate::{Db, TestApp};
use portal_core::notice::NoticeBody;
use reqwest::StatusCode;
use serde_json::json;
use std::sync::{Arc, Mutex, OnceLock};
use tracing_subscriber::fmt::MakeWriter;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn captured() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let c = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(c.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        c
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_a_registration_and_payment_hold_no_personal_data_or_secrets() {
    let capture = captured();
    let app = TestApp::start(Db::Sqlite).await.unwrap();
    let password = "a long and happy passphrase";
    let (status, body) = app
        .post(
            "/registrations",
            None,
            json!({ "account_number": "HC1000002", "first_name": "María", "last_name": "López", "date_of_birth": "1980-05-17",
                    "ssn": "234-56-7890", "email": "maria@example.com", "username": "maria", "password": password, "language": "es" }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let account = body["account_id"].as_str().unwrap().to_owned();
    let code = app.outbox().await.into_iter().find_map(|n| match n.body {
        NoticeBody::EmailVerification { code, .. } => Some(code),
        _ => None,
    });
    let code = code.unwrap();
    let (status, _) = app
        .post(
            &format!("/registrations/{account}/confirmation"),
            None,
            json!({ "code": code }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let token = app.login("maria", password).await;
    let card = app.card("4242424242424242").await;
    let (status, paid) = app
        .pay(&token, "log-1", json!({ "amount": "25.00", "token": card }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{paid}");
    let (status, _) = app
        .post(
            "/sessions",
            None,
            json!({ "username": "maria", "password": "wrong password here" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.post("/password-resets", None, json!({ "identifier": "maria" }))
        .await;
    let reset = app.outbox().await.into_iter().find_map(|n| match n.body {
        NoticeBody::PasswordReset { token, .. } => Some(token),
        _ => None,
    });
    let reset = reset.unwrap();

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("/api/v1/payments") && logs.contains("status=201"),
        "requests are logged:\n{logs}"
    );
    for secret in [
        "234567890",
        "234-56-7890",
        password,
        "wrong password here",
        &token,
        "4242424242424242",
        &reset,
        &code,
        "sk_test_sandbox",
    ] {
        assert!(!logs.contains(secret), "{secret} appears in the logs");
    }
}
