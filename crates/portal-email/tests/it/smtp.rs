//! Delivery to a real SMTP server process (Python's aiosmtpd, see `tests/smtp_server.py`).
//! Skipped, saying so, where aiosmtpd is not installed; in CI (`CI=true`) that is a failure.

use crate::files::check_email;
use crate::samples::{message, notice};
use chrono::NaiveDate;
use portal_core::identity::Language;
use portal_core::notice::NoticeKind;
use portal_core::ports::{Changes, Notifier, NotifyError, Outbox, Store};
use portal_core::services::outbox::{DeliveryPolicy, OutboxWorker};
use portal_core::testing::{FixedClock, InMemoryStore};
use portal_email::render::Branding;
use portal_email::{Sender, SmtpConfig, SmtpNotifier, TlsMode};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

struct SmtpServer {
    child: Child,
    maildir: PathBuf,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SmtpServer {
    fn messages(&self) -> Vec<Vec<u8>> {
        let new = self.maildir.join("new");
        let mut files: Vec<_> = std::fs::read_dir(&new)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        files.sort();
        files.iter().map(|f| std::fs::read(f).unwrap()).collect()
    }
}

fn available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("the SMTP tests must run in CI, but Python's aiosmtpd is not installed");
        }
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED SMTP test: install aiosmtpd (pip install aiosmtpd==1.4.6)"
        );
    }
    ok
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_server(port: u16, name: &str) -> SmtpServer {
    let maildir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("maildir-{name}-{}-{port}", std::process::id()));
    let _ = std::fs::remove_dir_all(&maildir);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_server.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args(["--port", &port.to_string(), "--maildir"])
        .arg(&maildir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the SMTP server did not start");
    SmtpServer { child, maildir }
}

fn notifier(port: u16) -> SmtpNotifier {
    let config = SmtpConfig {
        host: "127.0.0.1".into(),
        port,
        tls: TlsMode::None,
        credentials: None,
        timeout: Duration::from_secs(5),
    };
    SmtpNotifier::new(
        &config,
        Sender::new(
            "Health Connector <noreply@portal.example>",
            Branding::default(),
        )
        .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_notice_arrives_with_its_headers_both_parts_and_non_ascii_names() {
    if !available() {
        return;
    }
    let port = free_port();
    let server = start_server(port, "arrives");
    let m = message(
        7,
        notice(
            NoticeKind::PaymentConfirmation,
            Language::En,
            "José Núñez",
            "jose@example.com",
        ),
    );
    let id = notifier(port).deliver(m).await.unwrap();
    let got = server.messages();
    assert_eq!(got.len(), 1);
    check_email(&got[0], "Payment received — reference 7KQM-2XTH-9RB4");
    let parsed = mailparse::parse_mail(&got[0]).unwrap();
    assert_eq!(
        mailparse::MailHeaderMap::get_first_value(parsed.headers.as_slice(), "Message-ID")
            .as_deref(),
        Some(id.as_str())
    );
}

async fn outbox_with(notices: &[(NoticeKind, &str)]) -> Arc<InMemoryStore> {
    let store = Arc::new(InMemoryStore::new());
    let account = portal_core::testing::conformance::bare_account(3);
    let mut c = Changes::account(account.clone());
    for (i, (kind, to)) in notices.iter().enumerate() {
        let mut n = notice(*kind, Language::Es, "José Núñez", to);
        n.dedupe_key = format!("k{i}");
        c.outbox.push(n);
    }
    store.commit(c).await.unwrap();
    store
}

#[tokio::test]
async fn while_the_server_is_down_notices_wait_and_are_delivered_once_it_is_back() {
    if !available() {
        return;
    }
    let port = free_port();
    let store = outbox_with(&[(NoticeKind::DueDateReminder, "jose@example.com")]).await;
    let clock = Arc::new(FixedClock::at(
        NaiveDate::from_ymd_opt(2027, 3, 16).unwrap(),
    ));
    let worker = OutboxWorker::new(
        store.clone(),
        Arc::new(notifier(port)),
        clock.clone(),
        DeliveryPolicy::default(),
        "w",
    );
    let down = worker.run_once().await.unwrap();
    assert_eq!((down.sent, down.retried), (0, 1), "nothing listens yet");
    assert_eq!(
        store.pending_messages(10).await.unwrap().len(),
        1,
        "still queued, not lost"
    );
    let server = start_server(port, "down");
    clock.advance(chrono::Duration::minutes(2));
    let up = worker.run_once().await.unwrap();
    assert_eq!(up.sent, 1);
    worker.run_once().await.unwrap();
    assert_eq!(server.messages().len(), 1, "delivered exactly once");
    assert!(store.pending_messages(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_refused_recipient_is_parked_with_the_reason_and_blocks_nothing_else() {
    if !available() {
        return;
    }
    let port = free_port();
    let server = start_server(port, "refused");
    let store = outbox_with(&[
        (NoticeKind::PastDue, "nobody@invalid.example"),
        (NoticeKind::PastDue, "jose@example.com"),
    ])
    .await;
    let direct = notifier(port)
        .deliver(store.pending_messages(1).await.unwrap().remove(0))
        .await;
    assert!(
        matches!(&direct, Err(NotifyError::Permanent(e)) if e.contains("550")),
        "{direct:?}"
    );
    let clock = Arc::new(FixedClock::at(
        NaiveDate::from_ymd_opt(2027, 3, 16).unwrap(),
    ));
    let worker = OutboxWorker::new(
        store.clone(),
        Arc::new(notifier(port)),
        clock,
        DeliveryPolicy::default(),
        "w",
    );
    let r = worker.run_once().await.unwrap();
    assert_eq!((r.sent, r.parked), (1, 1));
    assert_eq!(server.messages().len(), 1);
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].notice.to.as_ref(), "nobody@invalid.example");
}
