//! The `portal-app` command as an operator runs it: results on standard output, log lines on
//! standard error, and `demo` (which seeds the published demo login) only in demo mode.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static RUNS: AtomicU32 = AtomicU32::new(0);

/// A scratch directory with a SQLite database path in it.
fn scratch() -> (PathBuf, String) {
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("portal.db").display());
    (dir, url)
}

/// `portal-app demo` with only the variables given (none of the caller's `PORTAL_*`).
fn demo(dir: &PathBuf, url: &str, vars: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_portal-app"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PORTAL_")) {
        c.env_remove(k);
    }
    c.arg("demo")
        .env("PORTAL_DATABASE_URL", url)
        .env("PORTAL_DATA_DIR", dir)
        .env("PORTAL_EMAIL_MODE", "file")
        .env("PORTAL_OUTBOX_DIR", dir.join("outbox"));
    for (k, v) in vars {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn log_lines_go_to_standard_error_and_results_to_standard_output() {
    let (dir, url) = scratch();
    let out = demo(&dir, &url, &[("RUST_LOG", "debug")]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("demo"), "the banner: {stdout}");
    let is_log = |l: &&str| {
        [" DEBUG ", " INFO ", " WARN ", " ERROR "]
            .iter()
            .any(|lv| l.contains(lv))
    };
    assert!(
        stderr.lines().any(|l| is_log(&l)),
        "at debug level the run logs: {stderr}"
    );
    let leaked: Vec<&str> = stdout.lines().filter(is_log).collect();
    assert!(
        leaked.is_empty(),
        "log lines on standard output: {leaked:?}"
    );
}

#[test]
fn demo_refuses_a_production_configuration() {
    let (dir, url) = scratch();
    let out = demo(
        &dir,
        &url,
        &[
            ("PORTAL_GATEWAY_URL", "https://api.processor.example"),
            ("PORTAL_GATEWAY_SECRET_KEY", "sk_live_not_used"),
            ("PORTAL_WEBHOOK_SECRET", "whsec_not_used"),
            (
                "PORTAL_SEALING_KEY",
                "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
            ),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused");
    assert!(stderr.contains("demo mode"), "says why: {stderr}");
    assert!(
        !dir.join("portal.db").exists(),
        "nothing was written: no database was even opened"
    );
}
