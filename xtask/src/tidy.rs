//! Architecture checks that keep the hexagon honest.

use std::process::Command;

/// Crates that do I/O or bring a runtime; the core must depend on none of them.
const FORBIDDEN_IN_CORE: &[&str] = &[
    "sqlx",
    "reqwest",
    "hyper",
    "axum",
    "tower",
    "lettre",
    "tokio",
    "async-std",
    "mio",
    "rand",
    "getrandom",
];

/// Fails if `portal-core`'s normal dependency tree contains an I/O crate.
pub fn check() -> Result<(), String> {
    let names = core_dependencies()?;
    let found = forbidden(&names);
    if found.is_empty() {
        println!(
            "portal-core depends on {} crates, none of them I/O crates",
            names.len()
        );
        Ok(())
    } else {
        Err(format!(
            "portal-core must do no I/O but depends on: {}",
            found.join(", ")
        ))
    }
}

fn core_dependencies() -> Result<Vec<String>, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--package",
            "portal-core",
            "--edges",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
            "--all-features",
            "--locked",
        ])
        .output()
        .map_err(|e| format!("could not run cargo tree: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

fn forbidden(names: &[String]) -> Vec<String> {
    let mut found: Vec<String> = names
        .iter()
        .filter(|n| FORBIDDEN_IN_CORE.contains(&n.as_str()))
        .cloned()
        .collect();
    found.sort();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portal_core_has_no_io_dependency() {
        let names = core_dependencies().unwrap();
        assert!(
            names.iter().any(|n| n == "portal-core"),
            "cargo tree output not understood: {names:?}"
        );
        assert!(
            names.iter().any(|n| n == "rust_decimal"),
            "expected the core's own dependencies"
        );
        assert_eq!(forbidden(&names), Vec::<String>::new());
    }

    #[test]
    fn the_check_catches_a_forbidden_crate() {
        let names = vec![
            "portal-core".to_owned(),
            "sqlx".to_owned(),
            "tokio".to_owned(),
        ];
        assert_eq!(forbidden(&names), vec!["sqlx", "tokio"]);
    }
}
