//! Port traits: everything the core needs from the outside world. Adapters implement them;
//! the core never does I/O itself. Share them as `Arc<dyn Port>`.

use crate::account::{
    Account, IdempotencyRecord, LoginThrottle, LookupDigest, PasswordHash, ResetToken,
    SealedSecret, SecretToken, Session, TokenDigest,
};
use crate::audit::AuditEvent;
use crate::identity::{AccountNumber, Ssn};
use crate::ids::{AccountId, MessageId, PaymentId};
use crate::instrument::{GatewayToken, MethodDetails, MethodKind};
use crate::money::Money;
use crate::notice::Notice;
use crate::password::Password;
use crate::payment::{DeclineReason, PaymentEvent};
use crate::reference::PaymentReference;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What storage can fail with, in domain terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Someone else committed a newer version of the account first; reload and retry.
    #[error("the account was changed concurrently")]
    Conflict,
    /// A uniqueness rule was broken.
    #[error("duplicate {0}")]
    Duplicate(Unique),
    /// The store could not be reached or failed; safe to retry later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be read back (a bug or manual edit).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// The uniqueness rules a store enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unique {
    /// Account number.
    AccountNumber,
    /// Username (case-insensitive).
    Username,
    /// One login per SSN (by keyed digest).
    Ssn,
    /// Email of a login.
    Email,
    /// Idempotency key within its scope.
    IdempotencyKey,
    /// Payment reference.
    PaymentReference,
    /// A bill for the same enrollment, month and kind.
    Bill,
    /// A notice with the same dedupe key.
    Notice,
    /// A reset token that was already used.
    ResetTokenUse,
}

impl std::fmt::Display for Unique {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unique::AccountNumber => "account number",
            Unique::Username => "username",
            Unique::Ssn => "SSN",
            Unique::Email => "email",
            Unique::IdempotencyKey => "idempotency key",
            Unique::PaymentReference => "payment reference",
            Unique::Bill => "bill",
            Unique::Notice => "notice",
            Unique::ResetTokenUse => "use of a reset link",
        })
    }
}

/// Ways to find an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountLookup {
    /// By marketplace account number.
    Number(AccountNumber),
    /// By username key (lower-case).
    Username(String),
    /// By email key (lower-case) of a login.
    Email(String),
    /// By the SSN digest of a registered login.
    MemberSsn(LookupDigest),
}

/// Ways to find a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentLookup {
    /// By reference number.
    Reference(PaymentReference),
    /// By the gateway's id.
    GatewayId(String),
    /// By our id.
    Id(PaymentId),
}

/// One atomic write: an account's changes with the audit entries and notices they cause, and
/// the records around them. A store applies all of it in one transaction or none of it.
#[derive(Debug, Default)]
pub struct Changes {
    /// The account to write, checked against `Account::version` (0 = insert). The store writes
    /// the header, enrollments, methods, mandates and plans, and the ledger's changed bills and
    /// payments, then bumps the version.
    pub account: Option<Account>,
    /// Sessions to create or update.
    pub put_sessions: Vec<Session>,
    /// Sessions to delete, by digest.
    pub delete_sessions: Vec<TokenDigest>,
    /// Delete every session of this account (password reset).
    pub delete_all_sessions_of: Option<AccountId>,
    /// Reset tokens to create.
    pub put_reset_tokens: Vec<ResetToken>,
    /// Marks a reset token used; fails the commit with `Duplicate(ResetTokenUse)` if it was
    /// already used, so a link works once even under concurrent use.
    pub consume_reset_token: Option<(TokenDigest, DateTime<Utc>)>,
    /// Ends every unused reset token of this account at this time (the password changed):
    /// links already emailed stop working. The token consumed by the same commit is left to
    /// `consume_reset_token`.
    pub end_reset_tokens_of: Option<(AccountId, DateTime<Utc>)>,
    /// Login throttles to create or update.
    pub put_throttles: Vec<LoginThrottle>,
    /// Idempotency records to insert (a duplicate key fails the commit with `Duplicate`).
    pub idempotency: Vec<IdempotencyRecord>,
    /// Audit entries to append.
    pub audit: Vec<AuditEvent>,
    /// Notices for the outbox (a duplicate dedupe key is skipped, not an error).
    pub outbox: Vec<Notice>,
}

impl Changes {
    /// Changes to one account.
    pub fn account(account: Account) -> Changes {
        Changes {
            account: Some(account),
            ..Changes::default()
        }
    }

    /// Adds notices that exist (accounts without a recipient yield `None`).
    pub fn notify(&mut self, notices: impl IntoIterator<Item = Option<Notice>>) {
        self.outbox.extend(notices.into_iter().flatten());
    }
}

/// A notice waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// Id.
    pub id: MessageId,
    /// The notice.
    pub notice: Notice,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// Delivery attempts so far.
    pub attempts: u32,
}

/// Persistence of accounts and everything around them.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Store: Send + Sync {
    /// Loads an account with its enrollments, ledger, methods, mandates, plans and login.
    async fn load_account(&self, id: AccountId) -> Result<Option<Account>, StoreError>;
    /// Finds an account id.
    async fn find_account(&self, by: AccountLookup) -> Result<Option<AccountId>, StoreError>;
    /// Finds the account and id of a payment.
    async fn find_payment(
        &self,
        by: PaymentLookup,
    ) -> Result<Option<(AccountId, PaymentId)>, StoreError>;
    /// An idempotency record by scope and key.
    async fn idempotency_record(
        &self,
        scope: String,
        key: String,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;
    /// A session by token digest.
    async fn session(&self, digest: TokenDigest) -> Result<Option<Session>, StoreError>;
    /// A reset token by digest.
    async fn reset_token(&self, digest: TokenDigest) -> Result<Option<ResetToken>, StoreError>;
    /// A login throttle by username key.
    async fn login_throttle(&self, key: String) -> Result<Option<LoginThrottle>, StoreError>;
    /// Loads several accounts at once (batch jobs); missing ids are left out. The result is in
    /// id order.
    async fn load_accounts(&self, ids: Vec<AccountId>) -> Result<Vec<Account>, StoreError>;
    /// Loads the accounts of a chunk of job work (every account from its first id to its last),
    /// in id order.
    async fn load_chunk(&self, chunk: WorkChunk) -> Result<Vec<Account>, StoreError>;
    /// Appends newly issued bills to many accounts in one transaction, with their audit entries
    /// and notices (a duplicate notice is skipped). Each account is checked against the version
    /// it was loaded at and its version bumped, exactly as [`Store::commit`] does; if any
    /// account moved, nothing is written and the result is `Conflict`.
    async fn issue_bills(&self, batch: Vec<IssuedBills>) -> Result<(), StoreError>;
    /// Account ids in id order after `after`, for batch jobs.
    async fn account_ids(
        &self,
        after: Option<AccountId>,
        limit: u32,
    ) -> Result<Vec<AccountId>, StoreError>;
    /// Accounts whose holder name, login email, username or account number matches (support).
    async fn search_accounts(
        &self,
        query: String,
        limit: u32,
    ) -> Result<Vec<AccountId>, StoreError>;
    /// The audit trail of an account, oldest first.
    async fn audit_trail(&self, account: AccountId) -> Result<Vec<AuditEvent>, StoreError>;
    /// Applies `changes` atomically.
    async fn commit(&self, changes: Changes) -> Result<(), StoreError>;
}

/// One run of a batch job: which job, for which period (e.g. `billing` for `2027-01-05`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobRun {
    /// Job name.
    pub job: String,
    /// Period, usually the date the job runs for.
    pub period: String,
}

/// The unit of batch-job work: the accounts whose ids lie between `first` and `last`,
/// inclusive. A run is planned as chunks of consecutive accounts, so a million accounts are a
/// few thousand work items, not a million.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkChunk {
    /// The first account id of the chunk.
    pub first: AccountId,
    /// The last account id of the chunk.
    pub last: AccountId,
}

/// What is left of a job run: its unfinished chunks and when the last lease on them ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkLeft {
    /// Chunks not finished.
    pub chunks: u64,
    /// The latest lease end among them (`None` when none is leased).
    pub leased_until: Option<DateTime<Utc>>,
}

/// Bills issued on one account by a batch job, for [`Store::issue_bills`].
#[derive(Debug, Clone)]
pub struct IssuedBills {
    /// The account.
    pub account: AccountId,
    /// The version the account was loaded at.
    pub version: u64,
    /// The new bills with their positions in the account's ledger.
    pub bills: Vec<(usize, crate::billing::Bill)>,
    /// Audit entries to append.
    pub audit: Vec<AuditEvent>,
    /// Notices for the outbox.
    pub outbox: Vec<Notice>,
}

/// Work claiming for batch jobs, so any number of instances can run the same job at once and
/// every chunk of accounts is worked by one of them.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait WorkQueue: Send + Sync {
    /// Splits the accounts into chunks of `chunk_size` consecutive ids and adds them as the
    /// run's items, once: a run already planned (by this or another instance) is left alone.
    /// Returns how many chunks were added.
    async fn plan_run(&self, run: JobRun, chunk_size: u32) -> Result<u64, StoreError>;
    /// Claims up to `limit` unfinished chunks that no live lease holds, leasing them to
    /// `worker` until `lease_until`. A chunk whose lease ran out (a crashed worker) can be
    /// claimed again; a finished one never.
    async fn claim(
        &self,
        run: JobRun,
        worker: String,
        limit: u32,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<WorkChunk>, StoreError>;
    /// Marks chunks finished.
    async fn finish(
        &self,
        run: JobRun,
        chunks: Vec<WorkChunk>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// The run's unfinished chunks (leased by a live or a dead worker, or failed and waiting
    /// to be worked again).
    async fn left(&self, run: JobRun) -> Result<WorkLeft, StoreError>;
}

/// The transactional outbox as the delivery worker sees it.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Claims up to `limit` messages due for delivery and not leased by another worker.
    async fn claim_messages(
        &self,
        worker: String,
        limit: u32,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<OutboxMessage>, StoreError>;
    /// Records a delivery with the Message-ID used.
    async fn mark_sent(
        &self,
        id: MessageId,
        message_id: String,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Records a failed attempt: retried at `retry_at`, or parked as a dead letter if `None`.
    async fn mark_failed(
        &self,
        id: MessageId,
        error: String,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Parked messages, oldest first.
    async fn dead_letters(&self, limit: u32) -> Result<Vec<OutboxMessage>, StoreError>;
    /// Puts a parked message back in the queue with a fresh set of attempts.
    async fn requeue(&self, id: MessageId, now: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Messages not yet sent or parked, oldest first (for operators and tests).
    async fn pending_messages(&self, limit: u32) -> Result<Vec<OutboxMessage>, StoreError>;
}

/// What a payment request to the gateway carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    /// Idempotency key: the same key never charges twice.
    pub idempotency_key: String,
    /// Amount.
    pub amount: Money,
    /// Method token.
    pub token: GatewayToken,
    /// Card or bank account.
    pub kind: MethodKind,
    /// Our payment id, sent as metadata so webhooks can find the payment.
    pub payment_id: PaymentId,
    /// The reference, as the statement descriptor suffix / metadata.
    pub reference: PaymentReference,
}

/// What the gateway said about a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeStatus {
    /// Settled at once (cards).
    Succeeded,
    /// Accepted and processing (bank transfers).
    Processing {
        /// Expected settlement date.
        expected_settlement: NaiveDate,
    },
    /// Declined.
    Declined {
        /// Why.
        reason: DeclineReason,
    },
}

/// A gateway's answer for a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeOutcome {
    /// The gateway's id (`pi_...`).
    pub gateway_id: String,
    /// Status.
    pub status: ChargeStatus,
}

/// A refund request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    /// Idempotency key.
    pub idempotency_key: String,
    /// The gateway's payment id.
    pub gateway_id: String,
    /// Amount.
    pub amount: Money,
}

/// What can go wrong talking to the gateway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The outcome is unknown (timeout, dropped connection, 5xx after retries): the payment
    /// stays pending and is reconciled later, never reported as failed or succeeded.
    #[error("the gateway's answer is unknown: {0}")]
    Unknown(String),
    /// The gateway refused the request itself (unknown token, bad parameters).
    #[error("the gateway rejected the request: {0}")]
    Rejected(String),
    /// The gateway answered with something we cannot read.
    #[error("the gateway sent an unexpected response: {0}")]
    Protocol(String),
}

/// The card / bank-transfer gateway. Front ends tokenize card and bank details directly with
/// the gateway; this port only ever sees tokens.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait PaymentGateway: Send + Sync {
    /// The display details of a token (brand, last four, expiry; or bank, last four).
    async fn describe_method(&self, token: GatewayToken) -> Result<MethodDetails, GatewayError>;
    /// Creates and confirms a payment.
    async fn charge(&self, request: ChargeRequest) -> Result<ChargeOutcome, GatewayError>;
    /// Refunds part or all of a payment.
    async fn refund(&self, request: RefundRequest) -> Result<(), GatewayError>;
    /// The current state of a payment, by the idempotency key it was created with (for
    /// reconciling payments whose outcome is unknown or whose webhook never came).
    async fn lookup(&self, idempotency_key: String) -> Result<Option<ChargeOutcome>, GatewayError>;
}

/// A verified gateway event (webhook), already checked for its signature by the adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayEvent {
    /// The gateway's event id, for the audit log.
    pub event_id: String,
    /// The gateway's payment id.
    pub gateway_id: String,
    /// Our payment id from the metadata, if present (events may arrive before we stored the
    /// gateway id).
    pub payment_id: Option<PaymentId>,
    /// What happened. For `Refunded` the amount is the total refunded so far.
    pub event: PaymentEvent,
}

/// What delivery of a notice can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    /// Try again later (server down, timeout, 4xx SMTP reply).
    #[error("temporary delivery failure: {0}")]
    Temporary(String),
    /// Never deliverable (bad address, 5xx SMTP reply): park it.
    #[error("permanent delivery failure: {0}")]
    Permanent(String),
}

/// Sends rendered notices (SMTP, file outbox).
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Notifier: Send + Sync {
    /// Delivers one message; returns the Message-ID used.
    async fn deliver(&self, message: OutboxMessage) -> Result<String, NotifyError>;
}

/// The time. `today` is the marketplace's local date, which decides due dates and "on time".
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
    /// Today's local date.
    fn today(&self) -> NaiveDate;
}

/// Moves a test clock forward (demo and staging deployments only; production has none).
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait ClockControl: Send + Sync {
    /// Moves the clock the other ports see forward by `days` whole days.
    fn advance_days(&self, days: u32);
}

/// Identity and randomness.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait IdGenerator: Send + Sync {
    /// A new unique id (UUIDv7 in production).
    fn new_id(&self) -> Uuid;
    /// A new random payment reference.
    fn payment_reference(&self) -> PaymentReference;
    /// A new unguessable token (at least 128 bits, URL-safe).
    fn secret_token(&self) -> SecretToken;
    /// A new numeric one-time code of `digits` digits.
    fn numeric_code(&self, digits: u32) -> SecretToken;
}

/// What sealing can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sealing failed: {0}")]
pub struct SealError(pub String);

/// Encryption at rest of secrets (SSNs) and keyed lookup digests of them.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait SecretSealer: Send + Sync {
    /// Encrypts.
    fn seal(&self, plaintext: &str) -> Result<SealedSecret, SealError>;
    /// Decrypts.
    fn unseal(&self, sealed: &SealedSecret) -> Result<String, SealError>;
    /// A keyed hash for equality lookups (one account per SSN) without the plain value.
    fn lookup_digest(&self, value: &str) -> LookupDigest;
}

/// What hashing can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(pub String);

/// Password hashing (Argon2id in production).
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait PasswordHasher: Send + Sync {
    /// Hashes a new password.
    async fn hash(&self, password: &Password) -> Result<PasswordHash, HashError>;
    /// Checks a candidate against a hash. With `None` it hashes anyway and returns `false`,
    /// so unknown usernames take as long as known ones.
    async fn verify(&self, candidate: &str, hash: Option<PasswordHash>) -> Result<bool, HashError>;
}

/// A support agent as the directory knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    /// Id used in the audit log.
    pub id: crate::ids::AgentId,
    /// Login name.
    pub username: String,
    /// Display name.
    pub name: String,
    /// Argon2id hash of the agent's password.
    pub password_hash: PasswordHash,
}

/// Where support agents come from (configuration, a staff directory, SSO).
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait AgentDirectory: Send + Sync {
    /// The agent with this login name (case-insensitive), if any.
    async fn agent(&self, username: String) -> Result<Option<AgentRecord>, StoreError>;
}

/// What identity proofing is asked.
#[derive(Debug, Clone)]
pub struct IdentityClaim {
    /// Account (enrollment or billing) number.
    pub account_number: AccountNumber,
    /// First name.
    pub first_name: crate::identity::PersonName,
    /// Last name.
    pub last_name: crate::identity::PersonName,
    /// Date of birth.
    pub date_of_birth: NaiveDate,
    /// SSN (a remote proofing service may need it; never log).
    pub ssn: Ssn,
}

/// The identity-proofing answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityOutcome {
    /// The person is the subscriber of this account.
    Matched(AccountId),
    /// No enrollment on record matches.
    NoMatch,
}

/// What identity proofing can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("identity verification unavailable: {0}")]
pub struct IdentityError(pub String);

/// Checks that a registrant is the subscriber of an enrollment on record. The default
/// implementation (`RecordMatchVerifier`) matches the marketplace's records in the store; a
/// deployment may plug in a remote identity-proofing service.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait IdentityVerifier: Send + Sync {
    /// Verifies the claim.
    async fn verify(&self, claim: IdentityClaim) -> Result<IdentityOutcome, IdentityError>;
}

/// Serialize a port-level record for debugging without secrets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// The message.
    pub message_id: MessageId,
    /// The Message-ID header used.
    pub smtp_message_id: String,
}
