//! The fan-out at saturation: deliveries per second, each system its own server process.

use super::*;

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
pub(super) async fn fanout(
    system: &System,
    streams: usize,
    seconds: u64,
) -> anyhow::Result<Fanout> {
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
