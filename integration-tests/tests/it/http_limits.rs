//! Connections that hold a server without sending a request are closed, and a process
//! keeps at most `SPOOL_MAX_CONNECTIONS` open (every service shares this accept loop).

use std::time::{Duration, Instant};

use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::services::{ingest_config, TestService};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (EOF or reset); how long that took, or
/// `None` if it stayed open for `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + within).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

fn address(service: &TestService) -> String {
    service.base_url.trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn half_sent_heads_and_idle_keep_alives_are_closed_after_the_header_timeout() {
    let nats = NatsServer::start().await;
    let mut config = ingest_config(&nats.url());
    config.common.header_timeout = Duration::from_millis(500);
    let ingest = TestService::start(config).await;

    // Half a request head, then nothing.
    let mut half = TcpStream::connect(address(&ingest)).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let took = closed_within(&mut half, Duration::from_secs(5)).await;
    assert!(
        took.is_some(),
        "a half-sent head held its connection for 5 s"
    );

    // A whole request, its answer, then an idle keep-alive connection.
    let mut idle = TcpStream::connect(address(&ingest)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let took = closed_within(&mut idle, Duration::from_secs(5)).await;
    assert!(
        took.is_some(),
        "an idle keep-alive connection stayed open for 5 s"
    );
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once_and_served_again_below_it() {
    let nats = NatsServer::start().await;
    let mut config = ingest_config(&nats.url());
    config.common.max_connections = 3;
    let ingest = TestService::start(config).await;

    // Hold connections until one is closed unanswered: that is the cap (the test client's
    // own pooled connection may be one of the three).
    let mut held = Vec::new();
    let refused_at = loop {
        let mut stream = TcpStream::connect(address(&ingest)).await.unwrap();
        let _ = stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
                held.push(stream);
            }
            Ok(_) => break held.len(),
            Err(_) => panic!("neither served nor closed within 5 s"),
        }
        assert!(held.len() <= 3, "more than 3 connections served at once");
    };
    assert!((2..=3).contains(&refused_at), "refused after {refused_at}");

    drop(held);
    spool_integration_tests::eventually(
        "a connection served again",
        Duration::from_secs(10),
        || async {
            let status = ingest
                .http
                .get(format!("{}/healthz", ingest.base_url))
                .send()
                .await
                .ok()?
                .status();
            status.is_success().then_some(())
        },
    )
    .await;
}
