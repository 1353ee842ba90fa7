//! A client that stops reading is disconnected, while a fast one keeps receiving, and the
//! server's memory does not grow with what the stuck client failed to read.

use std::time::Duration;

use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::process::ServiceProcess;
use spool_integration_tests::services::{ingest_config, TestService};
use spool_integration_tests::sse::SseClient;
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{
    eventually_metric, metric_value, metrics_text, site_json, write_sites_file,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Opens an SSE stream on a socket with a tiny receive buffer, and never reads it.
async fn stuck_client(base_url: &str) -> tokio::net::TcpStream {
    let addr: std::net::SocketAddr = base_url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET /v1/sites/acme/events/stream HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// A webhook whose event is about `size` bytes (in a field visitors see).
fn big(i: usize, size: usize) -> Webhook {
    let body = serde_json::json!({
        "type": "content.published", "collection": "blog",
        "item": { "id": i.to_string(), "slug": format!("p{i}"), "title": "x".repeat(size) },
    });
    Webhook::with_body(&format!("big{i}"), body.to_string().into_bytes())
}

/// NATS, an in-process ingest, and the delivery binary with a public site `acme` and
/// `env` on top.
struct System {
    ingest: TestService,
    delivery: ServiceProcess,
    _nats: NatsServer,
    _dir: tempfile::TempDir,
}

impl System {
    async fn start(env: &[(&str, String)]) -> System {
        let nats = NatsServer::start().await;
        let ingest = TestService::start(ingest_config(&nats.url())).await;
        let dir = tempfile::tempdir().unwrap();
        let mut site = site_json("acme");
        site["public"] = true.into();
        let sites = write_sites_file(dir.path(), &[site]);
        let mut all = vec![
            ("NATS_URL", nats.url()),
            ("SPOOL_SITES_FILE", sites.display().to_string()),
        ];
        all.extend(env.iter().cloned());
        let delivery = ServiceProcess::start("spool-delivery", &all).await;
        System {
            ingest,
            delivery,
            _nats: nats,
            _dir: dir,
        }
    }
}

#[tokio::test]
async fn a_stuck_client_is_dropped_while_a_fast_one_gets_everything_and_memory_stays_bounded() {
    const EVENTS: usize = 120;
    const SIZE: usize = 200 * 1024;
    let system = System::start(&[
        ("SPOOL_SLOW_CLIENT_TIMEOUT", "300ms".into()),
        ("SPOOL_REPLAY_WINDOW_BYTES", (1024 * 1024).to_string()),
    ])
    .await;
    let (ingest, delivery) = (&system.ingest, &system.delivery);
    let http = reqwest::Client::new();
    let mut stuck = Vec::new();
    for _ in 0..3 {
        stuck.push(stuck_client(&delivery.base_url).await);
    }
    let mut fast =
        SseClient::connect(http.get(delivery.url("/v1/sites/acme/events/stream")), None).await;
    assert_eq!(
        fast.next_event(Duration::from_secs(10))
            .await
            .unwrap()
            .event,
        "ready"
    );
    let open = "spool_delivery_open_connections{kind=\"sse\"} 4";
    eventually_metric(&http, &delivery.base_url, open, Duration::from_secs(10)).await;
    let rss_before = delivery.rss_kib();

    // ~24 MB of events: far more than the stuck sockets' buffers can take.
    let reader = tokio::spawn(async move {
        let mut ids = Vec::new();
        while ids.len() < EVENTS {
            ids.push(
                fast.next_message(Duration::from_secs(20))
                    .await
                    .expect("fast client")
                    .id,
            );
        }
        ids
    });
    for i in 0..EVENTS {
        let (status, body) = big(i, SIZE)
            .send(&ingest.http, &ingest.base_url, "acme")
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let ids = reader.await.unwrap();
    assert_eq!(ids.len(), EVENTS);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order");

    let dropped = "spool_delivery_slow_clients_dropped_total 3";
    eventually_metric(&http, &delivery.base_url, dropped, Duration::from_secs(20)).await;
    // Their connections are closed: reading what was buffered ends in EOF (or a reset).
    for mut socket in stuck {
        let mut sink = vec![0u8; 64 * 1024];
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match socket.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a stuck client's connection is still open");
    }
    // Three clients that read nothing of ~24 MB each cost the server far less than that.
    let grown_mib = delivery.rss_kib().saturating_sub(rss_before) / 1024;
    assert!(grown_mib < 32, "delivery RSS grew by {grown_mib} MiB");
}

/// The sequence numbers (`id:` lines) of the content event frames (not `ready` or
/// `position`, which carry an `id:` too) in a raw SSE response read so far, parsed as it
/// grows: complete frames only. Frames are never split across chunks, so the chunked
/// encoding's size lines stay apart.
#[derive(Default)]
struct Ids {
    raw: Vec<u8>,
    /// `raw` is parsed up to here (a frame boundary).
    parsed: usize,
    ids: Vec<u64>,
}

impl Ids {
    fn push(&mut self, bytes: &[u8]) {
        self.raw.extend_from_slice(bytes);
        let new = &self.raw[self.parsed..];
        let Some(end) = new.windows(2).rposition(|w| w == b"\n\n") else {
            return;
        };
        let text = String::from_utf8_lossy(&new[..end]).into_owned();
        self.parsed += end + 2;
        for frame in text.split("\n\n") {
            if frame.lines().any(|line| line.starts_with("event: ")) {
                continue;
            }
            if let Some(id) = frame.lines().find_map(|line| line.strip_prefix("id: ")) {
                self.ids.push(id.trim().parse().unwrap());
            }
        }
    }
}

#[tokio::test]
async fn a_client_that_pauses_past_its_sites_channel_catches_up_with_every_event_in_order() {
    // More events than a site's live channel holds (1024), each larger than what the
    // paused client's socket can take, so the live side moves on without it.
    const EVENTS: u64 = 1500;
    const SIZE: usize = 8 * 1024;
    let system = System::start(&[("SPOOL_SLOW_CLIENT_TIMEOUT", "120s".into())]).await;
    let (ingest, delivery) = (&system.ingest, &system.delivery);
    let mut paused = stuck_client(&delivery.base_url).await;
    let http = reqwest::Client::new();
    let open = "spool_delivery_open_connections{kind=\"sse\"} 1";
    eventually_metric(&http, &delivery.base_url, open, Duration::from_secs(10)).await;
    for i in 0..EVENTS as usize {
        let (status, body) = big(i, SIZE)
            .send(&ingest.http, &ingest.base_url, "acme")
            .await;
        assert_eq!(status, 202, "{body}");
    }

    // Reads again: everything arrives, once each, in order.
    let mut got = Ids::default();
    let mut chunk = vec![0u8; 64 * 1024];
    let read_all = tokio::time::timeout(Duration::from_secs(60), async {
        while got.ids.len() < EVENTS as usize {
            let n = paused.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the stream ended early");
            got.push(&chunk[..n]);
        }
    })
    .await;
    assert!(read_all.is_ok(), "got {} events", got.ids.len());
    assert_eq!(got.ids, (1..=EVENTS).collect::<Vec<_>>());
    let text = metrics_text(&http, &delivery.base_url).await.unwrap();
    assert!(
        text.contains("spool_delivery_replays_total{source=\"window\"}"),
        "the client caught up from the window after falling behind the channel"
    );
    let lagged = metric_value(&text, "spool_delivery_streams_lagged_total");
    assert!(
        lagged.is_some_and(|n| n >= 1.0),
        "the lag is counted: {lagged:?}"
    );
}
