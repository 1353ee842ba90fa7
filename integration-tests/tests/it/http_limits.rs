//! Connections that hold a server without sending a request are closed, and a process
//! keeps at most `SPOOL_MAX_CONNECTIONS` open (every service shares this accept loop), at
//! most `SPOOL_MAX_CONNECTIONS_PER_IP` per client address, and answers a client address
//! past `SPOOL_REQUESTS_PER_IP_RATE` / `_BURST` with 429. The ingest takes at most
//! `SPOOL_WEBHOOK_RATE` / `_BURST` signed webhooks per site.

use std::time::{Duration, Instant};

use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::services::{ingest_config, TestService};
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{eventually, metric_value, metrics_text, read_events, site_json};
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

/// Opens a connection and sends a request on it: `Some(stream)` if it was answered (the
/// connection is kept open), `None` if the server closed it unanswered.
async fn hold(service: &TestService) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(address(service)).await.unwrap();
    let _ = stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => {
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
            Some(stream)
        }
        Ok(_) => None,
        Err(_) => panic!("neither served nor closed within 5 s"),
    }
}

/// The value of `metric` (with its labels) on the service's `/metrics`, 0 if absent.
async fn metric(service: &TestService, metric: &str) -> f64 {
    let text = metrics_text(&service.http, &service.base_url)
        .await
        .unwrap_or_default();
    metric_value(&text, metric).unwrap_or(0.0)
}

#[tokio::test]
async fn connections_past_the_cap_per_address_are_closed_at_once_and_served_again_below_it() {
    let nats = NatsServer::start().await;
    let mut config = ingest_config(&nats.url());
    config.common.max_connections_per_ip = 3;
    let ingest = TestService::start(config).await;

    // Every connection of this test comes from 127.0.0.1 (the test client's own pooled
    // connection may be one of the three).
    let mut held = Vec::new();
    let refused_at = loop {
        match hold(&ingest).await {
            Some(stream) => held.push(stream),
            None => break held.len(),
        }
        assert!(
            held.len() <= 3,
            "more than 3 connections of one address served"
        );
    };
    assert!((2..=3).contains(&refused_at), "refused after {refused_at}");

    // One closes: a new connection of the address is served again.
    held.pop();
    let again = eventually("a connection served again", Duration::from_secs(10), || {
        hold(&ingest)
    })
    .await;
    drop(again);
    drop(held);
    let refused = eventually("the refusal counted", Duration::from_secs(10), || async {
        let refused = metric(
            &ingest,
            r#"http_server_connections_refused_total{reason="per_ip"}"#,
        )
        .await;
        (refused >= 1.0).then_some(refused)
    })
    .await;
    assert!(refused >= 1.0);
}

/// GET /v1/admin/sites (an API route) with `forwarded_for` as `X-Forwarded-For`:
/// its status and `Retry-After`.
async fn list_sites(
    service: &TestService,
    forwarded_for: Option<&str>,
) -> (u16, Option<u64>, serde_json::Value) {
    let mut request = service.admin(reqwest::Method::GET, "/v1/admin/sites");
    if let Some(addr) = forwarded_for {
        request = request.header("x-forwarded-for", addr);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, retry_after, body)
}

#[tokio::test]
async fn requests_past_the_burst_of_an_address_get_429_even_with_a_spoofed_forwarded_for() {
    let nats = NatsServer::start().await;
    let mut config = ingest_config(&nats.url());
    config.common.requests_per_ip_rate = 1;
    config.common.requests_per_ip_burst = 5;
    let ingest = TestService::start(config).await;

    // The burst, and at most the one a second it refills while the loop runs.
    let started = Instant::now();
    let mut served = 0;
    let (retry_after, body) = loop {
        let (status, retry_after, body) = list_sites(&ingest, None).await;
        match status {
            200 => served += 1,
            429 => break (retry_after, body),
            other => panic!("answered {other}: {body}"),
        }
        assert!(served <= 50, "never limited");
    };
    let refilled = started.elapsed().as_secs() + 1;
    assert!(
        (5..=5 + refilled).contains(&served),
        "{served} served before the 429"
    );
    let retry_after = retry_after.expect("Retry-After on the 429");
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");

    // 127.0.0.1 is no trusted proxy: what it forwards does not name another client.
    let (status, _, _) = list_sites(&ingest, Some("203.0.113.7")).await;
    assert_eq!(status, 429, "a spoofed X-Forwarded-For escaped the limit");
    // A page can read the refusal (an EventSource that can't read its answer gives up).
    let r = ingest
        .admin(reqwest::Method::GET, "/v1/admin/sites")
        .header("origin", "https://acme.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://acme.example"
    );
    // The operational routes are not limited.
    for _ in 0..10 {
        let r = ingest
            .http
            .get(ingest.url("/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(metric(&ingest, "http_server_requests_limited_total").await >= 2.0);

    // After Retry-After (the client's wait, as the answer says), served again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    eventually("served again", Duration::from_secs(10), || async {
        (list_sites(&ingest, None).await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_address_has_its_own_budget() {
    let nats = NatsServer::start().await;
    let mut config = ingest_config(&nats.url());
    config.common.trusted_proxies = "127.0.0.1/32".parse().unwrap();
    config.common.requests_per_ip_rate = 1;
    config.common.requests_per_ip_burst = 2;
    // A trusted proxy carries many clients: its connections are not capped per address.
    config.common.max_connections_per_ip = 1;
    let ingest = TestService::start(config).await;

    let alice = "203.0.113.1";
    // A client behind the proxy can't pick its own bucket: the proxy appends what it saw.
    let alice_claiming_bob = "203.0.113.2, 203.0.113.1";
    let mut statuses = Vec::new();
    for forwarded in [alice, alice, alice_claiming_bob] {
        statuses.push(list_sites(&ingest, Some(forwarded)).await.0);
    }
    // Two within the burst; the third is alice's too, however it is dressed up (a refill
    // on a slow machine may let one more through, never two).
    assert_eq!(&statuses[..2], [200, 200]);
    let (status, retry_after, body) = list_sites(&ingest, Some(alice)).await;
    assert!(
        statuses[2] == 429 || status == 429,
        "alice never limited: {statuses:?}, then {status}"
    );
    if status == 429 {
        assert!(retry_after.is_some_and(|s| s >= 1), "{retry_after:?}");
        assert_eq!(body["error"]["code"], "rate_limited");
    }
    // Bob, through the same proxy at the same moment, has his own budget.
    let bob = "203.0.113.2";
    assert_eq!(list_sites(&ingest, Some(bob)).await.0, 200);
    assert_eq!(list_sites(&ingest, Some(bob)).await.0, 200);

    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            hold(&ingest)
                .await
                .expect("the trusted proxy's connection served"),
        );
    }
}

#[tokio::test]
async fn a_site_past_its_webhook_rate_gets_429_and_its_retry_is_stored() {
    let nats = NatsServer::start().await;
    let mut config = ingest_config(&nats.url());
    config.webhook_rate = 1;
    config.webhook_burst = 2;
    let ingest = TestService::start(config).await;
    ingest.put_site(&site_json("acme")).await;
    ingest.put_site(&site_json("other")).await;
    let send = |hook: Webhook, site: &'static str| {
        let ingest = &ingest;
        async move {
            let r = hook
                .request(&ingest.http, &ingest.base_url, site)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry_after: Option<u64> = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            (status, retry_after, body)
        }
    };

    // An unsigned flood spends nothing of the site's budget.
    for i in 0..5 {
        let mut forged = Webhook::published(&format!("msg_forged_{i}"), "blog", "1");
        forged.secret = "whsec_bm90IHRoZSBzaXRlJ3Mgc2VjcmV0IGF0IGFsbA==".into();
        assert_eq!(send(forged, "acme").await.0, 401);
    }
    let first = Webhook::published("msg_rate_1", "blog", "1");
    let second = Webhook::published("msg_rate_2", "blog", "2");
    let third = Webhook::published("msg_rate_3", "blog", "3");
    assert_eq!(send(first, "acme").await.0, 202);
    assert_eq!(send(second, "acme").await.0, 202);
    let (status, retry_after, body) = send(third.clone(), "acme").await;
    // A refill on a slow machine may let the third through; then the fourth is refused.
    let (limited, retry_after, body) = if status == 202 {
        let fourth = Webhook::published("msg_rate_4", "blog", "4");
        let (status, retry_after, body) = send(fourth.clone(), "acme").await;
        assert_eq!(status, 429, "two webhooks past the burst accepted: {body}");
        (fourth, retry_after, body)
    } else {
        assert_eq!(status, 429, "{body}");
        (third, retry_after, body)
    };
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    let retry_after = retry_after.expect("Retry-After on the 429");
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");

    // Another site is not affected, at the same moment.
    let elsewhere = Webhook::published("msg_other_1", "blog", "1");
    assert_eq!(send(elsewhere, "other").await.0, 202);
    assert!(
        metric(
            &ingest,
            r#"spool_ingest_webhooks_limited_total{site="acme"}"#
        )
        .await
            >= 1.0
    );
    assert_eq!(
        metric(
            &ingest,
            r#"spool_ingest_webhooks_limited_total{site="other"}"#
        )
        .await,
        0.0
    );

    // The CMS waits Retry-After, then retries with the same webhook-id: stored.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let seq = eventually(
        "the retried webhook stored",
        Duration::from_secs(10),
        || async {
            let (status, _, body) = send(limited.clone(), "acme").await;
            (status == 202).then(|| body["seq"].as_u64()).flatten()
        },
    )
    .await;
    let stored = read_events(&nats.url()).await;
    let retried: Vec<_> = stored.iter().filter(|s| s.event.id == limited.id).collect();
    assert_eq!(retried.len(), 1, "{stored:?}");
    assert_eq!(retried[0].seq, seq);
}

#[tokio::test]
async fn a_webhook_body_that_trickles_in_is_answered_408_and_nothing_is_stored() {
    let nats = NatsServer::start().await;
    let mut config = ingest_config(&nats.url());
    config.body_timeout = Duration::from_millis(500);
    let ingest = TestService::start(config).await;
    ingest.put_site(&site_json("acme")).await;

    // A head promising 1,000 bytes, then 10 of them, then nothing.
    let mut slow = TcpStream::connect(address(&ingest)).await.unwrap();
    slow.write_all(
        b"POST /v1/sites/acme/webhooks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"type\":\"c",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(read_events(&nats.url()).await.is_empty(), "nothing stored");
}
