//! The measurements. Every server runs as a process of its own (release binaries); the load
//! generator is this process. Everything binds to loopback and every step is bounded in time.

use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::process::{self, ServiceProcess};
use spool_integration_tests::receiver::TestReceiver;
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{site_json, write_sites_file, LOOPBACK_TARGET_NETWORKS};

use crate::sse_load::{Options, Streams};

mod fanout;
mod ingest;
mod recovery;

use fanout::fanout;
pub use fanout::{Fanout, FANOUT_BACKLOG, FANOUT_CONNECTIONS};
use ingest::{ingest_alone, ingest_in_system, jetstream};
use recovery::{resume_storm, revalidator};

/// What a run measures, and how big.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub quick: bool,
    pub streams: Vec<usize>,
    pub rates: Vec<u64>,
    pub seconds: u64,
    pub fanout_streams: usize,
    pub fanout_seconds: u64,
    pub ingest_requests: usize,
    pub jetstream_messages: usize,
    pub resume_clients: usize,
    pub revalidator_events: usize,
}

impl Plan {
    pub fn quick() -> Plan {
        Plan {
            quick: true,
            streams: vec![1000],
            rates: vec![100],
            seconds: 3,
            fanout_streams: 500,
            fanout_seconds: 2,
            ingest_requests: 20_000,
            jetstream_messages: 10_000,
            resume_clients: 1000,
            revalidator_events: 1000,
        }
    }

    pub fn full() -> Plan {
        Plan {
            quick: false,
            streams: vec![1000, 10_000],
            rates: vec![100, 1000],
            seconds: 10,
            fanout_streams: 2000,
            fanout_seconds: 5,
            ingest_requests: 50_000,
            jetstream_messages: 100_000,
            resume_clients: 10_000,
            revalidator_events: 20_000,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub system: &'static str,
    pub streams: usize,
    pub rate: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub delivered: u64,
    pub expected: u64,
    pub rss_idle_kib_per_stream: f64,
    pub rss_load_kib: u64,
    /// Streams that fell behind the site's channel and caught up from the window.
    pub lagged_streams: u64,
}

/// Signed webhooks through a `spool-ingest` process, acknowledged after JetStream's ack.
#[derive(Debug, Clone, Serialize)]
pub struct Ingest {
    /// What ran beside it: [`INGEST_ALONE`], [`INGEST_ALONE_INFO`] or [`INGEST_SYSTEM`].
    pub setup: &'static str,
    pub per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub failed: u64,
}

/// The ingest and nats-server only, services logging at `warn`.
pub const INGEST_ALONE: &str = "alone";
/// The same at the services' default log level, `info`.
pub const INGEST_ALONE_INFO: &str = "alone-info";
/// The whole system running: a delivery consumes every event meanwhile.
pub const INGEST_SYSTEM: &str = "system";
/// Requests in flight, as in `make bench-ingest`.
pub const INGEST_CONCURRENCY: usize = 64;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Run {
    pub latency: Vec<Latency>,
    pub fanout: Vec<Fanout>,
    pub ingest: Vec<Ingest>,
    pub jetstream_per_s: f64,
    pub resume_clients: usize,
    pub resume_seconds: f64,
    pub resume_missed: u64,
    pub resume_duplicates: u64,
    pub revalidator_per_s: f64,
    pub revalidator_bulk_calls: usize,
}

const SITE: &str = "bench";

/// A place events are published to and streamed from.
#[allow(clippy::large_enum_variant)] // two of them per run
enum System {
    Spool {
        nats: NatsServer,
        ingest: ServiceProcess,
        delivery: ServiceProcess,
        env: Vec<(&'static str, String)>,
        _dir: tempfile::TempDir,
    },
    Baseline {
        child: Child,
        port: u16,
    },
}

impl System {
    fn name(&self) -> &'static str {
        match self {
            System::Spool { .. } => "spool",
            System::Baseline { .. } => "baseline",
        }
    }

    async fn spool() -> anyhow::Result<System> {
        let nats = NatsServer::start().await;
        let dir = tempfile::tempdir()?;
        let mut site = site_json(SITE);
        site["public"] = true.into();
        let sites = write_sites_file(dir.path(), &[site]);
        // `ServiceProcess::start` also lifts the limits per client address and per site
        // (`process::TEST_LIMITS`): the whole load, 10,000 streams and the webhooks at full
        // speed, comes from 127.0.0.1.
        let env = vec![
            ("NATS_URL", nats.url()),
            ("SPOOL_SITES_FILE", sites.display().to_string()),
            ("RUST_LOG", "warn".to_string()),
        ];
        let ingest = ServiceProcess::start("spool-ingest", &env).await;
        let delivery = ServiceProcess::start("spool-delivery", &env).await;
        Ok(System::Spool {
            nats,
            ingest,
            delivery,
            env,
            _dir: dir,
        })
    }

    fn baseline() -> anyhow::Result<System> {
        use std::io::BufRead as _;
        // Tied to this process like the fixtures' servers: it dies with the suite, even on
        // SIGKILL.
        let mut command = process::tied_command(std::env::current_exe()?);
        command.arg("baseline").stdout(Stdio::piped());
        let mut child = process::spawn_tied(command)?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("baseline stdout"))?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let port = line.trim().trim_start_matches("listening ").parse()?;
        Ok(System::Baseline { child, port })
    }

    fn stream_addr(&self) -> SocketAddr {
        let port = match self {
            System::Spool { delivery, .. } => port_of(&delivery.base_url),
            System::Baseline { port, .. } => *port,
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn stream_path(&self) -> String {
        match self {
            System::Spool { .. } => format!("/v1/sites/{SITE}/events/stream"),
            System::Baseline { .. } => "/stream".into(),
        }
    }

    /// How many times the delivery's streams fell behind their site's channel so far (the
    /// baseline skips what a lagging stream missed, which shows as events not delivered).
    async fn lagged_streams(&self, http: &reqwest::Client) -> anyhow::Result<u64> {
        let System::Spool { delivery, .. } = self else {
            return Ok(0);
        };
        let text = spool_integration_tests::metrics_text(http, &delivery.base_url)
            .await
            .ok_or_else(|| anyhow::anyhow!("scraping the delivery's /metrics failed"))?;
        // The counter appears with the first lag.
        let lagged =
            spool_integration_tests::metric_value(&text, "spool_delivery_streams_lagged_total");
        Ok(lagged.unwrap_or(0.0) as u64)
    }

    /// Resident memory of the streaming server, KiB.
    fn rss_kib(&self) -> u64 {
        match self {
            System::Spool { delivery, .. } => delivery.rss_kib(),
            System::Baseline { child, .. } => rss_of(child.id()),
        }
    }

    /// The event published as number `i`, stamped with `sent_us`.
    fn event_body(i: u64, sent_us: u64) -> String {
        serde_json::json!({
            "type": "content.updated", "collection": "blog",
            "item": { "id": i.to_string(), "slug": format!("p{i}"), "sent_us": sent_us.to_string() },
        })
        .to_string()
    }

    /// How the fan-out publisher reaches this system.
    fn publisher(&self) -> Publisher {
        match self {
            System::Spool { ingest, .. } => Publisher {
                addr: SocketAddr::from(([127, 0, 0, 1], port_of(&ingest.base_url))),
                signed: true,
            },
            System::Baseline { port, .. } => Publisher {
                addr: SocketAddr::from(([127, 0, 0, 1], *port)),
                signed: false,
            },
        }
    }

    /// What the baseline broadcasts for webhook `id` with `body`: the very event JSON the
    /// delivery sends for it (the same mapping, the same fields and sizes), so that both
    /// servers write, and the clients read, the same bytes per event.
    fn delivered_json(id: &str, body: &str, seq: u64) -> String {
        let event = (|| {
            let site: spool_proto::Site = serde_json::from_value(site_json(SITE)).ok()?;
            let payload = serde_json::from_str(body).ok()?;
            let now = time::OffsetDateTime::now_utc();
            let mut event = spool_proto::mapping::to_event(&site, id, payload, now);
            event.seq = seq;
            serde_json::to_string(&event).ok()
        })();
        event.unwrap_or_else(|| body.to_owned())
    }

    /// Publishes one event stamped with `sent_us`; true when accepted.
    async fn publish(&self, http: &reqwest::Client, i: u64, sent_us: u64) -> bool {
        let body = System::event_body(i, sent_us);
        let id = format!("b{i}-{sent_us}");
        match self {
            System::Spool { ingest, .. } => {
                let hook = Webhook::with_body(&id, body.into_bytes());
                hook.send(http, &ingest.base_url, SITE).await.0 == 202
            }
            System::Baseline { port, .. } => http
                .post(format!("http://127.0.0.1:{port}/publish"))
                .body(System::delivered_json(&id, &body, i + 1))
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 202),
        }
    }
}

/// Where and how events are published with raw HTTP/1.1: signed webhooks to the ingest,
/// or plain `POST /publish` to the baseline.
#[derive(Clone, Copy)]
struct Publisher {
    addr: SocketAddr,
    signed: bool,
}

impl Publisher {
    /// The request that publishes event `i`, appended to `out`.
    fn request(self, i: u64, out: &mut Vec<u8>) {
        let body = System::event_body(i, 0);
        if self.signed {
            let hook = Webhook::with_body(&format!("f{i}"), body.into_bytes());
            out.extend_from_slice(
                format!(
                    "POST /v1/sites/{SITE}/webhooks HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\nwebhook-id: {}\r\nwebhook-timestamp: {}\r\nwebhook-signature: {}\r\ncontent-length: {}\r\n\r\n",
                    hook.id,
                    hook.timestamp,
                    hook.signature(),
                    hook.body.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(&hook.body);
        } else {
            let body = System::delivered_json(&format!("f{i}"), &body, i + 1);
            out.extend_from_slice(
                format!(
                    "POST /publish HTTP/1.1\r\nhost: bench\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(body.as_bytes());
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        if let System::Baseline { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Publishes `rate` events per second for `seconds`, each stamped at its send time.
async fn publish_paced(
    system: &System,
    http: &reqwest::Client,
    rate: u64,
    seconds: u64,
    epoch: Instant,
) -> u64 {
    let total = rate * seconds;
    let next = AtomicU64::new(0);
    let sent = AtomicU64::new(0);
    let started = tokio::time::Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let senders = (0..32).map(|_| async {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= total {
                return;
            }
            tokio::time::sleep_until(started + interval.mul_f64(i as f64)).await;
            let stamp = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(0);
            if system.publish(http, i, stamp).await {
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    futures::future::join_all(senders).await;
    sent.load(Ordering::Relaxed)
}

async fn latency(
    system: &System,
    streams: usize,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Latency> {
    let http = reqwest::Client::new();
    let epoch = Instant::now();
    let before = system.rss_kib();
    let options = Arc::new(Options {
        addr: system.stream_addr(),
        path: system.stream_path(),
        last_ids: None,
        keep_ids: false,
    });
    let open = Streams::open(streams, options, epoch);
    open.wait_connected(streams, Duration::from_secs(120))
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await; // let the server's allocations settle
    let idle = system.rss_kib();
    let lagged_before = system.lagged_streams(&http).await?;
    let sampler = async {
        tokio::time::sleep(Duration::from_secs(seconds) / 2).await;
        system.rss_kib()
    };
    let (sent, load) = tokio::join!(publish_paced(system, &http, rate, seconds, epoch), sampler);
    let expected = sent * streams as u64;
    open.wait_events(expected, Duration::from_secs(30)).await;
    let results = open.close().await;
    let lagged_streams = system
        .lagged_streams(&http)
        .await?
        .saturating_sub(lagged_before);
    let mut merged = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut delivered = 0;
    for r in &results {
        merged.add(&r.latency_us)?;
        delivered += r.events;
    }
    let result = Latency {
        system: system.name(),
        streams,
        rate,
        p50_ms: ms(&merged, 0.5),
        p99_ms: ms(&merged, 0.99),
        p999_ms: ms(&merged, 0.999),
        delivered,
        expected,
        rss_idle_kib_per_stream: idle.saturating_sub(before) as f64 / streams as f64,
        rss_load_kib: load,
        lagged_streams,
    };
    eprintln!("  {result:?}");
    Ok(result)
}

/// One latency row on a fresh bare server, then on `spool`, back to back, so that both meet
/// the machine in the same state (a shared machine's speed drifts within minutes). The bare
/// server stops before Spool Live is measured.
async fn latency_pair(
    spool: &System,
    streams: usize,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<[Latency; 2]> {
    let bare = latency(&System::baseline()?, streams, rate, seconds).await?;
    Ok([bare, latency(spool, streams, rate, seconds).await?])
}

/// The steps both systems go through, each side by side: latency at every size and rate,
/// then fan-out.
async fn side_by_side(spool: &System, plan: &Plan, result: &mut Run) -> anyhow::Result<()> {
    for &streams in &plan.streams {
        for &rate in &plan.rates {
            result
                .latency
                .extend(latency_pair(spool, streams, rate, plan.seconds).await?);
        }
    }
    let bare = fanout(
        &System::baseline()?,
        plan.fanout_streams,
        plan.fanout_seconds,
    )
    .await?;
    result.fanout.push(bare);
    let measured = fanout(spool, plan.fanout_streams, plan.fanout_seconds).await?;
    result.fanout.push(measured);
    Ok(())
}

/// One latency row, `runs` times, side by side.
pub async fn latency_row(
    streams: usize,
    rate: u64,
    seconds: u64,
    runs: usize,
) -> anyhow::Result<Vec<Latency>> {
    let spool = System::spool().await?;
    let mut rows = Vec::new();
    for _ in 0..runs {
        rows.extend(latency_pair(&spool, streams, rate, seconds).await?);
    }
    Ok(rows)
}

pub async fn run_all(plan: &Plan, runs: usize) -> anyhow::Result<Vec<Run>> {
    let mut all = Vec::new();
    for run in 1..=runs {
        eprintln!("run {run} of {runs}");
        let mut result = Run::default();
        result.ingest = ingest_alone(plan.ingest_requests).await?;
        let mut spool = System::spool().await?;
        side_by_side(&spool, plan, &mut result).await?;
        result
            .ingest
            .push(ingest_in_system(&spool, plan.ingest_requests).await?);
        result.jetstream_per_s = jetstream(&spool, plan.jetstream_messages).await?;
        result.resume_clients = plan.resume_clients;
        (
            result.resume_seconds,
            result.resume_missed,
            result.resume_duplicates,
        ) = resume_storm(&mut spool, plan.resume_clients).await?;
        (result.revalidator_per_s, result.revalidator_bulk_calls) =
            revalidator(&spool, plan.revalidator_events).await?;
        all.push(result);
    }
    Ok(all)
}
