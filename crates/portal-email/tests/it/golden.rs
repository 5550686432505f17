//! Every notice kind in both languages, plain text and HTML, against committed golden files.
//! `UPDATE_GOLDEN=1 cargo test -p portal-email` rewrites them after an intended change.

use crate::samples::notice;
use portal_core::identity::Language;
use portal_core::notice::NoticeKind;
use portal_email::render::{Branding, money, render};
use std::path::PathBuf;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn name(kind: NoticeKind) -> String {
    serde_json::to_value(kind)
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn every_notice_has_both_parts_in_both_languages_matching_the_golden_files() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let branding = Branding::default();
    let mut mismatches = Vec::new();
    for kind in NoticeKind::ALL {
        let mut subjects = Vec::new();
        for lang in [Language::En, Language::Es] {
            let r = render(
                &notice(kind, lang, "María José Núñez", "maria@example.com"),
                &branding,
            );
            assert!(
                !r.subject.trim().is_empty(),
                "{kind:?} {lang:?}: empty subject"
            );
            assert!(
                r.text.len() > 80 && r.html.len() > 300,
                "{kind:?} {lang:?}: a part is missing"
            );
            assert!(r.html.contains(&format!("lang=\"{}\"", lang.code())));
            assert!(
                r.text.contains(&branding.support_phone)
                    && r.html.contains(&branding.support_phone),
                "{kind:?}: how to reach support"
            );
            subjects.push(r.subject.clone());
            for (ext, content) in [
                ("txt", format!("Subject: {}\n\n{}", r.subject, r.text)),
                ("html", r.html.clone()),
            ] {
                let path = golden_dir().join(format!("{}.{}.{ext}", name(kind), lang.code()));
                if update {
                    std::fs::write(&path, &content).unwrap();
                } else {
                    match std::fs::read_to_string(&path) {
                        Ok(expected) if expected == content => {}
                        Ok(_) => mismatches.push(format!("{} differs", path.display())),
                        Err(_) => mismatches.push(format!("{} is missing", path.display())),
                    }
                }
            }
        }
        assert_ne!(
            subjects[0], subjects[1],
            "{kind:?}: the Spanish subject is not translated"
        );
    }
    assert!(
        mismatches.is_empty(),
        "golden files out of date (UPDATE_GOLDEN=1 to accept):\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn notices_carry_what_the_member_needs() {
    let b = Branding::default();
    let r = render(
        &notice(
            NoticeKind::PaymentConfirmation,
            Language::En,
            "Ana",
            "ana@example.com",
        ),
        &b,
    );
    for needed in [
        "7KQM-2XTH-9RB4",
        "$1,234.56",
        "Visa •••• 4242",
        "February 20, 2027",
    ] {
        assert!(
            r.text.contains(needed) && r.html.contains(needed),
            "{needed}"
        );
    }
    let r = render(
        &notice(
            NoticeKind::PaymentFailed,
            Language::Es,
            "Ana",
            "ana@example.com",
        ),
        &b,
    );
    assert!(r.text.contains("No había fondos suficientes"), "{}", r.text);
    let r = render(
        &notice(NoticeKind::PastDue, Language::Es, "Ana", "ana@example.com"),
        &b,
    );
    assert!(
        r.text.contains("30 de abril de 2027"),
        "grace end date: {}",
        r.text
    );
    let r = render(
        &notice(
            NoticeKind::SecondTerminationWarning,
            Language::En,
            "Ana",
            "ana@example.com",
        ),
        &b,
    );
    assert!(r.subject.starts_with("Final notice"));
    assert_eq!(
        money(portal_core::Money::from_cents(123_456_789)),
        "$1,234,567.89"
    );
}

#[test]
fn nothing_secret_appears_and_html_is_escaped() {
    let b = Branding::default();
    for kind in NoticeKind::ALL {
        for lang in [Language::En, Language::Es] {
            let r = render(
                &notice(kind, lang, "<script>alert(1)</script>", "x@example.com"),
                &b,
            );
            assert!(!r.html.contains("<script>"), "{kind:?}: unescaped name");
            // No long digit runs: no SSN, card or bank account number.
            for part in [&r.text, &r.html] {
                let mut run = 0;
                for c in part.chars() {
                    run = if c.is_ascii_digit() { run + 1 } else { 0 };
                    assert!(run < 9, "{kind:?} {lang:?}: a long number appears");
                }
            }
        }
    }
}
