//! Coverage of one enrollment: the state machine that alone answers whether a household has
//! coverage, what it owes and by when, and what happens if it does not pay.
//!
//! ```text
//!                 binder paid                   short of the threshold
//! PendingBinder ─────────────▶ Active ◀──────────────────────────────▶ InGrace {kind, dates}
//!      │ deadline passed         ▲  ▲        paid back to the threshold        │ grace ended
//!      ▼                         │  └──────── reinstated ──────────┐            ▼
//!  Cancelled ── a binder payment │ received by the deadline        └── Terminated {effective}
//!               recorded late ───┘    (and for a termination: paid by the grace end, recorded late)
//! ```
//!
//! The rules (spec §3, "Coverage and missed payments"):
//! - Money paid is measured against money owed **in total** for the enrollment (45 CFR
//!   155.400(g)): the household's counted payments fill its bills oldest first, and the
//!   enrollment is short when what reached its premium and installment bills is below the
//!   threshold percentage of its premiums due. Money moved into a payment plan is still owed.
//! - An unpaid binder past its deadline cancels the enrollment: never effectuated, every bill
//!   void. A binder paid before the cancellation is processed effectuates it.
//! - A grace period's kind (3 months for APTC with a month paid in the benefit year, else the
//!   state rule) and its dates are fixed when it starts; nothing later changes them.
//! - At its end, an enrollment still short is terminated (APTC: back to the last day of the
//!   first grace month; otherwise the last day of the last paid month) and later months are
//!   voided. A payment initiated or received by the end of the grace (or by the binder
//!   deadline) that is recorded later reverses the termination (or cancellation).
//!
//! [`Account::advance_coverage`](crate::account::Account::advance_coverage) walks the machine
//! day by day and applies each transition's effect on the ledger; the daily job persists the
//! result and the pages show the same walk done on a copy.

use crate::billing::{Bill, BillKind, BillNotice, allocation_order};
use crate::calendar::{CoverageMonth, add_days};
use crate::delinquency::{DelinquencyPolicy, GraceDates, grace_dates};
use crate::enrollment::Enrollment;
use crate::ids::{BillId, EnrollmentId};
use crate::money::Money;
use crate::payment::Payment;
use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Where one enrollment's coverage stands.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CoverageState {
    /// The binder is not paid yet: coverage has not started.
    #[default]
    PendingBinder,
    /// Covered and paid up to the threshold.
    Active,
    /// Short of the threshold: the grace period runs.
    InGrace {
        /// Kind and dates, fixed when it started.
        grace: GraceDates,
    },
    /// Terminated for non-payment at the end of a grace period.
    Terminated {
        /// The grace period that ended.
        grace: GraceDates,
        /// When the termination was processed.
        processed_on: NaiveDate,
        /// Last day paying what reinstatement needs restores coverage.
        reinstatable_until: NaiveDate,
        /// Coverage months voided (after the termination date).
        voided: Vec<CoverageMonth>,
    },
    /// The binder was not paid by its deadline: never effectuated, nothing owed.
    Cancelled {
        /// The binder deadline that passed.
        deadline: NaiveDate,
        /// When the cancellation was processed.
        processed_on: NaiveDate,
    },
}

/// The coverage record kept on each enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Coverage {
    /// Current state.
    pub state: CoverageState,
    /// When the binder was paid and coverage started.
    pub effectuated_on: Option<NaiveDate>,
    /// The last day the machine was walked to.
    pub evaluated_on: Option<NaiveDate>,
    /// Grace notices already sent for the running grace period.
    pub notices: Vec<BillNotice>,
}

/// One transition of the machine, or a notice it calls for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum CoverageEvent {
    /// The binder was paid: coverage starts.
    Effectuated,
    /// The binder deadline passed unpaid.
    Cancelled {
        /// The deadline.
        deadline: NaiveDate,
    },
    /// A binder payment received by the deadline was recorded after the cancellation.
    CancellationReversed,
    /// Short of the threshold after a due date: a grace period starts.
    GraceStarted {
        /// Its kind and dates.
        grace: GraceDates,
    },
    /// Paid back to the threshold during the grace period.
    Cured,
    /// A grace notice is due.
    Notice {
        /// Which.
        notice: BillNotice,
        /// The grace it concerns.
        grace: GraceDates,
    },
    /// The grace period ended short: coverage terminated.
    Terminated {
        /// The grace period.
        grace: GraceDates,
        /// Last day reinstatement is possible.
        reinstatable_until: NaiveDate,
        /// Months voided.
        voided: Vec<CoverageMonth>,
    },
    /// A payment made by the end of the grace period was recorded after the termination.
    TerminationReversed,
    /// What reinstatement needs was paid inside the window.
    Reinstated,
}

impl CoverageEvent {
    /// A stable name for the audit log.
    pub fn action(&self) -> &'static str {
        match self {
            CoverageEvent::Effectuated => "coverage.effectuated",
            CoverageEvent::Cancelled { .. } => "coverage.cancelled",
            CoverageEvent::CancellationReversed => "coverage.cancellation_reversed",
            CoverageEvent::GraceStarted { .. } => "coverage.grace_started",
            CoverageEvent::Cured => "coverage.cured",
            CoverageEvent::Notice { .. } => "coverage.notice",
            CoverageEvent::Terminated { .. } => "coverage.terminated",
            CoverageEvent::TerminationReversed => "coverage.termination_reversed",
            CoverageEvent::Reinstated => "coverage.reinstated",
        }
    }
}

/// A transition the state does not allow (a bug in the caller, never an input problem).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("coverage cannot go from {from} by {event}")]
pub struct CoverageError {
    /// The state's name.
    pub from: &'static str,
    /// The event's name.
    pub event: &'static str,
}

impl CoverageState {
    /// The state's name.
    pub fn name(&self) -> &'static str {
        match self {
            CoverageState::PendingBinder => "pending_binder",
            CoverageState::Active => "active",
            CoverageState::InGrace { .. } => "in_grace",
            CoverageState::Terminated { .. } => "terminated",
            CoverageState::Cancelled { .. } => "cancelled",
        }
    }

    /// Whether coverage was effectuated and is not terminated.
    pub fn is_effectuated(&self) -> bool {
        matches!(self, CoverageState::Active | CoverageState::InGrace { .. })
    }

    /// Whether the enrollment is billed no more.
    pub fn is_closed(&self) -> bool {
        matches!(
            self,
            CoverageState::Terminated { .. } | CoverageState::Cancelled { .. }
        )
    }
}

impl Coverage {
    /// Applies one event; an event the state does not allow is an error and changes nothing.
    pub fn apply(&mut self, event: &CoverageEvent, today: NaiveDate) -> Result<(), CoverageError> {
        use CoverageEvent as E;
        use CoverageState as S;
        let illegal = |s: &S| CoverageError {
            from: s.name(),
            event: event.action(),
        };
        let next = match (&self.state, event) {
            (S::PendingBinder, E::Effectuated) => {
                self.effectuated_on = Some(today);
                S::Active
            }
            (S::PendingBinder, E::Cancelled { deadline }) => S::Cancelled {
                deadline: *deadline,
                processed_on: today,
            },
            (S::Cancelled { .. }, E::CancellationReversed) => {
                self.effectuated_on = Some(today);
                S::Active
            }
            (S::Active, E::GraceStarted { grace }) => {
                self.notices.clear();
                S::InGrace { grace: *grace }
            }
            (S::InGrace { .. }, E::Cured) => S::Active,
            (S::InGrace { grace }, E::Notice { notice, .. }) => {
                self.notices.push(*notice);
                S::InGrace { grace: *grace }
            }
            (
                S::InGrace { grace },
                E::Terminated {
                    reinstatable_until,
                    voided,
                    ..
                },
            ) => S::Terminated {
                grace: *grace,
                processed_on: today,
                reinstatable_until: *reinstatable_until,
                voided: voided.clone(),
            },
            (S::Terminated { .. }, E::TerminationReversed | E::Reinstated) => S::Active,
            (s, _) => return Err(illegal(s)),
        };
        self.state = next;
        Ok(())
    }
}

/// Which money a rule reads for a date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// What counts now: a returned payment never paid anything (cures, terminations,
    /// reversals, effectuation).
    Now,
    /// What counted at the end of that date as far as is known now: a payment returned
    /// since still counted then (whether coverage fell short on that date, so a grace
    /// starts on the day a return is recorded, however the days are walked).
    Then,
}

/// The household's bills and payments as one enrollment's rules read them.
#[derive(Debug)]
pub struct Facts<'a> {
    /// The enrollment.
    pub enrollment: &'a Enrollment,
    /// Every bill of the household.
    pub bills: &'a [Bill],
    /// Every payment of the household.
    pub payments: &'a [Payment],
    /// The rules.
    pub policy: &'a DelinquencyPolicy,
}

/// Whether a bill drives an enrollment's delinquency: premiums are what is owed; money
/// reaching installments pays premiums moved into a plan. Late fees never drive it.
fn is_premium(b: &Bill) -> bool {
    b.kind.is_premium()
}

fn is_paying(b: &Bill) -> bool {
    matches!(
        b.kind,
        BillKind::Binder | BillKind::Premium | BillKind::Installment { .. }
    )
}

impl<'a> Facts<'a> {
    fn id(&self) -> EnrollmentId {
        self.enrollment.id
    }

    /// Per bill, what the household's counted payments initiated (or received) by `as_of`
    /// reach when they fill its premiums and installments oldest first; `revive` are void
    /// bills to count as open (a decision being reconsidered). Late fees take nothing here:
    /// coverage is kept or lost on premiums alone (155.400(g)), so a fee left unpaid never
    /// turns paid premiums into a shortfall.
    fn filled(&self, as_of: NaiveDate, revive: &BTreeSet<BillId>) -> BTreeMap<BillId, Money> {
        self.filled_by(as_of, revive, Reading::Now)
    }

    fn filled_by(
        &self,
        as_of: NaiveDate,
        revive: &BTreeSet<BillId>,
        reading: Reading,
    ) -> BTreeMap<BillId, Money> {
        let mut money = Money::sum(
            self.payments
                .iter()
                .filter(|p| p.initiated_on <= as_of)
                .map(|p| match reading {
                    Reading::Now => p.net(),
                    Reading::Then => p.net_as_of(as_of),
                }),
        )
        .unwrap_or(Money::ZERO);
        let mut bills: Vec<&Bill> = self
            .bills
            .iter()
            .filter(|b| is_paying(b) && (!b.void || revive.contains(&b.id)))
            .collect();
        bills.sort_by(|a, b| allocation_order(a, b));
        let mut out = BTreeMap::new();
        for b in bills {
            if money.is_zero() {
                break;
            }
            let payable = b.amount.saturating_sub(b.transferred);
            let take = payable.min(money);
            money = money.saturating_sub(take);
            out.insert(b.id, take);
        }
        out
    }

    fn premiums<'b>(&'b self, revive: &'b BTreeSet<BillId>) -> impl Iterator<Item = &'b Bill> {
        let id = self.id();
        self.bills.iter().filter(move |b| {
            b.enrollment_id == id && is_premium(b) && (!b.void || revive.contains(&b.id))
        })
    }

    /// Money of this enrollment's premium and installment bills reached by `filled`.
    fn paid(&self, filled: &BTreeMap<BillId, Money>) -> Money {
        let id = self.id();
        Money::sum(
            self.bills
                .iter()
                .filter(|b| b.enrollment_id == id && is_paying(b))
                .filter_map(|b| filled.get(&b.id).copied()),
        )
        .unwrap_or(Money::ZERO)
    }

    /// Whether the enrollment is short: money paid by `pay_by` below the threshold of its
    /// premiums due on or before `due_by`.
    fn short(&self, pay_by: NaiveDate, due_by: NaiveDate, revive: &BTreeSet<BillId>) -> bool {
        self.short_by(pay_by, due_by, revive, Reading::Now)
    }

    fn short_by(
        &self,
        pay_by: NaiveDate,
        due_by: NaiveDate,
        revive: &BTreeSet<BillId>,
        reading: Reading,
    ) -> bool {
        let owed = Money::sum(
            self.premiums(revive)
                .filter(|b| b.due_date <= due_by)
                .map(|b| b.amount),
        )
        .unwrap_or(Money::ZERO);
        if owed.is_zero() {
            return false;
        }
        let filled = self.filled_by(pay_by, revive, reading);
        let paid = self.paid(&filled);
        self.policy
            .short(paid, owed, self.latest_due_reached(&filled, due_by))
    }

    /// Whether the latest premium due by `due_by` received any money (the shortfall rule
    /// never forgives a month with no payment at all).
    fn latest_due_reached(&self, filled: &BTreeMap<BillId, Money>, due_by: NaiveDate) -> bool {
        let none = BTreeSet::new();
        self.premiums(&none)
            .filter(|b| b.due_date <= due_by)
            .max_by_key(|b| (b.due_date, b.coverage_month))
            .is_some_and(|b| filled.get(&b.id).is_some_and(|m| m.is_positive()))
    }

    /// The first coverage month the money paid by `pay_by` does not reach (under the
    /// threshold), among premiums due by `due_by`.
    fn first_unpaid(&self, pay_by: NaiveDate, due_by: NaiveDate) -> Option<&'a Bill> {
        let none = BTreeSet::new();
        let filled = self.filled_by(pay_by, &none, Reading::Then);
        let paid = self.paid(&filled);
        let id = self.id();
        let bills: &'a [Bill] = self.bills;
        let mut months: Vec<&'a Bill> = bills
            .iter()
            .filter(|b| b.enrollment_id == id && is_premium(b) && !b.void)
            .filter(|b| b.due_date <= due_by)
            .collect();
        months.sort_by_key(|b| (b.coverage_month, b.due_date));
        let mut owed = Money::ZERO;
        for b in months {
            owed = owed.checked_add(b.amount).unwrap_or(owed);
            if self.policy.short(paid, owed, true) {
                return Some(b);
            }
        }
        None
    }

    /// Whether, on some day from `since` to yesterday, the money counted by that day met
    /// the threshold of every premium due before it: yesterday, and each day a payment was
    /// initiated or received on. Whether a grace is cured never depends on the days the
    /// machine happened to be walked.
    fn paid_up_since(&self, since: NaiveDate, today: NaiveDate) -> bool {
        let none = BTreeSet::new();
        let mut days: BTreeSet<NaiveDate> = self.payments.iter().map(|p| p.initiated_on).collect();
        if let Some(yesterday) = today.pred_opt() {
            days.insert(yesterday);
        }
        days.range(since..today).any(|day| {
            let before = day.pred_opt().unwrap_or(*day);
            !self.short(*day, before, &none)
        })
    }

    /// The binder and its deadline.
    fn binder(&self) -> Option<(&Bill, NaiveDate)> {
        let id = self.id();
        self.bills
            .iter()
            .find(|b| b.enrollment_id == id && b.kind == BillKind::Binder)
            .map(|b| (b, add_days(b.due_date, self.policy.binder_grace_days)))
    }

    fn binder_paid(&self, pay_by: NaiveDate, revive: &BTreeSet<BillId>) -> bool {
        let Some((binder, _)) = self.binder() else {
            return false;
        };
        let reached = self
            .filled(pay_by, revive)
            .get(&binder.id)
            .copied()
            .unwrap_or(Money::ZERO);
        !self
            .policy
            .short(reached, binder.amount, reached.is_positive())
    }

    fn enrollment_bills(&self) -> BTreeSet<BillId> {
        let id = self.id();
        self.bills
            .iter()
            .filter(|b| b.enrollment_id == id)
            .map(|b| b.id)
            .collect()
    }

    fn voided_bills(&self, months: &[CoverageMonth]) -> BTreeSet<BillId> {
        self.premiums(&self.enrollment_bills())
            .filter(|b| months.contains(&b.coverage_month))
            .map(|b| b.id)
            .collect()
    }
}

/// The grace period that starts on `today` for an enrollment first short on `first`.
fn grace_for(facts: &Facts<'_>, first: &Bill, today: NaiveDate) -> GraceDates {
    let month = first.coverage_month;
    let none = BTreeSet::new();
    let aptc = facts.enrollment.subsidy_for(month).is_positive()
        && facts
            .premiums(&none)
            .any(|b| b.coverage_month < month && b.coverage_month.year() == month.year());
    let mut grace = grace_dates(month, first.due_date, aptc, facts.policy);
    // A grace period that would already be over when it starts (a payment returned long
    // after its month) runs at least to the end of this month.
    let floor = CoverageMonth::of(today).last_day();
    if grace.grace_ends_on < today {
        grace.grace_ends_on = floor;
        grace.first_warning_on = grace.first_warning_on.max(today).min(floor);
        grace.second_warning_on = grace.second_warning_on.max(today).min(floor);
    }
    grace
}

/// The events of one enrollment on `today`, from its state and the household's facts.
/// `reinstates` says whether, on a day of its reinstatement window up to `today`, the
/// account's credit from payments made by then covered what reinstating it needed (the
/// account answers it: reinstatement reads credit, not bills alone).
pub fn step(
    coverage: &Coverage,
    facts: &Facts<'_>,
    today: NaiveDate,
    reinstates: bool,
) -> Vec<CoverageEvent> {
    let none = BTreeSet::new();
    let yesterday = today.pred_opt().unwrap_or(today);
    let mut out = Vec::new();
    let mut state = coverage.state.clone();
    let mut notices = coverage.notices.clone();
    // A state reached today may move again today (effectuated, then short at once).
    for _ in 0..3 {
        let event = match &state {
            CoverageState::PendingBinder => match facts.binder() {
                None if facts.premiums(&none).next().is_some() => Some(CoverageEvent::Effectuated),
                None => None,
                Some(_) if facts.binder_paid(today, &none) => Some(CoverageEvent::Effectuated),
                Some((_, deadline)) if today > deadline => {
                    Some(CoverageEvent::Cancelled { deadline })
                }
                Some(_) => None,
            },
            CoverageState::Cancelled { deadline, .. } => {
                let revive = facts.enrollment_bills();
                facts
                    .binder_paid(*deadline, &revive)
                    .then_some(CoverageEvent::CancellationReversed)
            }
            CoverageState::Active => facts
                .short_by(today, yesterday, &none, Reading::Then)
                .then(|| facts.first_unpaid(today, yesterday))
                .flatten()
                .map(|first| CoverageEvent::GraceStarted {
                    grace: grace_for(facts, first, today),
                }),
            CoverageState::InGrace { grace } => {
                let end = grace.grace_ends_on;
                if today > end {
                    Some(if facts.short(end, end, &none) {
                        let effective = CoverageMonth::of(grace.termination_effective);
                        let mut voided: Vec<CoverageMonth> = facts
                            .premiums(&none)
                            .map(|b| b.coverage_month)
                            .filter(|m| *m > effective)
                            .collect();
                        voided.sort();
                        voided.dedup();
                        CoverageEvent::Terminated {
                            grace: *grace,
                            reinstatable_until: add_days(today, facts.policy.reinstatement_days),
                            voided,
                        }
                    } else {
                        CoverageEvent::Cured
                    })
                } else if !facts.short(today, yesterday, &none)
                    || facts.paid_up_since(grace.past_due_since, today)
                {
                    // Paid back to the threshold today, or already on an earlier day of the
                    // grace (a check received then and recorded since), before the bills
                    // due from that day on counted.
                    Some(CoverageEvent::Cured)
                } else {
                    next_notice(grace, &notices, today).map(|notice| CoverageEvent::Notice {
                        notice,
                        grace: *grace,
                    })
                }
            }
            CoverageState::Terminated { grace, voided, .. } => {
                let revive = facts.voided_bills(voided);
                let end = grace.grace_ends_on;
                if !facts.short(end, end, &revive) {
                    Some(CoverageEvent::TerminationReversed)
                } else {
                    reinstates.then_some(CoverageEvent::Reinstated)
                }
            }
        };
        let Some(event) = event else { break };
        let mut c = Coverage {
            state: state.clone(),
            effectuated_on: coverage.effectuated_on,
            evaluated_on: None,
            notices: notices.clone(),
        };
        if c.apply(&event, today).is_err() {
            break;
        }
        state = c.state;
        notices = c.notices;
        // After these the state is judged again the same day: coverage that started or came
        // back, a grace that started (for its notice), a cure (a bill due since may start the
        // next grace at once).
        let more = matches!(
            event,
            CoverageEvent::Effectuated
                | CoverageEvent::CancellationReversed
                | CoverageEvent::GraceStarted { .. }
                | CoverageEvent::TerminationReversed
                | CoverageEvent::Cured
        );
        out.push(event);
        if !more {
            break;
        }
    }
    out
}

/// The grace notice due on `today`: past-due warning, then the first and the second
/// termination warnings; catching up sends only the latest that applies.
pub fn next_notice(
    grace: &GraceDates,
    sent: &[BillNotice],
    today: NaiveDate,
) -> Option<BillNotice> {
    if today > grace.grace_ends_on {
        return None;
    }
    let due = if today >= grace.second_warning_on {
        BillNotice::SecondTerminationWarning
    } else if today >= grace.first_warning_on {
        BillNotice::TerminationWarning
    } else {
        BillNotice::PastDue
    };
    let already = sent.iter().any(|n| {
        matches!(
            n,
            BillNotice::PastDue
                | BillNotice::TerminationWarning
                | BillNotice::SecondTerminationWarning
        ) && *n >= due
    });
    (!already).then_some(due)
}

/// The enrollment's paid-through date: the last day of the last coverage month that the
/// money paid reaches (under the threshold), every month before it reached too.
pub fn paid_through(
    facts: &Facts<'_>,
    state: &CoverageState,
    today: NaiveDate,
) -> Option<NaiveDate> {
    if !matches!(
        state,
        CoverageState::Active | CoverageState::InGrace { .. } | CoverageState::Terminated { .. }
    ) {
        return None;
    }
    let none = BTreeSet::new();
    let filled = facts.filled(today, &none);
    let paid = facts.paid(&filled);
    let mut months: Vec<&Bill> = facts.premiums(&none).collect();
    months.sort_by_key(|b| b.coverage_month);
    let mut owed = Money::ZERO;
    let mut through = None;
    for b in months {
        owed = owed.checked_add(b.amount).unwrap_or(owed);
        if facts.policy.short(paid, owed, true) {
            break;
        }
        through = Some(b.coverage_month.last_day());
    }
    if let CoverageState::Terminated { grace, .. } = state {
        through = through.map(|t| t.min(grace.termination_effective));
    }
    through
}

impl DelinquencyPolicy {
    /// Whether `paid` falls short of `owed` under the premium payment threshold: below the
    /// percentage, and (when the fixed-dollar rule is on) short by more than it or, for a
    /// month with no money at all (`reached` false), short at all.
    pub fn short(&self, paid: Money, owed: Money, reached: bool) -> bool {
        if paid >= owed {
            return false;
        }
        let needed = owed.amount() * self.threshold_percent / Decimal::ONE_HUNDRED;
        if paid.amount() >= needed {
            return false;
        }
        !(reached
            && self.threshold_shortfall.is_positive()
            && owed.saturating_sub(paid) <= self.threshold_shortfall)
    }
}
