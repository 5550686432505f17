//! What the raw tables hold, and rules the database itself enforces.

use crate::support;
use chrono::NaiveDate;
use portal_core::Money;
use portal_core::account::{Account, Holder, NewAccount};
use portal_core::calendar::CoverageMonth;
use portal_core::enrollment::{CoverageKind, Enrollment};
use portal_core::identity::{AccountNumber, PersonName};
use portal_core::ids::{AccountId, EnrollmentId};
use portal_core::instrument::{CardBrand, CardExpiry, GatewayToken, MethodDetails};
use portal_core::notice::{NoticeBody, NoticeKind};
use portal_core::ports::{Changes, Outbox, SecretSealer, Store};
use portal_core::services::{Deps, MakePayment, PayWith, Portal, PortalConfig, RegistrationForm};
use portal_core::testing::{Behaviour, FakeGateway, FixedClock};
use portal_core::verifier::RecordMatchVerifier;
use portal_crypto::{AesGcmSealer, Argon2Hasher, RandomIds};
use portal_postgres::{PgStore, migrate};
use sqlx::Row;
use std::sync::Arc;

const SSN: &str = "123-45-6789";
const PASSWORD: &str = "correct horse battery staple";
const CARD: &str = "4242424242424242";

#[tokio::test]
async fn migrations_apply_to_an_empty_database_and_rerun_cleanly() {
    let Some(pool) = support::pool().await else {
        return;
    };
    migrate(&pool).await.expect("a second run changes nothing");
    migrate(&pool).await.expect("and a third");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        applied,
        i64::try_from(portal_postgres::MIGRATOR.iter().count()).unwrap()
    );
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name IN
         ('accounts', 'members', 'bills', 'payments', 'allocations', 'audit_log', 'outbox', 'work_items')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 8);
}

#[tokio::test]
async fn the_audit_log_cannot_be_changed_or_deleted() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let store = PgStore::new(pool.clone());
    let account = portal_core::testing::conformance::bare_account(1);
    let mut c = Changes::account(account.clone());
    c.audit.push(account.audit(
        chrono::Utc::now(),
        portal_core::audit::Actor::Member,
        "account",
        "created",
        "",
    ));
    store.commit(c).await.unwrap();
    for sql in [
        "UPDATE audit_log SET action = 'forged'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(store.audit_trail(account.id).await.unwrap().len(), 1);
}

fn seeded_account(sealer: &AesGcmSealer) -> Account {
    let enrollment = Enrollment::new(
        EnrollmentId(uuid::Uuid::now_v7()),
        CoverageKind::Health,
        "ConnectorCare 2A",
        Money::from_cents(50_000),
        Money::from_cents(30_000),
        CoverageMonth::new(2027, 1).unwrap(),
    )
    .unwrap();
    Account::open(
        AccountId(uuid::Uuid::now_v7()),
        NewAccount {
            number: AccountNumber::parse("HC5550001").unwrap(),
            holder: Holder {
                first_name: PersonName::parse("Ana").unwrap(),
                last_name: PersonName::parse("Silva").unwrap(),
                date_of_birth: NaiveDate::from_ymd_opt(1985, 3, 9).unwrap(),
                ssn_digest: sealer.lookup_digest("123456789"),
                ssn_last4: "6789".into(),
            },
            contact_email: None,
            enrollments: vec![enrollment],
        },
        chrono::Utc::now(),
    )
}

#[tokio::test]
async fn raw_tables_hold_no_plain_ssn_password_or_card_number() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let store = Arc::new(PgStore::new(pool.clone()));
    let sealer = Arc::new(AesGcmSealer::from_hex(&"5a".repeat(32)).unwrap());
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
    let clock = Arc::new(FixedClock::at(
        NaiveDate::from_ymd_opt(2026, 12, 2).unwrap(),
    ));
    let portal = Portal::new(
        Deps {
            store: store.clone(),
            gateway,
            clock,
            ids: Arc::new(RandomIds),
            sealer: sealer.clone(),
            hasher: Arc::new(Argon2Hasher::new()),
            identity: Arc::new(RecordMatchVerifier::new(store.clone(), sealer.clone())),
            work: store.clone(),
            agents: Arc::new(portal_core::testing::StaticAgents::default()),
        },
        PortalConfig::default(),
    );
    let account = seeded_account(&sealer);
    let id = account.id;
    store.commit(Changes::account(account)).await.unwrap();
    portal
        .register(&RegistrationForm {
            account_number: "HC5550001".into(),
            first_name: "Ana".into(),
            last_name: "Silva".into(),
            date_of_birth: "1985-03-09".into(),
            ssn: SSN.into(),
            email: "ana@example.com".into(),
            username: "asilva".into(),
            password: PASSWORD.into(),
            language: "en".into(),
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
    assert!(
        store
            .pending_messages(10)
            .await
            .unwrap()
            .iter()
            .any(|m| m.notice.kind == NoticeKind::PaymentConfirmation)
    );

    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(tables.len() >= 15, "{tables:?}");
    let mut dump = String::new();
    for t in &tables {
        let rows = sqlx::query(&format!("SELECT t::text AS row FROM {t} t"))
            .fetch_all(&pool)
            .await
            .unwrap();
        for r in rows {
            dump.push_str(&r.get::<String, _>("row"));
            dump.push('\n');
        }
    }
    assert!(
        dump.contains("6789") && dump.contains("asilva"),
        "the dump holds the data"
    );
    for secret in ["123456789", SSN, PASSWORD, CARD] {
        assert!(!dump.contains(secret), "{secret} found in a raw table");
    }
    // The sealed SSN opens with the key.
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT ssn_sealed FROM members")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        sealer
            .unseal(&portal_core::account::SealedSecret(sealed))
            .unwrap(),
        "123456789"
    );
}

/// The cache answers only for a version the database still holds: a copy serves the loads
/// after a commit through its store (a row changed behind the store's back, without a version
/// bump, is not seen: the copy answered), and a commit by another process is seen at once.
#[tokio::test]
async fn cached_accounts_answer_only_at_the_version_the_database_holds() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let cached =
        PgStore::new(pool.clone()).with_account_cache(portal_sql::cache::AccountCache::new(8));
    let other = PgStore::new(pool.clone());
    let account = portal_core::testing::conformance::full_account(7);
    let id = account.id;
    cached.commit(Changes::account(account)).await.unwrap();
    let loaded = cached.load_account(id).await.unwrap().unwrap();
    let mut changed = loaded.clone();
    changed.reminders.due_date_reminders = false;
    cached.commit(Changes::account(changed)).await.unwrap();
    let committed = other.load_account(id).await.unwrap().unwrap();
    assert!(!committed.reminders.due_date_reminders);
    // Behind the store's back, no version bump: a load the copy answers does not see it.
    sqlx::query(
        "UPDATE accounts SET reminders = jsonb_set(reminders, '{due_date_reminders}', 'true')
         WHERE id = $1",
    )
    .bind(id.uuid())
    .execute(&pool)
    .await
    .unwrap();
    let from_copy = cached.load_account(id).await.unwrap().unwrap();
    assert_eq!(from_copy, committed, "the copy answered");
    let behind = other.load_account(id).await.unwrap().unwrap();
    assert!(
        behind.reminders.due_date_reminders,
        "the database holds the change"
    );
    // Another process commits (bumping the version): the next load reads it.
    let mut theirs = other.load_account(id).await.unwrap().unwrap();
    theirs.reminders.due_date_reminders = false;
    other.commit(Changes::account(theirs)).await.unwrap();
    let seen = cached.load_account(id).await.unwrap().unwrap();
    assert!(!seen.reminders.due_date_reminders);
    assert_eq!(seen.version, committed.version + 1);
    assert_eq!(seen, other.load_account(id).await.unwrap().unwrap());
}

/// The backend a lane's next lease runs on.
async fn lane_backend(lane: &portal_sql::lane::Lane<sqlx::Postgres>) -> i32 {
    let mut lease = lane.lease().await.unwrap();
    let pid = sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
        .fetch_one(lease.conn().unwrap())
        .await;
    lease.settle(pid).unwrap()
}

/// A lane lends back a connection whose statement finished (no round trip on its return), and
/// closes one whose statement was cancelled: the next lease gets a fresh backend that answers.
#[tokio::test]
async fn a_lane_reuses_finished_connections_and_closes_cancelled_ones() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let lane = portal_sql::lane::Lane::of(&pool);
    let first = lane_backend(&lane).await;
    assert_eq!(
        lane_backend(&lane).await,
        first,
        "a finished lease's connection is lent again"
    );
    {
        let mut lease = lane.lease().await.unwrap();
        let slow = sqlx::query("SELECT pg_sleep(10)").execute(lease.conn().unwrap());
        let cancelled = tokio::time::timeout(std::time::Duration::from_millis(200), slow).await;
        assert!(cancelled.is_err(), "the statement was still running");
    }
    let next = lane_backend(&lane).await;
    assert_ne!(
        next, first,
        "the cancelled lease's connection was closed, not lent"
    );
}
