//! Automatic payments: what to charge, how often, from when, with the member's recorded
//! consent; a pre-debit notice before each debit; one charge per period; a bounded retry
//! policy; and suspension after consecutive failures.

use crate::calendar::{add_days, add_months_clamped, sub_days};
use crate::identity::{Language, input_error};
use crate::ids::{AccountId, MandateId, MethodId};
use crate::money::Money;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// How much each debit takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AmountRule {
    /// Whatever is due when the debit runs (bills due before the next debit).
    AmountDue,
    /// The same amount every time; anything beyond what is owed becomes credit.
    Fixed {
        /// The amount.
        amount: Money,
    },
}

/// How often it debits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frequency {
    /// Every month.
    Monthly,
    /// Every three months.
    Quarterly,
}

impl Frequency {
    /// Months per period.
    pub fn months(self) -> u32 {
        match self {
            Frequency::Monthly => 1,
            Frequency::Quarterly => 3,
        }
    }
}

/// Where consent was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentSource {
    /// The web portal.
    Web,
    /// An API client (mobile app).
    Api,
    /// A phone call with a support agent (recorded).
    Phone,
}

/// The member's authorization, kept as shown and accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// The exact authorization text shown.
    pub text: String,
    /// When it was accepted.
    pub accepted_at: DateTime<Utc>,
    /// Where.
    pub source: ConsentSource,
}

/// The mandate's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum MandateStatus {
    /// Debits run on schedule.
    Active,
    /// Debits are skipped until the date (or until resumed).
    Paused {
        /// Resume automatically after this day.
        until: Option<NaiveDate>,
    },
    /// Stopped after consecutive failures; the member must update or re-activate it.
    Suspended,
    /// Cancelled by the member; final.
    Cancelled,
}

/// Retry and suspension rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Days after a failed debit that it is tried again.
    pub retry_after_days: u32,
    /// Consecutive failures that suspend the mandate.
    pub suspend_after_failures: u32,
    /// Days before a debit that the pre-debit notice goes out.
    pub notice_days: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retry_after_days: 3,
            suspend_after_failures: 2,
            notice_days: 3,
        }
    }
}

input_error!(MandateError, "mandate", {
    StartInPast => ("start_date_in_past", "the start date cannot be in the past"),
    StartTooFar => ("start_date_too_far", "the start date must be within the next 12 months"),
    CapBelowFixed => ("cap_below_amount", "the cap cannot be lower than the fixed amount"),
    ConsentMissing => ("consent_required", "you must accept the authorization to set up automatic payments"),
    NotChangeable => ("not_changeable", "a cancelled automatic payment cannot be changed"),
});

/// What the autopay run should do for a mandate on a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MandateAction {
    /// Send the pre-debit notice for this period.
    Notify {
        /// 0-based period.
        period: u32,
        /// The period's scheduled debit date.
        debit_date: NaiveDate,
    },
    /// Debit for this period now.
    Debit {
        /// 0-based period.
        period: u32,
        /// 1-based attempt within the period.
        attempt: u32,
        /// The next period's debit date: bills due before it are included.
        next_debit_date: NaiveDate,
    },
}

/// A recorded pre-debit notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeRecord {
    /// Period it announced.
    pub period: u32,
    /// Amount it announced.
    pub amount: Money,
    /// When it was sent.
    pub sent_on: NaiveDate,
}

/// An automatic-payment mandate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mandate {
    /// Id.
    pub id: MandateId,
    /// Owner.
    pub account_id: AccountId,
    /// The method charged.
    pub method_id: MethodId,
    /// Amount rule.
    pub amount_rule: AmountRule,
    /// Never charge more than this in one debit.
    pub cap: Option<Money>,
    /// Monthly or quarterly.
    pub frequency: Frequency,
    /// First debit date; later ones fall on the same day of the month (clamped).
    pub start_date: NaiveDate,
    /// The member's authorization.
    pub consent: Consent,
    /// State.
    pub status: MandateStatus,
    /// Highest period that is finished (charged, or nothing was due).
    pub last_completed_period: Option<u32>,
    /// The period being attempted and how many attempts it had.
    pub attempts: Option<(u32, u32)>,
    /// When the next retry may run.
    pub retry_on: Option<NaiveDate>,
    /// Failures in a row (reset by a success).
    pub consecutive_failures: u32,
    /// The last pre-debit notice.
    pub last_notice: Option<NoticeRecord>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// What a member asks for when setting up or changing autopay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MandateTerms {
    /// Method.
    pub method_id: MethodId,
    /// Amount rule.
    pub amount_rule: AmountRule,
    /// Optional cap.
    pub cap: Option<Money>,
    /// Frequency.
    pub frequency: Frequency,
    /// First debit.
    pub start_date: NaiveDate,
}

impl MandateTerms {
    /// Checks the terms on `today`.
    pub fn check(&self, today: NaiveDate) -> Result<(), MandateError> {
        if self.start_date < today {
            return Err(MandateError::StartInPast);
        }
        if self.start_date > add_days(today, 366) {
            return Err(MandateError::StartTooFar);
        }
        if let (AmountRule::Fixed { amount }, Some(cap)) = (self.amount_rule, self.cap) {
            if cap < amount {
                return Err(MandateError::CapBelowFixed);
            }
        }
        Ok(())
    }

    /// The authorization text the member accepts, stating method, amount and schedule, in the
    /// language it is shown in.
    pub fn authorization_text(&self, method_label: &str, lang: Language) -> String {
        let start = crate::locale::date(lang, self.start_date);
        match lang {
            Language::En => {
                let amount = match self.amount_rule {
                    AmountRule::AmountDue => "the amount due on my premium bills".to_owned(),
                    AmountRule::Fixed { amount } => format!("${amount}"),
                };
                let cap = self
                    .cap
                    .map(|c| format!(", never more than ${c} per debit"))
                    .unwrap_or_default();
                let every = match self.frequency {
                    Frequency::Monthly => "every month",
                    Frequency::Quarterly => "every three months",
                };
                format!(
                    "I authorize the Health Connector to debit {amount}{cap} from my {method_label} \
                     {every}, starting {start}. I will get a notice before each debit. I can change, \
                     pause or cancel this authorization at any time before a scheduled debit."
                )
            }
            Language::Es => {
                let amount = match self.amount_rule {
                    AmountRule::AmountDue => "el monto a pagar de mis facturas de prima".to_owned(),
                    AmountRule::Fixed { amount } => format!("${amount}"),
                };
                let cap = self
                    .cap
                    .map(|c| format!(", nunca más de ${c} por débito"))
                    .unwrap_or_default();
                let every = match self.frequency {
                    Frequency::Monthly => "cada mes",
                    Frequency::Quarterly => "cada tres meses",
                };
                format!(
                    "Autorizo a Health Connector a debitar {amount}{cap} de mi {method_label} \
                     {every}, a partir del {start}. Recibiré un aviso antes de cada débito. Puedo \
                     cambiar, pausar o cancelar esta autorización en cualquier momento antes de un \
                     débito programado."
                )
            }
        }
    }

    /// The language of `accepted` if it is these terms' authorization text in one of them.
    pub fn accepted_language(&self, method_label: &str, accepted: &str) -> Option<Language> {
        Language::ALL
            .into_iter()
            .find(|l| accepted.trim() == self.authorization_text(method_label, *l))
    }
}

impl Mandate {
    /// A new active mandate from checked terms and consent.
    pub fn new(
        id: MandateId,
        account_id: AccountId,
        terms: MandateTerms,
        consent: Consent,
    ) -> Result<Mandate, MandateError> {
        if consent.text.trim().is_empty() {
            return Err(MandateError::ConsentMissing);
        }
        Ok(Mandate {
            id,
            account_id,
            method_id: terms.method_id,
            amount_rule: terms.amount_rule,
            cap: terms.cap,
            frequency: terms.frequency,
            start_date: terms.start_date,
            created_at: consent.accepted_at,
            consent,
            status: MandateStatus::Active,
            last_completed_period: None,
            attempts: None,
            retry_on: None,
            consecutive_failures: 0,
            last_notice: None,
        })
    }

    /// The scheduled debit date of period `k`: start date plus `k` periods, clamped to month end.
    pub fn debit_date(&self, k: u32) -> NaiveDate {
        add_months_clamped(self.start_date, k.saturating_mul(self.frequency.months()))
    }

    /// The period whose window `[debit_date(k), debit_date(k+1))` contains `date`.
    pub fn period_at(&self, date: NaiveDate) -> Option<u32> {
        if date < self.start_date {
            return None;
        }
        // Estimate from the month distance, then correct by at most one step either way.
        let months = (date.years_since(self.start_date).unwrap_or(0) * 12)
            + u32::try_from(
                (chrono::Datelike::month0(&date) as i32
                    - chrono::Datelike::month0(&self.start_date) as i32)
                    .rem_euclid(12),
            )
            .unwrap_or(0);
        let mut k = months / self.frequency.months();
        while k > 0 && self.debit_date(k) > date {
            k -= 1;
        }
        while self.debit_date(k + 1) <= date {
            k += 1;
        }
        Some(k)
    }

    /// Whether debits run on `today` (active, or a pause that has ended).
    pub fn is_running(&self, today: NaiveDate) -> bool {
        match self.status {
            MandateStatus::Active => true,
            MandateStatus::Paused { until: Some(u) } => today > u,
            _ => false,
        }
    }

    /// What the autopay run should do on `today`, if anything.
    ///
    /// Each period is debited at most once successfully and never after a later period began;
    /// a period's debit needs its pre-debit notice to have gone out `notice_days` before.
    pub fn action_on(&self, today: NaiveDate, policy: &RetryPolicy) -> Option<MandateAction> {
        if !self.is_running(today) {
            return None;
        }
        // The period whose debit or notice falls on or before today.
        let horizon = add_days(today, policy.notice_days);
        let k = self.period_at(horizon)?;
        if self.last_completed_period.is_some_and(|done| k <= done) {
            return None;
        }
        let debit_date = self.debit_date(k);
        let noticed = self.last_notice.is_some_and(|n| n.period == k);
        if !noticed {
            return Some(MandateAction::Notify {
                period: k,
                debit_date,
            });
        }
        let notice_sent = self.last_notice.map_or(today, |n| n.sent_on);
        let earliest = debit_date.max(add_days(notice_sent, policy.notice_days));
        let next_debit_date = self.debit_date(k + 1);
        if today < earliest || today >= next_debit_date {
            return None;
        }
        let attempt = match self.attempts {
            Some((p, n)) if p == k => {
                if self.retry_on.is_some_and(|r| today < r) {
                    return None;
                }
                n + 1
            }
            _ => 1,
        };
        Some(MandateAction::Debit {
            period: k,
            attempt,
            next_debit_date,
        })
    }

    /// The amount to debit: the rule's amount, never more than the cap, and never more than
    /// the pre-debit notice announced.
    pub fn debit_amount(&self, amount_due: Money) -> Money {
        let base = match self.amount_rule {
            AmountRule::AmountDue => amount_due,
            AmountRule::Fixed { amount } => amount,
        };
        let capped = self.cap.map_or(base, |c| base.min(c));
        match self.last_notice {
            Some(n) => capped.min(n.amount),
            None => capped,
        }
    }

    /// Records that the pre-debit notice for `period` went out announcing `amount`.
    pub fn record_notice(&mut self, period: u32, amount: Money, today: NaiveDate) {
        self.last_notice = Some(NoticeRecord {
            period,
            amount,
            sent_on: today,
        });
    }

    /// Records an attempt that was started (before calling the gateway).
    pub fn record_attempt(&mut self, period: u32, attempt: u32) {
        self.attempts = Some((period, attempt));
    }

    /// Records a successful (or processing) debit, or a period with nothing to pay.
    pub fn record_success(&mut self, period: u32) {
        self.last_completed_period =
            Some(self.last_completed_period.map_or(period, |p| p.max(period)));
        self.consecutive_failures = 0;
        self.retry_on = None;
    }

    /// Records a failed debit; returns `true` if the mandate is now suspended.
    pub fn record_failure(&mut self, period: u32, today: NaiveDate, policy: &RetryPolicy) -> bool {
        self.consecutive_failures += 1;
        if self.consecutive_failures >= policy.suspend_after_failures {
            self.status = MandateStatus::Suspended;
            self.retry_on = None;
            self.last_completed_period =
                Some(self.last_completed_period.map_or(period, |p| p.max(period)));
            return true;
        }
        self.retry_on = Some(add_days(today, policy.retry_after_days));
        false
    }

    /// The next debit date on or after `today`, for display.
    pub fn next_debit_on(&self, today: NaiveDate) -> Option<NaiveDate> {
        if matches!(
            self.status,
            MandateStatus::Cancelled | MandateStatus::Suspended
        ) {
            return None;
        }
        let from = self.last_completed_period.map_or(0, |p| p + 1);
        let k = self.period_at(today).map_or(0, |k| k.max(from));
        let d = self.debit_date(k);
        Some(if d < today { self.debit_date(k + 1) } else { d })
    }

    /// The day the pre-debit notice for a debit on `debit_date` goes out.
    pub fn notice_date(debit_date: NaiveDate, policy: &RetryPolicy) -> NaiveDate {
        sub_days(debit_date, policy.notice_days)
    }

    /// Pauses debits until `until` (inclusive), or until resumed.
    pub fn pause(&mut self, until: Option<NaiveDate>) -> Result<(), MandateError> {
        if self.status == MandateStatus::Cancelled {
            return Err(MandateError::NotChangeable);
        }
        self.status = MandateStatus::Paused { until };
        Ok(())
    }

    /// Resumes debits (also re-activates a suspended mandate).
    pub fn resume(&mut self) -> Result<(), MandateError> {
        if self.status == MandateStatus::Cancelled {
            return Err(MandateError::NotChangeable);
        }
        self.status = MandateStatus::Active;
        self.consecutive_failures = 0;
        self.retry_on = None;
        Ok(())
    }

    /// Cancels it for good.
    pub fn cancel(&mut self) {
        self.status = MandateStatus::Cancelled;
    }

    /// Replaces its terms with newly consented ones; the schedule restarts at the new start date.
    pub fn change(&mut self, terms: MandateTerms, consent: Consent) -> Result<(), MandateError> {
        if self.status == MandateStatus::Cancelled {
            return Err(MandateError::NotChangeable);
        }
        if consent.text.trim().is_empty() {
            return Err(MandateError::ConsentMissing);
        }
        self.method_id = terms.method_id;
        self.amount_rule = terms.amount_rule;
        self.cap = terms.cap;
        self.frequency = terms.frequency;
        self.start_date = terms.start_date;
        self.consent = consent;
        self.status = MandateStatus::Active;
        self.last_completed_period = None;
        self.attempts = None;
        self.retry_on = None;
        self.consecutive_failures = 0;
        self.last_notice = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use uuid::Uuid;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    fn mandate(start: NaiveDate, frequency: Frequency) -> Mandate {
        Mandate::new(
            MandateId(Uuid::nil()),
            AccountId(Uuid::nil()),
            MandateTerms {
                method_id: MethodId(Uuid::nil()),
                amount_rule: AmountRule::AmountDue,
                cap: None,
                frequency,
                start_date: start,
            },
            Consent {
                text: "I authorize".into(),
                accepted_at: DateTime::<Utc>::UNIX_EPOCH,
                source: ConsentSource::Web,
            },
        )
        .unwrap()
    }

    /// Runs the mandate over `dates`, succeeding every debit; returns debits per period.
    fn run(m: &mut Mandate, dates: &[NaiveDate], policy: &RetryPolicy) -> BTreeMap<u32, u32> {
        let mut charges = BTreeMap::new();
        for day in dates {
            // The runner acts until nothing more is due that day (notice, then maybe debit).
            for _ in 0..3 {
                match m.action_on(*day, policy) {
                    Some(MandateAction::Notify { period, .. }) => {
                        m.record_notice(period, Money::from_cents(100), *day)
                    }
                    Some(MandateAction::Debit {
                        period, attempt, ..
                    }) => {
                        m.record_attempt(period, attempt);
                        *charges.entry(period).or_insert(0) += 1;
                        m.record_success(period);
                    }
                    None => break,
                }
            }
        }
        charges
    }

    #[test]
    fn debit_dates_keep_the_start_day_without_drifting() {
        let m = mandate(d(2027, 1, 31), Frequency::Monthly);
        assert_eq!(m.debit_date(1), d(2027, 2, 28));
        assert_eq!(m.debit_date(2), d(2027, 3, 31));
        let q = mandate(d(2027, 1, 15), Frequency::Quarterly);
        assert_eq!(q.debit_date(1), d(2027, 4, 15));
        assert_eq!(q.period_at(d(2027, 4, 14)), Some(0));
        assert_eq!(q.period_at(d(2027, 4, 15)), Some(1));
        assert_eq!(q.period_at(d(2026, 12, 1)), None);
    }

    #[test]
    fn notice_goes_out_three_days_before_and_debit_on_the_date() {
        let policy = RetryPolicy::default();
        let mut m = mandate(d(2027, 1, 20), Frequency::Monthly);
        assert_eq!(m.action_on(d(2027, 1, 16), &policy), None);
        assert_eq!(
            m.action_on(d(2027, 1, 17), &policy),
            Some(MandateAction::Notify {
                period: 0,
                debit_date: d(2027, 1, 20)
            })
        );
        m.record_notice(0, Money::from_cents(100), d(2027, 1, 17));
        assert_eq!(m.action_on(d(2027, 1, 19), &policy), None);
        assert!(matches!(
            m.action_on(d(2027, 1, 20), &policy),
            Some(MandateAction::Debit {
                period: 0,
                attempt: 1,
                ..
            })
        ));
    }

    #[test]
    fn a_late_notice_postpones_the_debit() {
        let policy = RetryPolicy::default();
        let mut m = mandate(d(2027, 1, 20), Frequency::Monthly);
        m.record_notice(0, Money::from_cents(100), d(2027, 1, 20));
        assert_eq!(m.action_on(d(2027, 1, 22), &policy), None);
        assert!(matches!(
            m.action_on(d(2027, 1, 23), &policy),
            Some(MandateAction::Debit { .. })
        ));
    }

    #[test]
    fn second_consecutive_failure_suspends() {
        let policy = RetryPolicy::default();
        let mut m = mandate(d(2027, 1, 20), Frequency::Monthly);
        m.record_notice(0, Money::from_cents(100), d(2027, 1, 17));
        let Some(MandateAction::Debit {
            period, attempt, ..
        }) = m.action_on(d(2027, 1, 20), &policy)
        else {
            panic!()
        };
        m.record_attempt(period, attempt);
        assert!(!m.record_failure(period, d(2027, 1, 20), &policy));
        assert_eq!(
            m.action_on(d(2027, 1, 22), &policy),
            None,
            "waits for the retry date"
        );
        let Some(MandateAction::Debit { attempt: 2, .. }) = m.action_on(d(2027, 1, 23), &policy)
        else {
            panic!()
        };
        m.record_attempt(0, 2);
        assert!(m.record_failure(0, d(2027, 1, 23), &policy));
        assert_eq!(m.status, MandateStatus::Suspended);
        assert_eq!(m.action_on(d(2027, 2, 20), &policy), None);
    }

    #[test]
    fn amount_respects_cap_and_notice() {
        let mut m = mandate(d(2027, 1, 20), Frequency::Monthly);
        m.cap = Some(Money::from_cents(50_000));
        assert_eq!(
            m.debit_amount(Money::from_cents(60_000)),
            Money::from_cents(50_000)
        );
        m.record_notice(0, Money::from_cents(40_000), d(2027, 1, 17));
        assert_eq!(
            m.debit_amount(Money::from_cents(45_000)),
            Money::from_cents(40_000),
            "never more than announced"
        );
        assert_eq!(
            m.debit_amount(Money::from_cents(30_000)),
            Money::from_cents(30_000)
        );
    }

    #[test]
    fn paused_and_cancelled_mandates_do_nothing() {
        let policy = RetryPolicy::default();
        let mut m = mandate(d(2027, 1, 20), Frequency::Monthly);
        m.pause(Some(d(2027, 2, 1))).unwrap();
        assert_eq!(m.action_on(d(2027, 1, 17), &policy), None);
        assert!(
            m.action_on(d(2027, 2, 17), &policy).is_some(),
            "resumes after the pause"
        );
        m.cancel();
        assert_eq!(m.action_on(d(2027, 2, 17), &policy), None);
        assert_eq!(m.resume(), Err(MandateError::NotChangeable));
    }

    proptest! {
        #[test]
        fn monthly_mandate_charges_exactly_once_per_period(
            start_day in 1u32..=31,
            offsets in proptest::collection::vec(0u32..400, 1..120),
        ) {
            let start = crate::calendar::CoverageMonth::new(2027, 1).unwrap().day_clamped(start_day);
            let policy = RetryPolicy::default();
            let mut m = mandate(start, Frequency::Monthly);
            let base = sub_days(start, 10);
            let dates: Vec<NaiveDate> = offsets.iter().map(|o| add_days(base, *o)).collect();
            let charges = run(&mut m, &dates, &policy);
            prop_assert!(charges.values().all(|n| *n == 1), "{:?}", charges);

            // In date order with every day present, every period whose debit date is reached
            // is charged exactly once.
            let mut m2 = mandate(start, Frequency::Monthly);
            let mut sorted = dates.clone();
            sorted.sort();
            let first = *sorted.first().unwrap();
            let last = *sorted.last().unwrap();
            let every_day: Vec<NaiveDate> = first.iter_days().take_while(|x| *x <= last).collect();
            let charges = run(&mut m2, &every_day, &policy);
            let reached = (0..40).filter(|k| m2.debit_date(*k) <= last && m2.debit_date(*k) >= add_days(first, 3)).count();
            prop_assert!(charges.values().all(|n| *n == 1));
            prop_assert!(charges.len() >= reached, "{} charged, {} reached", charges.len(), reached);
        }
    }
}
