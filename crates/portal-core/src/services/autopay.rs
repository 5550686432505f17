//! Automatic payments: preview with the authorization text, activate with recorded consent,
//! change, pause, resume, cancel; and the autopay run's step for one account.

use super::payments::gateway_key;
use super::{Portal, ServiceError};
use crate::account::Account;
use crate::audit::Actor;
use crate::error::{FieldError, ValidationErrors};
use crate::identity::Language;
use crate::ids::{AccountId, MandateId, MethodId, PaymentId};
use crate::mandate::{
    AmountRule, Consent, ConsentSource, Frequency, Mandate, MandateAction, MandateStatus,
    MandateTerms, RetryPolicy,
};
use crate::money::Money;
use crate::notice::{AutopayFailure, Notice, NoticeBody};
use crate::payment::{
    Payment, PaymentChannel, PaymentEvent, PaymentInstrument, PaymentStatus, PendingStage,
};
use crate::ports::{ChargeRequest, GatewayError};
use chrono::NaiveDate;

/// The autopay form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutopayForm {
    /// Saved method to debit.
    pub method_id: MethodId,
    /// Amount rule.
    pub amount_rule: AmountRule,
    /// Optional cap per debit.
    pub cap: Option<Money>,
    /// Frequency.
    pub frequency: Frequency,
    /// First debit date.
    pub start_date: NaiveDate,
}

/// The review summary with the exact authorization text to accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutopayPreview {
    /// Masked method.
    pub method: String,
    /// First debit date.
    pub first_debit: NaiveDate,
    /// Estimated first debit amount.
    pub estimated_amount: Money,
    /// The authorization text the member accepts.
    pub authorization_text: String,
}

impl AutopayForm {
    fn terms(&self) -> MandateTerms {
        MandateTerms {
            method_id: self.method_id,
            amount_rule: self.amount_rule,
            cap: self.cap,
            frequency: self.frequency,
            start_date: self.start_date,
        }
    }
}

fn field(e: crate::mandate::MandateError, name: &str) -> ServiceError {
    ValidationErrors::one(FieldError::from(e).at(name)).into()
}

impl Portal {
    fn check_autopay(&self, account: &Account, form: &AutopayForm) -> Result<String, ServiceError> {
        let terms = form.terms();
        terms.check(self.today()).map_err(|e| {
            let name = match e {
                crate::mandate::MandateError::CapBelowFixed => "cap",
                _ => "start_date",
            };
            field(e, name)
        })?;
        if let AmountRule::Fixed { amount } = form.amount_rule {
            amount
                .require_positive()
                .map_err(|e| ValidationErrors::one(FieldError::from(e).at("fixed_amount")))?;
        }
        let method = account
            .method(form.method_id)
            .filter(|m| m.usable(self.today()) && self.config.methods.accepts(m.details.kind()))
            .ok_or_else(|| {
                ValidationErrors::one(FieldError::new(
                    "payment_method_id",
                    "unknown",
                    "choose one of your saved payment methods",
                ))
            })?;
        Ok(method.details.masked())
    }

    /// The review step: summary and authorization text, changing nothing. The text is in
    /// `language`, or the member's preferred language when none is given.
    pub async fn preview_autopay(
        &self,
        account_id: AccountId,
        form: &AutopayForm,
        language: Option<Language>,
    ) -> Result<AutopayPreview, ServiceError> {
        let account = self.account(account_id).await?;
        let language = language
            .or(account.member.as_ref().map(|m| m.language))
            .unwrap_or_default();
        let label = self.check_autopay(&account, form)?;
        let terms = form.terms();
        let probe = Mandate::new(
            MandateId(uuid::Uuid::nil()),
            account_id,
            terms.clone(),
            Consent {
                text: "preview".into(),
                accepted_at: self.now(),
                source: ConsentSource::Web,
            },
        )
        .map_err(|e| field(e, "consent"))?;
        let estimated_amount = probe.debit_amount(debit_base(&account, &probe, 0, self));
        Ok(AutopayPreview {
            method: label.clone(),
            first_debit: form.start_date,
            estimated_amount,
            authorization_text: terms.authorization_text(&label, language),
        })
    }

    /// Activates autopay. `accepted_text` must be the authorization text from the preview.
    pub async fn set_up_autopay(
        &self,
        account_id: AccountId,
        form: &AutopayForm,
        accepted_text: &str,
        source: ConsentSource,
    ) -> Result<Mandate, ServiceError> {
        let now = self.now();
        let id: MandateId = self.new_id();
        self.update_account(account_id, |account, changes| {
            let label = self.check_autopay(account, form)?;
            let terms = form.terms();
            if terms.accepted_language(&label, accepted_text).is_none() {
                return Err(ValidationErrors::one(FieldError::new(
                    "authorization",
                    "not_accepted",
                    "review and accept the authorization shown for these settings",
                ))
                .into());
            }
            let expected = accepted_text.trim().to_owned();
            if account.current_mandate().is_some() {
                return Err(ServiceError::Conflict(
                    "automatic payments are already set up; change them instead".into(),
                ));
            }
            let m = Mandate::new(
                id,
                account_id,
                terms,
                Consent {
                    text: expected,
                    accepted_at: now,
                    source,
                },
            )
            .map_err(|e| field(e, "authorization"))?;
            changes.audit.push(account.audit(
                now,
                Actor::Member,
                format!("mandate:{id}"),
                "mandate.created",
                format!(
                    "{:?} {:?} from {} by {}",
                    m.frequency, m.amount_rule, m.start_date, label
                ),
            ));
            account.mandates.push(m.clone());
            Ok(Some(Some(m)))
        })
        .await?
        .ok_or(ServiceError::NotFound("mandate"))
    }

    /// Changes autopay settings with a newly accepted authorization.
    pub async fn change_autopay(
        &self,
        account_id: AccountId,
        mandate_id: MandateId,
        form: &AutopayForm,
        accepted_text: &str,
        source: ConsentSource,
    ) -> Result<Mandate, ServiceError> {
        let now = self.now();
        self.update_account(account_id, |account, changes| {
            let label = self.check_autopay(account, form)?;
            let terms = form.terms();
            if terms.accepted_language(&label, accepted_text).is_none() {
                return Err(ValidationErrors::one(FieldError::new(
                    "authorization",
                    "not_accepted",
                    "review and accept the authorization shown for these settings",
                ))
                .into());
            }
            let expected = accepted_text.trim().to_owned();
            let m = account
                .mandate_mut(mandate_id)
                .ok_or(ServiceError::NotFound("automatic payment"))?;
            m.change(
                terms,
                Consent {
                    text: expected,
                    accepted_at: now,
                    source,
                },
            )
            .map_err(|e| field(e, "mandate"))?;
            let m = m.clone();
            changes.audit.push(account.audit(
                now,
                Actor::Member,
                format!("mandate:{mandate_id}"),
                "mandate.changed",
                label,
            ));
            Ok(Some(Some(m)))
        })
        .await?
        .ok_or(ServiceError::NotFound("automatic payment"))
    }

    /// Pauses, resumes or cancels autopay.
    pub async fn set_autopay_status(
        &self,
        account_id: AccountId,
        mandate_id: MandateId,
        status: MandateStatus,
    ) -> Result<Mandate, ServiceError> {
        let now = self.now();
        let today = self.today();
        self.update_account(account_id, |account, changes| {
            let m = account
                .mandate_mut(mandate_id)
                .ok_or(ServiceError::NotFound("automatic payment"))?;
            let action = match status {
                MandateStatus::Paused { until } => {
                    if until.is_some_and(|u| u < today) {
                        return Err(ValidationErrors::one(FieldError::new(
                            "until",
                            "in_past",
                            "the pause must end today or later",
                        ))
                        .into());
                    }
                    m.pause(until).map_err(|e| field(e, "mandate"))?;
                    "mandate.paused"
                }
                MandateStatus::Active => {
                    m.resume().map_err(|e| field(e, "mandate"))?;
                    "mandate.resumed"
                }
                MandateStatus::Cancelled => {
                    m.cancel();
                    "mandate.cancelled"
                }
                MandateStatus::Suspended => {
                    return Err(ValidationErrors::one(FieldError::new(
                        "status",
                        "invalid",
                        "choose active, paused or cancelled",
                    ))
                    .into());
                }
            };
            let m = m.clone();
            changes.audit.push(account.audit(
                now,
                Actor::Member,
                format!("mandate:{mandate_id}"),
                action,
                "",
            ));
            Ok(Some(Some(m)))
        })
        .await?
        .ok_or(ServiceError::NotFound("automatic payment"))
    }

    /// The autopay run's work for one account on `today`, from the account as loaded (with its
    /// chunk): notices and at most one debit per mandate period, repeated while something falls
    /// due (a notice and a debit can both be due on one day when catching up). Returns the
    /// account as it now stands. Safe to rerun and to run concurrently: each change is a
    /// version-checked commit (a conflict reloads and decides again), and the debit's payment
    /// is created with a per-period idempotency record before the gateway is called.
    pub(crate) async fn autopay_loaded(
        &self,
        mut account: Account,
    ) -> Result<(u32, Account), ServiceError> {
        let mut total = 0;
        // A notice, then a debit.
        for _ in 0..2 {
            let (n, now) = self.autopay_step(account).await?;
            account = now;
            if n == 0 {
                break;
            }
            total += n;
        }
        Ok((total, account))
    }

    /// One autopay action for an account: the notice or debit due today, if any.
    async fn autopay_step(&self, account: Account) -> Result<(u32, Account), ServiceError> {
        let today = self.today();
        let now = self.now();
        let policy = self.config.autopay;
        let Some(mandate) = account.current_mandate().cloned() else {
            return Ok((0, account));
        };
        let Some(action) = mandate.action_on(today, &policy) else {
            return Ok((0, account));
        };
        match action {
            MandateAction::Notify { period, debit_date } => {
                let (n, account) = self
                    .update_loaded(account, |account, changes| {
                        let Some(m) = account.mandate(mandate.id).cloned() else {
                            return Ok(None);
                        };
                        if m.action_on(today, &policy) != Some(action) {
                            return Ok(None);
                        }
                        let amount = m.debit_amount(debit_base(account, &m, period, self));
                        let label = account
                            .method(m.method_id)
                            .map(|x| x.details.masked())
                            .unwrap_or_default();
                        if let Some(mm) = account.mandate_mut(m.id) {
                            mm.record_notice(period, amount, today);
                        }
                        changes.notify([account.notice(
                            format!(
                                "autopay-notice:{}:{}:{period}:{}",
                                m.id,
                                m.start_date,
                                amount.cents()
                            ),
                            NoticeBody::AutopayPreDebit {
                                amount,
                                debit_date,
                                method: label,
                            },
                        )]);
                        changes.audit.push(account.audit(
                            now,
                            Actor::System {
                                job: "autopay".into(),
                            },
                            format!("mandate:{}", m.id),
                            "mandate.notice_sent",
                            format!("${amount} on {debit_date}"),
                        ));
                        Ok(Some(1))
                    })
                    .await?;
                Ok((n.unwrap_or(0), account))
            }
            MandateAction::Debit {
                period, attempt, ..
            } => self.debit(account, &mandate, period, attempt).await,
        }
    }

    /// Debits one period of a mandate: commits the payment, calls the gateway, commits the
    /// outcome, each step on the account the previous one left.
    async fn debit(
        &self,
        account: Account,
        mandate: &Mandate,
        period: u32,
        attempt: u32,
    ) -> Result<(u32, Account), ServiceError> {
        let account_id = account.id;
        let today = self.today();
        let now = self.now();
        let policy = self.config.autopay;
        let actor = Actor::System {
            job: "autopay".into(),
        };
        let payment_id: PaymentId = self.new_id();
        let reference = self.deps.ids.payment_reference();
        let key = format!(
            "autopay:{}:{}:{period}:{attempt}",
            mandate.id, mandate.start_date
        );
        // Step 1: one commit creates the payment (or finds the period already handled).
        let created = self
            .update_loaded(account, |account, changes| {
                let Some(m) = account.mandate(mandate.id).cloned() else { return Ok(None) };
                if !matches!(m.action_on(today, &policy), Some(MandateAction::Debit { period: p, attempt: a, .. }) if p == period && a == attempt) {
                    return Ok(None);
                }
                // A debit of this period that is in flight (a crash before or during the gateway
                // call) is resumed with its own key; one that went through completes the period.
                let of_period: Vec<&Payment> = account
                    .ledger
                    .payments
                    .iter()
                    .filter(|p| p.channel == PaymentChannel::Autopay { mandate_id: m.id, period })
                    .collect();
                if of_period.iter().any(|p| p.counts()) {
                    if let Some(mm) = account.mandate_mut(m.id) {
                        mm.record_success(period);
                    }
                    return Ok(Some(None));
                }
                if let Some(existing) = of_period
                    .iter()
                    .find(|p| p.status == (PaymentStatus::Pending { stage: PendingStage::Submitted }))
                {
                    let existing = (*existing).clone();
                    let token = account.method(m.method_id).map(|x| x.token.clone());
                    return Ok(token.map(|t| Some((existing, t))));
                }
                let amount = m.debit_amount(debit_base(account, &m, period, self));
                let Some(method) = account.method(m.method_id).filter(|x| x.usable(today)).cloned() else {
                    let suspended = account.mandate_mut(m.id).is_some_and(|mm| mm.record_failure(period, today, &policy));
                    changes.notify([account.notice(
                        format!("autopay-failed:{}:{period}:{attempt}", m.id),
                        NoticeBody::AutopayFailed {
                            amount,
                            method: account.method(m.method_id).map(|x| x.details.masked()).unwrap_or_default(),
                            reason: AutopayFailure::MethodUnavailable,
                            retry_on: None,
                            suspended,
                        },
                    )]);
                    return Ok(Some(None));
                };
                if !amount.is_positive() {
                    if let Some(mm) = account.mandate_mut(m.id) {
                        mm.record_success(period);
                    }
                    changes.audit.push(account.audit(now, actor.clone(), format!("mandate:{}", m.id), "mandate.nothing_due", format!("period {period}")));
                    return Ok(Some(None));
                }
                if let Some(mm) = account.mandate_mut(m.id) {
                    mm.record_attempt(period, attempt);
                }
                let payment = Payment {
                    id: payment_id,
                    reference: reference.clone(),
                    amount,
                    refunded: Money::ZERO,
                    instrument: PaymentInstrument::Saved { method_id: method.id, details: method.details.clone() },
                    channel: PaymentChannel::Autopay { mandate_id: m.id, period },
                    status: PaymentStatus::Pending { stage: PendingStage::Submitted },
                    gateway_id: None,
                    idempotency_key: key.clone(),
                    initiated_at: now,
                    initiated_on: today,
                    expected_settlement: None,
                    allocations: Vec::new(),
                    history: Vec::new(),
                };
                changes.idempotency.push(crate::account::IdempotencyRecord {
                    scope: format!("autopay:{account_id}"),
                    key: key.clone(),
                    request_digest: key.clone(),
                    payment_id,
                    account_id,
                    created_at: now,
                });
                changes.audit.push(account.audit(now, actor.clone(), format!("payment:{payment_id}"), "payment.submitted", format!("autopay {reference} ${amount}")));
                account.ledger.add_payment(payment.clone());
                Ok(Some(Some((payment, method.token))))
            })
            .await;
        let (payment, token, account) = match created {
            Ok((Some(Some((payment, token))), account)) => (payment, token, account),
            Ok((_, account)) => return Ok((0, account)),
            // Another instance created this attempt first.
            Err(ServiceError::Invalid(v)) if v.has("Idempotency-Key") => {
                return Ok((0, self.account(account_id).await?));
            }
            Err(e) => return Err(e),
        };
        if payment.status
            != (PaymentStatus::Pending {
                stage: PendingStage::Submitted,
            })
        {
            return Ok((0, account));
        }
        // Step 2: the gateway, with a key that cannot charge twice.
        let Some(kind) = payment.instrument.method_kind() else {
            return Ok((0, account));
        };
        let outcome = self
            .deps
            .gateway
            .charge(ChargeRequest {
                idempotency_key: gateway_key(payment.id),
                amount: payment.amount,
                token,
                kind,
                payment_id: payment.id,
                reference: payment.reference.clone(),
            })
            .await;
        let (event, gateway_id, cause) = match outcome {
            Ok(o) => {
                let event = match o.status {
                    crate::ports::ChargeStatus::Succeeded => PaymentEvent::Settled,
                    crate::ports::ChargeStatus::Processing {
                        expected_settlement,
                    } => PaymentEvent::Processing {
                        expected_settlement,
                    },
                    crate::ports::ChargeStatus::Declined { reason } => {
                        PaymentEvent::Declined { reason }
                    }
                };
                (event, Some(o.gateway_id), "autopay debit".to_string())
            }
            Err(GatewayError::Unknown(_)) => return Ok((1, account)),
            Err(GatewayError::Rejected(msg) | GatewayError::Protocol(msg)) => (
                PaymentEvent::Declined {
                    reason: crate::payment::DeclineReason::ProcessingError,
                },
                None,
                format!("gateway refused the request: {msg}"),
            ),
        };
        let (_, account) = self
            .apply_outcome_loaded(account, payment.id, event, gateway_id, &actor, &cause)
            .await?;
        Ok((1, account))
    }
}

/// What the amount-due rule would charge for a period: bills due before the next debit, plus,
/// for longer periods, the premiums of months not billed yet whose due dates fall in it.
fn debit_base(account: &Account, m: &Mandate, period: u32, portal: &Portal) -> Money {
    let next = m.debit_date(period + 1);
    let mut due = account.amount_due_before(next);
    if m.frequency == Frequency::Quarterly {
        let billing = &portal.config().billing;
        for e in &account.enrollments {
            let mut month = crate::calendar::CoverageMonth::of(m.debit_date(period)).plus(1);
            while billing.due_date(month) < next {
                let billed = account.ledger.bills.iter().any(|b| {
                    b.enrollment_id == e.id && b.coverage_month == month && b.kind.is_premium()
                });
                if !billed && e.covers(month) {
                    due = due.checked_add(e.premium_share()).unwrap_or(due);
                }
                month = month.plus(1);
            }
        }
    }
    due
}

/// How a debit's payment event counts for its mandate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DebitOutcome {
    /// Settled or processing.
    Succeeded,
    /// Declined or returned.
    Failed,
    /// Neither (a refund).
    Other,
}

/// Updates a mandate after its debit's outcome and returns the notices to send.
pub(crate) fn record_debit_result(
    account: &mut Account,
    mandate_id: MandateId,
    period: u32,
    outcome: DebitOutcome,
    today: NaiveDate,
    policy: &RetryPolicy,
    payment: &Payment,
) -> Vec<Option<Notice>> {
    let Some(m) = account.mandate_mut(mandate_id) else {
        return vec![];
    };
    match outcome {
        DebitOutcome::Succeeded => {
            m.record_success(period);
            return vec![];
        }
        DebitOutcome::Other => return vec![],
        DebitOutcome::Failed => {}
    }
    let suspended = m.record_failure(period, today, policy);
    let retry_on = m.retry_on;
    let reason = match payment.status {
        PaymentStatus::Returned { code } => AutopayFailure::Returned { code },
        PaymentStatus::Failed { reason } => AutopayFailure::Declined { reason },
        _ => AutopayFailure::Declined {
            reason: crate::payment::DeclineReason::ProcessingError,
        },
    };
    vec![account.notice(
        format!("autopay-failed:{mandate_id}:{}", payment.id),
        NoticeBody::AutopayFailed {
            amount: payment.amount,
            method: payment.instrument.masked(),
            reason,
            retry_on,
            suspended,
        },
    )]
}
