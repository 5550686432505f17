//! `cargo xtask bench-jobs`: the batch jobs at scale on PostgreSQL, each next to a baseline
//! measured on the same database in the same run.
//!
//! - The billing run (`portal-app billing-run`) for 1,000,000 members, one bill each, against a
//!   plain `INSERT … SELECT FROM generate_series` of 1,000,000 equivalent rows into a table
//!   with the bills table's shape, indexes and foreign key.
//! - Rerunning the finished billing date against a no-op `INSERT … ON CONFLICT DO NOTHING` of
//!   the same 1,000,000 rows; and, for information, a pass that re-examines every account
//!   (the run's work items deleted, as if they were lost).
//! - The autopay run for 10,000 mandates (8 `portal-app autopay-run` processes against the
//!   sandbox) against the fixed payment baseline (`benches/pg-payment/payment2.sql`) at 8
//!   clients, once before the run and twice after it (median), and, for information, pgbench
//!   at 8 clients of the SQL one debit performs.
//! - The peak RSS of each job process (from its own summary line).
//!
//! Needs `PORTAL_TEST_DATABASE_URL` (a server where the user may create databases) and pgbench.
//! `BENCH_MEMBERS` and `BENCH_MANDATES` scale it down for a quick look; `BENCH_CHUNK` sets the
//! billing run's chunk (default 2000, the portal's default).

// A measuring tool: it may fail loudly, and its timing statistics are floats (money never is).
#![allow(
    clippy::float_arithmetic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use chrono::NaiveDate;
use common::{
    FIXED_SCRIPT, card_token, drop_database, fixed_baseline, fresh_database, load_sql,
    mandated_account, median, payment_commits_sql, pgbench_run,
};
use portal_core::account::ReminderPreferences;
use portal_core::billing::{BillKind, BillNotice};
use portal_core::calendar::CoverageMonth;
use portal_core::enrollment::{CoverageKind, Enrollment};
use portal_core::ids::EnrollmentId;
use portal_core::money::Money;
use portal_core::ports::{Changes, Store};
use portal_postgres::PgStore;
use sqlx::PgPool;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const CLIENTS: usize = 8;
const PGBENCH_SECONDS: u64 = 5;
const ROUNDS: usize = 3;

/// `portal-app billing-run` processes sharing the run, as instances do. Each alternates
/// between its own work and waiting on PostgreSQL, so on two cores three keep both busy
/// (measured at 1,000,000 members: 2 processes 35 s, 3 processes 33 s, 4 processes 33 s).
static BILLING_PROCESSES: std::sync::LazyLock<u32> =
    std::sync::LazyLock::new(|| count("BENCH_BILLING_PROCESSES", 3));

fn count(var: &str, default: u32) -> u32 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let Ok(base_url) = std::env::var("PORTAL_TEST_DATABASE_URL") else {
        eprintln!(
            "bench-jobs needs PORTAL_TEST_DATABASE_URL (a PostgreSQL server where databases may be created)"
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

/// A job process's result: wall time and the peak memory it reported.
struct JobRun {
    seconds: f64,
    peak_mib: f64,
    summary: String,
}

fn job_command(url: &str, gateway: &str, args: &[&str], chunk: u32) -> Command {
    let data = std::env::temp_dir().join(format!("portal-bench-jobs-{}", std::process::id()));
    let mut c = Command::new(env!("CARGO_BIN_EXE_portal-app"));
    c.args(args)
        .env("PORTAL_DATABASE_URL", url)
        .env("PORTAL_GATEWAY_URL", gateway)
        .env("PORTAL_GATEWAY_SECRET_KEY", "sk_test_sandbox")
        .env("PORTAL_WEBHOOK_SECRET", "whsec_sandbox")
        .env("PORTAL_SEALING_KEY", KEY)
        .env("PORTAL_DATA_DIR", data)
        .env("PORTAL_JOB_CHUNK", chunk.to_string())
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    c
}

/// Runs job processes at once and waits for all of them.
async fn run_jobs(commands: Vec<Command>) -> Vec<JobRun> {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let children: Vec<_> = commands
            .into_iter()
            .map(|mut c| c.spawn().expect("portal-app starts"))
            .collect();
        children
            .into_iter()
            .map(|c| {
                let out = c.wait_with_output().unwrap();
                let summary = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                assert!(out.status.success(), "job failed: {summary}");
                let peak_mib = summary
                    .rsplit_once("peak memory ")
                    .and_then(|(_, m)| m.split_whitespace().next())
                    .and_then(|m| m.parse().ok())
                    .expect("the summary reports peak memory");
                JobRun {
                    seconds: started.elapsed().as_secs_f64(),
                    peak_mib,
                    summary,
                }
            })
            .collect()
    })
    .await
    .unwrap()
}

/// The run's result: its slowest process's time, the largest peak memory, every summary.
fn slowest(runs: Vec<JobRun>) -> JobRun {
    JobRun {
        seconds: runs.iter().map(|r| r.seconds).fold(0.0, f64::max),
        peak_mib: runs.iter().map(|r| r.peak_mib).fold(0.0, f64::max),
        summary: runs
            .iter()
            .map(|r| r.summary.as_str())
            .collect::<Vec<_>>()
            .join("\n  "),
    }
}

async fn timed(pool: &PgPool, sql: &str) -> (f64, u64) {
    let started = Instant::now();
    let done = sqlx::query(sql).execute(pool).await.unwrap();
    (started.elapsed().as_secs_f64(), done.rows_affected())
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Time-ordered ids like the portal's (UUIDv7: 48 bits of milliseconds, then random), so the
/// baseline's index inserts are as local as the portal's.
const UUID7_FN: &str = "CREATE FUNCTION bench_uuid7() RETURNS uuid LANGUAGE sql VOLATILE AS $$
    SELECT (lpad(to_hex(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
            || '7' || substr(md5(random()::text), 1, 3)
            || to_hex(8 + floor(random() * 4)::int) || substr(md5(random()::text), 1, 15))::uuid
$$";

async fn run(base_url: String) {
    let members = count("BENCH_MEMBERS", 1_000_000);
    let mandates = count("BENCH_MANDATES", 10_000);
    let sandbox = portal_sandbox::start(
        portal_sandbox::SandboxConfig::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let gateway = sandbox.base_url();
    let mut goals: Vec<(String, bool)> = Vec::new();
    let mut peaks: Vec<(String, f64)> = Vec::new();

    // ---- Billing ----
    let billing_db = format!("portal_bench_billing_{}", std::process::id());
    let url = fresh_database(&base_url, &billing_db).await;
    let pool = portal_postgres::connect(&url, 4).await.unwrap();
    portal_postgres::migrate(&pool).await.unwrap();
    let coverage = NaiveDate::from_ymd_opt(2027, 1, 1).unwrap();
    // January's bills are issued on December 2 (due December 23).
    let billing_date = "2026-12-02";
    let enrollment = Enrollment::new(
        EnrollmentId(uuid::Uuid::nil()),
        CoverageKind::Health,
        "ConnectorCare 2A",
        Money::from_cents(60_000),
        Money::from_cents(30_000),
        CoverageMonth::of(coverage),
    )
    .unwrap();
    let template = serde_json::to_value(&enrollment).unwrap();
    assert!(template.get("id").is_some(), "enrollments keep their id");
    let reminders = serde_json::to_value(ReminderPreferences::default()).unwrap();
    println!("seeding {members} members…");
    let seeded = Instant::now();
    for sql in [
        UUID7_FN.to_owned(),
        format!(
            "CREATE TABLE bench_seed AS SELECT g AS n, bench_uuid7() AS account_id,
                 bench_uuid7() AS enrollment_id FROM generate_series(1, {members}) g"
        ),
        "ALTER TABLE bench_seed ADD PRIMARY KEY (n)".to_owned(),
    ] {
        sqlx::query(&sql).execute(&pool).await.unwrap();
    }
    sqlx::query(
        "INSERT INTO accounts (id, version, number, holder_first_name, holder_last_name, holder_search,
             date_of_birth, ssn_digest, ssn_last4, contact_email, reminders, created_at)
         SELECT account_id, 1, 'HC' || lpad(n::text, 8, '0'), 'Ana', 'Silva', 'ana silva',
             DATE '1980-01-01', 'digest-' || n, '0001', 'member' || n || '@example.com', $1, now()
         FROM bench_seed ORDER BY n",
    )
    .bind(&reminders)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO enrollments (id, account_id, position, data)
         SELECT enrollment_id, account_id, 0, jsonb_set($1, '{id}', to_jsonb(enrollment_id::text))
         FROM bench_seed ORDER BY n",
    )
    .bind(&template)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE").execute(&pool).await.unwrap();
    println!("seeded in {:.0} s", seeded.elapsed().as_secs_f64());

    // The baseline: the same number of bill rows, straight from generate_series, into a table
    // with the same columns, indexes and foreign key.
    for sql in [
        "CREATE TABLE bench_bills (LIKE bills INCLUDING ALL)",
        "ALTER TABLE bench_bills ADD FOREIGN KEY (account_id) REFERENCES accounts (id)",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    let kind = serde_json::to_string(&BillKind::Binder).unwrap();
    let notices = serde_json::to_string(&vec![BillNotice::Issued]).unwrap();
    let (insert_s, inserted) = timed(
        &pool,
        &format!(
            "INSERT INTO bench_bills (id, account_id, position, enrollment_id, kind_name, kind,
                 coverage_month, amount_cents, allocated_cents, transferred_cents, due_date,
                 issued_on, void, notices, late_fee_assessed)
             SELECT bench_uuid7(), s.account_id, 0, s.enrollment_id, 'binder', '{kind}',
                 DATE '{coverage}', 30000, 0, 0, DATE '2026-12-23', DATE '{billing_date}', false,
                 '{notices}', false
             FROM generate_series(1, {members}) g JOIN bench_seed s ON s.n = g"
        ),
    )
    .await;
    assert_eq!(inserted, u64::from(members));
    let insert_rate = f64::from(members) / insert_s;

    let billing = |n: u32| {
        (0..n)
            .map(|_| {
                job_command(
                    &url,
                    &gateway,
                    &["billing-run", "--date", billing_date],
                    count("BENCH_CHUNK", 2000),
                )
            })
            .collect::<Vec<_>>()
    };
    let first = slowest(run_jobs(billing(*BILLING_PROCESSES)).await);
    let bills = scalar(&pool, "SELECT count(*) FROM bills").await;
    let queued = scalar(&pool, "SELECT count(*) FROM outbox").await;
    assert_eq!(bills, i64::from(members), "one bill per member");
    assert_eq!(queued, i64::from(members), "one notice per bill");
    let bill_rate = f64::from(members) / first.seconds;
    peaks.push(("billing run".into(), first.peak_mib));

    let (noop_s, noop_rows) = timed(
        &pool,
        "INSERT INTO bench_bills SELECT * FROM bench_bills ON CONFLICT DO NOTHING",
    )
    .await;
    assert_eq!(noop_rows, 0);
    let rerun = slowest(run_jobs(billing(*BILLING_PROCESSES)).await);
    peaks.push(("billing rerun".into(), rerun.peak_mib));
    sqlx::query("DELETE FROM work_items WHERE job = 'billing'")
        .execute(&pool)
        .await
        .unwrap();
    let reexamine = slowest(run_jobs(billing(*BILLING_PROCESSES)).await);
    peaks.push(("billing re-examination".into(), reexamine.peak_mib));
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM bills").await,
        i64::from(members),
        "reruns issue nothing"
    );
    println!(
        "\nbilling, {members} members, one bill each, {} billing-run processes (PostgreSQL, same database)",
        *BILLING_PROCESSES
    );
    println!("  {}", first.summary);
    println!(
        "  billing run          {:>9.0} bills/s  ({:.1} s)   baseline INSERT … SELECT generate_series {:>9.0} rows/s ({:.1} s)   ratio {:.2}",
        bill_rate,
        first.seconds,
        insert_rate,
        insert_s,
        bill_rate / insert_rate
    );
    println!(
        "  rerun, date finished {:>9.2} s          baseline no-op INSERT … ON CONFLICT DO NOTHING {:>9.2} s   ratio {:.2}",
        rerun.seconds,
        noop_s,
        rerun.seconds / noop_s
    );
    println!(
        "  rerun, every account re-examined {:.2} s (ratio to the no-op {:.2}; for information)",
        reexamine.seconds,
        reexamine.seconds / noop_s
    );
    goals.push((
        format!(
            "billing run >= 0.6 x raw insert rate ({:.2})",
            bill_rate / insert_rate
        ),
        bill_rate >= 0.6 * insert_rate,
    ));
    goals.push((
        "rerun of a finished date <= 2 x the no-op insert".into(),
        rerun.seconds <= 2.0 * noop_s,
    ));
    pool.close().await;
    drop_database(&base_url, &billing_db).await;

    // ---- Autopay ----
    let autopay_db = format!("portal_bench_autopay_{}", std::process::id());
    let url = fresh_database(&base_url, &autopay_db).await;
    let pool = portal_postgres::connect(&url, 8).await.unwrap();
    portal_postgres::migrate(&pool).await.unwrap();
    let store = Arc::new(PgStore::new(pool.clone()));
    let token = card_token(&gateway).await;
    let debit_day = NaiveDate::from_ymd_opt(2027, 1, 5).unwrap();
    println!("\nseeding {mandates} mandates…");
    let mut seeders = Vec::new();
    for w in 0..8u32 {
        let (store, token) = (store.clone(), token.clone());
        seeders.push(tokio::spawn(async move {
            for n in (w..mandates).step_by(8) {
                store
                    .commit(Changes::account(mandated_account(n, &token, debit_day)))
                    .await
                    .unwrap();
            }
        }));
    }
    for s in seeders {
        s.await.unwrap();
    }
    sqlx::query("VACUUM ANALYZE").execute(&pool).await.unwrap();
    let date = debit_day.to_string();
    let chunk = (mandates / 200).max(1);
    let autopay: Vec<Command> = (0..CLIENTS)
        .map(|_| job_command(&url, &gateway, &["autopay-run", "--date", &date], chunk))
        .collect();
    // The fixed payment baseline at 8 clients, once before the run and twice after it.
    let fixed_db = format!("pay_baseline_jobs_{}", std::process::id());
    let fixed_url = fixed_baseline(&base_url, &fixed_db).await;
    let dir = std::env::temp_dir().join(format!("portal-bench-jobs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fixed_run = |round: usize| {
        let r = pgbench_run(
            &fixed_url,
            std::path::Path::new(FIXED_SCRIPT),
            CLIENTS,
            PGBENCH_SECONDS,
            &dir.join(format!("fixed-{round}")),
        );
        assert_eq!(r.errors, 0, "the fixed baseline ran cleanly");
        r.tps
    };
    let mut fixed = vec![fixed_run(0)];
    let runs = run_jobs(autopay).await;
    fixed.push(fixed_run(1));
    fixed.push(fixed_run(2));
    let fixed_tps = median(fixed);
    let seconds = runs.iter().map(|r| r.seconds).fold(0.0, f64::max);
    let totals = sandbox.sandbox.totals();
    assert_eq!(
        totals.charges, mandates as usize,
        "the sandbox charged each mandate once"
    );
    let debit_rate = f64::from(mandates) / seconds;
    peaks.push((
        format!("autopay run (largest of {CLIENTS} processes)"),
        runs.iter().map(|r| r.peak_mib).fold(0.0, f64::max),
    ));
    sqlx::query(
        "CREATE TABLE bench_members AS SELECT row_number() OVER (ORDER BY id) AS n, id FROM accounts",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ALTER TABLE bench_members ADD PRIMARY KEY (n)")
        .execute(&pool)
        .await
        .unwrap();
    let script = dir.join("debit.sql");
    std::fs::write(&script, debit_script(mandates)).unwrap();
    let mut tps = Vec::new();
    for round in 0..ROUNDS {
        let r = pgbench_run(
            &url,
            &script,
            CLIENTS,
            PGBENCH_SECONDS,
            &dir.join(format!("pgb-{round}")),
        );
        assert_eq!(r.errors, 0, "pgbench ran cleanly");
        tps.push(r.tps);
    }
    let pg_tps = median(tps);
    println!("\nautopay, {mandates} mandates due the same day, {CLIENTS} clients");
    for r in &runs {
        println!("  {}", r.summary);
    }
    println!(
        "  autopay run {:>9.1} debits/s ({:.1} s)   pgbench of one debit's SQL {:>9.1} TPS (median of {ROUNDS} × {PGBENCH_SECONDS} s)   ratio {:.2}",
        debit_rate,
        seconds,
        pg_tps,
        debit_rate / pg_tps
    );
    println!(
        "  fixed payment baseline (payment2.sql) {:>9.1} payments/s at {CLIENTS} clients (median of 3, one before the run, two after)   ratio {:.2}",
        fixed_tps,
        debit_rate / fixed_tps
    );
    goals.push((
        format!(
            "autopay >= 0.4 x the fixed baseline at 8 processes ({:.2})",
            debit_rate / fixed_tps
        ),
        debit_rate >= 0.4 * fixed_tps,
    ));
    println!("\npeak RSS of the job processes");
    for (what, mib) in &peaks {
        println!("  {what:<45} {mib:>7.1} MiB");
        goals.push((format!("{what}: peak RSS <= 128 MiB"), *mib <= 128.0));
    }
    for (goal, met) in &goals {
        println!("  [{}] {goal}", if *met { "met" } else { "MISSED" });
    }
    pool.close().await;
    drop_database(&base_url, &autopay_db).await;
    drop_database(&base_url, &fixed_db).await;
    sandbox.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// The SQL one autopay debit performs in `PgStore`, in order: the load deciding the debit,
/// the intent commit (payment, audit entry) and the outcome commit (status, audit entry,
/// confirmation notice), each one statement, and the load finding the account done.
fn debit_script(members: u32) -> String {
    let load = load_sql();
    let commits = payment_commits_sql("autopay", "system", 5000, false);
    format!(
        "\\set n random(1, {members})
SELECT id AS aid FROM bench_members WHERE n = :n \\gset
{load}{commits}{load}"
    )
}
