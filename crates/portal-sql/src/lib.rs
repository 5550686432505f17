//! What `portal-postgres` and `portal-sqlite` share, so that a rule about rows is written once:
//!
//! - [`records`]: rows as both databases return them (`sqlx::FromRow`, generic over the
//!   database) and their conversion to the domain, including assembling whole accounts;
//! - [`plan`]: what a commit writes, as rows, computed once from `Changes` (only what changed);
//! - [`sql`]: the statements both dialects run with the same text;
//! - [`cache`]: accounts kept by a serving process, checked against their versions;
//! - [`lane`]: connections for single statements, lent without sqlx's round trip on return.
//!
//! Each dialect keeps only what differs: how it runs a load and a commit (PostgreSQL writes a
//! commit in one statement, SQLite statement by statement), claims, upserts of bulk rows and
//! error recognition. The two schemas (two migration folders) keep the same tables and names.

use portal_core::payment::{PaymentChannel, PaymentInstrument, PaymentStatus, Transition};
use portal_core::ports::StoreError;
use serde::{Deserialize, Serialize};

pub mod cache;
pub mod lane;
pub mod plan;
pub mod records;
pub mod sql;
pub mod store;

/// A store result.
pub type StoreResult<T> = Result<T, StoreError>;

/// What of a payment lives in its JSON column (the rest are columns or rows of their own).
#[derive(Debug, Serialize, Deserialize)]
pub struct PaymentData {
    pub instrument: PaymentInstrument,
    pub channel: PaymentChannel,
    pub status: PaymentStatus,
    pub history: Vec<Transition>,
}

/// A stored value that does not read back as the domain allows.
pub fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// A value as the JSON text a column keeps.
pub fn to_json(what: &str, v: &impl Serialize) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| corrupt(what, e))
}

/// The account a session belongs to (none for an agent's).
pub fn session_account(p: &portal_core::account::Principal) -> Option<uuid::Uuid> {
    match p {
        portal_core::account::Principal::Member { account_id } => Some(account_id.uuid()),
        portal_core::account::Principal::Agent { .. } => None,
    }
}

/// The escaped `LIKE` pattern that finds `query` anywhere, case-insensitively (the searched
/// columns are lower-cased), with `\` as the escape character.
pub fn contains_pattern(query: &str) -> String {
    let mut p = String::from("%");
    for c in query.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

#[cfg(test)]
mod tests {
    use super::contains_pattern;

    #[test]
    fn search_patterns_escape_wildcards() {
        assert_eq!(contains_pattern("Ana"), "%ana%");
        assert_eq!(contains_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }
}
