//! A light SSE load client: thousands of raw TCP connections, each parsing only what the
//! measurement needs (`id:`, `event: ready`, and the `sent_us` stamp in `data:`), so that
//! the load generator costs as little of the shared cores as possible. The same client
//! measures Spool Live and the bare baseline.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What one client saw.
pub struct ClientResult {
    pub latency_us: Histogram<u64>,
    pub events: u64,
    pub last_id: Option<u64>,
    /// Sequence ids received, in order (only kept when asked for: resume checks).
    pub ids: Vec<u64>,
}

pub struct Streams {
    tasks: Vec<JoinHandle<ClientResult>>,
    pub connected: Arc<AtomicUsize>,
    pub events: Arc<AtomicU64>,
    stop: CancellationToken,
}

/// Where a client stamps the latency from: microseconds since `epoch`, written by the
/// publisher into the event as `"sent_us":"<n>"`.
fn sent_us(line: &str) -> Option<u64> {
    let rest = line.split("\"sent_us\":\"").nth(1)?;
    rest.split('"').next()?.parse().ok()
}

pub struct Options {
    pub addr: SocketAddr,
    pub path: String,
    /// `Last-Event-ID` per client (resume storm).
    pub last_ids: Option<Vec<u64>>,
    pub keep_ids: bool,
}

impl Streams {
    /// Opens `n` streams; `connected` counts those whose response started.
    pub fn open(n: usize, options: Arc<Options>, epoch: Instant) -> Streams {
        let connected = Arc::new(AtomicUsize::new(0));
        let events = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let tasks = (0..n)
            .map(|i| {
                let (options, connected, events, stop) = (
                    options.clone(),
                    connected.clone(),
                    events.clone(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    let last_id = options
                        .last_ids
                        .as_ref()
                        .and_then(|ids| ids.get(i).copied());
                    let mut result = ClientResult {
                        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)
                            .expect("histogram bounds"),
                        events: 0,
                        last_id,
                        ids: Vec::new(),
                    };
                    tokio::select! {
                        _ = run(&options, i, last_id, &connected, &events, epoch, &mut result) => {}
                        _ = stop.cancelled() => {}
                    }
                    result
                })
            })
            .collect();
        Streams {
            tasks,
            connected,
            events,
            stop,
        }
    }

    /// Waits until every stream is connected; returns how long that took.
    pub async fn wait_connected(&self, n: usize, within: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        while self.connected.load(Ordering::Relaxed) < n {
            anyhow::ensure!(
                started.elapsed() < within,
                "only {} of {n} streams connected after {within:?}",
                self.connected.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(started.elapsed())
    }

    /// Closes every stream and collects what each saw.
    pub async fn close(self) -> Vec<ClientResult> {
        self.stop.cancel();
        let mut out = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            if let Ok(result) = task.await {
                out.push(result);
            }
        }
        out
    }

    /// Waits until the clients have received `total` events together, or `within` passed.
    pub async fn wait_events(&self, total: u64, within: Duration) -> bool {
        let started = Instant::now();
        while self.events.load(Ordering::Relaxed) < total {
            if started.elapsed() > within {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

async fn run(
    options: &Options,
    index: usize,
    last_id: Option<u64>,
    connected: &AtomicUsize,
    events: &AtomicU64,
    epoch: Instant,
    result: &mut ClientResult,
) {
    // Connection attempts can fail briefly under a storm (backlog): retry a few times.
    let mut stream = None;
    for attempt in 0..200u64 {
        // Spread the clients over 127.0.0.2–17: each source address has its own ephemeral
        // ports, so tens of thousands of connections (and their TIME_WAITs) fit.
        let source = SocketAddr::from(([127, 0, 0, 2 + (index % 16) as u8], 0));
        let connect = async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(source)?;
            socket.connect(options.addr).await
        };
        match connect.await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20 * (attempt + 1).min(10))).await,
        }
    }
    let Some(mut stream) = stream else {
        eprintln!("  load client: cannot connect to {}", options.addr);
        return;
    };
    let _ = stream.set_nodelay(true);
    let resume = last_id
        .map(|id| format!("Last-Event-ID: {id}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n{resume}\r\n",
        options.path
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return;
    }
    let mut reader = BufReader::with_capacity(8 * 1024, stream);
    let mut line = String::new();
    let mut counted = false;
    loop {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !counted && line.starts_with("HTTP/1.1 ") && !line.starts_with("HTTP/1.1 200") {
            eprintln!("  load client: {}", line.trim());
        }
        if !counted && line.starts_with("HTTP/1.1 200") {
            counted = true;
            connected.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if let Some(id) = line.strip_prefix("id: ") {
            if let Ok(id) = id.trim().parse::<u64>() {
                result.last_id = Some(id);
                if options.keep_ids {
                    result.ids.push(id);
                }
            }
        } else if line.starts_with("data: ") {
            if let Some(sent) = sent_us(&line) {
                let now = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                let _ = result.latency_us.record(now.saturating_sub(sent).max(1));
                result.events += 1;
                events.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stamps_are_found() {
        assert_eq!(
            super::sent_us(r#"data: {"item":{"sent_us":"1234","id":"1"}}"#),
            Some(1234)
        );
        assert_eq!(super::sent_us("data: {}"), None);
    }
}
