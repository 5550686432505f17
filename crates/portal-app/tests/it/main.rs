// A test binary: helpers outside #[test] functions may fail loudly too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

//! The portal over real HTTP, started through the same `portal_app::start` that `serve` uses,
//! on SQLite and (with `PORTAL_TEST_DATABASE_URL`) on PostgreSQL.

mod browser;
mod cli;
#[path = "../../benches/common/mod.rs"]
mod common;
mod jobs;
mod journeys;
mod logs;
mod processes;
mod simulation;

use portal_app::Running;
use portal_app::config::{Config, Email};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{ConnectOptions, Connection, Executor};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub const DEMO_USER: &str = "demo";
pub const DEMO_PASSWORD: &str = portal_app::demo::DEMO_PASSWORD;

/// Which database a test app runs on.
#[derive(Debug, Clone, Copy)]
pub enum Db {
    Sqlite,
    Postgres,
}

#[derive(Debug)]
pub struct TestApp {
    pub base: String,
    pub sandbox: String,
    pub http: reqwest::Client,
    pub running: Running,
    /// The portal's clock, which a test may move.
    pub clock: Arc<TestClock>,
}

/// The portal's clock, which tests move a day at a time (the test clock demo mode serves).
pub type TestClock = portal_app::wiring::OffsetClock;

pub async fn fresh_postgres() -> Option<String> {
    let Ok(url) = std::env::var("PORTAL_TEST_DATABASE_URL") else {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("PostgreSQL HTTP tests must run in CI, but PORTAL_TEST_DATABASE_URL is not set");
        }
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED PostgreSQL HTTP test: PORTAL_TEST_DATABASE_URL is not set"
        );
        return None;
    };
    let opts: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let mut admin = opts.connect().await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let name = format!(
        "portal_it_{now}_{}_app{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    admin.close().await.unwrap();
    let (head, _) = url.rsplit_once('/').unwrap();
    Some(format!("{head}/{name}"))
}

impl TestApp {
    pub async fn start(db: Db) -> Option<TestApp> {
        Self::start_with(db, |_| {}).await
    }

    /// [`TestApp::start`] with the configuration changed by `change` first.
    pub async fn start_with(db: Db, change: impl FnOnce(&mut Config)) -> Option<TestApp> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("app-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = Config::load(None).unwrap();
        config.data_dir = dir.clone();
        config.database_url = match db {
            Db::Sqlite => format!("sqlite://{}", dir.join("portal.db").display()),
            Db::Postgres => fresh_postgres().await?,
        };
        config.email = Email::Files(dir.join("outbox"));
        config.gateway_url = None;
        // The bad-input matrix sends hundreds of requests from one address.
        config.rate_limit_per_minute = 10_000;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // The browser's origin, which the sandbox lets tokenize cards.
        config.public_url = format!("http://{}", listener.local_addr().unwrap());
        change(&mut config);
        let clock = Arc::new(TestClock::new(config.timezone, None));
        let running = portal_app::start_with_clock(
            config,
            listener,
            false,
            clock.clone(),
            Some(clock.clone()),
        )
        .await
        .unwrap();
        let sandbox = running.app.sandbox_url.clone().unwrap();
        Some(TestApp {
            base: format!("http://{}", running.addr),
            sandbox,
            http: reqwest::Client::new(),
            running,
            clock,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.send(
            reqwest::Method::POST,
            path,
            token,
            Some(body.to_string()),
            None,
        )
        .await
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, Some(token), None, None)
            .await
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut r = self
            .http
            .request(method, self.url(path))
            .header("content-type", "application/json");
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(k) = key {
            r = r.header("idempotency-key", k);
        }
        if let Some(b) = body {
            r = r.body(b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn login(&self, username: &str, password: &str) -> String {
        let (status, body) = self
            .post(
                "/sessions",
                None,
                json!({ "username": username, "password": password }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    pub async fn pay(&self, token: &str, key: &str, body: Value) -> (StatusCode, Value) {
        self.send(
            reqwest::Method::POST,
            "/payments",
            Some(token),
            Some(body.to_string()),
            Some(key),
        )
        .await
    }

    /// Tokenizes at the gateway as a browser would.
    pub async fn tokenize(&self, form: &[(&str, &str)]) -> String {
        let body: Value = self
            .http
            .post(format!("{}/v1/payment_methods", self.sandbox))
            .bearer_auth("pk_test_sandbox")
            .form(form)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{body}"))
            .to_owned()
    }

    pub async fn card(&self, number: &str) -> String {
        self.tokenize(&[
            ("type", "card"),
            ("card[number]", number),
            ("card[exp_month]", "12"),
            ("card[exp_year]", "2034"),
            ("card[cvc]", "123"),
        ])
        .await
    }

    pub async fn bank(&self, account: &str) -> String {
        self.tokenize(&[
            ("type", "us_bank_account"),
            ("us_bank_account[routing_number]", "110000000"),
            ("us_bank_account[account_number]", account),
        ])
        .await
    }

    pub async fn advance_gateway_days(&self, days: u32) {
        let r = self
            .http
            .post(format!("{}/v1/test_helpers/advance", self.sandbox))
            .bearer_auth("sk_test_sandbox")
            .form(&[("days", days.to_string())])
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    /// Notices waiting in the outbox (the worker is off in tests).
    pub async fn outbox(&self) -> Vec<portal_core::notice::Notice> {
        self.running
            .app
            .db
            .outbox()
            .pending_messages(1000)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.notice)
            .collect()
    }
}

macro_rules! on_both_stores {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let app = crate::TestApp::start(crate::Db::Sqlite).await.unwrap();
                    crate::journeys::$name(&app).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(app) = crate::TestApp::start(crate::Db::Postgres).await else { return };
                    crate::journeys::$name(&app).await;
                }
            )+
        }
    };
}

on_both_stores!(
    the_member_guide_journey,
    payment_retries_are_idempotent,
    a_declined_card_gives_its_reason_and_leaves_the_bill_open,
    a_bank_transfer_is_pending_then_settles_by_webhook,
    a_returned_transfer_reopens_the_bill,
    repeated_bad_passwords_lock_the_account,
    a_reset_link_works_once,
    another_members_resources_answer_not_found,
    bad_input_is_refused_with_the_field_named_and_nothing_written,
    automatic_payments_guest_pay_and_preferences,
    a_support_agent_finds_the_member_and_fixes_things,
    every_endpoint_refuses_bad_bodies_naming_the_field,
    browsers_use_an_http_only_cookie_and_a_csrf_header,
    the_language_switch_stays_on_this_site,
    completing_a_reset_ends_every_other_link,
    weak_passwords_are_refused_with_their_reason,
    cross_site_and_undeclared_bodies_are_refused,
    a_cookie_that_is_no_session_is_unauthenticated,
);
