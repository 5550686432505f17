//! `cargo xtask bench-api`: `POST /api/v1/payments` (saved card, sandbox gateway, PostgreSQL,
//! a fresh idempotency key per request) at 1, 8 and 32 concurrent clients, next to the fixed
//! payment baseline (`benches/pg-payment/payment2.sql` on its own lean schema: the two
//! transactions a crash-safe gateway payment must write) and, for information, pgbench running
//! the portal's own SQL for one payment; the three alternate three times and medians are
//! reported; plus the server's idle and peak RSS.
//!
//! Needs `PORTAL_TEST_DATABASE_URL` (a server where the user may create databases), psql and
//! pgbench.

// A measuring tool: it may fail loudly, and its timing statistics are floats (money never is).
#![allow(
    clippy::float_arithmetic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use chrono::Utc;
use portal_core::account::{
    Account, Holder, IdempotencyRecord, LookupDigest, Member, NewAccount, Principal, Session,
    TokenDigest,
};
use portal_core::calendar::CoverageMonth;
use portal_core::enrollment::{CoverageKind, Enrollment};
use portal_core::identity::{AccountNumber, Email, Language, PersonName, Username};
use portal_core::ids::{AccountId, EnrollmentId, MethodId, PaymentId, SessionId};
use portal_core::instrument::{CardBrand, CardExpiry, MethodDetails, PaymentMethod};
use portal_core::money::Money;
use portal_core::password::Password;
use portal_core::payment::{Payment, PaymentChannel, PaymentInstrument, PaymentStatus};
use portal_core::ports::IdGenerator;
use portal_core::ports::{Changes, PasswordHasher, SecretSealer, Store};
use portal_crypto::{AesGcmSealer, Argon2Hasher, RandomIds};
use portal_postgres::PgStore;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{
    FIXED_SCRIPT, Run, card_token, drop_database, fixed_baseline, fresh_database, median,
    payment_commits_sql, percentile, pgbench_run, rss_kib,
};

/// Members paying through the portal (as many again are pgbench's), each with a year of
/// payments behind it. Each client pays for its own members in turn: with 1,024, an account
/// gains about ten payments during the run (with 64 it gained some 200, and every load read
/// them all). `BENCH_API_MEMBERS` overrides it.
fn members() -> usize {
    std::env::var("BENCH_API_MEMBERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}
/// Members who log in over HTTP (Argon2 and all), for the RSS after logins; the others get
/// their sessions written directly.
const LOGINS: usize = 8;
/// Past payments each account starts with.
const HISTORY: u32 = 12;
const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const SECONDS: u64 = 5;
const ROUNDS: usize = 3;

struct Member1 {
    token: String,
    method: String,
}

async fn portal_run(
    base: &str,
    members: &[Member1],
    clients: usize,
    next: &Arc<std::sync::atomic::AtomicU64>,
    seconds: u64,
) -> Run {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(seconds);
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

/// The SQL one saved-card payment performs in `PgStore`, in order: the version lookup that
/// lets the server's copy of the account answer (the account was loaded whole by the member's
/// previous request), the intent commit (payment, idempotency record, audit entry) and the
/// outcome commit (status, audit entry, outbox notice), each one statement; the session lookup
/// is left out.
fn payment_script() -> String {
    let members = members();
    let commits = payment_commits_sql("member", "member", 100, true);
    format!(
        "\\set n random(1, {members})
SELECT id AS aid FROM bench_members WHERE n = :n \\gset
SELECT id, version FROM accounts WHERE id = ANY(ARRAY[:aid]::uuid[]);
{commits}"
    )
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
    let names = [
        format!("portal_bench_{}", std::process::id()),
        format!("pay_baseline_{}", std::process::id()),
    ];
    let url = fresh_database(&base_url, &names[0]).await;
    let fixed_url = fixed_baseline(&base_url, &names[1]).await;
    measure(&url, &fixed_url).await;
    for name in &names {
        drop_database(&base_url, name).await;
    }
}

async fn measure(url: &str, fixed_url: &str) {
    let fixed_script = std::path::PathBuf::from(FIXED_SCRIPT);
    let pool = portal_postgres::connect(url, 8).await.unwrap();
    portal_postgres::migrate(&pool).await.unwrap();
    let store = PgStore::new(pool.clone());
    let sandbox = portal_sandbox::start(
        portal_sandbox::SandboxConfig::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let token = card_token(&sandbox.base_url()).await;
    let sealer = AesGcmSealer::from_hex(KEY).unwrap();
    let hasher = Argon2Hasher::new();
    let password = Password::new("bench premium payments passphrase", &[]).unwrap();
    let hash = hasher.hash(&password).await.unwrap();
    sqlx::query("CREATE TABLE bench_members (n int PRIMARY KEY, id uuid NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    // Members 1..=MEMBERS pay through the portal; the next MEMBERS are pgbench's, so the
    // baseline's rows never land in accounts the portal loads.
    let members_n = members();
    let mut methods = Vec::new();
    for n in 1..=2 * members_n {
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
        // A year of monthly payments behind each account, as a member's account has.
        let mut history = Changes::default();
        for m in 1..=HISTORY {
            let pid = PaymentId(uuid::Uuid::now_v7());
            let at = Utc::now() - chrono::Duration::days(i64::from(31 * m));
            let key = format!("history-{n}-{m}");
            a.ledger.add_payment(Payment {
                id: pid,
                reference: RandomIds.payment_reference(),
                amount: Money::from_cents(30_000),
                refunded: Money::ZERO,
                instrument: PaymentInstrument::Saved {
                    method_id: method,
                    details: MethodDetails::Card {
                        brand: CardBrand::Visa,
                        last4: "4242".into(),
                        expiry: CardExpiry {
                            month: 12,
                            year: 2034,
                        },
                    },
                },
                channel: PaymentChannel::Member,
                status: PaymentStatus::Succeeded,
                gateway_id: Some(format!("pi_history_{}", pid.uuid().simple())),
                idempotency_key: key.clone(),
                initiated_at: at,
                initiated_on: at.date_naive(),
                expected_settlement: None,
                allocations: Vec::new(),
                history: Vec::new(),
            });
            history.idempotency.push(IdempotencyRecord {
                scope: format!("account:{id}"),
                key,
                request_digest: "history".into(),
                payment_id: pid,
                account_id: id,
                created_at: at,
            });
        }
        history.account = Some(a);
        store.commit(history).await.unwrap();
        if n > members_n {
            sqlx::query("INSERT INTO bench_members (n, id) VALUES ($1, $2)")
                .bind(i32::try_from(n - members_n).unwrap())
                .bind(id.uuid())
                .execute(&pool)
                .await
                .unwrap();
        } else {
            methods.push((id, method));
        }
    }
    // Statistics, as a live database has them (the fixed baseline's schema ends the same way):
    // without them the planner's first plans scan whole tables.
    sqlx::query("VACUUM ANALYZE").execute(&pool).await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = std::env::temp_dir().join(format!("portal-bench-{}", std::process::id()));
    let mut server = Command::new(env!("CARGO_BIN_EXE_portal-app"))
        .args(["serve", "--no-worker"])
        .env("PORTAL_DATABASE_URL", url)
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
    let mut sessions = Changes::default();
    for (n, (id, method)) in methods.iter().enumerate() {
        let token = if n < LOGINS {
            let r: serde_json::Value = http
                .post(format!("{base}/api/v1/sessions"))
                .json(&serde_json::json!({ "username": format!("bench{}", n + 1), "password": "bench premium payments passphrase" }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["token"].as_str().unwrap().to_owned()
        } else {
            // What a login writes, without the Argon2 check.
            let token = format!("bench-session-{}", uuid::Uuid::now_v7().simple());
            sessions.put_sessions.push(Session {
                id: SessionId(uuid::Uuid::now_v7()),
                digest: TokenDigest::of(&token),
                principal: Principal::Member { account_id: *id },
                created_at: Utc::now(),
                last_seen_at: Utc::now(),
            });
            token
        };
        members.push(Member1 {
            token,
            method: method.to_string(),
        });
    }
    store.commit(sessions).await.unwrap();
    let after_logins_kib = rss_kib(server.id(), "VmHWM:");
    let script = data.join("payment.sql");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(&script, payment_script()).unwrap();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // `BENCH_API_SOAK=N`: only the portal, 8 clients, for N seconds (to profile the server).
    if let Some(secs) = std::env::var("BENCH_API_SOAK")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        println!("soak: server pid {}", server.id());
        let p = portal_run(&base, &members, 8, &next, secs).await;
        println!(
            "soak: {:.1} payments/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
            p.tps, p.p50, p.p99, p.errors
        );
        let _ = server.kill();
        let _ = server.wait();
        sandbox.stop();
        return;
    }
    println!(
        "POST /api/v1/payments vs the fixed baseline (payment2.sql) and pgbench of the portal's own SQL (-M prepared), {SECONDS} s per run, {ROUNDS} alternating rounds, medians"
    );
    println!(
        "{:>7} {:>10} {:>10} {:>6} {:>8} {:>8} {:>8} {:>8} {:>10} {:>6} {:>7}",
        "clients",
        "portal/s",
        "fixed/s",
        "ratio",
        "p50 ms",
        "p99 ms",
        "fix p50",
        "fix p99",
        "own-sql/s",
        "ratio",
        "errors"
    );
    let mut goals = Vec::new();
    for clients in [1usize, 8, 32] {
        let (mut ptps, mut ftps, mut ratios, mut p50, mut p99, mut fp50, mut fp99) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut otps, mut own_ratios) = (vec![], vec![]);
        let mut errors = 0;
        for round in 0..ROUNDS {
            let f = pgbench_run(
                fixed_url,
                &fixed_script,
                clients,
                SECONDS,
                &data.join(format!("fixed-{clients}-{round}")),
            );
            let p = portal_run(&base, &members, clients, &next, SECONDS).await;
            let o = pgbench_run(
                url,
                &script,
                clients,
                SECONDS,
                &data.join(format!("pgb-{clients}-{round}")),
            );
            errors += p.errors + f.errors + o.errors;
            ratios.push(p.tps / f.tps);
            own_ratios.push(p.tps / o.tps);
            ptps.push(p.tps);
            ftps.push(f.tps);
            otps.push(o.tps);
            p50.push(p.p50);
            p99.push(p.p99);
            fp50.push(f.p50);
            fp99.push(f.p99);
        }
        let (ratio, p99m, fp99m) = (median(ratios), median(p99), median(fp99));
        println!(
            "{clients:>7} {:>10.1} {:>10.1} {ratio:>6.2} {:>8.2} {p99m:>8.2} {:>8.2} {fp99m:>8.2} {:>10.1} {:>6.2} {errors:>7}",
            median(ptps),
            median(ftps),
            median(p50),
            median(fp50),
            median(otps),
            median(own_ratios)
        );
        if clients >= 8 {
            goals.push((
                format!("payments/s >= 0.5 x the fixed baseline at {clients} clients ({ratio:.2})"),
                ratio >= 0.5,
            ));
        }
        if clients == 8 {
            goals.push((
                format!(
                    "p99 at 8 clients <= 2 x the fixed baseline's p99 + 10 ms ({p99m:.1} <= {:.1})",
                    2.0 * fp99m + 10.0
                ),
                p99m <= 2.0 * fp99m + 10.0,
            ));
        }
        goals.push((format!("no errors at {clients} clients"), errors == 0));
    }
    let peak_kib = rss_kib(server.id(), "VmHWM:");
    println!(
        "server RSS: idle {:.1} MiB, peak after {LOGINS} logins {:.1} MiB, peak {:.1} MiB ({members_n} members)",
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
