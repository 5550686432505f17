//! Typed identifiers. Ids are not secrets: every lookup still checks ownership.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

macro_rules! id_type {
    ($($(#[$doc:meta])* $name:ident),+ $(,)?) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// The underlying UUID.
            pub fn uuid(self) -> Uuid {
                self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }
        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }
    )+};
}

id_type!(
    /// A household billing account (one per primary subscriber).
    AccountId,
    /// One enrollment (health, dental) of an account.
    EnrollmentId,
    /// A bill.
    BillId,
    /// A payment.
    PaymentId,
    /// A saved payment method.
    MethodId,
    /// An automatic-payment mandate.
    MandateId,
    /// A payment plan.
    PlanId,
    /// A login session.
    SessionId,
    /// A support agent.
    AgentId,
    /// An outbox message.
    MessageId,
);
