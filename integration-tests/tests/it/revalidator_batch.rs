//! The revalidator's calls: coalescing of bursts, replicas sharing the consumer, the
//! collection filter of a target, and the trace context.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use spool_integration_tests::receiver::TestReceiver;
use spool_integration_tests::services::{revalidator_config, TestService};
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{eventually, read_events, TEST_SECRET};

use crate::revalidator::{Setup, CONSUMER, T};

/// Publishes `n` webhooks at once (concurrently); returns their seqs.
async fn publish_burst(setup: &Setup, n: usize) -> Vec<u64> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let http = setup.ingest.http.clone();
        let base = setup.ingest.base_url.clone();
        tasks.push(tokio::spawn(async move {
            let (status, body) = Webhook::published(&format!("msg_{i}"), "blog", &i.to_string())
                .send(&http, &base, "acme")
                .await;
            assert_eq!(status, 202, "{body}");
            body["seq"].as_u64().unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort_unstable();
    seqs
}

#[tokio::test]
async fn a_burst_of_100_events_becomes_a_handful_of_calls_covering_every_path() {
    let target = TestReceiver::start([]).await;
    // A window wide enough for the whole burst to land in it.
    let setup = Setup::start_with(serde_json::json!([target.target(None)]), |c| {
        c.coalesce_window = Duration::from_millis(500);
    })
    .await;
    let seqs = publish_burst(&setup, 100).await;
    target.wait_seqs(&seqs, T).await;
    setup.wait_settled().await;
    let calls = target.calls();
    println!("100 events -> {} revalidation calls", calls.len());
    assert!(calls.len() <= 10, "{} calls for 100 events", calls.len());

    // The stored events are the ground truth of each seq's paths and tags.
    let stored: BTreeMap<u64, spool_proto::Event> = read_events(&setup.nats.url())
        .await
        .into_iter()
        .map(|s| (s.seq, s.event))
        .collect();
    let mut called_seqs = BTreeSet::new();
    let mut called_paths = BTreeSet::new();
    for call in &calls {
        assert!(call.signature_valid(TEST_SECRET), "bad signature");
        let mut paths: Vec<String> = Vec::new();
        let mut tags: Vec<String> = Vec::new();
        for seq in call.seqs() {
            let event = stored.get(&seq).expect("a called seq is a stored event");
            for p in &event.paths {
                if !paths.contains(p) {
                    paths.push(p.clone());
                }
            }
            for t in &event.tags {
                if !tags.contains(t) {
                    tags.push(t.clone());
                }
            }
            called_seqs.insert(seq);
        }
        // Each call's paths and tags: the union of its events', each once, in event order.
        assert_eq!(call.paths(), paths, "seqs {:?}", call.seqs());
        assert_eq!(call.body["tags"], serde_json::json!(tags));
        called_paths.extend(paths);
    }
    assert_eq!(called_seqs, seqs.iter().copied().collect::<BTreeSet<_>>());
    let every_path: BTreeSet<String> = seqs
        .iter()
        .flat_map(|seq| stored[seq].paths.clone())
        .collect();
    assert_eq!(every_path.len(), 101, "100 item paths and /blog");
    assert_eq!(called_paths, every_path);
}

#[tokio::test]
async fn two_replicas_never_both_call_for_the_same_event() {
    let target = TestReceiver::start([]).await;
    // Small batches, so that the 50 events make many calls to share between the replicas.
    let setup = Setup::start_with(serde_json::json!([target.target(None)]), |c| {
        c.coalesce_max = 5;
    })
    .await;
    // A second replica on the same NATS, sharing the durable consumer.
    let mut config = revalidator_config(&setup.nats.url());
    config.coalesce_max = 1;
    let second = TestService::start_revalidator(config).await;
    // Both replicas are pulling from the consumer before anything is published.
    let js = async_nats::jetstream::new(async_nats::connect(setup.nats.url()).await.unwrap());
    eventually("two replicas pulling", T, || async {
        let stream = js.get_stream("SPOOL_EVENTS").await.ok()?;
        let mut consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(CONSUMER).await.ok()?;
        let info = consumer.info().await.ok()?;
        (info.num_waiting >= 2).then_some(())
    })
    .await;

    let seqs = publish_burst(&setup, 50).await;
    target.wait_seqs(&seqs, T).await;
    setup.wait_settled().await;
    let calls = target.calls();
    let sizes: Vec<usize> = calls.iter().map(|c| c.seqs().len()).collect();
    println!(
        "50 events -> {} calls across two replicas, events per call: {sizes:?}",
        calls.len()
    );
    assert!(
        calls.len() >= 10,
        "batches of at most 5: {} calls",
        calls.len()
    );
    let mut times: BTreeMap<u64, usize> = BTreeMap::new();
    for call in &calls {
        for seq in call.seqs() {
            *times.entry(seq).or_default() += 1;
        }
    }
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "seqs called more than once: {twice:?}");
    assert_eq!(times.keys().copied().collect::<Vec<_>>(), seqs);
    // Both replicas did some of the work: each call's record names the process that made it.
    let records =
        spool_integration_tests::read_range_json(&setup.nats.url(), "SPOOL_OUTCOMES").await;
    let mut by_replica: BTreeMap<String, usize> = BTreeMap::new();
    for (record, _) in &records {
        let replica = record["replica"]
            .as_str()
            .expect("a record names its replica");
        *by_replica.entry(replica.to_owned()).or_default() += 1;
    }
    println!("calls per replica: {by_replica:?}");
    assert_eq!(by_replica.len(), 2, "both replicas called: {by_replica:?}");
    second.stop().await.unwrap();
}

#[tokio::test]
async fn a_target_with_collections_only_gets_those() {
    let blog_only = TestReceiver::start([]).await;
    let everything = TestReceiver::start([]).await;
    let setup = Setup::start(serde_json::json!([
        blog_only.target(Some(&["blog"])),
        everything.target(None)
    ]))
    .await;
    let blog = setup.publish("msg_blog", "blog").await;
    let pages = setup.publish("msg_pages", "pages").await;
    everything.wait_seqs(&[blog, pages], T).await;
    setup.wait_settled().await;

    let seqs = |r: &TestReceiver| -> Vec<u64> { r.calls().iter().flat_map(|c| c.seqs()).collect() };
    assert_eq!(seqs(&blog_only), [blog]);
    let mut all = seqs(&everything);
    all.sort_unstable();
    assert_eq!(all, [blog, pages]);
    // The unfiltered target got the default mapping of `pages`.
    let pages_call = everything
        .calls()
        .into_iter()
        .find(|c| c.seqs().contains(&pages))
        .unwrap();
    assert!(pages_call
        .paths()
        .contains(&"/pages/post-msg_pages".to_string()));
}

#[tokio::test]
async fn the_traceparent_of_the_cms_request_reaches_the_revalidation_call() {
    let target = TestReceiver::start([]).await;
    let setup = Setup::start(serde_json::json!([target.target(None)])).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = Webhook::published("msg_1", "blog", "1")
        .request(&setup.ingest.http, &setup.ingest.base_url, "acme")
        .header("traceparent", traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let calls = target.wait_calls(1, T).await;
    let received = calls[0].header("traceparent");
    // Same trace; with no exporter configured (as here) the very same header. With one,
    // the parent is the revalidator's client span instead (see telemetry.rs).
    assert_eq!(
        received.split('-').nth(1),
        traceparent.split('-').nth(1),
        "{received}"
    );
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() {
        assert_eq!(received, traceparent);
    }
}
