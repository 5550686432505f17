// A test binary: helpers outside #[test] functions may fail loudly too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

//! PostgreSQL integration tests. They need `PORTAL_TEST_DATABASE_URL` (a database on a server
//! where the user may create databases); each test gets a fresh database. Without it they say
//! they were skipped; with `CI=true` a skip is a failure.

mod raw;
mod support;

mod conformance {
    portal_core::store_conformance_tests!(crate::support::store());
}

/// The same checks through the account cache: every load that a copy answers is compared
/// with the database's account.
mod cached_conformance {
    portal_core::store_conformance_tests!(crate::support::cached_store());
}
