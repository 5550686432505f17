//! The storage conformance suite: the rules every store must keep, written once and run
//! against the in-memory fake and each real store.
//!
//! Use [`store_conformance_tests!`](crate::store_conformance_tests) in an adapter's tests with
//! an expression that yields a fresh, migrated store; it expands to one `#[tokio::test]` per
//! check. Every check uses its own ids and account numbers (from `seed`), so checks may share a
//! database.

// Test support: a broken rule fails the check by panicking, like an assertion.
#![allow(clippy::panic)]

use crate::account::{
    Account, EmailCode, Holder, IdempotencyRecord, LoginThrottle, Member, NewAccount, Principal,
    ResetToken, SealedSecret, Session, TokenDigest,
};
use crate::audit::{Actor, AuditEvent};
use crate::billing::{Bill, BillKind, BillNotice};
use crate::calendar::CoverageMonth;
use crate::enrollment::{CoverageKind, Enrollment};
use crate::identity::{AccountNumber, Email, Language, PersonName, Username};
use crate::ids::{
    AccountId, AgentId, BillId, EnrollmentId, MandateId, MethodId, PaymentId, PlanId, SessionId,
};
use crate::instrument::{
    BankAccountType, CardBrand, CardExpiry, GatewayToken, MethodDetails, PaymentMethod,
};
use crate::mandate::{AmountRule, Consent, ConsentSource, Frequency, Mandate, MandateTerms};
use crate::money::Money;
use crate::notice::{Notice, NoticeBody, NoticeKind};
use crate::payment::{
    DeclineReason, OfflineKind, Payment, PaymentChannel, PaymentEvent, PaymentInstrument,
    PaymentStatus, PendingStage, ReturnCode,
};
use crate::plan::{PaymentPlan, PlanStatus};
use crate::ports::{
    AccountLookup, Changes, IssuedBills, JobRun, Outbox, PaymentLookup, Store, StoreError, Unique,
    WorkQueue,
};
use crate::reference::PaymentReference;
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use uuid::Uuid;

/// What the suite needs of a store.
pub trait StoreUnderTest: Store + WorkQueue + Outbox {}
impl<T: Store + WorkQueue + Outbox> StoreUnderTest for T {}

/// The plain values the sample data holds that must never appear in a store's raw tables.
pub const PLAIN_SECRETS: &[&str] = &[
    "123456789",
    "123-45-6789",
    "correct horse battery staple",
    "4242424242424242",
];

fn at(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, 1, day, hour, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap_or(NaiveDate::MIN)
}

fn month(y: i32, m: u32) -> CoverageMonth {
    CoverageMonth::new(y, m).unwrap_or(CoverageMonth::of(NaiveDate::MIN))
}

fn cents(c: i64) -> Money {
    Money::from_cents(c)
}

/// A deterministic id in the seed's namespace.
pub fn id(seed: u32, n: u32) -> Uuid {
    Uuid::from_u128((u128::from(seed) << 64) | u128::from(n))
}

fn reference(seed: u32, n: u32) -> PaymentReference {
    let mut v = [0u8; crate::reference::REFERENCE_DATA_LEN];
    let mut x = (u64::from(seed) << 16) | u64::from(n);
    for slot in v.iter_mut().rev() {
        *slot = u8::try_from(x % 31).unwrap_or(0);
        x /= 31;
    }
    PaymentReference::from_values(v)
}

fn card() -> MethodDetails {
    MethodDetails::Card {
        brand: CardBrand::Visa,
        last4: "4242".into(),
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
        account_type: BankAccountType::Savings,
    }
}

fn parse<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("sample data is invalid: {e:?}"),
    }
}

/// An account with a member login and no bills yet.
pub fn bare_account(seed: u32) -> Account {
    let e1 = EnrollmentId(id(seed, 2));
    let health = parse(Enrollment::new(
        e1,
        CoverageKind::Health,
        "ConnectorCare 2A",
        cents(50_000),
        cents(30_000),
        month(2027, 1),
    ));
    let mut account = Account::open(
        AccountId(id(seed, 1)),
        NewAccount {
            number: parse(AccountNumber::parse(&format!("HC{seed:08}"))),
            holder: Holder {
                first_name: parse(PersonName::parse("José")),
                last_name: parse(PersonName::parse("Núñez-O'Brien")),
                date_of_birth: date(1975, 2, 28),
                ssn_digest: crate::account::LookupDigest(format!("digest-{seed}")),
                ssn_last4: "6789".into(),
            },
            contact_email: Some(parse(Email::parse(&format!("contact{seed}@example.com")))),
            enrollments: vec![health],
        },
        at(1, 9),
    );
    account.member = Some(Member {
        username: parse(Username::parse(&format!("User{seed}"))),
        email: parse(Email::parse(&format!("member{seed}@example.com"))),
        email_verified_at: Some(at(1, 10)),
        email_code: Some(EmailCode {
            digest: TokenDigest::of("123456"),
            expires_at: at(1, 11),
            failed_attempts: 1,
        }),
        password_hash: crate::account::PasswordHash(
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        ),
        password_changed_at: at(1, 10),
        language: Language::Es,
        ssn_sealed: SealedSecret(vec![1, 0xfe, 7, 0, 42]),
        ssn_digest: crate::account::LookupDigest(format!("member-digest-{seed}")),
        created_at: at(1, 10),
    });
    account
}

/// An account with every kind of thing a store must keep: two enrollments (one terminated),
/// bills of every kind, payments in every state with allocations and history, methods, a
/// mandate and a plan.
pub fn full_account(seed: u32) -> Account {
    let mut account = bare_account(seed);
    let e1 = EnrollmentId(id(seed, 2));
    let e2 = EnrollmentId(id(seed, 3));
    let mut dental = parse(Enrollment::new(
        e2,
        CoverageKind::Dental,
        "Dental Basic",
        cents(4_000),
        Money::ZERO,
        month(2027, 1),
    ));
    dental.coverage_end = Some(month(2027, 12));
    dental.coverage = crate::coverage::Coverage {
        state: crate::coverage::CoverageState::Terminated {
            grace: crate::delinquency::grace_dates(
                month(2027, 2),
                date(2027, 1, 23),
                false,
                &crate::delinquency::DelinquencyPolicy::default(),
            ),
            processed_on: date(2027, 4, 1),
            reinstatable_until: date(2027, 5, 6),
            voided: vec![month(2027, 3), month(2027, 4)],
        },
        effectuated_on: Some(date(2026, 12, 20)),
        evaluated_on: Some(date(2027, 4, 1)),
        notices: vec![crate::billing::BillNotice::PastDue],
    };
    dental.change_subsidy(cents(1_000), month(2027, 3));
    account.enrollments.push(dental);
    let plan_id = PlanId(id(seed, 60));
    let bill = |n: u32, e: EnrollmentId, kind: BillKind, m: CoverageMonth, amount: i64| Bill {
        id: BillId(id(seed, n)),
        enrollment_id: e,
        kind,
        coverage_month: m,
        amount: cents(amount),
        allocated: Money::ZERO,
        transferred: Money::ZERO,
        due_date: m.previous().day_clamped(23),
        issued_on: m.previous().day_clamped(2),
        void: false,
        notices: vec![BillNotice::Issued, BillNotice::Reminder(7)],
        late_fee_assessed: false,
    };
    account
        .ledger
        .add_bill(bill(10, e1, BillKind::Binder, month(2027, 1), 20_000));
    account
        .ledger
        .add_bill(bill(11, e1, BillKind::Premium, month(2027, 2), 20_000));
    account
        .ledger
        .add_bill(bill(12, e2, BillKind::Binder, month(2027, 1), 4_000));
    account.ledger.add_bill(bill(
        13,
        e1,
        BillKind::LateFee {
            late_bill: BillId(id(seed, 11)),
        },
        month(2027, 2),
        500,
    ));
    let mut inst = bill(
        14,
        e1,
        BillKind::Installment {
            plan_id,
            number: 1,
            of: 2,
        },
        month(2027, 3),
        2_000,
    );
    inst.notices = vec![BillNotice::PastDue, BillNotice::TerminationWarning];
    account.ledger.add_bill(inst);
    let mut void = bill(15, e2, BillKind::Premium, month(2027, 3), 4_000);
    void.void = true;
    account.ledger.add_bill(void);
    let method = PaymentMethod {
        id: MethodId(id(seed, 20)),
        account_id: account.id,
        token: parse(GatewayToken::parse(&format!("pm_card_{seed}"))),
        details: card(),
        added_at: at(2, 9),
        removed_at: None,
    };
    let bank_method = PaymentMethod {
        id: MethodId(id(seed, 21)),
        account_id: account.id,
        token: parse(GatewayToken::parse(&format!("pm_bank_{seed}"))),
        details: bank(),
        added_at: at(2, 9),
        removed_at: Some(at(3, 9)),
    };
    let pay =
        |n: u32, amount: i64, instrument: PaymentInstrument, channel: PaymentChannel| Payment {
            id: PaymentId(id(seed, n)),
            reference: reference(seed, n),
            amount: cents(amount),
            refunded: Money::ZERO,
            instrument,
            channel,
            status: PaymentStatus::Pending {
                stage: PendingStage::Submitted,
            },
            gateway_id: Some(format!("pi_{seed}_{n}")),
            idempotency_key: format!("key-{seed}-{n}"),
            initiated_at: at(5, 12),
            initiated_on: date(2027, 1, 5),
            expected_settlement: None,
            allocations: vec![],
            history: vec![],
        };
    let saved = PaymentInstrument::Saved {
        method_id: method.id,
        details: card(),
    };
    let mut p1 = pay(30, 24_000, saved.clone(), PaymentChannel::Member);
    parse(p1.transition(PaymentEvent::Settled, at(5, 12), "gateway response"));
    let mut p2 = pay(
        31,
        20_000,
        PaymentInstrument::OneTime { details: bank() },
        PaymentChannel::Guest,
    );
    parse(p2.transition(
        PaymentEvent::Processing {
            expected_settlement: date(2027, 1, 9),
        },
        at(5, 12),
        "gateway",
    ));
    let mut p3 = pay(
        32,
        1_000,
        saved.clone(),
        PaymentChannel::Autopay {
            mandate_id: MandateId(id(seed, 40)),
            period: 3,
        },
    );
    parse(p3.transition(
        PaymentEvent::Declined {
            reason: DeclineReason::ExpiredCard,
        },
        at(5, 12),
        "gateway",
    ));
    let mut p4 = pay(
        33,
        5_000,
        PaymentInstrument::OneTime { details: bank() },
        PaymentChannel::Member,
    );
    parse(p4.transition(
        PaymentEvent::Processing {
            expected_settlement: date(2027, 1, 9),
        },
        at(5, 12),
        "gateway",
    ));
    parse(p4.transition(PaymentEvent::Settled, at(9, 12), "webhook evt_1"));
    parse(p4.transition(
        PaymentEvent::Returned {
            code: ReturnCode::R10,
        },
        at(12, 12),
        "webhook evt_2",
    ));
    let mut p5 = pay(
        34,
        3_000,
        PaymentInstrument::Offline {
            kind: OfflineKind::MoneyOrder,
            document_number: Some("MO-77".into()),
        },
        PaymentChannel::Agent {
            agent_id: AgentId(id(seed, 99)),
        },
    );
    parse(p5.transition(PaymentEvent::Settled, at(6, 12), "agent"));
    parse(p5.transition(
        PaymentEvent::Refunded {
            amount: cents(1_000),
        },
        at(7, 12),
        "agent",
    ));
    let p6 = pay(35, 700, saved, PaymentChannel::Member);
    for p in [p1, p2, p3, p4, p5, p6] {
        account.ledger.add_payment(p);
    }
    account.methods = vec![method.clone(), bank_method];
    let mut mandate = parse(Mandate::new(
        MandateId(id(seed, 40)),
        account.id,
        MandateTerms {
            method_id: method.id,
            amount_rule: AmountRule::Fixed {
                amount: cents(20_000),
            },
            cap: Some(cents(25_000)),
            frequency: Frequency::Quarterly,
            start_date: date(2027, 1, 20),
        },
        Consent {
            text: "I authorize the Health Connector…".into(),
            accepted_at: at(2, 10),
            source: ConsentSource::Web,
        },
    ));
    mandate.record_notice(3, cents(20_000), date(2027, 1, 17));
    mandate.record_attempt(3, 1);
    account.mandates = vec![mandate];
    account.plans = vec![PaymentPlan {
        id: plan_id,
        total: cents(4_000),
        installments: vec![BillId(id(seed, 14))],
        source_bills: vec![(BillId(id(seed, 11)), cents(4_000))],
        status: PlanStatus::Defaulted {
            on: date(2027, 4, 1),
        },
        created_at: at(3, 9),
        created_by: "agent".into(),
    }];
    account.reminders.due_date_reminders = false;
    account
}

fn notice(account: &Account, key: &str) -> Notice {
    Notice {
        kind: NoticeKind::PaymentConfirmation,
        account_id: account.id,
        to: parse(Email::parse("member@example.com")),
        name: "José".into(),
        language: Language::Es,
        dedupe_key: key.into(),
        body: NoticeBody::PaymentConfirmation {
            reference: "7KQM-2XTH-9RB4".into(),
            amount: cents(12_345),
            method: "Visa •••• 4242".into(),
            paid_on: date(2027, 1, 5),
            settles_by: None,
        },
    }
}

fn audit(account: &Account, action: &str, hour: u32) -> AuditEvent {
    account.audit(
        at(5, hour),
        Actor::System {
            job: "conformance".into(),
        },
        "account",
        action,
        "detail",
    )
}

async fn insert(store: &dyn StoreUnderTest, account: Account) -> Account {
    let id = account.id;
    if let Err(e) = store.commit(Changes::account(account)).await {
        panic!("inserting a new account failed: {e}");
    }
    load(store, id).await
}

async fn load(store: &dyn StoreUnderTest, id: AccountId) -> Account {
    match store.load_account(id).await {
        Ok(Some(a)) => a,
        other => panic!("loading account {id} failed: {other:?}"),
    }
}

fn same(stored: &Account, expected: &Account) {
    let mut e = expected.clone();
    e.version = stored.version;
    assert_eq!(
        stored, &e,
        "the store must give back exactly what was committed"
    );
}

/// Every field of every aggregate survives a commit and a load.
pub async fn saves_and_loads_every_aggregate(store: &dyn StoreUnderTest, seed: u32) {
    let account = full_account(seed);
    let stored = insert(store, account.clone()).await;
    same(&stored, &account);
    assert_eq!(
        stored.version, 1,
        "a new account is at version 1 after its first commit"
    );
    let bare = insert(store, {
        let mut b = bare_account(seed + 1);
        b.member = None;
        b.contact_email = None;
        b
    })
    .await;
    assert!(bare.member.is_none() && bare.ledger.bills.is_empty());
    assert_eq!(store.load_account(AccountId(id(seed, 999))).await, Ok(None));
}

/// Later commits write changed bills, payments and collections, and bump the version.
pub async fn later_commits_write_what_changed(store: &dyn StoreUnderTest, seed: u32) {
    let mut a = insert(store, full_account(seed)).await;
    let p = PaymentId(id(seed, 35));
    if let Err(e) = a.ledger.apply_payment_event(
        p,
        PaymentEvent::Settled,
        at(8, 8),
        at(8, 8).date_naive(),
        "late webhook",
    ) {
        panic!("{e}");
    }
    a.ledger.add_bill(Bill {
        id: BillId(id(seed, 16)),
        enrollment_id: EnrollmentId(id(seed, 2)),
        kind: BillKind::Premium,
        coverage_month: month(2027, 4),
        amount: cents(20_000),
        allocated: Money::ZERO,
        transferred: Money::ZERO,
        due_date: date(2027, 3, 23),
        issued_on: date(2027, 3, 2),
        void: false,
        notices: vec![],
        late_fee_assessed: false,
    });
    a.methods.retain(|m| m.removed_at.is_none());
    a.mandates.clear();
    if let Some(m) = a.member.as_mut() {
        m.language = Language::En;
    }
    a.enrollments.retain(|e| e.kind == CoverageKind::Health);
    let expected = a.clone();
    if let Err(e) = store.commit(Changes::account(a)).await {
        panic!("update failed: {e}");
    }
    let stored = load(store, expected.id).await;
    assert_eq!(stored.version, 2);
    // Removed collection members are removed; the ledger keeps every bill and payment.
    same(&stored, &expected);

    // Every bill that holds money voided: allocation rows go, or move to other bills.
    let mut again = stored.clone();
    let held: Vec<BillId> = again
        .ledger
        .bills
        .iter()
        .filter(|b| !b.allocated.is_zero())
        .map(|b| b.id)
        .collect();
    assert!(!held.is_empty(), "the sample has allocated bills");
    for b in held {
        if let Err(e) = again.ledger.void_bill(b) {
            panic!("{e}");
        }
    }
    let expected = again.clone();
    if let Err(e) = store.commit(Changes::account(again)).await {
        panic!("update failed: {e}");
    }
    let stored = load(store, expected.id).await;
    same(&stored, &expected);
    let rows = |a: &Account| -> Vec<(PaymentId, BillId)> {
        a.ledger
            .payments
            .iter()
            .flat_map(|p| p.allocations.iter().map(move |al| (p.id, al.bill_id)))
            .collect()
    };
    assert_eq!(
        rows(&stored),
        rows(&expected),
        "exactly the new allocation rows"
    );
}

/// The member and the small collections are written row by row as they changed since the load
/// (or since the last commit, for an account carried on): a row changed in place, rows moved,
/// a commit that changes none of them, and one carried on from a commit without a reload.
pub async fn small_collections_write_only_what_changed(store: &dyn StoreUnderTest, seed: u32) {
    let mut a = insert(store, full_account(seed)).await;
    // In place: the dental subsidy, a method's removal mark; moved: the enrollments swap.
    if let Some(e) = a
        .enrollments
        .iter_mut()
        .find(|e| e.kind == CoverageKind::Dental)
    {
        e.change_subsidy(cents(500), month(2027, 6));
    }
    if let Some(m) = a.methods.first_mut() {
        m.removed_at = Some(at(9, 9));
    }
    a.enrollments.reverse();
    let expected = a.clone();
    if let Err(e) = store.commit(Changes::account(a)).await {
        panic!("update failed: {e}");
    }
    let mut stored = load(store, expected.id).await;
    same(&stored, &expected);
    // Nothing of the collections changes: they stay as they are.
    stored.reminders.due_date_reminders = !stored.reminders.due_date_reminders;
    let expected = stored.clone();
    if let Err(e) = store.commit(Changes::account(stored)).await {
        panic!("update failed: {e}");
    }
    let stored = load(store, expected.id).await;
    same(&stored, &expected);
    // Carried on after a commit, as a use case does without reading again.
    let mut carried = stored.clone();
    if let Err(e) = store.commit(Changes::account(stored)).await {
        panic!("update failed: {e}");
    }
    carried.version += 1;
    carried.remember_stored();
    if let Some(m) = carried.member.as_mut() {
        m.language = Language::Es;
    }
    carried.plans.clear();
    carried.contact_email = Some(parse(Email::parse(&format!("carried{seed}@example.com"))));
    let expected = carried.clone();
    if let Err(e) = store.commit(Changes::account(carried)).await {
        panic!("a commit carried on from the last one failed: {e}");
    }
    same(&load(store, expected.id).await, &expected);
    // Carried on again with nothing of the header changed: the header written before stays.
    let mut again = expected;
    again.version += 1;
    again.remember_stored();
    if let Some(e) = again.enrollments.first_mut() {
        e.change_subsidy(cents(700), month(2027, 7));
    }
    let expected = again.clone();
    if let Err(e) = store.commit(Changes::account(again)).await {
        panic!("a second commit carried on failed: {e}");
    }
    same(&load(store, expected.id).await, &expected);
}

/// A way to make a second login clash with the first, and the rule it breaks.
type Clash = (&'static str, Box<dyn Fn(&mut Member)>, Unique);

/// Usernames (whatever their case), login emails and SSN digests belong to one account.
pub async fn logins_are_unique(store: &dyn StoreUnderTest, seed: u32) {
    insert(store, bare_account(seed)).await;
    let clash = |f: &dyn Fn(&mut Member)| {
        let mut b = bare_account(seed + 1);
        if let Some(m) = b.member.as_mut() {
            f(m);
        }
        b
    };
    let cases: [Clash; 3] = [
        (
            "username in other case",
            Box::new(move |m| m.username = parse(Username::parse(&format!("uSeR{seed}")))),
            Unique::Username,
        ),
        (
            "email",
            Box::new(move |m| m.email = parse(Email::parse(&format!("member{seed}@example.com")))),
            Unique::Email,
        ),
        (
            "ssn digest",
            Box::new(move |m| {
                m.ssn_digest = crate::account::LookupDigest(format!("member-digest-{seed}"))
            }),
            Unique::Ssn,
        ),
    ];
    for (what, f, unique) in cases {
        let r = store.commit(Changes::account(clash(&*f))).await;
        assert_eq!(
            r,
            Err(StoreError::Duplicate(unique)),
            "a second login with the same {what}"
        );
        assert_eq!(
            store.load_account(AccountId(id(seed + 1, 1))).await,
            Ok(None),
            "nothing written"
        );
    }
    // Adding a login to an existing account is checked the same way.
    let mut other = bare_account(seed + 2);
    other.member = None;
    let mut other = insert(store, other).await;
    other.member = clash(&*Box::new(move |m: &mut Member| {
        m.username = parse(Username::parse(&format!("USER{seed}")))
    }))
    .member;
    assert_eq!(
        store.commit(Changes::account(other)).await,
        Err(StoreError::Duplicate(Unique::Username))
    );
}

/// Account numbers, payment references and premium bills per enrollment and month are unique.
pub async fn numbers_references_and_bills_are_unique(store: &dyn StoreUnderTest, seed: u32) {
    let first = insert(store, full_account(seed)).await;
    let mut same_number = bare_account(seed + 1);
    same_number.member = None;
    same_number.number = first.number.clone();
    assert_eq!(
        store.commit(Changes::account(same_number)).await,
        Err(StoreError::Duplicate(Unique::AccountNumber))
    );

    let mut other = bare_account(seed + 2);
    other.member = None;
    let mut other = insert(store, other).await;
    let mut p = first
        .ledger
        .payments
        .first()
        .cloned()
        .unwrap_or_else(|| panic!("sample has payments"));
    p.id = PaymentId(id(seed + 2, 30));
    p.allocations.clear();
    other.ledger.add_payment(p);
    assert_eq!(
        store.commit(Changes::account(other.clone())).await,
        Err(StoreError::Duplicate(Unique::PaymentReference))
    );

    let mut again = load(store, first.id).await;
    let mut dup = again
        .ledger
        .bills
        .iter()
        .find(|b| b.kind == BillKind::Premium)
        .cloned()
        .unwrap_or_else(|| panic!("sample has a premium bill"));
    dup.id = BillId(id(seed, 17));
    dup.allocated = Money::ZERO;
    again.ledger.add_bill(dup);
    let r = store.commit(Changes::account(again)).await;
    assert_eq!(
        r,
        Err(StoreError::Duplicate(Unique::Bill)),
        "one premium bill per enrollment and month"
    );
}

/// Two writers that loaded the same version cannot both commit.
pub async fn two_writers_cannot_both_win(store: &dyn StoreUnderTest, seed: u32) {
    let a = insert(store, bare_account(seed)).await;
    let mut w1 = a.clone();
    let mut w2 = a.clone();
    w1.reminders.due_date_reminders = false;
    w2.contact_email = None;
    assert_eq!(store.commit(Changes::account(w1)).await, Ok(()));
    assert_eq!(
        store.commit(Changes::account(w2)).await,
        Err(StoreError::Conflict)
    );
    let stored = load(store, a.id).await;
    assert!(
        !stored.reminders.due_date_reminders && stored.contact_email.is_some(),
        "the first writer's change stands"
    );
    // Inserting an id that exists is a conflict too, never an overwrite.
    let mut fresh = bare_account(seed);
    fresh.version = 0;
    assert!(store.commit(Changes::account(fresh)).await.is_err());
    assert_eq!(load(store, a.id).await.version, 2);
}

/// A commit that breaks a rule writes nothing: not the account, not audit, not the outbox.
pub async fn a_failed_commit_writes_nothing(store: &dyn StoreUnderTest, seed: u32) {
    let a = insert(store, bare_account(seed)).await;
    let record = |key: &str| IdempotencyRecord {
        scope: format!("account:{}", a.id),
        key: key.into(),
        request_digest: "d1".into(),
        payment_id: PaymentId(id(seed, 30)),
        account_id: a.id,
        created_at: at(5, 12),
    };
    let mut first = Changes::default();
    first.idempotency.push(record("k1"));
    assert_eq!(store.commit(first).await, Ok(()));
    let mut changed = a.clone();
    changed.reminders.due_date_reminders = false;
    let mut doomed = Changes::account(changed);
    doomed.audit.push(audit(&a, "doomed", 1));
    doomed.outbox.push(notice(&a, &format!("doomed-{seed}")));
    doomed.put_sessions.push(session(seed, a.id, "doomed"));
    doomed.idempotency.push(record("k1"));
    assert_eq!(
        store.commit(doomed).await,
        Err(StoreError::Duplicate(Unique::IdempotencyKey))
    );
    let stored = load(store, a.id).await;
    assert_eq!(stored.version, a.version);
    assert!(stored.reminders.due_date_reminders);
    assert_eq!(store.audit_trail(a.id).await.map(|t| t.len()), Ok(0));
    assert!(
        store
            .session(TokenDigest::of("doomed"))
            .await
            .ok()
            .flatten()
            .is_none()
    );
    let pending = store.pending_messages(10_000).await.unwrap_or_default();
    assert!(
        !pending
            .iter()
            .any(|m| m.notice.dedupe_key == format!("doomed-{seed}"))
    );
}

/// Audit entries are appended and read back in order, with every field.
pub async fn audit_log_is_appended_in_order(store: &dyn StoreUnderTest, seed: u32) {
    let a = insert(store, bare_account(seed)).await;
    let mut c1 = Changes::default();
    c1.audit.push(audit(&a, "first", 1));
    c1.audit.push(AuditEvent {
        actor: Actor::Agent {
            id: AgentId(id(seed, 99)),
        },
        ..audit(&a, "second", 2)
    });
    assert_eq!(store.commit(c1).await, Ok(()));
    let mut c2 = Changes::default();
    c2.audit.push(AuditEvent {
        actor: Actor::Gateway {
            event_id: Some("evt_9".into()),
        },
        ..audit(&a, "third", 3)
    });
    assert_eq!(store.commit(c2).await, Ok(()));
    let trail = store.audit_trail(a.id).await.unwrap_or_default();
    let actions: Vec<&str> = trail.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["first", "second", "third"]);
    assert_eq!(
        trail.get(1).map(|e| e.actor.clone()),
        Some(Actor::Agent {
            id: AgentId(id(seed, 99))
        })
    );
    assert_eq!(trail.first(), Some(&audit(&a, "first", 1)));
}

/// Notices commit with their change, are de-duplicated, and move through delivery.
pub async fn outbox_commits_with_its_change_and_delivers_once(
    store: &dyn StoreUnderTest,
    seed: u32,
) {
    let a = insert(store, bare_account(seed)).await;
    let k1 = format!("ob-{seed}-1");
    let k2 = format!("ob-{seed}-2");
    let mut changed = a.clone();
    changed.reminders.due_date_reminders = false;
    let mut c = Changes::account(changed);
    c.outbox.push(notice(&a, &k1));
    c.outbox.push(notice(&a, &k2));
    assert_eq!(store.commit(c).await, Ok(()));
    let mut again = Changes::default();
    again.outbox.push(notice(&a, &k1));
    assert_eq!(
        store.commit(again).await,
        Ok(()),
        "a repeated notice is skipped, not an error"
    );
    let mine = |ms: Vec<crate::ports::OutboxMessage>| {
        ms.into_iter()
            .filter(|m| m.notice.account_id == a.id)
            .collect::<Vec<_>>()
    };
    let pending = mine(store.pending_messages(10_000).await.unwrap_or_default());
    assert_eq!(pending.len(), 2);
    assert_eq!(
        pending.first().map(|m| m.notice.clone()),
        Some(notice(&a, &k1))
    );

    let now = at(10, 10);
    let claimed = mine(
        store
            .claim_messages("w1".into(), 10_000, now, now + Duration::minutes(5))
            .await
            .unwrap_or_default(),
    );
    assert_eq!(claimed.len(), 2);
    let other = mine(
        store
            .claim_messages("w2".into(), 10_000, now, now + Duration::minutes(5))
            .await
            .unwrap_or_default(),
    );
    assert!(other.is_empty(), "leased messages are not claimed twice");
    let (m1, m2) = match (claimed.first(), claimed.get(1)) {
        (Some(x), Some(y)) => (x.id, y.id),
        _ => panic!("two messages"),
    };
    assert_eq!(store.mark_sent(m1, "<id@portal>".into(), now).await, Ok(()));
    assert_eq!(
        store
            .mark_failed(
                m2,
                "4.2.0 busy".into(),
                Some(now + Duration::minutes(1)),
                now
            )
            .await,
        Ok(())
    );
    let later = now + Duration::minutes(2);
    let retry = mine(
        store
            .claim_messages("w2".into(), 10_000, later, later + Duration::minutes(5))
            .await
            .unwrap_or_default(),
    );
    assert_eq!(
        retry.iter().map(|m| (m.id, m.attempts)).collect::<Vec<_>>(),
        vec![(m2, 1)],
        "sent ones never come back"
    );
    assert_eq!(
        store
            .mark_failed(m2, "5.1.1 no such user".into(), None, later)
            .await,
        Ok(())
    );
    let dead = mine(store.dead_letters(10_000).await.unwrap_or_default());
    assert_eq!(dead.iter().map(|m| m.id).collect::<Vec<_>>(), vec![m2]);
    assert!(mine(store.pending_messages(10_000).await.unwrap_or_default()).is_empty());
    assert_eq!(store.requeue(m2, later).await, Ok(true));
    assert_eq!(
        store.requeue(m2, later).await,
        Ok(false),
        "only parked messages are requeued"
    );
    let back = mine(
        store
            .claim_messages("w3".into(), 10_000, later, later + Duration::minutes(5))
            .await
            .unwrap_or_default(),
    );
    assert_eq!(back.iter().map(|m| m.id).collect::<Vec<_>>(), vec![m2]);
    assert_eq!(
        back.first().map(|m| m.attempts),
        Some(0),
        "a requeued message gets a fresh set of attempts"
    );
}

/// Idempotency records are found by scope and key and never overwritten.
pub async fn idempotency_records_are_kept_once(store: &dyn StoreUnderTest, seed: u32) {
    let a = insert(store, bare_account(seed)).await;
    let rec = IdempotencyRecord {
        scope: format!("account:{}", a.id),
        key: "Key-1".into(),
        request_digest: "digest-a".into(),
        payment_id: PaymentId(id(seed, 30)),
        account_id: a.id,
        created_at: at(5, 12),
    };
    let mut c = Changes::default();
    c.idempotency.push(rec.clone());
    assert_eq!(store.commit(c).await, Ok(()));
    assert_eq!(
        store
            .idempotency_record(rec.scope.clone(), "Key-1".into())
            .await,
        Ok(Some(rec.clone()))
    );
    assert_eq!(
        store
            .idempotency_record(rec.scope.clone(), "key-1".into())
            .await,
        Ok(None),
        "keys are case-sensitive"
    );
    let mut dup = Changes::default();
    dup.idempotency.push(IdempotencyRecord {
        request_digest: "digest-b".into(),
        ..rec.clone()
    });
    assert_eq!(
        store.commit(dup).await,
        Err(StoreError::Duplicate(Unique::IdempotencyKey))
    );
    assert_eq!(
        store
            .idempotency_record(rec.scope.clone(), "Key-1".into())
            .await,
        Ok(Some(rec.clone())),
        "never overwritten"
    );
    let mut other_scope = Changes::default();
    other_scope.idempotency.push(IdempotencyRecord {
        scope: format!("guest:{}", a.id),
        ..rec
    });
    assert_eq!(store.commit(other_scope).await, Ok(()));
}

/// Accounts and payments are found by every lookup; ids page in order.
pub async fn lookups_find_accounts_and_payments(store: &dyn StoreUnderTest, seed: u32) {
    let a = insert(store, full_account(seed)).await;
    let found = |by| async { store.find_account(by).await };
    assert_eq!(
        found(AccountLookup::Number(a.number.clone())).await,
        Ok(Some(a.id))
    );
    assert_eq!(
        found(AccountLookup::Username(format!("user{seed}"))).await,
        Ok(Some(a.id))
    );
    assert_eq!(
        found(AccountLookup::Email(format!("member{seed}@example.com"))).await,
        Ok(Some(a.id))
    );
    assert_eq!(
        found(AccountLookup::MemberSsn(crate::account::LookupDigest(
            format!("member-digest-{seed}")
        )))
        .await,
        Ok(Some(a.id))
    );
    assert_eq!(
        found(AccountLookup::Username("nobody-at-all".into())).await,
        Ok(None)
    );
    let p = PaymentId(id(seed, 31));
    assert_eq!(
        store
            .find_payment(PaymentLookup::Reference(reference(seed, 31)))
            .await,
        Ok(Some((a.id, p)))
    );
    assert_eq!(
        store
            .find_payment(PaymentLookup::GatewayId(format!("pi_{seed}_31")))
            .await,
        Ok(Some((a.id, p)))
    );
    assert_eq!(
        store.find_payment(PaymentLookup::Id(p)).await,
        Ok(Some((a.id, p)))
    );
    assert_eq!(
        store
            .find_payment(PaymentLookup::Id(PaymentId(id(seed, 998))))
            .await,
        Ok(None)
    );
    let hits = store
        .search_accounts("núñez".into(), 1000)
        .await
        .unwrap_or_default();
    assert!(hits.contains(&a.id), "search by name, any case");
    let hits = store
        .search_accounts(format!("member{seed}@"), 1000)
        .await
        .unwrap_or_default();
    assert_eq!(hits, vec![a.id]);
    // Paging: every id once, in order.
    for n in 1..=4 {
        let mut b = bare_account(seed + n);
        b.member = None;
        insert(store, b).await;
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.account_ids(after, 2).await.unwrap_or_default();
        let Some(last) = page.last().copied() else {
            break;
        };
        assert!(page.len() <= 2);
        seen.extend(page);
        after = Some(last);
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "ids page in order without repeats");
    for n in 0..=4 {
        assert!(seen.contains(&AccountId(id(seed + n, 1))));
    }
}

fn session(seed: u32, account: AccountId, token: &str) -> Session {
    Session {
        id: SessionId(id(seed, 70 + u32::try_from(token.len()).unwrap_or(0))),
        digest: TokenDigest::of(token),
        principal: Principal::Member {
            account_id: account,
        },
        created_at: at(5, 9),
        last_seen_at: at(5, 10),
    }
}

/// Sessions, reset tokens and throttles round-trip; a reset token is consumed once, and the
/// account's other unused tokens end with it (another account's stay).
pub async fn sessions_tokens_and_throttles(store: &dyn StoreUnderTest, seed: u32) {
    let a = insert(store, bare_account(seed)).await;
    let b = insert(store, bare_account(seed + 1)).await;
    let t1 = format!("s1-{seed}");
    let t2 = format!("s22-{seed}");
    let agent_token = format!("agent-{seed}");
    let mut c = Changes::default();
    c.put_sessions.push(session(seed, a.id, &t1));
    c.put_sessions.push(session(seed, a.id, &t2));
    c.put_sessions.push(Session {
        principal: Principal::Agent {
            agent_id: AgentId(id(seed, 99)),
        },
        ..session(seed, a.id, &agent_token)
    });
    let reset = ResetToken {
        digest: TokenDigest::of(&format!("reset-{seed}")),
        account_id: a.id,
        expires_at: at(5, 11),
        used_at: None,
    };
    c.put_reset_tokens.push(reset.clone());
    let sibling = ResetToken {
        digest: TokenDigest::of(&format!("reset-sibling-{seed}")),
        ..reset.clone()
    };
    let elsewhere = ResetToken {
        digest: TokenDigest::of(&format!("reset-elsewhere-{seed}")),
        account_id: b.id,
        ..reset.clone()
    };
    c.put_reset_tokens.push(sibling.clone());
    c.put_reset_tokens.push(elsewhere.clone());
    let throttle = LoginThrottle {
        key: format!("user{seed}"),
        failures: 3,
        window_started_at: at(5, 9),
        locked_until: Some(at(5, 10)),
    };
    c.put_throttles.push(throttle.clone());
    assert_eq!(store.commit(c).await, Ok(()));
    assert_eq!(
        store.session(TokenDigest::of(&t1)).await,
        Ok(Some(session(seed, a.id, &t1)))
    );
    assert_eq!(
        store.reset_token(reset.digest.clone()).await,
        Ok(Some(reset.clone()))
    );
    assert_eq!(
        store.login_throttle(throttle.key.clone()).await,
        Ok(Some(throttle.clone()))
    );

    let mut touch = session(seed, a.id, &t1);
    touch.last_seen_at = at(5, 11);
    let cleared = LoginThrottle {
        failures: 0,
        locked_until: None,
        ..throttle.clone()
    };
    let mut c = Changes::default();
    c.put_sessions.push(touch.clone());
    c.put_throttles.push(cleared.clone());
    c.delete_sessions.push(TokenDigest::of(&t2));
    assert_eq!(store.commit(c).await, Ok(()));
    assert_eq!(store.session(TokenDigest::of(&t1)).await, Ok(Some(touch)));
    assert_eq!(store.session(TokenDigest::of(&t2)).await, Ok(None));
    assert_eq!(
        store.login_throttle(throttle.key.clone()).await,
        Ok(Some(cleared))
    );

    let use_it = Changes {
        consume_reset_token: Some((reset.digest.clone(), at(5, 10))),
        end_reset_tokens_of: Some((a.id, at(5, 10))),
        delete_all_sessions_of: Some(a.id),
        ..Changes::default()
    };
    assert_eq!(store.commit(use_it).await, Ok(()));
    let used_at = |digest: TokenDigest| async move {
        store
            .reset_token(digest)
            .await
            .ok()
            .flatten()
            .and_then(|t| t.used_at)
    };
    assert_eq!(used_at(reset.digest.clone()).await, Some(at(5, 10)));
    assert_eq!(
        used_at(sibling.digest.clone()).await,
        Some(at(5, 10)),
        "the account's other links end with the reset"
    );
    assert_eq!(
        used_at(elsewhere.digest.clone()).await,
        None,
        "another account's link is left alone"
    );
    assert_eq!(
        store.session(TokenDigest::of(&t1)).await,
        Ok(None),
        "a reset ends the member's sessions"
    );
    assert!(
        store
            .session(TokenDigest::of(&agent_token))
            .await
            .ok()
            .flatten()
            .is_some(),
        "other principals keep theirs"
    );
    let again = Changes {
        consume_reset_token: Some((reset.digest.clone(), at(5, 11))),
        ..Changes::default()
    };
    assert_eq!(
        store.commit(again).await,
        Err(StoreError::Duplicate(Unique::ResetTokenUse))
    );
    let unknown = Changes {
        consume_reset_token: Some((TokenDigest::of("never issued"), at(5, 11))),
        ..Changes::default()
    };
    assert_eq!(
        store.commit(unknown).await,
        Err(StoreError::Duplicate(Unique::ResetTokenUse))
    );
}

/// Work is planned once as chunks of accounts, each chunk claimed by one worker at a time and
/// never again once finished, and the chunks cover every account exactly once. (It counts
/// every account in the store, so it needs a store no other check writes to meanwhile.)
pub async fn work_is_claimed_once(store: &dyn StoreUnderTest, seed: u32) {
    let mut ours = Vec::new();
    for n in 0..5 {
        let mut b = bare_account(seed + n);
        b.member = None;
        ours.push(b.id);
        insert(store, b).await;
    }
    let everyone = store.account_ids(None, 1_000_000).await.unwrap_or_default();
    let run = JobRun {
        job: format!("conformance-{seed}"),
        period: "2027-01-05".into(),
    };
    let planned = store.plan_run(run.clone(), 2).await.unwrap_or_default();
    assert_eq!(
        planned,
        u64::try_from(everyone.len().div_ceil(2)).unwrap_or(0),
        "chunks of two accounts"
    );
    assert_eq!(
        store.plan_run(run.clone(), 2).await,
        Ok(0),
        "planning twice adds nothing"
    );
    let now = at(5, 12);
    let lease = now + Duration::minutes(5);
    let first = store
        .claim(run.clone(), "w1".into(), 2, now, lease)
        .await
        .unwrap_or_default();
    assert_eq!(first.len(), 2);
    let second = store
        .claim(run.clone(), "w2".into(), 100_000, now, lease)
        .await
        .unwrap_or_default();
    assert!(
        first.iter().all(|c| !second.contains(c)),
        "no chunk is claimed by two workers"
    );
    let mut covered = Vec::new();
    for c in first.iter().chain(&second) {
        assert!(c.first <= c.last);
        let accounts = store.load_chunk(*c).await.unwrap_or_default();
        let ids: Vec<AccountId> = accounts.iter().map(|a| a.id).collect();
        assert!(!ids.is_empty() && ids.len() <= 2, "{c:?} holds {ids:?}");
        for a in &accounts {
            let alone = store.load_account(a.id).await.ok().flatten();
            assert_eq!(alone.as_ref(), Some(a), "a chunk loads accounts whole");
        }
        covered.extend(ids);
    }
    covered.sort();
    assert_eq!(covered, everyone, "the chunks cover every account once");
    assert!(ours.iter().all(|id| covered.contains(id)));
    assert_eq!(
        store.claim(run.clone(), "w3".into(), 100, now, lease).await,
        Ok(vec![])
    );
    assert_eq!(store.finish(run.clone(), second.clone(), now).await, Ok(()));
    assert_eq!(
        store.left(run.clone()).await,
        Ok(crate::ports::WorkLeft {
            chunks: 2,
            leased_until: Some(lease),
        }),
        "what is left: w1's two chunks, held until its lease ends"
    );
    // w1 crashed: after its lease its chunks come back; finished ones never do.
    let later = lease + Duration::seconds(1);
    let mut back = store
        .claim(
            run.clone(),
            "w3".into(),
            100,
            later,
            later + Duration::minutes(5),
        )
        .await
        .unwrap_or_default();
    back.sort();
    let mut expected = first.clone();
    expected.sort();
    assert_eq!(back, expected);
    assert_eq!(store.finish(run.clone(), back, later).await, Ok(()));
    assert_eq!(
        store.left(run.clone()).await,
        Ok(crate::ports::WorkLeft::default()),
        "nothing is left of a finished run"
    );
    let much_later = later + Duration::hours(1);
    assert_eq!(
        store
            .claim(run.clone(), "w4".into(), 100, much_later, much_later)
            .await,
        Ok(vec![])
    );
    let other_period = JobRun {
        period: "2027-01-06".into(),
        ..run
    };
    assert_eq!(
        store.plan_run(other_period, 1000).await,
        Ok(1),
        "each period is its own run"
    );
}

/// Several accounts load at once, in id order, and bills issued to many accounts are written
/// in one go, checked against each account's version.
pub async fn bills_are_issued_in_batches(store: &dyn StoreUnderTest, seed: u32) {
    let mut ids = Vec::new();
    for n in 0..3 {
        let mut b = bare_account(seed + n);
        b.member = None;
        ids.push(b.id);
        insert(store, b).await;
    }
    let mut asked = ids.clone();
    asked.reverse();
    asked.push(AccountId(Uuid::from_u128(u128::from(seed) << 64 | 0xdead)));
    let loaded = store.load_accounts(asked).await.unwrap_or_default();
    let ids = &ids;
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(
        loaded.iter().map(|a| a.id).collect::<Vec<_>>(),
        sorted,
        "every existing account, in id order; unknown ids left out"
    );
    let issue = |a: &Account, m: u32| {
        let n = ids.iter().position(|x| *x == a.id).unwrap_or(0);
        let n = u32::try_from(n).unwrap_or(0);
        let bill = Bill {
            id: BillId(id(seed + n, 100 + m)),
            enrollment_id: EnrollmentId(id(seed + n, 2)),
            kind: BillKind::Premium,
            coverage_month: month(2027, m),
            amount: cents(30_000),
            allocated: Money::ZERO,
            transferred: Money::ZERO,
            due_date: date(2027, m - 1, 23),
            issued_on: date(2027, m - 1, 5),
            void: false,
            notices: vec![BillNotice::Issued],
            late_fee_assessed: false,
        };
        IssuedBills {
            account: a.id,
            version: a.version,
            bills: vec![(a.ledger.bills.len(), bill)],
            audit: vec![audit(a, "bill.issued", 12)],
            outbox: vec![notice(a, &format!("batch-{seed}-{n}-{m}"))],
        }
    };
    let batch: Vec<IssuedBills> = loaded.iter().map(|a| issue(a, 3)).collect();
    assert_eq!(store.issue_bills(batch.clone()).await, Ok(()));
    for (a, b) in loaded.iter().zip(&batch) {
        let now = load(store, a.id).await;
        assert_eq!(now.version, a.version + 1);
        assert_eq!(
            now.ledger.bills,
            b.bills.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>()
        );
    }
    let trail = store
        .audit_trail(sorted.first().copied().unwrap_or(AccountId(Uuid::nil())))
        .await
        .unwrap_or_default();
    assert!(trail.iter().any(|e| e.action == "bill.issued"));
    let queued = store.pending_messages(10_000).await.unwrap_or_default();
    for n in 0..3 {
        let key = format!("batch-{seed}-{n}-3");
        assert_eq!(
            queued.iter().filter(|m| m.notice.dedupe_key == key).count(),
            1,
            "{key} queued once"
        );
    }
    // The same batch again: every account moved, so nothing is written.
    assert_eq!(store.issue_bills(batch).await, Err(StoreError::Conflict));
    // One stale account spoils the batch: the others get nothing either.
    let fresh = store.load_accounts(ids.clone()).await.unwrap_or_default();
    let mut mixed: Vec<IssuedBills> = fresh.iter().map(|a| issue(a, 4)).collect();
    if let Some(m) = mixed.first_mut() {
        m.version -= 1;
    }
    assert_eq!(store.issue_bills(mixed).await, Err(StoreError::Conflict));
    for a in &fresh {
        let now = store.load_account(a.id).await.ok().flatten();
        assert_eq!(now.map(|n| n.version), Some(a.version), "nothing written");
    }
    let queued = store.pending_messages(10_000).await.unwrap_or_default();
    assert!(
        !queued.iter().any(
            |m| m.notice.dedupe_key.starts_with(&format!("batch-{seed}-"))
                && m.notice.dedupe_key.ends_with("-4")
        ),
        "no notice of the failed batch"
    );
}

/// Expands to one `#[tokio::test]` per conformance check. `$make` is an async expression
/// yielding `Option` of something that derefs to a `StoreUnderTest` (a fresh, migrated store);
/// `None` means the store is not available here and the factory has said so.
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(@each $make;
            saves_and_loads_every_aggregate,
            later_commits_write_what_changed,
            small_collections_write_only_what_changed,
            logins_are_unique,
            numbers_references_and_bills_are_unique,
            two_writers_cannot_both_win,
            a_failed_commit_writes_nothing,
            audit_log_is_appended_in_order,
            outbox_commits_with_its_change_and_delivers_once,
            idempotency_records_are_kept_once,
            lookups_find_accounts_and_payments,
            sessions_tokens_and_throttles,
            work_is_claimed_once,
            bills_are_issued_in_batches,
        );
        $crate::store_conformance_tests!(@race $make;
            concurrent_payments_with_one_key_make_one_payment,
            concurrent_runners_plan_once_and_work_each_account_once,
        );
    };
    (@each $make:expr; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                let Some(store) = $make.await else { return };
                let seed = {
                    // A distinct seed per check keeps checks independent on a shared database.
                    let name = stringify!($check);
                    name.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))) % 1_000_000 * 10
                };
                $crate::testing::conformance::$check(&*store, seed).await;
            }
        )+
    };
    (@race $make:expr; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let Some(store) = $make.await else { return };
                let seed = {
                    let name = stringify!($check);
                    name.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))) % 100_000 * 10
                };
                let store: std::sync::Arc<dyn $crate::testing::conformance::StoreUnderTest> = store;
                $crate::testing::races::$check(store, seed).await;
            }
        )+
    };
}

#[cfg(test)]
mod in_memory {
    crate::store_conformance_tests!(async {
        Some(std::sync::Arc::new(crate::testing::InMemoryStore::new()))
    });
}
