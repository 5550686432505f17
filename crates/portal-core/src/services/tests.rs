//! Stateful use-case tests over the in-memory fakes.

use super::*;
use crate::Money;
use crate::account::{Account, Holder, NewAccount, Principal};
use crate::audit::Actor;
use crate::billing::{BillKind, BillStatus};
use crate::calendar::CoverageMonth;
use crate::delinquency::CoverageStatus;
use crate::enrollment::{CoverageKind, Enrollment};
use crate::identity::{AccountNumber, Language, PersonName};
use crate::ids::{AccountId, AgentId, EnrollmentId};
use crate::instrument::{BankAccountType, CardBrand, CardExpiry, GatewayToken, MethodDetails};
use crate::mandate::{AmountRule, ConsentSource, Frequency, MandateStatus};
use crate::notice::{NoticeBody, NoticeKind};
use crate::payment::{
    DeclineReason, OfflineKind, PaymentEvent, PaymentStatus, PendingStage, ReturnCode,
};
use crate::ports::{Changes, GatewayEvent, SecretSealer, Store};
use crate::testing::{
    Behaviour, FakeGateway, FixedClock, InMemoryStore, SeqIds, TestHasher, TestSealer,
};
use crate::verifier::RecordMatchVerifier;
use chrono::{Duration, NaiveDate, Timelike};
use std::sync::Arc;
use uuid::Uuid;

fn d(y: i32, m: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, day).unwrap()
}

fn usd(s: &str) -> Money {
    Money::parse(s).unwrap()
}

const PASSWORD: &str = "correct horse battery staple";

struct Harness {
    portal: Portal,
    store: Arc<InMemoryStore>,
    clock: Arc<FixedClock>,
    gateway: Arc<FakeGateway>,
    account_id: AccountId,
    enrollment_id: EnrollmentId,
}

fn card(last4: &str) -> MethodDetails {
    MethodDetails::Card {
        brand: CardBrand::Visa,
        last4: last4.into(),
        expiry: CardExpiry {
            month: 12,
            year: 2031,
        },
    }
}

fn bank() -> MethodDetails {
    MethodDetails::BankAccount {
        bank_name: "Test Bank".into(),
        last4: "6789".into(),
        account_type: BankAccountType::Checking,
    }
}

impl Harness {
    /// A subsidised member (gross $500, subsidy $300, share $200) whose coverage starts in
    /// January 2027; today is 2026-12-01.
    async fn new() -> Harness {
        Self::with_config(PortalConfig::default()).await
    }

    async fn with_config(config: PortalConfig) -> Harness {
        let store = Arc::new(InMemoryStore::new());
        let clock = Arc::new(FixedClock::at(d(2026, 12, 1)));
        let gateway = Arc::new(FakeGateway::new());
        gateway.add("pm_card_ok", card("4242"), Behaviour::Succeed);
        gateway.add(
            "pm_card_declined",
            card("0002"),
            Behaviour::Decline(DeclineReason::CardDeclined),
        );
        gateway.add(
            "pm_card_nsf",
            card("9995"),
            Behaviour::Decline(DeclineReason::InsufficientFunds),
        );
        gateway.add(
            "pm_card_lost",
            card("1111"),
            Behaviour::LoseAnswerAfterCharging,
        );
        gateway.add("pm_bank_ok", bank(), Behaviour::Process(d(2026, 12, 5)));
        let sealer = Arc::new(TestSealer);
        let deps = Deps {
            store: store.clone(),
            gateway: gateway.clone(),
            clock: clock.clone(),
            ids: Arc::new(SeqIds::default()),
            sealer: sealer.clone(),
            hasher: Arc::new(TestHasher),
            identity: Arc::new(RecordMatchVerifier::new(store.clone(), sealer.clone())),
            work: store.clone(),
            agents: Arc::new(crate::testing::StaticAgents(vec![
                crate::ports::AgentRecord {
                    id: AgentId(Uuid::from_u128(77)),
                    username: "pat".into(),
                    name: "Pat Agent".into(),
                    password_hash: crate::account::PasswordHash(format!("test${}", {
                        use sha2::Digest as _;
                        sha2::Sha256::digest(b"support desk passphrase")
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<String>()
                    })),
                },
            ])),
        };
        let portal = Portal::new(deps, config);
        let enrollment_id = EnrollmentId(Uuid::from_u128(900_001));
        let account_id = AccountId(Uuid::from_u128(900_000));
        let enrollment = Enrollment::new(
            enrollment_id,
            CoverageKind::Health,
            "ConnectorCare Plan 2A",
            usd("500"),
            usd("300"),
            CoverageMonth::new(2027, 1).unwrap(),
        )
        .unwrap();
        let account = Account::open(
            account_id,
            NewAccount {
                number: AccountNumber::parse("HC1000001").unwrap(),
                holder: Holder {
                    first_name: PersonName::parse("María").unwrap(),
                    last_name: PersonName::parse("López").unwrap(),
                    date_of_birth: d(1980, 5, 17),
                    ssn_digest: sealer.lookup_digest("123456789"),
                    ssn_last4: "6789".into(),
                },
                contact_email: None,
                enrollments: vec![enrollment],
            },
            clock.now(),
        );
        store.commit(Changes::account(account)).await.unwrap();
        Harness {
            portal,
            store,
            clock,
            gateway,
            account_id,
            enrollment_id,
        }
    }

    fn form(&self) -> RegistrationForm {
        RegistrationForm {
            account_number: "HC1000001".into(),
            first_name: "maria".into(),
            last_name: "LOPEZ".into(),
            date_of_birth: "1980-05-17".into(),
            ssn: "123-45-6789".into(),
            email: "maria@example.com".into(),
            username: "mlopez".into(),
            password: PASSWORD.into(),
            language: "es".into(),
        }
    }

    fn last_notice(&self, kind: NoticeKind) -> Option<NoticeBody> {
        self.store
            .outbox()
            .into_iter()
            .rev()
            .find(|n| n.kind == kind)
            .map(|n| n.body)
    }

    fn count(&self, kind: NoticeKind) -> usize {
        self.store
            .outbox()
            .iter()
            .filter(|n| n.kind == kind)
            .count()
    }

    async fn register(&self) {
        self.portal.register(&self.form()).await.unwrap();
        let Some(NoticeBody::EmailVerification { code, .. }) =
            self.last_notice(NoticeKind::EmailVerification)
        else {
            panic!("no code sent")
        };
        self.portal
            .confirm_email(self.account_id, &code)
            .await
            .unwrap();
    }

    async fn account(&self) -> Account {
        self.portal.account(self.account_id).await.unwrap()
    }

    async fn set_date(&self, date: NaiveDate) {
        self.clock.set_date(date);
    }

    async fn pay(
        &self,
        key: &str,
        amount: Option<&str>,
        token: &str,
    ) -> Result<PaymentReceipt, ServiceError> {
        self.portal
            .make_payment(MakePayment {
                account_id: self.account_id,
                amount: amount.map(usd),
                method: PayWith::Token {
                    token: GatewayToken::parse(token).unwrap(),
                    save: false,
                },
                idempotency_key: key.into(),
            })
            .await
    }

    fn check_ledger(acc: &Account) {
        acc.ledger.check_invariants().unwrap();
    }
}

#[tokio::test]
async fn registration_verifies_identity_and_email_then_logs_in() {
    let h = Harness::new().await;
    let pending = h.portal.register(&h.form()).await.unwrap();
    assert_eq!(pending.email_masked, "m***@example.com");
    let Some(NoticeBody::EmailVerification { code, .. }) =
        h.last_notice(NoticeKind::EmailVerification)
    else {
        panic!()
    };
    // Not usable before the code is confirmed.
    assert!(matches!(
        h.portal.login("mlopez", PASSWORD).await,
        Err(ServiceError::EmailNotVerified { .. })
    ));
    let wrong = h
        .portal
        .confirm_email(h.account_id, "000000")
        .await
        .unwrap_err();
    assert!(
        matches!(wrong, ServiceError::Invalid(ref e) if e.has("code")),
        "{wrong:?}"
    );
    let grant = h.portal.confirm_email(h.account_id, &code).await.unwrap();
    assert_eq!(
        h.portal.authenticate(grant.token.expose()).await.unwrap(),
        Principal::Member {
            account_id: h.account_id
        }
    );
    assert_eq!(h.count(NoticeKind::AccountCreated), 1);
    let created = h
        .store
        .outbox()
        .into_iter()
        .find(|n| n.kind == NoticeKind::AccountCreated)
        .unwrap();
    assert_eq!(created.language, crate::identity::Language::Es);
    // The code works once.
    assert!(matches!(
        h.portal.confirm_email(h.account_id, &code).await,
        Err(ServiceError::InvalidToken)
    ));
    let LoginOutcome::LoggedIn(g2) = h.portal.login("MLOPEZ", PASSWORD).await.unwrap();
    assert_ne!(
        g2.token.expose(),
        grant.token.expose(),
        "a new session per login"
    );
    // Nothing secret in the stored account.
    let stored = format!("{:?}", h.account().await);
    assert!(
        !stored.contains("123456789")
            && !stored.contains("123-45-6789")
            && !stored.contains(PASSWORD)
    );
}

#[tokio::test]
async fn registration_reports_every_bad_field() {
    let h = Harness::new().await;
    let form = RegistrationForm {
        account_number: "x".into(),
        first_name: "".into(),
        last_name: "<b>".into(),
        date_of_birth: "2020-01-01".into(),
        ssn: "666-12-3456".into(),
        email: "nope".into(),
        username: "a".into(),
        password: "password".into(),
        language: "fr".into(),
    };
    let Err(ServiceError::Invalid(e)) = h.portal.register(&form).await else {
        panic!()
    };
    for f in [
        "account_number",
        "first_name",
        "last_name",
        "date_of_birth",
        "ssn",
        "email",
        "username",
        "password",
        "language",
    ] {
        assert!(e.has(f), "{f} missing from {e}");
    }
    assert!(h.store.outbox().is_empty(), "nothing written");
}

#[tokio::test]
async fn registration_refuses_mismatches_and_second_accounts() {
    let h = Harness::new().await;
    let mut wrong = h.form();
    wrong.ssn = "123-45-6780".into();
    assert!(matches!(
        h.portal.register(&wrong).await,
        Err(ServiceError::NoMatch)
    ));
    let mut wrong = h.form();
    wrong.date_of_birth = "1980-05-18".into();
    assert!(matches!(
        h.portal.register(&wrong).await,
        Err(ServiceError::NoMatch)
    ));
    h.register().await;
    let mut again = h.form();
    again.username = "other".into();
    again.email = "other@example.com".into();
    let Err(ServiceError::Invalid(e)) = h.portal.register(&again).await else {
        panic!()
    };
    assert!(e.has("ssn"));
}

#[tokio::test]
async fn repeated_bad_passwords_lock_known_and_unknown_usernames_alike() {
    let h = Harness::new().await;
    h.register().await;
    for _ in 0..4 {
        assert!(matches!(
            h.portal.login("mlopez", "wrong password!").await,
            Err(ServiceError::InvalidCredentials)
        ));
        assert!(matches!(
            h.portal.login("nobody", "wrong password!").await,
            Err(ServiceError::InvalidCredentials)
        ));
    }
    assert!(matches!(
        h.portal.login("mlopez", "wrong password!").await,
        Err(ServiceError::Locked { .. })
    ));
    assert!(matches!(
        h.portal.login("nobody", "wrong password!").await,
        Err(ServiceError::Locked { .. })
    ));
    assert!(
        matches!(
            h.portal.login("mlopez", PASSWORD).await,
            Err(ServiceError::Locked { .. })
        ),
        "even the right password"
    );
    h.clock.advance(Duration::minutes(16));
    assert!(h.portal.login("mlopez", PASSWORD).await.is_ok());
}

#[tokio::test]
async fn sessions_expire_when_idle_and_absolutely_and_end_at_logout() {
    let h = Harness::new().await;
    h.register().await;
    let LoginOutcome::LoggedIn(g) = h.portal.login("mlopez", PASSWORD).await.unwrap();
    let t = g.token.expose().to_owned();
    h.clock.advance(Duration::minutes(29));
    assert!(h.portal.authenticate(&t).await.is_ok());
    h.clock.advance(Duration::minutes(31));
    assert!(matches!(
        h.portal.authenticate(&t).await,
        Err(ServiceError::Unauthenticated)
    ));
    // Absolute: active every 20 minutes for 12 hours still ends.
    let LoginOutcome::LoggedIn(g) = h.portal.login("mlopez", PASSWORD).await.unwrap();
    let t = g.token.expose().to_owned();
    for _ in 0..36 {
        h.clock.advance(Duration::minutes(20));
        assert!(h.portal.authenticate(&t).await.is_ok());
    }
    h.clock.advance(Duration::minutes(20));
    assert!(matches!(
        h.portal.authenticate(&t).await,
        Err(ServiceError::Unauthenticated)
    ));
    let LoginOutcome::LoggedIn(g) = h.portal.login("mlopez", PASSWORD).await.unwrap();
    h.portal.logout(g.token.expose()).await.unwrap();
    assert!(matches!(
        h.portal.authenticate(g.token.expose()).await,
        Err(ServiceError::Unauthenticated)
    ));
}

#[tokio::test]
async fn password_reset_link_is_single_use_expires_and_ends_sessions() {
    let h = Harness::new().await;
    h.register().await;
    let LoginOutcome::LoggedIn(g) = h.portal.login("mlopez", PASSWORD).await.unwrap();
    // Unknown identifiers answer the same and send nothing.
    h.portal
        .request_password_reset("nobody@example.com")
        .await
        .unwrap();
    assert_eq!(h.count(NoticeKind::PasswordReset), 0);
    h.portal
        .request_password_reset("maria@example.com")
        .await
        .unwrap();
    let Some(NoticeBody::PasswordReset { token, .. }) = h.last_notice(NoticeKind::PasswordReset)
    else {
        panic!()
    };
    let Err(ServiceError::Invalid(e)) = h.portal.complete_password_reset(&token, "short").await
    else {
        panic!()
    };
    assert!(e.has("password"));
    h.portal
        .complete_password_reset(&token, "a brand new passphrase")
        .await
        .unwrap();
    assert!(matches!(
        h.portal.authenticate(g.token.expose()).await,
        Err(ServiceError::Unauthenticated)
    ));
    assert!(matches!(
        h.portal
            .complete_password_reset(&token, "another new passphrase")
            .await,
        Err(ServiceError::InvalidToken)
    ));
    assert!(
        h.portal
            .login("mlopez", "a brand new passphrase")
            .await
            .is_ok()
    );
    assert_eq!(h.count(NoticeKind::PasswordChanged), 1);
    h.portal.request_password_reset("mlopez").await.unwrap();
    let Some(NoticeBody::PasswordReset { token, .. }) = h.last_notice(NoticeKind::PasswordReset)
    else {
        panic!()
    };
    h.clock.advance(Duration::minutes(61));
    assert!(matches!(
        h.portal
            .complete_password_reset(&token, "yet another passphrase")
            .await,
        Err(ServiceError::InvalidToken)
    ));
}

#[tokio::test]
async fn billing_issues_the_binder_then_monthly_bills_once() {
    let h = Harness::new().await;
    h.register().await;
    // Dec 1: January's bill (due Dec 23, issued Dec 2) is not issued yet.
    assert_eq!(h.portal.bill_account(h.account_id).await.unwrap(), 0);
    h.set_date(d(2026, 12, 2)).await;
    assert_eq!(h.portal.bill_account(h.account_id).await.unwrap(), 1);
    assert_eq!(
        h.portal.bill_account(h.account_id).await.unwrap(),
        0,
        "rerun changes nothing"
    );
    let acc = h.account().await;
    let binder = &acc.ledger.bills[0];
    assert_eq!(
        (binder.kind, binder.amount, binder.due_date),
        (BillKind::Binder, usd("200"), d(2026, 12, 23))
    );
    let s = acc.summary(&h.portal.config().delinquency, d(2026, 12, 2));
    assert_eq!(
        s.enrollments[0].status,
        CoverageStatus::PendingBinder {
            due_date: d(2026, 12, 23),
            deadline: d(2026, 12, 23)
        }
    );
    assert_eq!(s.amount_due, usd("200"));
    assert_eq!(h.count(NoticeKind::BillIssued), 1);
    h.set_date(d(2027, 3, 5)).await;
    let report = h.portal.run_billing().await.unwrap();
    assert_eq!(report.summary.done, 3, "Feb, Mar and Apr");
    let months: Vec<String> = h
        .account()
        .await
        .ledger
        .bills
        .iter()
        .map(|b| b.coverage_month.to_string())
        .collect();
    assert_eq!(months, ["2027-01", "2027-02", "2027-03", "2027-04"]);
    // Billed late, February and March could not be due before they were issued.
    let due: Vec<String> = h
        .account()
        .await
        .ledger
        .bills
        .iter()
        .map(|b| b.due_date.to_string())
        .collect();
    assert_eq!(
        due,
        ["2026-12-23", "2027-03-05", "2027-03-05", "2027-03-23"]
    );
}

#[tokio::test]
async fn card_payment_allocates_and_retries_never_charge_twice() {
    let h = Harness::new().await;
    h.register().await;
    h.set_date(d(2026, 12, 2)).await;
    h.portal.bill_account(h.account_id).await.unwrap();
    let preview = h
        .portal
        .preview_payment(
            h.account_id,
            None,
            &PayWith::Token {
                token: GatewayToken::parse("pm_card_ok").unwrap(),
                save: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (preview.amount, preview.method.as_str(), preview.due_date),
        (usd("200"), "Visa •••• 4242", Some(d(2026, 12, 23)))
    );
    let r1 = h.pay("key-1", None, "pm_card_ok").await.unwrap();
    let p = r1.payment().clone();
    assert_eq!(p.status, PaymentStatus::Succeeded);
    assert_eq!(r1.amount_due_after, Money::ZERO);
    let r2 = h.pay("key-1", None, "pm_card_ok").await.unwrap();
    assert!(r2.replayed);
    assert_eq!(r2.payment().id, p.id);
    assert_eq!(h.gateway.charges(), 1);
    let conflict = h
        .pay("key-1", Some("5.00"), "pm_card_ok")
        .await
        .unwrap_err();
    assert!(matches!(conflict, ServiceError::Conflict(_)));
    let acc = h.account().await;
    Harness::check_ledger(&acc);
    assert_eq!(acc.ledger.bills[0].status(), BillStatus::Paid);
    let s = acc.summary(&h.portal.config().delinquency, d(2026, 12, 2));
    assert_eq!(s.enrollments[0].status, CoverageStatus::Active);
    assert_eq!(s.enrollments[0].paid_through, Some(d(2027, 1, 31)));
    let Some(NoticeBody::PaymentConfirmation { reference, .. }) =
        h.last_notice(NoticeKind::PaymentConfirmation)
    else {
        panic!()
    };
    assert_eq!(reference, p.reference.to_string());
    let (acc_id, found) = h.portal.payment_by_reference(&p.reference).await.unwrap();
    assert_eq!((acc_id, found.id), (h.account_id, p.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_one_key_make_one_payment() {
    let h = Harness::new().await;
    h.register().await;
    h.set_date(d(2026, 12, 2)).await;
    h.portal.bill_account(h.account_id).await.unwrap();
    h.store
        .set_load_latency(std::time::Duration::from_millis(5));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let portal = h.portal.clone();
            let account_id = h.account_id;
            tokio::spawn(async move {
                portal
                    .make_payment(MakePayment {
                        account_id,
                        amount: None,
                        method: PayWith::Token {
                            token: GatewayToken::parse("pm_card_ok").unwrap(),
                            save: false,
                        },
                        idempotency_key: "same-key".into(),
                    })
                    .await
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap().unwrap().payment().id);
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(h.account().await.ledger.payments.len(), 1);
    assert_eq!(h.gateway.charges(), 1);
}

#[tokio::test]
async fn a_declined_card_gives_its_reason_and_leaves_the_bill_open() {
    let h = Harness::new().await;
    h.register().await;
    h.set_date(d(2026, 12, 2)).await;
    h.portal.bill_account(h.account_id).await.unwrap();
    let r = h.pay("k-nsf", None, "pm_card_nsf").await.unwrap();
    assert_eq!(
        r.payment().status,
        PaymentStatus::Failed {
            reason: DeclineReason::InsufficientFunds
        }
    );
    assert_eq!(r.amount_due_after, usd("200"));
    let Some(NoticeBody::PaymentFailed { reason, .. }) = h.last_notice(NoticeKind::PaymentFailed)
    else {
        panic!()
    };
    assert!(reason.plain_language().contains("not enough funds"));
    Harness::check_ledger(&h.account().await);
}

#[tokio::test]
async fn bank_transfer_pending_then_settles_by_webhook_and_a_return_reopens_the_bill() {
    let h = Harness::new().await;
    h.register().await;
    h.set_date(d(2026, 12, 2)).await;
    h.portal.bill_account(h.account_id).await.unwrap();
    let r = h.pay("k-bank", None, "pm_bank_ok").await.unwrap();
    let p = r.payment().clone();
    assert_eq!(
        p.status,
        PaymentStatus::Pending {
            stage: PendingStage::Processing
        }
    );
    assert_eq!(p.expected_settlement, Some(d(2026, 12, 5)));
    let s = h
        .account()
        .await
        .summary(&h.portal.config().delinquency, d(2026, 12, 2));
    assert_eq!(s.pending_transfers.len(), 1);
    assert_eq!(
        s.pending_transfers[0].protects,
        vec![CoverageMonth::new(2027, 1).unwrap()]
    );
    assert_eq!(
        s.amount_due,
        Money::ZERO,
        "the transfer protects the bill it pays"
    );
    let Some(NoticeBody::PaymentConfirmation { settles_by, .. }) =
        h.last_notice(NoticeKind::PaymentConfirmation)
    else {
        panic!()
    };
    assert_eq!(settles_by, Some(d(2026, 12, 5)));
    let gid = p.gateway_id.clone().unwrap();
    let settle = GatewayEvent {
        event_id: "evt_1".into(),
        gateway_id: gid.clone(),
        payment_id: Some(p.id),
        event: PaymentEvent::Settled,
    };
    assert!(h.portal.record_gateway_event(settle.clone()).await.unwrap());
    assert!(
        !h.portal.record_gateway_event(settle).await.unwrap(),
        "a repeated webhook changes nothing"
    );
    let ret = GatewayEvent {
        event_id: "evt_2".into(),
        gateway_id: gid,
        payment_id: None,
        event: PaymentEvent::Returned {
            code: ReturnCode::R01,
        },
    };
    h.portal.record_gateway_event(ret).await.unwrap();
    let acc = h.account().await;
    Harness::check_ledger(&acc);
    assert_eq!(acc.ledger.bills[0].open_amount(), usd("200"));
    assert_eq!(h.count(NoticeKind::BankTransferReturned), 1);
    let unknown = GatewayEvent {
        event_id: "evt_3".into(),
        gateway_id: "pi_nope".into(),
        payment_id: None,
        event: PaymentEvent::Settled,
    };
    assert!(matches!(
        h.portal.record_gateway_event(unknown).await,
        Err(ServiceError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_lost_gateway_answer_stays_pending_and_reconciles_without_a_second_charge() {
    let h = Harness::new().await;
    h.register().await;
    h.set_date(d(2026, 12, 2)).await;
    h.portal.bill_account(h.account_id).await.unwrap();
    let r = h.pay("k-lost", None, "pm_card_lost").await.unwrap();
    let p = r.payment().clone();
    assert_eq!(
        p.status,
        PaymentStatus::Pending {
            stage: PendingStage::Submitted
        },
        "unknown is neither failed nor succeeded"
    );
    assert_eq!(
        h.portal.run_reconciliation().await.unwrap().summary.done,
        0,
        "too early to reconcile"
    );
    h.clock.advance(Duration::minutes(11));
    h.portal.run_reconciliation().await.unwrap();
    let acc = h.account().await;
    assert_eq!(
        acc.ledger.payment(p.id).unwrap().status,
        PaymentStatus::Succeeded
    );
    assert_eq!(h.gateway.charges(), 1);
    Harness::check_ledger(&acc);
}

#[tokio::test]
async fn guest_pay_matches_name_and_birth_date_only() {
    let h = Harness::new().await;
    h.set_date(d(2026, 12, 2)).await;
    h.portal.bill_account(h.account_id).await.unwrap();
    let form = GuestPayForm {
        account_number: "hc-1000001".into(),
        first_name: "MARIA".into(),
        last_name: "lópez".into(),
        date_of_birth: "1980-05-17".into(),
    };
    let m = h.portal.guest_match(&form).await.unwrap();
    assert_eq!(m.amount_due, usd("200"));
    let bad = GuestPayForm {
        date_of_birth: "1980-05-18".into(),
        ..form.clone()
    };
    assert!(matches!(
        h.portal.guest_match(&bad).await,
        Err(ServiceError::NoMatch)
    ));
    let nobody = GuestPayForm {
        account_number: "HC9999999".into(),
        ..form.clone()
    };
    assert!(matches!(
        h.portal.guest_match(&nobody).await,
        Err(ServiceError::NoMatch)
    ));
    let r = h
        .portal
        .guest_pay(
            &form,
            None,
            GatewayToken::parse("pm_card_ok").unwrap(),
            "guest-1",
        )
        .await
        .unwrap();
    assert_eq!(r.payment().status, PaymentStatus::Succeeded);
    assert_eq!(r.amount_due_after, Money::ZERO);
}

#[tokio::test]
async fn offline_payments_allocate_and_only_overpayments_are_refunded() {
    let h = Harness::new().await;
    h.register().await;
    h.set_date(d(2026, 12, 2)).await;
    h.portal.bill_account(h.account_id).await.unwrap();
    let agent = AgentId(Uuid::from_u128(7));
    let form = OfflinePaymentForm {
        amount: usd("250"),
        kind: OfflineKind::Check,
        document_number: Some("1042".into()),
        received_on: d(2026, 12, 1),
        idempotency_key: "chk-1042".into(),
    };
    let r = h
        .portal
        .record_offline_payment(agent, h.account_id, form.clone())
        .await
        .unwrap();
    let p = r.payment().clone();
    assert_eq!(p.status, PaymentStatus::Succeeded);
    assert_eq!(p.initiated_on, d(2026, 12, 1));
    assert_eq!(
        h.portal
            .record_offline_payment(agent, h.account_id, form)
            .await
            .unwrap()
            .payment()
            .id,
        p.id
    );
    let acc = h.account().await;
    assert_eq!(acc.ledger.credit(), usd("50"));
    let too_much = h
        .portal
        .refund(agent, h.account_id, p.id, usd("50.01"))
        .await
        .unwrap_err();
    assert!(matches!(too_much, ServiceError::Invalid(ref e) if e.has("amount")));
    h.portal
        .refund(agent, h.account_id, p.id, usd("50"))
        .await
        .unwrap();
    let acc = h.account().await;
    Harness::check_ledger(&acc);
    assert_eq!(acc.ledger.credit(), Money::ZERO);
    assert_eq!(
        acc.ledger.payment(p.id).unwrap().status,
        PaymentStatus::Refunded { full: false }
    );
    let trail = h.portal.timeline(h.account_id).await.unwrap();
    assert!(trail.iter().any(
        |t| t.event.action == "payment.refunded" && t.event.actor == Actor::Agent { id: agent }
    ));
}

async fn autopay_harness() -> (Harness, crate::mandate::Mandate) {
    let h = Harness::new().await;
    h.register().await;
    h.set_date(d(2026, 12, 2)).await;
    h.portal.bill_account(h.account_id).await.unwrap();
    let method = h
        .portal
        .add_payment_method(h.account_id, GatewayToken::parse("pm_card_ok").unwrap())
        .await
        .unwrap();
    let form = AutopayForm {
        method_id: method.id,
        amount_rule: AmountRule::AmountDue,
        cap: None,
        frequency: Frequency::Monthly,
        start_date: d(2026, 12, 20),
    };
    let preview = h
        .portal
        .preview_autopay(h.account_id, &form, None)
        .await
        .unwrap();
    assert_eq!(preview.estimated_amount, usd("200"));
    let bad = h
        .portal
        .set_up_autopay(h.account_id, &form, "I agree", ConsentSource::Web)
        .await
        .unwrap_err();
    assert!(matches!(bad, ServiceError::Invalid(ref e) if e.has("authorization")));
    let m = h
        .portal
        .set_up_autopay(
            h.account_id,
            &form,
            &preview.authorization_text,
            ConsentSource::Web,
        )
        .await
        .unwrap();
    assert_eq!(m.consent.text, preview.authorization_text);
    (h, m)
}

#[tokio::test]
async fn autopay_authorization_is_shown_and_accepted_in_spanish() {
    let h = Harness::new().await;
    h.register().await;
    h.set_date(d(2026, 12, 2)).await;
    let method = h
        .portal
        .add_payment_method(h.account_id, GatewayToken::parse("pm_card_ok").unwrap())
        .await
        .unwrap();
    let form = AutopayForm {
        method_id: method.id,
        amount_rule: AmountRule::Fixed { amount: usd("150") },
        cap: None,
        frequency: Frequency::Quarterly,
        start_date: d(2026, 12, 20),
    };
    let es = h
        .portal
        .preview_autopay(h.account_id, &form, Some(Language::Es))
        .await
        .unwrap();
    assert!(
        es.authorization_text
            .starts_with("Autorizo a Health Connector a debitar $150.00"),
        "{}",
        es.authorization_text
    );
    assert!(
        es.authorization_text
            .contains("cada tres meses, a partir del 20 de diciembre de 2026")
    );
    let en = h
        .portal
        .preview_autopay(h.account_id, &form, Some(Language::En))
        .await
        .unwrap();
    assert!(
        en.authorization_text
            .contains("every three months, starting December 20, 2026")
    );
    // The Spanish text of other terms is not an authorization of these.
    let other = AutopayForm {
        frequency: Frequency::Monthly,
        ..form.clone()
    };
    let other_es = h
        .portal
        .preview_autopay(h.account_id, &other, Some(Language::Es))
        .await
        .unwrap();
    let refused = h
        .portal
        .set_up_autopay(
            h.account_id,
            &form,
            &other_es.authorization_text,
            ConsentSource::Web,
        )
        .await
        .unwrap_err();
    assert!(matches!(refused, ServiceError::Invalid(ref e) if e.has("authorization")));
    // The Spanish text accepted is the consent kept with the mandate.
    let m = h
        .portal
        .set_up_autopay(
            h.account_id,
            &form,
            &es.authorization_text,
            ConsentSource::Web,
        )
        .await
        .unwrap();
    assert_eq!(m.consent.text, es.authorization_text);
}

#[tokio::test]
async fn autopay_notifies_then_debits_exactly_once_per_period() {
    let (h, _m) = autopay_harness().await;
    let mut day = d(2026, 12, 2);
    while day <= d(2027, 2, 28) {
        h.set_date(day).await;
        h.portal.run_billing().await.unwrap();
        h.portal.run_autopay().await.unwrap();
        h.portal.run_autopay().await.unwrap();
        day = day.succ_opt().unwrap();
    }
    let acc = h.account().await;
    Harness::check_ledger(&acc);
    let debits: Vec<_> = acc
        .ledger
        .payments
        .iter()
        .filter(|p| matches!(p.channel, crate::payment::PaymentChannel::Autopay { .. }))
        .collect();
    assert_eq!(debits.len(), 3, "Dec 20, Jan 20, Feb 20");
    assert_eq!(h.gateway.charges(), 3);
    assert_eq!(debits[0].initiated_on, d(2026, 12, 20));
    assert_eq!(h.count(NoticeKind::AutopayPreDebit), 3);
    let notice = h
        .store
        .outbox()
        .into_iter()
        .find(|n| n.kind == NoticeKind::AutopayPreDebit)
        .unwrap();
    let NoticeBody::AutopayPreDebit {
        debit_date, amount, ..
    } = notice.body
    else {
        panic!()
    };
    assert_eq!((debit_date, amount), (d(2026, 12, 20), usd("200")));
    // Bills due before each next debit were paid in time.
    assert!(
        acc.ledger
            .bills
            .iter()
            .filter(|b| b.due_date < d(2027, 2, 20))
            .all(|b| b.open_amount().is_zero())
    );
    assert_eq!(
        h.count(NoticeKind::DueDateReminder),
        0,
        "autopay members get pre-debit notices instead"
    );
}

#[tokio::test]
async fn two_failed_debits_in_a_row_suspend_autopay() {
    let (h, m) = autopay_harness().await;
    h.gateway.set_behaviour(
        "pm_card_ok",
        Behaviour::Decline(DeclineReason::InsufficientFunds),
    );
    for day in [
        d(2026, 12, 17),
        d(2026, 12, 20),
        d(2026, 12, 21),
        d(2026, 12, 23),
        d(2026, 12, 24),
    ] {
        h.set_date(day).await;
        h.portal.run_autopay().await.unwrap();
    }
    let acc = h.account().await;
    assert_eq!(acc.mandate(m.id).unwrap().status, MandateStatus::Suspended);
    assert_eq!(h.count(NoticeKind::AutopayFailed), 2);
    let Some(NoticeBody::AutopayFailed { suspended, .. }) =
        h.last_notice(NoticeKind::AutopayFailed)
    else {
        panic!()
    };
    assert!(suspended);
    let failed = acc
        .ledger
        .payments
        .iter()
        .filter(|p| matches!(p.status, PaymentStatus::Failed { .. }))
        .count();
    assert_eq!(failed, 2, "first try and one retry, no more");
}

#[tokio::test]
async fn autopay_pause_and_cancel() {
    let (h, m) = autopay_harness().await;
    h.portal
        .set_autopay_status(
            h.account_id,
            m.id,
            MandateStatus::Paused {
                until: Some(d(2026, 12, 31)),
            },
        )
        .await
        .unwrap();
    for day in [d(2026, 12, 17), d(2026, 12, 20)] {
        h.set_date(day).await;
        h.portal.run_autopay().await.unwrap();
    }
    assert_eq!(h.gateway.charges(), 0);
    h.portal
        .set_autopay_status(h.account_id, m.id, MandateStatus::Cancelled)
        .await
        .unwrap();
    assert!(
        h.portal
            .set_autopay_status(h.account_id, m.id, MandateStatus::Active)
            .await
            .is_err()
    );
}

/// The worker's daily pass, which loads each chunk once and runs every job on each account,
/// ends where the separate job runs end: the same notices, bills and payments.
#[tokio::test]
async fn the_daily_pass_does_what_the_separate_jobs_do() {
    async fn live(daily: bool) -> (Vec<(NoticeKind, String)>, Vec<String>) {
        let h = Harness::new().await;
        h.register().await;
        h.set_date(d(2026, 12, 2)).await;
        if daily {
            h.portal.run_daily().await.unwrap();
        } else {
            h.portal.run_billing().await.unwrap();
        }
        h.pay("binder", None, "pm_card_ok").await.unwrap();
        let mut day = d(2026, 12, 3);
        while day <= d(2027, 5, 10) {
            h.set_date(day).await;
            if daily {
                h.portal.run_daily().await.unwrap();
                // A second pass the same day finds the date done.
                assert_eq!(
                    h.portal.run_daily().await.unwrap().summary,
                    JobSummary::default()
                );
            } else {
                h.portal.run_billing().await.unwrap();
                h.portal.run_reminders().await.unwrap();
                h.portal.run_autopay().await.unwrap();
                h.portal.run_delinquency().await.unwrap();
                h.portal.run_reconciliation().await.unwrap();
            }
            day = day.succ_opt().unwrap();
        }
        let acc = h.account().await;
        Harness::check_ledger(&acc);
        let notices = h
            .store
            .outbox()
            .into_iter()
            .map(|n| (n.kind, n.dedupe_key))
            .collect();
        let bills = acc
            .ledger
            .bills
            .iter()
            .map(|b| {
                format!(
                    "{:?} {} {} due {} void {} paid {}",
                    b.kind, b.coverage_month, b.amount, b.due_date, b.void, b.allocated
                )
            })
            .collect();
        (notices, bills)
    }
    let separate = live(false).await;
    let daily = live(true).await;
    assert!(separate.0.len() > 8, "{:?}", separate.0);
    assert_eq!(daily, separate);
}

#[tokio::test]
async fn missed_payments_run_through_grace_to_termination_then_reinstatement() {
    let h = Harness::new().await;
    h.register().await;
    h.set_date(d(2026, 12, 2)).await;
    h.portal.run_billing().await.unwrap();
    h.pay("binder", None, "pm_card_ok").await.unwrap();
    // Pay January (binder), then nothing: February's bill (due Jan 23) is missed.
    let mut day = d(2026, 12, 3);
    let mut statuses = Vec::new();
    while day <= d(2027, 5, 10) {
        h.set_date(day).await;
        h.portal.run_billing().await.unwrap();
        h.portal.run_reminders().await.unwrap();
        h.portal.run_delinquency().await.unwrap();
        let s = h
            .account()
            .await
            .summary(&h.portal.config().delinquency, day);
        statuses.push((day, s.enrollments[0].status));
        day = day.succ_opt().unwrap();
    }
    let status_on = |date: NaiveDate| statuses.iter().find(|(d0, _)| *d0 == date).unwrap().1;
    assert_eq!(status_on(d(2027, 1, 23)), CoverageStatus::Active);
    let CoverageStatus::InGrace { grace } = status_on(d(2027, 1, 24)) else {
        panic!("{:?}", status_on(d(2027, 1, 24)))
    };
    assert_eq!(grace.grace_months, 3, "subsidised with January paid");
    assert_eq!(grace.grace_ends_on, d(2027, 4, 30));
    assert_eq!(grace.termination_effective, d(2027, 2, 28));
    let CoverageStatus::Terminated {
        effective,
        reinstatable_until,
    } = status_on(d(2027, 5, 1))
    else {
        panic!()
    };
    assert_eq!(
        (effective, reinstatable_until),
        (d(2027, 2, 28), d(2027, 6, 5))
    );
    assert_eq!(
        h.count(NoticeKind::DueDateReminder),
        2 * 4,
        "7 and 2 days before Feb-May bills"
    );
    for k in [
        NoticeKind::PastDue,
        NoticeKind::TerminationWarning,
        NoticeKind::SecondTerminationWarning,
        NoticeKind::CoverageTerminated,
    ] {
        assert_eq!(h.count(k), 1, "{k:?}");
    }
    let acc = h.account().await;
    Harness::check_ledger(&acc);
    assert!(
        acc.ledger
            .bills
            .iter()
            .filter(|b| b.coverage_month > CoverageMonth::new(2027, 2).unwrap())
            .all(|b| b.void)
    );
    // Reinstate: pay the past-due balance plus next month.
    let quote = h
        .portal
        .reinstatement_quote(h.account_id, h.enrollment_id)
        .await
        .unwrap();
    assert_eq!(quote.required, usd("1000"), "Feb-May owed plus June");
    assert!(matches!(
        h.portal
            .reinstate(h.account_id, h.enrollment_id, Actor::Member)
            .await,
        Err(ServiceError::Rejected(_))
    ));
    // The payment itself restores coverage, in its own commit: no daily run, no second call.
    h.pay("reinstate", Some("1000"), "pm_card_ok")
        .await
        .unwrap();
    assert!(matches!(
        h.portal
            .reinstate(h.account_id, h.enrollment_id, Actor::Member)
            .await,
        Err(ServiceError::Rejected(ref why)) if why.contains("not terminated")
    ));
    let acc = h.account().await;
    Harness::check_ledger(&acc);
    let s = acc.summary(&h.portal.config().delinquency, d(2027, 5, 10));
    assert_eq!(s.enrollments[0].status, CoverageStatus::Active);
    assert_eq!(s.enrollments[0].paid_through, Some(d(2027, 6, 30)));
    assert_eq!(h.count(NoticeKind::CoverageReinstated), 1);
}

#[tokio::test]
async fn unsubsidised_members_get_one_month_and_the_threshold_counts_near_payments() {
    let h = Harness::new().await;
    h.portal
        .change_subsidy(
            h.account_id,
            h.enrollment_id,
            Money::ZERO,
            CoverageMonth::new(2027, 1).unwrap(),
        )
        .await
        .unwrap();
    h.register().await;
    h.set_date(d(2026, 12, 2)).await;
    h.portal.run_billing().await.unwrap();
    assert_eq!(h.account().await.ledger.bills[0].amount, usd("500"));
    // $491 of $500: short by $9, within the $10 threshold.
    h.pay("almost", Some("491"), "pm_card_ok").await.unwrap();
    h.set_date(d(2026, 12, 24)).await;
    let s = h
        .account()
        .await
        .summary(&h.portal.config().delinquency, d(2026, 12, 24));
    assert_eq!(s.enrollments[0].status, CoverageStatus::Active);
    assert_eq!(s.amount_due, usd("9"), "the shortfall stays owed");
    h.set_date(d(2027, 1, 5)).await;
    h.portal.run_billing().await.unwrap();
    h.set_date(d(2027, 1, 24)).await;
    let s = h
        .account()
        .await
        .summary(&h.portal.config().delinquency, d(2027, 1, 24));
    let CoverageStatus::InGrace { grace } = s.enrollments[0].status else {
        panic!()
    };
    assert_eq!(grace.grace_months, 1);
    assert_eq!(grace.grace_ends_on, d(2027, 2, 28));
    assert_eq!(grace.termination_effective, d(2027, 1, 31));
}

#[tokio::test]
async fn a_payment_plan_spreads_the_past_due_balance_and_ends_when_missed() {
    let h = Harness::new().await;
    h.register().await;
    h.set_date(d(2026, 12, 2)).await;
    h.portal.run_billing().await.unwrap();
    h.pay("binder", None, "pm_card_ok").await.unwrap();
    h.set_date(d(2027, 1, 5)).await;
    h.portal.run_billing().await.unwrap();
    h.set_date(d(2027, 2, 2)).await;
    h.portal.run_billing().await.unwrap();
    h.set_date(d(2027, 2, 24)).await;
    h.portal.run_billing().await.unwrap();
    h.portal.run_delinquency().await.unwrap();
    let before = h.account().await.ledger.balance();
    assert_eq!(before, usd("400"), "February and March");
    let bad = h
        .portal
        .set_up_payment_plan(h.account_id, 13, None, Actor::Member)
        .await
        .unwrap_err();
    assert!(matches!(bad, ServiceError::Invalid(ref e) if e.has("installments")));
    let plan = h
        .portal
        .set_up_payment_plan(h.account_id, 3, Some(d(2027, 2, 28)), Actor::Member)
        .await
        .unwrap();
    assert_eq!(plan.total, usd("400"));
    let acc = h.account().await;
    Harness::check_ledger(&acc);
    assert_eq!(
        acc.ledger.balance(),
        before,
        "a plan moves the balance, never changes it"
    );
    let amounts: Vec<Money> = plan
        .installments
        .iter()
        .map(|id| acc.ledger.bill(*id).unwrap().amount)
        .collect();
    assert_eq!(amounts, vec![usd("133.34"), usd("133.33"), usd("133.33")]);
    assert_eq!(h.count(NoticeKind::PaymentPlanSetUp), 1);
    let s = acc.summary(&h.portal.config().delinquency, d(2027, 2, 24));
    assert!(
        matches!(s.enrollments[0].status, CoverageStatus::InGrace { grace } if grace.grace_ends_on == d(2027, 4, 30)),
        "a plan neither cures nor extends the grace period: {:?}",
        s.enrollments[0].status
    );
    h.set_date(d(2027, 3, 1)).await;
    h.portal.run_delinquency().await.unwrap();
    let acc = h.account().await;
    assert!(matches!(
        acc.plans[0].status,
        crate::plan::PlanStatus::Defaulted { .. }
    ));
    assert!(
        plan.installments
            .iter()
            .all(|id| acc.ledger.bill(*id).unwrap().due_date == d(2027, 2, 28)),
        "the rest falls due at once"
    );
}

#[tokio::test]
async fn a_subsidy_change_reprices_unpaid_bills_and_renotifies_autopay() {
    let (h, m) = autopay_harness().await;
    h.set_date(d(2026, 12, 17)).await;
    h.portal.run_autopay().await.unwrap();
    assert_eq!(h.count(NoticeKind::AutopayPreDebit), 1);
    h.portal
        .change_subsidy(
            h.account_id,
            h.enrollment_id,
            usd("250"),
            CoverageMonth::new(2027, 1).unwrap(),
        )
        .await
        .unwrap();
    let acc = h.account().await;
    Harness::check_ledger(&acc);
    assert_eq!(acc.ledger.bills[0].amount, usd("250"));
    assert_eq!(h.count(NoticeKind::BillRepriced), 1);
    assert_eq!(
        acc.mandate(m.id).unwrap().last_notice,
        None,
        "the new amount is announced before it is debited"
    );
    h.set_date(d(2026, 12, 18)).await;
    h.portal.run_autopay().await.unwrap();
    let Some(NoticeBody::AutopayPreDebit { amount, .. }) =
        h.last_notice(NoticeKind::AutopayPreDebit)
    else {
        panic!()
    };
    assert_eq!(amount, usd("250"));
    h.set_date(d(2026, 12, 20)).await;
    h.portal.run_autopay().await.unwrap();
    assert_eq!(
        h.gateway.charges(),
        0,
        "three days after the new notice, not before"
    );
    h.set_date(d(2026, 12, 21)).await;
    h.portal.run_autopay().await.unwrap();
    assert_eq!(h.gateway.charges(), 1);
    assert_eq!(h.gateway.net_collected(), usd("250"));
}

#[tokio::test]
async fn support_finds_members_and_resends_receipts() {
    let h = Harness::new().await;
    h.register().await;
    h.set_date(d(2026, 12, 2)).await;
    h.portal.bill_account(h.account_id).await.unwrap();
    let p = h
        .pay("k", None, "pm_card_ok")
        .await
        .unwrap()
        .payment()
        .clone();
    assert_eq!(
        h.portal.find_accounts("López").await.unwrap(),
        vec![h.account_id]
    );
    assert_eq!(
        h.portal.find_accounts("maria@example").await.unwrap(),
        vec![h.account_id]
    );
    assert_eq!(
        h.portal
            .find_accounts(&p.reference.to_string())
            .await
            .unwrap(),
        vec![h.account_id]
    );
    assert!(h.portal.find_accounts("x").await.is_err());
    h.portal
        .resend_receipt(AgentId(Uuid::from_u128(1)), h.account_id, p.id)
        .await
        .unwrap();
    assert_eq!(h.count(NoticeKind::PaymentConfirmation), 2);
}

#[tokio::test]
async fn another_members_payment_is_not_found() {
    let h = Harness::new().await;
    h.register().await;
    h.set_date(d(2026, 12, 2)).await;
    h.portal.bill_account(h.account_id).await.unwrap();
    let p = h
        .pay("k", None, "pm_card_ok")
        .await
        .unwrap()
        .payment()
        .clone();
    let stranger = AccountId(Uuid::from_u128(5));
    assert!(matches!(
        h.portal.payment(stranger, p.id).await,
        Err(ServiceError::NotFound(_))
    ));
    assert!(matches!(
        Portal::member_account(&Principal::Agent {
            agent_id: AgentId(Uuid::nil())
        }),
        Err(ServiceError::NotFound(_))
    ));
}

impl Harness {
    async fn add_dental(&self) -> EnrollmentId {
        let id = EnrollmentId(Uuid::from_u128(900_002));
        let mut acc = self.account().await;
        acc.enrollments.push(
            Enrollment::new(
                id,
                CoverageKind::Dental,
                "Dental Basic",
                usd("40"),
                Money::ZERO,
                CoverageMonth::new(2027, 1).unwrap(),
            )
            .unwrap(),
        );
        self.store.commit(Changes::account(acc)).await.unwrap();
        id
    }
}

#[tokio::test]
async fn health_and_dental_are_billed_separately_and_paid_oldest_first() {
    let h = Harness::new().await;
    let dental = h.add_dental().await;
    h.register().await;
    h.set_date(d(2027, 1, 5)).await;
    h.portal.run_billing().await.unwrap();
    let acc = h.account().await;
    let per = |e: EnrollmentId| {
        acc.bills_of(e)
            .iter()
            .map(|b| (b.coverage_month.to_string(), b.kind, b.amount))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        per(h.enrollment_id),
        vec![
            ("2027-01".into(), BillKind::Binder, usd("200")),
            ("2027-02".into(), BillKind::Premium, usd("200"))
        ]
    );
    assert_eq!(
        per(dental),
        vec![
            ("2027-01".into(), BillKind::Binder, usd("40")),
            ("2027-02".into(), BillKind::Premium, usd("40"))
        ]
    );
    // $260 pays both January bills first, then $20 of February's.
    h.pay("k", Some("260"), "pm_card_ok").await.unwrap();
    let acc = h.account().await;
    Harness::check_ledger(&acc);
    let jan: Vec<_> = acc
        .ledger
        .bills
        .iter()
        .filter(|b| b.coverage_month == CoverageMonth::new(2027, 1).unwrap())
        .collect();
    assert!(jan.iter().all(|b| b.status() == BillStatus::Paid));
    assert_eq!(acc.amount_due(), usd("220"));
    let s = acc.summary(&h.portal.config().delinquency, d(2027, 1, 5));
    assert_eq!(s.enrollments.len(), 2);
    assert!(
        s.enrollments
            .iter()
            .all(|e| e.status == CoverageStatus::Active)
    );
}

#[tokio::test]
async fn a_late_fee_is_assessed_once_per_late_bill_when_the_policy_is_on() {
    let config = PortalConfig {
        delinquency: crate::delinquency::DelinquencyPolicy {
            late_fee: crate::delinquency::LateFeePolicy::Fixed { amount: usd("5") },
            ..Default::default()
        },
        ..PortalConfig::default()
    };
    let h = Harness::with_config(config).await;
    h.register().await;
    h.set_date(d(2026, 12, 2)).await;
    h.portal.run_billing().await.unwrap();
    h.pay("binder", None, "pm_card_ok").await.unwrap();
    h.set_date(d(2027, 1, 5)).await;
    h.portal.run_billing().await.unwrap();
    h.set_date(d(2027, 1, 24)).await;
    for _ in 0..3 {
        h.portal.run_delinquency().await.unwrap();
    }
    let acc = h.account().await;
    Harness::check_ledger(&acc);
    let fees: Vec<_> = acc
        .ledger
        .bills
        .iter()
        .filter(|b| matches!(b.kind, BillKind::LateFee { .. }))
        .collect();
    assert_eq!(fees.len(), 1);
    assert_eq!(fees[0].amount, usd("5"));
    assert_eq!(acc.amount_due(), usd("205"));
    // With the default policy there are none.
    let plain = Harness::new().await;
    plain.register().await;
    plain.set_date(d(2027, 1, 5)).await;
    plain.portal.run_billing().await.unwrap();
    plain.set_date(d(2027, 1, 24)).await;
    plain.portal.run_billing().await.unwrap();
    plain.portal.run_delinquency().await.unwrap();
    assert!(
        !plain
            .account()
            .await
            .ledger
            .bills
            .iter()
            .any(|b| matches!(b.kind, BillKind::LateFee { .. }))
    );
}

#[tokio::test]
async fn quarterly_autopay_covers_the_quarter_through_credit() {
    let h = Harness::new().await;
    h.register().await;
    h.set_date(d(2026, 12, 2)).await;
    h.portal.run_billing().await.unwrap();
    let method = h
        .portal
        .add_payment_method(h.account_id, GatewayToken::parse("pm_card_ok").unwrap())
        .await
        .unwrap();
    let form = AutopayForm {
        method_id: method.id,
        amount_rule: AmountRule::AmountDue,
        cap: None,
        frequency: Frequency::Quarterly,
        start_date: d(2026, 12, 20),
    };
    let preview = h
        .portal
        .preview_autopay(h.account_id, &form, None)
        .await
        .unwrap();
    // January (billed) plus February and March, whose bills come due before the next debit (Mar 20).
    assert_eq!(preview.estimated_amount, usd("600"));
    h.portal
        .set_up_autopay(
            h.account_id,
            &form,
            &preview.authorization_text,
            ConsentSource::Web,
        )
        .await
        .unwrap();
    let mut day = d(2026, 12, 2);
    while day <= d(2027, 3, 10) {
        h.set_date(day).await;
        h.portal.run_billing().await.unwrap();
        h.portal.run_autopay().await.unwrap();
        h.portal.run_delinquency().await.unwrap();
        day = day.succ_opt().unwrap();
    }
    let acc = h.account().await;
    Harness::check_ledger(&acc);
    assert_eq!(h.gateway.charges(), 1, "one debit for the quarter");
    assert_eq!(h.gateway.net_collected(), usd("600"));
    assert!(
        acc.ledger
            .bills
            .iter()
            .filter(|b| b.coverage_month <= CoverageMonth::new(2027, 3).unwrap())
            .all(|b| b.open_amount().is_zero())
    );
    assert_eq!(h.count(NoticeKind::PastDue), 0);
}

mod with_mocks {
    use super::*;
    use crate::ports::{ChargeOutcome, ChargeStatus, GatewayError, MockPaymentGateway};

    #[tokio::test]
    async fn an_unknown_outcome_is_retried_with_the_same_gateway_key() {
        let h = Harness::new().await;
        h.register().await;
        h.set_date(d(2026, 12, 2)).await;
        h.portal.bill_account(h.account_id).await.unwrap();
        let mut mock = MockPaymentGateway::new();
        mock.expect_describe_method()
            .returning(|_| Ok(card("4242")));
        let mut seq = mockall::Sequence::new();
        let keys = Arc::new(std::sync::Mutex::new(Vec::new()));
        let k1 = keys.clone();
        mock.expect_charge()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |r| {
                k1.lock().unwrap().push(r.idempotency_key);
                Err(GatewayError::Unknown("timeout".into()))
            });
        let k2 = keys.clone();
        mock.expect_charge()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |r| {
                k2.lock().unwrap().push(r.idempotency_key);
                Ok(ChargeOutcome {
                    gateway_id: "pi_9".into(),
                    status: ChargeStatus::Succeeded,
                })
            });
        let mut deps = h.portal.deps().clone();
        deps.gateway = Arc::new(mock);
        let portal = Portal::new(deps, PortalConfig::default());
        let saved = portal
            .add_payment_method(h.account_id, GatewayToken::parse("pm_mock").unwrap())
            .await
            .unwrap();
        let cmd = MakePayment {
            account_id: h.account_id,
            amount: None,
            method: PayWith::Saved(saved.id),
            idempotency_key: "retry-me".into(),
        };
        let first = portal.make_payment(cmd.clone()).await.unwrap();
        assert_eq!(
            first.payment().status,
            PaymentStatus::Pending {
                stage: PendingStage::Submitted
            }
        );
        let second = portal.make_payment(cmd).await.unwrap();
        assert_eq!(second.payment().status, PaymentStatus::Succeeded);
        let keys = keys.lock().unwrap().clone();
        assert_eq!(keys.len(), 2);
        assert_eq!(
            keys[0], keys[1],
            "the retry reuses the gateway key, so it cannot charge twice"
        );
    }
}

#[tokio::test]
async fn members_change_language_and_reminders() {
    let h = Harness::new().await;
    h.register().await;
    h.portal
        .update_preferences(
            h.account_id,
            Some(crate::identity::Language::En),
            Some(false),
        )
        .await
        .unwrap();
    let acc = h.account().await;
    assert_eq!(acc.member.unwrap().language, crate::identity::Language::En);
    assert!(!acc.reminders.due_date_reminders);
    h.set_date(d(2026, 12, 16)).await;
    h.portal.run_billing().await.unwrap();
    h.portal.run_reminders().await.unwrap();
    assert_eq!(h.count(NoticeKind::DueDateReminder), 0, "reminders are off");
}

#[tokio::test]
async fn agents_log_in_separately_and_are_locked_like_members() {
    let h = Harness::new().await;
    let grant = h
        .portal
        .agent_login("PAT", "support desk passphrase")
        .await
        .unwrap();
    assert_eq!(
        h.portal.authenticate(grant.token.expose()).await.unwrap(),
        Principal::Agent {
            agent_id: AgentId(Uuid::from_u128(77))
        }
    );
    assert!(matches!(
        Portal::member_account(&Principal::Agent {
            agent_id: AgentId(Uuid::from_u128(77))
        }),
        Err(ServiceError::NotFound(_))
    ));
    for _ in 0..4 {
        assert!(matches!(
            h.portal.agent_login("pat", "wrong").await,
            Err(ServiceError::InvalidCredentials)
        ));
    }
    assert!(matches!(
        h.portal.agent_login("pat", "wrong").await,
        Err(ServiceError::Locked { .. })
    ));
    assert!(matches!(
        h.portal.agent_login("nobody", "x").await,
        Err(ServiceError::InvalidCredentials)
    ));
    // A member with the same name is a different login.
    assert!(matches!(
        h.portal.login("pat", "support desk passphrase").await,
        Err(ServiceError::InvalidCredentials)
    ));
}

// --- Coverage rules (spec §3): one named test per case a scenario review reproduced. ---

impl Harness {
    /// Every daily job for each day from `from` to `to`, as the worker runs them.
    async fn walk(&self, from: NaiveDate, to: NaiveDate) {
        let mut day = from;
        while day <= to {
            self.set_date(day).await;
            self.portal.run_daily().await.unwrap();
            day = day.succ_opt().unwrap();
        }
    }

    async fn status(&self) -> crate::account::EnrollmentSummary {
        let today = self.clock.today();
        self.account()
            .await
            .summary(&self.portal.config().delinquency, today)
            .enrollments
            .remove(0)
    }

    async fn unsubsidised(&self) {
        self.portal
            .change_subsidy(
                self.account_id,
                self.enrollment_id,
                Money::ZERO,
                CoverageMonth::new(2027, 1).unwrap(),
            )
            .await
            .unwrap();
    }

    /// Pays each of January, February and March on its due date, then nothing: April's bill
    /// (due March 23) is the first missed.
    async fn pay_three_months_then_stop(&self) {
        self.walk(d(2026, 12, 2), d(2026, 12, 23)).await;
        self.pay("jan", None, "pm_card_ok").await.unwrap();
        self.walk(d(2026, 12, 24), d(2027, 1, 23)).await;
        self.pay("feb", None, "pm_card_ok").await.unwrap();
        self.walk(d(2027, 1, 24), d(2027, 2, 23)).await;
        self.pay("mar", None, "pm_card_ok").await.unwrap();
    }

    fn audit_actions(&self) -> Vec<String> {
        self.store.audit().into_iter().map(|a| a.action).collect()
    }
}

#[tokio::test]
async fn case_01_an_unpaid_binder_cancels_the_enrollment_and_nothing_is_owed() {
    let h = Harness::new().await;
    h.register().await;
    h.walk(d(2026, 12, 2), d(2027, 7, 31)).await;
    let s = h.status().await;
    assert_eq!(
        s.status,
        CoverageStatus::Cancelled {
            deadline: d(2026, 12, 23)
        }
    );
    let acc = h.account().await;
    Harness::check_ledger(&acc);
    assert_eq!(acc.ledger.bills.len(), 1, "no bills after the cancellation");
    assert!(acc.ledger.bills.iter().all(|b| b.void));
    assert_eq!(acc.amount_due(), Money::ZERO);
    assert_eq!(s.paid_through, None);
    for k in [
        NoticeKind::PastDue,
        NoticeKind::TerminationWarning,
        NoticeKind::SecondTerminationWarning,
        NoticeKind::CoverageTerminated,
    ] {
        assert_eq!(h.count(k), 0, "{k:?}");
    }
    assert_eq!(h.count(NoticeKind::CoverageCancelled), 1);
    assert!(h.audit_actions().contains(&"coverage.cancelled".to_owned()));
    // Paying in July does not start coverage back in January: it is credit.
    h.pay("late", Some("200"), "pm_card_ok").await.unwrap();
    h.walk(d(2027, 8, 1), d(2027, 8, 2)).await;
    let s = h.status().await;
    assert!(matches!(s.status, CoverageStatus::Cancelled { .. }));
    assert_eq!(h.account().await.ledger.credit(), usd("200"));
}

#[tokio::test]
async fn case_02_an_eight_dollar_share_left_unpaid_is_past_due_and_terminates() {
    let h = Harness::new().await;
    h.portal
        .change_subsidy(
            h.account_id,
            h.enrollment_id,
            usd("492"),
            CoverageMonth::new(2027, 1).unwrap(),
        )
        .await
        .unwrap();
    h.register().await;
    h.walk(d(2026, 12, 2), d(2026, 12, 3)).await;
    h.pay("binder", None, "pm_card_ok").await.unwrap();
    assert_eq!(h.account().await.ledger.bills[0].amount, usd("8"));
    h.walk(d(2026, 12, 4), d(2027, 1, 24)).await;
    let CoverageStatus::InGrace { grace } = h.status().await.status else {
        panic!("{:?}", h.status().await.status)
    };
    assert_eq!(grace.grace_ends_on, d(2027, 4, 30));
    h.walk(d(2027, 1, 25), d(2027, 5, 1)).await;
    assert_eq!(
        h.status().await.status,
        CoverageStatus::Terminated {
            effective: d(2027, 2, 28),
            reinstatable_until: d(2027, 6, 5)
        }
    );
}

#[tokio::test]
async fn case_03_a_steady_ninety_five_percent_payer_stays_active() {
    let h = Harness::new().await;
    h.register().await;
    h.walk(d(2026, 12, 2), d(2026, 12, 23)).await;
    h.pay("m0", Some("190"), "pm_card_ok").await.unwrap();
    let dues = [
        d(2027, 1, 23),
        d(2027, 2, 23),
        d(2027, 3, 23),
        d(2027, 4, 23),
        d(2027, 5, 23),
    ];
    let mut from = d(2026, 12, 24);
    for (i, due) in dues.iter().enumerate() {
        h.walk(from, *due).await;
        h.pay(&format!("m{}", i + 1), Some("190"), "pm_card_ok")
            .await
            .unwrap();
        from = due.succ_opt().unwrap();
    }
    h.walk(from, d(2027, 6, 10)).await;
    let s = h.status().await;
    assert_eq!(s.status, CoverageStatus::Active);
    assert_eq!(h.count(NoticeKind::PastDue), 0);
    assert_eq!(s.past_due, usd("60"), "six months short by $10 each, shown");
    assert_eq!(s.paid_through, Some(d(2027, 6, 30)));
}

#[tokio::test]
async fn case_04_losing_aptc_mid_grace_keeps_the_grace_that_started() {
    let h = Harness::new().await;
    h.register().await;
    h.pay_three_months_then_stop().await;
    h.walk(d(2027, 2, 24), d(2027, 5, 10)).await;
    let CoverageStatus::InGrace { grace } = h.status().await.status else {
        panic!()
    };
    assert_eq!(grace.kind, crate::delinquency::GraceKind::Aptc);
    assert_eq!(grace.grace_ends_on, d(2027, 6, 30));
    h.portal
        .change_subsidy(
            h.account_id,
            h.enrollment_id,
            Money::ZERO,
            CoverageMonth::new(2027, 6).unwrap(),
        )
        .await
        .unwrap();
    h.walk(d(2027, 5, 11), d(2027, 6, 30)).await;
    let CoverageStatus::InGrace { grace: same } = h.status().await.status else {
        panic!("{:?}", h.status().await.status)
    };
    assert_eq!(
        same, grace,
        "a subsidy change never shortens a running grace"
    );
    h.walk(d(2027, 7, 1), d(2027, 7, 1)).await;
    let s = h.status().await;
    assert!(matches!(
        s.status,
        CoverageStatus::Terminated { effective, .. } if effective == d(2027, 4, 30)
    ));
    assert_eq!(
        s.voided.first(),
        Some(&CoverageMonth::new(2027, 5).unwrap())
    );
}

#[tokio::test]
async fn case_05_a_payment_plan_does_not_extend_the_aptc_grace() {
    let h = Harness::new().await;
    h.register().await;
    h.pay_three_months_then_stop().await;
    h.walk(d(2027, 2, 24), d(2027, 6, 30)).await;
    h.portal
        .set_up_payment_plan(h.account_id, 3, Some(d(2027, 6, 30)), Actor::Member)
        .await
        .unwrap();
    h.walk(d(2027, 7, 1), d(2027, 7, 1)).await;
    let s = h.status().await;
    assert!(
        matches!(s.status, CoverageStatus::Terminated { effective, .. } if effective == d(2027, 4, 30)),
        "{:?}",
        s.status
    );
    let acc = h.account().await;
    Harness::check_ledger(&acc);
    let in_plan = Money::sum(
        acc.ledger
            .bills
            .iter()
            .filter(|b| matches!(b.kind, BillKind::Installment { .. }))
            .map(|b| b.open_amount()),
    )
    .unwrap();
    assert_eq!(in_plan, usd("200"), "only April, the covered grace month");
}

#[tokio::test]
async fn case_06_a_plan_never_covers_an_unpaid_binder() {
    let config = PortalConfig {
        delinquency: crate::delinquency::DelinquencyPolicy {
            binder_grace_days: 10,
            ..Default::default()
        },
        ..PortalConfig::default()
    };
    let h = Harness::with_config(config).await;
    h.register().await;
    h.walk(d(2026, 12, 2), d(2026, 12, 26)).await;
    let err = h
        .portal
        .set_up_payment_plan(h.account_id, 3, None, Actor::Member)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ServiceError::Invalid(ref e) if e.has("installments")),
        "{err:?}"
    );
    let s = h.status().await;
    assert!(
        matches!(s.status, CoverageStatus::PendingBinder { deadline, .. } if deadline == d(2027, 1, 2))
    );
    assert_eq!(s.paid_through, None);
    assert!(h.account().await.plans.is_empty());
}

#[tokio::test]
async fn case_07_a_plan_never_turns_a_voided_month_into_debt() {
    let h = Harness::new().await;
    h.unsubsidised().await;
    h.register().await;
    h.pay_three_months_then_stop().await;
    h.walk(d(2027, 2, 24), d(2027, 4, 1)).await;
    h.portal
        .set_up_payment_plan(h.account_id, 2, Some(d(2027, 4, 15)), Actor::Member)
        .await
        .unwrap();
    h.walk(d(2027, 4, 2), d(2027, 5, 1)).await;
    let s = h.status().await;
    assert!(
        matches!(s.status, CoverageStatus::Terminated { effective, .. } if effective == d(2027, 3, 31)),
        "{:?}",
        s.status
    );
    let acc = h.account().await;
    Harness::check_ledger(&acc);
    assert_eq!(
        acc.amount_due(),
        Money::ZERO,
        "April and May are voided, not owed"
    );
}

#[tokio::test]
async fn case_08_a_check_received_inside_the_grace_and_recorded_later_reverses_the_termination() {
    let h = Harness::new().await;
    h.unsubsidised().await;
    h.register().await;
    h.pay_three_months_then_stop().await;
    h.walk(d(2027, 2, 24), d(2027, 5, 3)).await;
    assert!(matches!(
        h.status().await.status,
        CoverageStatus::Terminated { .. }
    ));
    h.portal
        .record_offline_payment(
            AgentId(Uuid::from_u128(77)),
            h.account_id,
            OfflinePaymentForm {
                amount: usd("1000"),
                kind: OfflineKind::Check,
                document_number: Some("1042".into()),
                received_on: d(2027, 4, 28),
                idempotency_key: "check-1042".into(),
            },
        )
        .await
        .unwrap();
    let s = h.status().await;
    assert_eq!(
        s.status,
        CoverageStatus::Active,
        "on time by its received date"
    );
    h.walk(d(2027, 5, 4), d(2027, 5, 4)).await;
    let acc = h.account().await;
    Harness::check_ledger(&acc);
    assert!(matches!(
        acc.enrollments[0].coverage.state,
        crate::coverage::CoverageState::Active
    ));
    assert!(acc.ledger.bills.iter().all(|b| !b.void));
    assert_eq!(acc.amount_due(), usd("500"), "June, not yet due");
    assert!(
        h.audit_actions()
            .contains(&"coverage.termination_reversed".to_owned())
    );
}

#[tokio::test]
async fn case_09_health_and_dental_get_their_own_notices_amounts_and_installments() {
    let h = Harness::new().await;
    let mut acc = h.account().await;
    let dental_id = EnrollmentId(Uuid::from_u128(900_002));
    acc.enrollments.push(
        Enrollment::new(
            dental_id,
            CoverageKind::Dental,
            "Dental Basic",
            usd("40"),
            Money::ZERO,
            CoverageMonth::new(2027, 1).unwrap(),
        )
        .unwrap(),
    );
    h.store.commit(Changes::account(acc)).await.unwrap();
    h.register().await;
    h.walk(d(2026, 12, 2), d(2026, 12, 3)).await;
    h.pay("binders", Some("240"), "pm_card_ok").await.unwrap();
    h.walk(d(2026, 12, 4), d(2027, 1, 24)).await;
    let notices: Vec<NoticeBody> = h
        .store
        .outbox()
        .into_iter()
        .filter(|n| n.kind == NoticeKind::PastDue)
        .map(|n| n.body)
        .collect();
    assert_eq!(notices.len(), 2, "{notices:?}");
    assert!(notices.contains(&NoticeBody::PastDue {
        plan_name: "ConnectorCare Plan 2A".into(),
        amount: usd("200"),
        due_date: d(2027, 1, 23),
        grace_ends_on: d(2027, 4, 30),
    }));
    assert!(notices.contains(&NoticeBody::PastDue {
        plan_name: "Dental Basic".into(),
        amount: usd("40"),
        due_date: d(2027, 1, 23),
        grace_ends_on: d(2027, 2, 28),
    }));
    let plan = h
        .portal
        .set_up_payment_plan(h.account_id, 2, None, Actor::Member)
        .await
        .unwrap();
    let acc = h.account().await;
    let dental_installments = Money::sum(
        plan.installments
            .iter()
            .filter_map(|id| acc.ledger.bill(*id))
            .filter(|b| b.enrollment_id == dental_id)
            .map(|b| b.amount),
    )
    .unwrap();
    assert_eq!(dental_installments, usd("40"));
    assert_eq!(plan.total, usd("240"));
}

#[tokio::test]
async fn case_10_no_late_fee_on_a_binder_and_fees_stay_out_of_plans() {
    let config = || PortalConfig {
        delinquency: crate::delinquency::DelinquencyPolicy {
            late_fee: crate::delinquency::LateFeePolicy::Fixed { amount: usd("5") },
            binder_grace_days: 5,
            ..Default::default()
        },
        ..PortalConfig::default()
    };
    let h = Harness::with_config(config()).await;
    h.register().await;
    h.walk(d(2026, 12, 2), d(2027, 1, 10)).await;
    let fees = |a: &Account| {
        a.ledger
            .bills
            .iter()
            .filter(|b| matches!(b.kind, BillKind::LateFee { .. }))
            .count()
    };
    assert_eq!(fees(&h.account().await), 0, "never on a binder");
    assert!(matches!(
        h.status().await.status,
        CoverageStatus::Cancelled { .. }
    ));
    // An effectuated enrollment that misses February gets one fee, and a plan leaves it out.
    let h = Harness::with_config(config()).await;
    h.register().await;
    h.walk(d(2026, 12, 2), d(2026, 12, 3)).await;
    h.pay("binder", None, "pm_card_ok").await.unwrap();
    h.walk(d(2026, 12, 4), d(2027, 1, 25)).await;
    assert_eq!(fees(&h.account().await), 1);
    let plan = h
        .portal
        .set_up_payment_plan(h.account_id, 2, None, Actor::Member)
        .await
        .unwrap();
    assert_eq!(plan.total, usd("200"), "the fee is not moved into the plan");
}

/// Cases for the reference-model properties: 256 in CI, more with `PROPTEST_CASES` for a
/// longer search.
fn model_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
        .max(256)
}

/// A small, independent model of the coverage rules of spec §3 for one enrollment billed from
/// January 2027 (due the 23rd of the month before): plain sums over plain dates, sharing no
/// code with `coverage`. Payments made on a day count from the next day's run on.
mod reference {
    use chrono::{Datelike, NaiveDate};

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Status {
        PendingBinder,
        Active,
        InGrace {
            ends: NaiveDate,
            effective: NaiveDate,
        },
        Terminated {
            effective: NaiveDate,
        },
        Cancelled,
    }

    pub struct Model {
        pub share_cents: i64,
        pub subsidised: bool,
        pub payments: Vec<(NaiveDate, i64)>,
        pub status: Status,
    }

    fn ymd(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    /// (year, month) of coverage month number `i` (0 = January 2027).
    fn month(i: i32) -> (i32, u32) {
        let total = 2027 * 12 + i;
        (total.div_euclid(12), (total.rem_euclid(12) + 1) as u32)
    }

    fn last_day(y: i32, m: u32) -> NaiveDate {
        let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        ymd(ny, nm, 1).pred_opt().unwrap()
    }

    fn due(i: i32) -> NaiveDate {
        let (y, m) = month(i - 1);
        ymd(y, m, 23)
    }

    fn paid_before(self_: &Model, day: NaiveDate) -> i64 {
        self_
            .payments
            .iter()
            .filter(|(d, _)| *d < day)
            .map(|(_, c)| c)
            .sum()
    }

    /// Cents owed on bills due on or before `day`, month by month.
    fn months_due(share: i64, day: NaiveDate) -> Vec<i64> {
        (0..24)
            .take_while(|i| due(*i) <= day)
            .map(|_| share)
            .collect()
    }

    /// Paid at least 95% of `owed`.
    fn enough(paid: i64, owed: i64) -> bool {
        paid * 100 >= owed * 95
    }

    impl Model {
        /// The status after the daily run of `day`.
        pub fn run(&mut self, day: NaiveDate) -> Status {
            let yesterday = day.pred_opt().unwrap();
            let paid = paid_before(self, day);
            // A payment made yesterday cured yesterday's grace if it paid what was due before.
            if let Status::InGrace { ends, .. } = self.status {
                let before = yesterday.pred_opt().unwrap();
                if yesterday <= ends
                    && enough(paid, months_due(self.share_cents, before).iter().sum())
                {
                    self.status = Status::Active;
                }
            }
            self.status = match self.status {
                Status::PendingBinder => {
                    if enough(paid, self.share_cents) {
                        Status::Active
                    } else if day > due(0) {
                        Status::Cancelled
                    } else {
                        Status::PendingBinder
                    }
                }
                s => s,
            };
            if self.status == Status::Active {
                let owed = months_due(self.share_cents, yesterday);
                if !enough(paid, owed.iter().sum()) {
                    let mut cum = 0;
                    let first = owed
                        .iter()
                        .position(|c| {
                            cum += c;
                            !enough(paid, cum)
                        })
                        .unwrap() as i32;
                    let (y, m) = month(first);
                    let long = self.subsidised && first > 0 && month(first - 1).0 == y;
                    let (ends, effective) = if long {
                        let (ey, em) = month(first + 2);
                        (last_day(ey, em), last_day(y, m))
                    } else {
                        let (py, pm) = month(first - 1);
                        (last_day(y, m), last_day(py, pm))
                    };
                    self.status = Status::InGrace { ends, effective };
                }
            }
            if let Status::InGrace { ends, effective } = self.status {
                if day > ends {
                    let paid_by_end = paid_before(self, ends.succ_opt().unwrap());
                    let owed: i64 = months_due(self.share_cents, ends).iter().sum();
                    self.status = if enough(paid_by_end, owed) {
                        Status::Active
                    } else {
                        Status::Terminated { effective }
                    };
                } else if enough(paid, months_due(self.share_cents, yesterday).iter().sum()) {
                    self.status = Status::Active;
                }
            }
            // A month boundary the model cares about only through dates.
            let _ = day.day();
            self.status
        }
    }
}

fn as_reference(s: &CoverageStatus) -> Option<reference::Status> {
    Some(match s {
        CoverageStatus::PendingBinder { .. } => reference::Status::PendingBinder,
        CoverageStatus::Active => reference::Status::Active,
        CoverageStatus::InGrace { grace } => reference::Status::InGrace {
            ends: grace.grace_ends_on,
            effective: grace.termination_effective,
        },
        CoverageStatus::Terminated { effective, .. } => reference::Status::Terminated {
            effective: *effective,
        },
        CoverageStatus::Cancelled { .. } => reference::Status::Cancelled,
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: model_cases(), ..Default::default() })]
    /// Random payment histories through the portal's daily jobs and through the reference
    /// model agree on the status, the grace end and the termination date every day.
    #[test]
    fn coverage_agrees_with_the_reference_model(
        subsidised in proptest::bool::ANY,
        payments in proptest::collection::vec((0u32..150, 1i64..=5), 0..8),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let h = Harness::new().await;
            if !subsidised {
                h.unsubsidised().await;
            }
            h.register().await;
            let share: i64 = if subsidised { 20_000 } else { 50_000 };
            let start = d(2026, 12, 2);
            // Amounts are fractions of a month: 95%, a full month, two months, half, a quarter.
            let part = |k: i64| match k {
                1 => share * 95 / 100,
                2 => share,
                3 => share * 2,
                4 => share / 2,
                _ => share / 4,
            };
            let mut plan: Vec<(NaiveDate, i64)> = payments
                .iter()
                .map(|(offset, k)| (start + Duration::days(i64::from(*offset)), part(*k)))
                .collect();
            plan.sort();
            let mut model = reference::Model {
                share_cents: share,
                subsidised,
                payments: Vec::new(),
                status: reference::Status::PendingBinder,
            };
            let mut day = start;
            let mut n = 0;
            while day <= d(2027, 5, 1) {
                h.set_date(day).await;
                h.portal.run_daily().await.unwrap();
                let expected = model.run(day);
                let got = h.status().await.status;
                assert_eq!(as_reference(&got), Some(expected), "on {day}: {got:?} vs model {expected:?}; payments {plan:?}");
                if matches!(expected, reference::Status::Terminated { .. } | reference::Status::Cancelled) {
                    break;
                }
                for (_, cents) in plan.iter().filter(|(on, _)| *on == day) {
                    n += 1;
                    h.pay(&format!("p{n}"), Some(&Money::from_cents(*cents).to_string()), "pm_card_ok")
                        .await
                        .unwrap();
                    model.payments.push((day, *cents));
                }
                day = day.succ_opt().unwrap();
            }
        });
    }
}

/// A small, independent model of a household's coverage: each enrollment's bills as plain
/// cents per month, payments as plain (recorded, counts-from, cents, returned) rows, and the
/// rules of spec §3 as plain sums over dates. It shares no code with `coverage` or the
/// ledger. Late fees and payment plans are left out on purpose: neither may change whether a
/// household has coverage (the property only lets plans into single-enrollment households,
/// where a plan moves money between bills of one enrollment and nothing else).
mod household_reference {
    use chrono::{Datelike, Duration, NaiveDate};

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Status {
        PendingBinder,
        Active,
        InGrace {
            ends: NaiveDate,
            effective: NaiveDate,
        },
        Terminated {
            effective: NaiveDate,
        },
        Cancelled,
    }

    pub struct Paid {
        pub recorded: NaiveDate,
        pub counts_from: NaiveDate,
        pub cents: i64,
        /// When its return was recorded: from then on it counts for nothing.
        pub returned: Option<NaiveDate>,
    }

    pub struct Enrollment {
        /// Each month's bill as priced now; months not billed yet hold what they will be.
        pub amounts: Vec<i64>,
        /// The monthly premium before subsidy.
        pub gross: i64,
        /// Whether the enrollment had a subsidy to begin with.
        pub subsidised: bool,
        /// The first month without subsidy, once it is lost.
        pub lost_from: Option<i32>,
        pub status: Status,
        /// The day after the first unpaid month's due date, while in grace.
        pub past_due_since: Option<NaiveDate>,
        /// The last grace period's end (a check received by it reverses its termination).
        pub grace_ends: Option<NaiveDate>,
        pub reinstatable_until: Option<NaiveDate>,
        pub terminated_on: Option<NaiveDate>,
        /// When a cancellation or termination stopped billing, and when a reversal or
        /// reinstatement restarted it: bills whose issue day fell between are issued on
        /// restarting, after that day's other bills.
        pub closed: Vec<(NaiveDate, Option<NaiveDate>)>,
    }

    impl Enrollment {
        pub fn new(share: i64, gross: i64) -> Enrollment {
            Enrollment {
                amounts: vec![share; MONTHS],
                gross,
                subsidised: share < gross,
                lost_from: None,
                status: Status::PendingBinder,
                past_due_since: None,
                grace_ends: None,
                reinstatable_until: None,
                terminated_on: None,
                closed: Vec::new(),
            }
        }

        fn subsidised_in(&self, i: i32) -> bool {
            self.subsidised && self.lost_from.is_none_or(|m| i < m)
        }
    }

    pub struct Model {
        pub enrollments: Vec<Enrollment>,
        pub payments: Vec<Paid>,
    }

    const MONTHS: usize = 24;
    const REINSTATEMENT_DAYS: i64 = 35;

    fn ymd(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn far() -> NaiveDate {
        ymd(2100, 1, 1)
    }

    /// (year, month) of coverage month `i` (0 = January 2027).
    fn month(i: i32) -> (i32, u32) {
        let total = 2027 * 12 + i;
        (total.div_euclid(12), (total.rem_euclid(12) + 1) as u32)
    }

    /// The coverage month index of a date.
    pub fn index(x: NaiveDate) -> i32 {
        (x.year() - 2027) * 12 + x.month0() as i32
    }

    fn last_day(y: i32, m: u32) -> NaiveDate {
        let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        ymd(ny, nm, 1).pred_opt().unwrap()
    }

    fn due(i: i32) -> NaiveDate {
        let (y, m) = month(i - 1);
        ymd(y, m, 23)
    }

    fn issued(i: i32) -> NaiveDate {
        due(i) - Duration::days(21)
    }

    /// (payments recorded by this day, bills issued by this day).
    pub type Known = (NaiveDate, NaiveDate);

    fn enough(paid: i64, owed: i64) -> bool {
        paid * 100 >= owed * 95
    }

    impl Model {
        /// Whether enrollment `k` has a bill for month `i` by `by`: when it is due, when it
        /// was issued, and whether late (on a restart, after that day's other bills, and due
        /// no earlier than that day).
        fn bill(&self, k: usize, i: i32, by: NaiveDate) -> Option<(NaiveDate, NaiveDate, bool)> {
            if issued(i) > by {
                return None;
            }
            for (c, r) in &self.enrollments[k].closed {
                if issued(i) > *c {
                    match r {
                        None => return None,
                        Some(r) if issued(i) <= *r => {
                            return (*r <= by).then_some((due(i).max(*r), *r, true));
                        }
                        Some(_) => {}
                    }
                }
            }
            Some((due(i), issued(i), false))
        }

        fn due_of(&self, k: usize, i: i32, by: NaiveDate) -> Option<NaiveDate> {
            self.bill(k, i, by).map(|b| b.0)
        }

        fn void(&self, k: usize, i: i32, revive: Option<usize>) -> bool {
            if revive == Some(k) {
                return false;
            }
            match self.enrollments[k].status {
                Status::Cancelled => true,
                Status::Terminated { effective } => {
                    let (y, m) = month(i);
                    ymd(y, m, 1) > effective
                }
                _ => false,
            }
        }

        /// The money known by `known.0` that counts from `as_of` or earlier; `then`: as it
        /// stood on `as_of` (a return known now takes the money away from its day on, not
        /// before), else as it stands now (a returned payment never paid anything).
        fn money_by(&self, known: Known, as_of: NaiveDate, then: bool) -> i64 {
            let cut = if then { known.0.min(as_of) } else { known.0 };
            self.payments
                .iter()
                .filter(|p| p.recorded <= known.0 && p.counts_from <= as_of)
                .filter(|p| p.returned.is_none_or(|r| r > cut))
                .map(|p| p.cents)
                .sum()
        }

        /// What reaches each enrollment's bills, month by month, from the money recorded by
        /// `known.0` that counts from `as_of` or earlier, over the bills issued by `known.1`
        /// (void ones take nothing, unless `revive` names their enrollment).
        fn filled(&self, known: Known, as_of: NaiveDate, revive: Option<usize>) -> Vec<Vec<i64>> {
            self.filled_by(known, as_of, revive, false)
        }

        fn filled_by(
            &self,
            known: Known,
            as_of: NaiveDate,
            revive: Option<usize>,
            then: bool,
        ) -> Vec<Vec<i64>> {
            let mut money = self.money_by(known, as_of, then);
            let mut out = vec![vec![0; MONTHS]; self.enrollments.len()];
            // Allocation order: due date, coverage month, then the order bills were issued in.
            let mut order: Vec<(NaiveDate, i32, NaiveDate, bool, usize)> = Vec::new();
            for i in 0..MONTHS as i32 {
                for k in 0..self.enrollments.len() {
                    if let Some((due, at, late)) = self.bill(k, i, known.1) {
                        order.push((due, i, at, late, k));
                    }
                }
            }
            order.sort();
            for (_, i, _, _, k) in order {
                let take = if self.void(k, i, revive) {
                    0
                } else {
                    self.enrollments[k].amounts[i as usize].min(money)
                };
                money -= take;
                out[k][i as usize] = take;
            }
            out
        }

        fn paid(&self, k: usize, known: Known, as_of: NaiveDate, revive: Option<usize>) -> i64 {
            self.filled(known, as_of, revive)[k].iter().sum()
        }

        fn owed(&self, k: usize, known: Known, due_by: NaiveDate) -> i64 {
            (0..MONTHS as i32)
                .filter(|i| self.due_of(k, *i, known.1).is_some_and(|d| d <= due_by))
                .map(|i| self.enrollments[k].amounts[i as usize])
                .sum()
        }

        fn short(
            &self,
            k: usize,
            known: Known,
            pay_by: NaiveDate,
            due_by: NaiveDate,
            revive: Option<usize>,
        ) -> bool {
            let owed = self.owed(k, known, due_by);
            owed > 0 && !enough(self.paid(k, known, pay_by, revive), owed)
        }

        /// What is open now on enrollment `k`'s bills due before `today` (the ledger fills
        /// bills with all the money it holds, whenever it counts from).
        pub fn past_due(&self, k: usize, known: Known, today: NaiveDate) -> i64 {
            let filled = self.filled(known, far(), None);
            (0..MONTHS as i32)
                .filter(|i| self.due_of(k, *i, known.1).is_some_and(|d| d < today))
                .filter(|i| !self.void(k, *i, None))
                .map(|i| self.enrollments[k].amounts[i as usize] - filled[k][i as usize])
                .sum()
        }

        /// Whether what the account holds reinstates terminated enrollment `k` on `x`: its
        /// past-due balance, its voided months and next month, paid out of credit.
        fn reinstates(&self, k: usize, known: Known, x: NaiveDate) -> bool {
            let held = self.money_by(known, x, false);
            let mut billed = 0;
            for j in 0..self.enrollments.len() {
                for i in 0..MONTHS as i32 {
                    if self.bill(j, i, known.1).is_some() && !self.void(j, i, None) {
                        billed += self.enrollments[j].amounts[i as usize];
                    }
                }
            }
            let credit = (held - billed).max(0);
            let filled = self.filled(known, far(), None);
            let next = index(x) + 1;
            let e = &self.enrollments[k];
            let mut needed = 0;
            for i in 0..=next {
                let Some(due) = (i >= 0).then(|| self.due_of(k, i, known.1)).flatten() else {
                    continue;
                };
                let amount = e.amounts[i as usize];
                if self.void(k, i, None) {
                    needed += amount;
                } else if due <= x || i == next {
                    needed += amount - filled[k][i as usize];
                }
            }
            if next >= 0 && self.bill(k, next, known.1).is_none() {
                needed += e.amounts[next as usize];
            }
            credit >= needed
        }

        /// Days money known on the run of `day` counts from, and `also`.
        fn money_days(&self, day: Known, also: NaiveDate) -> Vec<NaiveDate> {
            let mut days: Vec<NaiveDate> = self
                .payments
                .iter()
                .filter(|p| p.recorded <= day.0)
                .map(|p| p.counts_from)
                .collect();
            days.push(also);
            days
        }

        /// What terminated enrollment `k` was short of by its grace end (voided months
        /// counted): the amount a check received by then must bring to reverse it.
        pub fn short_at_grace_end(&self, k: usize, day: NaiveDate) -> i64 {
            let known = (day, day);
            let ends = self.enrollments[k].grace_ends.unwrap();
            self.owed(k, known, ends) - self.paid(k, known, ends, Some(k))
        }

        /// Whether enrollment `k`, in grace, was paid up on an earlier day of the grace
        /// before `x`: yesterday, or a day money counts from (a check received then and
        /// recorded since), with the bills due before that day.
        fn paid_up_since(&self, k: usize, day: Known, x: NaiveDate) -> bool {
            let since = self.enrollments[k].past_due_since.unwrap();
            self.money_days(day, x.pred_opt().unwrap())
                .into_iter()
                .filter(|y| *y >= since && *y < x)
                .any(|y| !self.short(k, day, y, y.pred_opt().unwrap(), None))
        }

        /// Whether terminated enrollment `k` is reinstated by `x`: on a day of its window up
        /// to `x` on which the money counted by then was enough (a check received inside the
        /// window reinstates however late it is recorded).
        fn reinstated_by(&self, k: usize, day: Known, x: NaiveDate) -> bool {
            let e = &self.enrollments[k];
            let (from, until) = (e.terminated_on.unwrap(), e.reinstatable_until.unwrap());
            let last = x.min(until);
            self.money_days(day, last)
                .into_iter()
                .filter(|y| *y >= from && *y <= last)
                .any(|y| self.reinstates(k, day, y))
        }

        /// The subsidy of enrollment `k` ends from month `from` on (a change made on `day`):
        /// bills from then on not yet paid are re-priced at the gross premium, and so are
        /// bills not issued yet.
        pub fn lose_subsidy(&mut self, k: usize, from: i32, day: NaiveDate) {
            let known = (day, day);
            let filled = self.filled(known, far(), None);
            let gross = self.enrollments[k].gross;
            for i in from.max(0)..MONTHS as i32 {
                let open = match self.bill(k, i, day) {
                    Some(_) => self.enrollments[k].amounts[i as usize] > filled[k][i as usize],
                    None => true,
                };
                if open {
                    self.enrollments[k].amounts[i as usize] = gross;
                }
            }
            let e = &mut self.enrollments[k];
            e.lost_from = Some(e.lost_from.map_or(from, |m| m.min(from)));
        }

        /// One enrollment's rules on date `x`, with what is known on the run of `day`.
        fn step(&mut self, k: usize, day: Known, x: NaiveDate) {
            let before = x.pred_opt().unwrap();
            for _ in 0..4 {
                let status = self.enrollments[k].status;
                // (next status, judged again the same day)
                let next = match status {
                    Status::PendingBinder => {
                        let reached = self.filled(day, x, None)[k][0];
                        if self.bill(k, 0, day.1).is_none() {
                            None
                        } else if enough(reached, self.enrollments[k].amounts[0]) {
                            Some((Status::Active, true))
                        } else if x > due(0) {
                            Some((Status::Cancelled, false))
                        } else {
                            None
                        }
                    }
                    Status::Cancelled => {
                        let reached = self.filled(day, due(0), Some(k))[k][0];
                        enough(reached, self.enrollments[k].amounts[0])
                            .then_some((Status::Active, true))
                    }
                    Status::Active => {
                        let owed = self.owed(k, day, before);
                        let paid: i64 = self.filled_by(day, x, None, true)[k].iter().sum();
                        (owed > 0 && !enough(paid, owed)).then_some(paid)
                    }
                    .map(|paid| {
                        let e = &self.enrollments[k];
                        let mut first = 0;
                        let mut owed = 0;
                        while (first as usize) < MONTHS {
                            owed += e.amounts[first as usize];
                            if !enough(paid, owed) {
                                break;
                            }
                            first += 1;
                        }
                        let (y, m) = month(first);
                        let long = e.subsidised_in(first) && first > 0 && month(first - 1).0 == y;
                        let (mut ends, effective) = if long {
                            let (ey, em) = month(first + 2);
                            (last_day(ey, em), last_day(y, m))
                        } else {
                            let (py, pm) = month(first - 1);
                            (last_day(y, m), last_day(py, pm))
                        };
                        if ends < x {
                            ends = last_day(x.year(), x.month());
                        }
                        let missed = self.due_of(k, first, day.1).unwrap_or(due(first));
                        self.enrollments[k].past_due_since = Some(missed + Duration::days(1));
                        self.enrollments[k].grace_ends = Some(ends);
                        (Status::InGrace { ends, effective }, false)
                    }),
                    Status::InGrace { ends, effective } => {
                        if x > ends {
                            Some(if self.short(k, day, ends, ends, None) {
                                (Status::Terminated { effective }, false)
                            } else {
                                (Status::Active, true)
                            })
                        } else if !self.short(k, day, x, before, None)
                            || self.paid_up_since(k, day, x)
                        {
                            Some((Status::Active, true))
                        } else {
                            None
                        }
                    }
                    Status::Terminated { .. } => {
                        let ends = self.enrollments[k].grace_ends.unwrap();
                        if !self.short(k, day, ends, ends, Some(k)) {
                            // Paid by the grace end after all (a check recorded late).
                            Some((Status::Active, true))
                        } else if self.reinstated_by(k, day, x) {
                            Some((Status::Active, false))
                        } else {
                            None
                        }
                    }
                };
                let Some((next, again)) = next else { break };
                let e = &mut self.enrollments[k];
                match (status, next) {
                    (_, Status::Cancelled | Status::Terminated { .. }) => {
                        e.closed.push((x, None));
                        if matches!(next, Status::Terminated { .. }) {
                            e.terminated_on = Some(x);
                            e.reinstatable_until = Some(x + Duration::days(REINSTATEMENT_DAYS));
                        }
                    }
                    (Status::Cancelled | Status::Terminated { .. }, _) => {
                        if let Some(last) = e.closed.last_mut() {
                            last.1 = Some(day.1);
                        }
                    }
                    _ => {}
                }
                e.status = next;
                if !again {
                    break;
                }
            }
        }

        /// What a payment (or its return) recorded on `day` sets off at once: today judged
        /// again with it known (a check received yesterday cures as of yesterday by the
        /// grace rule itself).
        pub fn recorded(&mut self, day: NaiveDate) {
            self.judge((day, day), day);
        }

        /// Every enrollment on `x`, again while an end, a reversal or a reinstatement moved
        /// money.
        fn judge(&mut self, known: Known, x: NaiveDate) {
            for _ in 0..=2 * self.enrollments.len() {
                let before: Vec<Status> = self.enrollments.iter().map(|e| e.status).collect();
                for k in 0..self.enrollments.len() {
                    self.step(k, known, x);
                }
                let moved = self.enrollments.iter().zip(&before).any(|(e, b)| {
                    e.status != *b
                        && matches!(
                            (b, e.status),
                            (_, Status::Terminated { .. } | Status::Cancelled)
                                | (
                                    Status::Cancelled | Status::Terminated { .. },
                                    Status::Active
                                )
                        )
                });
                if !moved {
                    break;
                }
            }
        }

        /// The daily run of `day`: yesterday is judged again with what is known now (a
        /// payment made yesterday counts for yesterday), then today.
        pub fn run(&mut self, day: NaiveDate, first_day: bool) -> Vec<Status> {
            let days = if first_day {
                vec![day]
            } else {
                vec![day.pred_opt().unwrap(), day]
            };
            let known = (day.pred_opt().unwrap(), day);
            for x in days {
                self.judge(known, x);
            }
            self.enrollments.iter().map(|e| e.status).collect()
        }
    }
}

fn as_household_reference(s: &CoverageStatus) -> household_reference::Status {
    use household_reference::Status as S;
    match s {
        CoverageStatus::PendingBinder { .. } => S::PendingBinder,
        CoverageStatus::Active => S::Active,
        CoverageStatus::InGrace { grace } => S::InGrace {
            ends: grace.grace_ends_on,
            effective: grace.termination_effective,
        },
        CoverageStatus::Terminated { effective, .. } => S::Terminated {
            effective: *effective,
        },
        CoverageStatus::Cancelled { .. } => S::Cancelled,
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: model_cases(), ..Default::default() })]
    /// Households of health (unsubsidised, subsidised, or an $8 share) and dental, paying by
    /// card, by checks recorded late and by bank transfers returned days later, losing their
    /// subsidy, setting up payment plans, asking to reinstate, with or without late fees: the
    /// daily jobs and the household model agree every day on each enrollment's status, grace
    /// end and termination date, through terminations and what follows them. Besides: a
    /// grace period never changes once started; an APTC termination is never later than the
    /// last day of the first grace month; a cancelled enrollment owes nothing; each grace
    /// notice names one enrollment with its own grace end and amount; late fees fall only on
    /// late premiums of effectuated enrollments; a plan holds exactly the past-due premiums
    /// of effectuated enrollments, never a binder or a fee, and never a voided month.
    #[test]
    fn household_coverage_agrees_with_the_household_model(
        pricing in 0usize..3,
        dental in proptest::bool::ANY,
        fees in proptest::bool::weighted(0.25),
        binder in proptest::option::weighted(0.85, (0u32..30, 0usize..3)),
        plan_in_grace in proptest::option::weighted(0.4, (0u32..40, 1i64..=7)),
        late_check in proptest::option::weighted(0.4, (0u32..10, 0i64..=7)),
        events in proptest::collection::vec((0u32..180, 0u8..6, 1i64..=7, 0u32..=10), 0..16),
    ) {
        use household_reference::Status as S;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let h = Harness::with_config(PortalConfig {
                delinquency: crate::delinquency::DelinquencyPolicy {
                    late_fee: if fees {
                        crate::delinquency::LateFeePolicy::Fixed { amount: usd("5") }
                    } else {
                        crate::delinquency::LateFeePolicy::None
                    },
                    ..Default::default()
                },
                ..PortalConfig::default()
            })
            .await;
            let gross: i64 = 50_000;
            let subsidy: i64 = [0, 30_000, 49_200][pricing];
            if subsidy != 30_000 {
                h.portal
                    .change_subsidy(h.account_id, h.enrollment_id, Money::from_cents(subsidy), CoverageMonth::new(2027, 1).unwrap())
                    .await
                    .unwrap();
            }
            let dental_share: i64 = 4_000;
            let dental_id = EnrollmentId(Uuid::from_u128(900_002));
            if dental {
                let mut acc = h.account().await;
                acc.enrollments.push(
                    Enrollment::new(
                        dental_id,
                        CoverageKind::Dental,
                        "Dental Basic",
                        Money::from_cents(dental_share),
                        Money::ZERO,
                        CoverageMonth::new(2027, 1).unwrap(),
                    )
                    .unwrap(),
                );
                h.store.commit(Changes::account(acc)).await.unwrap();
            }
            h.register().await;
            let ids: Vec<EnrollmentId> = std::iter::once(h.enrollment_id).chain(dental.then_some(dental_id)).collect();
            let names = ["ConnectorCare Plan 2A", "Dental Basic"];
            let share = gross - subsidy;
            let month = share + if dental { dental_share } else { 0 };
            let start = d(2026, 12, 2);
            let part = |k: i64| match k {
                1 => month * 95 / 100,
                2 => month,
                3 => month * 2,
                4 => month / 2,
                5 => share,
                6 => month / 4,
                7 => month * 4,
                cents => cents,
            };
            let mut plan: Vec<(NaiveDate, u8, i64, u32)> = binder
                .map(|(offset, k)| (start + Duration::days(i64::from(offset)), 0, [2, 1, 5][k], 0))
                .into_iter()
                .chain(events.iter().map(|(offset, how, k, back)| {
                    (start + Duration::days(i64::from(*offset)), *how, *k, *back)
                }))
                .collect();
            plan.sort();
            let mut model = household_reference::Model {
                enrollments: std::iter::once(household_reference::Enrollment::new(share, gross))
                    .chain(dental.then(|| household_reference::Enrollment::new(dental_share, dental_share)))
                    .collect(),
                payments: Vec::new(),
            };
            let policy = h.portal.config().delinquency.clone();
            let mut graces: Vec<Option<crate::delinquency::GraceDates>> = vec![None; ids.len()];
            let mut returns: Vec<(NaiveDate, usize, String)> = Vec::new();
            let mut planned = false;
            // Events the history sets off: a plan asked for some days into the first grace
            // period, a check received on the last day of grace and recorded after the
            // termination.
            let mut later: Vec<(NaiveDate, u8, i64, u32)> = Vec::new();
            let mut graced = false;
            let mut ended: Option<NaiveDate> = None;
            let mut day = start;
            let mut n = 0;
            loop {
                h.set_date(day).await;
                let sent = h.store.outbox().len();
                h.portal.run_daily().await.unwrap();
                let expected = model.run(day, day == start);
                let acc = h.account().await;
                let got = acc.summary(&policy, day);
                let seen = format!("on {day}; history {plan:?}; pricing {pricing}, dental {dental}, fees {fees}");
                if std::env::var("MODEL_TRACE").is_ok() {
                    eprintln!("{day}: model {expected:?} got {:?}", got.enrollments.iter().map(|e| as_household_reference(&e.status)).collect::<Vec<_>>());
                }
                Harness::check_ledger(&acc);
                let k_of = |id: EnrollmentId| ids.iter().position(|i| *i == id).unwrap();
                for b in &acc.ledger.bills {
                    if let BillKind::LateFee { late_bill } = b.kind {
                        let late = acc.ledger.bill(late_bill).unwrap();
                        assert_eq!(late.kind, BillKind::Premium, "never a fee on a binder {seen}");
                        assert!(
                            !matches!(expected[k_of(late.enrollment_id)], S::PendingBinder | S::Cancelled),
                            "a fee only on an effectuated enrollment {seen}"
                        );
                    }
                }
                for id in &ids {
                    let bills = acc.bills_of(*id);
                    let in_plans = Money::sum(bills.iter().filter(|b| matches!(b.kind, BillKind::Installment { .. })).map(|b| b.open_amount())).unwrap();
                    let moved = Money::sum(bills.iter().filter(|b| b.kind.is_premium() && !b.void).map(|b| b.transferred)).unwrap();
                    assert!(in_plans <= moved, "installments hold only months still owed: {in_plans} > {moved} {seen}");
                }
                if !fees && !planned {
                    for notice in &h.store.outbox()[sent..] {
                        let (plan_name, amount, ends) = match &notice.body {
                            NoticeBody::PastDue { plan_name, amount, grace_ends_on, .. }
                            | NoticeBody::TerminationWarning { plan_name, amount, grace_ends_on, .. } => (plan_name, amount, grace_ends_on),
                            _ => continue,
                        };
                        let k = names.iter().position(|m| m == plan_name).unwrap();
                        let S::InGrace { ends: model_ends, .. } = expected[k] else {
                            panic!("a grace notice for enrollment {k} out of grace: {:?}, model {expected:?} {seen}", notice.body);
                        };
                        assert_eq!(*ends, model_ends, "the notice's grace end is its enrollment's {seen}");
                        let owed = model.past_due(k, (day.pred_opt().unwrap(), day), day);
                        assert_eq!(amount.cents(), owed, "the notice's amount is its enrollment's: {:?}, model {expected:?} {seen}", notice.body);
                    }
                }
                for (k, e) in got.enrollments.iter().enumerate() {
                    assert_eq!(
                        as_household_reference(&e.status), expected[k],
                        "enrollment {k}: {:?} vs model {:?} {seen}", e.status, expected[k]
                    );
                    match e.status {
                        CoverageStatus::InGrace { grace } => {
                            // The same grace (same first unpaid month) keeps its kind and
                            // dates; a new one (cured, then short again) starts later.
                            if let Some(g) = graces[k] {
                                if g.first_unpaid_month == grace.first_unpaid_month {
                                    assert_eq!(g, grace, "a running grace never changes {seen}");
                                }
                            }
                            graces[k] = Some(grace);
                            if grace.kind == crate::delinquency::GraceKind::Aptc {
                                assert!(grace.termination_effective <= grace.first_unpaid_month.last_day(), "{seen}");
                            }
                        }
                        CoverageStatus::Cancelled { .. } => {
                            let owed = Money::sum(acc.bills_of(e.enrollment_id).iter().map(|b| b.open_amount())).unwrap();
                            assert_eq!(owed, Money::ZERO, "a cancelled enrollment owes nothing {seen}");
                            assert_eq!(e.paid_through, None);
                        }
                        _ => graces[k] = None,
                    }
                }
                if let (false, S::InGrace { .. }) = (graced, expected[0]) {
                    graced = true;
                    if let Some((after, k)) = plan_in_grace {
                        later.push((day + Duration::days(i64::from(after)), 3, k, 0));
                    }
                }
                let terminated = expected.iter().any(|s| matches!(s, S::Terminated { .. }));
                if let (None, S::Terminated { .. }, Some((after, k))) = (ended, expected[0], late_check) {
                    let ends = model.enrollments[0].grace_ends.unwrap();
                    let on = day + Duration::days(i64::from(after));
                    // Code 0: a check for exactly what was short by the grace end.
                    let k = if k == 0 { model.short_at_grace_end(0, day).max(100) } else { k };
                    later.push((on, 1, k, u32::try_from((on - ends).num_days()).unwrap()));
                }
                if ended.is_none() && (terminated || expected.iter().all(|s| *s == S::Cancelled)) {
                    ended = Some(day);
                }
                // Fees and plans are left out of the model: walks with them stop at a
                // termination, before reinstatement reads what they hold.
                if (terminated && (fees || planned))
                    || ended.is_some_and(|e| day >= e + Duration::days(40))
                    || day >= d(2027, 6, 15)
                {
                    break;
                }
                for (_, i, gid) in returns.iter().filter(|(on, ..)| *on == day) {
                    for (j, event) in [PaymentEvent::Settled, PaymentEvent::Returned { code: ReturnCode::R01 }].into_iter().enumerate() {
                        h.portal
                            .record_gateway_event(GatewayEvent {
                                event_id: format!("evt-{i}-{j}"),
                                gateway_id: gid.clone(),
                                payment_id: None,
                                event,
                            })
                            .await
                            .unwrap();
                    }
                    model.payments[*i].returned = Some(day);
                    model.recorded(day);
                    let got = h.account().await.summary(&policy, day);
                    for (k, e) in got.enrollments.iter().enumerate() {
                        let want = model.enrollments[k].status;
                        assert_eq!(
                            as_household_reference(&e.status), want,
                            "enrollment {k} just after a return: {:?} vs model {want:?} {seen}", e.status
                        );
                        // Cured in between: a grace that starts again is a new one.
                        if !matches!(e.status, CoverageStatus::InGrace { .. }) {
                            graces[k] = None;
                        }
                    }
                }
                let today: Vec<(NaiveDate, u8, i64, u32)> =
                    plan.iter().chain(&later).filter(|(on, ..)| *on == day).copied().collect();
                for (_, how, k, back) in today.iter() {
                    n += 1;
                    let cents = part(*k);
                    let amount = Money::from_cents(cents);
                    match how {
                        0..=2 => {
                            let counts_from = if *how == 1 {
                                let received = (day - Duration::days(i64::from(*back))).max(start);
                                h.portal
                                    .record_offline_payment(
                                        AgentId(Uuid::from_u128(77)),
                                        h.account_id,
                                        OfflinePaymentForm {
                                            amount,
                                            kind: OfflineKind::Check,
                                            document_number: None,
                                            received_on: received,
                                            idempotency_key: format!("check-{n}"),
                                        },
                                    )
                                    .await
                                    .unwrap();
                                received
                            } else {
                                let token = if *how == 2 { "pm_bank_ok" } else { "pm_card_ok" };
                                let r = h.pay(&format!("p{n}"), Some(&amount.to_string()), token).await.unwrap();
                                if *how == 2 {
                                    let gid = r.payment().gateway_id.clone().unwrap();
                                    returns.push((day + Duration::days(i64::from(*back) + 1), model.payments.len(), gid));
                                }
                                day
                            };
                            model.payments.push(household_reference::Paid { recorded: day, counts_from, cents, returned: None });
                            model.recorded(day);
                        }
                        3 if !dental => {
                            let before = h.account().await;
                            let installments = 2 + (*k as u32 % 3);
                            let total: i64 = before
                                .ledger
                                .bills
                                .iter()
                                .filter(|b| b.kind == BillKind::Premium && b.due_date < day)
                                .filter(|b| matches!(model.enrollments[k_of(b.enrollment_id)].status, S::Active | S::InGrace { .. }))
                                .map(|b| b.open_amount().cents())
                                .sum();
                            let possible = before.active_plan().is_none() && total > 0 && total / i64::from(installments) >= 100;
                            let made = h.portal.set_up_payment_plan(h.account_id, installments, None, Actor::Member).await;
                            match made {
                                Ok(p) => {
                                    assert!(possible, "no plan is possible here {seen}");
                                    assert_eq!(p.total.cents(), total, "a plan holds the past-due premiums of effectuated enrollments {seen}");
                                    planned = true;
                                }
                                Err(e) => assert!(!possible, "{e:?} {seen}"),
                            }
                        }
                        4 if subsidy > 0
                            && !fees
                            && !planned
                            && model.enrollments[0].lost_from.is_none()
                            && !matches!(model.enrollments[0].status, S::Cancelled | S::Terminated { .. }) =>
                        {
                            let from = CoverageMonth::of(day).plus((*back % 2) as i32);
                            h.portal.change_subsidy(h.account_id, h.enrollment_id, Money::ZERO, from).await.unwrap();
                            model.lose_subsidy(0, household_reference::index(day) + (*back % 2) as i32, day);
                            model.recorded(day);
                        }
                        5 => {
                            match h.portal.reinstate(h.account_id, h.enrollment_id, Actor::Member).await {
                                Ok(()) => model.recorded(day),
                                Err(ServiceError::Rejected(_)) => {}
                                Err(e) => panic!("{e:?} {seen}"),
                            }
                        }
                        _ => {}
                    }
                    // A payment, a return or a reinstatement decides coverage in its own
                    // commit: the account answers at once what the model says.
                    let got = h.account().await.summary(&policy, day);
                    for (k, e) in got.enrollments.iter().enumerate() {
                        let want = model.enrollments[k].status;
                        assert_eq!(
                            as_household_reference(&e.status), want,
                            "enrollment {k} just after event {how}: {:?} vs model {want:?} {seen}", e.status
                        );
                        // Cured in between: a grace that starts again is a new one.
                        if !matches!(e.status, CoverageStatus::InGrace { .. }) {
                            graces[k] = None;
                        }
                    }
                }
                day = day.succ_opt().unwrap();
            }
        });
    }
}

#[tokio::test]
async fn the_test_clock_runs_every_day_it_passes_and_is_absent_without_one() {
    let h = Harness::new().await;
    assert!(matches!(
        h.portal.advance_test_clock(5).await,
        Err(ServiceError::NotFound("test clock"))
    ));
    assert!(h.portal.test_clock_today().is_err());
    let portal = h.portal.clone().with_test_clock(h.clock.clone());
    for bad in [0, MAX_ADVANCE_DAYS + 1] {
        let err = portal.advance_test_clock(bad).await.unwrap_err();
        assert!(
            matches!(err, ServiceError::Invalid(ref e) if e.has("days")),
            "{err:?}"
        );
    }
    h.register().await;
    assert_eq!(portal.test_clock_today().unwrap(), d(2026, 12, 1));
    let moved = portal.advance_test_clock(30).await.unwrap();
    assert_eq!((moved.from, moved.today), (d(2026, 12, 1), d(2026, 12, 31)));
    assert!(moved.jobs.done > 0);
    // The days passed ran as the worker would have run them: billed on the 2nd, reminded on
    // the 16th and 21st, cancelled on the 24th for the unpaid binder.
    assert_eq!(h.count(NoticeKind::BillIssued), 1);
    assert_eq!(h.count(NoticeKind::DueDateReminder), 2);
    assert_eq!(h.count(NoticeKind::CoverageCancelled), 1);
    assert!(matches!(
        h.status().await.status,
        CoverageStatus::Cancelled { .. }
    ));
}

#[tokio::test]
async fn paying_on_the_day_coverage_ends_restores_it() {
    let h = Harness::new().await;
    h.unsubsidised().await;
    h.register().await;
    h.walk(d(2026, 12, 2), d(2026, 12, 3)).await;
    h.pay("binder", None, "pm_card_ok").await.unwrap();
    h.walk(d(2026, 12, 4), d(2027, 3, 1)).await;
    assert!(
        matches!(h.status().await.status, CoverageStatus::Terminated { .. }),
        "{:?}",
        h.status().await
    );
    h.pay("restore", Some("1500"), "pm_card_ok").await.unwrap();
    let acc = h.account().await;
    assert_eq!(
        h.status().await.status,
        CoverageStatus::Active,
        "{:?} {:?}",
        acc.enrollments[0].coverage,
        h.status().await
    );
}

/// Times the portal records are whole microseconds, as the databases keep them, whatever the
/// clock gives: an account held after a commit equals the account a load reads back.
#[tokio::test]
async fn recorded_times_are_whole_microseconds() {
    let h = Harness::new().await;
    h.register().await;
    h.clock.advance(chrono::Duration::nanoseconds(1_234_567));
    let r = h
        .pay("key-micros", Some("10.00"), "pm_card_ok")
        .await
        .unwrap();
    let at = r.payment().initiated_at;
    assert_eq!(at.nanosecond() % 1_000, 0, "{at}");
    assert_ne!(at.nanosecond(), 0, "the clock's microseconds are kept");
    let audit = h.store.audit();
    assert!(audit.iter().all(|e| e.at.nanosecond() % 1_000 == 0));
}

#[tokio::test]
async fn a_method_is_saved_only_once_the_gateway_accepts_its_payment() {
    let h = Harness::new().await;
    h.register().await;
    h.set_date(d(2026, 12, 2)).await;
    h.portal.bill_account(h.account_id).await.unwrap();
    let pay_saving = |key: &'static str, token: &'static str| {
        h.portal.make_payment(MakePayment {
            account_id: h.account_id,
            amount: Some(usd("10.00")),
            method: PayWith::Token {
                token: GatewayToken::parse(token).unwrap(),
                save: true,
            },
            idempotency_key: key.into(),
        })
    };
    let declined = pay_saving("k-declined", "pm_card_declined").await.unwrap();
    assert!(matches!(
        declined.payment().status,
        PaymentStatus::Failed { .. }
    ));
    assert!(
        h.account().await.methods.is_empty(),
        "a declined card is not kept"
    );

    // The answer is lost: nothing is saved yet; the retry with the same key resumes the
    // charge with its own token (no second charge) and saves the card then.
    let lost = pay_saving("k-lost-save", "pm_card_lost").await.unwrap();
    assert!(matches!(
        lost.payment().status,
        PaymentStatus::Pending { .. }
    ));
    assert!(h.account().await.methods.is_empty());
    let charges = h.gateway.charges();
    let retried = pay_saving("k-lost-save", "pm_card_lost").await.unwrap();
    assert_eq!(retried.payment().status, PaymentStatus::Succeeded);
    assert_eq!(
        h.gateway.charges(),
        charges,
        "the same charge, not a second"
    );
    let acc = h.account().await;
    let [method] = acc.methods.as_slice() else {
        panic!("one saved method: {:?}", acc.methods);
    };
    assert_eq!(method.token.as_ref(), "pm_card_lost");
    assert!(matches!(
        retried.payment().instrument,
        crate::payment::PaymentInstrument::Saved { method_id, .. } if method_id == method.id
    ));

    let ok = pay_saving("k-ok-save", "pm_card_ok").await.unwrap();
    assert_eq!(ok.payment().status, PaymentStatus::Succeeded);
    assert_eq!(
        h.account().await.methods.len(),
        2,
        "an accepted card is kept"
    );
}

#[tokio::test]
async fn a_stopping_portal_ends_a_job_run_between_chunks() {
    let h = Harness::with_config(PortalConfig {
        job_chunk: 1,
        ..PortalConfig::default()
    })
    .await;
    for seed in 0..5 {
        h.store
            .commit(Changes::account(crate::testing::conformance::bare_account(
                9_000 + seed,
            )))
            .await
            .unwrap();
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (s, w) = (stop.clone(), worked.clone());
    let stopping = h
        .portal
        .clone()
        .with_progress(Arc::new(move |p: JobProgress| {
            w.store(p.chunks_done, std::sync::atomic::Ordering::SeqCst);
            // A shutdown begins once the first chunk is done.
            s.store(true, std::sync::atomic::Ordering::SeqCst);
        }))
        .with_stop(Arc::new(move || {
            stop.load(std::sync::atomic::Ordering::SeqCst)
        }));
    let report = stopping.run_billing().await.unwrap();
    let worked = worked.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        worked, 2,
        "the chunk in hand and the one claimed with it, no more"
    );
    assert_eq!(report.left.chunks, 6 - worked, "the rest is left");
    assert_eq!(
        report.left.leased_until, None,
        "and left unclaimed, for the next run to take at once"
    );
    let rest = h.portal.run_billing().await.unwrap();
    assert_eq!(rest.left.chunks, 0, "the next run finishes it");
}

#[tokio::test]
async fn a_retry_resumes_a_one_time_card_payment_whose_answer_was_lost() {
    let h = Harness::new().await;
    h.register().await;
    h.set_date(d(2026, 12, 2)).await;
    h.portal.bill_account(h.account_id).await.unwrap();
    let first = h.pay("k-lost-once", None, "pm_card_lost").await.unwrap();
    assert!(matches!(
        first.payment().status,
        PaymentStatus::Pending {
            stage: PendingStage::Submitted
        }
    ));
    let charges = h.gateway.charges();
    // The member's retry (same key, same card token) asks the gateway again with the same
    // gateway key: the charge it already made is the answer, not a second one.
    let retried = h.pay("k-lost-once", None, "pm_card_lost").await.unwrap();
    assert!(retried.replayed);
    assert_eq!(retried.payment().id, first.payment().id);
    assert_eq!(retried.payment().status, PaymentStatus::Succeeded);
    assert_eq!(h.gateway.charges(), charges, "no second charge");
    assert!(
        h.account().await.methods.is_empty(),
        "a one-time card is not kept"
    );
}
