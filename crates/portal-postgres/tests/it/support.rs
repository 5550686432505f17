use portal_postgres::{PgStore, migrate};
use portal_sql::cache::AccountCache;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The variable naming the test server.
pub const URL_VAR: &str = "PORTAL_TEST_DATABASE_URL";

/// Test databases older than this are dropped by later runs (left by crashed runs).
const STALE_AFTER_SECS: u64 = 3600;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn skip(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("PostgreSQL tests must run in CI, but {reason}");
    }
    // Written straight to stderr so it shows even though the test harness captures output.
    let _ = writeln!(std::io::stderr(), "SKIPPED PostgreSQL test: {reason}");
}

/// A fresh, migrated database, or `None` (after saying so) when no server is configured.
pub async fn pool() -> Option<PgPool> {
    let Ok(url) = std::env::var(URL_VAR) else {
        skip(&format!("{URL_VAR} is not set"));
        return None;
    };
    let base: PgConnectOptions = url
        .parse()
        .expect("PORTAL_TEST_DATABASE_URL is not a PostgreSQL URL");
    let mut admin = base
        .connect()
        .await
        .expect("cannot connect to the test PostgreSQL server");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    drop_stale(&mut admin, now).await;
    let name = format!(
        "portal_it_{now}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create test database");
    admin.close().await.ok();
    let pool = PgPoolOptions::new()
        .max_connections(24)
        .connect_with(base.database(&name))
        .await
        .expect("connect to the test database");
    migrate(&pool).await.expect("migrations apply");
    Some(pool)
}

async fn drop_stale(admin: &mut sqlx::PgConnection, now: u64) {
    let names: Vec<(String,)> =
        sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE 'portal\\_it\\_%'")
            .fetch_all(&mut *admin)
            .await
            .unwrap_or_default();
    for (name,) in names {
        let created = name
            .split('_')
            .nth(2)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(now);
        if now.saturating_sub(created) > STALE_AFTER_SECS {
            let _ = admin
                .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                .await;
        }
    }
}

/// A `PgStore` over a fresh database.
pub async fn store() -> Option<Arc<PgStore>> {
    pool().await.map(|p| Arc::new(PgStore::new(p)))
}

/// A `PgStore` over a fresh database keeping accounts in a cache whose every hit is compared
/// with the account the database holds (a difference fails the load).
pub async fn cached_store() -> Option<Arc<PgStore>> {
    pool()
        .await
        .map(|p| Arc::new(PgStore::new(p).with_account_cache(AccountCache::verifying(64))))
}
