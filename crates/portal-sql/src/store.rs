//! The storage ports, written once for both databases: [`sql_store!`](crate::sql_store)
//! expands, in a dialect crate, to the `Store`, `WorkQueue` and `Outbox` implementations of
//! its store type with the dialect's concrete sqlx types. A macro rather than generic code: the
//! same text is type-checked against each database with no bound on sqlx's internals.
//!
//! The dialect crate provides, next to the invocation:
//! - the store type with a `pool` field (`sqlx::Pool` of its database, for transactions), a
//!   `lane` field (`Arc<Lane<$db>>`, for single statements) and a `cache` field
//!   (`Arc<AccountCache>`), and no other (the macro gives it `new(pool)`, `pool()` and
//!   `with_account_cache(cache)`);
//! - `fn db_err(sqlx::Error) -> StoreError` (unique violations name the rule broken);
//! - inherent methods for what it does its own way: `load_scope(range, ids)` (accounts whole
//!   from one snapshot, in id order, by a range of ids or a list), `write(&Changes)`,
//!   `write_bills(Vec<IssuedBills>)` and `plan(JobRun, u32)`, with the arguments and results
//!   of the port methods they implement;
//! - the claim statements `CLAIM_CHUNKS`, `FINISH_CHUNKS` and `CLAIM_DUE` (their parameters
//!   are documented where PostgreSQL's and SQLite's are defined), `ACCOUNT_VERSIONS` (the
//!   id and version of each account whose id is in the list `$1`), and `fn ids_arg(&[Uuid])`,
//!   a list of ids as the dialect binds it.

/// Expands to the `Store`, `WorkQueue` and `Outbox` implementations of `$store` over the
/// database `$db`. See the module documentation for what the invoking crate provides.
#[macro_export]
macro_rules! sql_store {
    ($store:ident, $db:ty) => {
        /// The storage ports over the shared layer (`portal_sql::sql_store!`).
        mod sql_store {
            use super::db_err;
            use ::chrono::{DateTime, Utc};
            use ::portal_core::account::{
                Account, IdempotencyRecord, LoginThrottle, ResetToken, Session, TokenDigest,
            };
            use ::portal_core::audit::AuditEvent;
            use ::portal_core::ids::{AccountId, MessageId, PaymentId};
            use ::portal_core::ports::{
                AccountLookup, Changes, IssuedBills, JobRun, Outbox, OutboxMessage, PaymentLookup,
                Store, StoreError, WorkChunk, WorkLeft, WorkQueue,
            };
            use ::uuid::Uuid;
            use $crate::{records, sql};
            impl super::$store {
                /// A store over a migrated pool.
                pub fn new(pool: ::sqlx::Pool<$db>) -> Self {
                    Self {
                        lane: ::std::sync::Arc::new($crate::lane::Lane::of(&pool)),
                        pool,
                        cache: ::std::sync::Arc::default(),
                    }
                }

                /// The store keeping the accounts it loads and commits in `cache`, checked
                /// against their versions on every load (see [`AccountCache`]).
                ///
                /// [`AccountCache`]: $crate::cache::AccountCache
                pub fn with_account_cache(mut self, cache: $crate::cache::AccountCache) -> Self {
                    self.cache = ::std::sync::Arc::new(cache);
                    self
                }

                /// Accounts by id, in id order: copies whose version the database still holds
                /// from the cache, the others loaded whole (and kept).
                async fn load_ids(&self, ids: &[Uuid]) -> Result<Vec<Account>, StoreError> {
                    let account_ids: Vec<AccountId> = ids.iter().copied().map(AccountId).collect();
                    if !self.cache.holds_any(&account_ids) {
                        return self.load_and_keep(ids).await;
                    }
                    let versions = ::sqlx::query_as::<$db, (Uuid, i64)>(super::ACCOUNT_VERSIONS)
                        .bind(super::ids_arg(ids));
                    let (mut found, mut missing) = (Vec::new(), Vec::new());
                    for (id, version) in self.all(versions).await? {
                        let version = u64::try_from(version)
                            .map_err(|e| $crate::corrupt("accounts.version", e))?;
                        match self.cache.current(AccountId(id), version) {
                            Some(a) if self.cache.verifies() => found.extend(self.verified(a).await?),
                            Some(a) => found.push(a),
                            None => missing.push(id),
                        }
                    }
                    if !missing.is_empty() {
                        found.extend(self.load_and_keep(&missing).await?);
                    }
                    found.sort_by_key(|a| a.id.uuid());
                    Ok(found)
                }

                /// Loads accounts whole and keeps them in the cache (if it keeps any).
                async fn load_and_keep(&self, ids: &[Uuid]) -> Result<Vec<Account>, StoreError> {
                    let loaded = self.load_scope(None, ids).await?;
                    if self.cache.is_enabled() {
                        loaded.iter().for_each(|a| self.cache.put(a.clone()));
                    }
                    Ok(loaded)
                }

                /// A verifying cache's hit, compared with the database's account at the same
                /// version (a commit may come between: then the newer account is the answer).
                async fn verified(&self, copy: Account) -> Result<Option<Account>, StoreError> {
                    let id = copy.id;
                    match self.load_scope(None, &[id.uuid()]).await?.pop() {
                        Some(stored) if stored.version == copy.version && stored != copy => {
                            Err($crate::corrupt(
                                "account cache",
                                format!("the copy of {id} differs from the database:\n{copy:?}\n{stored:?}"),
                            ))
                        }
                        Some(stored) if stored.version == copy.version => Ok(Some(copy)),
                        other => Ok(other),
                    }
                }

                /// The pool, for health checks.
                pub fn pool(&self) -> &::sqlx::Pool<$db> {
                    &self.pool
                }

                async fn optional<'q, R>(
                    &self,
                    q: ::sqlx::query::QueryAs<'q, $db, R, <$db as sqlx::Database>::Arguments<'q>>,
                ) -> Result<Option<R>, StoreError>
                where
                    R: for<'r> ::sqlx::FromRow<'r, <$db as sqlx::Database>::Row> + Send + Unpin,
                {
                    let mut lease = self.lane.lease().await.map_err(db_err)?;
                    let found = q.fetch_optional(lease.conn().map_err(db_err)?).await;
                    lease.settle(found).map_err(db_err)
                }

                async fn all<'q, R>(
                    &self,
                    q: ::sqlx::query::QueryAs<'q, $db, R, <$db as sqlx::Database>::Arguments<'q>>,
                ) -> Result<Vec<R>, StoreError>
                where
                    R: for<'r> ::sqlx::FromRow<'r, <$db as sqlx::Database>::Row> + Send + Unpin,
                {
                    let mut lease = self.lane.lease().await.map_err(db_err)?;
                    let found = q.fetch_all(lease.conn().map_err(db_err)?).await;
                    lease.settle(found).map_err(db_err)
                }

                /// Runs one statement; returns the rows it changed.
                async fn exec<'q>(
                    &self,
                    q: ::sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>>,
                ) -> Result<u64, StoreError> {
                    let mut lease = self.lane.lease().await.map_err(db_err)?;
                    let done = q.execute(lease.conn().map_err(db_err)?).await;
                    Ok(lease.settle(done).map_err(db_err)?.rows_affected())
                }
            }

            #[::async_trait::async_trait]
            impl Store for super::$store {
                async fn load_account(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
                    Ok(self.load_ids(&[id.uuid()]).await?.pop())
                }

                async fn load_accounts(
                    &self,
                    ids: Vec<AccountId>,
                ) -> Result<Vec<Account>, StoreError> {
                    let ids: Vec<Uuid> = ids.into_iter().map(|i| i.uuid()).collect();
                    self.load_ids(&ids).await
                }

                async fn load_chunk(&self, chunk: WorkChunk) -> Result<Vec<Account>, StoreError> {
                    self.load_scope(Some((chunk.first.uuid(), chunk.last.uuid())), &[])
                        .await
                }

                async fn issue_bills(&self, batch: Vec<IssuedBills>) -> Result<(), StoreError> {
                    self.write_bills(batch).await
                }

                async fn find_account(
                    &self,
                    by: AccountLookup,
                ) -> Result<Option<AccountId>, StoreError> {
                    use AccountLookup as L;
                    use sql::*;
                    let q = |text| ::sqlx::query_as::<$db, (Uuid,)>(text);
                    let q = match by {
                        L::Number(n) => q(ACCOUNT_BY_NUMBER).bind(n.as_ref().to_owned()),
                        L::Username(k) => q(ACCOUNT_BY_USERNAME).bind(k),
                        L::Email(k) => q(ACCOUNT_BY_EMAIL).bind(k),
                        L::MemberSsn(d) => q(ACCOUNT_BY_MEMBER_SSN).bind(d.0),
                    };
                    Ok(self.optional(q).await?.map(|(id,)| AccountId(id)))
                }

                async fn find_payment(
                    &self,
                    by: PaymentLookup,
                ) -> Result<Option<(AccountId, PaymentId)>, StoreError> {
                    use PaymentLookup as L;
                    use sql::*;
                    let q = |text| ::sqlx::query_as::<$db, (Uuid, Uuid)>(text);
                    let q = match by {
                        L::Reference(r) => q(PAYMENT_BY_REFERENCE).bind(r.to_string()),
                        L::GatewayId(g) => q(PAYMENT_BY_GATEWAY_ID).bind(g),
                        L::Id(id) => q(PAYMENT_BY_ID).bind(id.uuid()),
                    };
                    let found = self.optional(q).await?;
                    Ok(found.map(|(a, p)| (AccountId(a), PaymentId(p))))
                }

                async fn idempotency_record(
                    &self,
                    scope: String,
                    key: String,
                ) -> Result<Option<IdempotencyRecord>, StoreError> {
                    let q =
                        ::sqlx::query_as::<$db, records::IdempotencyRow>(sql::IDEMPOTENCY_RECORD);
                    Ok(self
                        .optional(q.bind(scope).bind(key))
                        .await?
                        .map(Into::into))
                }

                async fn session(
                    &self,
                    digest: TokenDigest,
                ) -> Result<Option<Session>, StoreError> {
                    let q = ::sqlx::query_as::<$db, records::SessionRecord>(sql::SESSION);
                    Ok(self.optional(q.bind(digest.0)).await?.map(Into::into))
                }

                async fn reset_token(
                    &self,
                    digest: TokenDigest,
                ) -> Result<Option<ResetToken>, StoreError> {
                    let q = ::sqlx::query_as::<$db, records::ResetTokenRecord>(sql::RESET_TOKEN);
                    Ok(self.optional(q.bind(digest.0)).await?.map(Into::into))
                }

                async fn login_throttle(
                    &self,
                    key: String,
                ) -> Result<Option<LoginThrottle>, StoreError> {
                    let q = ::sqlx::query_as::<$db, records::ThrottleRecord>(sql::LOGIN_THROTTLE);
                    self.optional(q.bind(key))
                        .await?
                        .map(TryInto::try_into)
                        .transpose()
                }

                async fn account_ids(
                    &self,
                    after: Option<AccountId>,
                    limit: u32,
                ) -> Result<Vec<AccountId>, StoreError> {
                    let q = ::sqlx::query_as::<$db, (Uuid,)>(sql::ACCOUNT_IDS)
                        .bind(after.map(|a| a.uuid()))
                        .bind(i64::from(limit));
                    Ok(self
                        .all(q)
                        .await?
                        .into_iter()
                        .map(|(id,)| AccountId(id))
                        .collect())
                }

                async fn search_accounts(
                    &self,
                    query: String,
                    limit: u32,
                ) -> Result<Vec<AccountId>, StoreError> {
                    let q = ::sqlx::query_as::<$db, (Uuid,)>(sql::SEARCH_ACCOUNTS)
                        .bind($crate::contains_pattern(&query))
                        .bind(i64::from(limit));
                    Ok(self
                        .all(q)
                        .await?
                        .into_iter()
                        .map(|(id,)| AccountId(id))
                        .collect())
                }

                async fn audit_trail(
                    &self,
                    account: AccountId,
                ) -> Result<Vec<AuditEvent>, StoreError> {
                    let q = ::sqlx::query_as::<$db, records::AuditRecord>(sql::AUDIT_TRAIL)
                        .bind(account.uuid());
                    Ok(self.all(q).await?.into_iter().map(Into::into).collect())
                }

                async fn commit(&self, changes: Changes) -> Result<(), StoreError> {
                    // A kept account is kept as committed; one not kept is not added (a job
                    // committing thousands of accounts does not push out the members').
                    let written = self.write(&changes).await;
                    if let Some(a) = changes.account.filter(|a| self.cache.holds(a.id)) {
                        match &written {
                            Ok(()) => self.cache.put(a.committed()),
                            Err(_) => self.cache.forget(a.id),
                        }
                    }
                    written
                }
            }

            #[::async_trait::async_trait]
            impl WorkQueue for super::$store {
                async fn plan_run(&self, run: JobRun, chunk_size: u32) -> Result<u64, StoreError> {
                    self.plan(run, chunk_size).await
                }

                async fn claim(
                    &self,
                    run: JobRun,
                    worker: String,
                    limit: u32,
                    now: DateTime<Utc>,
                    lease_until: DateTime<Utc>,
                ) -> Result<Vec<WorkChunk>, StoreError> {
                    let q = ::sqlx::query_as::<$db, records::ChunkRecord>(super::CLAIM_CHUNKS)
                        .bind(run.job)
                        .bind(run.period)
                        .bind(worker)
                        .bind(now)
                        .bind(lease_until)
                        .bind(i64::from(limit));
                    let mut chunks: Vec<WorkChunk> =
                        self.all(q).await?.into_iter().map(Into::into).collect();
                    chunks.sort();
                    Ok(chunks)
                }

                async fn finish(
                    &self,
                    run: JobRun,
                    chunks: Vec<WorkChunk>,
                    now: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    let firsts: Vec<Uuid> = chunks.into_iter().map(|c| c.first.uuid()).collect();
                    let q = ::sqlx::query::<$db>(super::FINISH_CHUNKS)
                        .bind(run.job)
                        .bind(run.period)
                        .bind(now)
                        .bind(super::ids_arg(&firsts));
                    self.exec(q).await?;
                    Ok(())
                }

                async fn left(&self, run: JobRun) -> Result<WorkLeft, StoreError> {
                    let q = ::sqlx::query_as::<$db, (Option<DateTime<Utc>>,)>(sql::UNFINISHED_LEASES)
                        .bind(run.job)
                        .bind(run.period);
                    let leases = self.all(q).await?;
                    Ok(WorkLeft {
                        chunks: leases.len() as u64,
                        leased_until: leases.into_iter().filter_map(|(l,)| l).max(),
                    })
                }
            }

            #[::async_trait::async_trait]
            impl Outbox for super::$store {
                async fn claim_messages(
                    &self,
                    worker: String,
                    limit: u32,
                    now: DateTime<Utc>,
                    lease_until: DateTime<Utc>,
                ) -> Result<Vec<OutboxMessage>, StoreError> {
                    let q = ::sqlx::query_as::<$db, records::ClaimedRecord>(super::CLAIM_DUE)
                        .bind(worker)
                        .bind(now)
                        .bind(lease_until)
                        .bind(i64::from(limit));
                    records::in_queue_order(self.all(q).await?)
                }

                async fn mark_sent(
                    &self,
                    id: MessageId,
                    message_id: String,
                    now: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    let q = ::sqlx::query::<$db>(sql::MARK_SENT)
                        .bind(id.uuid())
                        .bind(now)
                        .bind(message_id);
                    self.exec(q).await?;
                    Ok(())
                }

                async fn mark_failed(
                    &self,
                    id: MessageId,
                    error: String,
                    retry_at: Option<DateTime<Utc>>,
                    _now: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    let q = ::sqlx::query::<$db>(sql::MARK_FAILED)
                        .bind(id.uuid())
                        .bind(error)
                        .bind(retry_at);
                    self.exec(q).await?;
                    Ok(())
                }

                async fn dead_letters(&self, limit: u32) -> Result<Vec<OutboxMessage>, StoreError> {
                    let q = ::sqlx::query_as::<$db, records::OutboxRecord>(sql::DEAD_LETTERS)
                        .bind(i64::from(limit));
                    self.all(q)
                        .await?
                        .into_iter()
                        .map(TryInto::try_into)
                        .collect()
                }

                async fn requeue(
                    &self,
                    id: MessageId,
                    now: DateTime<Utc>,
                ) -> Result<bool, StoreError> {
                    let q = ::sqlx::query::<$db>(sql::REQUEUE)
                        .bind(id.uuid())
                        .bind(now);
                    Ok(self.exec(q).await? == 1)
                }

                async fn pending_messages(
                    &self,
                    limit: u32,
                ) -> Result<Vec<OutboxMessage>, StoreError> {
                    let q = ::sqlx::query_as::<$db, records::OutboxRecord>(sql::PENDING_MESSAGES)
                        .bind(i64::from(limit));
                    self.all(q)
                        .await?
                        .into_iter()
                        .map(TryInto::try_into)
                        .collect()
                }
            }
        }
    };
}

/// Runs the five load queries of a [`LoadSql`](crate::sql::LoadSql) on `$conn` (a
/// transaction, for one snapshot), each with the same arguments bound, and gathers the rows
/// as [`AccountRecords`](crate::records::AccountRecords); `db_err` must be in scope.
#[macro_export]
macro_rules! fetch_records {
    ($conn:expr, $sql:expr, $($arg:expr),+) => {{
        let sql: &$crate::sql::LoadSql = $sql;
        let headers: Vec<$crate::records::HeaderRecord> = ::sqlx::query_as(&sql.headers)
            $(.bind($arg))+
            .fetch_all(&mut *$conn)
            .await
            .map_err(db_err)?;
        if headers.is_empty() {
            $crate::records::AccountRecords::default()
        } else {
            macro_rules! rows {
                ($text:expr) => {
                    ::sqlx::query_as($text)
                        $(.bind($arg))+
                        .fetch_all(&mut *$conn)
                        .await
                        .map_err(db_err)?
                };
            }
            $crate::records::AccountRecords {
                headers,
                collections: rows!(&sql.collections),
                bills: rows!(&sql.bills),
                allocations: rows!(&sql.allocations),
                payments: rows!(&sql.payments),
            }
        }
    }};
}
