//! Several `portal-app` processes running the same job at once against one PostgreSQL: each
//! mandate is charged exactly once, as the gateway's own record shows, and a rerun charges
//! nothing. The gateway is a sandbox in this test process, so its totals are the ground truth.

use chrono::{Days, Utc};
use portal_core::account::{Account, Holder, LookupDigest, NewAccount};
use portal_core::calendar::CoverageMonth;
use portal_core::enrollment::{CoverageKind, Enrollment};
use portal_core::identity::{AccountNumber, Email, PersonName};
use portal_core::ids::{AccountId, EnrollmentId, MandateId, MethodId};
use portal_core::instrument::{CardBrand, CardExpiry, GatewayToken, MethodDetails, PaymentMethod};
use portal_core::mandate::{AmountRule, Consent, ConsentSource, Frequency, Mandate, MandateTerms};
use portal_core::money::Money;
use portal_core::ports::{Changes, Outbox, Store};
use portal_postgres::PgStore;
use std::process::Command;
use std::sync::Arc;

const MEMBERS: u32 = 2000;
const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn account(n: u32, token: &GatewayToken, debit_day: chrono::NaiveDate) -> Account {
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
                    .commit(Changes::account(account(n, &token, today)))
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
