//! Races that only a real database can lose.

use crate::support;
use chrono::{Duration, NaiveDate, Utc};
use portal_core::ids::AccountId;
use portal_core::instrument::{CardBrand, CardExpiry, GatewayToken, MethodDetails};
use portal_core::ports::{Changes, JobRun, Store, WorkQueue};
use portal_core::services::{Deps, MakePayment, PayWith, Portal, PortalConfig};
use portal_core::testing::{Behaviour, FakeGateway, FixedClock, TestHasher, TestSealer};
use portal_core::verifier::RecordMatchVerifier;
use portal_crypto::RandomIds;
use portal_postgres::PgStore;
use std::collections::HashSet;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_payments_with_one_key_make_one_payment() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let store = Arc::new(PgStore::new(pool.clone()));
    let gateway = Arc::new(FakeGateway::new());
    let card = MethodDetails::Card {
        brand: CardBrand::Visa,
        last4: "4242".into(),
        expiry: CardExpiry {
            month: 12,
            year: 2031,
        },
    };
    gateway.add("pm_card_visa", card, Behaviour::Succeed);
    let sealer = Arc::new(TestSealer);
    let portal = Portal::new(
        Deps {
            store: store.clone(),
            gateway: gateway.clone(),
            clock: Arc::new(FixedClock::at(
                NaiveDate::from_ymd_opt(2026, 12, 2).unwrap(),
            )),
            ids: Arc::new(RandomIds),
            sealer: sealer.clone(),
            hasher: Arc::new(TestHasher),
            identity: Arc::new(RecordMatchVerifier::new(store.clone(), sealer)),
            work: store.clone(),
            agents: Arc::new(portal_core::testing::StaticAgents::default()),
        },
        PortalConfig::default(),
    );
    let mut account = portal_core::testing::conformance::bare_account(7);
    account.member = None;
    let id = account.id;
    store.commit(Changes::account(account)).await.unwrap();
    assert_eq!(portal.bill_account(id).await.unwrap(), 1);

    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let portal = portal.clone();
            tokio::spawn(async move {
                portal
                    .make_payment(MakePayment {
                        account_id: id,
                        amount: None,
                        method: PayWith::Token {
                            token: GatewayToken::parse("pm_card_visa").unwrap(),
                            save: false,
                        },
                        idempotency_key: "one-key-fifty-requests".into(),
                    })
                    .await
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for t in tasks {
        let receipt = t
            .await
            .unwrap()
            .expect("every request answers with the payment");
        ids.insert(receipt.payment().id);
    }
    assert_eq!(ids.len(), 1, "every request got the same payment");
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&pool)
        .await
        .unwrap();
    let allocations: i64 = sqlx::query_scalar("SELECT count(*) FROM allocations")
        .fetch_one(&pool)
        .await
        .unwrap();
    let records: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_records")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((payments, allocations, records), (1, 1, 1));
    assert_eq!(gateway.charges(), 1, "the gateway charged once");
    let account = store.load_account(id).await.unwrap().unwrap();
    account.ledger.check_invariants().unwrap();
    assert!(account.amount_due().is_zero());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_runners_plan_and_claim_ten_thousand_accounts_exactly_once() {
    let Some(pool) = support::pool().await else {
        return;
    };
    // Ten thousand accounts, written directly: this test is about claiming, not accounts.
    sqlx::query(
        "INSERT INTO accounts (id, version, number, holder_first_name, holder_last_name, holder_search,
             date_of_birth, ssn_digest, ssn_last4, reminders, created_at)
         SELECT gen_random_uuid(), 1, 'HC' || lpad(i::text, 8, '0'), 'Ana', 'Silva', 'ana silva',
             DATE '1980-01-01', 'd' || i, '0001', '{\"due_date_reminders\": true}', now()
         FROM generate_series(1, 10000) AS i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let store = Arc::new(PgStore::new(pool.clone()));
    let run = JobRun {
        job: "autopay".into(),
        period: "2027-01-20".into(),
    };
    let runners: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            let run = run.clone();
            tokio::spawn(async move {
                // Every runner plans, as every instance does; one of them plans the run.
                let planned = store.plan_run(run.clone(), 10).await.unwrap();
                let mut mine: Vec<AccountId> = Vec::new();
                loop {
                    let now = Utc::now();
                    let batch = store
                        .claim(
                            run.clone(),
                            format!("runner-{w}"),
                            5,
                            now,
                            now + Duration::minutes(10),
                        )
                        .await
                        .unwrap();
                    if batch.is_empty() {
                        break (planned, mine);
                    }
                    for chunk in &batch {
                        mine.extend(
                            store
                                .load_chunk(*chunk)
                                .await
                                .unwrap()
                                .into_iter()
                                .map(|a| a.id),
                        );
                    }
                    store.finish(run.clone(), batch, now).await.unwrap();
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut per_runner = Vec::new();
    let mut planned = 0;
    for r in runners {
        let (p, mine) = r.await.unwrap();
        planned += p;
        per_runner.push(mine.len());
        all.extend(mine);
    }
    assert_eq!(planned, 1_000, "planned once, in chunks of ten");
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(
        all.len(),
        10_000,
        "every account worked once ({per_runner:?})"
    );
    assert_eq!(distinct.len(), 10_000, "no account worked twice");
    assert!(
        per_runner.iter().filter(|n| **n > 0).count() >= 2,
        "the work was shared: {per_runner:?}"
    );
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM work_items WHERE finished_at IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(open, 0);
}
