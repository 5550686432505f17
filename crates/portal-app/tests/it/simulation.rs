//! `portal-app simulate` as a test: a year of 500 households reconciles to the cent, and the
//! same seed gives the same table on SQLite and on PostgreSQL.

use portal_app::simulate::{Options, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_year_of_five_hundred_households_reconciles_to_the_cent() {
    let report = run(
        Options {
            members: 500,
            months: 12,
            seed: 2027,
        },
        None,
    )
    .await
    .unwrap();
    let table = report.table();
    eprintln!("{table}");
    assert!(report.reconciles(), "{table}");
    assert_eq!(report.rows.len(), 12);
    let sum =
        |f: fn(&portal_app::simulate::MonthRow) -> u64| report.rows.iter().map(f).sum::<u64>();
    // The population does everything the table reports, so every column is exercised.
    let cancelled = sum(|r| r.cancelled_binders);
    assert!(cancelled > 0, "{table}");
    // A household whose binder was never paid gets one bill, then nothing more and owes
    // nothing; every other one is billed every month.
    assert!(
        sum(|r| r.bills_issued) >= cancelled + (500 - cancelled) * 11,
        "{table}"
    );
    assert_eq!(
        report.owed_by_cancelled,
        portal_core::Money::ZERO,
        "{table}"
    );
    assert!(sum(|r| r.paid_on_time) > 0, "{table}");
    assert!(sum(|r| r.paid_in_grace) > 0, "{table}");
    assert!(sum(|r| r.autopay_ok) > 0, "{table}");
    assert!(sum(|r| r.autopay_failed) > 0, "{table}");
    assert!(sum(|r| r.returns) > 0, "{table}");
    assert!(sum(|r| r.terminations) > 0, "{table}");
    assert!(report.outstanding.is_positive(), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_the_same_table_on_either_store() {
    let Some(url) = crate::fresh_postgres().await else {
        return;
    };
    let opts = Options {
        members: 40,
        months: 3,
        seed: 9,
    };
    let on_sqlite = run(opts, None).await.unwrap();
    let on_postgres = run(opts, Some(url)).await.unwrap();
    assert!(on_sqlite.reconciles(), "{}", on_sqlite.table());
    assert_eq!(on_sqlite.table(), on_postgres.table());
    let other = run(Options { seed: 10, ..opts }, None).await.unwrap();
    assert_ne!(
        other.table(),
        on_sqlite.table(),
        "another seed, another population"
    );
}
