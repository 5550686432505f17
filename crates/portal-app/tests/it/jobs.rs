//! The job commands (`billing-run`, `reminders-run`, `autopay-run`, `delinquency-run`) as an
//! operator runs them, on SQLite and PostgreSQL: every job does its work once per date, a rerun
//! does nothing, and a run killed half-way is finished by the next one without doing anything
//! twice.

use crate::Db;
use crate::common::{card_token, mandated_account};
use chrono::{Days, NaiveDate};
use portal_app::config::Config;
use portal_app::wiring;
use portal_core::Money;
use portal_core::calendar::CoverageMonth;
use portal_core::instrument::GatewayToken;
use portal_core::mandate::AmountRule;
use portal_core::notice::NoticeBody;
use portal_core::ports::Changes;
use portal_sandbox::SandboxHandle;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static N: AtomicU32 = AtomicU32::new(0);

struct Setup {
    url: String,
    dir: PathBuf,
    db: wiring::Db,
    sandbox: SandboxHandle,
    token: GatewayToken,
}

async fn setup(db: Db) -> Option<Setup> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "jobs-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let url = match db {
        Db::Sqlite => format!("sqlite://{}", dir.join("portal.db").display()),
        Db::Postgres => crate::fresh_postgres().await?,
    };
    let mut config = Config::load(None).unwrap();
    config.database_url = url.clone();
    config.data_dir = dir.clone();
    let db = wiring::Db::open(&config, wiring::JOB).await.unwrap();
    let sandbox = portal_sandbox::start(
        portal_sandbox::SandboxConfig::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let token = card_token(&sandbox.base_url()).await;
    Some(Setup {
        url,
        dir,
        db,
        sandbox,
        token,
    })
}

impl Setup {
    /// Seeds accounts `0..n` (a few writers at once); those for which `mandated` holds pay by
    /// automatic payment debited on `debit_day`, the rest pay by hand. Coverage starts in the
    /// month of `debit_day`, or from `coverage_from` with the debit paying the whole binder.
    async fn seed(
        &self,
        n: u32,
        debit_day: NaiveDate,
        coverage_from: Option<CoverageMonth>,
        mandated: fn(u32) -> bool,
    ) {
        let store = self.db.store();
        let mut writers = Vec::new();
        for w in 0..4 {
            let (store, token) = (store.clone(), self.token.clone());
            writers.push(tokio::spawn(async move {
                for i in (w..n).step_by(4) {
                    let mut a = mandated_account(i, &token, debit_day);
                    if !mandated(i) {
                        a.mandates.clear();
                    }
                    if let Some(coverage) = coverage_from {
                        // The first debit pays the whole binder on its due date.
                        for e in a.enrollments.iter_mut() {
                            e.coverage_start = coverage;
                        }
                        for m in a.mandates.iter_mut() {
                            let share = Money::from_cents(30_000);
                            m.amount_rule = AmountRule::Fixed { amount: share };
                            m.last_notice = None;
                            m.record_notice(0, share, debit_day - Days::new(3));
                        }
                    }
                    store.commit(Changes::account(a)).await.unwrap();
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
    }

    fn command(&self, job: &str, date: &str, chunk: u32) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_portal-app"));
        c.args([job, "--date", date])
            .env("PORTAL_DATABASE_URL", &self.url)
            .env("PORTAL_DATA_DIR", &self.dir)
            .env("PORTAL_GATEWAY_URL", self.sandbox.base_url())
            .env("PORTAL_GATEWAY_SECRET_KEY", "sk_test_sandbox")
            .env("PORTAL_WEBHOOK_SECRET", "whsec_sandbox")
            .env(
                "PORTAL_SEALING_KEY",
                "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
            )
            .env("PORTAL_JOB_CHUNK", chunk.to_string())
            .env("PORTAL_JOB_LEASE_SECS", "1")
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Runs a job command to the end; returns its (done, skipped, failed).
    async fn run(&self, job: &str, date: &str, chunk: u32) -> (u64, u64, u64) {
        let mut c = self.command(job, date, chunk);
        let out = tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{job} {date} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        summary(&stdout).unwrap_or_else(|| panic!("no summary from {job}: {stdout}"))
    }

    async fn notices(&self) -> Vec<portal_core::notice::Notice> {
        self.db
            .outbox()
            .pending_messages(100_000)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.notice)
            .collect()
    }
}

/// `(done, skipped, failed)` from a summary line such as
/// `billing-run 2026-12-02: 3 done, 1 skipped, 0 failed in 0.2s, peak memory 14.1 MiB`.
fn summary(stdout: &str) -> Option<(u64, u64, u64)> {
    let line = stdout.lines().find(|l| l.contains(" done, "))?;
    let (_, counts) = line.split_once(": ")?;
    let mut n = counts
        .split(", ")
        .map(|part| part.split_whitespace().next()?.parse::<u64>().ok());
    Some((n.next()??, n.next()??, n.next()??))
}

fn date(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

/// A month of jobs for six households, three on automatic payments: each job's first run on a
/// date does its work, a second run of the same date does nothing, and the gateway charges each
/// mandate once.
pub async fn every_job_does_its_work_once_per_date(db: Db) {
    let Some(s) = setup(db).await else { return };
    // Coverage from December 2026: billed November 2, due November 23, reminders 7 and 2
    // days before. The automatic payments debit the binder on its due date; the households
    // paying by hand never pay, so their enrollments are cancelled the day after.
    let december = CoverageMonth::new(2026, 12).unwrap();
    s.seed(6, date("2026-11-23"), Some(december), |i| i % 2 == 0)
        .await;
    let mut first: HashMap<(&str, &str), u64> = HashMap::new();
    for day in [
        "2026-11-02",
        "2026-11-16",
        "2026-11-21",
        "2026-11-23",
        "2026-11-24",
        "2026-12-02",
    ] {
        for job in [
            "billing-run",
            "reminders-run",
            "autopay-run",
            "delinquency-run",
        ] {
            let (done, _, failed) = s.run(job, day, 2).await;
            assert_eq!(failed, 0, "{job} {day}");
            first.insert((job, day), done);
            assert_eq!(
                s.run(job, day, 2).await,
                (0, 0, 0),
                "running {job} for {day} again finds the run finished"
            );
        }
    }
    let expected: HashMap<(&str, &str), u64> = [
        (("billing-run", "2026-11-02"), 6),     // December's bills
        (("reminders-run", "2026-11-16"), 3),   // 7 days before: only those paying by hand
        (("reminders-run", "2026-11-21"), 3),   // 2 days before
        (("autopay-run", "2026-11-23"), 3),     // the debits, which effectuate coverage
        (("delinquency-run", "2026-11-24"), 3), // the unpaid binders cancel
        (("billing-run", "2026-12-02"), 3),     // January's bills, for covered households only
    ]
    .into_iter()
    .collect();
    for (key, done) in &first {
        assert_eq!(
            done,
            expected.get(key).unwrap_or(&0),
            "{key:?} did {done}; every first run: {first:?}"
        );
    }
    assert_eq!(
        s.sandbox.sandbox.totals().charges,
        3,
        "each mandate charged once"
    );
    let notices = s.notices().await;
    let count = |f: fn(&NoticeBody) -> bool| notices.iter().filter(|n| f(&n.body)).count();
    assert_eq!(count(|b| matches!(b, NoticeBody::BillIssued { .. })), 9);
    assert_eq!(
        count(|b| matches!(b, NoticeBody::DueDateReminder { .. })),
        6
    );
    assert_eq!(
        count(|b| matches!(b, NoticeBody::PaymentConfirmation { .. })),
        3
    );
    assert_eq!(
        count(|b| matches!(b, NoticeBody::CoverageCancelled { .. })),
        3
    );
    assert_eq!(count(|b| matches!(b, NoticeBody::PastDue { .. })), 0);
    s.sandbox.stop();
}

/// A billing run killed part-way (SIGKILL, between or inside a chunk's transaction) is finished
/// by the next run once the dead run's lease ends: every household ends with one bill, one
/// notice and one audit entry for the month.
pub async fn a_killed_billing_run_is_finished_by_the_next(db: Db) {
    let Some(s) = setup(db).await else { return };
    const HOUSEHOLDS: u32 = 1500;
    s.seed(HOUSEHOLDS, date("2027-01-05"), None, |_| false)
        .await;
    let outbox = s.db.outbox();
    let mut child = s.command("billing-run", "2026-12-02", 5).spawn().unwrap();
    let mut at_kill = 0;
    for _ in 0..3000 {
        at_kill = outbox.pending_messages(100_000).await.unwrap().len();
        if at_kill >= 100 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run was killed, not finished");
    let committed = s.notices().await.len();
    eprintln!("killed at {at_kill}, {committed} committed");
    assert!(
        committed >= at_kill && committed < HOUSEHOLDS as usize,
        "killed part-way: {committed} of {HOUSEHOLDS} billed"
    );
    // After the dead run's lease (1 s) its chunk is free again.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (done, skipped, failed) = s.run("billing-run", "2026-12-02", 5).await;
    assert_eq!(failed, 0);
    assert_eq!(
        done,
        u64::from(HOUSEHOLDS) - committed as u64,
        "the rerun bills exactly those the killed run had not"
    );
    assert!(
        skipped <= 5,
        "at most the chunk the dead run wrote but had not marked finished is looked at again"
    );
    let notices = s.notices().await;
    assert_eq!(notices.len(), HOUSEHOLDS as usize, "one notice each");
    let store = s.db.store();
    let ids = store.account_ids(None, 100_000).await.unwrap();
    assert_eq!(ids.len(), HOUSEHOLDS as usize);
    for batch in ids.chunks(500) {
        for a in store.load_accounts(batch.to_vec()).await.unwrap() {
            assert_eq!(a.ledger.bills.len(), 1, "one bill for {}", a.number);
        }
    }
    for id in ids.iter().step_by(50) {
        let issued = store
            .audit_trail(*id)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "bill.issued")
            .count();
        assert_eq!(issued, 1);
    }
    s.sandbox.stop();
}

/// A rerun started while a crashed run still holds a chunk (its lease has not ended) says so,
/// waits for the lease, and works that chunk too: it never exits as if the run were whole.
pub async fn a_rerun_waits_for_the_chunk_a_dead_run_still_holds(db: Db) {
    let Some(s) = setup(db).await else { return };
    const HOUSEHOLDS: u32 = 20;
    s.seed(HOUSEHOLDS, date("2027-01-05"), None, |_| false)
        .await;
    // A run for this date planned in chunks of 5; a worker claimed one and died.
    let run = portal_core::ports::JobRun {
        job: "billing".into(),
        period: "2026-12-02".into(),
    };
    let work = s.db.work();
    assert_eq!(work.plan_run(run.clone(), 5).await, Ok(4));
    let now = chrono::Utc::now();
    let held = work
        .claim(
            run,
            "dead".into(),
            1,
            now,
            now + chrono::Duration::seconds(3),
        )
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    let mut c = s.command("billing-run", "2026-12-02", 5);
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("1 chunk is held by another worker"),
        "it says what it waits for: {stderr}"
    );
    assert_eq!(
        summary(&stdout),
        Some((u64::from(HOUSEHOLDS), 0, 0)),
        "every household billed, the held chunk too: {stdout}"
    );
    assert_eq!(s.notices().await.len(), HOUSEHOLDS as usize);
    s.sandbox.stop();
}

macro_rules! job_tests {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::Db::Sqlite).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::Db::Postgres).await;
                }
            )+
        }
    };
}

job_tests!(
    every_job_does_its_work_once_per_date,
    a_killed_billing_run_is_finished_by_the_next,
    a_rerun_waits_for_the_chunk_a_dead_run_still_holds,
);
