//! Readers under pressure. History reads (cursors older than the window) cost JetStream no
//! consumer and are capped per process and per site (over the cap a poll gets `429` +
//! `Retry-After`, a stream a longer `retry:`); a reader's cursor moves with the stream so
//! that a quiet site's next resume is served from memory; a site's streams are capped
//! (`goaway`), and a stream's life is bounded, its client resuming without a gap.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::services::{delivery_config, ingest_config, TestService};
use spool_integration_tests::sse::SseClient;
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{eventually, site_json};

const T: Duration = Duration::from_secs(20);
const TOKEN: &str = "rk_test_acme_0123456789";

struct Setup {
    nats: NatsServer,
    ingest: TestService,
}

/// NATS, an ingest with sites `acme` and `other`, and `acme_events` events of acme.
async fn setup(acme_events: usize) -> (Setup, Vec<u64>) {
    let nats = NatsServer::start().await;
    let ingest = TestService::start(ingest_config(&nats.url())).await;
    ingest.put_site(&site_json("acme")).await;
    ingest.put_site(&site_json("other")).await;
    let setup = Setup { nats, ingest };
    let mut seqs = Vec::new();
    for i in 0..acme_events {
        seqs.push(setup.publish("acme", &format!("a{i}")).await);
    }
    (setup, seqs)
}

impl Setup {
    async fn publish(&self, site: &str, id: &str) -> u64 {
        let (status, body) = Webhook::published(id, "blog", id)
            .send(&self.ingest.http, &self.ingest.base_url, site)
            .await;
        assert_eq!(status, 202, "{body}");
        body["seq"].as_u64().unwrap()
    }

    /// A delivery whose window holds `window` events and that is ready.
    async fn delivery(&self, window: usize, reads: usize, per_site: usize) -> TestService {
        let mut config = delivery_config(&self.nats.url());
        config.replay_window = window;
        config.history_reads = reads;
        config.history_reads_per_site = per_site;
        TestService::start_delivery(config).await
    }

    async fn consumers(&self) -> usize {
        let client = async_nats::connect(self.nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("SPOOL_EVENTS").await.unwrap();
        stream.info().await.unwrap().state.consumer_count
    }
}

fn poll(delivery: &TestService, query: &str) -> reqwest::RequestBuilder {
    delivery
        .http
        .get(delivery.url(&format!("/v1/sites/acme/events{query}")))
        .bearer_auth(TOKEN)
}

fn seqs(body: &Value) -> Vec<u64> {
    body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_flood_of_history_reads_creates_no_consumer_and_each_gets_everything_or_429() {
    let (setup, acme) = setup(400).await;
    let delivery = setup.delivery(100, 32, 4).await;
    let feed_only = setup.consumers().await;
    assert_eq!(feed_only, 1, "the delivery's feed is its one consumer");

    // Watch the consumer count while 400 readers ask for history at once.
    let most = Arc::new(AtomicU64::new(0));
    let done = tokio_util::sync::CancellationToken::new();
    let watcher = {
        let (most, done, url) = (most.clone(), done.clone(), setup.nats.url());
        tokio::spawn(async move {
            let client = async_nats::connect(url).await.unwrap();
            let js = async_nats::jetstream::new(client);
            let mut stream = js.get_stream("SPOOL_EVENTS").await.unwrap();
            while !done.is_cancelled() {
                let n = stream.info().await.unwrap().state.consumer_count as u64;
                most.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let reads = futures::stream::iter(0..400)
        .map(|_| async {
            let r = poll(&delivery, "?since=1&limit=1000").send().await.unwrap();
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, retry_after, r.json::<Value>().await.unwrap())
        })
        .buffer_unordered(400)
        .collect::<Vec<_>>()
        .await;
    done.cancel();
    watcher.await.unwrap();

    let (mut served, mut busy) = (0, 0);
    for (status, retry_after, body) in reads {
        match status {
            200 => {
                served += 1;
                assert_eq!(
                    seqs(&body),
                    acme[1..].to_vec(),
                    "every event after 1, in order"
                );
                assert_eq!(body["next"], acme[399]);
            }
            429 => {
                busy += 1;
                assert_eq!(body["error"]["code"], "busy", "{body}");
                assert_eq!(
                    retry_after.as_deref(),
                    Some("10"),
                    "SPOOL_BUSY_RETRY's default"
                );
            }
            other => panic!("a history read answered {other}: {body}"),
        }
    }
    assert!(served > 0, "some reads were served");
    assert!(
        busy > 0,
        "4 reads of one site at once: the rest are turned away"
    );
    assert_eq!(
        most.load(Ordering::Relaxed),
        1,
        "no consumer per read: only the feed's, all along"
    );
}

#[tokio::test]
async fn a_quiet_sites_cursor_moves_with_the_stream_so_its_next_resume_is_served_from_memory() {
    let (mut setup, acme) = setup(1).await;
    let quiet_last = acme[0];
    let mut last = 0;
    for i in 0..30 {
        last = setup.publish("other", &format!("o{i}")).await;
    }
    // Its window holds the last 10 events: acme's last event is older.
    let delivery = setup.delivery(10, 32, 4).await;

    // Poll from acme's last event: read from JetStream, nothing new, and `next` moves to
    // the end of what was read.
    let body: Value = poll(&delivery, &format!("?since={quiet_last}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seqs(&body), Vec::<u64>::new());
    assert_eq!(
        body["next"], last,
        "next moved past the other site's events"
    );

    // A stream resumed from acme's last event is told its position the same way.
    let stream = |cursor: u64| {
        SseClient::connect(
            delivery
                .http
                .get(delivery.url("/v1/sites/acme/events/stream"))
                .bearer_auth(TOKEN),
            Some(cursor),
        )
    };
    let mut resumed = stream(quiet_last).await;
    let ready = resumed.next_event(T).await.unwrap();
    assert_eq!(
        (ready.event.as_str(), ready.id.as_str()),
        ("ready", &*quiet_last.to_string())
    );
    let position = resumed.next_event(T).await.unwrap();
    assert_eq!(position.event, "position");
    assert_eq!(
        position.id,
        last.to_string(),
        "the id a reconnection resumes from"
    );
    let data: Value = serde_json::from_str(&position.data).unwrap();
    assert_eq!(data["seq"], last);
    drop(resumed);

    // With NATS gone, only the window can answer: the moved cursors are served from it.
    setup.nats.stop().await;
    let (status, body) = {
        let r = poll(&delivery, &format!("?since={last}"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 200, "served from memory: {body}");
    assert_eq!(body["next"], last);
    let mut again = stream(last).await;
    assert_eq!(again.next_event(T).await.unwrap().event, "ready");
    // And an old cursor needs JetStream: with NATS gone, the poll is told to come back.
    let r = poll(&delivery, &format!("?since={quiet_last}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
}

/// Reads a stream's body until it holds `id: {last}` or the stream ends; the text read.
async fn read_stream(delivery: &TestService, since: u64, last: u64) -> (String, bool) {
    let r = delivery
        .http
        .get(delivery.url(&format!("/v1/sites/acme/events/stream?since={since}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a stream is 200 even when turned away");
    let mut body = r.bytes_stream();
    let mut text = String::new();
    let want = format!("id: {last}\ndata:");
    loop {
        match tokio::time::timeout(T, body.next()).await {
            Ok(Some(Ok(chunk))) => {
                text.push_str(std::str::from_utf8(&chunk).unwrap());
                if text.contains(&want) {
                    return (text, false);
                }
            }
            Ok(_) => return (text, true),
            Err(_) => panic!("the stream neither delivered nor ended: {text}"),
        }
    }
}

#[tokio::test]
async fn a_stream_turned_away_by_the_history_cap_is_told_to_come_back_later() {
    let (setup, acme) = setup(300).await;
    let delivery = setup.delivery(100, 1, 1).await;
    let last = *acme.last().unwrap();
    let outcomes = futures::stream::iter(0..40)
        .map(|_| read_stream(&delivery, acme[0], last))
        .buffer_unordered(40)
        .collect::<Vec<_>>()
        .await;
    let mut turned_away = 0;
    for (text, ended) in outcomes {
        let ids: Vec<u64> = text
            .lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .map(|id| id.parse().unwrap())
            .collect();
        if ended {
            turned_away += 1;
            // ready, then nothing but a retry hint of 10 to 15 s.
            assert_eq!(ids, [acme[0]], "{text}");
            let retry: u64 = text
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("retry: "))
                .unwrap()
                .parse()
                .unwrap();
            assert!((10_000..=15_000).contains(&retry), "{text}");
        } else {
            assert_eq!(ids[1..], acme[1..], "every event once, in order");
        }
    }
    assert!(
        turned_away > 0,
        "one history read at a time: some of 40 streams at once are turned away"
    );
    // The reads are over: a new one is served.
    let (_, ended) = read_stream(&delivery, acme[0], last).await;
    assert!(!ended);
}

#[tokio::test]
async fn a_live_stream_of_a_quiet_site_is_told_its_position_with_the_heartbeat() {
    let (setup, acme) = setup(1).await;
    let mut config = delivery_config(&setup.nats.url());
    config.heartbeat = Duration::from_millis(200);
    let delivery = TestService::start_delivery(config).await;
    let mut live = SseClient::connect(
        delivery
            .http
            .get(delivery.url("/v1/sites/acme/events/stream"))
            .bearer_auth(TOKEN),
        None,
    )
    .await;
    let ready = live.next_event(T).await.unwrap();
    assert_eq!(
        (ready.event.as_str(), ready.id.as_str()),
        ("ready", &*acme[0].to_string())
    );
    let mut other = 0;
    for i in 0..3 {
        other = setup.publish("other", &format!("o{i}")).await;
    }
    // The next position (after a heartbeat) is the other site's last event; acme's own
    // events still arrive, in order.
    loop {
        let event = live.next_event(T).await.unwrap();
        assert_eq!(event.event, "position", "{event:?}");
        let seq: u64 = event.id.parse().unwrap();
        assert!(seq <= other);
        if seq == other {
            break;
        }
    }
    let mine = setup.publish("acme", "a-late").await;
    assert_eq!(live.next_message(T).await.unwrap().id, mine);
}

fn acme_stream(delivery: &TestService, site: &str) -> reqwest::RequestBuilder {
    delivery
        .http
        .get(delivery.url(&format!("/v1/sites/{site}/events/stream")))
        .bearer_auth(format!("rk_test_{site}_0123456789"))
}

#[tokio::test]
async fn a_site_over_its_stream_cap_is_told_to_go_away_and_other_sites_are_not() {
    let (setup, _) = setup(0).await;
    let mut config = delivery_config(&setup.nats.url());
    config.max_streams_per_site = 2;
    let delivery = TestService::start_delivery(config).await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut client = SseClient::connect(acme_stream(&delivery, "acme"), None).await;
        assert_eq!(client.next_event(T).await.unwrap().event, "ready");
        open.push(client);
    }
    let mut third = SseClient::connect(acme_stream(&delivery, "acme"), None).await;
    assert_eq!(
        third.status, 200,
        "in-band, so EventSource does not give up"
    );
    let goaway = third.next_event(T).await.unwrap();
    assert_eq!(goaway.event, "goaway");
    let data: Value = serde_json::from_str(&goaway.data).unwrap();
    assert_eq!(data["reason"], "site_stream_limit");
    let retry = goaway.retry.unwrap();
    assert!(retry >= Duration::from_secs(10), "{retry:?}");
    assert!(third.next_event(T).await.is_none(), "and the stream ends");
    // Long-poll still serves the site.
    let r = poll(&delivery, "?since=0").send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Another site is not affected; a place freed is taken again.
    let mut other = SseClient::connect(acme_stream(&delivery, "other"), None).await;
    assert_eq!(other.next_event(T).await.unwrap().event, "ready");
    drop(open.pop());
    // The closed stream's place is free again (once the server has seen it close).
    eventually("a place for acme again", T, || async {
        let mut client = SseClient::connect(acme_stream(&delivery, "acme"), None).await;
        (client.next_event(T).await?.event == "ready").then_some(client)
    })
    .await;
}

#[tokio::test]
async fn a_stream_ends_at_its_lifetime_and_the_client_resumes_without_a_gap() {
    let (setup, _) = setup(0).await;
    let mut config = delivery_config(&setup.nats.url());
    config.max_stream_lifetime = Duration::from_secs(10);
    let delivery = TestService::start_delivery(config).await;
    let started = std::time::Instant::now();
    let mut client = SseClient::connect(acme_stream(&delivery, "acme"), None).await;
    assert_eq!(client.next_event(T).await.unwrap().event, "ready");
    let first = setup.publish("acme", "m1").await;
    assert_eq!(client.next_message(T).await.unwrap().id, first);
    assert!(client.next_message(T).await.is_none(), "the stream ended");
    let lived = started.elapsed();
    assert!(
        lived >= Duration::from_millis(7_400) && lived < Duration::from_secs(15),
        "between 3/4 of the lifetime and the lifetime: {lived:?}"
    );
    // Written while it was away: the resume gets it, once.
    let second = setup.publish("acme", "m2").await;
    let mut resumed = SseClient::connect(acme_stream(&delivery, "acme"), Some(first)).await;
    assert_eq!(resumed.next_message(T).await.unwrap().id, second);
}
