//! The leak check: the real binaries under a steady stream of events keep flat memory.
//! `make test` runs a short version on the debug build; `make leak-check` runs 200,000
//! events on the release build (`SPOOL_LEAK_EVENTS`), and `make bench` reports the same
//! measurement as KiB per 100k events.

use spool_integration_tests::memory::{measure, Plan, SERVICES};

/// Events after the warm-up (`SPOOL_LEAK_EVENTS`, default 16,000).
fn measured_events() -> usize {
    std::env::var("SPOOL_LEAK_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16_000)
}

#[tokio::test]
async fn rss_of_every_service_stays_flat_under_steady_events() {
    let rounds = 4;
    let plan = Plan {
        per_round: measured_events() / rounds,
        rounds,
        concurrency: 16,
        failing_every: 20,
    };
    let report = measure(plan).await;
    eprintln!("{}", report.table());
    // The leaks this guards against kept 64 (ingest) and 100-200 (revalidator) bytes per
    // event. A quiet machine measures about 10 (ingest) and 22 (revalidator) here; a loaded
    // one (the fault tests' nats-servers beside it) up to 48 for the revalidator, which is
    // allocator noise over a short run, not growth: `make leak-check` measures at length.
    const LIMIT: f64 = 56.0;
    for (i, name) in SERVICES.iter().enumerate() {
        let per_event = report.bytes_per_event(i);
        assert!(
            per_event < LIMIT,
            "{name} keeps {per_event:.1} bytes per event (limit {LIMIT}):\n{}",
            report.table()
        );
    }
}
