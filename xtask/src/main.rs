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
         POST /api/v1/payments at 1, 8, 32 clients next to the fixed baseline
         (benches/pg-payment/payment2.sql) and pgbench of the portal's own SQL
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
    // Taken into a fresh directory first: a failed walk leaves the committed set alone, and
    // a page that is no longer visited leaves no stale picture behind.
    let fresh = root.join("target").join("screenshots");
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh).map_err(|e| format!("{}: {e}", fresh.display()))?;
    }
    std::fs::create_dir_all(&fresh).map_err(|e| format!("{}: {e}", fresh.display()))?;
    let fresh_str = fresh.to_str().ok_or("a UTF-8 path")?;
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
        &[("PORTAL_SCREENSHOTS", fresh_str), ("CI", "true")],
    )?;
    let names = png_names(&fresh)?;
    let unpaired = unpaired_member_pages(&names);
    if !unpaired.is_empty() {
        return Err(format!(
            "member pages without both languages: {}",
            unpaired.join(", ")
        ));
    }
    for old in png_names(&dir).unwrap_or_default() {
        let path = dir.join(format!("{old}.png"));
        std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for name in &names {
        let file = format!("{name}.png");
        std::fs::copy(fresh.join(&file), dir.join(&file)).map_err(|e| format!("{file}: {e}"))?;
    }
    println!("== {} screenshots saved in {}", names.len(), dir.display());
    Ok(())
}

/// The PNG files of a directory, by name without the extension, sorted.
fn png_names(dir: &std::path::Path) -> Result<Vec<String>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".png"))
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// Member pages (every page but the support agents') pictured in one language only.
fn unpaired_member_pages(names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| !n.starts_with("support-"))
        .filter(|n| {
            let twin = if let Some(page) = n.strip_suffix("-en") {
                format!("{page}-es")
            } else if let Some(page) = n.strip_suffix("-es") {
                format!("{page}-en")
            } else {
                return true;
            };
            !names.contains(&twin)
        })
        .cloned()
        .collect()
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

#[cfg(test)]
mod tests {
    use super::unpaired_member_pages;

    #[test]
    fn member_pages_need_both_languages() {
        let names: Vec<String> = ["home-en", "home-es", "pay-en", "support-search", "odd"]
            .map(String::from)
            .to_vec();
        assert_eq!(unpaired_member_pages(&names), ["pay-en", "odd"]);
    }
}
