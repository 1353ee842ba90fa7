//! Test fixtures for Spool Live: a real `nats-server` per test (JetStream, free port, temp
//! store), the real services in-process on port 0, and a signing webhook client.
//! No fixed ports and no sleeps for readiness: everything waits on a condition with a
//! deadline ([`eventually`]).

pub mod faults;
pub mod flood;
pub mod isolation;
pub mod memory;
pub mod nats_cluster;
pub mod nats_server;
pub mod notify;
pub mod otlp;
pub mod process;
pub mod receiver;
pub mod services;
pub mod soak;
pub mod sse;
pub mod webhook;

#[cfg(feature = "testcontainers")]
pub mod container;

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, or panics with `what` after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The Prometheus text a service serves on `/metrics` (`None` while it can't be read).
pub async fn metrics_text(http: &reqwest::Client, base_url: &str) -> Option<String> {
    let response = http.get(format!("{base_url}/metrics")).send().await.ok()?;
    response.text().await.ok()
}

/// The value of a metric (its name with its labels, as `/metrics` writes them) in a scrape.
pub fn metric_value(text: &str, metric: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(metric)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Waits, within `deadline`, until a service's `/metrics` holds `line` (a metric with its
/// labels and value, e.g. `spool_delivery_open_connections{kind="sse"} 1`).
pub async fn eventually_metric(
    http: &reqwest::Client,
    base_url: &str,
    line: &str,
    deadline: Duration,
) {
    eventually(
        &format!("{line:?} in {base_url}/metrics"),
        deadline,
        || async {
            metrics_text(http, base_url)
                .await?
                .contains(line)
                .then_some(())
        },
    )
    .await
}

/// The secret every test site uses unless it says otherwise.
pub const TEST_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The admin token the test services are started with.
pub const ADMIN_TOKEN: &str = "test-admin-token";
/// `SPOOL_ALLOWED_TARGET_NETWORKS` of every revalidator the tests and benchmarks start:
/// their revalidation targets listen on loopback, which the revalidator refuses unless
/// allowed.
pub const LOOPBACK_TARGET_NETWORKS: &str = "127.0.0.0/8,::1/128";

/// The `p` quantile (0 to 1) of sorted durations, nearest rank; zero when there are none.
pub fn percentile(sorted: &[std::time::Duration], p: f64) -> std::time::Duration {
    let Some(last) = sorted.len().checked_sub(1) else {
        return std::time::Duration::ZERO;
    };
    let i = (last as f64 * p).round() as usize;
    sorted[i.min(last)]
}

/// A valid site JSON with the contract's example collection mapping.
pub fn site_json(id: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "webhook_secret": TEST_SECRET,
        "read_tokens": [format!("rk_test_{id}_0123456789")],
        "public": false,
        "cors_origins": ["https://acme.example"],
        "collections": {
            "blog": { "paths": ["/blog/{slug}", "/blog"], "tags": ["blog", "blog:{slug}"] }
        },
        "revalidate": [],
        // Visitors see the title too, so tests can compare what they receive with what
        // was stored; the audience tests use a site with the defaults.
        "public_fields": ["slug", "title"]
    })
}

/// Every message of `stream` as JSON, oldest first, with its `traceparent` header.
pub async fn read_range_json(
    nats_url: &str,
    stream: &str,
) -> Vec<(serde_json::Value, Option<String>)> {
    use async_nats::jetstream::consumer::pull::OrderedConfig;
    use futures::StreamExt;
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await.expect("NATS"));
    let mut stream = js.get_stream(stream).await.expect("the stream");
    let count = stream.info().await.expect("stream info").state.messages;
    let mut out = Vec::new();
    if count == 0 {
        return out;
    }
    let consumer = stream
        .create_consumer(OrderedConfig::default())
        .await
        .expect("a reader");
    let mut messages = consumer.messages().await.expect("messages");
    while (out.len() as u64) < count {
        let message = messages
            .next()
            .await
            .expect("a message")
            .expect("a message");
        let trace = message
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.as_str().to_owned());
        out.push((
            serde_json::from_slice(&message.payload).expect("JSON"),
            trace,
        ));
    }
    out
}

/// One message of `SPOOL_EVENTS`, read back from the stream.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    pub subject: String,
    pub msg_id: Option<String>,
    pub traceparent: Option<String>,
    pub event: spool_proto::Event,
}

/// Reads every message of `SPOOL_EVENTS` (the ground truth of what was stored).
pub async fn read_events(nats_url: &str) -> Vec<Stored> {
    let client = async_nats::connect(nats_url)
        .await
        .expect("connect to NATS");
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(spool_proto::names::EVENTS_STREAM)
        .await
        .expect("events stream");
    let state = stream.info().await.expect("stream info").state.clone();
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        if state.messages == 0 {
            break;
        }
        let Ok(msg) = stream.get_raw_message(seq).await else {
            continue;
        };
        let header = |name: &str| msg.headers.get(name).map(|v| v.to_string());
        let mut event: spool_proto::Event =
            serde_json::from_slice(&msg.payload).expect("stored event JSON");
        event.seq = msg.sequence;
        out.push(Stored {
            seq: msg.sequence,
            subject: msg.subject.to_string(),
            msg_id: header(spool_proto::names::MSG_ID_HEADER),
            traceparent: header("traceparent"),
            event,
        });
    }
    out
}

/// A service binary of this build (`target/<profile>/<name>`), found beside the running
/// executable or one folder up (tests and examples run from `deps/` and `examples/`).
/// `make test` builds them first (`cargo build --workspace --bins`).
pub fn service_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let candidates: Vec<std::path::PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .collect();
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{name} is missing next to {}: run `cargo build --workspace --bins` first",
                exe.display()
            )
        })
}

/// Sends a request and returns its status code.
pub async fn status(request: reqwest::RequestBuilder) -> u16 {
    request
        .send()
        .await
        .expect("HTTP request")
        .status()
        .as_u16()
}

/// Writes a sites file (JSON array) into `dir` and returns its path.
pub fn write_sites_file(dir: &std::path::Path, sites: &[serde_json::Value]) -> std::path::PathBuf {
    let path = dir.join("sites.json");
    std::fs::write(&path, serde_json::to_vec(sites).expect("sites JSON"))
        .expect("write sites file");
    path
}

/// The value after `name` on the command line, parsed (for the load examples).
pub fn cli_arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    #[test]
    fn metric_value_reads_exactly_the_metric_asked_for() {
        let text = "# TYPE a_total counter\na_total_more 7\na_total 3\nb{kind=\"sse\"} 2.5\n";
        assert_eq!(super::metric_value(text, "a_total"), Some(3.0));
        assert_eq!(super::metric_value(text, "b{kind=\"sse\"}"), Some(2.5));
        assert_eq!(super::metric_value(text, "b"), None);
        assert_eq!(super::metric_value(text, "c_total"), None);
    }
}
