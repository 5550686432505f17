//! `cargo xtask bench-api`: `POST /api/v1/payments` (saved card, sandbox gateway, PostgreSQL,
//! a fresh idempotency key per request) at 1, 8 and 32 concurrent clients, next to pgbench
//! running the SQL one payment performs (`-M prepared`) on the same database, alternating the
//! two three times and reporting medians; plus the server's idle and peak RSS.
//!
//! Needs `PORTAL_TEST_DATABASE_URL` (a server where the user may create databases) and pgbench.

// A measuring tool: it may fail loudly, and its timing statistics are floats (money never is).
#![allow(
    clippy::float_arithmetic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use chrono::Utc;
use portal_core::account::{Account, Holder, LookupDigest, Member, NewAccount};
use portal_core::calendar::CoverageMonth;
use portal_core::enrollment::{CoverageKind, Enrollment};
use portal_core::identity::{AccountNumber, Email, Language, PersonName, Username};
use portal_core::ids::{AccountId, EnrollmentId, MethodId};
use portal_core::instrument::{CardBrand, CardExpiry, GatewayToken, MethodDetails, PaymentMethod};
use portal_core::money::Money;
use portal_core::password::Password;
use portal_core::ports::{Changes, PasswordHasher, SecretSealer, Store};
use portal_crypto::{AesGcmSealer, Argon2Hasher};
use portal_postgres::PgStore;
use sqlx::{ConnectOptions, Connection, Executor};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MEMBERS: usize = 64;
const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const SECONDS: u64 = 5;
const ROUNDS: usize = 3;

struct Member1 {
    token: String,
    method: String,
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

/// Result of one load run: payments per second, p50 and p99 latency in ms, errors.
struct Run {
    tps: f64,
    p50: f64,
    p99: f64,
    errors: usize,
}

async fn portal_run(
    base: &str,
    members: &[Member1],
    clients: usize,
    next: &Arc<std::sync::atomic::AtomicU64>,
) -> Run {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let http = http.clone();
        let url = format!("{base}/api/v1/payments");
        // Each client pays for its own members, so clients do not contend on one account.
        let mine: Vec<(String, String)> = members
            .iter()
            .skip(c)
            .step_by(clients)
            .map(|m| (m.token.clone(), m.method.clone()))
            .collect();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            let mut i = 0;
            while Instant::now() < deadline {
                let (token, method) = &mine[i % mine.len()];
                i += 1;
                let key = format!(
                    "bench-{}",
                    next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                );
                let t = Instant::now();
                let r = http
                    .post(&url)
                    .bearer_auth(token)
                    .header("idempotency-key", key)
                    .header("content-type", "application/json")
                    .body(format!(
                        "{{\"amount\":\"1.00\",\"payment_method_id\":\"{method}\"}}"
                    ))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().as_u16() == 201 => {
                        lat.push(t.elapsed().as_secs_f64() * 1000.0)
                    }
                    Ok(r) => {
                        if errors == 0 {
                            let status = r.status();
                            eprintln!(
                                "first failure: {status} {}",
                                r.text().await.unwrap_or_default()
                            );
                        }
                        errors += 1;
                    }
                    Err(e) => {
                        if errors == 0 {
                            eprintln!("first failure: {e}");
                        }
                        errors += 1;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Run {
        tps: all.len() as f64 / secs,
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
        errors,
    }
}

fn pgbench_run(url: &str, script: &std::path::Path, clients: usize, dir: &std::path::Path) -> Run {
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
            &SECONDS.to_string(),
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

/// The SQL one saved-card payment performs in `PgStore`, in order: a load of the account, the
/// idempotency lookup, a load and a commit creating the payment with its idempotency record and
/// audit entry, a load and a commit recording the gateway's answer with its audit entry and
/// outbox notice, and the load for the receipt.
fn payment_script() -> String {
    let load = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
SELECT a.*, m.username, m.email, m.ssn_digest AS m_ssn_digest, m.ssn_sealed, m.password_hash, m.language, m.email_verified_at, m.email_code, m.password_changed_at, m.created_at AS m_created_at, m.account_id AS member_of FROM accounts a LEFT JOIN members m ON m.account_id = a.id WHERE a.id = :aid;
SELECT data FROM enrollments WHERE account_id = :aid ORDER BY position;
SELECT data FROM payment_methods WHERE account_id = :aid ORDER BY position;
SELECT data FROM mandates WHERE account_id = :aid ORDER BY position;
SELECT data FROM plans WHERE account_id = :aid ORDER BY position;
SELECT * FROM bills WHERE account_id = :aid ORDER BY position;
SELECT al.payment_id, al.bill_id, al.amount_cents FROM allocations al JOIN payments p ON p.id = al.payment_id WHERE p.account_id = :aid ORDER BY al.payment_id, al.position;
SELECT * FROM payments WHERE account_id = :aid ORDER BY position;
COMMIT;
";
    let write_account = "UPDATE accounts SET version = version + 1, number = number, holder_first_name = holder_first_name, holder_last_name = holder_last_name, holder_search = holder_search, date_of_birth = date_of_birth, ssn_digest = ssn_digest, ssn_last4 = ssn_last4, contact_email = contact_email, reminders = reminders, created_at = created_at WHERE id = :aid;
INSERT INTO members SELECT * FROM members WHERE account_id = :aid ON CONFLICT (account_id) DO UPDATE SET username = excluded.username, username_key = excluded.username_key, email = excluded.email, email_key = excluded.email_key, ssn_digest = excluded.ssn_digest, ssn_sealed = excluded.ssn_sealed, password_hash = excluded.password_hash, language = excluded.language, email_verified_at = excluded.email_verified_at, email_code = excluded.email_code, password_changed_at = excluded.password_changed_at, created_at = excluded.created_at;
DELETE FROM enrollments WHERE account_id = :aid AND NOT (id = ANY(ARRAY(SELECT id FROM enrollments WHERE account_id = :aid)));
INSERT INTO enrollments SELECT * FROM enrollments WHERE account_id = :aid ON CONFLICT (id) DO UPDATE SET position = excluded.position, data = excluded.data WHERE enrollments.account_id = excluded.account_id;
DELETE FROM payment_methods WHERE account_id = :aid AND NOT (id = ANY(ARRAY(SELECT id FROM payment_methods WHERE account_id = :aid)));
INSERT INTO payment_methods SELECT * FROM payment_methods WHERE account_id = :aid ON CONFLICT (id) DO UPDATE SET position = excluded.position, data = excluded.data WHERE payment_methods.account_id = excluded.account_id;
DELETE FROM mandates WHERE account_id = :aid AND NOT (id = ANY(ARRAY(SELECT id FROM mandates WHERE account_id = :aid)));
DELETE FROM plans WHERE account_id = :aid AND NOT (id = ANY(ARRAY(SELECT id FROM plans WHERE account_id = :aid)));
";
    format!(
        "\\set n random(1, {MEMBERS})
SELECT id AS aid FROM bench_members WHERE n = :n \\gset
{load}SELECT * FROM idempotency_records WHERE scope = 'account:' || :aid AND key = md5(random()::text);
{load}BEGIN;
{write_account}INSERT INTO payments (id, account_id, position, reference, gateway_id, amount_cents, refunded_cents, status, idempotency_key, initiated_at, initiated_on, expected_settlement, data) VALUES (gen_random_uuid(), :aid, 0, md5(random()::text), NULL, 100, 0, 'pending', md5(random()::text), now(), current_date, NULL, '{{\"instrument\":{{\"type\":\"saved\"}},\"channel\":{{\"type\":\"member\"}},\"status\":{{\"state\":\"pending\",\"stage\":\"submitted\"}},\"history\":[]}}') RETURNING id AS pay
\\gset
DELETE FROM allocations WHERE payment_id = :pay;
INSERT INTO idempotency_records (scope, key, request_digest, payment_id, account_id, created_at) VALUES ('account:' || :aid, md5(random()::text), md5(random()::text), :pay, :aid, now());
INSERT INTO audit_log (account_id, at, actor, entity, action, detail) VALUES (:aid, now(), '{{\"type\":\"member\"}}', 'payment:' || :pay, 'payment.submitted', 'bench');
COMMIT;
{load}BEGIN;
{write_account}UPDATE payments SET position = position, reference = reference, gateway_id = 'pi_' || md5(random()::text), amount_cents = amount_cents, refunded_cents = refunded_cents, status = 'succeeded', idempotency_key = idempotency_key, initiated_at = initiated_at, initiated_on = initiated_on, expected_settlement = expected_settlement, data = data WHERE id = :pay;
DELETE FROM allocations WHERE payment_id = :pay;
INSERT INTO audit_log (account_id, at, actor, entity, action, detail) VALUES (:aid, now(), '{{\"type\":\"member\"}}', 'payment:' || :pay, 'payment.succeeded', 'bench');
INSERT INTO outbox (dedupe_key, account_id, notice) VALUES (md5(random()::text), :aid, '{{}}') ON CONFLICT (dedupe_key) DO NOTHING;
COMMIT;
{load}"
    )
}

async fn fresh_database(url: &str) -> String {
    let opts: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let mut admin = opts.connect().await.unwrap();
    let name = format!("portal_bench_{}", std::process::id());
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

fn main() {
    let Ok(base_url) = std::env::var("PORTAL_TEST_DATABASE_URL") else {
        eprintln!(
            "bench-api needs PORTAL_TEST_DATABASE_URL (a PostgreSQL server where databases may be created)"
        );
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(base_url));
}

async fn run(base_url: String) {
    let url = fresh_database(&base_url).await;
    let pool = portal_postgres::connect(&url, 8).await.unwrap();
    portal_postgres::migrate(&pool).await.unwrap();
    let store = PgStore::new(pool.clone());
    let sandbox = portal_sandbox::start(
        portal_sandbox::SandboxConfig::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let token: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/v1/payment_methods", sandbox.base_url()))
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
    let token = GatewayToken::parse(token["id"].as_str().unwrap()).unwrap();
    let sealer = AesGcmSealer::from_hex(KEY).unwrap();
    let hasher = Argon2Hasher::new();
    let password = Password::new("bench premium payments passphrase", &[]).unwrap();
    let hash = hasher.hash(&password).await.unwrap();
    sqlx::query("CREATE TABLE bench_members (n int PRIMARY KEY, id uuid NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    // Members 1..=64 pay through the portal; 65..=128 are pgbench's, so the baseline's rows
    // never land in accounts the portal loads.
    let mut methods = Vec::new();
    for n in 1..=2 * MEMBERS {
        let id = AccountId(uuid::Uuid::now_v7());
        let enrollment = Enrollment::new(
            EnrollmentId(uuid::Uuid::now_v7()),
            CoverageKind::Health,
            "Plan",
            Money::from_cents(30_000),
            Money::ZERO,
            CoverageMonth::of(Utc::now().date_naive()),
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
                contact_email: None,
                enrollments: vec![enrollment],
            },
            Utc::now(),
        );
        a.member = Some(Member {
            username: Username::parse(&format!("bench{n}")).unwrap(),
            email: Email::parse(&format!("bench{n}@example.com")).unwrap(),
            email_verified_at: Some(Utc::now()),
            email_code: None,
            password_hash: hash.clone(),
            password_changed_at: Utc::now(),
            language: Language::En,
            ssn_sealed: sealer.seal("123456789").unwrap(),
            ssn_digest: sealer.lookup_digest(&format!("{n:09}")),
            created_at: Utc::now(),
        });
        let method = MethodId(uuid::Uuid::now_v7());
        a.methods.push(PaymentMethod {
            id: method,
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
        });
        store.commit(Changes::account(a)).await.unwrap();
        if n > MEMBERS {
            sqlx::query("INSERT INTO bench_members (n, id) VALUES ($1, $2)")
                .bind(i32::try_from(n - MEMBERS).unwrap())
                .bind(id.uuid())
                .execute(&pool)
                .await
                .unwrap();
        } else {
            methods.push(method);
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = std::env::temp_dir().join(format!("portal-bench-{}", std::process::id()));
    let mut server = Command::new(env!("CARGO_BIN_EXE_portal-app"))
        .args(["serve", "--no-worker"])
        .env("PORTAL_DATABASE_URL", &url)
        .env("PORTAL_GATEWAY_URL", sandbox.base_url())
        .env("PORTAL_GATEWAY_SECRET_KEY", "sk_test_sandbox")
        .env("PORTAL_WEBHOOK_SECRET", "whsec_sandbox")
        .env("PORTAL_SEALING_KEY", KEY)
        .env("PORTAL_LISTEN", format!("127.0.0.1:{port}"))
        .env("PORTAL_DATA_DIR", &data)
        .env("PORTAL_RATE_LIMIT_PER_MINUTE", "100000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_kib = rss_kib(server.id(), "VmRSS:");
    let mut members = Vec::new();
    for (n, method) in methods.iter().enumerate() {
        let r: serde_json::Value = http
            .post(format!("{base}/api/v1/sessions"))
            .json(&serde_json::json!({ "username": format!("bench{}", n + 1), "password": "bench premium payments passphrase" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        members.push(Member1 {
            token: r["token"].as_str().unwrap().to_owned(),
            method: method.to_string(),
        });
    }
    let after_logins_kib = rss_kib(server.id(), "VmHWM:");
    let script = data.join("payment.sql");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(&script, payment_script()).unwrap();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    println!(
        "POST /api/v1/payments vs pgbench of one payment's SQL (-M prepared), {SECONDS} s per run, {ROUNDS} alternating rounds, medians"
    );
    println!(
        "{:>7} {:>12} {:>12} {:>7} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "clients",
        "portal/s",
        "pgbench/s",
        "ratio",
        "p50 ms",
        "p99 ms",
        "pg p50",
        "pg p99",
        "errors"
    );
    let mut goals = Vec::new();
    for clients in [1usize, 8, 32] {
        let (mut ptps, mut btps, mut ratios, mut p50, mut p99, mut bp50, mut bp99) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        let mut errors = 0;
        for round in 0..ROUNDS {
            let b = pgbench_run(
                &url,
                &script,
                clients,
                &data.join(format!("pgb-{clients}-{round}")),
            );
            let p = portal_run(&base, &members, clients, &next).await;
            errors += p.errors + b.errors;
            ratios.push(p.tps / b.tps);
            ptps.push(p.tps);
            btps.push(b.tps);
            p50.push(p.p50);
            p99.push(p.p99);
            bp50.push(b.p50);
            bp99.push(b.p99);
        }
        let (ratio, p99m, bp99m) = (median(ratios), median(p99), median(bp99));
        println!(
            "{clients:>7} {:>12.1} {:>12.1} {ratio:>7.2} {:>9.2} {p99m:>9.2} {:>9.2} {bp99m:>9.2} {errors:>7}",
            median(ptps),
            median(btps),
            median(p50),
            median(bp50)
        );
        if clients >= 8 {
            goals.push((
                format!("payments/s >= 0.5 x pgbench at {clients} clients"),
                ratio >= 0.5,
            ));
        }
        if clients == 8 {
            goals.push((
                "p99 at 8 clients <= 2 x pgbench p99 + 5 ms".to_owned(),
                p99m <= 2.0 * bp99m + 5.0,
            ));
            goals.push(("no errors at 8 clients".to_owned(), errors == 0));
        }
    }
    let peak_kib = rss_kib(server.id(), "VmHWM:");
    println!(
        "server RSS: idle {:.1} MiB, peak after {MEMBERS} logins {:.1} MiB, peak {:.1} MiB",
        idle_kib as f64 / 1024.0,
        after_logins_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0
    );
    goals.push(("RSS idle <= 32 MiB".to_owned(), idle_kib <= 32 * 1024));
    goals.push(("RSS peak <= 128 MiB".to_owned(), peak_kib <= 128 * 1024));
    for (goal, met) in &goals {
        println!("  [{}] {goal}", if *met { "met" } else { "MISSED" });
    }
    let _ = server.kill();
    let _ = server.wait();
    sandbox.stop();
}
