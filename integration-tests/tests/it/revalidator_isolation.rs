//! One site's broken endpoint never holds up another's: failing targets with backlogs over
//! the in-flight limit, healthy sites called at once beside them; retries wait in JetStream
//! (not as unacknowledged events) at their time, across a kill -9.

use std::time::{Duration, Instant};

use futures::StreamExt;
use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::process::ServiceProcess;
use spool_integration_tests::receiver::{Reply, TestReceiver};
use spool_integration_tests::services::{ingest_config, revalidator_config, TestService};
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{
    eventually, site_json, write_sites_file, ADMIN_TOKEN, LOOPBACK_TARGET_NETWORKS,
};

use crate::revalidator::{list_dead_letters, retries_waiting, wait_consumer, T};

/// Publishes `n` items to `site` from 16 senders; their seqs.
async fn bulk_publish(ingest: &TestService, site: &str, n: usize) -> Vec<u64> {
    let items: Vec<usize> = (0..n).collect();
    let seqs = futures::stream::iter(items)
        .map(|i| async move {
            let id = format!("{site}_{i}");
            let (status, body) = Webhook::published(&id, "blog", &id)
                .send(&ingest.http, &ingest.base_url, site)
                .await;
            assert_eq!(status, 202, "{body}");
            body["seq"].as_u64().expect("seq")
        })
        .buffer_unordered(16)
        .collect::<Vec<u64>>()
        .await;
    seqs
}

#[tokio::test]
async fn failing_sites_never_hold_up_healthy_ones() {
    let nats = NatsServer::start().await;
    let ingest = TestService::start(ingest_config(&nats.url())).await;
    let down = TestReceiver::start([]).await;
    down.otherwise(Reply::Status(503));
    let hold = TestReceiver::start([]).await;
    hold.otherwise(Reply::RetryAfter(429, 3600));
    let good = [TestReceiver::start([]).await, TestReceiver::start([]).await];
    for (site, target) in [
        ("down", &down),
        ("hold", &hold),
        ("good1", &good[0]),
        ("good2", &good[1]),
    ] {
        let mut json = site_json(site);
        json["revalidate"] = serde_json::json!([target.target(None)]);
        ingest.put_site(&json).await;
    }
    let mut config = revalidator_config(&nats.url());
    // An in-flight limit well under the failing sites' backlogs (1,200 events each).
    config.max_ack_pending = 600;
    config.target_max_held = 500;
    config.retry_schedule = vec![Duration::from_secs(3); 6];
    let revalidator = TestService::start_revalidator(config).await;
    wait_consumer(&nats.url()).await;

    let (down_seqs, _) = tokio::join!(
        bulk_publish(&ingest, "down", 1200),
        bulk_publish(&ingest, "hold", 1200)
    );
    down.wait_calls(1, T).await;
    hold.wait_calls(1, T).await;

    // Healthy sites, one event at a time: each is called within a second.
    let mut latencies = Vec::new();
    for i in 0..10 {
        let (site, target) = if i % 2 == 0 {
            ("good1", &good[0])
        } else {
            ("good2", &good[1])
        };
        let id = format!("{site}_{i}");
        let sent = Instant::now();
        let (status, body) = Webhook::published(&id, "blog", &id)
            .send(&ingest.http, &ingest.base_url, site)
            .await;
        assert_eq!(status, 202, "{body}");
        let seq = body["seq"].as_u64().expect("seq");
        let calls = target.wait_seqs(&[seq], T).await;
        let at = calls
            .iter()
            .find(|c| c.seqs().contains(&seq))
            .expect("the call")
            .at;
        latencies.push(at.saturating_duration_since(sent));
    }
    latencies.sort();
    println!("healthy sites' latency beside two failing ones: {latencies:?}");
    assert!(
        latencies[latencies.len() - 1] < Duration::from_secs(1),
        "{latencies:?}"
    );

    // The failing targets: called, then left alone until their time. The 503 one pauses for
    // 3 s (± 20 %); calls already out when the first failed may still land.
    let first = down.calls()[0].at;
    let early: Vec<Duration> = down
        .calls()
        .iter()
        .map(|c| c.at - first)
        .filter(|d| *d < Duration::from_millis(2400))
        .collect();
    assert!(
        early.len() <= 4,
        "the paused target was called early: {early:?}"
    );
    // Retry-After: 3600 is honoured for the target as a whole.
    let hold_calls = hold.calls().len();
    assert!(
        hold_calls <= 4,
        "{hold_calls} calls to a target that said Retry-After: 3600"
    );
    // Nothing was dead-lettered early; the backlogs wait in SPOOL_RETRY.
    let http = reqwest::Client::new();
    for site in ["down", "hold"] {
        let (text, records) =
            list_dead_letters(&http, &revalidator.base_url, &format!("site={site}")).await;
        assert!(records.is_empty(), "{site}: {text}");
    }
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    assert!(retries_waiting(&js).await.unwrap_or(0) > 0);

    // The 503 target recovers: every one of its events reaches it.
    down.otherwise(Reply::Status(200));
    down.wait_seqs(&down_seqs, Duration::from_secs(60)).await;
    let (text, records) = list_dead_letters(&http, &revalidator.base_url, "site=down").await;
    assert!(records.is_empty(), "{text}");
    let hold_calls_after = hold.calls().len();
    assert_eq!(
        hold_calls_after, hold_calls,
        "the 429 target was called before its time"
    );
}

#[tokio::test]
async fn a_waiting_retry_survives_kill_9_and_comes_at_its_time_with_the_same_id() {
    let nats = NatsServer::start().await;
    let target = TestReceiver::start([Reply::Status(503)]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut site = site_json("acme");
    site["revalidate"] = serde_json::json!([target.target(None)]);
    let sites = write_sites_file(dir.path(), &[site]);
    let env = [
        ("NATS_URL", nats.url()),
        ("SPOOL_SITES_FILE", sites.display().to_string()),
        ("SPOOL_ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
        ("SPOOL_RETRY_SCHEDULE", "4s".to_string()),
        (
            "SPOOL_ALLOWED_TARGET_NETWORKS",
            LOOPBACK_TARGET_NETWORKS.to_string(),
        ),
    ];
    let mut first = ServiceProcess::start("spool-revalidator", &env).await;
    wait_consumer(&nats.url()).await;
    let ingest = TestService::start(ingest_config(&nats.url())).await;
    let (status, body) = Webhook::published("msg_1", "blog", "1")
        .send(&ingest.http, &ingest.base_url, "acme")
        .await;
    assert_eq!(status, 202, "{body}");
    let seq = body["seq"].as_u64().unwrap();
    target.wait_calls(1, T).await;
    // The retry is stored before the event is acknowledged: wait for it, then crash.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    eventually("the retry stored", T, || async {
        (retries_waiting(&js).await? == 1).then_some(())
    })
    .await;
    let exit = first.kill9().await;
    assert!(!exit.success(), "killed: {exit}");
    let _second = ServiceProcess::start("spool-revalidator", &env).await;

    let calls = target.wait_calls(2, T).await;
    let gap = calls[1].at - calls[0].at;
    assert!(
        gap >= Duration::from_millis(3200),
        "retried early, after {gap:?}"
    );
    assert_eq!(calls[1].webhook_id(), calls[0].webhook_id());
    assert_eq!(calls[1].seqs(), [seq]);
    eventually("the retry settled", T, || async {
        (retries_waiting(&js).await? == 0).then_some(())
    })
    .await;
    assert_eq!(target.calls().len(), 2, "called once more than needed");
}

#[tokio::test]
async fn a_targets_pause_holds_for_every_replica_and_for_one_started_later() {
    let nats = NatsServer::start().await;
    let ingest = TestService::start(ingest_config(&nats.url())).await;
    let target = TestReceiver::start([]).await;
    target.otherwise(Reply::RetryAfter(429, 3600));
    let mut site = site_json("acme");
    site["revalidate"] = serde_json::json!([target.target(None)]);
    ingest.put_site(&site).await;
    let _a = TestService::start_revalidator(revalidator_config(&nats.url())).await;
    let _b = TestService::start_revalidator(revalidator_config(&nats.url())).await;
    wait_consumer(&nats.url()).await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let publish = |n: usize| {
        let ingest = &ingest;
        async move {
            let id = format!("msg_{n}");
            let (status, body) = Webhook::published(&id, "blog", &id)
                .send(&ingest.http, &ingest.base_url, "acme")
                .await;
            assert_eq!(status, 202, "{body}");
        }
    };
    // Everything handed out was settled (called, or stored as a retry).
    let settled = || async {
        eventually("the events settled", T, || async {
            let info = crate::revalidator::consumer_info(&js).await?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        })
        .await
    };

    publish(0).await;
    target.wait_calls(1, T).await;
    let bucket = js.get_key_value("spool-revalidator-targets").await.unwrap();
    eventually("the pause shared", T, || async {
        let mut keys = bucket.keys().await.ok()?;
        keys.next().await.map(|_| ())
    })
    .await;
    // Both replicas get some of these; neither calls.
    for n in 1..=20 {
        publish(n).await;
    }
    settled().await;
    assert_eq!(target.calls().len(), 1, "a replica called a paused target");

    // A replica started now loads the pause before it takes anything.
    let _c = TestService::start_revalidator(revalidator_config(&nats.url())).await;
    for n in 21..=30 {
        publish(n).await;
    }
    settled().await;
    assert_eq!(
        target.calls().len(),
        1,
        "the new replica called a paused target"
    );
    assert!(retries_waiting(&js).await.unwrap_or(0) > 0);
}

#[tokio::test]
async fn a_redelivered_duplicate_inside_one_merged_call_is_settled_with_it() {
    use async_nats::jetstream::consumer::{pull, AckPolicy};
    use spool_platform::shutdown::CancellationToken;
    use spool_platform::Platform;
    use spool_revalidator::dispatch::Dispatcher;
    use spool_revalidator::worker::{Settings, Worker};

    let nats = NatsServer::start().await;
    let ingest = TestService::start(ingest_config(&nats.url())).await;
    let target = TestReceiver::start([]).await;
    let mut site = site_json("acme");
    site["revalidate"] = serde_json::json!([target.target(None)]);
    ingest.put_site(&site).await;
    let (status, body) = Webhook::published("msg_1", "blog", "1")
        .send(&ingest.http, &ingest.base_url, "acme")
        .await;
    assert_eq!(status, 202, "{body}");
    let seq = body["seq"].as_u64().unwrap();

    // The same event, delivered twice by a consumer of our own: once, then again after its
    // ack wait — the two deliveries a worker can hold when JetStream redelivers.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let stream = js.get_stream("SPOOL_EVENTS").await.unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("dup".into()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(1),
            ..Default::default()
        })
        .await
        .unwrap();
    let next = || async {
        let mut batch = consumer.fetch().max_messages(1).messages().await.unwrap();
        batch.next().await.expect("a message").unwrap()
    };
    let first = next().await;
    let second = eventually("the redelivery", T, || async {
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .ok()?;
        batch.next().await?.ok()
    })
    .await;
    assert_eq!(second.info().unwrap().stream_sequence, seq);

    // Both handed to one worker inside its coalescing window: one call, both settled.
    let mut config = revalidator_config(&nats.url());
    config.coalesce_window = Duration::from_millis(500);
    let platform = Platform::start(config.common.clone(), "test", CancellationToken::new())
        .await
        .unwrap();
    eventually("the registry", T, || async {
        platform.registry.get("acme").map(|_| ())
    })
    .await;
    let worker = Worker::new(
        platform,
        Dispatcher::new(config.call_timeout, config.target_policy().unwrap()).unwrap(),
        Settings::from_config(&config),
    );
    worker.handle_event(first).await;
    worker.handle_event(second).await;
    let calls = target.wait_calls(1, T).await;
    assert_eq!(calls[0].seqs(), [seq], "the event once in the call");
    eventually("both deliveries settled", T, || async {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer("dup").await.ok()?;
        let info = consumer.info().await.ok()?;
        (info.num_ack_pending == 0 && info.num_pending == 0).then_some(())
    })
    .await;
    assert_eq!(target.calls().len(), 1);
}
