//! Payments and their state machine. Every transition is recorded with its time and cause;
//! an illegal transition is a typed error, and repeating the current state is a no-op, so a
//! duplicated gateway webhook changes nothing.

use crate::identity::input_error;
use crate::ids::{AgentId, BillId, MandateId, MethodId, PaymentId};
use crate::instrument::{MethodDetails, MethodKind};
use crate::money::Money;
use crate::reference::PaymentReference;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a payment was declined, in terms a member can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeclineReason {
    /// Not enough money in the account.
    InsufficientFunds,
    /// The card issuer declined without a specific reason.
    CardDeclined,
    /// The card has expired.
    ExpiredCard,
    /// Card or account details are wrong (number, CVC, ZIP, closed account).
    IncorrectDetails,
    /// The gateway or bank could not process it; trying again may work.
    ProcessingError,
}

impl DeclineReason {
    /// The plain-language explanation with what to do next.
    pub fn plain_language(self) -> &'static str {
        match self {
            DeclineReason::InsufficientFunds => {
                "There were not enough funds in the account. Check your balance or use another payment method."
            }
            DeclineReason::CardDeclined => {
                "Your card was declined by the bank that issued it. Contact your bank or use another payment method."
            }
            DeclineReason::ExpiredCard => {
                "The card has expired. Use a card with a current expiration date."
            }
            DeclineReason::IncorrectDetails => {
                "The card or bank account details were not accepted. Check the details and try again."
            }
            DeclineReason::ProcessingError => {
                "The payment could not be processed right now. Please try again in a few minutes."
            }
        }
    }

    /// A stable code.
    pub fn code(self) -> &'static str {
        match self {
            DeclineReason::InsufficientFunds => "insufficient_funds",
            DeclineReason::CardDeclined => "card_declined",
            DeclineReason::ExpiredCard => "expired_card",
            DeclineReason::IncorrectDetails => "incorrect_details",
            DeclineReason::ProcessingError => "processing_error",
        }
    }
}

input_error!(ReturnCodeError, "return_code", {
    Format => ("format", "an ACH return code is R followed by two digits"),
});

/// A NACHA return reason code of a bank transfer reversed after it settled.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ReturnCode(u8);

impl ReturnCode {
    /// R01: insufficient funds.
    pub const R01: ReturnCode = ReturnCode(1);
    /// R02: account closed.
    pub const R02: ReturnCode = ReturnCode(2);
    /// R03: no account / unable to locate account.
    pub const R03: ReturnCode = ReturnCode(3);
    /// R10: customer advises not authorized.
    pub const R10: ReturnCode = ReturnCode(10);

    /// Parses `R01`..`R99`.
    pub fn parse(input: &str) -> Result<ReturnCode, ReturnCodeError> {
        let s = input.trim();
        let digits = s
            .strip_prefix('R')
            .or_else(|| s.strip_prefix('r'))
            .ok_or(ReturnCodeError::Format)?;
        if digits.len() != 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ReturnCodeError::Format);
        }
        let n: u8 = digits.parse().map_err(|_| ReturnCodeError::Format)?;
        if n == 0 {
            return Err(ReturnCodeError::Format);
        }
        Ok(ReturnCode(n))
    }

    /// What the member is told.
    pub fn plain_language(self) -> &'static str {
        match self.0 {
            1 | 9 => "Your bank returned the payment because there were not enough funds.",
            2 => "Your bank returned the payment because the account is closed.",
            3 | 4 => "Your bank could not find the account. Check the account and routing numbers.",
            7 | 10 | 29 => {
                "Your bank returned the payment because it was reported as not authorized."
            }
            _ => "Your bank returned the payment. Contact your bank for details.",
        }
    }

    /// Whether a retry with the same account can never succeed.
    pub fn is_permanent(self) -> bool {
        matches!(self.0, 2 | 3 | 4 | 7 | 10 | 29)
    }
}

impl fmt::Display for ReturnCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "R{:02}", self.0)
    }
}
impl fmt::Debug for ReturnCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReturnCode({self})")
    }
}
impl TryFrom<String> for ReturnCode {
    type Error = ReturnCodeError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ReturnCode::parse(&s)
    }
}
impl From<ReturnCode> for String {
    fn from(r: ReturnCode) -> String {
        r.to_string()
    }
}

/// Where a pending payment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PendingStage {
    /// Saved, sent (or about to be sent) to the gateway; outcome not known yet.
    Submitted,
    /// A bank transfer the gateway accepted; it settles in a few business days.
    Processing,
}

/// The state of a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Not final yet.
    Pending {
        /// Which stage.
        stage: PendingStage,
    },
    /// Money received.
    Succeeded,
    /// Declined; nothing was taken.
    Failed {
        /// Why.
        reason: DeclineReason,
    },
    /// A bank transfer reversed after it settled; its allocation is undone.
    Returned {
        /// NACHA return code.
        code: ReturnCode,
    },
    /// Partly or fully refunded.
    Refunded {
        /// Whether the whole amount was refunded.
        full: bool,
    },
}

impl PaymentStatus {
    /// A short stable name: `pending`, `succeeded`, `failed`, `returned`, `refunded`.
    pub fn name(self) -> &'static str {
        match self {
            PaymentStatus::Pending { .. } => "pending",
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::Failed { .. } => "failed",
            PaymentStatus::Returned { .. } => "returned",
            PaymentStatus::Refunded { .. } => "refunded",
        }
    }
}

/// How the money was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PaymentInstrument {
    /// A saved method of the account.
    Saved {
        /// The method.
        method_id: MethodId,
        /// Its display details at the time of payment.
        details: MethodDetails,
    },
    /// A one-time gateway token (guest pay, or a new card not saved).
    OneTime {
        /// Display details.
        details: MethodDetails,
    },
    /// A payment received outside the portal and recorded by support.
    Offline {
        /// Check, money order, bank bill-pay.
        kind: OfflineKind,
        /// Check or money-order number, if any.
        document_number: Option<String>,
    },
}

impl PaymentInstrument {
    /// Card, bank account, or `None` for offline payments.
    pub fn method_kind(&self) -> Option<MethodKind> {
        match self {
            PaymentInstrument::Saved { details, .. } | PaymentInstrument::OneTime { details } => {
                Some(details.kind())
            }
            PaymentInstrument::Offline { .. } => None,
        }
    }

    /// The masked description for receipts and notices.
    pub fn masked(&self) -> String {
        match self {
            PaymentInstrument::Saved { details, .. } | PaymentInstrument::OneTime { details } => {
                details.masked()
            }
            PaymentInstrument::Offline { kind, .. } => kind.label().to_owned(),
        }
    }
}

/// Payments received outside the portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfflineKind {
    /// Paper check.
    Check,
    /// Money order.
    MoneyOrder,
    /// The member's bank bill-pay service.
    BankBillPay,
}

impl OfflineKind {
    /// Display label.
    pub fn label(self) -> &'static str {
        match self {
            OfflineKind::Check => "Check",
            OfflineKind::MoneyOrder => "Money order",
            OfflineKind::BankBillPay => "Bank bill pay",
        }
    }
}

/// Who or what started a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PaymentChannel {
    /// The logged-in member.
    Member,
    /// Someone paying without logging in.
    Guest,
    /// An automatic payment.
    Autopay {
        /// The mandate.
        mandate_id: MandateId,
        /// 0-based period of the mandate.
        period: u32,
    },
    /// A support agent recording an offline payment.
    Agent {
        /// The agent.
        agent_id: AgentId,
    },
}

/// A part of a payment applied to a bill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The bill.
    pub bill_id: BillId,
    /// How much.
    pub amount: Money,
}

/// What moved a payment from one state to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PaymentEvent {
    /// The gateway accepted a bank transfer, which is now processing.
    Processing {
        /// When it is expected to settle.
        expected_settlement: NaiveDate,
    },
    /// The money arrived.
    Settled,
    /// The gateway or bank declined it.
    Declined {
        /// Why.
        reason: DeclineReason,
    },
    /// A settled bank transfer was reversed.
    Returned {
        /// NACHA code.
        code: ReturnCode,
    },
    /// Some or all of it was refunded.
    Refunded {
        /// Refunded by this event.
        amount: Money,
    },
}

/// Whether a payment in `status` counts towards what is paid.
fn counting(status: PaymentStatus) -> bool {
    matches!(
        status,
        PaymentStatus::Pending {
            stage: PendingStage::Processing
        } | PaymentStatus::Succeeded
            | PaymentStatus::Refunded { .. }
    )
}

/// One recorded transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// When.
    pub at: DateTime<Utc>,
    /// From state.
    pub from: PaymentStatus,
    /// To state.
    pub to: PaymentStatus,
    /// The event.
    pub event: PaymentEvent,
    /// Who or what caused it ("gateway webhook evt_123", "agent 42", "settlement job").
    pub cause: String,
    /// The marketplace's date it was recorded on (the date coverage rules read it by); older
    /// records without one are read by the UTC date of `at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<NaiveDate>,
}

/// An illegal transition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {from} payment cannot take the event {event}")]
pub struct TransitionError {
    /// Current state name.
    pub from: &'static str,
    /// Event name.
    pub event: &'static str,
}

/// A payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// Id.
    pub id: PaymentId,
    /// The reference number given to the member.
    pub reference: PaymentReference,
    /// Amount paid.
    pub amount: Money,
    /// Amount refunded so far.
    pub refunded: Money,
    /// How it was paid.
    pub instrument: PaymentInstrument,
    /// Who started it.
    pub channel: PaymentChannel,
    /// Current state.
    pub status: PaymentStatus,
    /// The gateway's id for it (`pi_...`), once known.
    pub gateway_id: Option<String>,
    /// The idempotency key it was created with.
    pub idempotency_key: String,
    /// When it was initiated.
    pub initiated_at: DateTime<Utc>,
    /// The local date it was initiated: a payment counts as on time by this date.
    pub initiated_on: NaiveDate,
    /// For a processing bank transfer, when it should settle.
    pub expected_settlement: Option<NaiveDate>,
    /// Its parts applied to bills.
    pub allocations: Vec<Allocation>,
    /// Every transition.
    pub history: Vec<Transition>,
}

impl Payment {
    /// Whether the payment's money counts toward the account: processing, settled, or
    /// settled-then-partly-refunded. Submitted, failed and returned payments do not.
    pub fn counts(&self) -> bool {
        counting(self.status)
    }

    /// What the payment contributed at the end of `day`, as far as is known now: its net
    /// amount while it counts; and one returned or failed after `day` still counted then
    /// (a bank transfer protects its bills until its return is recorded).
    pub fn net_as_of(&self, day: NaiveDate) -> Money {
        if self.counts() {
            return self.net();
        }
        let left = self
            .history
            .iter()
            .rev()
            .find(|t| counting(t.from) && !counting(t.to));
        match left {
            Some(t) if t.on.unwrap_or_else(|| t.at.date_naive()) > day => {
                self.amount.saturating_sub(self.refunded)
            }
            _ => Money::ZERO,
        }
    }

    /// The amount the payment contributes: amount less refunds while it counts, else zero.
    pub fn net(&self) -> Money {
        if self.counts() {
            self.amount.saturating_sub(self.refunded)
        } else {
            Money::ZERO
        }
    }

    /// The sum of its allocations.
    pub fn allocated(&self) -> Money {
        Money::sum(self.allocations.iter().map(|a| a.amount)).unwrap_or(self.amount)
    }

    /// The part not applied to any bill: account credit from this payment.
    pub fn unallocated(&self) -> Money {
        self.net().saturating_sub(self.allocated())
    }

    /// Whether it is a bank transfer.
    pub fn is_bank_transfer(&self) -> bool {
        self.instrument.method_kind() == Some(MethodKind::BankAccount)
    }

    /// The state `event` would lead to, without changing anything; `Ok(None)` if it is a repeat.
    pub fn next_status(
        &self,
        event: &PaymentEvent,
    ) -> Result<Option<PaymentStatus>, TransitionError> {
        use PaymentStatus as S;
        let illegal = || TransitionError {
            from: self.status.name(),
            event: event_name(event),
        };
        let next = match (self.status, event) {
            (
                S::Pending {
                    stage: PendingStage::Submitted,
                },
                PaymentEvent::Processing { .. },
            ) if self.is_bank_transfer() => S::Pending {
                stage: PendingStage::Processing,
            },
            (
                S::Pending {
                    stage: PendingStage::Processing,
                },
                PaymentEvent::Processing { .. },
            ) => {
                return Ok(None);
            }
            (S::Pending { .. }, PaymentEvent::Settled) => S::Succeeded,
            (S::Succeeded, PaymentEvent::Settled) => return Ok(None),
            (S::Pending { .. }, PaymentEvent::Declined { reason }) => S::Failed { reason: *reason },
            (S::Failed { reason: was }, PaymentEvent::Declined { reason }) if was == *reason => {
                return Ok(None);
            }
            (S::Succeeded, PaymentEvent::Returned { code }) if self.is_bank_transfer() => {
                S::Returned { code: *code }
            }
            (S::Returned { code: was }, PaymentEvent::Returned { code }) if was == *code => {
                return Ok(None);
            }
            (S::Succeeded | S::Refunded { full: false }, PaymentEvent::Refunded { amount }) => {
                let remaining = self.amount.saturating_sub(self.refunded);
                if !amount.is_positive() || *amount > remaining {
                    return Err(illegal());
                }
                S::Refunded {
                    full: *amount == remaining,
                }
            }
            _ => return Err(illegal()),
        };
        Ok(Some(next))
    }

    /// Applies an event: records the transition and updates amounts. Returns whether anything
    /// changed. Allocation is the ledger's job; see `Ledger::apply_payment_event`.
    pub fn transition(
        &mut self,
        event: PaymentEvent,
        at: DateTime<Utc>,
        cause: impl Into<String>,
    ) -> Result<bool, TransitionError> {
        let Some(next) = self.next_status(&event)? else {
            return Ok(false);
        };
        match &event {
            PaymentEvent::Processing {
                expected_settlement,
            } => self.expected_settlement = Some(*expected_settlement),
            PaymentEvent::Refunded { amount } => {
                self.refunded = self.refunded.checked_add(*amount).unwrap_or(self.amount);
            }
            _ => {}
        }
        self.history.push(Transition {
            at,
            from: self.status,
            to: next,
            event,
            cause: cause.into(),
            on: None,
        });
        self.status = next;
        Ok(true)
    }
}

fn event_name(e: &PaymentEvent) -> &'static str {
    match e {
        PaymentEvent::Processing { .. } => "processing",
        PaymentEvent::Settled => "settled",
        PaymentEvent::Declined { .. } => "declined",
        PaymentEvent::Returned { .. } => "returned",
        PaymentEvent::Refunded { .. } => "refunded",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::instrument::{BankAccountType, CardBrand, CardExpiry};
    use uuid::Uuid;

    pub(crate) fn card() -> MethodDetails {
        MethodDetails::Card {
            brand: CardBrand::Visa,
            last4: "4242".into(),
            expiry: CardExpiry {
                month: 12,
                year: 2030,
            },
        }
    }

    pub(crate) fn bank() -> MethodDetails {
        MethodDetails::BankAccount {
            bank_name: "Test Bank".into(),
            last4: "6789".into(),
            account_type: BankAccountType::Checking,
        }
    }

    pub(crate) fn payment(n: u128, cents: i64, details: MethodDetails) -> Payment {
        Payment {
            id: PaymentId(Uuid::from_u128(n)),
            reference: PaymentReference::from_values([(n % 31) as u8; 11]),
            amount: Money::from_cents(cents),
            refunded: Money::ZERO,
            instrument: PaymentInstrument::OneTime { details },
            channel: PaymentChannel::Member,
            status: PaymentStatus::Pending {
                stage: PendingStage::Submitted,
            },
            gateway_id: None,
            idempotency_key: format!("k{n}"),
            initiated_at: DateTime::<Utc>::UNIX_EPOCH,
            initiated_on: NaiveDate::from_ymd_opt(2027, 1, 1).unwrap(),
            expected_settlement: None,
            allocations: vec![],
            history: vec![],
        }
    }

    fn at() -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH
    }

    #[test]
    fn card_payment_settles_and_refunds_partly_then_fully() {
        let mut p = payment(1, 10_000, card());
        assert!(!p.counts());
        assert!(
            p.transition(PaymentEvent::Settled, at(), "gateway")
                .unwrap()
        );
        assert_eq!(p.net(), Money::from_cents(10_000));
        assert!(
            !p.transition(PaymentEvent::Settled, at(), "duplicate webhook")
                .unwrap()
        );
        p.transition(
            PaymentEvent::Refunded {
                amount: Money::from_cents(2_500),
            },
            at(),
            "agent",
        )
        .unwrap();
        assert_eq!(p.status, PaymentStatus::Refunded { full: false });
        assert_eq!(p.net(), Money::from_cents(7_500));
        let too_much = p.transition(
            PaymentEvent::Refunded {
                amount: Money::from_cents(7_501),
            },
            at(),
            "agent",
        );
        assert!(too_much.is_err());
        p.transition(
            PaymentEvent::Refunded {
                amount: Money::from_cents(7_500),
            },
            at(),
            "agent",
        )
        .unwrap();
        assert_eq!(p.status, PaymentStatus::Refunded { full: true });
        assert_eq!(p.net(), Money::ZERO);
        assert_eq!(p.history.len(), 3, "the duplicate was not recorded");
    }

    #[test]
    fn bank_transfer_processes_settles_and_can_be_returned() {
        let mut p = payment(2, 10_000, bank());
        let expected = NaiveDate::from_ymd_opt(2027, 1, 5).unwrap();
        p.transition(
            PaymentEvent::Processing {
                expected_settlement: expected,
            },
            at(),
            "gateway",
        )
        .unwrap();
        assert!(
            p.counts(),
            "a processing transfer protects the bill it pays"
        );
        assert_eq!(p.expected_settlement, Some(expected));
        p.transition(PaymentEvent::Settled, at(), "webhook")
            .unwrap();
        p.transition(
            PaymentEvent::Returned {
                code: ReturnCode::R01,
            },
            at(),
            "webhook",
        )
        .unwrap();
        assert!(!p.counts());
        assert_eq!(p.net(), Money::ZERO);
    }

    #[test]
    fn illegal_transitions_are_typed_errors() {
        let mut card_p = payment(3, 100, card());
        let err = card_p
            .transition(
                PaymentEvent::Processing {
                    expected_settlement: NaiveDate::MIN,
                },
                at(),
                "x",
            )
            .unwrap_err();
        assert_eq!((err.from, err.event), ("pending", "processing"));
        card_p.transition(PaymentEvent::Settled, at(), "x").unwrap();
        assert!(
            card_p
                .transition(
                    PaymentEvent::Returned {
                        code: ReturnCode::R01
                    },
                    at(),
                    "x"
                )
                .is_err(),
            "cards are not returned"
        );
        let mut failed = payment(4, 100, card());
        failed
            .transition(
                PaymentEvent::Declined {
                    reason: DeclineReason::CardDeclined,
                },
                at(),
                "x",
            )
            .unwrap();
        assert!(failed.transition(PaymentEvent::Settled, at(), "x").is_err());
        assert!(
            failed
                .transition(
                    PaymentEvent::Refunded {
                        amount: Money::from_cents(1)
                    },
                    at(),
                    "x"
                )
                .is_err()
        );
        let pending = payment(5, 100, bank());
        assert!(
            pending
                .next_status(&PaymentEvent::Refunded {
                    amount: Money::from_cents(1)
                })
                .is_err()
        );
    }

    #[test]
    fn return_codes() {
        assert_eq!(ReturnCode::parse("R01"), Ok(ReturnCode::R01));
        assert_eq!(ReturnCode::parse("r10").unwrap().to_string(), "R10");
        assert!(ReturnCode::parse("R1").is_err());
        assert!(ReturnCode::parse("X01").is_err());
        assert!(ReturnCode::R02.is_permanent());
        assert!(!ReturnCode::R01.is_permanent());
    }
}
