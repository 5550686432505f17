//! Accounts as a serving process last loaded or committed them, so that loading an account
//! nothing has changed reads its version number instead of the whole aggregate.
//!
//! Every commit of an account checks and bumps its version in the same statement that writes
//! it, so an account at a given version has exactly one state: a cached copy whose version
//! the database still holds is the account, whichever process wrote it last. A load reads the
//! versions of the ids asked for (one index lookup each) and loads only the accounts whose
//! copy is missing or older; a commit through this store refreshes the copy it had. Nothing
//! is ever answered from the cache without that version check.

use hashlink::LruCache;
use portal_core::account::Account;
use portal_core::ids::AccountId;
use std::sync::{Mutex, PoisonError};

/// The accounts of the members active on this process, least recently used dropped first.
#[derive(Debug, Default)]
pub struct AccountCache {
    accounts: Option<Mutex<LruCache<AccountId, Account>>>,
    /// Whether a load that finds a current copy also reads the account and compares (for the
    /// tests that prove a copy is what the database holds).
    verify: bool,
}

impl AccountCache {
    /// A cache of at most `capacity` accounts; none when `capacity` is 0.
    pub fn new(capacity: usize) -> Self {
        Self {
            accounts: (capacity > 0).then(|| Mutex::new(LruCache::new(capacity))),
            verify: false,
        }
    }

    /// A cache whose every hit is read again from the database and compared: for tests.
    pub fn verifying(capacity: usize) -> Self {
        Self {
            verify: true,
            ..Self::new(capacity)
        }
    }

    /// Whether it keeps any account.
    pub fn is_enabled(&self) -> bool {
        self.accounts.is_some()
    }

    /// Whether hits are compared with a full load.
    pub fn verifies(&self) -> bool {
        self.verify
    }

    fn with<R>(&self, f: impl FnOnce(&mut LruCache<AccountId, Account>) -> R) -> Option<R> {
        let m = self.accounts.as_ref()?;
        // A panic elsewhere cannot leave a half-written entry: each operation is one call.
        let mut map = m.lock().unwrap_or_else(PoisonError::into_inner);
        Some(f(&mut map))
    }

    /// Whether any of `ids` has a copy (if none has, a load reads them without the version
    /// check first).
    pub fn holds_any(&self, ids: &[AccountId]) -> bool {
        self.with(|m| ids.iter().any(|id| m.contains_key(id)))
            .unwrap_or(false)
    }

    /// Whether `id` has a copy.
    pub fn holds(&self, id: AccountId) -> bool {
        self.holds_any(&[id])
    }

    /// The copy of `id` if it is at `version`.
    pub fn current(&self, id: AccountId, version: u64) -> Option<Account> {
        self.with(|m| m.get(&id).filter(|a| a.version == version).cloned())
            .flatten()
    }

    /// Keeps `account`, unless a newer copy is already kept.
    pub fn put(&self, account: Account) {
        self.with(|m| {
            if m.peek(&account.id)
                .is_none_or(|a| a.version < account.version)
            {
                m.insert(account.id, account);
            }
        });
    }

    /// Drops the copy of `id` (a commit of it failed: the copy may be stale).
    pub fn forget(&self, id: AccountId) {
        self.with(|m| m.remove(&id));
    }
}
