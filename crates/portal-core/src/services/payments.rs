//! Payments: saved methods, review-then-confirm, paying with an idempotency key, guest pay,
//! gateway outcomes (webhooks and reconciliation), refunds and offline payments.
//!
//! A payment is saved as `pending/submitted` together with its idempotency record *before* the
//! gateway is called, and the gateway gets an idempotency key derived from the payment id. A
//! retry with the same key finds the record and returns the same payment; a crash after the
//! gateway call leaves a submitted payment that reconciliation resolves with the same key. So
//! no path charges twice.

use super::{Portal, ServiceError};
use crate::account::{Account, IdempotencyRecord};
use crate::audit::Actor;
use crate::error::{FieldError, ValidationErrors};
use crate::identity::{AccountNumber, DateOfBirth, PersonName};
use crate::ids::{AccountId, AgentId, MethodId, PaymentId};
use crate::instrument::{GatewayToken, MethodDetails, PaymentMethod};
use crate::money::Money;
use crate::notice::NoticeBody;
use crate::payment::{
    OfflineKind, Payment, PaymentChannel, PaymentEvent, PaymentInstrument, PaymentStatus,
    PendingStage,
};
use crate::ports::{
    AccountLookup, ChargeOutcome, ChargeRequest, ChargeStatus, GatewayError, GatewayEvent,
    PaymentLookup, RefundRequest,
};
use chrono::NaiveDate;
use sha2::{Digest as _, Sha256};

/// How a payment is paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayWith {
    /// A saved method of the account.
    Saved(MethodId),
    /// A fresh gateway token; `save` keeps it as a method of the account.
    Token {
        /// The token from the gateway's tokenization.
        token: GatewayToken,
        /// Whether to save it.
        save: bool,
    },
}

/// A member's payment request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MakePayment {
    /// The account (from the session, never from the request body).
    pub account_id: AccountId,
    /// Amount; `None` pays the amount due.
    pub amount: Option<Money>,
    /// Method.
    pub method: PayWith,
    /// The client's idempotency key.
    pub idempotency_key: String,
}

/// The review summary shown before the member confirms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentPreview {
    /// Amount to pay.
    pub amount: Money,
    /// Amount due now.
    pub amount_due: Money,
    /// Earliest open due date.
    pub due_date: Option<NaiveDate>,
    /// Masked method.
    pub method: String,
    /// Whether it is a bank transfer (processing for a few days).
    pub bank_transfer: bool,
    /// What will be left to pay (negative: credit).
    pub balance_after: Money,
}

/// What the member sees after paying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentReceipt {
    /// The payment.
    pub payment: Payment,
    /// What is still due after it.
    pub amount_due_after: Money,
    /// Whether this is the stored result of an earlier identical request.
    pub replayed: bool,
}

impl PaymentReceipt {
    /// The payment.
    pub fn payment(&self) -> &Payment {
        &self.payment
    }
}

/// The guest-pay identification form.
#[derive(Debug, Clone, Default)]
pub struct GuestPayForm {
    /// Account number.
    pub account_number: String,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// Date of birth, `YYYY-MM-DD`.
    pub date_of_birth: String,
}

/// A guest's matched account: what is due, without anything personal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestMatch {
    /// The account (kept server-side in the guest flow).
    pub account_id: AccountId,
    /// Amount due.
    pub amount_due: Money,
    /// Earliest due date.
    pub due_date: Option<NaiveDate>,
}

/// An offline payment a support agent records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflinePaymentForm {
    /// Amount.
    pub amount: Money,
    /// Check, money order, bill pay.
    pub kind: OfflineKind,
    /// Check or money-order number.
    pub document_number: Option<String>,
    /// When it was received: the date that counts for being on time.
    pub received_on: NaiveDate,
    /// Idempotency key, so recording twice records once.
    pub idempotency_key: String,
}

fn check_idempotency_key(key: &str) -> Result<(), ValidationErrors> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(ValidationErrors::one(FieldError::new(
            "Idempotency-Key",
            "format",
            "send an Idempotency-Key of 1 to 255 visible ASCII characters",
        )));
    }
    Ok(())
}

fn request_digest(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The receipt of `payment_id` from the account as it stands.
fn receipt_of(
    account: &Account,
    payment_id: PaymentId,
    replayed: bool,
) -> Result<PaymentReceipt, ServiceError> {
    let payment = account
        .ledger
        .payment(payment_id)
        .cloned()
        .ok_or(ServiceError::NotFound("payment"))?;
    Ok(PaymentReceipt {
        payment,
        amount_due_after: account.amount_due(),
        replayed,
    })
}

/// The gateway idempotency key for a payment: stable across retries and crashes.
pub fn gateway_key(payment: PaymentId) -> String {
    format!("pay_{}", payment.uuid().simple())
}

fn event_for(status: &ChargeStatus) -> PaymentEvent {
    match status {
        ChargeStatus::Succeeded => PaymentEvent::Settled,
        ChargeStatus::Processing {
            expected_settlement,
        } => PaymentEvent::Processing {
            expected_settlement: *expected_settlement,
        },
        ChargeStatus::Declined { reason } => PaymentEvent::Declined { reason: *reason },
    }
}

/// Everything needed to create a payment, resolved before anything is written.
struct NewPayment {
    scope: String,
    key: String,
    digest: String,
    amount: Option<Money>,
    instrument: PaymentInstrument,
    token: Option<GatewayToken>,
    /// Whether the token becomes a saved method (of the instrument's id) once the gateway
    /// accepts the payment.
    save: bool,
    channel: PaymentChannel,
    actor: Actor,
    initiated_on: Option<NaiveDate>,
}

impl Portal {
    /// Saves a method from a gateway token; the gateway tells what it is.
    pub async fn add_payment_method(
        &self,
        account_id: AccountId,
        token: GatewayToken,
    ) -> Result<PaymentMethod, ServiceError> {
        let details = self.describe(&token).await?;
        let method = PaymentMethod {
            id: self.new_id(),
            account_id,
            token,
            details,
            added_at: self.now(),
            removed_at: None,
        };
        let now = self.now();
        self.update_account(account_id, |account, changes| {
            if account
                .methods
                .iter()
                .any(|m| m.token == method.token && m.removed_at.is_none())
            {
                return Ok(Some(
                    account
                        .methods
                        .iter()
                        .find(|m| m.token == method.token)
                        .cloned(),
                ));
            }
            account.methods.push(method.clone());
            changes.audit.push(account.audit(
                now,
                Actor::Member,
                format!("method:{}", method.id),
                "method.added",
                method.details.masked(),
            ));
            Ok(Some(Some(method.clone())))
        })
        .await?
        .ok_or(ServiceError::NotFound("payment method"))
    }

    async fn describe(&self, token: &GatewayToken) -> Result<MethodDetails, ServiceError> {
        let details = match self.deps.gateway.describe_method(token.clone()).await {
            Ok(d) => d,
            Err(GatewayError::Rejected(_)) => {
                return Err(ValidationErrors::one(FieldError::new(
                    "payment_method_token",
                    "unknown",
                    "the payment method could not be found; enter the details again",
                ))
                .into());
            }
            Err(e) => return Err(e.into()),
        };
        if !self.config.methods.accepts(details.kind()) {
            return Err(ValidationErrors::one(FieldError::new(
                "payment_method",
                "not_accepted",
                "this kind of payment method is not accepted here",
            ))
            .into());
        }
        if let MethodDetails::Card { expiry, .. } = &details {
            if expiry.is_expired(self.today()) {
                return Err(ValidationErrors::one(FieldError::new(
                    "payment_method",
                    "expired",
                    "this card has expired",
                ))
                .into());
            }
        }
        Ok(details)
    }

    /// Removes a saved method; an active autopay using it must be changed first.
    pub async fn remove_payment_method(
        &self,
        account_id: AccountId,
        method_id: MethodId,
    ) -> Result<(), ServiceError> {
        let now = self.now();
        self.update_account(account_id, |account, changes| {
            if account
                .current_mandate()
                .is_some_and(|m| m.method_id == method_id)
            {
                return Err(ServiceError::Rejected(
                    "this method pays your automatic payments; change or cancel them first".into(),
                ));
            }
            let Some(m) = account
                .methods
                .iter_mut()
                .find(|m| m.id == method_id && m.removed_at.is_none())
            else {
                return Err(ServiceError::NotFound("payment method"));
            };
            m.removed_at = Some(now);
            let label = m.details.masked();
            changes.audit.push(account.audit(
                now,
                Actor::Member,
                format!("method:{method_id}"),
                "method.removed",
                label,
            ));
            Ok(Some(()))
        })
        .await
    }

    fn resolve_amount(
        &self,
        account: &Account,
        amount: Option<Money>,
    ) -> Result<Money, ServiceError> {
        let amount = match amount {
            Some(a) => a,
            None => account.amount_due(),
        };
        if !amount.is_positive() {
            return Err(ValidationErrors::one(FieldError::new(
                "amount",
                "nothing_due",
                "nothing is due right now; enter an amount to pay ahead",
            ))
            .into());
        }
        if amount > self.config.max_payment {
            return Err(ValidationErrors::one(FieldError::new(
                "amount",
                "too_large",
                format!(
                    "a single payment can be at most ${}",
                    self.config.max_payment
                ),
            ))
            .into());
        }
        Ok(amount)
    }

    /// The review summary for a payment, changing nothing.
    pub async fn preview_payment(
        &self,
        account_id: AccountId,
        amount: Option<Money>,
        method: &PayWith,
    ) -> Result<PaymentPreview, ServiceError> {
        let account = self.account(account_id).await?;
        let amount = self.resolve_amount(&account, amount)?;
        let details = match method {
            PayWith::Saved(id) => self.saved_method(&account, *id)?.details.clone(),
            PayWith::Token { token, .. } => self.describe(token).await?,
        };
        let summary = account.summary(&self.config.delinquency, self.today());
        Ok(PaymentPreview {
            amount,
            amount_due: summary.amount_due,
            due_date: summary.next_due_date,
            method: details.masked(),
            bank_transfer: details.kind() == crate::instrument::MethodKind::BankAccount,
            balance_after: account
                .ledger
                .balance()
                .checked_sub(amount)
                .unwrap_or(Money::ZERO),
        })
    }

    fn saved_method<'a>(
        &self,
        account: &'a Account,
        id: MethodId,
    ) -> Result<&'a PaymentMethod, ServiceError> {
        let m = account
            .method(id)
            .filter(|m| m.removed_at.is_none())
            .ok_or_else(|| {
                ValidationErrors::one(FieldError::new(
                    "payment_method_id",
                    "unknown",
                    "choose one of your saved payment methods",
                ))
            })?;
        if !m.usable(self.today()) {
            return Err(ValidationErrors::one(FieldError::new(
                "payment_method_id",
                "expired",
                "this card has expired; add a new one",
            ))
            .into());
        }
        if !self.config.methods.accepts(m.details.kind()) {
            return Err(ValidationErrors::one(FieldError::new(
                "payment_method_id",
                "not_accepted",
                "this kind of payment method is not accepted here",
            ))
            .into());
        }
        Ok(m)
    }

    /// Pays: at most once per idempotency key, whatever retries or crashes happen.
    pub async fn make_payment(&self, cmd: MakePayment) -> Result<PaymentReceipt, ServiceError> {
        check_idempotency_key(&cmd.idempotency_key)?;
        let account = self.account(cmd.account_id).await?;
        let method_part;
        let (instrument, token, save) = match &cmd.method {
            PayWith::Saved(id) => {
                let m = self.saved_method(&account, *id)?;
                method_part = format!("saved:{id}");
                (
                    PaymentInstrument::Saved {
                        method_id: m.id,
                        details: m.details.clone(),
                    },
                    Some(m.token.clone()),
                    false,
                )
            }
            PayWith::Token { token, save } => {
                method_part = format!("token:{}:{save}", token.as_ref());
                let details = self.describe(token).await?;
                // The method is saved with the gateway's acceptance of the payment, never
                // before: a declined card is not kept.
                let instrument = if *save {
                    PaymentInstrument::Saved {
                        method_id: self.new_id(),
                        details,
                    }
                } else {
                    PaymentInstrument::OneTime { details }
                };
                (instrument, Some(token.clone()), *save)
            }
        };
        let amount_part = cmd
            .amount
            .map_or_else(|| "due".to_owned(), |a| a.to_string());
        self.submit(
            NewPayment {
                scope: format!("account:{}", cmd.account_id),
                key: cmd.idempotency_key.clone(),
                digest: request_digest(&[&amount_part, &method_part]),
                amount: cmd.amount,
                instrument,
                token,
                save,
                channel: PaymentChannel::Member,
                actor: Actor::Member,
                initiated_on: None,
            },
            cmd.account_id,
            Some(account),
        )
        .await
    }

    /// Finds an account for guest pay by account number, name and date of birth. A mismatch
    /// says only that the details don't match.
    pub async fn guest_match(&self, form: &GuestPayForm) -> Result<GuestMatch, ServiceError> {
        let mut v = crate::error::Validator::new();
        let number = v.check("account_number", AccountNumber::parse(&form.account_number));
        let first = v.check("first_name", PersonName::parse(&form.first_name));
        let last = v.check("last_name", PersonName::parse(&form.last_name));
        let dob = v.check(
            "date_of_birth",
            chrono::NaiveDate::parse_from_str(form.date_of_birth.trim(), "%Y-%m-%d")
                .map_err(|_| crate::identity::DateOfBirthError::Format),
        );
        let (number, first, last, dob) = v.finish((|| Some((number?, first?, last?, dob?)))())?;
        let Some(id) = self
            .deps
            .store
            .find_account(AccountLookup::Number(number))
            .await?
        else {
            return Err(ServiceError::NoMatch);
        };
        let account = self.account(id).await?;
        let h = &account.holder;
        let matches = h.first_name.match_key() == first.match_key()
            && h.last_name.match_key() == last.match_key()
            && DateOfBirth::from_record(h.date_of_birth) == DateOfBirth::from_record(dob);
        if !matches {
            return Err(ServiceError::NoMatch);
        }
        let summary = account.summary(&self.config.delinquency, self.today());
        Ok(GuestMatch {
            account_id: id,
            amount_due: summary.amount_due,
            due_date: summary.next_due_date,
        })
    }

    /// Guest pay: match the account, then pay with a one-time token.
    pub async fn guest_pay(
        &self,
        form: &GuestPayForm,
        amount: Option<Money>,
        token: GatewayToken,
        idempotency_key: &str,
    ) -> Result<PaymentReceipt, ServiceError> {
        check_idempotency_key(idempotency_key)?;
        let matched = self.guest_match(form).await?;
        let details = self.describe(&token).await?;
        let amount_part = amount.map_or_else(|| "due".to_owned(), |a| a.to_string());
        self.submit(
            NewPayment {
                scope: format!("guest:{}", matched.account_id),
                key: idempotency_key.to_owned(),
                digest: request_digest(&[&amount_part, token.as_ref()]),
                amount,
                instrument: PaymentInstrument::OneTime { details },
                token: Some(token),
                save: false,
                channel: PaymentChannel::Guest,
                actor: Actor::Guest,
                initiated_on: None,
            },
            matched.account_id,
            None,
        )
        .await
    }

    /// Records a check, money order or bill-pay received outside the portal.
    pub async fn record_offline_payment(
        &self,
        agent: AgentId,
        account_id: AccountId,
        form: OfflinePaymentForm,
    ) -> Result<PaymentReceipt, ServiceError> {
        check_idempotency_key(&form.idempotency_key)?;
        let today = self.today();
        if form.received_on > today || form.received_on < crate::calendar::sub_days(today, 366) {
            return Err(ValidationErrors::one(FieldError::new(
                "received_on",
                "out_of_range",
                "the date received must be within the last year and not in the future",
            ))
            .into());
        }
        if form
            .document_number
            .as_ref()
            .is_some_and(|d| d.chars().count() > 40 || d.chars().any(char::is_control))
        {
            return Err(ValidationErrors::one(FieldError::new(
                "document_number",
                "format",
                "a check or money-order number has at most 40 characters",
            ))
            .into());
        }
        form.amount
            .require_positive()
            .map_err(|e| ValidationErrors::one(FieldError::from(e)))?;
        self.submit(
            NewPayment {
                scope: format!("offline:{account_id}"),
                key: form.idempotency_key.clone(),
                digest: request_digest(&[
                    &form.amount.to_string(),
                    form.kind.label(),
                    form.document_number.as_deref().unwrap_or(""),
                ]),
                amount: Some(form.amount),
                instrument: PaymentInstrument::Offline {
                    kind: form.kind,
                    document_number: form.document_number.clone(),
                },
                token: None,
                save: false,
                channel: PaymentChannel::Agent { agent_id: agent },
                actor: Actor::Agent { id: agent },
                initiated_on: Some(form.received_on),
            },
            account_id,
            None,
        )
        .await
    }

    /// Creates the payment and its idempotency record in one commit, then settles it with the
    /// gateway (or at once for offline payments). The account is read once (or taken as the
    /// caller loaded it); each commit hands the next step the account as committed. A key used
    /// before answers with its payment (or `Conflict` when the request differs).
    async fn submit(
        &self,
        new: NewPayment,
        account_id: AccountId,
        loaded: Option<Account>,
    ) -> Result<PaymentReceipt, ServiceError> {
        // The idempotency key is checked by the commit that creates the payment (its record
        // is unique): a repeated key fails that commit, and the error path below answers with
        // the first payment. No lookup before it: a first request, by far the common case,
        // pays one round trip less.
        let store = &self.deps.store;
        let payment_id: PaymentId = self.new_id();
        let reference = self.deps.ids.payment_reference();
        let now = self.now();
        let today = self.today();
        let account = match loaded {
            Some(a) => a,
            None => self.account(account_id).await?,
        };
        let created = self
            .update_loaded(account, |account, changes| {
                let amount = self.resolve_amount(account, new.amount)?;
                let payment = Payment {
                    id: payment_id,
                    reference: reference.clone(),
                    amount,
                    refunded: Money::ZERO,
                    instrument: new.instrument.clone(),
                    channel: new.channel,
                    status: PaymentStatus::Pending {
                        stage: PendingStage::Submitted,
                    },
                    gateway_id: None,
                    idempotency_key: new.key.clone(),
                    initiated_at: now,
                    initiated_on: new.initiated_on.unwrap_or(today),
                    expected_settlement: None,
                    allocations: Vec::new(),
                    history: Vec::new(),
                };
                changes.idempotency.push(IdempotencyRecord {
                    scope: new.scope.clone(),
                    key: new.key.clone(),
                    request_digest: new.digest.clone(),
                    payment_id,
                    account_id,
                    created_at: now,
                });
                changes.audit.push(account.audit(
                    now,
                    new.actor.clone(),
                    format!("payment:{payment_id}"),
                    "payment.submitted",
                    format!(
                        "{} ${} by {}",
                        reference,
                        amount,
                        payment.instrument.masked()
                    ),
                ));
                account.ledger.add_payment(payment.clone());
                Ok(Some(payment))
            })
            .await;
        let (payment, account) = match created {
            Ok((Some(p), account)) => (p, account),
            Ok((None, _)) => return Err(ServiceError::NotFound("payment")),
            Err(e) => {
                // The key was used before, or a concurrent request with it won while this one
                // waited (its payment can even have made the amount due zero): its result is
                // ours.
                if let Some(rec) = store
                    .idempotency_record(new.scope.clone(), new.key.clone())
                    .await?
                {
                    return self.replay(rec, &new.digest, new.token.clone()).await;
                }
                return Err(e);
            }
        };
        match &new.token {
            Some(token) => {
                self.charge_loaded(account, &payment, token.clone(), &new.actor, new.save)
                    .await
            }
            None => {
                let (_, account) = self
                    .apply_outcome_loaded(
                        account,
                        payment.id,
                        PaymentEvent::Settled,
                        None,
                        &new.actor,
                        "recorded offline payment",
                    )
                    .await?;
                receipt_of(&account, payment.id, false)
            }
        }
    }

    /// Answers a repeated key with its payment. `token` is the repeated request's own (the
    /// same as the first's, since the request digests match).
    async fn replay(
        &self,
        rec: IdempotencyRecord,
        digest: &str,
        token: Option<GatewayToken>,
    ) -> Result<PaymentReceipt, ServiceError> {
        if rec.request_digest != digest {
            return Err(ServiceError::Conflict(
                "this Idempotency-Key was already used for a different payment request".into(),
            ));
        }
        let account = self.account(rec.account_id).await?;
        let receipt = receipt_of(&account, rec.payment_id, true)?;
        // A crash between saving and calling the gateway leaves the payment submitted: resume
        // it with the same gateway key, which cannot charge twice.
        let p = receipt.payment.clone();
        if p.status
            == (PaymentStatus::Pending {
                stage: PendingStage::Submitted,
            })
        {
            // A method to be saved is saved only once the payment is accepted, so until then
            // the request's own token resumes it.
            let save = matches!(p.instrument, PaymentInstrument::Saved { method_id, .. }
                if account.method(method_id).is_none());
            if let Some(token) = self.token_for(&account, &p).or(token) {
                let mut resumed = self
                    .charge_loaded(account, &p, token, &Actor::Member, save)
                    .await?;
                resumed.replayed = true;
                return Ok(resumed);
            }
        }
        Ok(receipt)
    }

    fn token_for(&self, account: &Account, p: &Payment) -> Option<GatewayToken> {
        match &p.instrument {
            PaymentInstrument::Saved { method_id, .. } => {
                account.method(*method_id).map(|m| m.token.clone())
            }
            _ => None,
        }
    }

    /// Charges a submitted payment of `account` (as last committed) and records the outcome;
    /// with `save`, the token becomes the saved method the payment names once the gateway
    /// accepts it.
    async fn charge_loaded(
        &self,
        account: Account,
        payment: &Payment,
        token: GatewayToken,
        actor: &Actor,
        save: bool,
    ) -> Result<PaymentReceipt, ServiceError> {
        let Some(kind) = payment.instrument.method_kind() else {
            return Err(ServiceError::Internal(
                "offline payments are not charged".into(),
            ));
        };
        let request = ChargeRequest {
            idempotency_key: gateway_key(payment.id),
            amount: payment.amount,
            token: token.clone(),
            kind,
            payment_id: payment.id,
            reference: payment.reference.clone(),
        };
        let account = match self.deps.gateway.charge(request).await {
            Ok(ChargeOutcome { gateway_id, status }) => {
                self.apply_outcome_saving(
                    account,
                    payment.id,
                    event_for(&status),
                    Some(gateway_id),
                    actor,
                    "gateway response",
                    save.then_some(&token),
                )
                .await?
                .1
            }
            // Unknown: stays pending; reconciliation asks the gateway later with the same key.
            Err(GatewayError::Unknown(_)) => account,
            Err(GatewayError::Rejected(msg)) | Err(GatewayError::Protocol(msg)) => {
                self.apply_outcome_loaded(
                    account,
                    payment.id,
                    PaymentEvent::Declined {
                        reason: crate::payment::DeclineReason::ProcessingError,
                    },
                    None,
                    actor,
                    &format!("gateway refused the request: {msg}"),
                )
                .await?
                .1
            }
        };
        receipt_of(&account, payment.id, false)
    }

    /// Applies a payment event to the ledger with its notices and audit entry. Returns whether
    /// the payment changed (a repeated event changes nothing).
    pub(crate) async fn apply_outcome(
        &self,
        account_id: AccountId,
        payment_id: PaymentId,
        event: PaymentEvent,
        gateway_id: Option<String>,
        actor: &Actor,
        cause: &str,
    ) -> Result<bool, ServiceError> {
        let account = self.account(account_id).await?;
        self.apply_outcome_loaded(account, payment_id, event, gateway_id, actor, cause)
            .await
            .map(|(changed, _)| changed)
    }

    /// [`Portal::apply_outcome`] on an account already loaded; also returns the account as it
    /// now stands.
    pub(crate) async fn apply_outcome_loaded(
        &self,
        account: Account,
        payment_id: PaymentId,
        event: PaymentEvent,
        gateway_id: Option<String>,
        actor: &Actor,
        cause: &str,
    ) -> Result<(bool, Account), ServiceError> {
        self.apply_outcome_saving(account, payment_id, event, gateway_id, actor, cause, None)
            .await
    }

    /// [`Portal::apply_outcome_loaded`]; with `save`, a payment by a method to be saved that the
    /// gateway accepted (succeeded or processing) saves it in the same commit.
    #[allow(clippy::too_many_arguments)]
    async fn apply_outcome_saving(
        &self,
        account: Account,
        payment_id: PaymentId,
        event: PaymentEvent,
        gateway_id: Option<String>,
        actor: &Actor,
        cause: &str,
        save: Option<&GatewayToken>,
    ) -> Result<(bool, Account), ServiceError> {
        let now = self.now();
        let today = self.today();
        let policy = self.config.autopay;
        let (changed, account) = self
            .update_loaded(account, |account, changes| {
                let Some(p) = account.ledger.payment(payment_id) else {
                    return Err(ServiceError::NotFound("payment"));
                };
                let before = p.status;
                let needs_id = gateway_id.is_some() && p.gateway_id.is_none();
                let changed = match account.ledger.apply_payment_event(
                    payment_id,
                    event.clone(),
                    now,
                    today,
                    &format!("{actor}: {cause}"),
                ) {
                    Ok(c) => c,
                    // The payment already moved on (a webhook beat the gateway's own response).
                    Err(crate::ledger::LedgerError::Transition(_))
                        if before
                            != (PaymentStatus::Pending {
                                stage: PendingStage::Submitted,
                            }) =>
                    {
                        false
                    }
                    Err(e) => return Err(e.into()),
                };
                if needs_id {
                    if let Some(p) = account.ledger.payment_mut(payment_id) {
                        p.gateway_id = gateway_id.clone();
                    }
                }
                let saved = match (save, account.ledger.payment(payment_id)) {
                    (Some(token), Some(p)) => save_accepted_method(account, p.clone(), token, now),
                    _ => false,
                };
                if !changed {
                    return Ok((needs_id || saved).then_some(false));
                }
                let Some(p) = account.ledger.payment(payment_id).cloned() else {
                    return Err(ServiceError::NotFound("payment"));
                };
                changes.audit.push(account.audit(
                    now,
                    actor.clone(),
                    format!("payment:{payment_id}"),
                    &format!("payment.{}", p.status.name()),
                    format!("{} ${} {}", p.reference, p.amount, cause),
                ));
                let reference = p.reference.to_string();
                let method = p.instrument.masked();
                let notice = match (&event, p.status) {
                    (PaymentEvent::Settled, _)
                        if before
                            == (PaymentStatus::Pending {
                                stage: PendingStage::Processing,
                            }) =>
                    {
                        None
                    }
                    (PaymentEvent::Settled | PaymentEvent::Processing { .. }, _) => account.notice(
                        format!("payment-confirmation:{payment_id}"),
                        NoticeBody::PaymentConfirmation {
                            reference,
                            amount: p.amount,
                            method,
                            paid_on: p.initiated_on,
                            settles_by: p.expected_settlement.filter(|_| {
                                p.is_bank_transfer() && p.status != PaymentStatus::Succeeded
                            }),
                        },
                    ),
                    (PaymentEvent::Declined { reason }, _) => account.notice(
                        format!("payment-failed:{payment_id}"),
                        NoticeBody::PaymentFailed {
                            reference,
                            amount: p.amount,
                            method,
                            reason: *reason,
                        },
                    ),
                    (PaymentEvent::Returned { code }, _) => account.notice(
                        format!("payment-returned:{payment_id}"),
                        NoticeBody::BankTransferReturned {
                            reference,
                            amount: p.amount,
                            method,
                            code: *code,
                            amount_due: account.amount_due(),
                        },
                    ),
                    (PaymentEvent::Refunded { amount }, _) => account.notice(
                        format!("refund:{payment_id}:{}", p.refunded.cents()),
                        NoticeBody::RefundIssued {
                            reference,
                            amount: *amount,
                            method,
                        },
                    ),
                };
                changes.notify([notice]);
                // An autopay debit that fails or comes back counts against its mandate.
                if let PaymentChannel::Autopay { mandate_id, period } = p.channel {
                    use super::autopay::DebitOutcome;
                    let outcome = match event {
                        PaymentEvent::Declined { .. } | PaymentEvent::Returned { .. } => {
                            DebitOutcome::Failed
                        }
                        PaymentEvent::Settled | PaymentEvent::Processing { .. } => {
                            DebitOutcome::Succeeded
                        }
                        PaymentEvent::Refunded { .. } => DebitOutcome::Other,
                    };
                    let notices = super::autopay::record_debit_result(
                        account, mandate_id, period, outcome, today, &policy, &p,
                    );
                    changes.notify(notices);
                }
                // Money that arrives or goes re-decides coverage in the same commit: a cure, an
                // effectuated binder, a reinstatement, or a termination a back-dated check undoes.
                self.record_coverage(account, changes, today, actor);
                Ok(Some(true))
            })
            .await?;
        Ok((changed.unwrap_or(false), account))
    }

    /// Applies a verified gateway event (webhook). Repeats change nothing. A refund event
    /// carries the total refunded so far (as gateways report it); only the part not yet
    /// recorded is applied, so refunds the portal made itself are not counted twice.
    pub async fn record_gateway_event(&self, event: GatewayEvent) -> Result<bool, ServiceError> {
        let store = &self.deps.store;
        let mut found = store
            .find_payment(PaymentLookup::GatewayId(event.gateway_id.clone()))
            .await?;
        if found.is_none() {
            if let Some(id) = event.payment_id {
                found = store.find_payment(PaymentLookup::Id(id)).await?;
            }
        }
        let Some((account_id, payment_id)) = found else {
            return Err(ServiceError::NotFound("payment"));
        };
        let mut applied = event.event;
        if let PaymentEvent::Refunded { amount: total } = applied {
            let recorded = self.payment(account_id, payment_id).await?.refunded;
            let increment = total.saturating_sub(recorded);
            if increment.is_zero() {
                return Ok(false);
            }
            applied = PaymentEvent::Refunded { amount: increment };
        }
        let actor = Actor::Gateway {
            event_id: Some(event.event_id.clone()),
        };
        self.apply_outcome(
            account_id,
            payment_id,
            applied,
            Some(event.gateway_id),
            &actor,
            "webhook",
        )
        .await
    }

    /// Asks the gateway about a payment whose outcome is unknown or whose settlement is late.
    pub async fn reconcile_payment(
        &self,
        account_id: AccountId,
        payment_id: PaymentId,
    ) -> Result<bool, ServiceError> {
        let account = self.account(account_id).await?;
        let Some(p) = account.ledger.payment(payment_id) else {
            return Err(ServiceError::NotFound("payment"));
        };
        if !matches!(p.status, PaymentStatus::Pending { .. })
            || p.instrument.method_kind().is_none()
        {
            return Ok(false);
        }
        let actor = Actor::System {
            job: "reconciliation".into(),
        };
        match self.deps.gateway.lookup(gateway_key(payment_id)).await? {
            Some(ChargeOutcome { gateway_id, status }) => {
                self.apply_outcome(
                    account_id,
                    payment_id,
                    event_for(&status),
                    Some(gateway_id),
                    &actor,
                    "reconciled with gateway",
                )
                .await
            }
            None if p.status
                == (PaymentStatus::Pending {
                    stage: PendingStage::Submitted,
                })
                && self.now() - p.initiated_at > self.config.reconcile_after =>
            {
                // The gateway never received it, long after any client timeout: nothing was
                // taken, and the key guarantees a late arrival cannot charge under it.
                self.apply_outcome(
                    account_id,
                    payment_id,
                    PaymentEvent::Declined {
                        reason: crate::payment::DeclineReason::ProcessingError,
                    },
                    None,
                    &actor,
                    "never reached the gateway",
                )
                .await
            }
            None => Ok(false),
        }
    }

    /// Refunds part of a payment back to its method: for overpayments, so at most the
    /// account's credit (no bill reopens).
    pub async fn refund(
        &self,
        agent: AgentId,
        account_id: AccountId,
        payment_id: PaymentId,
        amount: Money,
    ) -> Result<PaymentReceipt, ServiceError> {
        amount
            .require_positive()
            .map_err(|e| ValidationErrors::one(FieldError::from(e)))?;
        let account = self.account(account_id).await?;
        let p = account
            .ledger
            .payment(payment_id)
            .ok_or(ServiceError::NotFound("payment"))?;
        let refundable = p.net().min(account.ledger.credit());
        if amount > refundable {
            return Err(ValidationErrors::one(FieldError::new(
                "amount",
                "exceeds_credit",
                format!(
                    "at most ${refundable} of this payment is an overpayment that can be refunded"
                ),
            ))
            .into());
        }
        let actor = Actor::Agent { id: agent };
        if p.instrument.method_kind().is_some() {
            let Some(gateway_id) = p.gateway_id.clone() else {
                return Err(ServiceError::Rejected(
                    "this payment has not reached the gateway yet".into(),
                ));
            };
            self.deps
                .gateway
                .refund(RefundRequest {
                    idempotency_key: format!(
                        "refund_{}_{}_{}",
                        payment_id.uuid().simple(),
                        p.refunded.cents(),
                        amount.cents()
                    ),
                    gateway_id,
                    amount,
                })
                .await?;
        }
        let (_, account) = self
            .apply_outcome_loaded(
                account,
                payment_id,
                PaymentEvent::Refunded { amount },
                None,
                &actor,
                "overpayment refund",
            )
            .await?;
        receipt_of(&account, payment_id, false)
    }

    /// A payment of the account by id (a foreign id answers `NotFound`).
    pub async fn payment(
        &self,
        account_id: AccountId,
        payment_id: PaymentId,
    ) -> Result<Payment, ServiceError> {
        self.account(account_id)
            .await?
            .ledger
            .payment(payment_id)
            .cloned()
            .ok_or(ServiceError::NotFound("payment"))
    }
}

/// Saves the method a payment names as its instrument, if the gateway accepted the payment
/// (succeeded or still processing) and the account does not hold it yet. Returns whether it
/// saved it.
fn save_accepted_method(
    account: &mut Account,
    p: Payment,
    token: &GatewayToken,
    now: chrono::DateTime<chrono::Utc>,
) -> bool {
    let PaymentInstrument::Saved { method_id, details } = p.instrument else {
        return false;
    };
    let accepted = matches!(
        p.status,
        PaymentStatus::Succeeded
            | PaymentStatus::Pending {
                stage: PendingStage::Processing
            }
    );
    if !accepted || account.methods.iter().any(|m| m.id == method_id) {
        return false;
    }
    account.methods.push(PaymentMethod {
        id: method_id,
        account_id: account.id,
        token: token.clone(),
        details,
        added_at: now,
        removed_at: None,
    });
    true
}
