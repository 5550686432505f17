//! Use-case services: each public method is one use case. They parse nothing (commands come
//! typed or as forms with a `parse`), call the domain, and commit one `Changes` per step, so
//! what must be atomic is one port call.

mod auth;
mod autopay;
mod jobs;
pub mod outbox;
mod payments;
mod plans;
mod registration;
mod support;
mod test_clock;

pub use auth::{LoginOutcome, SessionGrant};
pub use autopay::{AutopayForm, AutopayPreview};
pub use jobs::{JobProgress, JobReport, JobSummary, ProgressFn, StopFn};
pub use payments::{
    GuestMatch, GuestPayForm, MakePayment, OfflinePaymentForm, PayWith, PaymentPreview,
    PaymentReceipt,
};
pub use plans::ReinstatementQuote;
pub use registration::{PendingRegistration, RegistrationForm};
pub use support::TimelineEntry;
pub use test_clock::{ClockAdvance, MAX_ADVANCE_DAYS};

use crate::account::Account;
use crate::billing::BillingPolicy;
use crate::delinquency::DelinquencyPolicy;
use crate::error::{FieldError, ValidationErrors};
use crate::ids::AccountId;
use crate::instrument::MethodKind;
use crate::mandate::RetryPolicy;
use crate::money::Money;
use crate::ports::HashError;
use crate::ports::{
    Changes, Clock, GatewayError, IdGenerator, IdentityError, IdentityVerifier, PasswordHasher,
    PaymentGateway, SealError, SecretSealer, Store, StoreError, Unique, WorkQueue,
};
use chrono::{DateTime, Duration, Timelike, Utc};
use std::sync::Arc;

/// The ports a `Portal` runs on.
#[derive(Clone)]
pub struct Deps {
    /// Storage.
    pub store: Arc<dyn Store>,
    /// Payment gateway.
    pub gateway: Arc<dyn PaymentGateway>,
    /// Clock.
    pub clock: Arc<dyn Clock>,
    /// Ids and randomness.
    pub ids: Arc<dyn IdGenerator>,
    /// Secret sealing.
    pub sealer: Arc<dyn SecretSealer>,
    /// Password hashing.
    pub hasher: Arc<dyn PasswordHasher>,
    /// Identity proofing.
    pub identity: Arc<dyn IdentityVerifier>,
    /// Work claiming for batch jobs.
    pub work: Arc<dyn WorkQueue>,
    /// Support agents.
    pub agents: Arc<dyn crate::ports::AgentDirectory>,
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deps")
    }
}

/// Login, session and token lifetimes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthPolicy {
    /// Failed logins within `failure_window` that lock the account.
    pub max_failures: u32,
    /// Window for counting failures.
    pub failure_window: Duration,
    /// How long a lockout lasts.
    pub lockout: Duration,
    /// Sessions end after this long unused.
    pub session_idle: Duration,
    /// Sessions end after this long regardless.
    pub session_absolute: Duration,
    /// Reset links work this long.
    pub reset_ttl: Duration,
    /// Email codes work this long.
    pub email_code_ttl: Duration,
    /// Wrong email codes before a new code is needed.
    pub email_code_attempts: u32,
}

impl Default for AuthPolicy {
    fn default() -> Self {
        Self {
            max_failures: 5,
            failure_window: Duration::minutes(15),
            lockout: Duration::minutes(15),
            session_idle: Duration::minutes(30),
            session_absolute: Duration::hours(12),
            reset_ttl: Duration::minutes(60),
            email_code_ttl: Duration::minutes(15),
            email_code_attempts: 5,
        }
    }
}

/// Which payment methods a deployment accepts (the default: both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptedMethods {
    /// Cards.
    pub card: bool,
    /// Bank accounts.
    pub bank_account: bool,
}

impl Default for AcceptedMethods {
    fn default() -> Self {
        Self {
            card: true,
            bank_account: true,
        }
    }
}

impl AcceptedMethods {
    /// Whether `kind` is accepted.
    pub fn accepts(self, kind: MethodKind) -> bool {
        match kind {
            MethodKind::Card => self.card,
            MethodKind::BankAccount => self.bank_account,
        }
    }
}

/// Every rule a deployment can configure.
#[derive(Debug, Clone)]
pub struct PortalConfig {
    /// Billing schedule.
    pub billing: BillingPolicy,
    /// Missed payments.
    pub delinquency: DelinquencyPolicy,
    /// Autopay retries and notices.
    pub autopay: RetryPolicy,
    /// Logins and sessions.
    pub auth: AuthPolicy,
    /// Accepted payment methods.
    pub methods: AcceptedMethods,
    /// Largest single payment.
    pub max_payment: Money,
    /// Payments whose gateway outcome is unknown for this long are reconciled.
    pub reconcile_after: Duration,
    /// This instance's name in work claims.
    pub worker_id: String,
    /// How long a claimed batch of job items stays with this instance before others may take
    /// it over (a crashed instance's items come back after this).
    pub job_lease: Duration,
    /// Accounts per work item of a batch job (and per write of the billing run).
    pub job_chunk: u32,
}

impl Default for PortalConfig {
    fn default() -> Self {
        Self {
            billing: BillingPolicy::default(),
            delinquency: DelinquencyPolicy::default(),
            autopay: RetryPolicy::default(),
            auth: AuthPolicy::default(),
            methods: AcceptedMethods::default(),
            max_payment: Money::from_cents(5_000_000),
            reconcile_after: Duration::minutes(10),
            worker_id: "worker".to_owned(),
            job_lease: Duration::minutes(5),
            job_chunk: 2000,
        }
    }
}

/// What a use case can fail with; the HTTP layer maps each variant to a status.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Bad input, with every field's reason.
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    /// The thing does not exist, or belongs to someone else.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Wrong username or password (never says which).
    #[error("the username or password is incorrect")]
    InvalidCredentials,
    /// Too many failed logins.
    #[error("too many failed attempts; try again after {until}")]
    Locked {
        /// When logins work again.
        until: DateTime<Utc>,
    },
    /// Registration not finished: the email code was not entered yet.
    #[error("confirm your email address to finish creating your account")]
    EmailNotVerified {
        /// The account, to resend the code.
        account_id: AccountId,
    },
    /// No valid session.
    #[error("your session has ended; please log in again")]
    Unauthenticated,
    /// A guest-pay or identity match failed; says only that.
    #[error("the details you entered don't match our records")]
    NoMatch,
    /// The request conflicts with the current state (idempotency key reused with a different
    /// request, already registered, a concurrent change that kept winning).
    #[error("{0}")]
    Conflict(String),
    /// A business rule refuses it (refund above credit, reinstatement window closed).
    #[error("{0}")]
    Rejected(String),
    /// A token or code is invalid, used or expired.
    #[error("this link or code is invalid or has expired")]
    InvalidToken,
    /// The gateway refused or failed in a way the member must hear about.
    #[error("payment gateway: {0}")]
    Gateway(#[from] GatewayError),
    /// Storage failed.
    #[error(transparent)]
    Store(StoreError),
    /// A port failed (sealing, hashing, identity proofing).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Duplicate(u) => {
                ServiceError::Invalid(ValidationErrors::one(duplicate_field(u)))
            }
            other => ServiceError::Store(other),
        }
    }
}

impl From<SealError> for ServiceError {
    fn from(e: SealError) -> Self {
        ServiceError::Internal(e.to_string())
    }
}

impl From<HashError> for ServiceError {
    fn from(e: HashError) -> Self {
        ServiceError::Internal(e.to_string())
    }
}

impl From<IdentityError> for ServiceError {
    fn from(e: IdentityError) -> Self {
        ServiceError::Internal(e.to_string())
    }
}

impl From<crate::ledger::LedgerError> for ServiceError {
    fn from(e: crate::ledger::LedgerError) -> Self {
        ServiceError::Conflict(e.to_string())
    }
}

fn duplicate_field(u: Unique) -> FieldError {
    match u {
        Unique::Username => FieldError::new(
            "username",
            "taken",
            "this username is taken; choose another",
        ),
        Unique::Ssn => FieldError::new(
            "ssn",
            "already_registered",
            "an online account already exists for this Social Security number; log in or reset your password",
        ),
        Unique::Email => FieldError::new(
            "email",
            "taken",
            "this email address is used by another online account",
        ),
        Unique::IdempotencyKey => FieldError::new(
            "Idempotency-Key",
            "reused",
            "this idempotency key was already used",
        ),
        Unique::ResetTokenUse => {
            FieldError::new("reset_token", "used", "this link was already used")
        }
        other => FieldError::new("request", "duplicate", format!("duplicate {other}")),
    }
}

/// Attempts at an optimistic update before giving up with `Conflict`.
const MAX_ATTEMPTS: u32 = 8;

/// The use cases over a set of ports and a configuration.
#[derive(Debug, Clone)]
pub struct Portal {
    deps: Deps,
    config: PortalConfig,
    progress: Option<jobs::Progress>,
    stop: Option<jobs::Stop>,
    test_clock: Option<test_clock::Control>,
    clock_busy: Arc<std::sync::atomic::AtomicBool>,
}

impl Portal {
    /// A portal over `deps` with `config`.
    pub fn new(deps: Deps, config: PortalConfig) -> Portal {
        Portal {
            deps,
            config,
            progress: None,
            stop: None,
            test_clock: None,
            clock_busy: Arc::default(),
        }
    }

    /// Gives the portal a test clock (demo and staging only): `control` moves the clock the
    /// ports see, and `Portal::advance_test_clock` runs the days it passes.
    pub fn with_test_clock(mut self, control: Arc<dyn crate::ports::ClockControl>) -> Portal {
        self.test_clock = Some(test_clock::Control(control));
        self
    }

    /// Reports the progress of batch job runs to `progress`, after each chunk of accounts.
    pub fn with_progress(mut self, progress: Arc<jobs::ProgressFn>) -> Portal {
        self.progress = Some(jobs::Progress(progress));
        self
    }

    /// Lets batch job runs stop early: once `stop` answers true, a run works the chunk it
    /// holds and claims no more (what is left waits, unclaimed, for the next run). For a
    /// graceful shutdown between chunks.
    pub fn with_stop(mut self, stop: Arc<jobs::StopFn>) -> Portal {
        self.stop = Some(jobs::Stop(stop));
        self
    }

    /// The configuration.
    pub fn config(&self) -> &PortalConfig {
        &self.config
    }

    /// The ports.
    pub fn deps(&self) -> &Deps {
        &self.deps
    }

    /// Loads an account or answers `NotFound`.
    pub async fn account(&self, id: AccountId) -> Result<Account, ServiceError> {
        self.deps
            .store
            .load_account(id)
            .await?
            .ok_or(ServiceError::NotFound("account"))
    }

    /// Loads, changes and commits an account, retrying when another writer won the race.
    /// `change` fills `Changes` (audit, outbox, ...) and returns a value, or `Ok(None)` when
    /// there is nothing to write.
    pub(crate) async fn update_account<T, F>(
        &self,
        id: AccountId,
        change: F,
    ) -> Result<T, ServiceError>
    where
        F: FnMut(&mut Account, &mut Changes) -> Result<Option<T>, ServiceError>,
        T: Default,
    {
        let account = self.account(id).await?;
        let (out, _) = self.update_loaded(account, change).await?;
        Ok(out.unwrap_or_default())
    }

    /// [`Portal::update_account`] from an account already loaded: the first attempt changes
    /// it without reading it again (a conflict reloads). Returns what the change gave (`None`
    /// when it had nothing to do) and the account as it now stands: as committed (its version
    /// moved on, nothing left to write), or as loaded when nothing changed. A use case that goes
    /// on with the account needs no second read.
    pub(crate) async fn update_loaded<T, F>(
        &self,
        account: Account,
        mut change: F,
    ) -> Result<(Option<T>, Account), ServiceError>
    where
        F: FnMut(&mut Account, &mut Changes) -> Result<Option<T>, ServiceError>,
    {
        let id = account.id;
        let mut loaded = Some(account);
        for _ in 0..MAX_ATTEMPTS {
            let mut account = match loaded.take() {
                Some(a) => a,
                None => self.account(id).await?,
            };
            let mut changes = Changes::default();
            let Some(out) = change(&mut account, &mut changes)? else {
                return Ok((None, account));
            };
            let committed = account.clone();
            changes.account = Some(account);
            match self.deps.store.commit(changes).await {
                Ok(()) => return Ok((Some(out), committed.committed())),
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Conflict(
            "the account is busy; please try again".into(),
        ))
    }

    /// The time, to the microsecond: what the databases keep, so an account held in memory
    /// after a commit equals the account a load reads back (whatever the clock adapter gives).
    fn now(&self) -> DateTime<Utc> {
        let now = self.deps.clock.now();
        now.with_nanosecond(now.nanosecond() / 1_000 * 1_000)
            .unwrap_or(now)
    }

    fn today(&self) -> chrono::NaiveDate {
        self.deps.clock.today()
    }

    fn new_id<T: From<uuid::Uuid>>(&self) -> T {
        T::from(self.deps.ids.new_id())
    }
}

#[cfg(test)]
mod tests;
