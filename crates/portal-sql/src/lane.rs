//! The connections a store's single statements run on, lent without a round trip.
//!
//! sqlx's pool pings the server every time a connection comes back to it (to flush anything a
//! cancelled statement left behind), which made every statement two round trips: on a payment's
//! four statements that was about a tenth of the server's CPU, and as much again woke
//! PostgreSQL. A `Lane` lends connections from its own idle list and takes back only those
//! whose last statement finished ([`Lease::settle`]): a lease dropped mid-statement (its
//! request was cancelled) or failed below SQL (I/O, protocol) closes its connection instead, so
//! no connection is ever lent in an unknown state. A connection the server closed while idle
//! fails its next statement (the caller sees `Unavailable`) and is not lent again.
//!
//! Transactions keep using the sqlx pool: a lane is for statements that are their own
//! transaction.

use sqlx::{ConnectOptions, Connection, Database, Pool};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// How long a statement waits for a connection before it is refused.
const WAIT: Duration = Duration::from_secs(10);

/// Up to as many connections as the pool it is made from allows.
pub struct Lane<DB: Database> {
    options: <DB::Connection as Connection>::Options,
    idle: Mutex<Vec<DB::Connection>>,
    permits: Semaphore,
}

impl<DB: Database> std::fmt::Debug for Lane<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("available", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl<DB: Database> Lane<DB> {
    /// A lane with `pool`'s connect options and size.
    pub fn of(pool: &Pool<DB>) -> Self {
        let size = usize::try_from(pool.options().get_max_connections()).unwrap_or(1);
        Self {
            options: (*pool.connect_options()).clone(),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.max(1)),
        }
    }

    /// A connection: an idle one, or a new one while the lane has room.
    pub async fn lease(&self) -> Result<Lease<'_, DB>, sqlx::Error> {
        let permit = tokio::time::timeout(WAIT, self.permits.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let idle = self.lock().pop();
        let conn = match idle {
            Some(c) => c,
            None => self.options.connect().await?,
        };
        Ok(Lease {
            conn: Some(conn),
            lane: self,
            settled: true,
            _permit: permit,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<DB::Connection>> {
        // Each use is one push or pop: a panic elsewhere leaves the list whole.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A lent connection; it goes back to the lane only once settled.
pub struct Lease<'a, DB: Database> {
    conn: Option<DB::Connection>,
    lane: &'a Lane<DB>,
    settled: bool,
    _permit: SemaphorePermit<'a>,
}

impl<DB: Database> std::fmt::Debug for Lease<'_, DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("settled", &self.settled)
            .finish_non_exhaustive()
    }
}

impl<DB: Database> Lease<'_, DB> {
    /// The connection, to run one statement on (until [`settle`](Self::settle)d, the lease
    /// closes it when dropped).
    pub fn conn(&mut self) -> Result<&mut DB::Connection, sqlx::Error> {
        self.settled = false;
        // Only `Drop` takes the connection out.
        self.conn.as_mut().ok_or(sqlx::Error::PoolClosed)
    }

    /// The statement's result; the connection goes back to the lane unless it failed below
    /// SQL (an error the database reported, such as a unique violation, leaves it usable).
    pub fn settle<T>(mut self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        self.settled = match &result {
            Ok(_) => true,
            Err(e) => matches!(
                e,
                sqlx::Error::Database(_)
                    | sqlx::Error::RowNotFound
                    | sqlx::Error::ColumnDecode { .. }
                    | sqlx::Error::ColumnNotFound(_)
                    | sqlx::Error::Decode(_)
                    | sqlx::Error::Encode(_)
            ),
        };
        result
    }
}

impl<DB: Database> Drop for Lease<'_, DB> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take().filter(|_| self.settled) {
            self.lane.lock().push(c);
        }
    }
}
