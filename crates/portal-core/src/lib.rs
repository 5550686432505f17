//! `portal-core`: the pure domain of the Health Connector premium payment portal.
//!
//! Value types valid by construction, the billing, payment, autopay and delinquency rules,
//! port traits for everything outside (storage, gateway, notifier, clock, ids, sealing,
//! hashing, identity proofing), and the use-case services that orchestrate them. No I/O.

pub mod account;
pub mod audit;
pub mod billing;
pub mod calendar;
pub mod coverage;
pub mod delinquency;
pub mod enrollment;
pub mod error;
pub mod identity;
pub mod ids;
pub mod instrument;
pub mod ledger;
pub mod locale;
pub mod mandate;
pub mod money;
pub mod notice;
pub mod password;
pub mod payment;
pub mod plan;
pub mod ports;
pub mod reference;

pub use error::{FieldError, InputError, ValidationErrors};
pub use money::Money;
pub mod services;
pub mod verifier;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
