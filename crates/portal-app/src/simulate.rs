//! `portal-app simulate`: a deterministic run of the whole portal over simulated months.
//!
//! A synthetic population (card and bank payers; automatic and manual payers; some who pay late
//! or stop paying; some whose cards decline or whose transfers are returned; subsidised and
//! not) lives through the months on a simulated clock, against the sandbox gateway and a real
//! store, with the worker's daily pass run each day. Gateway events reach the
//! portal as the webhook endpoint would deliver them. At the end the month-by-month table is
//! built from the ledgers, every member's ledger invariants are checked, and the totals are
//! reconciled to the cent: billed − collected = outstanding, and what the portal counts as
//! collected is what the gateway holds. The same seed gives the same table.

use crate::config::{Config, Email};
use crate::wiring::{self, App};
use anyhow::{Context, bail};
use chrono::{DateTime, Datelike, Days, Months, NaiveDate, TimeZone, Utc};
use portal_core::account::{Account, Holder, LookupDigest, NewAccount};
use portal_core::billing::BillKind;
use portal_core::calendar::CoverageMonth;
use portal_core::coverage::CoverageState;
use portal_core::enrollment::{CoverageKind, Enrollment};
use portal_core::identity::{AccountNumber, Email as EmailAddress, PersonName};
use portal_core::ids::{AccountId, EnrollmentId, MethodId};
use portal_core::instrument::GatewayToken;
use portal_core::mandate::{AmountRule, ConsentSource, Frequency};
use portal_core::money::Money;
use portal_core::payment::{PaymentChannel, PaymentStatus};
use portal_core::ports::{Changes, Clock};
use portal_core::services::{AutopayForm, MakePayment, PayWith};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// What to simulate.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Households.
    pub members: u32,
    /// Calendar months, starting December 2026 (January 2027's bills).
    pub months: u32,
    /// Seed of the population and its behaviour.
    pub seed: u64,
}

/// One row of the table: what happened in a calendar month.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonthRow {
    /// `YYYY-MM`.
    pub month: String,
    /// Premium bills issued in the month.
    pub bills_issued: u64,
    /// Bills due in the month, paid in full by their due date.
    pub paid_on_time: u64,
    /// Bills due in the month, paid in full after it.
    pub paid_in_grace: u64,
    /// Bills due in the month still open when the simulation ended.
    pub unpaid: u64,
    /// Automatic payments made in the month that went through.
    pub autopay_ok: u64,
    /// Automatic payments made in the month that were declined or failed.
    pub autopay_failed: u64,
    /// Bank transfers made in the month and later returned.
    pub returns: u64,
    /// Enrollments terminated for non-payment in the month.
    pub terminations: u64,
    /// Enrollments cancelled in the month because their binder was not paid.
    pub cancelled_binders: u64,
    /// Money billed (bills issued in the month, less what termination voided).
    pub billed: Money,
    /// Money collected (payments made in the month that count, less refunds).
    pub collected: Money,
    /// Balance of all accounts at the month's end (open bills less credit).
    pub outstanding: Money,
}

/// The simulation's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The options it ran with.
    pub members: u32,
    /// Month by month.
    pub rows: Vec<MonthRow>,
    /// Sum of all bills' payable amounts.
    pub billed: Money,
    /// Sum of all payments' net amounts.
    pub collected: Money,
    /// Sum of all balances at the end.
    pub outstanding: Money,
    /// What the gateway holds: charged (returns excluded) less refunded, in cents.
    pub gateway_net_cents: i64,
    /// Members whose ledger invariants fail, with why.
    pub violations: Vec<String>,
    /// What enrollments cancelled for an unpaid binder still have open (never anything).
    pub owed_by_cancelled: Money,
}

impl Report {
    /// Whether everything reconciles: every ledger's invariants hold, billed − collected =
    /// outstanding, and the portal's collected money is the gateway's.
    pub fn reconciles(&self) -> bool {
        self.violations.is_empty()
            && self.billed.checked_sub(self.collected).ok() == Some(self.outstanding)
            && self.collected.cents() == self.gateway_net_cents
    }

    /// The month-by-month table and the reconciliation, as printed.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<8} {:>6} {:>8} {:>9} {:>7} {:>8} {:>8} {:>8} {:>6} {:>18} {:>14} {:>14} {:>14}",
            "month",
            "bills",
            "on time",
            "in grace",
            "unpaid",
            "autopay",
            "ap fail",
            "returns",
            "terms",
            "cancelled (binder)",
            "billed",
            "collected",
            "outstanding"
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{:<8} {:>6} {:>8} {:>9} {:>7} {:>8} {:>8} {:>8} {:>6} {:>18} {:>14} {:>14} {:>14}",
                r.month,
                r.bills_issued,
                r.paid_on_time,
                r.paid_in_grace,
                r.unpaid,
                r.autopay_ok,
                r.autopay_failed,
                r.returns,
                r.terminations,
                r.cancelled_binders,
                format!("${}", r.billed),
                format!("${}", r.collected),
                format!("${}", r.outstanding)
            );
        }
        let _ = writeln!(
            out,
            "totals: billed ${}, collected ${}, outstanding ${}",
            self.billed, self.collected, self.outstanding
        );
        let balanced = self.billed.checked_sub(self.collected).ok() == Some(self.outstanding);
        let _ = writeln!(
            out,
            "billed − collected = outstanding: {}",
            if balanced { "yes" } else { "NO" }
        );
        let _ = writeln!(
            out,
            "collected = gateway charged − refunded (${}): {}",
            Money::from_cents(self.gateway_net_cents),
            if self.collected.cents() == self.gateway_net_cents {
                "yes"
            } else {
                "NO"
            }
        );
        let _ = writeln!(
            out,
            "ledger invariants hold for {} of {} members",
            u64::from(self.members).saturating_sub(self.violations.len() as u64),
            self.members
        );
        let _ = writeln!(
            out,
            "owed on enrollments cancelled for an unpaid binder: ${}",
            self.owed_by_cancelled
        );
        for v in self.violations.iter().take(10) {
            let _ = writeln!(out, "  {v}");
        }
        out
    }
}

/// SplitMix64: a small, well-mixed deterministic generator (no dependency, same on every
/// platform).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The simulated clock: noon UTC of the simulated day.
struct SimClock(Mutex<NaiveDate>);

impl SimClock {
    fn set(&self, day: NaiveDate) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = day;
    }
}

impl Clock for SimClock {
    fn now(&self) -> DateTime<Utc> {
        let day = self.today();
        Utc.with_ymd_and_hms(day.year(), day.month(), day.day(), 12, 0, 0)
            .single()
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
    }
    fn today(&self) -> NaiveDate {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Payer {
    /// Pays by hand this many days before the due date.
    OnTime(u64),
    /// Pays by hand this many days after the due date.
    Late(u64),
    /// Pays on time until this simulated month (0-based), then stops.
    Stops { on_time: u64, from_month: u32 },
    /// Automatic payments.
    Autopay,
}

#[derive(Debug, Clone)]
struct Household {
    id: AccountId,
    payer: Payer,
    bank: bool,
    /// A card that declines or an account whose transfers are returned.
    troubled: bool,
    method: Option<MethodId>,
}

const CARD_OK: &str = "4242424242424242";
const CARD_DECLINES: &str = "4000000000000002";
const BANK_OK: &str = "000123456789";
const BANK_RETURNS: &str = "000000000001";

/// The population for `seed`.
fn population(opts: &Options, first: NaiveDate) -> anyhow::Result<(Vec<Household>, Vec<Account>)> {
    let mut rng = Rng(opts.seed);
    let mut households = Vec::new();
    let mut accounts = Vec::new();
    for n in 0..opts.members {
        let gross = 30_000 + i64::try_from(rng.below(60_000))?;
        let subsidised = rng.below(100) < 65;
        let credit = if subsidised {
            gross * i64::try_from(40 + rng.below(55))? / 100
        } else {
            0
        };
        let kind = rng.below(100);
        let bank = matches!(kind, 30..=44 | 80..=99);
        let payer = match kind {
            0..=44 => Payer::Autopay,
            _ => match rng.below(100) {
                0..=69 => Payer::OnTime(rng.below(11)),
                70..=91 => Payer::Late(1 + rng.below(45)),
                _ => Payer::Stops {
                    on_time: rng.below(8),
                    from_month: 1 + u32::try_from(rng.below(u64::from(opts.months.max(2) - 1)))?,
                },
            },
        };
        let troubled = rng.below(100) < 6;
        // Ids from the seed, so accounts are worked in the same order every time.
        let id = AccountId(uuid::Uuid::from_u64_pair(opts.seed, u64::from(n) + 1));
        let enrollment = Enrollment::new(
            EnrollmentId(uuid::Uuid::from_u64_pair(
                opts.seed,
                (1 << 32) + u64::from(n),
            )),
            CoverageKind::Health,
            "ConnectorCare 2A",
            Money::from_cents(gross),
            Money::from_cents(credit),
            CoverageMonth::of(first),
        )
        .map_err(|e| anyhow::anyhow!("enrollment: {e}"))?;
        accounts.push(Account::open(
            id,
            NewAccount {
                number: AccountNumber::parse(&format!("SIM{n:07}"))
                    .map_err(|e| anyhow::anyhow!("account number: {e}"))?,
                holder: Holder {
                    first_name: PersonName::parse("Sam")
                        .map_err(|e| anyhow::anyhow!("name: {e}"))?,
                    last_name: PersonName::parse("Member")
                        .map_err(|e| anyhow::anyhow!("name: {e}"))?,
                    date_of_birth: NaiveDate::from_ymd_opt(1980, 1, 1).unwrap_or_default(),
                    ssn_digest: LookupDigest(format!("sim-{}-{n}", opts.seed)),
                    ssn_last4: "0000".into(),
                },
                contact_email: Some(
                    EmailAddress::parse(&format!("member{n}@example.com"))
                        .map_err(|e| anyhow::anyhow!("email: {e}"))?,
                ),
                enrollments: vec![enrollment],
            },
            DateTime::<Utc>::UNIX_EPOCH,
        ));
        households.push(Household {
            id,
            payer,
            bank,
            troubled,
            method: None,
        });
    }
    Ok((households, accounts))
}

/// Runs the simulation in a scratch directory (SQLite unless `database_url` is given).
pub async fn run(opts: Options, database_url: Option<String>) -> anyhow::Result<Report> {
    if !(1..=100_000).contains(&opts.members) {
        bail!("--members must be 1 to 100000");
    }
    if !(1..=60).contains(&opts.months) {
        bail!("--months must be 1 to 60");
    }
    let dir = std::env::temp_dir().join(format!(
        "portal-simulate-{}-{}",
        std::process::id(),
        opts.seed
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let result = simulate(opts, database_url, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn simulate(
    opts: Options,
    database_url: Option<String>,
    dir: &std::path::Path,
) -> anyhow::Result<Report> {
    let sandbox = portal_sandbox::start(
        portal_sandbox::SandboxConfig::default(),
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    .context("cannot start the sandbox gateway")?;
    let mut config = Config::load(None)?;
    config.data_dir = dir.to_path_buf();
    config.database_url =
        database_url.unwrap_or_else(|| format!("sqlite://{}", dir.join("simulation.db").display()));
    config.email = Email::Files(dir.join("outbox"));
    config.gateway_url = Some(sandbox.base_url());
    config.gateway_secret_key = Some("sk_test_sandbox".into());
    config.webhook_secret = Some("whsec_sandbox".into());
    config.sealing_key = Some("00".repeat(32));
    let first = NaiveDate::from_ymd_opt(2027, 1, 1).context("date")?;
    let start = NaiveDate::from_ymd_opt(2026, 12, 1).context("date")?;
    let end = start
        .checked_add_months(Months::new(opts.months))
        .context("date")?;
    let clock = std::sync::Arc::new(SimClock(Mutex::new(start)));
    let app = wiring::build(&config, clock.clone(), false).await?;
    let (mut households, accounts) = population(&opts, first)?;
    let store = app.db.store();
    for a in accounts {
        store.commit(Changes::account(a)).await?;
    }
    let http = reqwest::Client::new();
    for h in &mut households {
        let token = tokenize(&http, &sandbox.base_url(), h).await?;
        let method = app.portal.add_payment_method(h.id, token).await?;
        h.method = Some(method.id);
        if h.payer == Payer::Autopay {
            let form = AutopayForm {
                method_id: method.id,
                amount_rule: AmountRule::AmountDue,
                cap: None,
                frequency: Frequency::Monthly,
                start_date: NaiveDate::from_ymd_opt(2026, 12, 20).context("date")?,
            };
            let preview = app.portal.preview_autopay(h.id, &form, None).await?;
            app.portal
                .set_up_autopay(h.id, &form, &preview.authorization_text, ConsentSource::Web)
                .await?;
        }
    }
    let mut schedule: BTreeMap<NaiveDate, Vec<usize>> = BTreeMap::new();
    let mut outstanding_at: BTreeMap<String, Money> = BTreeMap::new();
    let mut seen_events = 0;
    let mut day = start;
    while day < end {
        clock.set(day);
        if day > start {
            sandbox.sandbox.advance(chrono::Duration::days(1));
        }
        seen_events = deliver_events(&app, &sandbox.sandbox, seen_events).await?;
        if let Some(due) = schedule.remove(&day) {
            for h in due.into_iter().filter_map(|i| households.get(i)) {
                pay(&app, h, day).await?;
            }
        }
        // The worker's daily pass: bills, reminders, autopay, delinquency, reconciliation.
        let report = app.portal.run_daily().await?;
        if let Some((account, why)) = report.failures.first() {
            bail!("the daily pass failed for account {account} on {day}: {why}");
        }
        if is_billing_day(&app, day) {
            plan_payments(&app, &households, day, start, &mut schedule).await?;
        }
        let tomorrow = day + Days::new(1);
        if tomorrow.month() != day.month() {
            let (_, _, outstanding) = totals(&app).await?;
            outstanding_at.insert(month_label(day), outstanding);
        }
        day = tomorrow;
    }
    // Events of the last day.
    deliver_events(&app, &sandbox.sandbox, seen_events).await?;
    let report = build_report(&app, &opts, start, end, &outstanding_at, &sandbox.sandbox).await?;
    sandbox.stop();
    Ok(report)
}

async fn tokenize(
    http: &reqwest::Client,
    base: &str,
    h: &Household,
) -> anyhow::Result<GatewayToken> {
    let form: Vec<(&str, &str)> = if h.bank {
        vec![
            ("type", "us_bank_account"),
            ("us_bank_account[routing_number]", "110000000"),
            (
                "us_bank_account[account_number]",
                if h.troubled { BANK_RETURNS } else { BANK_OK },
            ),
            ("us_bank_account[account_type]", "checking"),
        ]
    } else {
        vec![
            ("type", "card"),
            (
                "card[number]",
                if h.troubled { CARD_DECLINES } else { CARD_OK },
            ),
            ("card[exp_month]", "12"),
            ("card[exp_year]", "2034"),
        ]
    };
    let reply: serde_json::Value = http
        .post(format!("{base}/v1/payment_methods"))
        .bearer_auth("pk_test_sandbox")
        .form(&form)
        .send()
        .await?
        .json()
        .await?;
    let id = reply
        .get("id")
        .and_then(serde_json::Value::as_str)
        .with_context(|| format!("the sandbox did not tokenize: {reply}"))?;
    GatewayToken::parse(id).map_err(|e| anyhow::anyhow!("token: {e}"))
}

/// Hands the gateway's new events to the portal, as its webhook endpoint would.
async fn deliver_events(
    app: &App,
    sandbox: &portal_sandbox::Sandbox,
    seen: usize,
) -> anyhow::Result<usize> {
    let events = sandbox.events_since(seen);
    for e in &events {
        let payload = serde_json::to_vec(e)?;
        match portal_stripe::webhook::parse(&payload, 4) {
            Ok(event) => {
                app.portal.record_gateway_event(event).await?;
            }
            // Events the portal does not act on.
            Err(portal_stripe::WebhookError::UnknownEvent(_)) => {}
            Err(e) => bail!("a gateway event could not be read: {e}"),
        }
    }
    Ok(seen + events.len())
}

/// After a billing run, each household paying by hand decides when to pay what it now owes.
async fn plan_payments(
    app: &App,
    households: &[Household],
    today: NaiveDate,
    start: NaiveDate,
    schedule: &mut BTreeMap<NaiveDate, Vec<usize>>,
) -> anyhow::Result<()> {
    let month_index = (today.year() - start.year()) * 12 + i32::try_from(today.month())?
        - i32::try_from(start.month())?;
    let month_index = u32::try_from(month_index.max(0))?;
    for (i, h) in households.iter().enumerate() {
        let account = app.portal.account(h.id).await?;
        let Some(due) = account
            .ledger
            .bills
            .iter()
            .filter(|b| b.open_amount().is_positive() && b.kind.is_premium())
            .map(|b| b.due_date)
            .max()
        else {
            continue;
        };
        let when = match h.payer {
            Payer::Autopay => continue,
            Payer::OnTime(d) => due - Days::new(d),
            Payer::Late(d) => due + Days::new(d),
            Payer::Stops {
                on_time,
                from_month,
            } => {
                if month_index >= from_month {
                    continue;
                }
                due - Days::new(on_time)
            }
        };
        schedule.entry(when.max(today)).or_default().push(i);
    }
    Ok(())
}

/// Whether `day` is when bills are issued (the policy's issue day of the month).
fn is_billing_day(app: &App, day: NaiveDate) -> bool {
    app.portal
        .config()
        .billing
        .issue_date(CoverageMonth::of(day).plus(1))
        == day
}

/// A household paying everything it owes with its saved method.
async fn pay(app: &App, h: &Household, day: NaiveDate) -> anyhow::Result<()> {
    let Some(method) = h.method else {
        return Ok(());
    };
    let account = app.portal.account(h.id).await?;
    if !account.amount_due().is_positive() {
        return Ok(());
    }
    app.portal
        .make_payment(MakePayment {
            account_id: h.id,
            amount: None,
            method: PayWith::Saved(method),
            idempotency_key: format!("sim-{}-{day}", h.id),
        })
        .await?;
    Ok(())
}

fn month_label(d: NaiveDate) -> String {
    format!("{:04}-{:02}", d.year(), d.month())
}

/// Every account, loaded in batches.
async fn all_accounts(app: &App) -> anyhow::Result<Vec<Account>> {
    let store = app.db.store();
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let ids = store.account_ids(after, 500).await?;
        let Some(last) = ids.last().copied() else {
            break;
        };
        out.extend(store.load_accounts(ids).await?);
        after = Some(last);
    }
    Ok(out)
}

/// (billed, collected, outstanding) over every account now.
async fn totals(app: &App) -> anyhow::Result<(Money, Money, Money)> {
    let mut billed = Money::ZERO;
    let mut collected = Money::ZERO;
    let mut outstanding = Money::ZERO;
    for a in all_accounts(app).await? {
        for b in &a.ledger.bills {
            billed = billed.checked_add(b.payable())?;
        }
        for p in &a.ledger.payments {
            collected = collected.checked_add(p.net())?;
        }
        outstanding = outstanding.checked_add(a.ledger.balance())?;
    }
    Ok((billed, collected, outstanding))
}

async fn build_report(
    app: &App,
    opts: &Options,
    start: NaiveDate,
    end: NaiveDate,
    outstanding_at: &BTreeMap<String, Money>,
    sandbox: &portal_sandbox::Sandbox,
) -> anyhow::Result<Report> {
    let mut rows: BTreeMap<String, MonthRow> = BTreeMap::new();
    let mut d = start;
    while d < end {
        let label = month_label(d);
        rows.insert(
            label.clone(),
            MonthRow {
                month: label.clone(),
                outstanding: outstanding_at.get(&label).copied().unwrap_or(Money::ZERO),
                ..MonthRow::default()
            },
        );
        d = d.checked_add_months(Months::new(1)).context("date")?;
    }
    let mut violations = Vec::new();
    let mut owed_by_cancelled = Money::ZERO;
    let accounts = all_accounts(app).await?;
    for a in &accounts {
        if let Err(v) = a.ledger.check_invariants() {
            violations.push(format!("{}: {v}", a.number));
        }
        // When each bill was paid in full: the latest day a payment that counts went to it.
        let mut paid_on: BTreeMap<_, NaiveDate> = BTreeMap::new();
        for p in a.ledger.payments.iter().filter(|p| p.counts()) {
            for al in &p.allocations {
                let e = paid_on.entry(al.bill_id).or_insert(p.initiated_on);
                *e = (*e).max(p.initiated_on);
            }
        }
        for b in &a.ledger.bills {
            if let Some(r) = rows.get_mut(&month_label(b.issued_on)) {
                r.billed = r.billed.checked_add(b.payable())?;
                if b.kind.is_premium() {
                    r.bills_issued += 1;
                }
            }
            if b.void || matches!(b.kind, BillKind::LateFee { .. }) {
                continue;
            }
            if let Some(r) = rows.get_mut(&month_label(b.due_date)) {
                match paid_on.get(&b.id) {
                    Some(on) if b.open_amount().is_zero() && *on <= b.due_date => {
                        r.paid_on_time += 1;
                    }
                    Some(_) if b.open_amount().is_zero() => r.paid_in_grace += 1,
                    _ if b.open_amount().is_zero() => r.paid_on_time += 1,
                    _ => r.unpaid += 1,
                }
            }
        }
        for p in &a.ledger.payments {
            let Some(r) = rows.get_mut(&month_label(p.initiated_on)) else {
                continue;
            };
            r.collected = r.collected.checked_add(p.net())?;
            if matches!(p.status, PaymentStatus::Returned { .. }) {
                r.returns += 1;
            }
            if matches!(p.channel, PaymentChannel::Autopay { .. }) {
                match p.status {
                    PaymentStatus::Failed { .. } => r.autopay_failed += 1,
                    _ if p.counts() => r.autopay_ok += 1,
                    _ => {}
                }
            }
        }
        for e in &a.enrollments {
            match &e.coverage.state {
                CoverageState::Terminated { processed_on, .. } => {
                    if let Some(r) = rows.get_mut(&month_label(*processed_on)) {
                        r.terminations += 1;
                    }
                }
                CoverageState::Cancelled { processed_on, .. } => {
                    if let Some(r) = rows.get_mut(&month_label(*processed_on)) {
                        r.cancelled_binders += 1;
                    }
                    for b in a.bills_of(e.id) {
                        owed_by_cancelled = owed_by_cancelled.checked_add(b.open_amount())?;
                    }
                }
                _ => {}
            }
        }
    }
    let (billed, collected, outstanding) = totals(app).await?;
    let gateway = sandbox.totals();
    Ok(Report {
        members: opts.members,
        rows: rows.into_values().collect(),
        billed,
        collected,
        outstanding,
        gateway_net_cents: gateway.charged - gateway.refunded,
        violations,
        owed_by_cancelled,
    })
}
