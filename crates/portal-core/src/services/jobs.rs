//! Batch jobs for a date: billing, reminders, delinquency, autopay and reconciliation. Each
//! works account by account through `update_account`, so every item commits on its own, and
//! each decision is recorded on the item itself (a bill per month, a notice flag per bill, a
//! mandate period), so rerunning a date, or resuming after a crash, changes nothing twice.

use super::{Portal, ServiceError};
use crate::account::Account;
use crate::audit::Actor;
use crate::billing::{Bill, BillKind, BillNotice};
use crate::calendar::CoverageMonth;
use crate::coverage::CoverageEvent;
use crate::enrollment::TerminationReason;
use crate::ids::{AccountId, BillId};
use crate::mandate::MandateStatus;
use crate::money::Money;
use crate::notice::NoticeBody;
use crate::payment::{PaymentStatus, PendingStage};
use crate::plan::PlanStatus;
use crate::ports::{Changes, IssuedBills, JobRun, StoreError, WorkLeft};
use chrono::NaiveDate;
use std::future::Future;
use std::task::Poll;

/// Counts of one job run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobSummary {
    /// Items that changed.
    pub done: u64,
    /// Items with nothing to do.
    pub skipped: u64,
    /// Items that failed (logged by the caller; retried on the next run).
    pub failed: u64,
}

/// A job run's summary and the failures' messages.
#[derive(Debug, Clone, Default)]
pub struct JobReport {
    /// Counts.
    pub summary: JobSummary,
    /// `(account, error)` for each failure.
    pub failures: Vec<(AccountId, String)>,
    /// What of the run no instance had finished when this one found nothing more to claim:
    /// chunks other instances are working, chunks a crashed instance still holds until its
    /// lease ends, and chunks with failures.
    pub left: WorkLeft,
}

impl JobReport {
    /// Adds another report's counts and failures (what is left stays this one's).
    pub fn add(&mut self, other: JobReport) {
        self.summary.done += other.summary.done;
        self.summary.skipped += other.summary.skipped;
        self.summary.failed += other.summary.failed;
        self.failures.extend(other.failures);
    }

    fn record(&mut self, id: AccountId, outcome: Result<u32, ServiceError>) {
        match outcome {
            Ok(0) => self.summary.skipped += 1,
            Ok(n) => self.summary.done += u64::from(n),
            Err(e) => {
                self.summary.failed += 1;
                self.failures.push((id, e.to_string()));
            }
        }
    }
}

/// Progress of a job run, reported after each chunk of accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobProgress {
    /// Chunks this instance has worked so far in this run.
    pub chunks_done: u64,
    /// Chunks in the run (all instances).
    pub chunks_planned: u64,
    /// Counts so far, this instance.
    pub summary: JobSummary,
}

/// Receives progress of job runs (a progress bar, log lines, nothing).
pub type ProgressFn = dyn Fn(JobProgress) + Send + Sync;

#[derive(Clone)]
pub(crate) struct Progress(pub(crate) std::sync::Arc<ProgressFn>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

/// Answers whether batch job runs should stop (a shutdown has begun).
pub type StopFn = dyn Fn() -> bool + Send + Sync;

#[derive(Clone)]
pub(crate) struct Stop(pub(crate) std::sync::Arc<StopFn>);

impl std::fmt::Debug for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stop")
    }
}

impl Portal {
    /// Whether a shutdown asked batch runs to stop.
    fn stopping(&self) -> bool {
        self.stop.as_ref().is_some_and(|Stop(s)| s())
    }

    /// Runs `work` once for every chunk of accounts, as one run of `job` for `period`: chunks
    /// are claimed one at a time through the work queue, so several instances share the run
    /// and none works a chunk another holds. A chunk with a failure stays unfinished and is
    /// worked again when its lease ends; the work is idempotent, so what succeeded is skipped.
    ///
    /// While a chunk is worked, the next one is claimed and loaded: the database reads it
    /// while this instance decides and writes, instead of each waiting on the other. (If the
    /// work fails outright, the chunk claimed ahead waits for its lease like any unfinished
    /// one.) Once the portal is stopping (`Portal::with_stop`), the chunk in hand is the last.
    async fn for_each_chunk<F, Fut>(
        &self,
        job: &str,
        period: String,
        mut work: F,
    ) -> Result<JobReport, ServiceError>
    where
        F: FnMut(Vec<Account>) -> Fut,
        Fut: Future<Output = Result<JobReport, ServiceError>>,
    {
        let queue = &self.deps.work;
        let run = JobRun {
            job: job.to_owned(),
            period,
        };
        let planned = queue.plan_run(run.clone(), self.config.job_chunk).await?;
        let claim_next = || async {
            let now = self.now();
            let claimed = queue
                .claim(
                    run.clone(),
                    self.config.worker_id.clone(),
                    1,
                    now,
                    now + self.config.job_lease,
                )
                .await?;
            match claimed.into_iter().next() {
                Some(chunk) => {
                    Ok::<_, ServiceError>(Some((chunk, self.deps.store.load_chunk(chunk).await?)))
                }
                None => Ok(None),
            }
        };
        let mut report = JobReport::default();
        let mut chunks_done = 0;
        let mut next = claim_next().await?;
        while let Some((chunk, accounts)) = next {
            // Stopping: this chunk is the last; nothing more is claimed.
            let (r, following) = if self.stopping() {
                (work(accounts).await, Ok(None))
            } else {
                both(work(accounts), claim_next()).await
            };
            let r = r?;
            let clean = r.summary.failed == 0;
            report.add(r);
            if clean {
                queue.finish(run.clone(), vec![chunk], self.now()).await?;
            }
            chunks_done += 1;
            if let Some(Progress(progress)) = &self.progress {
                progress(JobProgress {
                    chunks_done,
                    chunks_planned: planned,
                    summary: report.summary,
                });
            }
            next = following?;
        }
        report.left = queue.left(run).await?;
        Ok(report)
    }

    /// Runs `work` once for every account, chunk by chunk (see `for_each_chunk`), each chunk
    /// loaded at once: `work` decides from the loaded account and writes, version-checked,
    /// only when there is work (a conflict reloads the account).
    async fn for_each_loaded<F, Fut>(
        &self,
        job: &str,
        period: String,
        work: F,
    ) -> Result<JobReport, ServiceError>
    where
        F: Fn(Account) -> Fut,
        Fut: Future<Output = Result<u32, ServiceError>>,
    {
        let work = &work;
        self.for_each_chunk(job, period, |accounts| async move {
            let mut report = JobReport::default();
            for account in accounts {
                let id = account.id;
                report.record(id, work(account).await);
            }
            Ok(report)
        })
        .await
    }

    /// Applies `change` to an account as loaded: when it finds nothing to do, nothing is
    /// written; otherwise the change is committed, version-checked (a conflict reloads and
    /// decides again). Returns what it did and the account as it now stands.
    async fn change_if_needed<F>(
        &self,
        account: Account,
        change: F,
    ) -> Result<(u32, Account), ServiceError>
    where
        F: FnMut(&mut Account, &mut Changes) -> Result<Option<u32>, ServiceError>,
    {
        let (n, account) = self.update_loaded(account, change).await?;
        Ok((n.unwrap_or(0), account))
    }

    /// Issues every bill whose issue date has come, for every account. A chunk of accounts is
    /// loaded at once and its new bills written in one transaction; an account whose billing
    /// also moves money (credit applied to a new bill) or that changed meanwhile is committed
    /// on its own.
    pub async fn run_billing(&self) -> Result<JobReport, ServiceError> {
        self.for_each_chunk("billing", self.today().to_string(), |accounts| async move {
            Ok(self.bill_loaded(accounts).await?.0)
        })
        .await
    }

    /// Bills accounts loaded together; also returns the ids of those that got bills.
    async fn bill_loaded(
        &self,
        accounts: Vec<Account>,
    ) -> Result<(JobReport, Vec<AccountId>), ServiceError> {
        let mut report = JobReport::default();
        let mut batch = Vec::new();
        let mut on_their_own = Vec::new();
        for mut account in accounts {
            let mut changes = Changes::default();
            let before = account.ledger.bills.len();
            let issued = self.issue_due_bills(&mut account, &mut changes);
            if issued == 0 {
                report.summary.skipped += 1;
                continue;
            }
            let (bills, payments) = account.ledger.changed();
            let new_bills: Vec<(usize, Bill)> = account
                .ledger
                .bills
                .iter()
                .enumerate()
                .skip(before)
                .map(|(i, b)| (i, b.clone()))
                .collect();
            if payments.is_empty() && new_bills.len() == bills.len() {
                batch.push((
                    issued,
                    IssuedBills {
                        account: account.id,
                        version: account.version,
                        bills: new_bills,
                        audit: changes.audit,
                        outbox: changes.outbox,
                    },
                ));
            } else {
                on_their_own.push(account.id);
            }
        }
        let ids: Vec<AccountId> = batch.iter().map(|(_, b)| b.account).collect();
        let issued: Vec<u32> = batch.iter().map(|(n, _)| *n).collect();
        let mut billed = Vec::new();
        match self
            .deps
            .store
            .issue_bills(batch.into_iter().map(|(_, b)| b).collect())
            .await
        {
            Ok(()) => {
                report.summary.done += issued.iter().map(|n| u64::from(*n)).sum::<u64>();
                billed.extend(ids);
            }
            // Someone changed an account meanwhile: bill each on its own, with retries.
            Err(StoreError::Conflict) => on_their_own.extend(ids),
            Err(e) => return Err(e.into()),
        }
        for id in on_their_own {
            let outcome = self.bill_account(id).await;
            if matches!(outcome, Ok(n) if n > 0) {
                billed.push(id);
            }
            report.record(id, outcome);
        }
        billed.sort();
        Ok((report, billed))
    }

    /// Issues the account's due bills; returns how many.
    pub async fn bill_account(&self, id: AccountId) -> Result<u32, ServiceError> {
        self.update_account(id, |account, changes| {
            let issued = self.issue_due_bills(account, changes);
            Ok((issued > 0).then_some(issued))
        })
        .await
    }

    /// Adds the bills whose issue date has come to `account`, with their audit entries and
    /// notices in `changes`; returns how many.
    fn issue_due_bills(&self, account: &mut Account, changes: &mut Changes) -> u32 {
        let today = self.today();
        let now = self.now();
        let billing = &self.config.billing;
        let mut issued = 0u32;
        let autopay_on = account
            .current_mandate()
            .filter(|m| m.status == MandateStatus::Active)
            .and_then(|m| m.next_debit_on(today));
        for e in account.enrollments.clone() {
            if e.coverage.state.is_closed() {
                continue;
            }
            let first_billed = account
                .ledger
                .bills
                .iter()
                .any(|b| b.enrollment_id == e.id && b.kind.is_premium());
            for (i, month) in billing
                .months_to_bill(e.coverage_start, e.coverage_end, today)
                .into_iter()
                .enumerate()
            {
                let exists = account.ledger.bills.iter().any(|b| {
                    b.enrollment_id == e.id && b.coverage_month == month && b.kind.is_premium()
                });
                if exists {
                    continue;
                }
                let binder = !first_billed && i == 0;
                // A bill is never due before it is issued (a household that enrolled late).
                let due_date = billing.due_date(month).max(today);
                let bill = Bill {
                    id: BillId(self.deps.ids.new_id()),
                    enrollment_id: e.id,
                    kind: if binder {
                        BillKind::Binder
                    } else {
                        BillKind::Premium
                    },
                    coverage_month: month,
                    amount: e.premium_share_for(month),
                    allocated: Money::ZERO,
                    transferred: Money::ZERO,
                    due_date,
                    issued_on: today,
                    void: false,
                    notices: vec![BillNotice::Issued],
                    late_fee_assessed: false,
                };
                changes.audit.push(account.audit(
                    now,
                    Actor::System {
                        job: "billing".into(),
                    },
                    format!("bill:{}", bill.id),
                    "bill.issued",
                    format!(
                        "{} {} ${} due {}",
                        e.plan_name, month, bill.amount, due_date
                    ),
                ));
                changes.notify([account.notice(
                    format!("bill-issued:{}:{month}", e.id),
                    NoticeBody::BillIssued {
                        coverage_month: month,
                        plan_name: e.plan_name.clone(),
                        amount: bill.amount,
                        due_date,
                        binder,
                        autopay_on,
                    },
                )]);
                account.ledger.add_bill(bill);
                issued += 1;
            }
        }
        issued
    }

    /// Sends due-date reminders (by the policy's days before) for bills autopay will not pay.
    pub async fn run_reminders(&self) -> Result<JobReport, ServiceError> {
        self.for_each_loaded("reminders", self.today().to_string(), |a| async move {
            Ok(self
                .change_if_needed(a, |a, c| self.reminders_of(a, c))
                .await?
                .0)
        })
        .await
    }

    /// The reminders of one account.
    pub async fn remind_account(&self, id: AccountId) -> Result<u32, ServiceError> {
        self.update_account(id, |a, c| self.reminders_of(a, c))
            .await
    }

    fn reminders_of(
        &self,
        account: &mut Account,
        changes: &mut Changes,
    ) -> Result<Option<u32>, ServiceError> {
        let today = self.today();
        let days = self.config.billing.reminder_days();
        {
            if !account.reminders.due_date_reminders || account.recipient().is_none() {
                return Ok(None);
            }
            let autopay = account
                .current_mandate()
                .is_some_and(|m| m.is_running(today));
            if autopay {
                return Ok(None);
            }
            let mut sent = 0u32;
            let credit = account.ledger.credit();
            let ids: Vec<BillId> = account.ledger.bills.iter().map(|b| b.id).collect();
            for bill_id in ids {
                let Some(b) = account.ledger.bill(bill_id).cloned() else {
                    continue;
                };
                if b.open_amount().is_zero() || b.due_date < today {
                    continue;
                }
                // The most specific reminder whose day has come; earlier ones are then moot.
                let Some(d) = days
                    .iter()
                    .copied()
                    .filter(|d| b.reminder_date(*d) <= today)
                    .min()
                else {
                    continue;
                };
                if b.notices
                    .iter()
                    .any(|n| matches!(n, BillNotice::Reminder(x) if *x <= d))
                {
                    continue;
                }
                let amount = b.open_amount().saturating_sub(credit);
                changes.notify([account.notice(
                    format!("reminder:{bill_id}:{d}"),
                    NoticeBody::DueDateReminder {
                        amount,
                        due_date: b.due_date,
                        days_before: d,
                    },
                )]);
                if let Some(bm) = account.ledger.bill_mut(bill_id) {
                    bm.notices.extend(
                        days.iter()
                            .copied()
                            .filter(|x| *x >= d)
                            .map(BillNotice::Reminder),
                    );
                }
                sent += 1;
            }
            Ok((sent > 0).then_some(sent))
        }
    }

    /// Runs autopay for every account: pre-debit notices and debits due today.
    pub async fn run_autopay(&self) -> Result<JobReport, ServiceError> {
        self.for_each_loaded("autopay", self.today().to_string(), |a| async move {
            Ok(self.autopay_loaded(a).await?.0)
        })
        .await
    }

    /// Applies delinquency for every account: notices, late fees, missed installments,
    /// terminations, and reinstatements that payments made possible.
    pub async fn run_delinquency(&self) -> Result<JobReport, ServiceError> {
        self.for_each_loaded("delinquency", self.today().to_string(), |a| async move {
            Ok(self
                .change_if_needed(a, |a, c| self.delinquency_of(a, c))
                .await?
                .0)
        })
        .await
    }

    /// Delinquency for one account.
    pub async fn delinquency_account(&self, id: AccountId) -> Result<u32, ServiceError> {
        self.update_account(id, |a, c| self.delinquency_of(a, c))
            .await
    }

    fn delinquency_of(
        &self,
        account: &mut Account,
        changes: &mut Changes,
    ) -> Result<Option<u32>, ServiceError> {
        let today = self.today();
        let now = self.now();
        let policy = &self.config.delinquency;
        let actor = Actor::System {
            job: "delinquency".into(),
        };
        {
            let mut steps = 0u32;
            steps += default_missed_plans(account, changes, today, &actor, now);
            steps += self.record_coverage(account, changes, today, &actor);
            steps += assess_late_fees(account, changes, policy, today, &actor, now, &mut || {
                BillId(self.deps.ids.new_id())
            });
            Ok((steps > 0).then_some(steps))
        }
    }

    /// Resolves payments whose gateway outcome is unknown and bank transfers whose settlement
    /// webhook is late, by asking the gateway.
    pub async fn run_reconciliation(&self) -> Result<JobReport, ServiceError> {
        self.for_each_loaded(
            "reconciliation",
            self.now().format("%Y-%m-%dT%H:%M").to_string(),
            |account| self.reconcile_loaded(account),
        )
        .await
    }

    /// Reconciliation of one loaded account.
    async fn reconcile_loaded(&self, account: Account) -> Result<u32, ServiceError> {
        let today = self.today();
        let now = self.now();
        let after = self.config.reconcile_after;
        let id = account.id;
        let due: Vec<_> = account
            .ledger
            .payments
            .iter()
            .filter(|p| match p.status {
                PaymentStatus::Pending {
                    stage: PendingStage::Submitted,
                } => now - p.initiated_at > after,
                PaymentStatus::Pending {
                    stage: PendingStage::Processing,
                } => p.expected_settlement.is_some_and(|d| d < today),
                _ => false,
            })
            .map(|p| p.id)
            .collect();
        let mut n = 0;
        for pid in due {
            if self.reconcile_payment(id, pid).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Every daily job for each account in one pass over the accounts, as the worker runs
    /// them: a chunk is loaded once, its bills are written together, then each account has its
    /// reminders, automatic payment, delinquency and reconciliation done in that order (each
    /// step goes on from the account the step before left; only an account whose bills were
    /// written with its chunk is read again). One work run per date, so a pass that
    /// finished the date does nothing more that day. The per-job runs stay for operators.
    pub async fn run_daily(&self) -> Result<JobReport, ServiceError> {
        self.for_each_chunk("daily", self.today().to_string(), |accounts| async move {
            let (mut report, billed) = self.bill_loaded(accounts.clone()).await?;
            for account in accounts {
                let id = account.id;
                let fresh = billed.binary_search(&id).is_err();
                match self.daily_account(account, fresh).await {
                    Ok(0) => {}
                    outcome => report.record(id, outcome),
                }
            }
            Ok(report)
        })
        .await
    }

    /// Reminders, automatic payment, delinquency and reconciliation of one account; `fresh`
    /// says whether `account` is still current.
    async fn daily_account(&self, account: Account, fresh: bool) -> Result<u32, ServiceError> {
        let current = if fresh {
            account
        } else {
            self.account(account.id).await?
        };
        let (reminders, current) = self
            .change_if_needed(current, |a, c| self.reminders_of(a, c))
            .await?;
        let (autopay, current) = self.autopay_loaded(current).await?;
        let (delinquency, current) = self
            .change_if_needed(current, |a, c| self.delinquency_of(a, c))
            .await?;
        let mut total = reminders + autopay + delinquency;
        total += self.reconcile_loaded(current).await?;
        Ok(total)
    }
}

/// Ends active plans with a missed installment; the rest of the plan falls due at once.
fn default_missed_plans(
    account: &mut Account,
    changes: &mut Changes,
    today: NaiveDate,
    actor: &Actor,
    now: chrono::DateTime<chrono::Utc>,
) -> u32 {
    let mut n = 0;
    for i in 0..account.plans.len() {
        let Some(plan) = account.plans.get(i).cloned() else {
            continue;
        };
        if plan.status != PlanStatus::Active {
            continue;
        }
        let missed = plan
            .installments
            .iter()
            .filter_map(|id| account.ledger.bill(*id))
            .filter(|b| b.is_past_due(today))
            .map(|b| b.due_date)
            .min();
        let all_paid = plan
            .installments
            .iter()
            .filter_map(|id| account.ledger.bill(*id))
            .all(|b| b.open_amount().is_zero());
        if let Some(missed_on) = missed {
            for id in &plan.installments {
                if let Some(b) = account.ledger.bill_mut(*id) {
                    if b.open_amount().is_positive() && b.due_date > missed_on {
                        b.due_date = missed_on;
                    }
                }
            }
            if let Some(p) = account.plans.get_mut(i) {
                p.status = PlanStatus::Defaulted { on: today };
            }
            changes.audit.push(account.audit(
                now,
                actor.clone(),
                format!("plan:{}", plan.id),
                "plan.defaulted",
                format!("installment due {missed_on} missed"),
            ));
            n += 1;
        } else if all_paid {
            if let Some(p) = account.plans.get_mut(i) {
                p.status = PlanStatus::Completed;
            }
            changes.audit.push(account.audit(
                now,
                actor.clone(),
                format!("plan:{}", plan.id),
                "plan.completed",
                "",
            ));
            n += 1;
        }
    }
    n
}

fn assess_late_fees(
    account: &mut Account,
    changes: &mut Changes,
    policy: &crate::delinquency::DelinquencyPolicy,
    today: NaiveDate,
    actor: &Actor,
    now: chrono::DateTime<chrono::Utc>,
    new_id: &mut dyn FnMut() -> BillId,
) -> u32 {
    // Once per late premium of an enrollment in a grace period: never on a binder, never
    // before coverage started.
    let late: Vec<Bill> = account
        .ledger
        .bills
        .iter()
        .filter(|b| {
            !b.late_fee_assessed
                && !b.void
                && b.kind == BillKind::Premium
                && b.due_date < today
                && b.open_amount().is_positive()
                && account.enrollment(b.enrollment_id).is_some_and(|e| {
                    matches!(
                        e.coverage.state,
                        crate::coverage::CoverageState::InGrace { .. }
                    )
                })
        })
        .cloned()
        .collect();
    let mut n = 0;
    for b in late {
        let Some(fee) = policy.late_fee.fee_for(b.amount) else {
            continue;
        };
        if let Some(bm) = account.ledger.bill_mut(b.id) {
            bm.late_fee_assessed = true;
        }
        let fee_bill = Bill {
            id: new_id(),
            enrollment_id: b.enrollment_id,
            kind: BillKind::LateFee { late_bill: b.id },
            coverage_month: CoverageMonth::of(today),
            amount: fee,
            allocated: Money::ZERO,
            transferred: Money::ZERO,
            due_date: today,
            issued_on: today,
            void: false,
            notices: vec![BillNotice::Issued],
            late_fee_assessed: true,
        };
        changes.audit.push(account.audit(
            now,
            actor.clone(),
            format!("bill:{}", fee_bill.id),
            "bill.late_fee",
            format!("${fee} on bill {}", b.id),
        ));
        account.ledger.add_bill(fee_bill);
        n += 1;
    }
    n
}

impl Portal {
    /// Walks the account's coverage machines to today and records what they did: audit
    /// entries for every transition, and each enrollment's notices with its own amounts and
    /// dates. Returns how many transitions there were.
    pub(crate) fn record_coverage(
        &self,
        account: &mut Account,
        changes: &mut Changes,
        today: NaiveDate,
        actor: &Actor,
    ) -> u32 {
        let now = self.now();
        let policy = &self.config.delinquency;
        let events = account.advance_coverage(policy, today);
        let mut n = 0;
        for (enrollment, day, event) in events {
            let Some(e) = account.enrollment(enrollment).cloned() else {
                continue;
            };
            let detail = match &event {
                CoverageEvent::GraceStarted { grace } => format!(
                    "{:?} grace from {} ({}), ends {}",
                    grace.kind, grace.first_unpaid_month, grace.past_due_since, grace.grace_ends_on
                ),
                CoverageEvent::Notice { notice, grace } => {
                    format!("{notice:?}; grace ends {}", grace.grace_ends_on)
                }
                CoverageEvent::Terminated { grace, voided, .. } => format!(
                    "effective {}; voided {}",
                    grace.termination_effective,
                    voided
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                CoverageEvent::Cancelled { deadline } => {
                    format!("binder unpaid by {deadline}")
                }
                _ => String::new(),
            };
            changes.audit.push(account.audit(
                now,
                actor.clone(),
                format!("enrollment:{enrollment}"),
                event.action(),
                format!("{day}: {detail}"),
            ));
            n += 1;
            // Notices only for what still stands today (a grace started and cured the same
            // day says nothing).
            let past_due = Money::sum(
                account
                    .bills_of(enrollment)
                    .iter()
                    .filter(|b| b.due_date < today)
                    .map(|b| b.open_amount()),
            )
            .unwrap_or(Money::ZERO);
            // A grace notice only while that grace still runs when the day's walk is done
            // (a grace that started and ended or was cured the same day says nothing).
            let still_running = |grace: &crate::delinquency::GraceDates| matches!(&e.coverage.state, crate::coverage::CoverageState::InGrace { grace: g } if g == grace);
            let notice = match &event {
                CoverageEvent::Notice { notice, grace } if day == today && still_running(grace) => {
                    let body = match notice {
                        BillNotice::PastDue => NoticeBody::PastDue {
                            plan_name: e.plan_name.clone(),
                            amount: past_due,
                            due_date: crate::calendar::sub_days(grace.past_due_since, 1),
                            grace_ends_on: grace.grace_ends_on,
                        },
                        _ => NoticeBody::TerminationWarning {
                            plan_name: e.plan_name.clone(),
                            amount: past_due,
                            grace_ends_on: grace.grace_ends_on,
                            termination_effective: grace.termination_effective,
                        },
                    };
                    let mut n = account.notice(
                        format!(
                            "delinquency:{enrollment}:{}:{notice:?}",
                            grace.past_due_since
                        ),
                        body,
                    );
                    if let Some(n) = n.as_mut() {
                        n.kind = match notice {
                            BillNotice::PastDue => crate::notice::NoticeKind::PastDue,
                            BillNotice::SecondTerminationWarning => {
                                crate::notice::NoticeKind::SecondTerminationWarning
                            }
                            _ => crate::notice::NoticeKind::TerminationWarning,
                        };
                    }
                    n
                }
                CoverageEvent::Terminated {
                    grace,
                    reinstatable_until,
                    ..
                } => account.notice(
                    format!("terminated:{enrollment}:{}", grace.termination_effective),
                    NoticeBody::CoverageTerminated {
                        plan_name: e.plan_name.clone(),
                        effective: grace.termination_effective,
                        reason: TerminationReason::NonPayment,
                        reinstatable_until: *reinstatable_until,
                        amount_to_reinstate: account.reinstatement_amount(enrollment, today),
                    },
                ),
                CoverageEvent::Cancelled { deadline } => account.notice(
                    format!("cancelled:{enrollment}"),
                    NoticeBody::CoverageCancelled {
                        plan_name: e.plan_name.clone(),
                        deadline: *deadline,
                    },
                ),
                CoverageEvent::Reinstated | CoverageEvent::TerminationReversed => account.notice(
                    format!("reinstated:{enrollment}:{day}"),
                    NoticeBody::CoverageReinstated {
                        plan_name: e.plan_name.clone(),
                    },
                ),
                _ => None,
            };
            changes.notify([notice]);
            if matches!(
                event,
                CoverageEvent::Reinstated
                    | CoverageEvent::TerminationReversed
                    | CoverageEvent::CancellationReversed
            ) {
                // Billing resumes at once: the months that came due while it was closed.
                self.issue_due_bills(account, changes);
            }
        }
        n
    }
}

/// Runs both futures concurrently in this task and returns both outputs. (The core has no
/// runtime of its own; a real store runs each future's statements on its own connection.)
async fn both<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (std::pin::pin!(a), std::pin::pin!(b));
    let (mut out_a, mut out_b) = (None, None);
    std::future::poll_fn(|cx| {
        if out_a.is_none() {
            if let Poll::Ready(v) = a.as_mut().poll(cx) {
                out_a = Some(v);
            }
        }
        if out_b.is_none() {
            if let Poll::Ready(v) = b.as_mut().poll(cx) {
                out_b = Some(v);
            }
        }
        match (out_a.take(), out_b.take()) {
            (Some(x), Some(y)) => Poll::Ready((x, y)),
            (x, y) => {
                (out_a, out_b) = (x, y);
                Poll::Pending
            }
        }
    })
    .await
}
