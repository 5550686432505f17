// A test binary: helpers outside #[test] functions may fail loudly too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

//! SQLite integration tests: each test gets a fresh database file under the target directory.

use portal_sqlite::{SqliteStore, migrate, open};
use sqlx::SqlitePool;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

mod scenarios;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh, migrated database file.
pub async fn pool() -> (SqlitePool, PathBuf) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sqlite-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!(
        "it-{}-{}.db",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let pool = open(&path, 8).await.unwrap();
    migrate(&pool).await.unwrap();
    (pool, path)
}

pub async fn store() -> Option<Arc<SqliteStore>> {
    Some(Arc::new(SqliteStore::new(pool().await.0)))
}

/// A store keeping accounts in a cache whose every hit is compared with the database's.
pub async fn cached_store() -> Option<Arc<SqliteStore>> {
    let cache = portal_sql::cache::AccountCache::verifying(64);
    Some(Arc::new(
        SqliteStore::new(pool().await.0).with_account_cache(cache),
    ))
}

mod conformance {
    portal_core::store_conformance_tests!(crate::store());
}

/// The same checks through the account cache.
mod cached_conformance {
    portal_core::store_conformance_tests!(crate::cached_store());
}
