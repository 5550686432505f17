//! Project tasks. `cargo xtask ci` runs exactly what CI runs.

use std::process::{Command, ExitCode};

mod tidy;

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  ci     formatting, lints, tidy checks and the whole test suite (what CI runs)
  tidy   architecture checks only (portal-core stays free of I/O crates)";

fn main() -> ExitCode {
    let task = std::env::args().nth(1);
    let result = match task.as_deref() {
        Some("ci") => ci(),
        Some("tidy") => tidy::check(),
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

fn ci() -> Result<(), String> {
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

fn step(name: &str, args: &[&str]) -> Result<(), String> {
    println!("== {name}: cargo {}", args.join(" "));
    let status = Command::new(cargo())
        .args(args)
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
