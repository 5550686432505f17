//! Builds the adapters the configuration names and plugs them into the core.

use crate::config::{Config, Email};
use anyhow::{Context, bail};
use chrono::{DateTime, NaiveDate, Utc};
use portal_core::ports::{Clock, IdGenerator, Notifier, Outbox, Store, WorkQueue};
use portal_core::services::outbox::{DeliveryPolicy, OutboxWorker};
use portal_core::services::{Deps, Portal, PortalConfig};
use portal_core::verifier::RecordMatchVerifier;
use portal_crypto::{AesGcmSealer, Argon2Hasher, RandomIds};
use portal_email::render::Branding;
use portal_email::{FileOutbox, Sender, SmtpConfig, SmtpNotifier, TlsMode};
use portal_postgres::PgStore;
use portal_sandbox::{SandboxConfig, SandboxHandle};
use portal_sqlite::SqliteStore;
use portal_stripe::{StripeConfig, StripeGateway};
use std::sync::Arc;
use std::time::Duration;

/// The marketplace's clock: now, and today's date in its time zone.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock(pub chrono_tz::Tz);

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    fn today(&self) -> NaiveDate {
        Utc::now().with_timezone(&self.0).date_naive()
    }
}

/// A clock for running a job for a given date (`billing-run --date`).
#[derive(Debug, Clone, Copy)]
pub struct DateClock(pub NaiveDate);

impl Clock for DateClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    fn today(&self) -> NaiveDate {
        self.0
    }
}

/// The marketplace's date moved forward by whole days (the test clock of demo and staging
/// deployments). The offset is kept in a file when one is given, so a restarted demo keeps
/// its date.
#[derive(Debug)]
pub struct OffsetClock {
    tz: chrono_tz::Tz,
    offset_days: std::sync::atomic::AtomicI64,
    file: Option<std::path::PathBuf>,
}

impl OffsetClock {
    /// A clock at the real date, moved by the offset saved in `file` if there is one.
    pub fn new(tz: chrono_tz::Tz, file: Option<std::path::PathBuf>) -> OffsetClock {
        let saved = file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|t| t.trim().parse::<i64>().ok())
            .filter(|d| (0..=36_500).contains(d))
            .unwrap_or(0);
        OffsetClock {
            tz,
            offset_days: std::sync::atomic::AtomicI64::new(saved),
            file,
        }
    }

    /// Makes today `date` (tests put households in the states only time brings).
    pub fn set_today(&self, date: NaiveDate) {
        let real = Utc::now().with_timezone(&self.tz).date_naive();
        self.offset_days.store(
            (date - real).num_days(),
            std::sync::atomic::Ordering::SeqCst,
        );
    }
}

/// Only the date moves: timestamps (sessions, emailed codes and links, email retries, the
/// audit log) keep real time, so moving the clock logs nobody out and every entry says when
/// it really happened.
impl Clock for OffsetClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    fn today(&self) -> NaiveDate {
        let real = Utc::now().with_timezone(&self.tz).date_naive();
        real + chrono::Duration::days(self.offset_days.load(std::sync::atomic::Ordering::SeqCst))
    }
}

impl portal_core::ports::ClockControl for OffsetClock {
    fn advance_days(&self, days: u32) {
        let now = self
            .offset_days
            .fetch_add(i64::from(days), std::sync::atomic::Ordering::SeqCst)
            + i64::from(days);
        if let Some(f) = &self.file {
            if let Err(e) = std::fs::write(f, now.to_string()) {
                tracing::warn!(path = %f.display(), error = %e, "cannot save the test clock");
            }
        }
    }
}

/// The database, whichever it is.
#[derive(Debug, Clone)]
pub enum Db {
    /// SQLite (the embedded default).
    Sqlite(Arc<SqliteStore>),
    /// PostgreSQL (production).
    Postgres(Arc<PgStore>),
}

/// What a process holds of the database: connections, and accounts kept in memory.
#[derive(Debug, Clone, Copy)]
pub struct DbCapacity {
    /// Connections at most.
    pub connections: u32,
    /// Accounts kept, each checked against its version on every load (0: none).
    pub cached_accounts: usize,
}

/// A serving process: requests run concurrently, and the accounts of the members active on
/// it are kept (a member's pages, payment and receipt load the same account within minutes;
/// a current copy costs a version lookup instead of nine tables).
pub const SERVER: DbCapacity = DbCapacity {
    connections: 16,
    cached_accounts: 2048,
};

/// A job command works one account at a time: two connections (for its single statements,
/// and as many for its transactions) are enough. More would only add PostgreSQL backends,
/// each paying its start-up and preparing every statement again. It reads each account once, so it keeps
/// none.
pub const JOB: DbCapacity = DbCapacity {
    connections: 2,
    cached_accounts: 0,
};

impl Db {
    /// Opens and migrates the configured database with what `capacity` allows.
    pub async fn open(config: &Config, capacity: DbCapacity) -> anyhow::Result<Db> {
        let connections = capacity.connections;
        let cache = || portal_sql::cache::AccountCache::new(capacity.cached_accounts);
        if let Some(path) = config.database_url.strip_prefix("sqlite://") {
            let path = std::path::PathBuf::from(path);
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let pool = portal_sqlite::open(&path, connections.min(8))
                .await
                .with_context(|| format!("cannot open {}", path.display()))?;
            portal_sqlite::migrate(&pool)
                .await
                .context("migrating the SQLite database failed")?;
            Ok(Db::Sqlite(Arc::new(
                SqliteStore::new(pool).with_account_cache(cache()),
            )))
        } else {
            let pool = portal_postgres::connect(&config.database_url, connections)
                .await
                .context("cannot connect to PostgreSQL")?;
            portal_postgres::migrate(&pool)
                .await
                .context("migrating the PostgreSQL database failed")?;
            Ok(Db::Postgres(Arc::new(
                PgStore::new(pool).with_account_cache(cache()),
            )))
        }
    }

    /// The store port.
    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            Db::Sqlite(s) => s.clone(),
            Db::Postgres(s) => s.clone(),
        }
    }

    /// The work-queue port.
    pub fn work(&self) -> Arc<dyn WorkQueue> {
        match self {
            Db::Sqlite(s) => s.clone(),
            Db::Postgres(s) => s.clone(),
        }
    }

    /// The outbox port.
    pub fn outbox(&self) -> Arc<dyn Outbox> {
        match self {
            Db::Sqlite(s) => s.clone(),
            Db::Postgres(s) => s.clone(),
        }
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        self.store().account_ids(None, 1).await.is_ok()
    }
}

/// Support agents from the configuration.
#[derive(Debug)]
pub struct ConfigAgents(Vec<portal_core::ports::AgentRecord>);

#[async_trait::async_trait]
impl portal_core::ports::AgentDirectory for ConfigAgents {
    async fn agent(
        &self,
        username: String,
    ) -> Result<Option<portal_core::ports::AgentRecord>, portal_core::ports::StoreError> {
        Ok(self
            .0
            .iter()
            .find(|a| a.username.eq_ignore_ascii_case(&username))
            .cloned())
    }
}

/// The demo agent's login, created when no agent is configured.
pub const DEMO_AGENT: (&str, &str) = ("agent", "Support-desk-sample-2027");

async fn agents(config: &Config, hasher: &Argon2Hasher) -> anyhow::Result<ConfigAgents> {
    use portal_core::ports::{AgentRecord, PasswordHasher};
    if config.agents.is_empty() && config.demo_mode() {
        let password = portal_core::password::Password::new(DEMO_AGENT.1, &[])?;
        return Ok(ConfigAgents(vec![AgentRecord {
            id: portal_core::ids::AgentId(uuid::Uuid::from_u128(1)),
            username: DEMO_AGENT.0.into(),
            name: "Demo Agent".into(),
            password_hash: hasher.hash(&password).await?,
        }]));
    }
    if config.agents.is_empty() {
        tracing::warn!("no support agents configured ([[agents]] in the configuration file)");
    }
    let list = config
        .agents
        .iter()
        .map(|a| {
            if !a.password_hash.starts_with("$argon2id$") {
                anyhow::bail!(
                    "agent {}: password_hash must be an Argon2id hash (portal-app hash-password)",
                    a.username
                );
            }
            Ok(AgentRecord {
                id: portal_core::ids::AgentId(a.id),
                username: a.username.to_ascii_lowercase(),
                name: a.name.clone(),
                password_hash: portal_core::account::PasswordHash(a.password_hash.clone()),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(ConfigAgents(list))
}

/// Everything a running portal holds.
#[derive(Debug)]
pub struct App {
    /// The use cases.
    pub portal: Portal,
    /// The database.
    pub db: Db,
    /// The gateway client (also verifies webhooks).
    pub gateway: Arc<StripeGateway>,
    /// Outbox delivery.
    pub outbox: Arc<OutboxWorker>,
    /// The in-process sandbox, when no gateway URL is configured; held because dropping the
    /// handle stops it.
    pub _sandbox: Option<SandboxHandle>,
    /// The sandbox's base URL for browsers, if running.
    pub sandbox_url: Option<String>,
}

fn sealing_key(config: &Config) -> anyhow::Result<String> {
    if let Some(k) = &config.sealing_key {
        return Ok(k.clone());
    }
    if !config.demo_mode() {
        bail!(
            "PORTAL_SEALING_KEY must be set (64 hexadecimal characters) when a real gateway is configured"
        );
    }
    let path = config.data_dir.join("sealing.key");
    if let Ok(k) = std::fs::read_to_string(&path) {
        return Ok(k.trim().to_owned());
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let key = RandomIds.secret_token().expose().to_owned();
    std::fs::write(&path, &key).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    tracing::warn!(path = %path.display(), "no PORTAL_SEALING_KEY set: generated a demo sealing key; set PORTAL_SEALING_KEY in production");
    Ok(key)
}

/// Builds the app with `clock` ("today" for jobs run with `--date`).
pub async fn build(
    config: &Config,
    clock: Arc<dyn Clock>,
    start_sandbox: bool,
) -> anyhow::Result<App> {
    build_with(config, clock, start_sandbox, SERVER).await
}

/// [`build`] with at most `connections` database connections.
pub async fn build_with(
    config: &Config,
    clock: Arc<dyn Clock>,
    start_sandbox: bool,
    capacity: DbCapacity,
) -> anyhow::Result<App> {
    let db = Db::open(config, capacity).await?;
    let (sandbox, base_url, secret, webhook_secret) = match &config.gateway_url {
        Some(url) => {
            let secret = config
                .gateway_secret_key
                .clone()
                .context("PORTAL_GATEWAY_SECRET_KEY must be set with PORTAL_GATEWAY_URL")?;
            let webhook = config
                .webhook_secret
                .clone()
                .context("PORTAL_WEBHOOK_SECRET must be set with PORTAL_GATEWAY_URL")?;
            (None, url.clone(), secret, webhook)
        }
        None if start_sandbox => {
            let webhook_secret = format!("whsec_{}", RandomIds.secret_token().expose());
            let sandbox = portal_sandbox::start(
                SandboxConfig {
                    webhook_url: Some(format!("http://{}/api/v1/webhooks/gateway", config.listen)),
                    webhook_secret: webhook_secret.clone(),
                    allowed_origins: vec![config.public_url.clone()],
                    ..SandboxConfig::default()
                },
                "127.0.0.1:0".parse()?,
            )
            .await
            .context("cannot start the sandbox gateway")?;
            let url = sandbox.base_url();
            (
                Some(sandbox),
                url,
                "sk_test_sandbox".to_owned(),
                webhook_secret,
            )
        }
        None => bail!(
            "this command needs a gateway: set PORTAL_GATEWAY_URL (for example a running portal-sandbox) and its keys"
        ),
    };
    let sandbox_url = sandbox.as_ref().map(SandboxHandle::base_url);
    let gateway = Arc::new(StripeGateway::new(StripeConfig::new(
        base_url,
        secret,
        webhook_secret,
    ))?);
    let sealer = Arc::new(
        AesGcmSealer::from_hex(&sealing_key(config)?)
            .context("the sealing key must be 64 hexadecimal characters")?,
    );
    let store = db.store();
    let hasher = Argon2Hasher::new();
    let agents = Arc::new(agents(config, &hasher).await?);
    let portal = Portal::new(
        Deps {
            store: store.clone(),
            gateway: gateway.clone(),
            clock: clock.clone(),
            ids: Arc::new(RandomIds),
            sealer: sealer.clone(),
            hasher: Arc::new(hasher),
            identity: Arc::new(RecordMatchVerifier::new(store, sealer)),
            work: db.work(),
            agents,
        },
        PortalConfig {
            worker_id: worker_id(),
            job_chunk: config.job_chunk,
            job_lease: chrono::Duration::seconds(i64::from(config.job_lease_secs)),
            ..PortalConfig::default()
        },
    );
    let branding = Branding {
        portal_name: "Health Connector Payment Portal".into(),
        portal_url: config.public_url.clone(),
        support_phone: config.support_phone.clone(),
        support_email: config.support_email.clone(),
    };
    let sender = Sender::new(&config.email_from, branding)
        .map_err(|e| anyhow::anyhow!("email_from: {e}"))?;
    let notifier: Arc<dyn Notifier> = match &config.email {
        Email::Files(dir) => Arc::new(FileOutbox::new(dir.clone(), sender)),
        Email::Smtp {
            host,
            port,
            tls,
            user,
            password,
        } => {
            let tls = match tls.as_str() {
                "none" => TlsMode::None,
                "starttls" => TlsMode::StartTls,
                "implicit" => TlsMode::Implicit,
                other => bail!("smtp_tls must be none, starttls or implicit, got {other}"),
            };
            let credentials = match (user, password) {
                (Some(u), Some(p)) => Some((u.clone(), p.clone())),
                (Some(_), None) => bail!("PORTAL_SMTP_PASSWORD must be set with an SMTP user"),
                _ => None,
            };
            let smtp = SmtpConfig {
                host: host.clone(),
                port: *port,
                tls,
                credentials,
                timeout: Duration::from_secs(30),
            };
            Arc::new(SmtpNotifier::new(&smtp, sender).map_err(|e| anyhow::anyhow!("{e}"))?)
        }
    };
    let policy = DeliveryPolicy::default();
    // Each delivery ends within the policy's budget, as the worker counts on.
    let budget = policy
        .send_budget
        .to_std()
        .unwrap_or(Duration::from_secs(60));
    let notifier: Arc<dyn Notifier> = Arc::new(TimeLimited(notifier, budget));
    let outbox = Arc::new(OutboxWorker::new(
        db.outbox(),
        notifier,
        clock,
        policy,
        worker_id(),
    ));
    Ok(App {
        portal,
        db,
        gateway,
        outbox,
        _sandbox: sandbox,
        sandbox_url,
    })
}

/// This instance's name in work claims.
pub fn worker_id() -> String {
    format!("portal-{}", std::process::id())
}

/// A notifier whose every delivery ends within a time limit: a mail server that stalls counts
/// as a temporary failure (retried later) instead of holding a message past its lease.
struct TimeLimited(Arc<dyn Notifier>, Duration);

#[async_trait::async_trait]
impl Notifier for TimeLimited {
    async fn deliver(
        &self,
        message: portal_core::ports::OutboxMessage,
    ) -> Result<String, portal_core::ports::NotifyError> {
        match tokio::time::timeout(self.1, self.0.deliver(message)).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    seconds = self.1.as_secs(),
                    "the mail server did not answer in time"
                );
                Err(portal_core::ports::NotifyError::Temporary(format!(
                    "the mail server did not finish within {} s",
                    self.1.as_secs()
                )))
            }
        }
    }
}
