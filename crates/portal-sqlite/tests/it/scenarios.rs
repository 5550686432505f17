use chrono::{Duration, NaiveDate, Utc};
use portal_core::instrument::{CardBrand, CardExpiry, GatewayToken, MethodDetails};
use portal_core::notice::NoticeBody;
use portal_core::ports::{Changes, JobRun, Outbox, SecretSealer, Store, WorkQueue};
use portal_core::services::{Deps, MakePayment, PayWith, Portal, PortalConfig, RegistrationForm};
use portal_core::testing::{Behaviour, FakeGateway, FixedClock, TestHasher};
use portal_core::verifier::RecordMatchVerifier;
use portal_crypto::{AesGcmSealer, RandomIds};
use portal_sqlite::{SqliteStore, migrate};
use sqlx::Row;
use std::collections::HashSet;
use std::sync::Arc;

fn portal(store: Arc<SqliteStore>, gateway: Arc<FakeGateway>, sealer: Arc<AesGcmSealer>) -> Portal {
    Portal::new(
        Deps {
            store: store.clone(),
            gateway,
            clock: Arc::new(FixedClock::at(
                NaiveDate::from_ymd_opt(2026, 12, 2).unwrap(),
            )),
            ids: Arc::new(RandomIds),
            sealer: sealer.clone(),
            hasher: Arc::new(TestHasher),
            identity: Arc::new(RecordMatchVerifier::new(store.clone(), sealer)),
            work: store,
            agents: Arc::new(portal_core::testing::StaticAgents::default()),
        },
        PortalConfig::default(),
    )
}

fn gateway() -> Arc<FakeGateway> {
    let g = Arc::new(FakeGateway::new());
    let card = MethodDetails::Card {
        brand: CardBrand::Visa,
        last4: "4242".into(),
        expiry: CardExpiry {
            month: 12,
            year: 2031,
        },
    };
    g.add("pm_card_visa", card, Behaviour::Succeed);
    g
}

#[tokio::test]
async fn migrations_apply_to_an_empty_database_and_rerun_cleanly() {
    let (pool, _) = crate::pool().await;
    migrate(&pool).await.unwrap();
    migrate(&pool).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        applied,
        i64::try_from(portal_sqlite::MIGRATOR.iter().count()).unwrap()
    );
}

#[tokio::test]
async fn the_audit_log_cannot_be_changed_or_deleted() {
    let (pool, _) = crate::pool().await;
    let store = SqliteStore::new(pool.clone());
    let account = portal_core::testing::conformance::bare_account(1);
    let mut c = Changes::account(account.clone());
    c.audit.push(account.audit(
        Utc::now(),
        portal_core::audit::Actor::Member,
        "account",
        "created",
        "",
    ));
    store.commit(c).await.unwrap();
    for sql in [
        "UPDATE audit_log SET action = 'forged'",
        "DELETE FROM audit_log",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(store.audit_trail(account.id).await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_database_file_holds_no_plain_ssn_password_or_card_number() {
    let (pool, path) = crate::pool().await;
    let store = Arc::new(SqliteStore::new(pool.clone()));
    let sealer = Arc::new(AesGcmSealer::from_hex(&"5a".repeat(32)).unwrap());
    let portal = portal(store.clone(), gateway(), sealer.clone());
    let mut account = portal_core::testing::conformance::bare_account(5);
    account.member = None;
    account.holder.ssn_digest = sealer.lookup_digest("123456789");
    let id = account.id;
    store.commit(Changes::account(account)).await.unwrap();
    portal
        .register(&RegistrationForm {
            account_number: "HC00000005".into(),
            first_name: "José".into(),
            last_name: "Núñez-O'Brien".into(),
            date_of_birth: "1975-02-28".into(),
            ssn: "123-45-6789".into(),
            email: "jose@example.com".into(),
            username: "jnunez".into(),
            password: "correct horse battery staple".into(),
            language: "es".into(),
        })
        .await
        .unwrap();
    let code = store
        .pending_messages(10)
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m.notice.body {
            NoticeBody::EmailVerification { code, .. } => Some(code),
            _ => None,
        })
        .unwrap();
    portal.confirm_email(id, &code).await.unwrap();
    portal.bill_account(id).await.unwrap();
    portal
        .make_payment(MakePayment {
            account_id: id,
            amount: None,
            method: PayWith::Token {
                token: GatewayToken::parse("pm_card_visa").unwrap(),
                save: true,
            },
            idempotency_key: "raw-1".into(),
        })
        .await
        .unwrap();
    // Every column of every table, as SQLite renders it, and the raw file bytes.
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut dump = String::new();
    for t in &tables {
        let cols: Vec<String> = sqlx::query(&format!("PRAGMA table_info({t})"))
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>("name"))
            .collect();
        let expr = cols
            .iter()
            .map(|c| format!("quote({c})"))
            .collect::<Vec<_>>()
            .join(" || ' ' || ");
        for r in sqlx::query(&format!("SELECT {expr} AS row FROM {t}"))
            .fetch_all(&pool)
            .await
            .unwrap()
        {
            dump.push_str(&r.get::<String, _>("row"));
            dump.push('\n');
        }
    }
    pool.close().await;
    let mut bytes = std::fs::read(&path).unwrap();
    if let Ok(wal) = std::fs::read(format!("{}-wal", path.display())) {
        bytes.extend(wal);
    }
    let raw = String::from_utf8_lossy(&bytes);
    assert!(
        dump.contains("jnunez") && dump.contains("6789"),
        "the dump holds the data"
    );
    for secret in portal_core::testing::conformance::PLAIN_SECRETS {
        assert!(!dump.contains(secret), "{secret} in a table");
        assert!(!raw.contains(secret), "{secret} in the database file");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_payments_with_one_key_make_one_payment() {
    let (pool, _) = crate::pool().await;
    let store = Arc::new(SqliteStore::new(pool.clone()));
    let gateway = gateway();
    let sealer = Arc::new(AesGcmSealer::from_hex(&"5a".repeat(32)).unwrap());
    let portal = portal(store.clone(), gateway.clone(), sealer);
    let mut account = portal_core::testing::conformance::bare_account(9);
    account.member = None;
    let id = account.id;
    store.commit(Changes::account(account)).await.unwrap();
    assert_eq!(portal.bill_account(id).await.unwrap(), 1);
    let tasks: Vec<_> = (0..20)
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
                        idempotency_key: "same".into(),
                    })
                    .await
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for t in tasks {
        ids.insert(
            t.await
                .unwrap()
                .expect("every request answers")
                .payment()
                .id,
        );
    }
    assert_eq!(ids.len(), 1);
    let counts: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM payments), (SELECT count(*) FROM allocations)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(counts, (1, 1));
    assert_eq!(gateway.charges(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_runners_plan_once_and_work_each_account_once() {
    let (pool, _) = crate::pool().await;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
         INSERT INTO accounts (id, version, number, holder_first_name, holder_last_name, holder_search,
             date_of_birth, ssn_digest, ssn_last4, reminders, created_at)
         SELECT randomblob(16), 1, 'HC' || printf('%08d', i), 'Ana', 'Silva', 'ana silva', '1980-01-01',
             'd' || i, '0001', '{\"due_date_reminders\":true}', '2027-01-01T00:00:00+00:00' FROM n",
    )
    .execute(&pool)
    .await
    .unwrap();
    let store = Arc::new(SqliteStore::new(pool));
    let run = JobRun {
        job: "billing".into(),
        period: "2027-01-05".into(),
    };
    let runners: Vec<_> = (0..4)
        .map(|w| {
            let (store, run) = (store.clone(), run.clone());
            tokio::spawn(async move {
                let planned = store.plan_run(run.clone(), 8).await.unwrap();
                let mut mine = Vec::new();
                loop {
                    let now = Utc::now();
                    let batch = store
                        .claim(
                            run.clone(),
                            format!("r{w}"),
                            3,
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
    let mut planned = 0;
    for r in runners {
        let (p, mine) = r.await.unwrap();
        planned += p;
        all.extend(mine);
    }
    assert_eq!(planned, 250, "planned once, in chunks of eight");
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!((all.len(), distinct.len()), (2000, 2000));
}
