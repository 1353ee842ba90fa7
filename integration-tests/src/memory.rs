//! Resident memory of the real service binaries under a steady stream of events: the leak
//! check of `make test` (short), `make leak-check` (200,000 events, release build) and the
//! memory row of `make bench` all run [`measure`].
//!
//! One nats-server; `spool-ingest`, `spool-delivery` and `spool-revalidator` as processes;
//! two sites: `acme`, whose target answers 200, and `down`, whose target always answers 503
//! (its events are retried, then dead-lettered). Webhooks go in rounds; after each round,
//! once every `acme` event reached its target, the RSS of each service is read. The first
//! two rounds warm up (allocator arenas, connection pools, the delivery's window); the slope
//! over the later rounds is what the services keep per event.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::nats_server::NatsServer;
use crate::process::ServiceProcess;
use crate::receiver::{Reply, TestReceiver};
use crate::webhook::Webhook;
use crate::{eventually, site_json, write_sites_file, LOOPBACK_TARGET_NETWORKS};

/// The services measured, in report order.
pub const SERVICES: [&str; 3] = ["spool-ingest", "spool-delivery", "spool-revalidator"];

/// Rounds before the first sample.
const WARM_UP_ROUNDS: usize = 2;

/// How much to send.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Webhooks per round (the first two rounds are the warm-up).
    pub per_round: usize,
    /// Measured rounds after the warm-up.
    pub rounds: usize,
    /// Webhooks in flight at once.
    pub concurrency: usize,
    /// Every `failing_every`-th webhook goes to the failing site.
    pub failing_every: usize,
}

/// RSS (KiB) of each service after each round, warm-up first.
#[derive(Debug, Clone)]
pub struct Report {
    pub plan: Plan,
    /// `samples[service][round]`, services in [`SERVICES`] order; sample 0 is after the
    /// warm-up.
    pub samples: Vec<Vec<u64>>,
    /// Retry records in `SPOOL_RETRY` at each sample (the failing target's backlog).
    pub retries: Vec<u64>,
}

impl Report {
    /// Events sent after the warm-up.
    pub fn measured_events(&self) -> usize {
        self.plan.per_round * self.plan.rounds
    }

    /// The slope of a service's RSS over the measured rounds, in bytes per event: the
    /// median of the slopes between every two samples (Theil–Sen), so that one step — an
    /// allocator arena touched for the first time — is not read as growth, while growth
    /// that goes on is.
    pub fn bytes_per_event(&self, service: usize) -> f64 {
        let ys: Vec<f64> = self.samples[service]
            .iter()
            .map(|kib| *kib as f64 * 1024.0)
            .collect();
        let xs: Vec<f64> = (0..ys.len())
            .map(|i| (i * self.plan.per_round) as f64)
            .collect();
        slope(&xs, &ys)
    }

    /// The slope as growth per 100,000 events, in KiB.
    pub fn kib_per_100k(&self, service: usize) -> f64 {
        self.bytes_per_event(service) * 100_000.0 / 1024.0
    }

    /// A Markdown table: RSS after the warm-up and at the end, and the slope.
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| service | RSS after warm-up (KiB) | RSS at the end (KiB) | growth per 100k events (KiB) |\n|---|---:|---:|---:|\n",
        );
        for (i, name) in SERVICES.iter().enumerate() {
            let first = self.samples[i].first().copied().unwrap_or(0);
            let last = self.samples[i].last().copied().unwrap_or(0);
            out.push_str(&format!(
                "| {name} | {first} | {last} | {:.0} |\n",
                self.kib_per_100k(i)
            ));
        }
        out
    }

    /// A table for logs and the bench report.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "service            | RSS after each round (KiB)           | KiB per 100k events\n",
        );
        for (i, name) in SERVICES.iter().enumerate() {
            let rss: Vec<String> = self.samples[i].iter().map(u64::to_string).collect();
            out.push_str(&format!(
                "{name:<18} | {:<36} | {:.0}\n",
                rss.join(" "),
                self.kib_per_100k(i)
            ));
        }
        let retries: Vec<String> = self.retries.iter().map(u64::to_string).collect();
        out.push_str(&format!("retries waiting    | {}\n", retries.join(" ")));
        out
    }
}

/// The Theil–Sen slope of `ys` over `xs`: the median of the slopes between every two
/// points (0 for fewer than two points).
pub fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len().min(ys.len());
    let mut slopes = Vec::new();
    for i in 0..n {
        for j in i + 1..n {
            if xs[j] != xs[i] {
                slopes.push((ys[j] - ys[i]) / (xs[j] - xs[i]));
            }
        }
    }
    if slopes.is_empty() {
        return 0.0;
    }
    slopes.sort_by(f64::total_cmp);
    let mid = slopes.len() / 2;
    if slopes.len() % 2 == 0 {
        (slopes[mid - 1] + slopes[mid]) / 2.0
    } else {
        slopes[mid]
    }
}

/// Runs the plan against the binaries of this build (see [`crate::service_binary`]).
pub async fn measure(plan: Plan) -> Report {
    let nats = NatsServer::start().await;
    let ok = TestReceiver::start([]).await;
    let down = TestReceiver::start([]).await;
    down.otherwise(Reply::Status(503));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut acme = site_json("acme");
    acme["revalidate"] = serde_json::json!([ok.target(None)]);
    let mut failing = site_json("down");
    failing["revalidate"] = serde_json::json!([down.target(None)]);
    let sites = write_sites_file(dir.path(), &[acme, failing]);
    let env = [
        ("NATS_URL", nats.url()),
        ("SPOOL_SITES_FILE", sites.display().to_string()),
        ("RUST_LOG", "warn".to_string()),
        // jemalloc hands freed pages back at once, so RSS follows what is live rather than
        // what the allocator keeps cached for a while (10 s by default).
        (
            "_RJEM_MALLOC_CONF",
            "dirty_decay_ms:0,muzzy_decay_ms:0".to_string(),
        ),
        // Failing calls are retried twice, quickly, then dead-lettered: every path runs.
        ("SPOOL_RETRY_SCHEDULE", "100ms,200ms".to_string()),
        // The targets listen on loopback.
        (
            "SPOOL_ALLOWED_TARGET_NETWORKS",
            LOOPBACK_TARGET_NETWORKS.to_string(),
        ),
        // The delivery's window is full after the warm-up (a full window stays its size:
        // SPOOL_REPLAY_WINDOW bounds it), so what grows after that is kept per event.
        (
            "SPOOL_REPLAY_WINDOW",
            (plan.per_round / 2).max(100).to_string(),
        ),
    ];
    let processes = [
        ServiceProcess::start(SERVICES[0], &env).await,
        ServiceProcess::start(SERVICES[1], &env).await,
        ServiceProcess::start(SERVICES[2], &env).await,
    ];
    let ingest = processes[0].base_url.clone();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.concurrency)
        .build()
        .expect("HTTP client");

    let mut samples = vec![Vec::new(); SERVICES.len()];
    let mut retries = Vec::new();
    let mut last_acme = 0u64;
    for round in 0..plan.rounds + WARM_UP_ROUNDS {
        let hooks: Vec<(Webhook, &'static str)> = (0..plan.per_round)
            .map(|i| {
                let n = round * plan.per_round + i;
                let site = if n.is_multiple_of(plan.failing_every.max(1)) {
                    "down"
                } else {
                    "acme"
                };
                let hook = Webhook::published(&format!("msg_{n}"), "blog", &n.to_string());
                (hook, site)
            })
            .collect();
        let hooks = Arc::new(hooks);
        let next = Arc::new(AtomicUsize::new(0));
        let mut senders = Vec::new();
        for _ in 0..plan.concurrency {
            let (hooks, next, http, ingest) =
                (hooks.clone(), next.clone(), http.clone(), ingest.clone());
            senders.push(tokio::spawn(async move {
                let mut acme_max = 0u64;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((hook, site)) = hooks.get(i) else {
                        return acme_max;
                    };
                    let seq = hook.send_until_stored(&http, &ingest, site).await;
                    if *site == "acme" {
                        acme_max = acme_max.max(seq);
                    }
                }
            }));
        }
        for sender in senders {
            last_acme = last_acme.max(sender.await.expect("sender task"));
        }
        eventually(
            "every acme event at its target",
            Duration::from_secs(120),
            || async {
                let called = ok.calls().iter().flat_map(|c| c.seqs()).max().unwrap_or(0);
                (called >= last_acme).then_some(())
            },
        )
        .await;
        if round + 1 >= WARM_UP_ROUNDS {
            for (i, process) in processes.iter().enumerate() {
                samples[i].push(process.rss_kib());
            }
            retries.push(retries_waiting(&nats.url()).await);
        }
    }
    Report {
        plan,
        samples,
        retries,
    }
}

/// Records in `SPOOL_RETRY` (0 if it can't be read).
async fn retries_waiting(nats_url: &str) -> u64 {
    let Ok(client) = async_nats::connect(nats_url).await else {
        return 0;
    };
    let js = async_nats::jetstream::new(client);
    let Ok(mut stream) = js.get_stream(spool_proto::names::RETRY_STREAM).await else {
        return 0;
    };
    stream.info().await.map_or(0, |info| info.state.messages)
}

#[cfg(test)]
mod tests {
    #[test]
    fn slope_of_a_line_and_of_noise() {
        assert_eq!(super::slope(&[0.0, 1.0, 2.0], &[1.0, 3.0, 5.0]), 2.0);
        assert_eq!(super::slope(&[0.0, 1.0, 2.0], &[4.0, 4.0, 4.0]), 0.0);
        assert_eq!(super::slope(&[1.0], &[1.0]), 0.0);
        // One step early on is not growth; growth that goes on is.
        let xs = [0.0, 1.0, 2.0, 3.0, 4.0];
        assert_eq!(super::slope(&xs, &[0.0, 100.0, 100.0, 100.0, 100.0]), 0.0);
        assert_eq!(super::slope(&xs, &[0.0, 100.0, 200.0, 300.0, 400.0]), 100.0);
    }
}
