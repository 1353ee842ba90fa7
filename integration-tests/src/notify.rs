//! What `notify: after_revalidate` costs: webhook → browser latency of the streams of one
//! site whose revalidation target answers in `target_ms`, with the site's `notify` set to
//! `immediate` and to `after_revalidate` — the notify row of `make bench`. Real binaries
//! (`spool-ingest`, `spool-revalidator`, `spool-delivery`) on one nats-server; events one at
//! a time; each (stream, event) latency is the time from the ingest's 202 to the stream
//! receiving the event.

use std::time::{Duration, Instant};

use crate::flood::open_streams;
use crate::nats_server::NatsServer;
use crate::process::ServiceProcess;
use crate::receiver::{Reply, TestReceiver};
use crate::webhook::Webhook;
use crate::{site_json, write_sites_file};

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
    let env = crate::process::service_env(&nats, &file);
    let ingest = ServiceProcess::start("spool-ingest", &env).await;
    let _revalidator = ServiceProcess::start("spool-revalidator", &env).await;
    let delivery = ServiceProcess::start("spool-delivery", &env).await;

    let (streams, followers) = open_streams(
        &delivery.url("/v1/sites/live/events/stream"),
        plan.streams,
        2,
    )
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
