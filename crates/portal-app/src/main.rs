//! `portal-app`: runs the portal (HTTP API and background worker) and its jobs.

mod config;
mod demo;
mod wiring;

use anyhow::Context;
use chrono::NaiveDate;
use clap::{Parser, Subcommand};
use config::Config;
use portal_core::ids::MessageId;
use portal_core::ports::Clock;
use portal_core::services::{JobReport, Portal};
use portal_http::{AppState, HttpConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;
use wiring::{App, DateClock, SystemClock};

#[derive(Parser)]
#[command(
    name = "portal-app",
    about = "Health Connector Payment Portal",
    version
)]
struct Cli {
    /// A TOML configuration file (also PORTAL_CONFIG).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the HTTP API and the background worker.
    Serve {
        /// Do not run the background worker in this instance.
        #[arg(long)]
        no_worker: bool,
    },
    /// Applies database migrations.
    Migrate,
    /// Runs the background worker alone.
    Worker {
        /// One pass, then exit.
        #[arg(long)]
        once: bool,
    },
    /// Issues the bills due for a date.
    BillingRun {
        /// The date (YYYY-MM-DD); default today.
        #[arg(long)]
        date: Option<NaiveDate>,
    },
    /// Sends pre-debit notices and takes automatic payments due on a date.
    AutopayRun {
        /// The date (YYYY-MM-DD); default today.
        #[arg(long)]
        date: Option<NaiveDate>,
    },
    /// Sends due-date reminders for a date.
    RemindersRun {
        /// The date (YYYY-MM-DD); default today.
        #[arg(long)]
        date: Option<NaiveDate>,
    },
    /// Applies delinquency (notices, late fees, terminations) for a date.
    DelinquencyRun {
        /// The date (YYYY-MM-DD); default today.
        #[arg(long)]
        date: Option<NaiveDate>,
    },
    /// Email outbox operations.
    Outbox {
        #[command(subcommand)]
        action: OutboxAction,
    },
    /// Seeds the demo households and prints how to log in.
    Demo,
}

#[derive(Subcommand)]
enum OutboxAction {
    /// Delivers what is due now.
    Deliver,
    /// Lists parked messages.
    DeadLetters,
    /// Puts a parked message back in the queue.
    Retry {
        /// The message id (from dead-letters).
        id: uuid::Uuid,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .init();
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portal-app: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn clock_for(config: &Config, date: Option<NaiveDate>) -> Arc<dyn Clock> {
    match date {
        Some(d) => Arc::new(DateClock(d)),
        None => Arc::new(SystemClock(config.timezone)),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config)?;
    match cli.command {
        Command::Serve { no_worker } => serve(&config, !no_worker).await,
        Command::Migrate => {
            wiring::Db::open(&config).await?;
            println!("migrations applied to {}", redact(&config.database_url));
            Ok(())
        }
        Command::Worker { once } => {
            let app = wiring::build(&config, clock_for(&config, None), false).await?;
            if once {
                worker_pass(&app).await;
                return Ok(());
            }
            let (tx, rx) = watch::channel(false);
            tokio::spawn(async move {
                shutdown_signal().await;
                let _ = tx.send(true);
            });
            worker_loop(Arc::new(app), config.worker_interval_secs, rx).await;
            Ok(())
        }
        Command::BillingRun { date } => {
            job(&config, date, "billing-run", |p| {
                Box::pin(async move { p.run_billing().await })
            })
            .await
        }
        Command::AutopayRun { date } => {
            job(&config, date, "autopay-run", |p| {
                Box::pin(async move { p.run_autopay().await })
            })
            .await
        }
        Command::RemindersRun { date } => {
            job(&config, date, "reminders-run", |p| {
                Box::pin(async move { p.run_reminders().await })
            })
            .await
        }
        Command::DelinquencyRun { date } => {
            job(&config, date, "delinquency-run", |p| {
                Box::pin(async move { p.run_delinquency().await })
            })
            .await
        }
        Command::Outbox { action } => {
            let app = wiring::build(&config, clock_for(&config, None), true).await?;
            match action {
                OutboxAction::Deliver => {
                    let r = app.outbox.run_once().await?;
                    println!(
                        "outbox: {} sent, {} to retry, {} parked",
                        r.sent, r.retried, r.parked
                    );
                }
                OutboxAction::DeadLetters => {
                    let dead = app.db.outbox().dead_letters(1000).await?;
                    if dead.is_empty() {
                        println!("no dead letters");
                    }
                    for m in dead {
                        println!(
                            "{}  {:?}  to {}  attempts {}",
                            m.id, m.notice.kind, m.notice.to, m.attempts
                        );
                    }
                }
                OutboxAction::Retry { id } => {
                    if app
                        .db
                        .outbox()
                        .requeue(MessageId(id), chrono::Utc::now())
                        .await?
                    {
                        println!("{id} queued again");
                    } else {
                        anyhow::bail!("{id} is not a dead letter");
                    }
                }
            }
            Ok(())
        }
        Command::Demo => {
            let app = wiring::build(&config, clock_for(&config, None), true).await?;
            demo::seed(&app.portal).await?;
            println!("{}", demo::banner(&config.public_url, None));
            Ok(())
        }
    }
}

type JobFuture<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<JobReport, portal_core::services::ServiceError>>
            + Send
            + 'a,
    >,
>;

async fn job(
    config: &Config,
    date: Option<NaiveDate>,
    name: &str,
    f: impl for<'a> FnOnce(&'a Portal) -> JobFuture<'a>,
) -> anyhow::Result<()> {
    let clock = clock_for(config, date);
    let day = clock.today();
    let app = wiring::build(config, clock, false).await?;
    let started = Instant::now();
    let report = f(&app.portal)
        .await
        .with_context(|| format!("{name} failed"))?;
    for (account, why) in report.failures.iter().take(20) {
        eprintln!("  failed: account {account}: {why}");
    }
    let s = report.summary;
    println!(
        "{name} {day}: {} done, {} skipped, {} failed in {:.1}s",
        s.done,
        s.skipped,
        s.failed,
        started.elapsed().as_secs_f64()
    );
    if s.failed > 0 {
        anyhow::bail!(
            "{} items failed; they are retried on the next run",
            s.failed
        );
    }
    Ok(())
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!(
            "{}://***{}",
            url.get(..s).unwrap_or(""),
            url.get(at..).unwrap_or("")
        ),
        _ => url.to_owned(),
    }
}

async fn shutdown_signal() {
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
async fn worker_pass(app: &App) {
    let p = &app.portal;
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
    log("billing", p.run_billing().await);
    log("reminders", p.run_reminders().await);
    log("autopay", p.run_autopay().await);
    log("delinquency", p.run_delinquency().await);
    log("reconciliation", p.run_reconciliation().await);
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

async fn worker_loop(app: Arc<App>, every_secs: u64, mut stop: watch::Receiver<bool>) {
    loop {
        worker_pass(&app).await;
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(every_secs)) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn serve(config: &Config, with_worker: bool) -> anyhow::Result<()> {
    let app = Arc::new(wiring::build(config, clock_for(config, None), true).await?);
    let seeded = demo::seed(&app.portal).await?;
    if seeded {
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
            ..HttpConfig::default()
        },
    );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let (tx, rx) = watch::channel(false);
    let worker = with_worker.then(|| {
        tokio::spawn(worker_loop(
            app.clone(),
            config.worker_interval_secs,
            rx.clone(),
        ))
    });
    println!(
        "{}",
        demo::banner(&config.public_url, app.sandbox_url.as_deref())
    );
    let mut stop = rx;
    let server = portal_http::serve(listener, portal_http::router(state), async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests and jobs");
        let _ = tx.send(true);
    });
    server.await.context("the HTTP server failed")?;
    if let Some(w) = worker {
        let _ = w.await;
    }
    Ok(())
}
