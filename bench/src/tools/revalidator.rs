//! A quick measurement of the revalidator (release binaries, own processes) against a fast
//! local target: events/s from publish to the target's 200, with coalescing as configured
//! and with coalescing off (one call per event), and how a bulk publish is coalesced.
//!
//! `make bench-revalidator ARGS="--events 5000"`

use std::sync::Arc;
use std::time::{Duration, Instant};

use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::process::ServiceProcess;
use spool_integration_tests::receiver::TestReceiver;
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{cli_arg, site_json, write_sites_file, LOOPBACK_TARGET_NETWORKS};

/// Publishes `count` webhooks with 32 concurrent senders; returns their seqs.
async fn publish(ingest: &str, prefix: &str, count: usize) -> Vec<u64> {
    let http = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (http, next, ingest, prefix) = (
            http.clone(),
            next.clone(),
            ingest.to_string(),
            prefix.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return seqs;
                }
                let hook =
                    Webhook::published(&format!("{prefix}{i}"), "blog", &format!("{prefix}{i}"));
                let (status, body) = hook.send(&http, &ingest, "acme").await;
                assert_eq!(status, 202);
                seqs.push(body["seq"].as_u64().unwrap());
            }
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.extend(t.await.unwrap());
    }
    seqs
}

async fn run(label: &str, events: usize, extra_env: &[(&str, String)]) {
    let nats = NatsServer::start().await;
    let target = TestReceiver::start([]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut site = site_json("acme");
    site["revalidate"] = serde_json::json!([target.target(None)]);
    let sites = write_sites_file(dir.path(), &[site]);
    let mut env = vec![
        ("NATS_URL", nats.url()),
        ("SPOOL_SITES_FILE", sites.display().to_string()),
        ("RUST_LOG", "warn".to_string()),
        // The target listens on loopback.
        (
            "SPOOL_ALLOWED_TARGET_NETWORKS",
            LOOPBACK_TARGET_NETWORKS.to_string(),
        ),
    ];
    env.extend(extra_env.iter().cloned());
    let ingest = ServiceProcess::start("spool-ingest", &env).await;
    let _revalidator = ServiceProcess::start("spool-revalidator", &env).await;

    let started = Instant::now();
    let seqs = publish(&ingest.base_url, "e", events).await;
    let published = started.elapsed();
    let calls = target.wait_seqs(&seqs, Duration::from_secs(600)).await;
    let done = started.elapsed();
    println!(
        "revalidator ({label}): {events} events published in {:.2} s; all delivered to the target after {:.2} s = {:.0} events/s end to end, in {} calls",
        published.as_secs_f64(),
        done.as_secs_f64(),
        events as f64 / done.as_secs_f64(),
        calls.len(),
    );

    // A bulk publish of 500 items, after the backlog is done.
    let before = target.calls().len();
    let seqs = publish(&ingest.base_url, "bulk", 500).await;
    let calls = target.wait_seqs(&seqs, Duration::from_secs(120)).await;
    println!(
        "revalidator ({label}): a bulk publish of 500 items became {} calls",
        calls.len() - before
    );
}

/// Runs the tool with the command line's arguments.
pub async fn main() {
    let events: usize = cli_arg("--events", 5000);
    run("coalescing 100 ms / 500", events, &[]).await;
    run(
        "coalescing off",
        events,
        &[("SPOOL_COALESCE_MAX", "1".to_string())],
    )
    .await;
}
