//! Live latency while readers flood the same delivery with history reads: the history-flood
//! row of `make bench`. Real binaries (`spool-ingest`, `spool-delivery`) on one
//! nats-server; site `old` holds `history` events, more than the delivery's window
//! (`SPOOL_REPLAY_WINDOW=window`), so every `GET /v1/sites/old/events?since=1&limit=1000`
//! is a JetStream read; `flood` clients send those back to back while `streams` SSE
//! streams follow site `live`, which gets one event at a time. Each (stream, event)
//! latency is the time from the ingest's 202 to the stream receiving the event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::nats_server::NatsServer;
use crate::process::ServiceProcess;
use crate::webhook::Webhook;
use crate::{site_json, write_sites_file};

#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub streams: usize,
    /// Concurrent history readers (0 = no flood).
    pub flood: usize,
    pub history: usize,
    pub window: usize,
    pub samples: usize,
    /// The readers all come from one address, and the delivery limits requests per address
    /// at its defaults (50/s, burst 200): every client is told apart by `X-Forwarded-For`
    /// from a trusted proxy (loopback), each stream its own address.
    pub one_address: bool,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub plan: Plan,
    /// Webhook accepted → stream received, for every stream and event, sorted.
    pub latencies: Vec<Duration>,
    /// History reads answered 200, and 429, per second of the measurement.
    pub served_per_s: f64,
    pub refused_per_s: f64,
    /// Events some stream never received.
    pub missed: usize,
}

impl Report {
    pub fn percentile(&self, p: f64) -> Duration {
        crate::percentile(&self.latencies, p)
    }
}

/// The read token of `live` (see [`site_json`]).
const TOKEN: &str = "rk_test_live_0123456789";

/// One stream's arrival times by seq.
type Arrivals = Arc<std::sync::Mutex<std::collections::HashMap<u64, Instant>>>;

/// Opens `n` streams of `live` at `url`, each as its own client address (`10.<net>.x.y`,
/// told apart by a trusted loopback proxy where the delivery has one), and waits until
/// every one said `ready`: their arrival records, and the tasks reading them.
pub(crate) async fn open_streams(
    url: &str,
    n: usize,
    net: u8,
) -> (Vec<Arrivals>, Vec<tokio::task::JoinHandle<()>>) {
    let ready = Arc::new(AtomicU64::new(0));
    let streams: Vec<Arrivals> = (0..n).map(|_| Arrivals::default()).collect();
    let followers = streams
        .iter()
        .enumerate()
        .map(|(i, arrivals)| {
            tokio::spawn(follow(
                reqwest::Client::new(),
                url.to_owned(),
                format!("10.{net}.{}.{}", i / 250, i % 250 + 1),
                arrivals.clone(),
                ready.clone(),
            ))
        })
        .collect();
    crate::eventually("every stream ready", Duration::from_secs(60), || async {
        (ready.load(Ordering::Relaxed) >= n as u64).then_some(())
    })
    .await;
    (streams, followers)
}

/// Opens a stream of `live` (as client `address`) and records when each event's `id:` line
/// arrives.
async fn follow(
    http: reqwest::Client,
    url: String,
    address: String,
    arrivals: Arrivals,
    ready: Arc<AtomicU64>,
) {
    let request = http
        .get(&url)
        .bearer_auth(TOKEN)
        .header("x-forwarded-for", address);
    let Ok(response) = request.send().await else {
        return;
    };
    let mut body = response.bytes_stream();
    let mut counted = false;
    let mut rest = Vec::new();
    while let Some(Ok(chunk)) = body.next().await {
        let at = Instant::now();
        rest.extend_from_slice(&chunk);
        if !counted && rest.windows(12).any(|w| w == b"event: ready") {
            counted = true;
            ready.fetch_add(1, Ordering::Relaxed);
        }
        let text = String::from_utf8_lossy(&rest).into_owned();
        let (complete, tail) = text.rsplit_once("\n\n").unwrap_or(("", &text));
        for line in complete.lines() {
            if let Some(seq) = line
                .strip_prefix("id: ")
                .and_then(|s| s.parse::<u64>().ok())
            {
                arrivals
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(seq)
                    .or_insert(at);
            }
        }
        rest = tail.as_bytes().to_vec();
    }
}

/// Runs the plan against the binaries of this build (see [`crate::service_binary`]).
pub async fn measure(plan: Plan) -> Report {
    let nats = NatsServer::start().await;
    let old_token = "rk_test_old_0123456789";
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_sites_file(dir.path(), &[site_json("live"), site_json("old")]);
    let mut env = crate::process::service_env(&nats, &file);
    env.push(("SPOOL_REPLAY_WINDOW", plan.window.to_string()));
    let ingest = ServiceProcess::start("spool-ingest", &env).await;
    let mut delivery_env = env.clone();
    if plan.one_address {
        delivery_env.extend([
            ("SPOOL_TRUSTED_PROXIES", "127.0.0.1/32".to_string()),
            ("SPOOL_REQUESTS_PER_IP_RATE", "50".to_string()),
            ("SPOOL_REQUESTS_PER_IP_BURST", "200".to_string()),
        ]);
    }
    let http = reqwest::Client::new();
    futures::stream::iter(0..plan.history)
        .for_each_concurrent(32, |n| {
            let (http, base) = (&http, ingest.base_url.as_str());
            async move {
                let id = format!("old_{n}");
                Webhook::published(&id, "blog", &id)
                    .send_until_stored(http, base, "old")
                    .await;
            }
        })
        .await;
    let delivery = ServiceProcess::start("spool-delivery", &delivery_env).await;

    let (streams, followers) = open_streams(
        &delivery.url("/v1/sites/live/events/stream"),
        plan.streams,
        1,
    )
    .await;

    let stop = CancellationToken::new();
    let (served, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let readers: Vec<_> = (0..plan.flood)
        .map(|_| {
            let (stop, served, refused) = (stop.clone(), served.clone(), refused.clone());
            let url = delivery.url("/v1/sites/old/events?since=1&limit=1000");
            let token = old_token;
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                while !stop.is_cancelled() {
                    let request = http
                        .get(&url)
                        .bearer_auth(token)
                        .header("x-forwarded-for", "203.0.113.7");
                    let Ok(r) = request.send().await else {
                        continue;
                    };
                    let status = r.status().as_u16();
                    let _ = r.bytes().await;
                    match status {
                        200 => served.fetch_add(1, Ordering::Relaxed),
                        _ => refused.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();

    let started = Instant::now();
    let mut sent = Vec::with_capacity(plan.samples);
    for n in 0..plan.samples {
        let id = format!("live_{n}");
        let at = Instant::now();
        let seq = Webhook::published(&id, "blog", &id)
            .send_until_stored(&http, &ingest.base_url, "live")
            .await;
        sent.push((seq, at));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the last event arrive everywhere.
    let last = sent.last().map(|(seq, _)| *seq);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let all = streams.iter().all(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .contains_key(&last.unwrap_or_default())
            });
            if all {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    stop.cancel();
    for reader in readers {
        let _ = reader.await;
    }
    for follower in followers {
        follower.abort();
    }
    let mut latencies = Vec::new();
    let mut missed = 0;
    for stream in &streams {
        let arrivals = stream
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (seq, at) in &sent {
            match arrivals.get(seq) {
                Some(got) => latencies.push(got.saturating_duration_since(*at)),
                None => missed += 1,
            }
        }
    }
    latencies.sort();
    Report {
        plan,
        latencies,
        served_per_s: served.load(Ordering::Relaxed) as f64 / elapsed,
        refused_per_s: refused.load(Ordering::Relaxed) as f64 / elapsed,
        missed,
    }
}
