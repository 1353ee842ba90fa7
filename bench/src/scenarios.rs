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

/// Deliveries per second at saturation, and the evidence that it was saturation.
#[derive(Debug, Clone, Serialize)]
pub struct Fanout {
    pub system: &'static str,
    pub per_s: f64,
    /// Events published and not yet received per stream, over the measured window (sampled
    /// every 5 ms): the mean, and the share of samples below one event (the server may have
    /// been waiting for the publisher).
    pub mean_backlog: f64,
    pub starved: f64,
    pub published_per_s: f64,
}

/// Events per stream the fan-out publisher keeps published and not yet received: enough
/// that the server never waits for the next event, well within every queue on the way
/// (both systems' 1,024-event channels), so that none overflows and nothing is skipped.
pub const FANOUT_BACKLOG: f64 = 32.0;
/// Keep-alive connections the fan-out publisher uses, and the most requests it pipelines
/// on one in a burst.
pub const FANOUT_CONNECTIONS: usize = 16;
const FANOUT_BURST: usize = 16;

/// Reads one HTTP/1.1 response (with a `content-length` body); returns its status.
async fn read_response<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<u16> {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut length = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await?;
    Ok(status)
}

/// Deliveries per second at saturation. The publisher keeps about `FANOUT_BACKLOG` events
/// per stream sent and not yet received, topping up in pipelined bursts
/// over `FANOUT_CONNECTIONS` keep-alive connections, the same way for both systems, so that
/// the server is never waiting for an event; deliveries are counted over `seconds` once
/// that backlog is established (after a 0.5 s warm-up).
async fn fanout(system: &System, streams: usize, seconds: u64) -> anyhow::Result<Fanout> {
    use tokio::io::AsyncWriteExt as _;
    let (connections, target, burst) = (FANOUT_CONNECTIONS, FANOUT_BACKLOG, FANOUT_BURST);
    let epoch = Instant::now();
    let options = Arc::new(Options {
        addr: system.stream_addr(),
        path: system.stream_path(),
        last_ids: None,
        keep_ids: false,
    });
    let open = Streams::open(streams, options, epoch);
    open.wait_connected(streams, Duration::from_secs(120))
        .await?;
    // Events published or being published, and not refused.
    let outstanding = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let backlog = {
        let (outstanding, events) = (outstanding.clone(), open.events.clone());
        move || {
            outstanding.load(Ordering::Relaxed) as f64
                - events.load(Ordering::Relaxed) as f64 / streams as f64
        }
    };
    // On a thread of its own, so that it tops up at once instead of waiting behind the load
    // clients' tasks.
    let publisher = system.publisher();
    let publishing = {
        let (outstanding, stop, backlog) = (outstanding.clone(), stop.clone(), backlog.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let next_id = AtomicU64::new(0);
            let connection = || async {
                let socket = tokio::net::TcpStream::connect(publisher.addr).await?;
                socket.set_nodelay(true)?;
                let (read, mut write) = socket.into_split();
                let mut read = tokio::io::BufReader::new(read);
                let mut requests = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let missing = (target - backlog()) / connections as f64;
                    if missing < 1.0 / connections as f64 {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                        continue;
                    }
                    let n = (missing.ceil() as usize).clamp(1, burst);
                    outstanding.fetch_add(n as u64, Ordering::Relaxed);
                    requests.clear();
                    for _ in 0..n {
                        publisher.request(next_id.fetch_add(1, Ordering::Relaxed), &mut requests);
                    }
                    write.write_all(&requests).await?;
                    for _ in 0..n {
                        if read_response(&mut read).await? != 202 {
                            outstanding.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                }
                anyhow::Ok(())
            };
            runtime.block_on(async {
                for done in futures::future::join_all((0..connections).map(|_| connection())).await
                {
                    done?;
                }
                anyhow::Ok(())
            })
        })
    };
    let measure = async {
        // Warm-up: the backlog builds up and the servers reach their pace.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (started, delivered_before, published_before) = (
            Instant::now(),
            open.events.load(Ordering::Relaxed),
            outstanding.load(Ordering::Relaxed),
        );
        let (mut starved, mut sum, mut samples) = (0u32, 0.0, 0u32);
        while started.elapsed() < Duration::from_secs(seconds) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let b = backlog();
            sum += b;
            samples += 1;
            if b < 1.0 {
                starved += 1;
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let delivered = open.events.load(Ordering::Relaxed) - delivered_before;
        let published = outstanding.load(Ordering::Relaxed) - published_before;
        stop.store(true, Ordering::Relaxed);
        Fanout {
            system: system.name(),
            per_s: delivered as f64 / elapsed,
            mean_backlog: sum / f64::from(samples.max(1)),
            starved: f64::from(starved) / f64::from(samples.max(1)),
            published_per_s: published as f64 / elapsed,
        }
    };
    let result = measure.await;
    open.close().await;
    tokio::task::spawn_blocking(move || publishing.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the fan-out publisher panicked"))??;
    println!(
        "  fan-out {}: {:.0} deliveries/s ({streams} streams, {:.0} events/s published); backlog {:.1} events per stream on average, below 1 for {:.1} % of the time",
        result.system, result.per_s, result.published_per_s, result.mean_backlog, result.starved * 100.0
    );
    Ok(result)
}

/// Signed webhooks/s through the ingest at `INGEST_CONCURRENCY`, each answered 202 only
/// after JetStream's ack. As light a client as `make bench-ingest`'s: every webhook is built
/// and signed before the clock starts (signing is the CMS's cost), one keep-alive connection
/// per worker, opened by a warm-up that is not counted.
async fn measure_ingest(
    base_url: &str,
    site: &str,
    requests: usize,
    setup: &'static str,
) -> anyhow::Result<Ingest> {
    /// One ready-to-send webhook: the headers that sign it and its body.
    struct Signed {
        id: String,
        timestamp: String,
        signature: String,
        body: bytes::Bytes,
    }
    static BATCH: AtomicU64 = AtomicU64::new(0);
    let batch = BATCH.fetch_add(1, Ordering::Relaxed);
    let sign = |i: usize| {
        let hook = Webhook::published(&format!("ingest{batch}-{i}"), "blog", &i.to_string());
        Signed {
            signature: hook.signature(),
            timestamp: hook.timestamp.to_string(),
            body: bytes::Bytes::from(hook.body),
            id: hook.id,
        }
    };
    let warm_up = INGEST_CONCURRENCY * 8;
    let hooks: Arc<Vec<Signed>> = Arc::new((0..warm_up + requests).map(sign).collect());
    let url: Arc<str> = format!("{base_url}/v1/sites/{site}/webhooks").into();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(INGEST_CONCURRENCY)
        .build()?;
    // Sends hooks[from..to] with INGEST_CONCURRENCY workers (tasks of their own, spread
    // over the runtime's threads); returns each accepted webhook's latency.
    let send = |from: usize, to: usize| {
        let next = Arc::new(AtomicU64::new(from as u64));
        let workers: Vec<_> = (0..INGEST_CONCURRENCY)
            .map(|_| {
                let (hooks, url, http, next) =
                    (hooks.clone(), url.clone(), http.clone(), next.clone());
                tokio::spawn(async move {
                    let (mut latencies, mut failed) = (Vec::new(), 0u64);
                    loop {
                        let i = usize::try_from(next.fetch_add(1, Ordering::Relaxed))
                            .unwrap_or(usize::MAX);
                        let Some(hook) = hooks.get(i).filter(|_| i < to) else {
                            return (latencies, failed);
                        };
                        let t = Instant::now();
                        let answer = http
                            .post(&*url)
                            .header("content-type", "application/json")
                            .header("webhook-id", &hook.id)
                            .header("webhook-timestamp", &hook.timestamp)
                            .header("webhook-signature", &hook.signature)
                            .body(hook.body.clone())
                            .send()
                            .await;
                        let accepted = match answer {
                            Ok(r) => r.status().as_u16() == 202 && r.bytes().await.is_ok(),
                            Err(_) => false,
                        };
                        if accepted {
                            latencies.push(t.elapsed());
                        } else {
                            failed += 1;
                        }
                    }
                })
            })
            .collect();
        async move {
            let (mut latencies, mut failed) = (Vec::new(), 0);
            for worker in workers {
                if let Ok((l, f)) = worker.await {
                    latencies.extend(l);
                    failed += f;
                }
            }
            (latencies, failed)
        }
    };
    send(0, warm_up).await;
    let started = Instant::now();
    let (mut latencies, failed) = send(warm_up, warm_up + requests).await;
    let elapsed = started.elapsed();
    latencies.sort();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * q) as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let result = Ingest {
        setup,
        per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        failed,
    };
    println!(
        "  ingest ({setup}): {:.0} webhooks/s, p50 {:.2} ms, p99 {:.2} ms, {failed} failed",
        result.per_s, result.p50_ms, result.p99_ms
    );
    Ok(result)
}

/// The ingest with nothing but its nats-server: at `warn` (as every service of the suite)
/// and at the default `info`, each a fresh `spool-ingest` process.
async fn ingest_alone(requests: usize) -> anyhow::Result<Vec<Ingest>> {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir()?;
    let sites = write_sites_file(dir.path(), &[site_json(SITE)]);
    let mut results = Vec::new();
    for (setup, level) in [(INGEST_ALONE, "warn"), (INGEST_ALONE_INFO, "info")] {
        let env = vec![
            ("NATS_URL", nats.url()),
            ("SPOOL_SITES_FILE", sites.display().to_string()),
            ("RUST_LOG", level.to_string()),
        ];
        let ingest = ServiceProcess::start("spool-ingest", &env).await;
        results.push(measure_ingest(&ingest.base_url, SITE, requests, setup).await?);
    }
    Ok(results)
}

/// The ingest of the running system (a delivery consuming every event meanwhile).
async fn ingest_in_system(system: &System, requests: usize) -> anyhow::Result<Ingest> {
    let System::Spool { ingest, .. } = system else {
        anyhow::bail!("ingest needs the spool system")
    };
    measure_ingest(&ingest.base_url, SITE, requests, INGEST_SYSTEM).await
}

/// Raw JetStream publish-acks/s on the same server: the bound for the ingest.
async fn jetstream(system: &System, messages: usize) -> anyhow::Result<f64> {
    let System::Spool { nats, .. } = system else {
        anyhow::bail!("needs the spool system")
    };
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let payload = bytes::Bytes::from(vec![b'x'; 400]);
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..messages {
        if in_flight.len() >= 256 {
            if let Some(r) = in_flight.next().await {
                let _: Result<_, _> = r;
            }
        }
        let ack = js.publish("bench.raw", payload.clone()).await?;
        in_flight.push(std::future::IntoFuture::into_future(ack));
    }
    while in_flight.next().await.is_some() {}
    let per_s = messages as f64 / started.elapsed().as_secs_f64();
    eprintln!("  raw JetStream: {per_s:.0} publish-acks/s");
    Ok(per_s)
}

/// Clients resume after a delivery restart: time until all caught up, and what was missed.
async fn resume_storm(system: &mut System, clients: usize) -> anyhow::Result<(f64, u64, u64)> {
    let http = reqwest::Client::new();
    let epoch = Instant::now();
    let options = |system: &System, last_ids: Option<Vec<u64>>| {
        Arc::new(Options {
            addr: system.stream_addr(),
            path: system.stream_path(),
            keep_ids: last_ids.is_some(),
            last_ids,
        })
    };
    let open = Streams::open(clients, options(system, None), epoch);
    open.wait_connected(clients, Duration::from_secs(120))
        .await?;
    let first = System::publish_n(system, &http, 5, epoch).await;
    open.wait_events((first * clients) as u64, Duration::from_secs(60))
        .await;
    // The deploy: the process goes (its streams end), events keep coming, a new one starts.
    let System::Spool { delivery, .. } = &mut *system else {
        anyhow::bail!("needs the spool system")
    };
    delivery.sigterm();
    delivery.wait_exit(Duration::from_secs(30)).await;
    let results = open.close().await;
    let last_ids: Vec<u64> = results.iter().map(|r| r.last_id.unwrap_or(0)).collect();
    let while_down = System::publish_n(system, &http, 50, epoch).await as u64;
    let System::Spool { delivery, env, .. } = &mut *system else {
        anyhow::bail!("needs the spool system")
    };
    *delivery = ServiceProcess::start("spool-delivery", env).await;
    let started = Instant::now();
    let open = Streams::open(clients, options(system, Some(last_ids.clone())), epoch);
    let caught_up = open
        .wait_events(while_down * clients as u64, Duration::from_secs(60))
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let (open_connected, open_events) = (
        open.connected.load(Ordering::Relaxed),
        open.events.load(Ordering::Relaxed),
    );
    let results = open.close().await;
    // Exactly the events after each client's id, once each, in order.
    let stream_last = last_ids.iter().copied().max().unwrap_or(0) + while_down;
    let (mut missed, mut duplicates) = (0u64, 0u64);
    for (r, last) in results.iter().zip(&last_ids) {
        let want: Vec<u64> = (last + 1..=stream_last).collect();
        missed += want.iter().filter(|s| !r.ids.contains(s)).count() as u64;
        duplicates += r.ids.len().saturating_sub(want.len()) as u64;
    }
    if !caught_up {
        println!(
            "  resume storm: not all caught up within 60 s ({} of {clients} connected, {} events)",
            open_connected, open_events
        );
    }
    eprintln!("  resume storm: {clients} clients caught up on {while_down} events in {seconds:.2} s; {missed} missed, {duplicates} duplicates");
    Ok((seconds, missed, duplicates))
}

impl System {
    /// Publishes `n` events one by one (each acknowledged); returns how many.
    async fn publish_n(system: &System, http: &reqwest::Client, n: usize, epoch: Instant) -> usize {
        let mut ok = 0;
        for i in 0..n {
            let stamp = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(0);
            if system
                .publish(http, 1_000_000 + i as u64 + stamp, stamp)
                .await
            {
                ok += 1;
            }
        }
        ok
    }
}

async fn revalidator(system: &System, events: usize) -> anyhow::Result<(f64, usize)> {
    let System::Spool { nats, .. } = system else {
        anyhow::bail!("needs the spool system")
    };
    // Its own site and stream: the revalidator only sees events published after it starts.
    let target = TestReceiver::start([]).await;
    let dir = tempfile::tempdir()?;
    let mut site = site_json("reval");
    site["revalidate"] = serde_json::json!([target.target(None)]);
    let sites = write_sites_file(dir.path(), &[site]);
    let env = vec![
        ("NATS_URL", nats.url()),
        ("SPOOL_SITES_FILE", sites.display().to_string()),
        ("RUST_LOG", "warn".to_string()),
        // The target listens on loopback.
        (
            "SPOOL_ALLOWED_TARGET_NETWORKS",
            LOOPBACK_TARGET_NETWORKS.to_string(),
        ),
    ];
    let ingest = ServiceProcess::start("spool-ingest", &env).await;
    let _revalidator = ServiceProcess::start("spool-revalidator", &env).await;
    let http = reqwest::Client::new();
    let publish = |prefix: &'static str, count: usize| {
        let (http, base) = (http.clone(), ingest.base_url.clone());
        async move {
            let next = AtomicU64::new(0);
            let senders = (0..32).map(|_| async {
                let mut seqs = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count as u64 {
                        return seqs;
                    }
                    let (status, body) =
                        Webhook::published(&format!("{prefix}{i}"), "blog", &i.to_string())
                            .send(&http, &base, "reval")
                            .await;
                    if status == 202 {
                        seqs.extend(body["seq"].as_u64());
                    }
                }
            });
            futures::future::join_all(senders)
                .await
                .into_iter()
                .flatten()
                .collect::<Vec<u64>>()
        }
    };
    let started = Instant::now();
    let seqs = publish("r", events).await;
    target.wait_seqs(&seqs, Duration::from_secs(300)).await;
    let per_s = seqs.len() as f64 / started.elapsed().as_secs_f64();
    let before = target.calls().len();
    let bulk = publish("bulk", 500).await;
    let calls = target
        .wait_seqs(&bulk, Duration::from_secs(120))
        .await
        .len()
        - before;
    eprintln!("  revalidator: {per_s:.0} events/s end to end; a 500-item bulk publish became {calls} calls");
    Ok((per_s, calls))
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
