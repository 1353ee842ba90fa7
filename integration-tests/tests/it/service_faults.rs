//! Service faults (issue #16): each service's real binary, and NATS itself, killed with
//! SIGKILL in the middle of its work and started again, while a CMS keeps writing webhooks
//! (retrying `5xx` and unanswered requests with the same id) and readers follow. Afterwards
//! every webhook answered `2xx` is stored exactly once, delivered to every reader exactly
//! once and in order, and revalidated at least once.
//!
//! (SIGTERM is tested in sigterm.rs, and a revalidator killed during its one call in
//! revalidator_crash.rs.) Run with `-- --nocapture` for the figures (`FAULTS | ...` lines,
//! as in results/faults.md).

use std::time::{Duration, Instant};

use spool_integration_tests::faults::{self, BaseUrl, Delivered, Follower, Writer};
use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::process::ServiceProcess;
use spool_integration_tests::receiver::{Reply, TestReceiver};
use spool_integration_tests::services::{
    delivery_config, ingest_config, revalidator_config, TestService,
};
use spool_integration_tests::{
    eventually_metric, site_json, write_sites_file, LOOPBACK_TARGET_NETWORKS,
};

const SITE: &str = "acme";
const TOKEN: &str = "rk_test_acme_0123456789";
/// Longest a step may take.
const STEP: Duration = Duration::from_secs(60);

fn log(started: Instant, what: &str) {
    println!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64());
}

/// The environment of a service binary: its NATS, the sites file, loopback targets.
fn env(nats: &NatsServer, sites: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("NATS_URL", nats.url()),
        ("SPOOL_SITES_FILE", sites.display().to_string()),
        ("RUST_LOG", "warn".into()),
        (
            "SPOOL_ALLOWED_TARGET_NETWORKS",
            LOOPBACK_TARGET_NETWORKS.to_string(),
        ),
    ]
}

/// Asserts what every fault test asserts of its tally.
fn assert_nothing_lost_or_duplicated(
    written: &faults::Written,
    stored: faults::Stored,
    readers: &[(String, Delivered)],
) {
    assert_eq!(
        written.acked().len(),
        written.written(),
        "a webhook was never acknowledged"
    );
    assert_eq!(stored.lost, 0, "{stored:?}");
    assert_eq!(stored.duplicated, 0, "{stored:?}");
    assert_eq!(stored.unacknowledged, 0, "{stored:?}");
    for (name, d) in readers {
        assert_eq!(d.lost, 0, "{name}: {d:?}");
        assert_eq!(d.duplicated, 0, "{name}: {d:?}");
        assert_eq!(d.out_of_order, 0, "{name}: {d:?}");
        assert_eq!(d.wrong_seq, 0, "{name}: {d:?}");
    }
}

/// Stops the followers and compares what each got with `acked`.
async fn tally(
    readers: Vec<Follower>,
    acked: &std::collections::BTreeMap<String, u64>,
) -> Vec<(String, Delivered)> {
    let mut out = Vec::new();
    for reader in readers {
        let followed = reader.stop().await;
        out.push((
            format!("{} (reconnects {})", followed.kind, followed.reconnects),
            faults::delivered(&followed.got, acked),
        ));
    }
    out
}

/// The ingest killed while 16 webhooks at a time are in flight — some received and not yet
/// written, some written and not yet answered — then started again: the CMS's retries (same
/// ids) store the first kind once and are told `duplicate` with the original seq for the
/// second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_kill_9_under_concurrent_webhooks_stores_each_exactly_once() {
    let started = Instant::now();
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sites = write_sites_file(dir.path(), &[site_json(SITE)]);
    let env = env(&nats, &sites);
    let mut ingest = ServiceProcess::start("spool-ingest", &env).await;
    let delivery = TestService::start_delivery(delivery_config(&nats.url())).await;

    let http = reqwest::Client::new();
    let readers = vec![Follower::sse(
        &http,
        &BaseUrl::new(&delivery.base_url),
        SITE,
        TOKEN,
    )];
    let base = BaseUrl::new(&ingest.base_url);
    let writer = Writer::start(&http, &base, SITE, "i", 16, Duration::ZERO);
    writer.wait_progress(300, STEP).await;
    let exit = ingest.kill9().await;
    assert!(!exit.success(), "killed: {exit}");
    log(
        started,
        &format!("SIGKILL ingest at {} acknowledged", writer.acked()),
    );
    writer.wait_failures(16, STEP).await;
    let ingest = ServiceProcess::start("spool-ingest", &env).await;
    base.set(&ingest.base_url);
    log(started, "ingest restarted");
    writer.wait_progress(300, STEP).await;

    let written = writer.stop().await;
    let acked = written.acked();
    let last_seq = acked.values().copied().max().unwrap();
    faults::wait_followers(&readers, last_seq, STEP).await;
    let stored = faults::stored(&faults::stored_events(&nats.url(), SITE).await, &acked);
    let delivered = tally(readers, &acked).await;
    faults::report(
        "ingest SIGKILL with 16 webhooks in flight, restart",
        &written,
        stored,
        &delivered,
    );
    log(started, "done");
    assert_nothing_lost_or_duplicated(&written, stored, &delivered);
}

/// The delivery killed with 1,000 SSE streams open while webhooks keep coming; the readers
/// resume on a new process with their `Last-Event-ID`: nothing missed, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_kill_9_with_1000_open_streams_resumes_each_from_its_last_event_id() {
    const STREAMS: usize = 1000;
    let started = Instant::now();
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sites = write_sites_file(dir.path(), &[site_json(SITE)]);
    let mut env = env(&nats, &sites);
    // The `retry:` the readers wait before they reconnect (3 s by default).
    env.push(("SPOOL_SSE_RETRY", "500ms".into()));
    let ingest = TestService::start(ingest_config(&nats.url())).await;
    let mut delivery = ServiceProcess::start("spool-delivery", &env).await;

    let http = reqwest::Client::new();
    let base = BaseUrl::new(&delivery.base_url);
    let mut readers: Vec<Follower> = (0..STREAMS)
        .map(|_| Follower::sse(&http, &base, SITE, TOKEN))
        .collect();
    readers.push(Follower::poll(&http, &base, SITE, TOKEN));
    let open = format!("spool_delivery_open_connections{{kind=\"sse\"}} {STREAMS}");
    eventually_metric(&http, &delivery.base_url, &open, STEP).await;
    log(started, &format!("{STREAMS} streams open"));

    let writer = Writer::start(
        &http,
        &BaseUrl::new(&ingest.base_url),
        SITE,
        "d",
        1,
        Duration::from_millis(10),
    );
    writer.wait_progress(30, STEP).await;
    let exit = delivery.kill9().await;
    assert!(!exit.success(), "killed: {exit}");
    log(
        started,
        &format!("SIGKILL delivery at {} acknowledged", writer.acked()),
    );
    // Events the readers miss while no delivery runs.
    writer.wait_progress(30, STEP).await;
    let delivery = ServiceProcess::start("spool-delivery", &env).await;
    base.set(&delivery.base_url);
    log(started, "delivery restarted");
    writer.wait_progress(30, STEP).await;

    let written = writer.stop().await;
    let acked = written.acked();
    let last_seq = acked.values().copied().max().unwrap();
    faults::wait_followers(&readers, last_seq, STEP).await;
    log(started, "every reader caught up");
    let stored = faults::stored(&faults::stored_events(&nats.url(), SITE).await, &acked);
    let delivered = tally(readers, &acked).await;
    // One line for the SSE streams (the worst of them), one for the poll.
    let sse: Vec<&Delivered> = delivered
        .iter()
        .filter(|(n, _)| n.starts_with("sse"))
        .map(|(_, d)| d)
        .collect();
    let worst = Delivered {
        delivered: sse.iter().map(|d| d.delivered).min().unwrap(),
        lost: sse.iter().map(|d| d.lost).max().unwrap(),
        duplicated: sse.iter().map(|d| d.duplicated).max().unwrap(),
        out_of_order: sse.iter().map(|d| d.out_of_order).max().unwrap(),
        wrong_seq: sse.iter().map(|d| d.wrong_seq).max().unwrap(),
    };
    let reconnects: usize = delivered
        .iter()
        .filter_map(|(n, _)| n.strip_prefix("sse (reconnects ")?.strip_suffix(')'))
        .map(|n| n.parse::<usize>().unwrap())
        .sum();
    let summary = vec![
        (
            format!("{STREAMS} sse streams (the worst; reconnects {reconnects} in all)"),
            worst,
        ),
        delivered.last().unwrap().clone(),
    ];
    faults::report(
        &format!("delivery SIGKILL with {STREAMS} SSE streams and a long-poll open, restart"),
        &written,
        stored,
        &summary,
    );
    log(started, "done");
    assert_nothing_lost_or_duplicated(&written, stored, &delivered);
}

/// The revalidator killed while calls are in flight (the target takes 200 ms to answer) and
/// events keep coming; after a restart the target is called for every event at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidator_kill_9_mid_calls_then_every_event_is_revalidated() {
    let started = Instant::now();
    let nats = NatsServer::start().await;
    let target = TestReceiver::start([]).await;
    target.otherwise(Reply::Slow(Duration::from_millis(200)));
    let mut site = site_json(SITE);
    site["revalidate"] = serde_json::json!([target.target(None)]);
    let dir = tempfile::tempdir().unwrap();
    let sites = write_sites_file(dir.path(), &[site]);
    let mut env = env(&nats, &sites);
    env.extend([
        ("SPOOL_ACK_WAIT", "2s".to_string()),
        ("SPOOL_CALL_TIMEOUT", "5s".to_string()),
        ("SPOOL_RETRY_SCHEDULE", "100ms".to_string()),
        ("SPOOL_COALESCE_WINDOW", "20ms".to_string()),
    ]);
    let mut revalidator = ServiceProcess::start("spool-revalidator", &env).await;
    let ingest = TestService::start(ingest_config(&nats.url())).await;

    let http = reqwest::Client::new();
    let writer = Writer::start(
        &http,
        &BaseUrl::new(&ingest.base_url),
        SITE,
        "r",
        2,
        Duration::from_millis(10),
    );
    target.wait_calls(10, STEP).await;
    let exit = revalidator.kill9().await;
    assert!(!exit.success(), "killed: {exit}");
    log(
        started,
        &format!(
            "SIGKILL revalidator at {} acknowledged, {} calls",
            writer.acked(),
            target.calls().len()
        ),
    );
    writer.wait_progress(30, STEP).await;
    let _revalidator = ServiceProcess::start("spool-revalidator", &env).await;
    log(started, "revalidator restarted");
    writer.wait_progress(30, STEP).await;

    let written = writer.stop().await;
    let acked = written.acked();
    let seqs: Vec<u64> = acked.values().copied().collect();
    let calls = target.wait_seqs(&seqs, STEP).await;
    let stored = faults::stored(&faults::stored_events(&nats.url(), SITE).await, &acked);
    let revalidated = faults::revalidated(&calls, &acked);
    faults::report(
        "revalidator SIGKILL with calls in flight, restart",
        &written,
        stored,
        &[],
    );
    println!("  revalidated {revalidated:?} ({} calls)", calls.len());
    log(started, "done");
    assert_nothing_lost_or_duplicated(&written, stored, &[]);
    assert_eq!(revalidated.missing, 0, "{revalidated:?}");
}

/// NATS itself (one node) killed with SIGKILL while webhooks are written and read, then
/// started again with the same store: what it acknowledged survives, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_kill_9_and_restart_with_the_same_store_loses_nothing_acknowledged() {
    let started = Instant::now();
    let mut nats = NatsServer::start().await;
    let target = TestReceiver::start([]).await;
    let mut site = site_json(SITE);
    site["revalidate"] = serde_json::json!([target.target(None)]);
    let ingest = TestService::start(ingest_config(&nats.url())).await;
    ingest.put_site(&site).await;
    let delivery = TestService::start_delivery(delivery_config(&nats.url())).await;
    let _revalidator = TestService::start_revalidator(revalidator_config(&nats.url())).await;

    let http = reqwest::Client::new();
    let readers = vec![
        Follower::sse(&http, &BaseUrl::new(&delivery.base_url), SITE, TOKEN),
        Follower::poll(&http, &BaseUrl::new(&delivery.base_url), SITE, TOKEN),
    ];
    let writer = Writer::start(
        &http,
        &BaseUrl::new(&ingest.base_url),
        SITE,
        "n",
        4,
        Duration::ZERO,
    );
    writer.wait_progress(300, STEP).await;
    nats.kill9().await;
    log(
        started,
        &format!("SIGKILL nats-server at {} acknowledged", writer.acked()),
    );
    writer.wait_failures(4, STEP).await;
    nats.restart().await;
    log(started, "nats-server restarted");
    writer.wait_progress(300, STEP).await;

    let written = writer.stop().await;
    let acked = written.acked();
    let last_seq = acked.values().copied().max().unwrap();
    faults::wait_followers(&readers, last_seq, STEP).await;
    let seqs: Vec<u64> = acked.values().copied().collect();
    let calls = target.wait_seqs(&seqs, STEP).await;
    let stored = faults::stored(&faults::stored_events(&nats.url(), SITE).await, &acked);
    let delivered = tally(readers, &acked).await;
    let revalidated = faults::revalidated(&calls, &acked);
    faults::report(
        "nats-server (1 node) SIGKILL, restart with the same store",
        &written,
        stored,
        &delivered,
    );
    println!("  revalidated {revalidated:?} ({} calls)", calls.len());
    log(started, "done");
    assert_nothing_lost_or_duplicated(&written, stored, &delivered);
    assert_eq!(revalidated.missing, 0, "{revalidated:?}");
}
