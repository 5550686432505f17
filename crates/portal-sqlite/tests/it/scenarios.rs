use chrono::{NaiveDate, Utc};
use portal_core::instrument::{CardBrand, CardExpiry, GatewayToken, MethodDetails};
use portal_core::notice::NoticeBody;
use portal_core::ports::{Changes, Outbox, SecretSealer, Store};
use portal_core::services::{Deps, MakePayment, PayWith, Portal, PortalConfig, RegistrationForm};
use portal_core::testing::{Behaviour, FakeGateway, FixedClock, TestHasher};
use portal_core::verifier::RecordMatchVerifier;
use portal_crypto::{AesGcmSealer, RandomIds};
use portal_sqlite::{SqliteStore, migrate};
use sqlx::Row;
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
