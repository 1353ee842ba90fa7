//! What `notify: after_revalidate` costs: webhook → browser latency of the streams of one
//! site whose revalidation target answers in `target_ms`, with the site's `notify` set to
//! `immediate` and to `after_revalidate` — the notify row of `make bench`. Real binaries
//! (`spool-ingest`, `spool-revalidator`, `spool-delivery`) on one nats-server; events one at
//! a time; each (stream, event) latency is the time from the ingest's 202 to the stream
//! receiving the event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::flood::{follow, Arrivals};
use crate::nats_server::NatsServer;
use crate::process::ServiceProcess;
use crate::receiver::{Reply, TestReceiver};
use crate::webhook::Webhook;
use crate::{site_json, write_sites_file, LOOPBACK_TARGET_NETWORKS};

#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub streams: usize,
    pub samples: usize,
    pub target_ms: u64,
    pub after_revalidate: bool,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub plan: Plan,
    /// Webhook accepted → stream received, for every stream and event, sorted.
    pub latencies: Vec<Duration>,
    /// Events some stream never received, and events that went out marked not fresh.
    pub missed: usize,
}

impl Report {
    pub fn percentile(&self, p: f64) -> Duration {
        crate::percentile(&self.latencies, p)
    }
}

pub async fn measure(plan: Plan) -> Report {
    let nats = NatsServer::start().await;
    let target = TestReceiver::start([]).await;
    target.otherwise(Reply::Slow(Duration::from_millis(plan.target_ms)));
    let mut site = site_json("live");
    site["revalidate"] = serde_json::json!([target.target(None)]);
    if plan.after_revalidate {
        site["notify"] = "after_revalidate".into();
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_sites_file(dir.path(), &[site]);
    let env = [
        ("NATS_URL", nats.url()),
        ("SPOOL_SITES_FILE", file.display().to_string()),
        ("RUST_LOG", "warn".to_string()),
        (
            "SPOOL_ALLOWED_TARGET_NETWORKS",
            LOOPBACK_TARGET_NETWORKS.to_string(),
        ),
    ];
    let ingest = ServiceProcess::start("spool-ingest", &env).await;
    let _revalidator = ServiceProcess::start("spool-revalidator", &env).await;
    let delivery = ServiceProcess::start("spool-delivery", &env).await;

    let ready = Arc::new(AtomicU64::new(0));
    let streams: Vec<Arrivals> = (0..plan.streams).map(|_| Arrivals::default()).collect();
    let url = delivery.url("/v1/sites/live/events/stream");
    let followers: Vec<_> = streams
        .iter()
        .enumerate()
        .map(|(i, arrivals)| {
            tokio::spawn(follow(
                reqwest::Client::new(),
                url.clone(),
                format!("10.2.{}.{}", i / 250, i % 250 + 1),
                arrivals.clone(),
                ready.clone(),
            ))
        })
        .collect();
    crate::eventually("every stream ready", Duration::from_secs(60), || async {
        (ready.load(Ordering::Relaxed) >= plan.streams as u64).then_some(())
    })
    .await;

    let http = reqwest::Client::new();
    let mut latencies = Vec::new();
    let mut missed = 0;
    for n in 0..plan.samples {
        let id = format!("live_{n}");
        let at = Instant::now();
        let seq = Webhook::published(&id, "blog", &id)
            .send_until_stored(&http, &ingest.base_url, "live")
            .await;
        // One at a time: the next is sent once every stream has this one (or 15 s passed).
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let arrived: Vec<Option<Instant>> = streams
                .iter()
                .map(|s| {
                    s.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .get(&seq)
                        .copied()
                })
                .collect();
            if arrived.iter().all(Option::is_some) || Instant::now() > deadline {
                for got in arrived {
                    match got {
                        Some(got) => latencies.push(got.saturating_duration_since(at)),
                        None => missed += 1,
                    }
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    for follower in followers {
        follower.abort();
    }
    latencies.sort();
    Report {
        plan,
        latencies,
        missed,
    }
}
