//! What the benchmarks (and the multi-process test) share: sample accounts, pgbench runs, the
//! SQL `PgStore` performs, RSS, statistics.

// A measuring tool: it may fail loudly, and its timing statistics are floats (money never is).
#![allow(
    clippy::float_arithmetic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    dead_code
)]

use chrono::{Days, Utc};
use portal_core::account::{Account, Holder, LookupDigest, NewAccount};
use portal_core::calendar::CoverageMonth;
use portal_core::enrollment::{CoverageKind, Enrollment};
use portal_core::identity::{AccountNumber, Email, PersonName};
use portal_core::ids::{AccountId, EnrollmentId, MandateId, MethodId};
use portal_core::instrument::{CardBrand, CardExpiry, GatewayToken, MethodDetails, PaymentMethod};
use portal_core::mandate::{AmountRule, Consent, ConsentSource, Frequency, Mandate, MandateTerms};
use portal_core::money::Money;
use sqlx::{ConnectOptions, Connection, Executor};
use std::process::{Command, Stdio};

/// How `PgStore` loads one account (`load_accounts` with one id: one statement), for pgbench
/// scripts with the account's id in `:aid`.
pub fn load_sql() -> String {
    let one_line: Vec<&str> = portal_postgres::load_statement()
        .split_whitespace()
        .collect();
    format!(
        "{};\n",
        one_line.join(" ").replace("$1", "ARRAY[:aid]::uuid[]")
    )
}

/// How `PgStore` writes an account in a commit that changes none of its small collections:
/// the header with its version check (member, enrollment, method, mandate and plan rows are
/// written only when they changed).
pub const WRITE_ACCOUNT_SQL: &str = "UPDATE accounts SET version = version + 1, number = number, holder_first_name = holder_first_name, holder_last_name = holder_last_name, holder_search = holder_search, date_of_birth = date_of_birth, ssn_digest = ssn_digest, ssn_last4 = ssn_last4, contact_email = contact_email, reminders = reminders, created_at = created_at WHERE id = :aid;
";

pub fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

/// Result of one load run: operations per second, p50 and p99 latency in ms, errors.
pub struct Run {
    pub tps: f64,
    pub p50: f64,
    pub p99: f64,
    pub errors: usize,
}

/// pgbench of `script` with `clients` clients for `seconds`, prepared statements.
pub fn pgbench_run(
    url: &str,
    script: &std::path::Path,
    clients: usize,
    seconds: u64,
    dir: &std::path::Path,
) -> Run {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let prefix = dir.join("pgb");
    let out = Command::new("pgbench")
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
            "-T",
            &seconds.to_string(),
            "-l",
        ])
        .arg(format!("--log-prefix={}", prefix.display()))
        .arg("-f")
        .arg(script)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("pgbench must be installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed: {}\n{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let failed = text
        .lines()
        .find(|l| l.contains("number of failed transactions"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut lat = Vec::new();
    for f in std::fs::read_dir(dir).unwrap() {
        for line in std::fs::read_to_string(f.unwrap().path())
            .unwrap_or_default()
            .lines()
        {
            if let Some(us) = line
                .split_whitespace()
                .nth(2)
                .and_then(|v| v.parse::<f64>().ok())
            {
                lat.push(us / 1000.0);
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    Run {
        tps,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        errors: failed,
    }
}

/// Drops the database `name` on the server of `url` (a benchmark's scratch database).
pub async fn drop_database(url: &str, name: &str) {
    let opts: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let mut admin = opts.connect().await.unwrap();
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await
        .unwrap();
    admin.close().await.unwrap();
}

/// A new, empty database on the server of `url`, named `name`; returns its URL.
pub async fn fresh_database(url: &str, name: &str) -> String {
    let opts: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let mut admin = opts.connect().await.unwrap();
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await
        .unwrap();
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    admin.close().await.unwrap();
    let (head, _) = url.rsplit_once('/').unwrap();
    format!("{head}/{name}")
}

/// Account `n` with a card and a monthly mandate of $50 whose debit falls on `debit_day`
/// (its pre-debit notice already sent).
pub fn mandated_account(n: u32, token: &GatewayToken, debit_day: chrono::NaiveDate) -> Account {
    let id = AccountId(uuid::Uuid::now_v7());
    let enrollment = Enrollment::new(
        EnrollmentId(uuid::Uuid::now_v7()),
        CoverageKind::Health,
        "Plan",
        Money::from_cents(30_000),
        Money::ZERO,
        CoverageMonth::of(debit_day),
    )
    .unwrap();
    let mut a = Account::open(
        id,
        NewAccount {
            number: AccountNumber::parse(&format!("HC{n:08}")).unwrap(),
            holder: Holder {
                first_name: PersonName::parse("Ana").unwrap(),
                last_name: PersonName::parse("Silva").unwrap(),
                date_of_birth: chrono::NaiveDate::from_ymd_opt(1980, 1, 1).unwrap(),
                ssn_digest: LookupDigest(format!("digest-{n}")),
                ssn_last4: "0001".into(),
            },
            contact_email: Some(Email::parse(&format!("member{n}@example.com")).unwrap()),
            enrollments: vec![enrollment],
        },
        Utc::now(),
    );
    let method = PaymentMethod {
        id: MethodId(uuid::Uuid::now_v7()),
        account_id: id,
        token: token.clone(),
        details: MethodDetails::Card {
            brand: CardBrand::Visa,
            last4: "4242".into(),
            expiry: CardExpiry {
                month: 12,
                year: 2034,
            },
        },
        added_at: Utc::now(),
        removed_at: None,
    };
    let mut mandate = Mandate::new(
        MandateId(uuid::Uuid::now_v7()),
        id,
        MandateTerms {
            method_id: method.id,
            amount_rule: AmountRule::Fixed {
                amount: Money::from_cents(5_000),
            },
            cap: None,
            frequency: Frequency::Monthly,
            start_date: debit_day,
        },
        Consent {
            text: "I authorize".into(),
            accepted_at: Utc::now(),
            source: ConsentSource::Web,
        },
    )
    .unwrap();
    // The pre-debit notice went out three days ago, so today is the debit.
    mandate.record_notice(0, Money::from_cents(5_000), debit_day - Days::new(3));
    a.methods.push(method);
    a.mandates.push(mandate);
    a
}

/// A saved-card token (Visa 4242, always succeeds) from the sandbox at `base`, tokenized as a
/// browser would.
pub async fn card_token(base: &str) -> GatewayToken {
    let reply: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/v1/payment_methods"))
        .bearer_auth("pk_test_sandbox")
        .form(&[
            ("type", "card"),
            ("card[number]", "4242424242424242"),
            ("card[exp_month]", "12"),
            ("card[exp_year]", "2034"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    GatewayToken::parse(reply["id"].as_str().unwrap()).unwrap()
}

/// A fresh database holding the fixed payment baseline's schema
/// (`benches/pg-payment/schema.sql`, 100,000 open bills); returns its URL. Its script is
/// [`FIXED_SCRIPT`].
pub async fn fixed_baseline(base_url: &str, name: &str) -> String {
    let url = fresh_database(base_url, name).await;
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/pg-payment/schema.sql");
    let loaded = Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-d", &url, "-f", schema])
        .env("PGOPTIONS", "-c client_min_messages=warning")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(loaded.success(), "psql could not load {schema}");
    url
}

/// The fixed baseline: the two transactions a crash-safe gateway payment must write.
pub const FIXED_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/benches/pg-payment/payment2.sql"
);

/// A payment's two commits as `PgStore` writes them, for pgbench scripts with the account's
/// id in `:aid`: the intent (the version-checked header, the pending payment, with
/// `idempotency` its idempotency record, an audit entry) and the outcome (the header, the
/// payment's status, an audit entry, an outbox notice), each one statement of CTEs.
pub fn payment_commits_sql(channel: &str, actor: &str, cents: u32, idempotency: bool) -> String {
    let header = WRITE_ACCOUNT_SQL.trim_end().trim_end_matches(';');
    let record = if idempotency {
        " w2 AS (INSERT INTO idempotency_records (scope, key, request_digest, payment_id, account_id, created_at) SELECT 'account:' || :aid, md5(random()::text), md5(random()::text), id, :aid::uuid, now() FROM w0),\n"
    } else {
        ""
    };
    format!(
        "WITH acct AS ({header} RETURNING id),
 w0 AS (INSERT INTO payments (id, account_id, position, reference, gateway_id, amount_cents, refunded_cents, status, idempotency_key, initiated_at, initiated_on, expected_settlement, data) SELECT gen_random_uuid(), :aid::uuid, 0, md5(random()::text), NULL, {cents}, 0, 'pending', md5(random()::text), now(), current_date, NULL, '{{\"instrument\":{{\"type\":\"saved\"}},\"channel\":{{\"type\":\"{channel}\"}},\"status\":{{\"state\":\"pending\",\"stage\":\"submitted\"}},\"history\":[]}}'::jsonb WHERE EXISTS (SELECT FROM acct) RETURNING id),
{record} w3 AS (INSERT INTO audit_log (account_id, at, actor, entity, action, detail) SELECT :aid::uuid, now(), '{{\"type\":\"{actor}\"}}', 'payment:' || id, 'payment.submitted', 'bench' FROM w0)
SELECT (SELECT id FROM w0) AS pay, CASE WHEN (SELECT count(*) FROM acct) = 1 THEN 0 END AS ok
\\gset
WITH acct AS ({header} RETURNING id),
 w0 AS (INSERT INTO payments (id, account_id, position, reference, gateway_id, amount_cents, refunded_cents, status, idempotency_key, initiated_at, initiated_on, expected_settlement, data) SELECT id, account_id, position, reference, 'pi_' || md5(random()::text), amount_cents, refunded_cents, 'succeeded', idempotency_key, initiated_at, initiated_on, expected_settlement, data FROM payments WHERE id = :pay::uuid AND EXISTS (SELECT FROM acct) ON CONFLICT (id) DO UPDATE SET position = excluded.position, reference = excluded.reference, gateway_id = excluded.gateway_id, amount_cents = excluded.amount_cents, refunded_cents = excluded.refunded_cents, status = excluded.status, idempotency_key = excluded.idempotency_key, initiated_at = excluded.initiated_at, initiated_on = excluded.initiated_on, expected_settlement = excluded.expected_settlement, data = excluded.data WHERE payments.account_id = excluded.account_id RETURNING 1),
 w2 AS (INSERT INTO audit_log (account_id, at, actor, entity, action, detail) SELECT :aid::uuid, now(), '{{\"type\":\"{actor}\"}}', 'payment:' || :pay::uuid, 'payment.succeeded', 'bench' WHERE EXISTS (SELECT FROM acct)),
 w3 AS (INSERT INTO outbox (dedupe_key, account_id, notice) SELECT md5(random()::text), :aid::uuid, '{{}}'::json WHERE EXISTS (SELECT FROM acct) ON CONFLICT (dedupe_key) DO NOTHING)
SELECT CASE WHEN (SELECT count(*) FROM acct) = 1 AND (SELECT count(*) FROM w0) = 1 THEN 0 END;
"
    )
}
