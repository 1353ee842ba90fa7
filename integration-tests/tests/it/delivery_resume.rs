//! Exactly once, in order, across disconnects, replicas and restarts. The expected list is
//! always what the stream itself holds for the site.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::services::{delivery_config, ingest_config, TestService};
use spool_integration_tests::sse::SseClient;
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{read_events, site_json};

const T: Duration = Duration::from_secs(15);
const TOKEN: &str = "rk_test_acme_0123456789";

struct Cluster {
    nats: NatsServer,
    ingest: Arc<TestService>,
    replicas: Vec<TestService>,
}

impl Cluster {
    async fn start(replicas: usize, window: usize) -> Cluster {
        let nats = NatsServer::start().await;
        let ingest = TestService::start(ingest_config(&nats.url())).await;
        ingest.put_site(&site_json("acme")).await;
        ingest.put_site(&site_json("other")).await;
        let mut list = Vec::new();
        for _ in 0..replicas {
            let mut config = delivery_config(&nats.url());
            config.replay_window = window;
            list.push(TestService::start_delivery(config).await);
        }
        Cluster {
            nats,
            ingest: Arc::new(ingest),
            replicas: list,
        }
    }

    /// Sends `count` webhooks (for `acme`, with some for `other` in between) in the
    /// background, retrying a 503 with the same id as a CMS would.
    fn writer(&self, count: usize) -> tokio::task::JoinHandle<()> {
        let ingest = self.ingest.clone();
        tokio::spawn(async move {
            for i in 0..count {
                let site = if i % 5 == 4 { "other" } else { "acme" };
                let hook = Webhook::published(&format!("w{i}"), "blog", &i.to_string());
                loop {
                    let (status, _) = hook.send(&ingest.http, &ingest.base_url, site).await;
                    if status == 202 || status == 200 {
                        break;
                    }
                    assert_eq!(status, 503);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    }

    async fn expected(&self) -> Vec<u64> {
        read_events(&self.nats.url())
            .await
            .into_iter()
            .filter(|s| s.event.site.as_str() == "acme")
            .map(|s| s.seq)
            .collect()
    }

    fn stream(&self, replica: usize) -> reqwest::RequestBuilder {
        let r = &self.replicas[replica % self.replicas.len()];
        r.http
            .get(r.url("/v1/sites/acme/events/stream?since=0"))
            .bearer_auth(TOKEN)
    }

    fn poll(&self, replica: usize, since: u64, limit: usize) -> reqwest::RequestBuilder {
        let r = &self.replicas[replica % self.replicas.len()];
        let url = r.url(&format!(
            "/v1/sites/acme/events?since={since}&limit={limit}&wait=5"
        ));
        r.http.get(url).bearer_auth(TOKEN)
    }
}

/// An SSE client that reads `schedule[i]` events per connection, then drops it and
/// resumes with `Last-Event-ID` on the next replica, until it has `total` events.
async fn read_with_disconnects(cluster: &Cluster, schedule: &[usize], total: usize) -> Vec<u64> {
    let mut got: Vec<u64> = Vec::new();
    let mut connection = 0;
    while got.len() < total {
        let last = got.last().copied();
        let mut client = SseClient::connect(cluster.stream(connection), last).await;
        assert_eq!(client.status, 200);
        let take = schedule[connection % schedule.len()];
        for _ in 0..take {
            match client.next_message(T).await {
                Some(event) => got.push(event.id),
                None => break,
            }
            if got.len() == total {
                break;
            }
        }
        connection += 1;
    }
    got
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, failure_persistence: None, ..ProptestConfig::default() })]

    /// While a writer sends, a client disconnects after random numbers of events and
    /// resumes with Last-Event-ID on alternating replicas (a small window, so some resumes
    /// are served from JetStream): every event exactly once, in order.
    #[test]
    fn sse_resumes_across_replicas_are_exactly_once_in_order(
        schedule in proptest::collection::vec(1usize..25, 1..12),
        window in prop_oneof![Just(8usize), Just(10_000usize)],
    ) {
        runtime().block_on(async {
            const WRITES: usize = 150;
            let cluster = Cluster::start(2, window).await;
            let writer = cluster.writer(WRITES);
            let total = WRITES - WRITES / 5;
            let got = read_with_disconnects(&cluster, &schedule, total).await;
            writer.await.unwrap();
            assert_eq!(got, cluster.expected().await);
        });
    }

    /// The same for poll pages: random page sizes, alternating replicas, following `next`.
    #[test]
    fn poll_pages_across_replicas_are_exactly_once_in_order(
        limits in proptest::collection::vec(1usize..40, 1..12),
    ) {
        runtime().block_on(async {
            const WRITES: usize = 150;
            let cluster = Cluster::start(2, 8).await;
            let writer = cluster.writer(WRITES);
            let total = WRITES - WRITES / 5;
            let (mut got, mut next, mut page) = (Vec::new(), 0u64, 0usize);
            while got.len() < total {
                let limit = limits[page % limits.len()];
                let body: serde_json::Value =
                    cluster.poll(page, next, limit).send().await.unwrap().json().await.unwrap();
                let events = body["events"].as_array().unwrap();
                assert!(events.len() <= limit);
                got.extend(events.iter().map(|e| e["seq"].as_u64().unwrap()));
                next = body["next"].as_u64().unwrap();
                page += 1;
            }
            writer.await.unwrap();
            assert_eq!(got, cluster.expected().await);
        });
    }
}

#[tokio::test]
async fn a_client_resumes_after_the_delivery_process_restarts() {
    let mut cluster = Cluster::start(1, 10_000).await;
    let mut client = SseClient::connect(cluster.stream(0), None).await;
    cluster.writer(3).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(client.next_message(T).await.unwrap().id);
    }
    // The replica goes away; its stream ends; events keep coming meanwhile.
    let old = cluster.replicas.remove(0);
    old.stop().await.unwrap();
    assert!(
        client.next_event(T).await.is_none(),
        "the stream ends with the process"
    );
    cluster.writer(6).await.unwrap();
    // A new process (its window filled from the stream at start) serves the resume, then live.
    cluster
        .replicas
        .push(TestService::start_delivery(delivery_config(&cluster.nats.url())).await);
    let mut client = SseClient::connect(cluster.stream(0), got.last().copied()).await;
    let expected = cluster.expected().await;
    while got.len() < expected.len() {
        got.push(client.next_message(T).await.unwrap().id);
    }
    assert_eq!(got, expected);
}

#[tokio::test]
async fn a_client_keeps_every_event_across_a_nats_restart() {
    let mut cluster = Cluster::start(1, 10_000).await;
    cluster.writer(4).await.unwrap();
    let mut got: Vec<u64> = Vec::new();
    let mut client = SseClient::connect(cluster.stream(0), None).await;
    for _ in 0..4 {
        got.push(client.next_message(T).await.unwrap().id);
    }
    cluster.nats.restart().await;
    cluster.writer(8).await.unwrap();
    let expected = cluster.expected().await;
    // On the same stream if it survived, else after resuming with the last id.
    while got.len() < expected.len() {
        match client.next_message(T).await {
            Some(event) => got.push(event.id),
            None => client = SseClient::connect(cluster.stream(0), got.last().copied()).await,
        }
    }
    assert_eq!(got, expected);
}
