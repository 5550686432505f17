//! Configuration: an optional TOML file (`--config`, or `PORTAL_CONFIG`), then environment
//! variables, over documented defaults. Secrets come only from the environment.

use anyhow::{Context, bail};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything the binary needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the HTTP server listens. Default `127.0.0.1:8080` (`PORTAL_LISTEN`).
    pub listen: SocketAddr,
    /// The URL members use. Default `http://<listen>` (`PORTAL_PUBLIC_URL`).
    pub public_url: String,
    /// Folder for the SQLite file, the file outbox and the demo sealing key. Default `data`.
    pub data_dir: PathBuf,
    /// `sqlite://<path>` or `postgres://...`. Default `sqlite://<data_dir>/portal.db`
    /// (`PORTAL_DATABASE_URL`).
    pub database_url: String,
    /// The marketplace's time zone: it decides "today" for due dates. Default `America/New_York`.
    pub timezone: chrono_tz::Tz,
    /// Gateway base URL; empty runs the sandbox in-process. (`PORTAL_GATEWAY_URL`)
    pub gateway_url: Option<String>,
    /// Publishable key browsers tokenize with. (`PORTAL_GATEWAY_PUBLISHABLE_KEY`)
    pub gateway_publishable_key: String,
    /// Secret key (`PORTAL_GATEWAY_SECRET_KEY`, environment only).
    pub gateway_secret_key: Option<String>,
    /// Webhook signing secret (`PORTAL_WEBHOOK_SECRET`, environment only).
    pub webhook_secret: Option<String>,
    /// How email leaves: a file outbox (default) or SMTP.
    pub email: Email,
    /// The From header. Default `Health Connector <noreply@health-connector.example>`.
    pub email_from: String,
    /// Support phone shown in emails.
    pub support_phone: String,
    /// Support email shown in emails.
    pub support_email: String,
    /// Seconds between background worker passes. Default 30.
    pub worker_interval_secs: u64,
    /// Accounts per work item of a batch job: instances claim this many at a time, and the
    /// billing run writes this many accounts' bills per transaction. Default 500.
    /// (`PORTAL_JOB_CHUNK`)
    pub job_chunk: u32,
    /// Seconds a claimed chunk stays with an instance before others may take it over (how
    /// soon a crashed instance's work is picked up). Default 300. (`PORTAL_JOB_LEASE_SECS`)
    pub job_lease_secs: u32,
    /// 64 hex characters sealing SSNs (`PORTAL_SEALING_KEY`, environment only). Without it,
    /// a demo key is generated under `data_dir`.
    pub sealing_key: Option<String>,
    /// Mark cookies Secure (set when served over TLS). (`PORTAL_SECURE_COOKIES`)
    pub secure_cookies: bool,
    /// Support agents (`[[agents]]` in the file). None configured: a demo agent is created.
    pub agents: Vec<AgentConfig>,
    /// Login, registration, reset and guest-pay requests per client address per minute.
    /// Default 20. (`PORTAL_RATE_LIMIT_PER_MINUTE`)
    pub rate_limit_per_minute: u32,
    /// A test clock agents can move forward (`/api/v1/test-clock`, the support search page):
    /// on in demo mode, off otherwise unless `PORTAL_TEST_CLOCK=true` (a staging deployment).
    /// Production never sets it; without it the endpoint answers 404.
    pub test_clock: bool,
}

/// A support agent in the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Login name.
    pub username: String,
    /// Display name.
    pub name: String,
    /// A stable id for the audit log.
    pub id: uuid::Uuid,
    /// Argon2id hash (`portal-app hash-password`).
    pub password_hash: String,
}

/// Where email goes.
#[derive(Debug, Clone)]
pub enum Email {
    /// `.eml` files in a folder.
    Files(PathBuf),
    /// An SMTP server.
    Smtp {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// `none`, `starttls` or `implicit`.
        tls: String,
        /// User (the password is `PORTAL_SMTP_PASSWORD`).
        user: Option<String>,
        /// Password, environment only.
        password: Option<String>,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    public_url: Option<String>,
    data_dir: Option<String>,
    database_url: Option<String>,
    test_clock: Option<bool>,
    timezone: Option<String>,
    worker_interval_secs: Option<u64>,
    job_chunk: Option<u32>,
    job_lease_secs: Option<u32>,
    secure_cookies: Option<bool>,
    rate_limit_per_minute: Option<u32>,
    gateway: Option<GatewayFile>,
    email: Option<EmailFile>,
    support: Option<SupportFile>,
    #[serde(default)]
    agents: Vec<AgentConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayFile {
    url: Option<String>,
    publishable_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailFile {
    mode: Option<String>,
    from: Option<String>,
    outbox_dir: Option<String>,
    smtp_host: Option<String>,
    smtp_port: Option<u16>,
    smtp_tls: Option<String>,
    smtp_user: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SupportFile {
    phone: Option<String>,
    email: Option<String>,
}

fn env(key: &str) -> Option<String> {
    std::env::var(key)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

impl Config {
    /// Demo mode: no gateway configured, so the sandbox runs in-process. Only then are demo
    /// households seeded, a demo support agent created and a demo sealing key generated.
    pub fn demo_mode(&self) -> bool {
        self.gateway_url.is_none()
    }

    /// Loads the file (if given or named by `PORTAL_CONFIG`), then the environment.
    pub fn load(path: Option<PathBuf>) -> anyhow::Result<Config> {
        let path = path.or_else(|| env("PORTAL_CONFIG").map(PathBuf::from));
        let file: FileConfig = match &path {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| {
                    format!("cannot read the configuration file {}", p.display())
                })?;
                toml::from_str(&text).with_context(|| {
                    format!("the configuration file {} is not valid", p.display())
                })?
            }
            None => FileConfig::default(),
        };
        let gateway = file.gateway.unwrap_or_default();
        let email = file.email.unwrap_or_default();
        let support = file.support.unwrap_or_default();

        let listen_raw = env("PORTAL_LISTEN")
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen: SocketAddr = listen_raw
            .parse()
            .with_context(|| format!("listen must be host:port, got {listen_raw}"))?;
        let data_dir = PathBuf::from(
            env("PORTAL_DATA_DIR")
                .or(file.data_dir)
                .unwrap_or_else(|| "data".into()),
        );
        let database_url = env("PORTAL_DATABASE_URL")
            .or(file.database_url)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("portal.db").display()));
        if !(database_url.starts_with("sqlite://")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            bail!("database_url must start with sqlite:// or postgres://");
        }
        let tz_raw = env("PORTAL_TIMEZONE")
            .or(file.timezone)
            .unwrap_or_else(|| "America/New_York".into());
        let timezone: chrono_tz::Tz = tz_raw
            .parse()
            .map_err(|_| anyhow::anyhow!("timezone {tz_raw} is not an IANA time zone name"))?;
        let mode = env("PORTAL_EMAIL_MODE")
            .or(email.mode)
            .unwrap_or_else(|| "file".into());
        let email_cfg = match mode.as_str() {
            "file" => Email::Files(PathBuf::from(
                env("PORTAL_OUTBOX_DIR")
                    .or(email.outbox_dir)
                    .unwrap_or_else(|| data_dir.join("outbox").display().to_string()),
            )),
            "smtp" => Email::Smtp {
                host: env("PORTAL_SMTP_HOST")
                    .or(email.smtp_host)
                    .context("email mode smtp needs smtp_host (PORTAL_SMTP_HOST)")?,
                port: match env("PORTAL_SMTP_PORT") {
                    Some(p) => p
                        .parse()
                        .context("PORTAL_SMTP_PORT must be a port number")?,
                    None => email.smtp_port.unwrap_or(587),
                },
                tls: env("PORTAL_SMTP_TLS")
                    .or(email.smtp_tls)
                    .unwrap_or_else(|| "starttls".into()),
                user: env("PORTAL_SMTP_USER").or(email.smtp_user),
                password: env("PORTAL_SMTP_PASSWORD"),
            },
            other => bail!("email mode must be file or smtp, got {other}"),
        };
        let worker_interval_secs = match env("PORTAL_WORKER_INTERVAL_SECS") {
            Some(v) => v
                .parse()
                .context("PORTAL_WORKER_INTERVAL_SECS must be a number of seconds")?,
            None => file.worker_interval_secs.unwrap_or(30),
        };
        if !(1..=86_400).contains(&worker_interval_secs) {
            bail!("worker_interval_secs must be 1 to 86400");
        }
        let job_chunk = match env("PORTAL_JOB_CHUNK") {
            Some(v) => v
                .parse()
                .context("PORTAL_JOB_CHUNK must be a number of accounts")?,
            None => file.job_chunk.unwrap_or(2000),
        };
        if !(1..=10_000).contains(&job_chunk) {
            bail!("job_chunk must be 1 to 10000");
        }
        let job_lease_secs = match env("PORTAL_JOB_LEASE_SECS") {
            Some(v) => v
                .parse()
                .context("PORTAL_JOB_LEASE_SECS must be a number of seconds")?,
            None => file.job_lease_secs.unwrap_or(300),
        };
        if !(1..=86_400).contains(&job_lease_secs) {
            bail!("job_lease_secs must be 1 to 86400");
        }
        let gateway_url = env("PORTAL_GATEWAY_URL")
            .or(gateway.url)
            .filter(|u| !u.is_empty());
        let test_clock = match env("PORTAL_TEST_CLOCK").as_deref() {
            Some("true" | "1") => true,
            Some("false" | "0") => false,
            Some(_) => bail!("PORTAL_TEST_CLOCK must be true or false"),
            None => file.test_clock.unwrap_or(gateway_url.is_none()),
        };
        Ok(Config {
            test_clock,
            public_url: env("PORTAL_PUBLIC_URL")
                .or(file.public_url)
                .unwrap_or_else(|| format!("http://{listen}"))
                .trim_end_matches('/')
                .to_owned(),
            listen,
            data_dir,
            database_url,
            timezone,
            gateway_url,
            gateway_publishable_key: env("PORTAL_GATEWAY_PUBLISHABLE_KEY")
                .or(gateway.publishable_key)
                .unwrap_or_else(|| "pk_test_sandbox".into()),
            gateway_secret_key: env("PORTAL_GATEWAY_SECRET_KEY"),
            webhook_secret: env("PORTAL_WEBHOOK_SECRET"),
            email: email_cfg,
            email_from: env("PORTAL_EMAIL_FROM")
                .or(email.from)
                .unwrap_or_else(|| "Health Connector <noreply@health-connector.example>".into()),
            support_phone: env("PORTAL_SUPPORT_PHONE")
                .or(support.phone)
                .unwrap_or_else(|| "1-877-623-6765".into()),
            support_email: env("PORTAL_SUPPORT_EMAIL")
                .or(support.email)
                .unwrap_or_else(|| "support@health-connector.example".into()),
            worker_interval_secs,
            job_chunk,
            job_lease_secs,
            sealing_key: env("PORTAL_SEALING_KEY"),
            secure_cookies: env("PORTAL_SECURE_COOKIES")
                .or(file.secure_cookies.map(|b| b.to_string()))
                .is_some_and(|v| v == "true" || v == "1"),
            agents: file.agents,
            rate_limit_per_minute: match env("PORTAL_RATE_LIMIT_PER_MINUTE") {
                Some(v) => v
                    .parse()
                    .context("PORTAL_RATE_LIMIT_PER_MINUTE must be a number")?,
                None => file.rate_limit_per_minute.unwrap_or(20),
            },
        })
    }
}
