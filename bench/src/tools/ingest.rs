//! A quick load test of the ingest: signed webhooks with JetStream acks, at a fixed
//! concurrency, against a real nats-server and the ingest on loopback (same process as
//! the load generator, sharing this machine's cores).
//!
//! `make bench-ingest ARGS="--requests 20000 --concurrency 64"`

use std::sync::Arc;
use std::time::Instant;

use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::services::{ingest_config, TestIngest};
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{cli_arg, percentile, site_json};

/// Runs the tool with the command line's arguments.
pub async fn main() {
    let requests: usize = cli_arg("--requests", 20_000);
    let concurrency: usize = cli_arg("--concurrency", 64);
    let nats = NatsServer::start().await;
    let ingest = Arc::new(TestIngest::start(ingest_config(&nats.url())).await);
    ingest.put_site(&site_json("acme")).await;

    // Signed before the clock starts: signing is the CMS's cost, not ours.
    let hooks: Vec<Webhook> = (0..requests)
        .map(|i| Webhook::published(&format!("msg_{i}"), "blog", &i.to_string()))
        .collect();
    let queue = Arc::new(std::sync::Mutex::new(hooks));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();

    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let queue = queue.clone();
        let ingest = ingest.clone();
        let http = http.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0usize;
            loop {
                let Some(hook) = queue.lock().unwrap().pop() else {
                    break;
                };
                let t = Instant::now();
                match hook.request(&http, &ingest.base_url, "acme").send().await {
                    Ok(r) if r.status() == 202 => latencies.push(t.elapsed()),
                    _ => failures += 1,
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::with_capacity(requests);
    let mut failures = 0;
    for w in workers {
        let (l, f) = w.await.unwrap();
        latencies.extend(l);
        failures += f;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "ingest: {} webhooks, concurrency {concurrency}: {:.0} webhooks/s acked; p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms; {failures} failed",
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        percentile(&latencies, 0.999).as_secs_f64() * 1e3,
    );
}
