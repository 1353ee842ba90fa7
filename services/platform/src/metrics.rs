//! One Prometheus recorder per process, rendered by `GET /metrics`.
//!
//! The recorder keeps every histogram sample in a lock-free queue until *upkeep* folds the
//! queue into the buckets. `render` does upkeep, but a process nobody scrapes would keep
//! every sample for ever (8+ bytes per request, per event: the ingest and the revalidator
//! grew without bound that way). So a thread of the recorder's own runs upkeep every
//! [`UPKEEP_EVERY`], whether or not anyone scrapes.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Bucket bounds (seconds) of every latency histogram: 0.5 ms to 30 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    30.0,
];

/// How often pending histogram samples are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder handle, installing the recorder on first use.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        let builder = match builder.set_buckets(&LATENCY_BUCKETS) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "histogram buckets refused; using summaries");
                PrometheusBuilder::new()
            }
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        let upkeep = handle.clone();
        let started = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "no metrics upkeep thread: histogram samples wait for a scrape");
        }
        handle
    })
}

/// Renders the Prometheus text format.
pub fn render() -> String {
    let handle = handle();
    handle.run_upkeep();
    handle.render()
}
