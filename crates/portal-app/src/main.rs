//! `portal-app`: runs the portal (HTTP API and background worker) and its jobs.

use anyhow::Context;
use chrono::NaiveDate;
use clap::{Parser, Subcommand};
use portal_app::config::Config;
use portal_app::wiring::{self, DateClock, SystemClock};
use portal_app::{demo, redact, shutdown_signal, worker_loop, worker_pass};
use portal_core::ids::MessageId;
use portal_core::ports::Clock;
use portal_core::services::{JobProgress, JobReport, Portal};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

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
    /// Simulates months of billing and payments for a synthetic population (sandbox gateway,
    /// simulated clock, every job daily) and prints a month-by-month table; same seed, same
    /// table. Fails if anything does not reconcile to the cent.
    Simulate {
        /// Households.
        #[arg(long, default_value_t = 500)]
        members: u32,
        /// Calendar months from December 2026.
        #[arg(long, default_value_t = 12)]
        months: u32,
        /// Seed of the population and its behaviour.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Database to simulate in (default: a scratch SQLite file, removed afterwards).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Reads a password on standard input and prints its Argon2id hash (for `[[agents]]`).
    HashPassword,
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

/// mimalloc: a request allocates and frees many small values (an account's rows, JSON, HTTP
/// headers) across two worker threads, where glibc's allocator spent about a fifth of the
/// server's time consolidating and unlinking chunks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Log lines go to standard error: standard output carries a command's results (tables,
    // summaries, the demo banner), which scripts read.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never in a captured log.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        Command::Serve { no_worker } => {
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            let public_url = config.public_url.clone();
            let demo_mode = config.demo_mode();
            let running = portal_app::start(config, listener, !no_worker).await?;
            if demo_mode {
                println!(
                    "{}",
                    demo::banner(&public_url, running.app.sandbox_url.as_deref())
                );
            } else {
                println!("Health Connector Payment Portal is running at {public_url}");
            }
            shutdown_signal().await;
            tracing::info!("shutting down: finishing in-flight requests and jobs");
            running.shutdown().await
        }
        Command::Migrate => {
            wiring::Db::open(&config, wiring::JOB).await?;
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
        Command::HashPassword => {
            use portal_core::ports::PasswordHasher;
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the password")?;
            let password =
                portal_core::password::Password::new(line.trim_end_matches(['\r', '\n']), &[])?;
            let hash = portal_crypto::Argon2Hasher::new().hash(&password).await?;
            println!("{}", hash.0);
            Ok(())
        }
        Command::Simulate {
            members,
            months,
            seed,
            database_url,
        } => {
            let started = Instant::now();
            let report = portal_app::simulate::run(
                portal_app::simulate::Options {
                    members,
                    months,
                    seed,
                },
                database_url,
            )
            .await?;
            print!("{}", report.table());
            println!(
                "simulated {members} members over {months} months (seed {seed}) in {:.1}s",
                started.elapsed().as_secs_f64()
            );
            if !report.reconciles() {
                anyhow::bail!("the simulation does not reconcile");
            }
            Ok(())
        }
        Command::Demo => {
            // The demo's login is published: never seed it next to a real processor.
            if !config.demo_mode() {
                anyhow::bail!(
                    "`demo` seeds the published demo login, so it runs only in demo mode (no gateway_url configured)"
                );
            }
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
    f: impl for<'a> Fn(&'a Portal) -> JobFuture<'a>,
) -> anyhow::Result<()> {
    let clock = clock_for(config, date);
    let day = clock.today();
    let mut app = wiring::build_with(config, clock, false, wiring::JOB).await?;
    app.portal = app
        .portal
        .clone()
        .with_progress(progress_reporter(format!("{name} {day}")));
    let started = Instant::now();
    let mut report = f(&app.portal)
        .await
        .with_context(|| format!("{name} failed"))?;
    // Chunks other instances still hold: wait for them to finish, or for a crashed
    // instance's lease to end and work them here, so the run is whole when this exits.
    let mut told = false;
    while report.left.chunks > 0 && report.summary.failed == 0 {
        let left = report.left;
        if !told {
            let until = left
                .leased_until
                .map(|t| format!(" (leases end by {})", t.format("%H:%M:%S UTC")))
                .unwrap_or_default();
            let held = match left.chunks {
                1 => "1 chunk is".to_owned(),
                n => format!("{n} chunks are"),
            };
            eprintln!("{name} {day}: {held} held by another worker{until}; waiting for them");
            told = true;
        }
        let wait = left
            .leased_until
            .and_then(|t| (t - chrono::Utc::now()).to_std().ok())
            .unwrap_or_default()
            .clamp(Duration::from_millis(200), Duration::from_secs(5));
        tokio::time::sleep(wait).await;
        let more = f(&app.portal)
            .await
            .with_context(|| format!("{name} failed"))?;
        let left = more.left;
        report.add(more);
        report.left = left;
    }
    for (account, why) in report.failures.iter().take(20) {
        eprintln!("  failed: account {account}: {why}");
    }
    let s = report.summary;
    let peak = peak_rss_kib()
        .map(|k| format!(", peak memory {}.{} MiB", k / 1024, k % 1024 * 10 / 1024))
        .unwrap_or_default();
    println!(
        "{name} {day}: {} done, {} skipped, {} failed in {:.1}s{peak}",
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

/// Progress of a job run: a bar redrawn in place on a terminal, a line every few seconds
/// otherwise (logs, CI, cron mail).
fn progress_reporter(title: String) -> Arc<portal_core::services::ProgressFn> {
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let last_line = std::sync::Mutex::new(started);
    Arc::new(move |p: JobProgress| {
        let s = p.summary;
        let secs = started.elapsed().as_secs_f64();
        let counts = format!(
            "{} done, {} skipped, {} failed, {secs:.0}s",
            s.done, s.skipped, s.failed
        );
        let of = if p.chunks_planned > 0 {
            format!("{}/{}", p.chunks_done, p.chunks_planned)
        } else {
            p.chunks_done.to_string()
        };
        if tty {
            let width = 30u64;
            let filled = (p.chunks_done * width)
                .checked_div(p.chunks_planned)
                .unwrap_or(0)
                .min(width);
            let bar: String = (0..width)
                .map(|i| if i < filled { '#' } else { '.' })
                .collect();
            eprint!("\r{title} [{bar}] {of} chunks, {counts}\x1b[K");
            if p.chunks_planned > 0 && p.chunks_done >= p.chunks_planned {
                eprintln!();
            }
        } else {
            let mut last = last_line
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.elapsed() >= Duration::from_secs(5) {
                *last = Instant::now();
                eprintln!("{title}: {of} chunks, {counts}");
            }
        }
    })
}

/// This process's peak resident memory in KiB (Linux), for the job summary.
fn peak_rss_kib() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u32 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib)
}
