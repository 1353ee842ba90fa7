//! SSE delivery end to end: live events, replay, resume, filters.

use std::time::Duration;

use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::services::{delivery_config, ingest_config, TestService};
use spool_integration_tests::sse::SseClient;
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{read_events, site_json};

const T: Duration = Duration::from_secs(10);

pub struct System {
    pub nats: NatsServer,
    pub ingest: TestService,
    pub delivery: TestService,
}

impl System {
    pub async fn start() -> System {
        let nats = NatsServer::start().await;
        let ingest = TestService::start(ingest_config(&nats.url())).await;
        ingest.put_site(&site_json("acme")).await;
        let delivery = TestService::start_delivery(delivery_config(&nats.url())).await;
        System {
            nats,
            ingest,
            delivery,
        }
    }

    /// Publishes a webhook for `acme` and returns its seq.
    pub async fn publish(&self, id: &str, collection: &str) -> u64 {
        let (status, body) = Webhook::published(id, collection, id)
            .send(&self.ingest.http, &self.ingest.base_url, "acme")
            .await;
        assert_eq!(status, 202, "{body}");
        body["seq"].as_u64().unwrap()
    }

    pub fn stream(&self, query: &str) -> reqwest::RequestBuilder {
        self.delivery
            .http
            .get(
                self.delivery
                    .url(&format!("/v1/sites/acme/events/stream{query}")),
            )
            .bearer_auth("rk_test_acme_0123456789")
    }
}

#[tokio::test]
async fn a_published_webhook_reaches_an_open_stream_as_the_contract_event() {
    let sys = System::start().await;
    let mut client = SseClient::connect(sys.stream(""), None).await;
    assert_eq!(client.status, 200);
    assert_eq!(client.headers["content-type"], "text/event-stream");
    assert_eq!(client.headers["cache-control"], "no-cache");
    assert_eq!(client.headers["x-accel-buffering"], "no");
    let ready = client.next_event(T).await.unwrap();
    assert_eq!(ready.event, "ready");
    assert_eq!(ready.retry, Some(Duration::from_secs(3)));
    let ready: serde_json::Value = serde_json::from_str(&ready.data).unwrap();
    assert_eq!(ready["last_seq"], 0);

    let seq = sys.publish("msg_live", "blog").await;
    let got = client.next_message(T).await.unwrap();
    assert_eq!(got.id, seq);
    let stored = read_events(&sys.nats.url()).await;
    let mut want = serde_json::to_value(&stored[0].event).unwrap();
    want["seq"] = seq.into();
    assert_eq!(got.data, want);
    assert_eq!(
        got.data["paths"],
        serde_json::json!(["/blog/post-msg_live", "/blog"])
    );
}

#[tokio::test]
async fn since_zero_replays_everything_and_last_event_id_resumes_exactly_after() {
    let sys = System::start().await;
    let mut seqs = Vec::new();
    for i in 0..5 {
        seqs.push(sys.publish(&format!("m{i}"), "blog").await);
    }
    let mut all = SseClient::connect(sys.stream("?since=0"), None).await;
    for seq in &seqs {
        assert_eq!(all.next_message(T).await.unwrap().id, *seq);
    }
    // Resume after the second: the rest, then live.
    let mut resumed = SseClient::connect(sys.stream("?since=0"), Some(seqs[1])).await;
    for seq in &seqs[2..] {
        assert_eq!(resumed.next_message(T).await.unwrap().id, *seq);
    }
    let live = sys.publish("m5", "blog").await;
    assert_eq!(resumed.next_message(T).await.unwrap().id, live);
    assert_eq!(all.next_message(T).await.unwrap().id, live);
}

#[tokio::test]
async fn the_collections_filter_applies_to_replay_and_live() {
    let sys = System::start().await;
    let blog = sys.publish("b1", "blog").await;
    sys.publish("p1", "pages").await;
    let mut client = SseClient::connect(sys.stream("?since=0&collections=blog,news"), None).await;
    assert_eq!(client.next_message(T).await.unwrap().id, blog);
    sys.publish("p2", "pages").await;
    let news = sys.publish("n1", "news").await;
    assert_eq!(client.next_message(T).await.unwrap().id, news);
}

#[tokio::test]
async fn an_idle_stream_gets_heartbeats() {
    let nats = NatsServer::start().await;
    let ingest = TestService::start(ingest_config(&nats.url())).await;
    ingest.put_site(&site_json("acme")).await;
    let mut config = delivery_config(&nats.url());
    config.heartbeat = Duration::from_millis(100);
    let delivery = TestService::start_delivery(config).await;
    let mut response = delivery
        .http
        .get(delivery.url("/v1/sites/acme/events/stream"))
        .bearer_auth("rk_test_acme_0123456789")
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    while seen.matches(": ping\n\n").count() < 2 {
        let chunk = tokio::time::timeout(T, response.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        seen.starts_with("retry: 3000\nid: 0\nevent: ready\n"),
        "{seen}"
    );
}
