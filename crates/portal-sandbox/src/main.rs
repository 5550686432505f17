//! `portal-sandbox`: runs the sandbox gateway.
//!
//! Configuration from the environment: `SANDBOX_ADDR` (default 127.0.0.1:12111),
//! `SANDBOX_SECRET_KEY`, `SANDBOX_PUBLISHABLE_KEY`, `SANDBOX_WEBHOOK_URL`,
//! `SANDBOX_WEBHOOK_SECRET`, `SANDBOX_ALLOWED_ORIGINS` (comma-separated).

use portal_sandbox::{SandboxConfig, start};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let defaults = SandboxConfig::default();
    let config = SandboxConfig {
        secret_key: env("SANDBOX_SECRET_KEY").unwrap_or(defaults.secret_key.clone()),
        publishable_key: env("SANDBOX_PUBLISHABLE_KEY").unwrap_or(defaults.publishable_key.clone()),
        webhook_url: env("SANDBOX_WEBHOOK_URL"),
        webhook_secret: env("SANDBOX_WEBHOOK_SECRET").unwrap_or(defaults.webhook_secret.clone()),
        allowed_origins: env("SANDBOX_ALLOWED_ORIGINS")
            .map(|o| {
                o.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        ..defaults
    };
    let addr = env("SANDBOX_ADDR").unwrap_or_else(|| "127.0.0.1:12111".into());
    let Ok(addr) = addr.parse() else {
        eprintln!("portal-sandbox: SANDBOX_ADDR must be host:port, got {addr}");
        return std::process::ExitCode::FAILURE;
    };
    match start(config, addr).await {
        Ok(handle) => {
            println!("sandbox gateway listening on {}", handle.base_url());
            let _ = tokio::signal::ctrl_c().await;
            handle.stop();
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portal-sandbox: cannot listen on {addr}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
