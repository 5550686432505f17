//! The account ledger: bills, payments, and how payments are allocated to bills.
//!
//! Rules: the money of payments that count (processing, settled, partly refunded) fills the
//! open bills oldest first (premiums and installments before late fees); what no bill needs is
//! credit, applied to the next bill as soon as it is issued. The allocation is computed whole
//! after every change, so it never depends on the order things happened in: a return, failure
//! or refund leaves less money and the newest bills reopen; a void frees what the bill held
//! for the oldest bills still open. Coverage reads the same fill (`coverage::Facts`), so each
//! enrollment's amounts on pages and in notices are the ones its coverage is decided on.
//!
//! Invariant (checked by [`Ledger::check_invariants`] and property tests):
//! `balance = Σ payable(bills) − Σ allocations − credit`, every amount ≥ 0, each bill's
//! `allocated` equals the allocations naming it, no payment allocates more than its net amount,
//! and credit and an open bill never coexist.

use crate::billing::{Bill, allocation_order};
use crate::ids::{BillId, PaymentId};
use crate::money::{Money, MoneyError};
use crate::payment::{Allocation, Payment, PaymentEvent, TransitionError};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A broken ledger invariant (a bug, never an input problem).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ledger invariant broken: {0}")]
pub struct InvariantViolation(pub String);

/// Errors from ledger operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// No such bill.
    #[error("no such bill")]
    UnknownBill,
    /// No such payment.
    #[error("no such payment")]
    UnknownPayment,
    /// The payment cannot take that event.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// An amount left the supported range.
    #[error(transparent)]
    Money(#[from] MoneyError),
}

/// Bills and payments of one account, with dirty tracking for the store.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ledger {
    /// All bills.
    pub bills: Vec<Bill>,
    /// All payments, in creation order.
    pub payments: Vec<Payment>,
    #[serde(skip)]
    changed_bills: BTreeSet<BillId>,
    #[serde(skip)]
    changed_payments: BTreeSet<PaymentId>,
}

/// Two ledgers are equal when their bills and payments are; what changed since loading is
/// bookkeeping for the store, not state.
impl PartialEq for Ledger {
    fn eq(&self, other: &Self) -> bool {
        self.bills == other.bills && self.payments == other.payments
    }
}

impl Eq for Ledger {}

impl Ledger {
    /// A ledger from stored bills and payments.
    pub fn new(bills: Vec<Bill>, payments: Vec<Payment>) -> Ledger {
        Ledger {
            bills,
            payments,
            ..Ledger::default()
        }
    }

    /// Bills and payments changed since loading, for the store to write.
    pub fn changed(&self) -> (Vec<&Bill>, Vec<&Payment>) {
        (
            self.bills
                .iter()
                .filter(|b| self.changed_bills.contains(&b.id))
                .collect(),
            self.payments
                .iter()
                .filter(|p| self.changed_payments.contains(&p.id))
                .collect(),
        )
    }

    /// Forgets what changed (after a commit).
    pub fn clear_changes(&mut self) {
        self.changed_bills.clear();
        self.changed_payments.clear();
    }

    /// A bill by id.
    pub fn bill(&self, id: BillId) -> Option<&Bill> {
        self.bills.iter().find(|b| b.id == id)
    }

    /// A bill by id, marked changed.
    pub fn bill_mut(&mut self, id: BillId) -> Option<&mut Bill> {
        self.changed_bills.insert(id);
        self.bills.iter_mut().find(|b| b.id == id)
    }

    /// A payment by id.
    pub fn payment(&self, id: PaymentId) -> Option<&Payment> {
        self.payments.iter().find(|p| p.id == id)
    }

    /// A payment by id, marked changed.
    pub fn payment_mut(&mut self, id: PaymentId) -> Option<&mut Payment> {
        self.changed_payments.insert(id);
        self.payments.iter_mut().find(|p| p.id == id)
    }

    /// Unused payment money: the account's credit.
    pub fn credit(&self) -> Money {
        Money::sum(self.payments.iter().map(Payment::unallocated)).unwrap_or(Money::ZERO)
    }

    /// What is owed on all bills now: payable less allocated (never negative).
    pub fn open_total(&self) -> Money {
        Money::sum(self.bills.iter().map(Bill::open_amount)).unwrap_or(Money::ZERO)
    }

    /// The balance: open bills minus credit. Negative means the member is in credit.
    pub fn balance(&self) -> Money {
        self.open_total()
            .checked_sub(self.credit())
            .unwrap_or(Money::ZERO)
    }

    /// Adds a new bill and applies any credit to it.
    pub fn add_bill(&mut self, bill: Bill) {
        self.changed_bills.insert(bill.id);
        self.bills.push(bill);
        self.settle();
    }

    /// Adds a new payment (in any state) and allocates it if it counts.
    pub fn add_payment(&mut self, payment: Payment) {
        self.changed_payments.insert(payment.id);
        self.payments.push(payment);
        self.settle();
    }

    /// Applies a payment event recorded at `at`, on the marketplace's date `on`: transitions
    /// the payment and re-allocates as the new state needs.
    pub fn apply_payment_event(
        &mut self,
        id: PaymentId,
        event: PaymentEvent,
        at: DateTime<Utc>,
        on: NaiveDate,
        cause: &str,
    ) -> Result<bool, LedgerError> {
        let p = self.payment_mut(id).ok_or(LedgerError::UnknownPayment)?;
        let changed = p.transition(event, at, cause)?;
        if changed {
            if let Some(t) = p.history.last_mut() {
                t.on = Some(on);
            }
            self.settle();
        }
        Ok(changed)
    }

    /// Changes a bill's amount (a re-pricing); excess payments become credit.
    pub fn reprice_bill(&mut self, id: BillId, amount: Money) -> Result<(), LedgerError> {
        let bill = self.bill_mut(id).ok_or(LedgerError::UnknownBill)?;
        bill.amount = amount;
        if bill.transferred > amount {
            bill.transferred = amount;
        }
        self.settle();
        Ok(())
    }

    /// Voids a bill (coverage ended before its month); its allocations become credit.
    pub fn void_bill(&mut self, id: BillId) -> Result<(), LedgerError> {
        self.bill_mut(id).ok_or(LedgerError::UnknownBill)?.void = true;
        self.settle();
        Ok(())
    }

    /// Restores a voided bill (reinstatement) and applies credit to it.
    pub fn unvoid_bill(&mut self, id: BillId) -> Result<(), LedgerError> {
        self.bill_mut(id).ok_or(LedgerError::UnknownBill)?.void = false;
        self.settle();
        Ok(())
    }

    /// Moves a bill's open amount into a payment plan; returns how much moved.
    pub fn transfer_to_plan(&mut self, id: BillId) -> Result<Money, LedgerError> {
        let bill = self.bill_mut(id).ok_or(LedgerError::UnknownBill)?;
        let open = bill.open_amount();
        bill.transferred = bill.transferred.checked_add(open)?;
        Ok(open)
    }

    /// Allocates every payment that counts to the bills, oldest first (in allocation order),
    /// in the order the payments were made; what no bill needs is credit. The allocation is
    /// computed whole each time, so it never depends on the order things happened in: after
    /// a return, a void or a re-pricing the money left fills the oldest bills, exactly as
    /// if it had always been so. Only bills and payments whose allocation moved are marked
    /// changed.
    pub fn settle(&mut self) {
        let mut order: Vec<usize> = (0..self.bills.len()).collect();
        order.sort_by(|a, b| match (self.bills.get(*a), self.bills.get(*b)) {
            (Some(x), Some(y)) => allocation_order(x, y),
            _ => std::cmp::Ordering::Equal,
        });
        let mut room: Vec<Money> = self.bills.iter().map(Bill::payable).collect();
        let mut allocated = vec![Money::ZERO; self.bills.len()];
        let mut bi = 0;
        for p in self.payments.iter_mut() {
            let mut free = p.net();
            let mut allocations: Vec<Allocation> = Vec::new();
            while free.is_positive() {
                let Some(i) = order.get(bi).copied() else {
                    break;
                };
                let (Some(open), Some(bill)) = (room.get_mut(i), self.bills.get(i)) else {
                    break;
                };
                if open.is_zero() {
                    bi += 1;
                    continue;
                }
                let take = (*open).min(free);
                *open = open.saturating_sub(take);
                if let Some(a) = allocated.get_mut(i) {
                    *a = a.checked_add(take).unwrap_or(*a);
                }
                allocations.push(Allocation {
                    bill_id: bill.id,
                    amount: take,
                });
                free = free.saturating_sub(take);
            }
            if p.allocations != allocations {
                p.allocations = allocations;
                self.changed_payments.insert(p.id);
            }
        }
        for (bill, amount) in self.bills.iter_mut().zip(allocated) {
            if bill.allocated != amount {
                bill.allocated = amount;
                self.changed_bills.insert(bill.id);
            }
        }
    }

    /// Checks every ledger invariant.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let fail = |s: String| Err(InvariantViolation(s));
        let mut per_bill: BTreeMap<BillId, Money> = BTreeMap::new();
        for p in &self.payments {
            for a in &p.allocations {
                if !a.amount.is_positive() {
                    return fail(format!("payment {} has a non-positive allocation", p.id));
                }
                let e = per_bill.entry(a.bill_id).or_default();
                *e = e
                    .checked_add(a.amount)
                    .map_err(|e| InvariantViolation(e.to_string()))?;
            }
            if p.allocated() > p.net() {
                return fail(format!(
                    "payment {} allocates more than its net amount",
                    p.id
                ));
            }
        }
        for b in &self.bills {
            let from_payments = per_bill.remove(&b.id).unwrap_or_default();
            if from_payments != b.allocated {
                return fail(format!(
                    "bill {} says {} allocated but payments allocate {}",
                    b.id, b.allocated, from_payments
                ));
            }
            if b.allocated.is_negative() || b.transferred.is_negative() || b.amount.is_negative() {
                return fail(format!("bill {} has a negative amount", b.id));
            }
            if b.allocated > b.payable() {
                return fail(format!("bill {} is over-allocated", b.id));
            }
        }
        if let Some(orphan) = per_bill.keys().next() {
            return fail(format!("allocation to unknown bill {orphan}"));
        }
        let credit = self.credit();
        if credit.is_positive() && self.open_total().is_positive() {
            return fail("credit left unapplied while a bill is open".into());
        }
        let payable = Money::sum(self.bills.iter().map(Bill::payable))
            .map_err(|e| InvariantViolation(e.to_string()))?;
        let allocated = Money::sum(self.bills.iter().map(|b| b.allocated))
            .map_err(|e| InvariantViolation(e.to_string()))?;
        let net = Money::sum(self.payments.iter().map(Payment::net))
            .map_err(|e| InvariantViolation(e.to_string()))?;
        let via_parts = payable
            .checked_sub(allocated)
            .and_then(|x| x.checked_sub(credit))
            .map_err(|e| InvariantViolation(e.to_string()))?;
        let via_net = payable
            .checked_sub(net)
            .map_err(|e| InvariantViolation(e.to_string()))?;
        if via_parts != self.balance() || via_net != self.balance() {
            return fail(format!(
                "balance {} != bills − allocations − credit {} or bills − payments {}",
                self.balance(),
                via_parts,
                via_net
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::BillKind;
    use crate::calendar::CoverageMonth;
    use crate::ids::EnrollmentId;
    use crate::payment::tests::{bank, card, payment};
    use crate::payment::{DeclineReason, ReturnCode};
    use chrono::NaiveDate;
    use proptest::prelude::*;
    use uuid::Uuid;

    fn bill(n: u128, cents: i64) -> Bill {
        let month = CoverageMonth::new(2027, 1).unwrap().plus(n as i32);
        Bill {
            id: BillId(Uuid::from_u128(n)),
            enrollment_id: EnrollmentId(Uuid::nil()),
            kind: BillKind::Premium,
            coverage_month: month,
            amount: Money::from_cents(cents),
            allocated: Money::ZERO,
            transferred: Money::ZERO,
            due_date: month.previous().day_clamped(23),
            issued_on: month.previous().day_clamped(2),
            void: false,
            notices: vec![],
            late_fee_assessed: false,
        }
    }

    fn at() -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH
    }

    fn settled(n: u128, cents: i64) -> Payment {
        let mut p = payment(n, cents, card());
        p.transition(PaymentEvent::Settled, at(), "test").unwrap();
        p
    }

    #[test]
    fn oldest_bill_first_then_credit_to_the_next_bill() {
        let mut l = Ledger::default();
        l.add_bill(bill(1, 30_000));
        l.add_bill(bill(0, 20_000));
        l.add_payment(settled(100, 60_000));
        l.check_invariants().unwrap();
        assert_eq!(
            l.bill(BillId(Uuid::from_u128(0))).unwrap().allocated,
            Money::from_cents(20_000)
        );
        assert_eq!(
            l.bill(BillId(Uuid::from_u128(1))).unwrap().allocated,
            Money::from_cents(30_000)
        );
        assert_eq!(l.credit(), Money::from_cents(10_000));
        assert_eq!(l.balance(), Money::from_cents(-10_000));
        l.add_bill(bill(2, 30_000));
        l.check_invariants().unwrap();
        assert_eq!(l.credit(), Money::ZERO);
        assert_eq!(
            l.bill(BillId(Uuid::from_u128(2))).unwrap().open_amount(),
            Money::from_cents(20_000)
        );
    }

    #[test]
    fn a_return_reopens_the_bill_it_paid() {
        let mut l = Ledger::default();
        l.add_bill(bill(0, 20_000));
        let mut p = payment(7, 20_000, bank());
        p.transition(
            PaymentEvent::Processing {
                expected_settlement: NaiveDate::MIN,
            },
            at(),
            "gw",
        )
        .unwrap();
        let id = p.id;
        l.add_payment(p);
        assert!(
            l.bill(BillId(Uuid::from_u128(0)))
                .unwrap()
                .open_amount()
                .is_zero(),
            "processing protects the bill"
        );
        l.apply_payment_event(
            id,
            PaymentEvent::Settled,
            at(),
            at().date_naive(),
            "webhook",
        )
        .unwrap();
        l.apply_payment_event(
            id,
            PaymentEvent::Returned {
                code: ReturnCode::R01,
            },
            at(),
            at().date_naive(),
            "webhook",
        )
        .unwrap();
        l.check_invariants().unwrap();
        assert_eq!(
            l.bill(BillId(Uuid::from_u128(0))).unwrap().open_amount(),
            Money::from_cents(20_000)
        );
        assert!(l.payment(id).unwrap().allocations.is_empty());
    }

    #[test]
    fn a_failed_transfer_never_counted_after_processing_is_undone() {
        let mut l = Ledger::default();
        l.add_bill(bill(0, 20_000));
        let mut p = payment(8, 20_000, bank());
        p.transition(
            PaymentEvent::Processing {
                expected_settlement: NaiveDate::MIN,
            },
            at(),
            "gw",
        )
        .unwrap();
        let id = p.id;
        l.add_payment(p);
        l.apply_payment_event(
            id,
            PaymentEvent::Declined {
                reason: DeclineReason::InsufficientFunds,
            },
            at(),
            at().date_naive(),
            "webhook",
        )
        .unwrap();
        l.check_invariants().unwrap();
        assert_eq!(l.open_total(), Money::from_cents(20_000));
    }

    #[test]
    fn refunds_take_credit_first() {
        let mut l = Ledger::default();
        l.add_bill(bill(0, 20_000));
        let p = settled(9, 25_000);
        let id = p.id;
        l.add_payment(p);
        l.apply_payment_event(
            id,
            PaymentEvent::Refunded {
                amount: Money::from_cents(5_000),
            },
            at(),
            at().date_naive(),
            "agent",
        )
        .unwrap();
        l.check_invariants().unwrap();
        assert_eq!(l.credit(), Money::ZERO);
        assert!(
            l.bill(BillId(Uuid::from_u128(0)))
                .unwrap()
                .open_amount()
                .is_zero()
        );
        l.apply_payment_event(
            id,
            PaymentEvent::Refunded {
                amount: Money::from_cents(1_000),
            },
            at(),
            at().date_naive(),
            "agent",
        )
        .unwrap();
        l.check_invariants().unwrap();
        assert_eq!(l.open_total(), Money::from_cents(1_000));
    }

    #[test]
    fn repricing_below_what_was_paid_makes_credit() {
        let mut l = Ledger::default();
        l.add_bill(bill(0, 20_000));
        l.add_payment(settled(10, 20_000));
        l.reprice_bill(BillId(Uuid::from_u128(0)), Money::from_cents(15_000))
            .unwrap();
        l.check_invariants().unwrap();
        assert_eq!(l.credit(), Money::from_cents(5_000));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Bill(i64),
        Pay(i64, bool),
        Settle(usize),
        Decline(usize),
        Return(usize),
        Refund(usize, i64),
        Void(usize),
        Unvoid(usize),
        Reprice(usize, i64),
        Plan(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1i64..100_000).prop_map(Op::Bill),
            (1i64..150_000, any::<bool>()).prop_map(|(c, b)| Op::Pay(c, b)),
            any::<usize>().prop_map(Op::Settle),
            any::<usize>().prop_map(Op::Decline),
            any::<usize>().prop_map(Op::Return),
            (any::<usize>(), 1i64..100_000).prop_map(|(i, c)| Op::Refund(i, c)),
            any::<usize>().prop_map(Op::Void),
            any::<usize>().prop_map(Op::Unvoid),
            (any::<usize>(), 0i64..100_000).prop_map(|(i, c)| Op::Reprice(i, c)),
            any::<usize>().prop_map(Op::Plan),
        ]
    }

    fn pick<T>(v: &[T], i: usize) -> Option<&T> {
        if v.is_empty() {
            None
        } else {
            v.get(i % v.len())
        }
    }

    proptest! {
        #[test]
        fn balance_invariant_holds_after_any_sequence(ops in proptest::collection::vec(op(), 1..60)) {
            let mut l = Ledger::default();
            let mut n = 0u128;
            for op in ops {
                n += 1;
                match op {
                    Op::Bill(c) => l.add_bill(bill(n, c)),
                    Op::Pay(c, is_bank) => {
                        let mut p = payment(1000 + n, c, if is_bank { bank() } else { card() });
                        if is_bank {
                            p.transition(PaymentEvent::Processing { expected_settlement: NaiveDate::MIN }, at(), "gw").unwrap();
                        } else {
                            p.transition(PaymentEvent::Settled, at(), "gw").unwrap();
                        }
                        l.add_payment(p);
                    }
                    Op::Settle(i) => if let Some(id) = pick(&l.payments, i).map(|p| p.id) {
                        let _ = l.apply_payment_event(id, PaymentEvent::Settled, at(), at().date_naive(), "t");
                    },
                    Op::Decline(i) => if let Some(id) = pick(&l.payments, i).map(|p| p.id) {
                        let _ = l.apply_payment_event(id, PaymentEvent::Declined { reason: DeclineReason::InsufficientFunds }, at(), at().date_naive(), "t");
                    },
                    Op::Return(i) => if let Some(id) = pick(&l.payments, i).map(|p| p.id) {
                        let _ = l.apply_payment_event(id, PaymentEvent::Returned { code: ReturnCode::R01 }, at(), at().date_naive(), "t");
                    },
                    Op::Refund(i, c) => if let Some(id) = pick(&l.payments, i).map(|p| p.id) {
                        let _ = l.apply_payment_event(id, PaymentEvent::Refunded { amount: Money::from_cents(c) }, at(), at().date_naive(), "t");
                    },
                    Op::Void(i) => if let Some(id) = pick(&l.bills, i).map(|b| b.id) {
                        l.void_bill(id).unwrap();
                    },
                    Op::Unvoid(i) => if let Some(id) = pick(&l.bills, i).map(|b| b.id) {
                        l.unvoid_bill(id).unwrap();
                    },
                    Op::Reprice(i, c) => if let Some(id) = pick(&l.bills, i).map(|b| b.id) {
                        l.reprice_bill(id, Money::from_cents(c)).unwrap();
                    },
                    Op::Plan(i) => if let Some(id) = pick(&l.bills, i).map(|b| b.id) {
                        let moved = l.transfer_to_plan(id).unwrap();
                        if moved.is_positive() {
                            let mut inst = bill(5000 + n, moved.cents());
                            inst.kind = BillKind::Installment { plan_id: crate::ids::PlanId(Uuid::nil()), number: 1, of: 1 };
                            l.add_bill(inst);
                        }
                    },
                }
                if let Err(e) = l.check_invariants() {
                    prop_assert!(false, "{}", e);
                }
            }
        }

        #[test]
        fn allocation_never_loses_or_creates_a_cent(
            bills in proptest::collection::vec(0i64..100_000, 0..12),
            pay in 1i64..500_000,
            prior in proptest::collection::vec(1i64..50_000, 0..4),
        ) {
            let mut l = Ledger::default();
            for (i, c) in bills.iter().enumerate() {
                l.add_bill(bill(i as u128, *c));
            }
            for (i, c) in prior.iter().enumerate() {
                l.add_payment(settled(500 + i as u128, *c));
            }
            let allocated_before = Money::sum(l.bills.iter().map(|b| b.allocated)).unwrap();
            let credit_before = l.credit();
            l.add_payment(settled(999, pay));
            let allocated_after = Money::sum(l.bills.iter().map(|b| b.allocated)).unwrap();
            let moved = allocated_after.checked_sub(allocated_before).unwrap()
                .checked_add(l.credit().checked_sub(credit_before).unwrap()).unwrap();
            prop_assert_eq!(moved, Money::from_cents(pay));
            // The oldest open bill is paid before any later one receives money from it.
            let mut sorted: Vec<&Bill> = l.bills.iter().collect();
            sorted.sort_by(|a, b| allocation_order(a, b));
            let first_open = sorted.iter().position(|b| b.open_amount().is_positive());
            if let Some(i) = first_open {
                prop_assert!(sorted.iter().skip(i + 1).all(|b| b.allocated.is_zero() || b.amount.is_zero()));
            }
            l.check_invariants().map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
    }
}
