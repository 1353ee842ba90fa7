//! The soak: steady webhooks for a while, SSE readers that drop their connection at random
//! and resume from their last id, and the delivery and the revalidator restarted every
//! `restart_every` (by turns a rolling restart — the new process first, then SIGTERM to the
//! old — and a crash, SIGKILL). Every acknowledged event must reach every reader exactly
//! once and in order, and the revalidation target at least once; the resident memory of
//! every process and the number of JetStream consumers are sampled, and must stay flat.
//! `make test` runs a short one (`it::soak`), `make soak` the long one on the release build.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::Rng;

use crate::memory::slope;
use crate::nats_server::NatsServer;
use crate::process::{rss_kib, ServiceProcess};
use crate::receiver::TestReceiver;
use crate::webhook::Webhook;
use crate::{eventually, site_json, write_sites_file};

#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub duration: Duration,
    /// Webhooks per second, sent one after another.
    pub rate: u32,
    pub readers: usize,
    /// A reader's connection lasts between `min_connection` and 8 times that, at random.
    pub min_connection: Duration,
    pub restart_every: Duration,
    /// How often memory and consumers are sampled.
    pub sample_every: Duration,
}

/// One sample of the run.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Duration,
    /// RSS (KiB) of nats-server, ingest, delivery, revalidator.
    pub rss: [u64; 4],
    /// Consumers on SPOOL_EVENTS, SPOOL_OUTCOMES and SPOOL_RETRY together.
    pub consumers: usize,
}

pub const PROCESSES: [&str; 4] = [
    "nats-server",
    "spool-ingest",
    "spool-delivery",
    "spool-revalidator",
];

#[derive(Debug, Clone)]
pub struct Report {
    pub plan: Plan,
    /// Webhooks acknowledged (2xx) by the ingest.
    pub acked: usize,
    /// Per reader: events received (once each), missing, received twice or out of order.
    pub delivered: Vec<usize>,
    pub lost: usize,
    pub duplicated: usize,
    /// Acknowledged events the target was never called for.
    pub not_revalidated: usize,
    /// Reader connections made (the first ones and the resumes).
    pub connections: u64,
    pub restarts: usize,
    pub samples: Vec<Sample>,
    /// Consumers before the load, and once the run has settled at its end.
    pub consumers_at_start: usize,
    pub consumers_at_end: usize,
    /// RSS of the delivery and the revalidator just before each restart (KiB): the end of
    /// each process's life.
    pub end_of_life: [Vec<u64>; 2],
}

impl Report {
    /// Growth of a process's RSS in KiB per minute: over the whole run for nats-server and
    /// the ingest, over the ends of life of the restarted ones (Theil–Sen, see
    /// [`slope`]); the first quarter of the run is the warm-up.
    pub fn kib_per_minute(&self, process: usize) -> f64 {
        let warm = self.plan.duration / 4;
        let (xs, ys): (Vec<f64>, Vec<f64>) = match process {
            0 | 1 => self
                .samples
                .iter()
                .filter(|s| s.at >= warm)
                .map(|s| (s.at.as_secs_f64() / 60.0, s.rss[process] as f64))
                .unzip(),
            // A process started early backfills a window the stream hasn't filled yet: only
            // the later half of the lives compare like with like.
            _ => self.end_of_life[process - 2]
                .iter()
                .enumerate()
                .skip(self.end_of_life[process - 2].len() / 2)
                .map(|(i, kib)| {
                    let minutes = (i + 1) as f64 * self.plan.restart_every.as_secs_f64() / 60.0;
                    (minutes, *kib as f64)
                })
                .unzip(),
        };
        slope(&xs, &ys)
    }

    pub fn markdown(&self) -> String {
        let mut out = format!(
            "| written | acknowledged | readers | delivered to each (min) | lost | duplicated | not revalidated | reader connections | restarts | consumers at start / end |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |\n\n",
            self.acked,
            self.acked,
            self.delivered.len(),
            self.delivered.iter().min().copied().unwrap_or(0),
            self.lost,
            self.duplicated,
            self.not_revalidated,
            self.connections,
            self.restarts,
            self.consumers_at_start,
            self.consumers_at_end,
        );
        out.push_str("| process | RSS first (KiB) | RSS last (KiB) | growth (KiB/min) | RSS each minute (MiB) |\n|---|---:|---:|---:|---|\n");
        for (i, name) in PROCESSES.iter().enumerate() {
            let first = self.samples.first().map_or(0, |s| s.rss[i]);
            let last = self.samples.last().map_or(0, |s| s.rss[i]);
            let mut minutes = Vec::new();
            let mut next = Duration::ZERO;
            for sample in &self.samples {
                if sample.at >= next {
                    minutes.push(format!("{:.1}", sample.rss[i] as f64 / 1024.0));
                    next += Duration::from_secs(60);
                }
            }
            out.push_str(&format!(
                "| {name} | {first} | {last} | {:.0} | {} |\n",
                self.kib_per_minute(i),
                minutes.join(" ")
            ));
        }
        out
    }
}

/// The report file: what ran, where, and the tables ([`Report::markdown`]).
pub fn document(report: &Report) -> String {
    let read = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let plan = &report.plan;
    format!(
        "# Soak: steady writes, random disconnects, restarts\n\n\
         {date} on {cpu} ({cores} cores), Linux {kernel}; {rustc}; {nats}. Command: `make soak` \
         ({secs} s, {rate} webhooks/s, {readers} readers, a restart every {restart} s; \
         `SPOOL_SOAK_SECS`, `SPOOL_SOAK_RATE`, `SPOOL_SOAK_READERS`, `SPOOL_SOAK_RESTART_SECS`).\n\n\
         One nats-server and the three services as processes of the release build; one site whose \
         revalidation target answers `200`. A writer sends signed webhooks one after another, each \
         retried with the same id until stored; SSE readers start from the beginning of the stream, \
         drop their connection at random and resume from their last id, at whichever delivery is up; \
         the delivery and the revalidator are replaced at every restart, by turns a rolling restart \
         (the new process ready, then SIGTERM to the old) and a crash (SIGKILL). Then every \
         acknowledged event must have reached every reader exactly once and in order, and the target \
         at least once, and the consumers must be back to their number at start \
         ([integration-tests/src/soak.rs](../integration-tests/src/soak.rs)).\n\n{tables}\n\
         Growth is the Theil–Sen slope after the first quarter of the run; for the restarted \
         services, of the RSS at the end of each process's life over the later half of the lives \
         (the first ones backfill a window the stream has not filled yet). The run fails if a \
         service grows 512 KiB a minute or more; nats-server keeps what it stores (the events, the \
         call records, the message ids of the duplicate window) and is reported, not judged.\n",
        date = time::OffsetDateTime::now_utc().date(),
        kernel = read("uname", &["-r"]),
        rustc = read("rustc", &["--version"]),
        nats = read(&crate::nats_server::binary().display().to_string(), &["--version"]),
        secs = plan.duration.as_secs(),
        rate = plan.rate,
        readers = plan.readers,
        restart = plan.restart_every.as_secs(),
        tables = report.markdown(),
    )
}

/// What the readers and the restarts share.
struct Shared {
    /// The delivery's current base URL (a restart moves it, as a load balancer would).
    delivery: Mutex<String>,
    /// The writer stops.
    stop: AtomicBool,
    connections: AtomicU64,
}

impl Shared {
    fn delivery(&self) -> String {
        self.delivery
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// One reader's record: the seqs it got, in arrival order.
type Got = Arc<Mutex<Vec<u64>>>;

const TOKEN: &str = "rk_test_acme_0123456789";

pub async fn run(plan: Plan) -> Report {
    let nats = NatsServer::start().await;
    let target = TestReceiver::start([]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut site = site_json("acme");
    site["revalidate"] = serde_json::json!([target.target(None)]);
    let sites = write_sites_file(dir.path(), &[site]);
    let mut env = crate::process::service_env(&nats, &sites);
    env.push((
        "_RJEM_MALLOC_CONF",
        "dirty_decay_ms:0,muzzy_decay_ms:0".into(),
    ));
    // A call in flight when the revalidator is killed is made again after the ack wait.
    env.push(("SPOOL_ACK_WAIT", "5s".into()));
    let ingest = ServiceProcess::start("spool-ingest", &env).await;
    let mut delivery = ServiceProcess::start("spool-delivery", &env).await;
    let mut revalidator = ServiceProcess::start("spool-revalidator", &env).await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("NATS"));
    let consumers_at_start = consumers(&js).await;

    let shared = Arc::new(Shared {
        delivery: Mutex::new(delivery.base_url.clone()),
        stop: AtomicBool::new(false),
        connections: AtomicU64::new(0),
    });
    let got: Vec<Got> = (0..plan.readers).map(|_| Got::default()).collect();
    let readers: Vec<_> = got
        .iter()
        .map(|got| tokio::spawn(read(shared.clone(), got.clone(), plan.min_connection)))
        .collect();

    // The writer: one webhook after another at `rate`, each retried until stored.
    let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
    let writer = {
        let (acked, shared, ingest) = (acked.clone(), shared.clone(), ingest.base_url.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut every = tokio::time::interval(Duration::from_secs(1) / plan.rate.max(1));
            let mut n = 0u64;
            while !shared.stop.load(Ordering::Acquire) {
                every.tick().await;
                n += 1;
                let id = format!("soak_{n}");
                let seq = Webhook::published(&id, "blog", &id)
                    .send_until_stored(&http, &ingest, "acme")
                    .await;
                acked
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(seq);
            }
        })
    };

    let started = Instant::now();
    let mut samples = Vec::new();
    let mut end_of_life = [Vec::new(), Vec::new()];
    let mut restarts = 0;
    let mut next_restart = started + plan.restart_every;
    let mut sampler = tokio::time::interval(plan.sample_every);
    while started.elapsed() < plan.duration {
        sampler.tick().await;
        samples.push(Sample {
            at: started.elapsed(),
            rss: [
                nats.pid().map_or(0, rss_kib),
                ingest.rss_kib(),
                delivery.rss_kib(),
                revalidator.rss_kib(),
            ],
            consumers: consumers(&js).await,
        });
        if Instant::now() >= next_restart {
            next_restart += plan.restart_every;
            end_of_life[0].push(delivery.rss_kib());
            end_of_life[1].push(revalidator.rss_kib());
            let crash = restarts % 2 == 1;
            delivery = replace(delivery, "spool-delivery", &env, crash, Some(&shared)).await;
            revalidator = replace(revalidator, "spool-revalidator", &env, crash, None).await;
            restarts += 1;
        }
    }
    shared.stop.store(true, Ordering::Release);
    writer.await.expect("writer");
    let acked: Vec<u64> = acked.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let last = acked.iter().copied().max().unwrap_or(0);

    // Every reader catches up with the last acknowledged event, and the target is called
    // for every one (what is still missing after a minute is reported as lost).
    let wanted: BTreeSet<u64> = acked.iter().copied().collect();
    let revalidated =
        || -> BTreeSet<u64> { target.calls().iter().flat_map(|c| c.seqs()).collect() };
    let caught_up = || {
        got.iter().all(|got| {
            got.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .last()
                .is_some_and(|seq| *seq >= last)
        }) && wanted.is_subset(&revalidated())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !caught_up() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for reader in readers {
        reader.abort();
    }
    let revalidated = revalidated();
    let (mut lost, mut duplicated, mut delivered) = (0, 0, Vec::new());
    for got in &got {
        let got = got.lock().unwrap_or_else(PoisonError::into_inner).clone();
        // An event that comes again, or after a later one, counts as duplicated.
        let mut highest = 0;
        for &seq in &got {
            if seq <= highest {
                duplicated += 1;
            }
            highest = highest.max(seq);
        }
        let once: BTreeSet<u64> = got.iter().copied().collect();
        lost += wanted.difference(&once).count();
        delivered.push(once.intersection(&wanted).count());
    }
    // Consumers of the processes gone are removed by the server once inactive.
    let consumers_at_end = eventually(
        "the consumers back to their number at start",
        Duration::from_secs(60),
        || async {
            let n = consumers(&js).await;
            (n <= consumers_at_start).then_some(n)
        },
    )
    .await;
    Report {
        plan,
        acked: acked.len(),
        delivered,
        lost,
        duplicated,
        not_revalidated: wanted.difference(&revalidated).count(),
        connections: shared.connections.load(Ordering::Relaxed),
        restarts,
        samples,
        consumers_at_start,
        consumers_at_end,
        end_of_life,
    }
}

/// Replaces a service process: a rolling restart (the new one ready, then SIGTERM to the
/// old) or a crash (SIGKILL, then the new one).
async fn replace(
    mut old: ServiceProcess,
    name: &str,
    env: &[(&str, String)],
    crash: bool,
    shared: Option<&Shared>,
) -> ServiceProcess {
    if crash {
        old.kill9().await;
    }
    let new = ServiceProcess::start(name, env).await;
    if let Some(shared) = shared {
        *shared
            .delivery
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = new.base_url.clone();
    }
    if !crash {
        old.sigterm();
        old.wait_exit(Duration::from_secs(30)).await;
    }
    new
}

/// A reader: connects (from the start of the stream the first time, then from its last id),
/// reads for a random while, drops the connection, and again, until aborted; a failed
/// connection is retried after a short pause, as EventSource does.
async fn read(shared: Arc<Shared>, got: Got, min_connection: Duration) {
    let http = reqwest::Client::new();
    let mut last: u64 = 0;
    loop {
        let lasting = min_connection * rand::rng().random_range(1..=8);
        let url = format!("{}/v1/sites/acme/events/stream", shared.delivery());
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let response = http
            .get(&url)
            .bearer_auth(TOKEN)
            .header("last-event-id", last.to_string())
            .send()
            .await;
        let Ok(response) = response.and_then(|r| r.error_for_status()) else {
            // EventSource's reconnection delay: the behaviour this stands in for.
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut events = frames(response);
        let until = tokio::time::sleep(lasting);
        tokio::pin!(until);
        loop {
            tokio::select! {
                frame = events.next() => match frame {
                    Some((id, kind)) => {
                        if kind == "message" {
                            got.lock().unwrap_or_else(PoisonError::into_inner).push(id);
                        }
                        if id > 0 {
                            last = id;
                        }
                    }
                    None => break,
                },
                _ = &mut until => break,
            }
        }
    }
}

/// A response's SSE frames as (`id`, event type), parsed by `eventsource-stream`.
fn frames(response: reqwest::Response) -> futures::stream::BoxStream<'static, (u64, String)> {
    use eventsource_stream::Eventsource;
    response
        .bytes_stream()
        .eventsource()
        .take_while(|e| futures::future::ready(e.is_ok()))
        .filter_map(|e| async move {
            let e = e.ok()?;
            Some((e.id.parse().unwrap_or(0), e.event))
        })
        .boxed()
}

/// Consumers on the streams the services read.
async fn consumers(js: &async_nats::jetstream::Context) -> usize {
    let mut total = 0;
    for name in [
        spool_proto::names::EVENTS_STREAM,
        spool_proto::names::OUTCOMES_STREAM,
        spool_proto::names::RETRY_STREAM,
    ] {
        if let Ok(mut stream) = js.get_stream(name).await {
            if let Ok(info) = stream.info().await {
                total += info.state.consumer_count;
            }
        }
    }
    total
}
