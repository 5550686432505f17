//! Email notices: the core's `Notifier` port over SMTP (`SmtpNotifier`, lettre) and over a folder
//! of RFC 5322 `.eml` files (`FileOutbox`, the embedded default). Both render a notice in the
//! member's language with a plain-text and an HTML part (see [`render`]).
//!
//! The Message-ID is derived from the outbox message id, so a notice redelivered after a crash
//! (the server accepted it, the worker died before marking it sent) carries the same Message-ID
//! as the first copy and mail clients can recognise it; the file outbox skips it outright.

pub mod render;

use async_trait::async_trait;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use portal_core::ports::{Notifier, NotifyError, OutboxMessage};
use render::{Branding, render};
use std::path::PathBuf;
use std::time::Duration;

pub use render::Rendered;

/// A bad sender address in configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// What every message is sent as.
#[derive(Debug, Clone)]
pub struct Sender {
    from: Mailbox,
    domain: String,
    branding: Branding,
}

impl Sender {
    /// `from` is an address (`noreply@example.org`) or a mailbox (`Portal <noreply@example.org>`).
    pub fn new(from: &str, branding: Branding) -> Result<Self, ConfigError> {
        let from: Mailbox = from
            .parse()
            .map_err(|e| ConfigError(format!("the from address is not valid: {e}")))?;
        let domain = from.email.domain().to_owned();
        Ok(Self {
            from,
            domain,
            branding,
        })
    }

    /// The Message-ID of an outbox message: stable across redeliveries.
    pub fn message_id(&self, message: &OutboxMessage) -> String {
        format!("<{}@{}>", message.id.uuid().simple(), self.domain)
    }

    /// Renders and builds the email for an outbox message.
    pub fn build(&self, message: &OutboxMessage) -> Result<Message, NotifyError> {
        let notice = &message.notice;
        let to: Address = notice.to.as_ref().parse().map_err(|e| {
            NotifyError::Permanent(format!("the recipient address is not valid: {e}"))
        })?;
        let r = render(notice, &self.branding);
        Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(Some(notice.name.clone()), to))
            .subject(r.subject)
            .message_id(Some(self.message_id(message)))
            .date_now()
            .multipart(MultiPart::alternative_plain_html(r.text, r.html))
            .map_err(|e| NotifyError::Permanent(format!("the message could not be built: {e}")))
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain SMTP (a local relay or a test server).
    None,
    /// Upgrade with STARTTLS (usually port 587).
    StartTls,
    /// TLS from the first byte (usually port 465).
    Implicit,
}

/// SMTP settings.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Transport security.
    pub tls: TlsMode,
    /// User name and password, if the server needs them.
    pub credentials: Option<(String, String)>,
    /// Timeout for each SMTP command.
    pub timeout: Duration,
}

/// `Notifier` over SMTP.
#[derive(Clone)]
pub struct SmtpNotifier {
    sender: Sender,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl std::fmt::Debug for SmtpNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpNotifier")
            .field("from", &self.sender.from.to_string())
            .finish_non_exhaustive()
    }
}

impl SmtpNotifier {
    /// A notifier for a server.
    pub fn new(config: &SmtpConfig, sender: Sender) -> Result<Self, ConfigError> {
        let builder = match config.tls {
            TlsMode::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host),
            TlsMode::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&config.host)
                .map_err(|e| ConfigError(format!("STARTTLS setup failed: {e}")))?,
            TlsMode::Implicit => AsyncSmtpTransport::<Tokio1Executor>::relay(&config.host)
                .map_err(|e| ConfigError(format!("TLS setup failed: {e}")))?,
        };
        let mut builder = builder.port(config.port).timeout(Some(config.timeout));
        if let Some((user, password)) = &config.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(Self {
            sender,
            transport: builder.build(),
        })
    }
}

#[async_trait]
impl Notifier for SmtpNotifier {
    async fn deliver(&self, message: OutboxMessage) -> Result<String, NotifyError> {
        let email = self.sender.build(&message)?;
        match self.transport.send(email).await {
            Ok(_) => Ok(self.sender.message_id(&message)),
            // 5xx replies (an unknown mailbox, a refused sender) never succeed on retry.
            Err(e) if e.is_permanent() => Err(NotifyError::Permanent(e.to_string())),
            Err(e) => Err(NotifyError::Temporary(e.to_string())),
        }
    }
}

/// `Notifier` that writes each message as `<outbox id>.eml` into a folder.
#[derive(Debug, Clone)]
pub struct FileOutbox {
    sender: Sender,
    dir: PathBuf,
}

impl FileOutbox {
    /// A file outbox writing into `dir` (created when needed).
    pub fn new(dir: impl Into<PathBuf>, sender: Sender) -> Self {
        Self {
            sender,
            dir: dir.into(),
        }
    }

    /// The folder.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

#[async_trait]
impl Notifier for FileOutbox {
    async fn deliver(&self, message: OutboxMessage) -> Result<String, NotifyError> {
        let id = self.sender.message_id(&message);
        let path = self.dir.join(format!("{}.eml", message.id.uuid().simple()));
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(id);
        }
        let bytes = self.sender.build(&message)?.formatted();
        tokio::fs::create_dir_all(&self.dir).await.map_err(|e| {
            NotifyError::Temporary(format!("cannot create {}: {e}", self.dir.display()))
        })?;
        // Write then rename, so a reader never sees half a message.
        let tmp = self
            .dir
            .join(format!(".{}.tmp", message.id.uuid().simple()));
        tokio::fs::write(&tmp, &bytes)
            .await
            .map_err(|e| NotifyError::Temporary(format!("cannot write {}: {e}", tmp.display())))?;
        tokio::fs::rename(&tmp, &path).await.map_err(|e| {
            NotifyError::Temporary(format!("cannot move {} into place: {e}", path.display()))
        })?;
        Ok(id)
    }
}
