//! The default identity verifier: matches a registrant against the subscriber on record.

use crate::ports::{
    AccountLookup, IdentityClaim, IdentityError, IdentityOutcome, IdentityVerifier, SecretSealer,
    Store,
};
use async_trait::async_trait;
use std::sync::Arc;

/// Matches account number, names (case- and accent-insensitive), date of birth and SSN
/// (by keyed digest) against the enrollment records in the store.
pub struct RecordMatchVerifier {
    store: Arc<dyn Store>,
    sealer: Arc<dyn SecretSealer>,
}

impl std::fmt::Debug for RecordMatchVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordMatchVerifier")
    }
}

impl RecordMatchVerifier {
    /// A verifier over the store's records.
    pub fn new(store: Arc<dyn Store>, sealer: Arc<dyn SecretSealer>) -> Self {
        Self { store, sealer }
    }
}

#[async_trait]
impl IdentityVerifier for RecordMatchVerifier {
    async fn verify(&self, claim: IdentityClaim) -> Result<IdentityOutcome, IdentityError> {
        let map = |e: crate::ports::StoreError| IdentityError(e.to_string());
        let Some(id) = self
            .store
            .find_account(AccountLookup::Number(claim.account_number.clone()))
            .await
            .map_err(map)?
        else {
            return Ok(IdentityOutcome::NoMatch);
        };
        let Some(account) = self.store.load_account(id).await.map_err(map)? else {
            return Ok(IdentityOutcome::NoMatch);
        };
        let h = &account.holder;
        let digest = self.sealer.lookup_digest(&claim.ssn.expose_digits());
        let matched = h.first_name.match_key() == claim.first_name.match_key()
            && h.last_name.match_key() == claim.last_name.match_key()
            && h.date_of_birth == claim.date_of_birth
            && h.ssn_digest == digest;
        Ok(if matched {
            IdentityOutcome::Matched(id)
        } else {
            IdentityOutcome::NoMatch
        })
    }
}
