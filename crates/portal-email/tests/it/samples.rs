use chrono::{DateTime, NaiveDate, Utc};
use portal_core::calendar::CoverageMonth;
use portal_core::enrollment::TerminationReason;
use portal_core::identity::{Email, Language};
use portal_core::ids::{AccountId, MessageId};
use portal_core::money::Money;
use portal_core::notice::{AutopayFailure, Notice, NoticeBody, NoticeKind};
use portal_core::payment::{DeclineReason, ReturnCode};
use portal_core::ports::OutboxMessage;

fn d(m: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2027, m, day).unwrap()
}

fn t() -> DateTime<Utc> {
    d(3, 1).and_hms_opt(14, 30, 0).unwrap().and_utc()
}

fn usd(s: &str) -> Money {
    Money::parse(s).unwrap()
}

/// A representative body for every kind; a new kind without one does not compile.
pub fn body(kind: NoticeKind) -> NoticeBody {
    let reference = "7KQM-2XTH-9RB4".to_owned();
    let method = "Visa •••• 4242".to_owned();
    match kind {
        NoticeKind::EmailVerification => NoticeBody::EmailVerification {
            code: "482913".into(),
            expires_at: t(),
        },
        NoticeKind::AccountCreated => NoticeBody::AccountCreated {
            username: "mlopez".into(),
        },
        NoticeKind::PaymentConfirmation => NoticeBody::PaymentConfirmation {
            reference,
            amount: usd("1234.56"),
            method,
            paid_on: d(2, 20),
            settles_by: None,
        },
        NoticeKind::PaymentFailed => NoticeBody::PaymentFailed {
            reference,
            amount: usd("200"),
            method,
            reason: DeclineReason::InsufficientFunds,
        },
        NoticeKind::BankTransferReturned => NoticeBody::BankTransferReturned {
            reference,
            amount: usd("200"),
            method: "Test Bank •••• 6789".into(),
            code: ReturnCode::R01,
            amount_due: usd("200"),
        },
        NoticeKind::BillIssued => NoticeBody::BillIssued {
            coverage_month: CoverageMonth::new(2027, 4).unwrap(),
            plan_name: "ConnectorCare Plan 2A".into(),
            amount: usd("200"),
            due_date: d(3, 23),
            binder: false,
            autopay_on: None,
        },
        NoticeKind::BillRepriced => NoticeBody::BillRepriced {
            coverage_month: CoverageMonth::new(2027, 4).unwrap(),
            old_amount: usd("200"),
            new_amount: usd("250"),
            due_date: d(3, 23),
        },
        NoticeKind::DueDateReminder => NoticeBody::DueDateReminder {
            amount: usd("200"),
            due_date: d(3, 23),
            days_before: 7,
        },
        NoticeKind::AutopayPreDebit => NoticeBody::AutopayPreDebit {
            amount: usd("200"),
            debit_date: d(3, 20),
            method,
        },
        NoticeKind::AutopayFailed => NoticeBody::AutopayFailed {
            amount: usd("200"),
            method,
            reason: AutopayFailure::Declined {
                reason: DeclineReason::ExpiredCard,
            },
            retry_on: Some(d(3, 23)),
            suspended: false,
        },
        NoticeKind::PastDue => NoticeBody::PastDue {
            plan_name: "ConnectorCare Plan 2A".into(),
            amount: usd("400"),
            due_date: d(1, 23),
            grace_ends_on: d(4, 30),
        },
        NoticeKind::TerminationWarning | NoticeKind::SecondTerminationWarning => {
            NoticeBody::TerminationWarning {
                plan_name: "ConnectorCare Plan 2A".into(),
                amount: usd("400"),
                grace_ends_on: d(4, 30),
                termination_effective: d(2, 28),
            }
        }
        NoticeKind::CoverageTerminated => NoticeBody::CoverageTerminated {
            plan_name: "ConnectorCare Plan 2A".into(),
            effective: d(2, 28),
            reason: TerminationReason::NonPayment,
            reinstatable_until: d(6, 5),
            amount_to_reinstate: usd("1000"),
        },
        NoticeKind::CoverageCancelled => NoticeBody::CoverageCancelled {
            plan_name: "ConnectorCare Plan 2A".into(),
            deadline: d(12, 23),
        },
        NoticeKind::CoverageReinstated => NoticeBody::CoverageReinstated {
            plan_name: "ConnectorCare Plan 2A".into(),
        },
        NoticeKind::PaymentPlanSetUp => NoticeBody::PaymentPlanSetUp {
            total: usd("400"),
            installments: vec![
                (usd("133.34"), d(1, 31)),
                (usd("133.33"), d(2, 28)),
                (usd("133.33"), d(3, 31)),
            ],
        },
        NoticeKind::PasswordReset => NoticeBody::PasswordReset {
            token: "3f9c2a7be1d04c6f9a8b7e6d5c4b3a29".into(),
            expires_at: t(),
        },
        NoticeKind::PasswordChanged => NoticeBody::PasswordChanged { changed_at: t() },
        NoticeKind::RefundIssued => NoticeBody::RefundIssued {
            reference,
            amount: usd("50"),
            method,
        },
    }
}

pub fn notice(kind: NoticeKind, language: Language, name: &str, to: &str) -> Notice {
    Notice {
        kind,
        account_id: AccountId(uuid::Uuid::from_u128(1)),
        to: Email::parse(to).unwrap(),
        name: name.into(),
        language,
        dedupe_key: format!("{kind:?}-{language:?}"),
        body: body(kind),
    }
}

pub fn message(n: u128, notice: Notice) -> OutboxMessage {
    OutboxMessage {
        id: MessageId(uuid::Uuid::from_u128(n)),
        notice,
        created_at: t(),
        attempts: 0,
    }
}
