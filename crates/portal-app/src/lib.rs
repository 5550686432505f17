//! The portal application: configuration, wiring of adapters into the core, the HTTP server,
//! the background worker and the jobs. `main.rs` is only the command line over this.

pub mod config;
pub mod demo;
pub mod simulate;
pub mod wiring;

use anyhow::Context;
use config::Config;
use portal_core::services::{JobReport, Portal};
use portal_http::{AppState, HttpConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use wiring::{App, SystemClock};

/// A database URL with any credentials masked.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!(
            "{}://***{}",
            url.get(..s).unwrap_or(""),
            url.get(at..).unwrap_or("")
        ),
        _ => url.to_owned(),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// One pass of every job for today, then the outbox.
pub async fn worker_pass(app: &App) {
    pass(app, &app.portal, &|| false).await;
}

/// [`worker_pass`] with `portal` for the jobs; once `stopping` answers true the pass ends
/// after the chunk in hand (a graceful shutdown waits for one chunk, not a whole pass).
async fn pass(app: &App, p: &Portal, stopping: &(dyn Fn() -> bool + Sync)) {
    let log = |name: &str, r: Result<JobReport, portal_core::services::ServiceError>| match r {
        Ok(r) if r.summary.done + r.summary.failed > 0 => {
            tracing::info!(
                job = name,
                done = r.summary.done,
                skipped = r.summary.skipped,
                failed = r.summary.failed,
                "job pass"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::error!(job = name, error = %e, "job pass failed"),
    };
    // Billing, reminders, autopay, delinquency and reconciliation, once a day per account;
    // reconciliation again on every pass for payments whose outcome is still unknown.
    log("daily", p.run_daily().await);
    if stopping() {
        return;
    }
    log("reconciliation", p.run_reconciliation().await);
    if stopping() {
        return;
    }
    match app.outbox.run_once().await {
        Ok(r) if r.sent + r.retried + r.parked > 0 => tracing::info!(
            sent = r.sent,
            retried = r.retried,
            parked = r.parked,
            "outbox pass"
        ),
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "outbox pass failed"),
    }
}

/// Runs passes every `every_secs` until `stop` turns true.
pub async fn worker_loop(app: Arc<App>, every_secs: u64, mut stop: watch::Receiver<bool>) {
    let stopping = {
        let stop = stop.clone();
        move || *stop.borrow()
    };
    let portal = app.portal.clone().with_stop(Arc::new(stopping.clone()));
    loop {
        pass(&app, &portal, &stopping).await;
        if stopping() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(every_secs)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A running portal.
#[derive(Debug)]
pub struct Running {
    /// Where the HTTP server listens.
    pub addr: SocketAddr,
    /// The application (for tests and operators).
    pub app: Arc<App>,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    worker: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting requests, finishes in-flight requests and the chunk of accounts the
    /// worker holds (its pass stops there; the next start carries on).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.server
            .await
            .context("the HTTP server task failed")?
            .context("the HTTP server failed")?;
        if let Some(w) = self.worker {
            let _ = w.await;
        }
        Ok(())
    }
}

/// Starts the portal on `listener` exactly as `portal-app serve` does: opens and migrates the
/// database, starts the sandbox gateway when no gateway is configured, seeds the demo
/// households, serves HTTP, and runs the worker if asked.
pub async fn start(
    config: Config,
    listener: tokio::net::TcpListener,
    with_worker: bool,
) -> anyhow::Result<Running> {
    if config.test_clock {
        let file = config
            .database_url
            .starts_with("sqlite://")
            .then(|| config.data_dir.join("test-clock-days"));
        let clock = Arc::new(wiring::OffsetClock::new(config.timezone, file));
        return start_with_clock(config, listener, with_worker, clock.clone(), Some(clock)).await;
    }
    let clock = Arc::new(SystemClock(config.timezone));
    start_with_clock(config, listener, with_worker, clock, None).await
}

/// [`start`] with the portal's clock given: tests move it to put households in the states
/// that only time brings (a premium gone past due). `test_clock`, when given, is what
/// `/api/v1/test-clock` moves.
pub async fn start_with_clock(
    mut config: Config,
    listener: tokio::net::TcpListener,
    with_worker: bool,
    clock: Arc<dyn portal_core::ports::Clock>,
    test_clock: Option<Arc<dyn portal_core::ports::ClockControl>>,
) -> anyhow::Result<Running> {
    config.listen = listener
        .local_addr()
        .context("the listener has no address")?;
    let mut app = wiring::build(&config, clock, true).await?;
    if let Some(control) = test_clock {
        app.portal = app.portal.with_test_clock(control);
    }
    let app = Arc::new(app);
    if config.demo_mode() && demo::seed(&app.portal).await? {
        tracing::info!("seeded the demo households");
    }
    let gateway = app.gateway.clone();
    let webhooks: portal_http::WebhookVerifier =
        Arc::new(move |sig, body| gateway.verify_webhook(sig, body).map_err(|e| e.to_string()));
    let db = app.db.clone();
    let ready: portal_http::ReadyCheck = Arc::new(move || {
        let db = db.clone();
        Box::pin(async move { db.ping().await })
    });
    let client_config = serde_json::json!({
        "gateway_url": app.sandbox_url.clone().or_else(|| config.gateway_url.clone()),
        "publishable_key": config.gateway_publishable_key,
    });
    let state = AppState::new(
        app.portal.clone(),
        webhooks,
        ready,
        HttpConfig {
            secure_cookies: config.secure_cookies,
            client_config,
            auth_attempts_per_minute: config.rate_limit_per_minute,
            ..HttpConfig::default()
        },
    );
    let (stop, rx) = watch::channel(false);
    let worker = with_worker.then(|| {
        tokio::spawn(worker_loop(
            app.clone(),
            config.worker_interval_secs,
            rx.clone(),
        ))
    });
    let mut server_stop = rx;
    let server = tokio::spawn(portal_http::serve(
        listener,
        portal_http::router(state),
        async move {
            let _ = server_stop.wait_for(|s| *s).await;
        },
    ));
    Ok(Running {
        addr: config.listen,
        app,
        stop,
        server,
        worker,
    })
}
