//! NATS going away: 503 with Retry-After quickly, recovery without a restart, and nothing
//! answered 2xx missing from the stream afterwards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::services::{ingest_config, TestIngest};
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{eventually, read_events, site_json, status, write_sites_file};

/// Sends one webhook until it is answered 2xx, as a CMS with retries would (same id).
async fn send_until_stored(ingest: &TestIngest, hook: &Webhook) -> (u16, u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = hook
            .request(&ingest.http, &ingest.base_url, "acme")
            .send()
            .await;
        if let Ok(r) = r {
            let status = r.status().as_u16();
            if status == 200 || status == 202 {
                let body: serde_json::Value = r.json().await.unwrap();
                return (status, body["seq"].as_u64().unwrap());
            }
            assert_eq!(status, 503, "only 503 is expected while NATS restarts");
            assert!(r.headers().contains_key("retry-after"));
        }
        assert!(
            Instant::now() < deadline,
            "webhook {} never stored",
            hook.id
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_answers_503_with_retry_after_and_recovers_without_a_restart() {
    let mut nats = NatsServer::start().await;
    let ingest = TestIngest::start(ingest_config(&nats.url())).await;
    ingest.put_site(&site_json("acme")).await;
    nats.stop().await;

    let hook = Webhook::published("msg_outage", "blog", "1");
    let started = Instant::now();
    let r = hook
        .request(&ingest.http, &ingest.base_url, "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "2");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "503 took {:?}",
        started.elapsed()
    );
    assert_eq!(status(ingest.http.get(ingest.url("/readyz"))).await, 503);
    // Liveness does not depend on NATS.
    assert_eq!(
        ingest
            .http
            .get(ingest.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    nats.restart().await;
    let (status, seq) = send_until_stored(&ingest, &hook).await;
    assert!(status == 202 || status == 200);
    ingest.wait_ready().await;
    let stored = read_events(&nats.url()).await;
    assert_eq!(
        stored.iter().filter(|s| s.event.id == "msg_outage").count(),
        1
    );
    assert!(stored.iter().any(|s| s.seq == seq));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_in_the_middle_of_a_stream_of_webhooks_loses_nothing_acked() {
    const TOTAL: usize = 150;
    let mut nats = NatsServer::start().await;
    let ingest = Arc::new(TestIngest::start(ingest_config(&nats.url())).await);
    ingest.put_site(&site_json("acme")).await;

    let acked = Arc::new(AtomicUsize::new(0));
    let writer = {
        let ingest = ingest.clone();
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut answers = HashMap::new();
            for i in 0..TOTAL {
                let hook = Webhook::published(&format!("msg_{i}"), "blog", &i.to_string());
                let (_, seq) = send_until_stored(&ingest, &hook).await;
                answers.insert(hook.id.clone(), seq);
                acked.fetch_add(1, Ordering::Relaxed);
            }
            answers
        })
    };
    eventually(
        "a third of the webhooks acked",
        Duration::from_secs(30),
        || async { (acked.load(Ordering::Relaxed) >= TOTAL / 3).then_some(()) },
    )
    .await;
    nats.restart().await;
    let answers = writer.await.unwrap();

    let stored = read_events(&nats.url()).await;
    let by_id: HashMap<_, _> = stored.iter().map(|s| (s.event.id.clone(), s.seq)).collect();
    assert_eq!(stored.len(), TOTAL, "every webhook stored exactly once");
    assert_eq!(by_id.len(), TOTAL);
    for (id, seq) in &answers {
        assert_eq!(
            by_id.get(id),
            Some(seq),
            "{id} answered with seq {seq} but stored elsewhere"
        );
    }
}

#[tokio::test]
async fn a_service_started_before_nats_becomes_ready_when_nats_arrives() {
    let mut nats = NatsServer::start().await;
    nats.stop().await;
    let mut config = ingest_config(&nats.url());
    let dir = tempfile::tempdir().unwrap();
    let sites = write_sites_file(dir.path(), &[site_json("acme")]);
    config.common.sites_file = Some(sites);
    let ingest = TestIngest::start_unready(config).await;

    let r = ingest.http.get(ingest.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["missing"],
        serde_json::json!([
            "nats_disconnected",
            "streams_not_provisioned",
            "registry_not_loaded"
        ])
    );
    // Not knowing the registry yet, it can't say "unknown site": it says "come back".
    let hook = Webhook::published("msg_early", "blog", "1");
    let r = hook
        .request(&ingest.http, &ingest.base_url, "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));

    nats.restart().await;
    ingest.wait_ready().await;
    let (status, _) = send_until_stored(&ingest, &hook).await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn the_site_registry_keeps_following_the_bucket_across_a_nats_restart() {
    let mut nats = NatsServer::start().await;
    let a = TestIngest::start(ingest_config(&nats.url())).await;
    let b = TestIngest::start(ingest_config(&nats.url())).await;
    nats.restart().await;
    a.wait_ready().await;
    b.wait_ready().await;
    a.put_site(&site_json("late")).await;
    let hook = Webhook::published("msg_late", "blog", "1");
    eventually(
        "instance b to see a site added after the restart",
        Duration::from_secs(15),
        || async { (hook.send(&b.http, &b.base_url, "late").await.0 == 202).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn nats_url_takes_a_list_and_a_dead_server_in_it_does_no_harm() {
    let nats = NatsServer::start().await;
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let list = format!("nats://127.0.0.1:{dead}, {}", nats.url());
    let ingest = TestIngest::start(ingest_config(&list)).await;
    ingest.put_site(&site_json("acme")).await;
    let (status, body) = Webhook::published("m1", "blog", "1")
        .send(&ingest.http, &ingest.base_url, "acme")
        .await;
    assert_eq!(status, 202, "{body}");
}

/// A NATS blip doesn't take the delivery out of its load balancer (were every pod to leave,
/// the edge would answer new streams 503, and EventSource gives up on that): `/readyz` stays
/// 200 for `SPOOL_READY_NATS_GRACE` (it serves resumes from its window, and tells what needs
/// NATS to retry), and only a longer outage makes it unready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_stays_ready_through_a_nats_blip_and_leaves_after_the_grace() {
    use spool_integration_tests::services::{delivery_config, TestService};
    let mut nats = NatsServer::start().await;
    let ingest = TestIngest::start(ingest_config(&nats.url())).await;
    ingest.put_site(&site_json("acme")).await;
    let mut config = delivery_config(&nats.url());
    config.ready_nats_grace = Duration::from_secs(3);
    let delivery = TestService::start_delivery(config).await;
    nats.stop().await;
    // The ingest (no grace) says when the services have seen NATS go.
    eventually("the ingest unready", Duration::from_secs(10), || async {
        (status(ingest.http.get(ingest.url("/readyz"))).await == 503).then_some(())
    })
    .await;
    let seen = Instant::now();
    assert_eq!(
        status(delivery.http.get(delivery.url("/readyz"))).await,
        200,
        "a blip: the delivery is still ready"
    );
    eventually(
        "unready after the grace",
        Duration::from_secs(15),
        || async {
            (status(delivery.http.get(delivery.url("/readyz"))).await == 503).then_some(())
        },
    )
    .await;
    assert!(
        seen.elapsed() >= Duration::from_secs(2),
        "unready {:?} after NATS went, before the grace",
        seen.elapsed()
    );
    nats.restart().await;
    eventually("ready again", Duration::from_secs(20), || async {
        (status(delivery.http.get(delivery.url("/readyz"))).await == 200).then_some(())
    })
    .await;
}
