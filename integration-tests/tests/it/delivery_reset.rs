//! Cursors the stream can't honour: older than the retained history (`history_truncated`)
//! and beyond its end (`cursor_ahead`), on SSE and on the poll.

use std::time::Duration;

use serde_json::{json, Value};
use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::services::{delivery_config, ingest_config, TestService};
use spool_integration_tests::sse::SseClient;
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{eventually, read_events, site_json};

const T: Duration = Duration::from_secs(10);
const TOKEN: &str = "rk_test_acme_0123456789";
/// Small enough that ~30 events don't all fit.
const MAX_BYTES: i64 = 4096;

/// NATS, an ingest and a delivery that agree on a tiny `SPOOL_EVENTS`, and a delivery window
/// of 2 events, so old cursors must be read from JetStream.
struct Tiny {
    nats: NatsServer,
    ingest: TestService,
    delivery: TestService,
}

impl Tiny {
    async fn start() -> Tiny {
        let nats = NatsServer::start().await;
        let mut ingest = ingest_config(&nats.url());
        ingest.common.streams.max_bytes = MAX_BYTES;
        let ingest = TestService::start(ingest).await;
        ingest.put_site(&site_json("acme")).await;
        ingest.put_site(&site_json("other")).await;
        let mut delivery = delivery_config(&nats.url());
        delivery.common.streams.max_bytes = MAX_BYTES;
        delivery.replay_window = 2;
        let delivery = TestService::start_delivery(delivery).await;
        Tiny {
            nats,
            ingest,
            delivery,
        }
    }

    async fn publish(&self, site: &str, id: &str) -> u64 {
        let (status, body) = Webhook::published(id, "blog", id)
            .send(&self.ingest.http, &self.ingest.base_url, site)
            .await;
        assert_eq!(status, 202, "{body}");
        body["seq"].as_u64().unwrap()
    }

    /// Publishes 30 events (every fifth for another site); returns the last seq.
    async fn fill(&self) -> u64 {
        let mut last = 0;
        for i in 0..30 {
            let site = if i % 5 == 4 { "other" } else { "acme" };
            last = self.publish(site, &format!("m{i}")).await;
        }
        assert_eq!(last, 30);
        // The delivery's feed has seen them all.
        eventually("the feed to reach the last event", T, || async {
            let (_, body) = self.poll("").await;
            (body["next"] == last).then_some(())
        })
        .await;
        last
    }

    /// `(first_seq, last_seq)` of `SPOOL_EVENTS`, from JetStream itself.
    async fn bounds(&self) -> (u64, u64) {
        let client = async_nats::connect(self.nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js
            .get_stream(spool_proto::names::EVENTS_STREAM)
            .await
            .unwrap();
        let info = stream.info().await.unwrap();
        assert_eq!(
            info.config.max_bytes, MAX_BYTES,
            "the tiny retention applies"
        );
        (info.state.first_sequence, info.state.last_sequence)
    }

    /// The retained events of acme, as delivered (seq included).
    async fn retained(&self) -> Vec<Value> {
        read_events(&self.nats.url())
            .await
            .into_iter()
            .filter(|s| s.event.site.as_str() == "acme")
            .map(|s| {
                let mut v = serde_json::to_value(&s.event).unwrap();
                v["seq"] = s.seq.into();
                v
            })
            .collect()
    }

    async fn poll(&self, query: &str) -> (u16, Value) {
        let r = self
            .delivery
            .http
            .get(self.delivery.url(&format!("/v1/sites/acme/events{query}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    fn stream(&self, query: &str) -> reqwest::RequestBuilder {
        self.delivery
            .http
            .get(
                self.delivery
                    .url(&format!("/v1/sites/acme/events/stream{query}")),
            )
            .bearer_auth(TOKEN)
    }
}

/// Skips `ready` and returns the next event, which must be a `reset`, as JSON.
async fn expect_reset(client: &mut SseClient) -> Value {
    let mut event = client.next_event(T).await.expect("an SSE event");
    if event.event == "ready" {
        event = client
            .next_event(T)
            .await
            .expect("an SSE event after ready");
    }
    assert_eq!(event.event, "reset", "{event:?}");
    serde_json::from_str(&event.data).expect("reset data is JSON")
}

#[tokio::test]
async fn a_cursor_older_than_retention_gets_a_reset_then_the_retained_events() {
    let tiny = Tiny::start().await;
    let last = tiny.fill().await;
    let (first, stream_last) = tiny.bounds().await;
    assert_eq!(stream_last, last);
    assert!(first > 2, "retention did not truncate: first_seq = {first}");
    let retained = tiny.retained().await;
    assert!(
        retained.len() >= 4,
        "{} acme events retained",
        retained.len()
    );
    assert!(retained[0]["seq"].as_u64().unwrap() >= first);
    let truncated = json!({ "reason": "history_truncated", "first_seq": first });

    // SSE, resuming with Last-Event-ID: 1.
    let mut client = SseClient::connect(tiny.stream(""), Some(1)).await;
    assert_eq!(client.status, 200);
    assert_eq!(expect_reset(&mut client).await, truncated);
    for want in &retained {
        let got = client.next_message(T).await.unwrap();
        assert_eq!(&got.data, want);
        assert_eq!(Some(got.id), want["seq"].as_u64());
    }
    // Then live, with no gap and no duplicate.
    let live = tiny.publish("acme", "live").await;
    let got = client.next_message(T).await.unwrap();
    assert_eq!(got.id, live);

    // The same through ?since=1 (without Last-Event-ID).
    let mut client = SseClient::connect(tiny.stream("?since=1"), None).await;
    assert_eq!(
        expect_reset(&mut client).await["reason"],
        "history_truncated"
    );

    // The poll: the reset object with the retained events.
    let (first, _) = tiny.bounds().await;
    let retained = tiny.retained().await;
    let truncated = json!({ "reason": "history_truncated", "first_seq": first });
    let (status, body) = tiny.poll("?since=1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reset"], truncated);
    assert_eq!(body["events"], Value::Array(retained.clone()));
    assert_eq!(body["next"], *retained.last().unwrap().get("seq").unwrap());

    // Paging from a truncated cursor: the reset on the first page only.
    let (_, body) = tiny.poll("?since=1&limit=2").await;
    assert_eq!(body["reset"], truncated);
    assert_eq!(body["events"], Value::Array(retained[..2].to_vec()));
    let next = body["next"].as_u64().unwrap();
    let (_, body) = tiny.poll(&format!("?since={next}&limit=2")).await;
    assert_eq!(body["reset"], Value::Null);
    assert_eq!(body["events"], Value::Array(retained[2..4].to_vec()));

    // since=0 is all retained history: no reset.
    let (status, body) = tiny.poll("?since=0").await;
    assert_eq!(status, 200);
    assert_eq!(body["reset"], Value::Null);
    assert_eq!(body["events"], Value::Array(retained.clone()));
    let mut client = SseClient::connect(tiny.stream("?since=0"), None).await;
    for want in &retained {
        // `next_message` panics on a reset.
        assert_eq!(&client.next_message(T).await.unwrap().data, want);
    }

    // The edge: the event just before the first retained one is no loss; two before is.
    let (_, body) = tiny.poll(&format!("?since={}", first - 1)).await;
    assert_eq!(body["reset"], Value::Null, "since = first_seq - 1");
    assert_eq!(body["events"], Value::Array(retained.clone()));
    let (_, body) = tiny.poll(&format!("?since={}", first - 2)).await;
    assert_eq!(body["reset"], truncated, "since = first_seq - 2");
}

#[tokio::test]
async fn a_cursor_beyond_the_stream_gets_a_reset_then_live_events_only() {
    let tiny = Tiny::start().await;
    let last = tiny.fill().await;
    let (first, _) = tiny.bounds().await;
    let ahead = json!({ "reason": "cursor_ahead", "first_seq": first });

    let mut client = SseClient::connect(tiny.stream(""), Some(1_000_000)).await;
    assert_eq!(client.status, 200);
    assert_eq!(expect_reset(&mut client).await, ahead);
    let mut by_query = SseClient::connect(tiny.stream("?since=1000000"), None).await;
    assert_eq!(expect_reset(&mut by_query).await, ahead);

    let (status, body) = tiny.poll("?since=1000000").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reset"], ahead);
    assert_eq!(body["events"], json!([]));
    assert_eq!(body["next"], last, "next = the stream's last seq");

    // Only what comes next, nothing retained before.
    tiny.publish("other", "o-live").await;
    let live = tiny.publish("acme", "live").await;
    assert_eq!(client.next_message(T).await.unwrap().id, live);
    assert_eq!(by_query.next_message(T).await.unwrap().id, live);
}
