//! Support-agent use cases: find a member, look up a reference, the account timeline, resend
//! a receipt. (Refunds, offline payments and plans are in their own modules.)

use super::{Portal, ServiceError};
use crate::audit::{Actor, AuditEvent};
use crate::ids::{AccountId, AgentId, PaymentId};
use crate::notice::NoticeBody;
use crate::payment::Payment;
use crate::ports::{AccountLookup, PaymentLookup};
use crate::reference::PaymentReference;

/// One line of an account's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEntry {
    /// The audit entry.
    pub event: AuditEvent,
}

impl Portal {
    /// Finds accounts by name, email, username, account number or payment reference.
    pub async fn find_accounts(&self, query: &str) -> Result<Vec<AccountId>, ServiceError> {
        let q = query.trim();
        if q.chars().count() < 2 || q.chars().count() > 100 {
            return Err(
                crate::error::ValidationErrors::one(crate::error::FieldError::new(
                    "q",
                    "length",
                    "search with 2 to 100 characters",
                ))
                .into(),
            );
        }
        if let Ok(r) = PaymentReference::parse(q) {
            if let Some((a, _)) = self
                .deps
                .store
                .find_payment(PaymentLookup::Reference(r))
                .await?
            {
                return Ok(vec![a]);
            }
        }
        if let Ok(n) = crate::identity::AccountNumber::parse(q) {
            if let Some(a) = self
                .deps
                .store
                .find_account(AccountLookup::Number(n))
                .await?
            {
                return Ok(vec![a]);
            }
        }
        Ok(self.deps.store.search_accounts(q.to_owned(), 50).await?)
    }

    /// A payment by reference number, with its account (support, or a member's own lookup
    /// after the caller checks ownership).
    pub async fn payment_by_reference(
        &self,
        reference: &PaymentReference,
    ) -> Result<(AccountId, Payment), ServiceError> {
        let (account_id, payment_id) = self
            .deps
            .store
            .find_payment(PaymentLookup::Reference(reference.clone()))
            .await?
            .ok_or(ServiceError::NotFound("payment"))?;
        Ok((account_id, self.payment(account_id, payment_id).await?))
    }

    /// Every recorded change of an account, oldest first.
    pub async fn timeline(
        &self,
        account_id: AccountId,
    ) -> Result<Vec<TimelineEntry>, ServiceError> {
        self.account(account_id).await?;
        Ok(self
            .deps
            .store
            .audit_trail(account_id)
            .await?
            .into_iter()
            .map(|event| TimelineEntry { event })
            .collect())
    }

    /// Sends the payment confirmation again.
    pub async fn resend_receipt(
        &self,
        agent: AgentId,
        account_id: AccountId,
        payment_id: PaymentId,
    ) -> Result<(), ServiceError> {
        let now = self.now();
        self.update_account(account_id, |account, changes| {
            let p = account
                .ledger
                .payment(payment_id)
                .ok_or(ServiceError::NotFound("payment"))?;
            if !p.counts() {
                return Err(ServiceError::Rejected(
                    "only received or processing payments have a receipt".into(),
                ));
            }
            let notice = account.notice(
                format!("receipt-resend:{payment_id}:{}", now.timestamp()),
                NoticeBody::PaymentConfirmation {
                    reference: p.reference.to_string(),
                    amount: p.amount,
                    method: p.instrument.masked(),
                    paid_on: p.initiated_on,
                    settles_by: p
                        .expected_settlement
                        .filter(|_| p.status != crate::payment::PaymentStatus::Succeeded),
                },
            );
            let Some(notice) = notice else {
                return Err(ServiceError::Rejected(
                    "the account has no email address on record".into(),
                ));
            };
            changes.outbox.push(notice);
            changes.audit.push(account.audit(
                now,
                Actor::Agent { id: agent },
                format!("payment:{payment_id}"),
                "receipt.resent",
                "",
            ));
            Ok(Some(()))
        })
        .await
    }
}

impl Portal {
    /// Changes the member's language and whether due-date reminders are emailed.
    pub async fn update_preferences(
        &self,
        account_id: AccountId,
        language: Option<crate::identity::Language>,
        due_date_reminders: Option<bool>,
    ) -> Result<(), ServiceError> {
        let now = self.now();
        self.update_account(account_id, |account, changes| {
            let mut what = Vec::new();
            if let Some(lang) = language {
                let Some(m) = account.member.as_mut() else {
                    return Err(ServiceError::NotFound("account"));
                };
                m.language = lang;
                what.push(format!("language {}", lang.code()));
            }
            if let Some(r) = due_date_reminders {
                account.reminders.due_date_reminders = r;
                what.push(format!(
                    "due-date reminders {}",
                    if r { "on" } else { "off" }
                ));
            }
            if what.is_empty() {
                return Ok(None);
            }
            changes.audit.push(account.audit(
                now,
                Actor::Member,
                "account",
                "preferences.changed",
                what.join(", "),
            ));
            Ok(Some(()))
        })
        .await
    }
}
