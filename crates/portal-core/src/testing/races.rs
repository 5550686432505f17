//! Races every store must survive, run by [`store_conformance_tests!`](crate::store_conformance_tests)
//! on a multi-threaded runtime: many requests with one idempotency key, and several job runners
//! planning and claiming one run. On the in-memory store they check the rules; on a real
//! database they also check its locking.

// Test support: a broken rule fails the check by panicking, like an assertion.
#![allow(clippy::panic)]

use super::conformance::{StoreUnderTest, bare_account};
use super::{Behaviour, FakeGateway, FixedClock, SeqIds, StaticAgents, TestHasher, TestSealer};
use crate::ids::AccountId;
use crate::instrument::{CardBrand, CardExpiry, GatewayToken, MethodDetails};
use crate::ports::{Changes, JobRun};
use crate::services::{Deps, MakePayment, PayWith, Portal, PortalConfig};
use crate::verifier::RecordMatchVerifier;
use chrono::{Duration, NaiveDate, TimeZone, Utc};
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

/// Runs the futures concurrently in this task and returns their outputs in order. No runtime
/// of its own (the core does no I/O): the races need the futures interleaved, and a real store
/// runs each one's statements on its own connection.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futures.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// Lets the other futures of a [`join_all`] run.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}

fn portal(store: &Arc<dyn StoreUnderTest>, gateway: Arc<FakeGateway>, seed: u32) -> Portal {
    let sealer = Arc::new(TestSealer);
    let day = NaiveDate::from_ymd_opt(2026, 12, 2).unwrap_or(NaiveDate::MIN);
    Portal::new(
        Deps {
            store: store.clone(),
            gateway,
            clock: Arc::new(FixedClock::at(day)),
            // Ids in the seed's namespace, so checks sharing a database never collide.
            ids: Arc::new(SeqIds::starting_at(u64::from(seed) << 32)),
            sealer: sealer.clone(),
            hasher: Arc::new(TestHasher),
            identity: Arc::new(RecordMatchVerifier::new(store.clone(), sealer)),
            work: store.clone(),
            agents: Arc::new(StaticAgents::default()),
        },
        PortalConfig::default(),
    )
}

/// Fifty concurrent requests with one idempotency key make one payment, one allocation, one
/// idempotency record and one charge, and every request answers with that payment.
pub async fn concurrent_payments_with_one_key_make_one_payment(
    store: Arc<dyn StoreUnderTest>,
    seed: u32,
) {
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
    let portal = portal(&store, gateway.clone(), seed);
    let mut account = bare_account(seed);
    account.member = None;
    let id = account.id;
    if let Err(e) = store.commit(Changes::account(account)).await {
        panic!("inserting the account failed: {e}");
    }
    assert_eq!(portal.bill_account(id).await.ok(), Some(1), "one bill");
    let key = format!("one-key-fifty-requests-{seed}");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let portal = portal.clone();
            let key = key.clone();
            async move {
                portal
                    .make_payment(MakePayment {
                        account_id: id,
                        amount: None,
                        method: PayWith::Token {
                            token: GatewayToken::parse("pm_card_visa")
                                .unwrap_or_else(|e| panic!("{e}")),
                            save: false,
                        },
                        idempotency_key: key,
                    })
                    .await
            }
        })
        .collect();
    let mut ids = HashSet::new();
    for answer in join_all(tasks).await {
        match answer {
            Ok(receipt) => ids.insert(receipt.payment().id),
            Err(e) => panic!("every request answers with the payment: {e:?}"),
        };
    }
    assert_eq!(ids.len(), 1, "every request got the same payment");
    let account = match store.load_account(id).await {
        Ok(Some(a)) => a,
        other => panic!("loading the account failed: {other:?}"),
    };
    let allocations: usize = account
        .ledger
        .payments
        .iter()
        .map(|p| p.allocations.len())
        .sum();
    assert_eq!(
        (account.ledger.payments.len(), allocations),
        (1, 1),
        "one payment with one allocation"
    );
    let payment = account.ledger.payments.first().map(|p| p.id);
    let record = store
        .idempotency_record(format!("account:{id}"), key.clone())
        .await
        .ok()
        .flatten();
    assert_eq!(
        record.map(|r| r.payment_id),
        payment,
        "one idempotency record, naming the payment"
    );
    assert_eq!(gateway.charges(), 1, "the gateway charged once");
    assert_eq!(account.ledger.check_invariants(), Ok(()));
    assert!(account.amount_due().is_zero(), "the bill is paid once");
}

/// Four runners that each plan the same run and claim until nothing is left work every account
/// exactly once: the run is planned once, no chunk goes to two runners, and the work is shared.
pub async fn concurrent_runners_plan_once_and_work_each_account_once(
    store: Arc<dyn StoreUnderTest>,
    seed: u32,
) {
    const ACCOUNTS: u32 = 2_000;
    for n in 0..ACCOUNTS {
        let mut a = bare_account(seed + 1 + n);
        a.member = None;
        if let Err(e) = store.commit(Changes::account(a)).await {
            panic!("inserting account {n} failed: {e}");
        }
    }
    let everyone: HashSet<AccountId> = store
        .account_ids(None, 10_000_000)
        .await
        .unwrap_or_default()
        .into_iter()
        .collect();
    let run = JobRun {
        job: format!("races-{seed}"),
        period: "2027-01-05".into(),
    };
    let runners: Vec<_> = (0..4)
        .map(|w| {
            let (store, run) = (store.clone(), run.clone());
            async move {
                // Every runner plans, as every instance does; one of them plans the run.
                let planned = store.plan_run(run.clone(), 8).await.unwrap_or(0);
                let mut mine = Vec::new();
                let now = Utc
                    .with_ymd_and_hms(2027, 1, 5, 6, 0, 0)
                    .single()
                    .unwrap_or_default();
                loop {
                    let batch = store
                        .claim(
                            run.clone(),
                            format!("runner-{w}"),
                            3,
                            now,
                            now + Duration::minutes(10),
                        )
                        .await
                        .unwrap_or_else(|e| panic!("claim failed: {e}"));
                    if batch.is_empty() {
                        break (planned, mine);
                    }
                    for chunk in &batch {
                        let accounts = store
                            .load_chunk(*chunk)
                            .await
                            .unwrap_or_else(|e| panic!("load_chunk failed: {e}"));
                        mine.extend(accounts.into_iter().map(|a| a.id));
                        // Give the other runners a turn, as real work would.
                        yield_once().await;
                    }
                    if let Err(e) = store.finish(run.clone(), batch, now).await {
                        panic!("finish failed: {e}");
                    }
                }
            }
        })
        .collect();
    let (mut all, mut planned, mut per_runner) = (Vec::new(), 0, Vec::new());
    for (p, mine) in join_all(runners).await {
        planned += p;
        per_runner.push(mine.len());
        all.extend(mine);
    }
    let chunks = u64::try_from(everyone.len().div_ceil(8)).unwrap_or(0);
    assert_eq!(planned, chunks, "planned once, in chunks of eight");
    let distinct: HashSet<AccountId> = all.iter().copied().collect();
    assert_eq!(
        all.len(),
        everyone.len(),
        "no account worked twice ({per_runner:?})"
    );
    assert_eq!(distinct, everyone, "every account worked");
    assert!(
        per_runner.iter().filter(|n| **n > 0).count() >= 2,
        "the work was shared: {per_runner:?}"
    );
}
