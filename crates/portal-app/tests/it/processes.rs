//! Several `portal-app` processes running the same job at once against one PostgreSQL: each
//! mandate is charged exactly once, as the gateway's own record shows, and a rerun charges
//! nothing. The gateway is a sandbox in this test process, so its totals are the ground truth.

use crate::common::{card_token, mandated_account};
use chrono::Utc;
use portal_core::ports::{Changes, Outbox, Store};
use portal_postgres::PgStore;
use std::process::Command;
use std::sync::Arc;

const MEMBERS: u32 = 2000;
const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_worker_processes_charge_each_mandate_exactly_once() {
    let Some(url) = crate::fresh_postgres().await else {
        return;
    };
    let pool = portal_postgres::connect(&url, 16).await.unwrap();
    portal_postgres::migrate(&pool).await.unwrap();
    let store = Arc::new(PgStore::new(pool.clone()));
    let sandbox = portal_sandbox::start(
        portal_sandbox::SandboxConfig::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let token = card_token(&sandbox.base_url()).await;
    let today = Utc::now()
        .with_timezone(&chrono_tz::America::New_York)
        .date_naive();
    // Seed with a few writers at once.
    let mut seeders = Vec::new();
    for chunk in 0..8u32 {
        let store = store.clone();
        let token = token.clone();
        seeders.push(tokio::spawn(async move {
            for n in (chunk..MEMBERS).step_by(8) {
                store
                    .commit(Changes::account(mandated_account(n, &token, today)))
                    .await
                    .unwrap();
            }
        }));
    }
    for s in seeders {
        s.await.unwrap();
    }
    let data = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("procs-{}", std::process::id()));
    let run = || {
        (0..3)
            .map(|_| {
                Command::new(env!("CARGO_BIN_EXE_portal-app"))
                    .args(["autopay-run", "--date", &today.to_string()])
                    .env("PORTAL_DATABASE_URL", &url)
                    .env("PORTAL_GATEWAY_URL", sandbox.base_url())
                    .env("PORTAL_GATEWAY_SECRET_KEY", "sk_test_sandbox")
                    .env("PORTAL_WEBHOOK_SECRET", "whsec_sandbox")
                    .env("PORTAL_SEALING_KEY", KEY)
                    .env("PORTAL_DATA_DIR", &data)
                    // Forty chunks, so the three processes share the run.
                    .env("PORTAL_JOB_CHUNK", "50")
                    .env("RUST_LOG", "warn")
                    .spawn()
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };
    let wait = |children: Vec<std::process::Child>| {
        tokio::task::spawn_blocking(move || {
            children
                .into_iter()
                .map(|mut c| c.wait().unwrap().success())
                .collect::<Vec<_>>()
        })
    };
    let ok = wait(run()).await.unwrap();
    assert!(
        ok.iter().all(|s| *s),
        "every worker process finished cleanly: {ok:?}"
    );
    let totals = sandbox.sandbox.totals();
    assert_eq!(
        totals.charges, MEMBERS as usize,
        "the gateway charged each mandate once"
    );
    assert_eq!(totals.charged, i64::from(MEMBERS) * 5_000);
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(payments, i64::from(MEMBERS));
    let notices = store.pending_messages(10_000).await.unwrap();
    let confirmations = notices
        .iter()
        .filter(|m| {
            matches!(
                m.notice.body,
                portal_core::notice::NoticeBody::PaymentConfirmation { .. }
            )
        })
        .count();
    assert_eq!(
        confirmations, MEMBERS as usize,
        "one confirmation per debit"
    );
    // Running the same date again, three times over, charges nothing more.
    let ok = wait(run()).await.unwrap();
    assert!(ok.iter().all(|s| *s));
    assert_eq!(sandbox.sandbox.totals().charges, MEMBERS as usize);
    let again: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(again, i64::from(MEMBERS));
}
