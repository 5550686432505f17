//! Client → sandbox round trips for card payments over loopback HTTP, at 1 and 16 concurrent
//! callers. Each iteration creates and confirms PaymentIntents with fresh idempotency keys;
//! divan reports the median time per iteration and items (payments) per second.
//!
//! Run with `cargo xtask bench-gateway`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use divan::counter::ItemsCount;
use portal_core::instrument::{GatewayToken, MethodKind};
use portal_core::money::Money;
use portal_core::ports::{ChargeRequest, ChargeStatus, PaymentGateway};
use portal_core::reference::PaymentReference;
use portal_sandbox::{SandboxConfig, SandboxHandle, start};
use portal_stripe::{StripeConfig, StripeGateway};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Rig {
    rt: tokio::runtime::Runtime,
    _sandbox: SandboxHandle,
    gateway: StripeGateway,
    token: GatewayToken,
}

static RIG: OnceLock<Rig> = OnceLock::new();
static NEXT: AtomicU64 = AtomicU64::new(0);

fn rig() -> &'static Rig {
    RIG.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (sandbox, token) = rt.block_on(async {
            let sandbox = start(SandboxConfig::default(), "127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            let body: serde_json::Value = reqwest::Client::new()
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
            let token =
                GatewayToken::parse(body.get("id").and_then(|v| v.as_str()).unwrap()).unwrap();
            (sandbox, token)
        });
        let gateway = StripeGateway::new(StripeConfig::new(
            sandbox.base_url(),
            "sk_test_sandbox",
            "whsec_sandbox",
        ))
        .unwrap();
        Rig {
            rt,
            _sandbox: sandbox,
            gateway,
            token,
        }
    })
}

fn charge(rig: &'static Rig) -> impl std::future::Future<Output = ()> {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let request = ChargeRequest {
        idempotency_key: format!("bench_{n}"),
        amount: Money::from_cents(12_345),
        token: rig.token.clone(),
        kind: MethodKind::Card,
        payment_id: portal_core::ids::PaymentId(uuid::Uuid::from_u128(u128::from(n))),
        reference: PaymentReference::from_values([0; 11]),
    };
    async move {
        let out = rig.gateway.charge(request).await.unwrap();
        assert_eq!(out.status, ChargeStatus::Succeeded);
    }
}

#[divan::bench(args = [1, 16], sample_count = 30, sample_size = 4)]
fn card_payments(bencher: divan::Bencher, callers: usize) {
    let rig = rig();
    bencher.counter(ItemsCount::new(callers)).bench(|| {
        rig.rt.block_on(async {
            let tasks: Vec<_> = (0..callers).map(|_| rig.rt.spawn(charge(rig))).collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
    });
}

fn main() {
    divan::main();
}
