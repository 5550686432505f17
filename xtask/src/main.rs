//! Project tasks. `cargo xtask ci` runs exactly what CI runs.

use std::process::{Command, ExitCode};

mod tidy;

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  ci     formatting, lints, tidy checks and the whole test suite (what CI runs)
  tidy   architecture checks only (portal-core stays free of I/O crates)
  bench-gateway
         card payments through the gateway client against the sandbox, 1 and 16 callers
  openapi
         regenerate docs/openapi.json from the route table
  bench-api
         POST /api/v1/payments at 1, 8, 32 clients next to pgbench of the same SQL
         (needs PORTAL_TEST_DATABASE_URL and pgbench)
  screenshots
         walk the member pages in headless Chromium and save a PNG of each to docs/screenshots
         (needs chromium, chromium-driver and axe-core, as .ci/run installs them)
  bench-jobs
         the billing run for 1,000,000 members and the autopay run for 10,000 mandates on
         PostgreSQL, next to raw-insert and pgbench baselines, with peak RSS
         (needs PORTAL_TEST_DATABASE_URL and pgbench)";

fn main() -> ExitCode {
    let task = std::env::args().nth(1);
    let result = match task.as_deref() {
        Some("ci") => ci(),
        Some("tidy") => tidy::check(),
        Some("openapi") => step_with_env(
            "openapi",
            &[
                "test",
                "-p",
                "portal-http",
                "--lib",
                "the_committed_openapi_document_is_current",
            ],
            &[("UPDATE_OPENAPI", "1")],
        ),
        Some("bench-api") => step(
            "bench-api",
            &["bench", "-p", "portal-app", "--bench", "api"],
        ),
        Some("screenshots") => screenshots(),
        Some("bench-jobs") => step(
            "bench-jobs",
            &["bench", "-p", "portal-app", "--bench", "jobs"],
        ),
        Some("bench-gateway") => step(
            "bench-gateway",
            &["bench", "-p", "portal-stripe", "--bench", "gateway"],
        ),
        Some("-h" | "--help" | "help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown task `{other}`\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The variable that points the PostgreSQL tests at a server.
const PG_URL_VAR: &str = "PORTAL_TEST_DATABASE_URL";

fn ci() -> Result<(), String> {
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    match std::env::var(PG_URL_VAR) {
        Ok(_) => println!("== PostgreSQL tests will run ({PG_URL_VAR} is set)"),
        Err(_) if in_ci => return Err(format!("{PG_URL_VAR} must be set in CI")),
        Err(_) => println!("== PostgreSQL tests will be SKIPPED: set {PG_URL_VAR} (see README)"),
    }
    step("format", &["fmt", "--all", "--", "--check"])?;
    step(
        "lints",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    println!("== tidy");
    tidy::check()?;
    step(
        "tests",
        &["test", "--workspace", "--all-features", "--locked"],
    )?;
    println!("== ci passed");
    Ok(())
}

/// Runs the browser tests with screenshots on, into `docs/screenshots/`.
fn screenshots() -> Result<(), String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("xtask lives in the workspace")?;
    let dir = root.join("docs").join("screenshots");
    let dir = dir.to_str().ok_or("a UTF-8 path")?;
    step_with_env(
        "screenshots",
        &[
            "test",
            "-p",
            "portal-app",
            "--test",
            "it",
            "browser::",
            "--",
            "--nocapture",
        ],
        &[("PORTAL_SCREENSHOTS", dir), ("CI", "true")],
    )?;
    println!("== screenshots saved in {dir}");
    Ok(())
}

fn step(name: &str, args: &[&str]) -> Result<(), String> {
    step_with_env(name, args, &[])
}

fn step_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    println!("== {name}: cargo {}", args.join(" "));
    let status = Command::new(cargo())
        .args(args)
        .envs(env.iter().copied())
        .status()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{name} failed ({status})"))
    }
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}
