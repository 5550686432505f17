use crate::samples::{message, notice};
use mailparse::MailHeaderMap;
use portal_core::identity::Language;
use portal_core::notice::NoticeKind;
use portal_core::ports::Notifier;
use portal_email::render::Branding;
use portal_email::{FileOutbox, Sender};

/// Checks an RFC 5322 message: headers, both parts, and the non-ASCII name decoded.
pub fn check_email(raw: &[u8], expected_subject: &str) {
    let mail = mailparse::parse_mail(raw).unwrap();
    let h = &mail.headers;
    assert_eq!(
        h.get_first_value("Subject").as_deref(),
        Some(expected_subject)
    );
    let to = h.get_first_value("To").unwrap();
    assert!(
        to.contains("José Núñez") && to.contains("<jose@example.com>"),
        "{to}"
    );
    assert!(
        h.get_first_value("From")
            .unwrap()
            .contains("noreply@portal.example")
    );
    assert!(
        h.get_first_value("Message-ID")
            .unwrap()
            .ends_with("@portal.example>")
    );
    assert!(h.get_first_value("Date").is_some());
    // Raw headers are 7-bit: the name and subject are encoded words.
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert!(raw[..head_end].is_ascii(), "headers must be ASCII-encoded");
    assert_eq!(mail.ctype.mimetype, "multipart/alternative");
    let kinds: Vec<String> = mail
        .subparts
        .iter()
        .map(|p| p.ctype.mimetype.clone())
        .collect();
    assert_eq!(kinds, ["text/plain", "text/html"]);
    let text = mail.subparts[0].get_body().unwrap();
    let html = mail.subparts[1].get_body().unwrap();
    assert!(
        text.contains("Hola, José Núñez:") || text.contains("Hello José Núñez,"),
        "{text}"
    );
    assert!(html.contains("<!DOCTYPE html>") && html.contains("José Núñez"));
}

#[tokio::test]
async fn the_file_outbox_writes_each_message_once_as_an_eml_file() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("outbox-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sender = Sender::new(
        "Health Connector <noreply@portal.example>",
        Branding::default(),
    )
    .unwrap();
    let outbox = FileOutbox::new(&dir, sender);
    let m = message(
        42,
        notice(
            NoticeKind::PaymentConfirmation,
            Language::Es,
            "José Núñez",
            "jose@example.com",
        ),
    );
    let id1 = outbox.deliver(m.clone()).await.unwrap();
    let id2 = outbox.deliver(m).await.unwrap();
    assert_eq!(id1, id2, "the same message keeps its Message-ID");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].extension().unwrap(), "eml");
    check_email(
        &std::fs::read(&files[0]).unwrap(),
        "Pago recibido — referencia 7KQM-2XTH-9RB4",
    );
}
