//! The demo households: a registered member whose coverage started last month (the first
//! month paid by check, this month's premium due today, so a day without paying starts its
//! grace period and the test clock walks it to termination), and a second household on
//! record that has not registered yet (to try "Create Account"), whose coverage starts next
//! month.

use anyhow::Context;
use chrono::{Datelike, NaiveDate, Utc};
use portal_core::account::{Account, Holder, Member, NewAccount};
use portal_core::billing::BillKind;
use portal_core::calendar::CoverageMonth;
use portal_core::enrollment::{CoverageKind, Enrollment};
use portal_core::identity::{AccountNumber, Email, Language, PersonName, Username};
use portal_core::ids::{AccountId, AgentId, EnrollmentId};
use portal_core::money::Money;
use portal_core::password::Password;
use portal_core::payment::OfflineKind;
use portal_core::ports::{AccountLookup, Changes};
use portal_core::services::OfflinePaymentForm;
use portal_core::services::Portal;

/// The demo member's login.
pub const DEMO_USERNAME: &str = "demo";
/// The demo member's password.
pub const DEMO_PASSWORD: &str = "Sunny-premium-payments-2027";
/// The account number of the household that has not registered.
pub const UNREGISTERED_ACCOUNT: &str = "HC1000002";

fn account(
    portal: &Portal,
    number: &str,
    first: &str,
    last: &str,
    born: NaiveDate,
    ssn: &str,
    start: CoverageMonth,
) -> anyhow::Result<Account> {
    let sealer = &portal.deps().sealer;
    let ids = &portal.deps().ids;
    let health = Enrollment::new(
        EnrollmentId(ids.new_id()),
        CoverageKind::Health,
        "ConnectorCare Plan 2A",
        Money::from_cents(61_200),
        Money::from_cents(41_200),
        start,
    )?;
    let dental = Enrollment::new(
        EnrollmentId(ids.new_id()),
        CoverageKind::Dental,
        "Dental Basic",
        Money::from_cents(3_800),
        Money::ZERO,
        start,
    )?;
    Ok(Account::open(
        AccountId(ids.new_id()),
        NewAccount {
            number: AccountNumber::parse(number)?,
            holder: Holder {
                first_name: PersonName::parse(first)?,
                last_name: PersonName::parse(last)?,
                date_of_birth: born,
                ssn_digest: sealer.lookup_digest(ssn),
                ssn_last4: ssn.get(5..).unwrap_or("").to_owned(),
            },
            contact_email: None,
            enrollments: vec![health, dental],
        },
        Utc::now(),
    ))
}

/// Seeds the demo households once; returns whether anything was created.
pub async fn seed(portal: &Portal) -> anyhow::Result<bool> {
    let store = &portal.deps().store;
    if store
        .find_account(AccountLookup::Username(DEMO_USERNAME.into()))
        .await?
        .is_some()
    {
        return Ok(false);
    }
    let today = portal.deps().clock.today();
    let born = NaiveDate::from_ymd_opt(today.year() - 41, 5, 17).context("date")?;
    let mut demo = account(
        portal,
        "HC1000001",
        "Dana",
        "Rivera",
        born,
        "123456789",
        CoverageMonth::of(today).plus(-1),
    )?;
    let password = Password::new(DEMO_PASSWORD, &[DEMO_USERNAME])?;
    let now = Utc::now();
    demo.member = Some(Member {
        username: Username::parse(DEMO_USERNAME)?,
        email: Email::parse("dana.rivera@example.com")?,
        email_verified_at: Some(now),
        email_code: None,
        password_hash: portal.deps().hasher.hash(&password).await?,
        password_changed_at: now,
        language: Language::En,
        ssn_sealed: portal.deps().sealer.seal("123456789")?,
        ssn_digest: portal.deps().sealer.lookup_digest("123456789"),
        created_at: now,
    });
    let demo_id = demo.id;
    let other = account(
        portal,
        UNREGISTERED_ACCOUNT,
        "María",
        "López",
        NaiveDate::from_ymd_opt(1980, 5, 17).context("date")?,
        "234567890",
        CoverageMonth::of(today).plus(1),
    )?;
    store.commit(Changes::account(demo)).await?;
    store.commit(Changes::account(other)).await?;
    portal.bill_account(demo_id).await?;
    // Last month's binders arrived by check; this month's premiums are due today.
    let binders = Money::sum(
        portal
            .account(demo_id)
            .await?
            .ledger
            .bills
            .iter()
            .filter(|b| b.kind == BillKind::Binder)
            .map(|b| b.amount),
    )?;
    if binders.is_positive() {
        portal
            .record_offline_payment(
                AgentId(uuid::Uuid::from_u128(1)),
                demo_id,
                OfflinePaymentForm {
                    amount: binders,
                    kind: OfflineKind::Check,
                    document_number: Some("1001".into()),
                    received_on: today,
                    idempotency_key: "demo-binder-check".into(),
                },
            )
            .await?;
    }
    Ok(true)
}

/// What to print so someone can try the portal.
pub fn banner(url: &str, sandbox: Option<&str>) -> String {
    let mut s = format!(
        "\nHealth Connector Payment Portal is running at {url}\n\n  Demo login:     username {DEMO_USERNAME}, password {DEMO_PASSWORD}\n  Create Account: account number {UNREGISTERED_ACCOUNT}, María López, born 1980-05-17, SSN 234-56-7890\n  Test card:      4242 4242 4242 4242 (any future expiry, any CVC)\n  Test bank:      routing 110000000, account 000123456789\n"
    );
    s.push_str(&format!(
        "  Support agent:  username {}, password {} at {url}/support/login\n",
        crate::wiring::DEMO_AGENT.0,
        crate::wiring::DEMO_AGENT.1
    ));
    s.push_str(&format!(
        "  Test clock:     move the demo's date forward on {url}/support (as the agent), running every daily job\n"
    ));
    if let Some(sb) = sandbox {
        s.push_str(&format!(
            "  Sandbox gateway: {sb} (publishable key pk_test_sandbox)\n"
        ));
    }
    s.push_str("  Emails are written to data/outbox as .eml files.\n");
    s
}
