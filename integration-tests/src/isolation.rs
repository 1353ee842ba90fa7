//! Revalidation latency of healthy sites while other sites' targets fail: the isolation
//! row of `make bench`. Real binaries (`spool-ingest`, `spool-revalidator`) on one
//! nats-server; `failing` sites whose targets answer 503 or 429 with `Retry-After: 3600`
//! (alternately), each given a backlog of `backlog` events first; then two healthy sites
//! get one event at a time, and each event's latency is the time from the ingest's 202 to
//! the call arriving at the site's target.

use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::nats_server::NatsServer;
use crate::process::ServiceProcess;
use crate::receiver::{Reply, TestReceiver};
use crate::webhook::Webhook;
use crate::{site_json, write_sites_file};

#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Sites whose target fails.
    pub failing: usize,
    /// Events published to each failing site before measuring.
    pub backlog: usize,
    /// Events to the healthy sites, one at a time.
    pub samples: usize,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub plan: Plan,
    /// Webhook accepted → call received, sorted.
    pub latencies: Vec<Duration>,
}

impl Report {
    pub fn percentile(&self, p: f64) -> Duration {
        crate::percentile(&self.latencies, p)
    }
}

/// Sends webhooks to `site`, 32 at a time, each until stored; their seqs.
async fn publish(http: &reqwest::Client, ingest: &str, site: &str, ids: Vec<String>) -> Vec<u64> {
    futures::stream::iter(ids)
        .map(|id| async move {
            Webhook::published(&id, "blog", &id)
                .send_until_stored(http, ingest, site)
                .await
        })
        .buffer_unordered(32)
        .collect()
        .await
}

/// Runs the plan against the binaries of this build (see [`crate::service_binary`]).
pub async fn measure(plan: Plan) -> Report {
    let nats = NatsServer::start().await;
    let mut targets = Vec::new();
    let mut sites = Vec::new();
    for i in 0..plan.failing {
        let target = TestReceiver::start([]).await;
        target.otherwise(if i % 2 == 0 {
            Reply::Status(503)
        } else {
            Reply::RetryAfter(429, 3600)
        });
        let mut site = site_json(&format!("failing{i}"));
        site["revalidate"] = serde_json::json!([target.target(None)]);
        sites.push(site);
        targets.push(target);
    }
    let healthy = [TestReceiver::start([]).await, TestReceiver::start([]).await];
    for (i, target) in healthy.iter().enumerate() {
        let mut site = site_json(&format!("healthy{i}"));
        site["revalidate"] = serde_json::json!([target.target(None)]);
        sites.push(site);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_sites_file(dir.path(), &sites);
    let env = crate::process::service_env(&nats, &file);
    let revalidator = ServiceProcess::start("spool-revalidator", &env).await;
    let ingest = ServiceProcess::start("spool-ingest", &env).await;
    let http = reqwest::Client::new();

    let backlogs = (0..plan.failing).map(|i| {
        let site = format!("failing{i}");
        let ids = (0..plan.backlog).map(|n| format!("{site}_{n}")).collect();
        let (http, base) = (&http, ingest.base_url.as_str());
        async move { publish(http, base, &site, ids).await }
    });
    futures::future::join_all(backlogs).await;

    let mut latencies = Vec::with_capacity(plan.samples);
    for n in 0..plan.samples {
        let i = n % 2;
        let site = format!("healthy{i}");
        let id = format!("{site}_{n}");
        let sent = Instant::now();
        let seq = publish(&http, &ingest.base_url, &site, vec![id]).await[0];
        let calls = healthy[i].wait_seqs(&[seq], Duration::from_secs(60)).await;
        let at = calls
            .iter()
            .find(|c| c.seqs().contains(&seq))
            .map_or_else(Instant::now, |c| c.at);
        latencies.push(at.saturating_duration_since(sent));
    }
    latencies.sort();
    drop(revalidator);
    Report { plan, latencies }
}
