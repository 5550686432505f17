//! The append-only audit log: every state change of an account, bill, payment, mandate or plan.

use crate::ids::{AccountId, AgentId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Actor {
    /// The member, logged in.
    Member,
    /// Someone paying without logging in.
    Guest,
    /// A support agent.
    Agent {
        /// Agent id.
        id: AgentId,
    },
    /// A background job.
    System {
        /// Job name.
        job: String,
    },
    /// The payment gateway (a webhook or a reconciliation).
    Gateway {
        /// Event id, if any.
        event_id: Option<String>,
    },
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Member => f.write_str("member"),
            Actor::Guest => f.write_str("guest"),
            Actor::Agent { id } => write!(f, "agent {id}"),
            Actor::System { job } => write!(f, "system ({job})"),
            Actor::Gateway { event_id: Some(e) } => write!(f, "gateway ({e})"),
            Actor::Gateway { event_id: None } => f.write_str("gateway"),
        }
    }
}

/// One audit entry. `detail` never holds personal data beyond masked forms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When.
    pub at: DateTime<Utc>,
    /// The account.
    pub account_id: AccountId,
    /// Who.
    pub actor: Actor,
    /// What was changed: `payment:<id>`, `bill:<id>`, `mandate:<id>`, `account`.
    pub entity: String,
    /// What happened: `payment.succeeded`, `bill.issued`, ...
    pub action: String,
    /// Human-readable detail.
    pub detail: String,
}
