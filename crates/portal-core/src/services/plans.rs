//! Payment plans, reinstatement and subsidy changes.

use super::{Portal, ServiceError};
use crate::account::Account;
use crate::audit::Actor;
use crate::billing::{Bill, BillKind, BillNotice};
use crate::calendar::CoverageMonth;
use crate::enrollment::check_premium;
use crate::error::{FieldError, ValidationErrors};
use crate::ids::{AccountId, BillId, EnrollmentId, PlanId};
use crate::money::Money;
use crate::notice::NoticeBody;
use crate::plan::{self, PaymentPlan, PlanStatus};
use chrono::NaiveDate;

/// What reinstating an enrollment takes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReinstatementQuote {
    /// Total to have paid (past-due balance plus next month).
    pub required: Money,
    /// Credit already on the account.
    pub credit: Money,
    /// What is still to pay.
    pub to_pay: Money,
    /// Last day it can be done.
    pub until: Option<NaiveDate>,
}

impl Portal {
    /// Sets up a payment plan over the account's past-due bills (member or agent).
    pub async fn set_up_payment_plan(
        &self,
        account_id: AccountId,
        installments: u32,
        first_due: Option<NaiveDate>,
        actor: Actor,
    ) -> Result<PaymentPlan, ServiceError> {
        let today = self.today();
        let now = self.now();
        let first_due = first_due.unwrap_or(today);
        let plan_id: PlanId = self.new_id();
        let ids: Vec<BillId> = (0..2 * installments.min(plan::MAX_INSTALLMENTS))
            .map(|_| self.new_id())
            .collect();
        self.update_account(account_id, |account, changes| {
            if account.active_plan().is_some() {
                return Err(ValidationErrors::one(FieldError::from(
                    plan::PlanError::AlreadyActive,
                ))
                .into());
            }
            // Past-due premiums of effectuated enrollments only: never a binder, a voided
            // month, a late fee or another plan's installment.
            let past_due: Vec<Bill> = account
                .ledger
                .bills
                .iter()
                .filter(|b| {
                    b.is_past_due(today)
                        && b.kind == BillKind::Premium
                        && account
                            .enrollment(b.enrollment_id)
                            .is_some_and(|e| e.coverage.state.is_effectuated())
                })
                .cloned()
                .collect();
            let total = Money::sum(past_due.iter().map(Bill::open_amount))
                .map_err(|e| ValidationErrors::one(FieldError::from(e)))?;
            let schedule = plan::schedule(total, installments, first_due, today).map_err(|e| {
                let name = if e == plan::PlanError::FirstDueInPast {
                    "first_due"
                } else {
                    "installments"
                };
                ValidationErrors::one(FieldError::from(e).at(name))
            })?;
            let n = u32::try_from(schedule.len()).unwrap_or(installments);
            // Each enrollment's share is spread over installments of its own, so its
            // delinquency keeps reading its own bills.
            let mut enrollments: Vec<EnrollmentId> =
                past_due.iter().map(|b| b.enrollment_id).collect();
            enrollments.dedup();
            enrollments.sort();
            enrollments.dedup();
            let mut sources = Vec::new();
            let mut installment_ids = Vec::new();
            let mut next_id = ids.iter();
            for enrollment in enrollments {
                let mut share = Money::ZERO;
                for b in past_due.iter().filter(|b| b.enrollment_id == enrollment) {
                    let moved = account.ledger.transfer_to_plan(b.id)?;
                    share = share
                        .checked_add(moved)
                        .map_err(|e| ValidationErrors::one(FieldError::from(e)))?;
                    sources.push((b.id, moved));
                }
                let parts = share.split_even(n);
                for (i, (part, (_, due))) in parts.iter().zip(schedule.iter()).enumerate() {
                    if part.is_zero() {
                        continue;
                    }
                    let id = match next_id.next() {
                        Some(id) => *id,
                        None => self.new_id(),
                    };
                    installment_ids.push(id);
                    account.ledger.add_bill(Bill {
                        id,
                        enrollment_id: enrollment,
                        kind: BillKind::Installment {
                            plan_id,
                            number: u32::try_from(i).unwrap_or(0) + 1,
                            of: n,
                        },
                        coverage_month: CoverageMonth::of(*due),
                        amount: *part,
                        allocated: Money::ZERO,
                        transferred: Money::ZERO,
                        due_date: *due,
                        issued_on: today,
                        void: false,
                        notices: vec![BillNotice::Issued],
                        late_fee_assessed: true,
                    });
                }
            }
            let p = PaymentPlan {
                id: plan_id,
                total,
                installments: installment_ids,
                source_bills: sources,
                status: PlanStatus::Active,
                created_at: now,
                created_by: actor.to_string(),
            };
            changes.notify([account.notice(
                format!("plan:{plan_id}"),
                NoticeBody::PaymentPlanSetUp {
                    total,
                    installments: schedule.clone(),
                },
            )]);
            changes.audit.push(account.audit(
                now,
                actor.clone(),
                format!("plan:{plan_id}"),
                "plan.created",
                format!("${total} in {n} installments from {first_due}"),
            ));
            account.plans.push(p.clone());
            Ok(Some(Some(p)))
        })
        .await?
        .ok_or(ServiceError::NotFound("payment plan"))
    }

    /// What reinstating a terminated enrollment requires now.
    pub async fn reinstatement_quote(
        &self,
        account_id: AccountId,
        enrollment: EnrollmentId,
    ) -> Result<ReinstatementQuote, ServiceError> {
        let account = self.account(account_id).await?;
        self.reinstatement_quote_of(&account, enrollment)
    }

    /// [`Portal::reinstatement_quote`] over an account already loaded (no I/O).
    pub fn reinstatement_quote_of(
        &self,
        account: &Account,
        enrollment: EnrollmentId,
    ) -> Result<ReinstatementQuote, ServiceError> {
        let e = account
            .enrollment(enrollment)
            .ok_or(ServiceError::NotFound("enrollment"))?;
        let crate::coverage::CoverageState::Terminated {
            reinstatable_until, ..
        } = &e.coverage.state
        else {
            return Ok(ReinstatementQuote::default());
        };
        let required = account.reinstatement_amount(enrollment, self.today());
        let credit = account.ledger.credit();
        Ok(ReinstatementQuote {
            required,
            credit,
            to_pay: required.saturating_sub(credit),
            until: Some(*reinstatable_until),
        })
    }

    /// Reinstates a terminated enrollment once what it requires has been paid (as credit).
    pub async fn reinstate(
        &self,
        account_id: AccountId,
        enrollment: EnrollmentId,
        actor: Actor,
    ) -> Result<(), ServiceError> {
        let today = self.today();
        self.update_account(account_id, |account, changes| {
            let e = account.enrollment(enrollment).ok_or(ServiceError::NotFound("enrollment"))?;
            let crate::coverage::CoverageState::Terminated { reinstatable_until, .. } = &e.coverage.state else {
                return Err(ServiceError::Rejected("this coverage is not terminated".into()));
            };
            if today > *reinstatable_until {
                return Err(ServiceError::Rejected(format!(
                    "the reinstatement window closed on {reinstatable_until}; contact the Health Connector to re-enroll"
                )));
            }
            let required = account.reinstatement_amount(enrollment, today);
            let credit = account.ledger.credit();
            if credit < required {
                return Err(ServiceError::Rejected(format!(
                    "pay ${} more to reinstate this coverage",
                    required.saturating_sub(credit)
                )));
            }
            // The machine reinstates what the credit now covers.
            self.record_coverage(account, changes, today, &actor);
            Ok(Some(()))
        })
        .await
    }

    /// Applies a subsidy change from `effective` on: unpaid bills from that month are re-priced
    /// and the member is told; a pending autopay notice is re-sent before it debits more.
    pub async fn change_subsidy(
        &self,
        account_id: AccountId,
        enrollment: EnrollmentId,
        subsidy: Money,
        effective: CoverageMonth,
    ) -> Result<(), ServiceError> {
        let now = self.now();
        self.update_account(account_id, |account, changes| {
            let e = account
                .enrollments
                .iter_mut()
                .find(|e| e.id == enrollment)
                .ok_or(ServiceError::NotFound("enrollment"))?;
            check_premium(e.gross_premium, subsidy)
                .map_err(|x| ValidationErrors::one(FieldError::from(x).at("subsidy")))?;
            e.change_subsidy(subsidy, effective);
            let share = e.premium_share();
            let to_reprice: Vec<Bill> = account
                .ledger
                .bills
                .iter()
                .filter(|b| {
                    b.enrollment_id == enrollment
                        && b.kind.is_premium()
                        && !b.void
                        && b.coverage_month >= effective
                        && b.open_amount().is_positive()
                        && b.amount != share
                })
                .cloned()
                .collect();
            for b in &to_reprice {
                account.ledger.reprice_bill(b.id, share)?;
                changes.notify([account.notice(
                    format!("repriced:{}:{}", b.id, share.cents()),
                    NoticeBody::BillRepriced {
                        coverage_month: b.coverage_month,
                        old_amount: b.amount,
                        new_amount: share,
                        due_date: b.due_date,
                    },
                )]);
                changes.audit.push(account.audit(
                    now,
                    Actor::System {
                        job: "subsidy change".into(),
                    },
                    format!("bill:{}", b.id),
                    "bill.repriced",
                    format!("${} -> ${share}", b.amount),
                ));
            }
            if !to_reprice.is_empty() {
                for m in account.mandates.iter_mut() {
                    let pending = m.last_notice.is_some_and(|n| {
                        m.last_completed_period.is_none_or(|done| n.period > done)
                    });
                    if pending {
                        m.last_notice = None;
                    }
                }
            }
            changes.audit.push(account.audit(
                now,
                Actor::System {
                    job: "subsidy change".into(),
                },
                format!("enrollment:{enrollment}"),
                "enrollment.subsidy_changed",
                format!("${subsidy} from {effective}"),
            ));
            // Re-priced bills may change what coverage needs today: decided in this commit.
            let today = self.today();
            self.record_coverage(
                account,
                changes,
                today,
                &Actor::System {
                    job: "subsidy change".into(),
                },
            );
            Ok(Some(()))
        })
        .await
    }
}
