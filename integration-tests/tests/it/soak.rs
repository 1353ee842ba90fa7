//! The soak, short: 40 s of steady webhooks, readers that drop their connections at
//! random, the delivery and the revalidator restarted every 10 s (a rolling restart, then a
//! crash, by turns). Every acknowledged event reaches every reader exactly once and in
//! order and its target at least once; the consumers go back to their number at start.
//! `make soak` runs ten minutes on the release build and asserts flat memory too
//! (`SPOOL_SOAK_SECS`, `SPOOL_SOAK_RESTART_SECS`, `SPOOL_SOAK_RATE`, `SPOOL_SOAK_READERS`).

use std::time::Duration;

use spool_integration_tests::soak::{run, Plan, PROCESSES};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test]
async fn every_event_reaches_every_reader_once_through_restarts_and_random_disconnects() {
    let secs = setting("SPOOL_SOAK_SECS", 40);
    let plan = Plan {
        duration: Duration::from_secs(secs),
        rate: setting("SPOOL_SOAK_RATE", 20) as u32,
        readers: setting("SPOOL_SOAK_READERS", 10) as usize,
        min_connection: Duration::from_millis(500),
        restart_every: Duration::from_secs(setting("SPOOL_SOAK_RESTART_SECS", 10)),
        sample_every: Duration::from_secs(if secs >= 300 { 10 } else { 2 }),
    };
    let report = run(plan).await;
    eprintln!("{}", report.markdown());
    if let Ok(path) = std::env::var("SPOOL_SOAK_REPORT") {
        std::fs::write(&path, spool_integration_tests::soak::document(&report))
            .expect("writing the soak report");
    }
    assert!(report.acked > 0);
    assert_eq!(report.lost, 0, "lost events\n{}", report.markdown());
    assert_eq!(
        report.duplicated,
        0,
        "duplicated events\n{}",
        report.markdown()
    );
    assert_eq!(
        report.not_revalidated,
        0,
        "events never revalidated\n{}",
        report.markdown()
    );
    assert!(report.restarts >= 2, "{}", report.markdown());
    assert!(report.consumers_at_end <= report.consumers_at_start);
    // Flat memory is asserted on the long run only: a minute of a debug build is warm-up.
    // nats-server is reported, not judged: it keeps what it stores (the streams' caches, and
    // each message id for the duplicate window), which grows with the events by design.
    if secs >= 300 {
        for (i, name) in PROCESSES.iter().enumerate().skip(1) {
            let growth = report.kib_per_minute(i);
            assert!(
                growth < 512.0,
                "{name} grows {growth:.0} KiB per minute\n{}",
                report.markdown()
            );
        }
    }
}
