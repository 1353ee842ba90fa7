//! A quick measurement of the delivery: N open SSE streams on one `spool-delivery`
//! process (release binaries, own processes), webhooks sent through `spool-ingest` at a
//! fixed rate; reports webhook → SSE latency over every (event, stream) pair, and the
//! delivery's memory per open stream, idle and under load.
//!
//! `make bench-delivery ARGS="--streams 1000 --rate 100 --seconds 10"`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::process::ServiceProcess;
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{cli_arg, eventually, site_json, write_sites_file};

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Runs the tool with the command line's arguments.
pub async fn main() {
    let streams: usize = cli_arg("--streams", 1000);
    let rate: u64 = cli_arg("--rate", 100);
    let seconds: u64 = cli_arg("--seconds", 10);
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let want = (streams as u64 * 2 + 1024).min(hard);
    if soft < want {
        rlimit::setrlimit(rlimit::Resource::NOFILE, want, hard).unwrap();
    }

    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut site = site_json("acme");
    site["public"] = true.into();
    let sites = write_sites_file(dir.path(), &[site]);
    let env = [
        ("NATS_URL", nats.url()),
        ("SPOOL_SITES_FILE", sites.display().to_string()),
        ("RUST_LOG", "warn".into()),
    ];
    let ingest = ServiceProcess::start("spool-ingest", &env).await;
    let delivery = ServiceProcess::start("spool-delivery", &env).await;
    let http = reqwest::Client::new();
    tokio::time::sleep(Duration::from_millis(500)).await; // let the allocator settle before the baseline
    let rss_start = delivery.rss_kib();

    let epoch = Instant::now();
    let ready = Arc::new(AtomicUsize::new(0));
    let url = delivery.url("/v1/sites/acme/events/stream");
    let mut clients = Vec::new();
    for _ in 0..streams {
        let (url, ready) = (url.clone(), ready.clone());
        let client = reqwest::Client::new();
        clients.push(tokio::spawn(async move {
            let response = client.get(&url).send().await.expect("stream");
            let mut events = response.bytes_stream().eventsource();
            let mut latencies = Vec::new();
            while let Some(Ok(event)) = events.next().await {
                match event.event.as_str() {
                    "ready" => {
                        ready.fetch_add(1, Ordering::Relaxed);
                    }
                    "message" => {
                        let now = epoch.elapsed().as_micros() as u64;
                        let sent = event
                            .data
                            .split("\"sent_us\":\"")
                            .nth(1)
                            .and_then(|r| r.split('"').next());
                        if let Some(sent) = sent.and_then(|s| s.parse::<u64>().ok()) {
                            latencies.push(now.saturating_sub(sent));
                        }
                        if event.data.contains("\"id\":\"last\"") {
                            break;
                        }
                    }
                    _ => {}
                }
            }
            latencies
        }));
    }
    let ready_ref = &ready;
    eventually(
        "every stream ready",
        Duration::from_secs(120),
        || async move { (ready_ref.load(Ordering::Relaxed) == streams).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = delivery.rss_kib();

    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut tick = tokio::time::interval(interval);
    let mut rss_load = 0;
    for i in 0..total {
        tick.tick().await;
        let sent_us = epoch.elapsed().as_micros() as u64;
        let body = serde_json::json!({
            "type": "content.updated", "collection": "blog",
            "item": { "id": if i + 1 == total { "last".to_string() } else { i.to_string() }, "slug": format!("p{i}"), "sent_us": sent_us.to_string() },
        });
        let hook = Webhook::with_body(&format!("load{i}"), body.to_string().into_bytes());
        let (status, _) = hook.send(&http, &ingest.base_url, "acme").await;
        assert_eq!(status, 202);
        if i == total / 2 {
            rss_load = delivery.rss_kib();
        }
    }
    let mut latencies = Vec::new();
    for c in clients {
        if let Ok(Ok(l)) = tokio::time::timeout(Duration::from_secs(30), c).await {
            latencies.extend(l);
        }
    }
    latencies.sort_unstable();
    let expected = total as usize * streams;
    println!(
        "delivery: {streams} streams, {rate} events/s for {seconds} s: {} of {expected} deliveries; webhook→SSE latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
    );
    println!(
        "delivery RSS: {} KiB at start, {} KiB with {streams} idle streams ({:.1} KiB per stream), {} KiB under load",
        rss_start,
        rss_idle,
        rss_idle.saturating_sub(rss_start) as f64 / streams as f64,
        rss_load,
    );
}
