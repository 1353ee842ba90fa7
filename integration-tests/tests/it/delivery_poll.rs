//! Poll and long-poll (`GET /v1/sites/{site}/events`): the cursor without `since`, pages
//! after a cursor (from the in-memory window and from JetStream), paging with `limit`,
//! waiting with `wait`, and the `collections` filter.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use spool_integration_tests::services::{delivery_config, TestService};
use spool_integration_tests::sse::SseClient;
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{eventually, metrics_text, read_events, site_json};

use crate::delivery_stream::System;

const T: Duration = Duration::from_secs(10);
const TOKEN: &str = "rk_test_acme_0123456789";

/// `GET /v1/sites/acme/events{query}` with acme's token: the status and the JSON body.
async fn poll(delivery: &TestService, query: &str) -> (u16, Value) {
    let r = delivery
        .http
        .get(delivery.url(&format!("/v1/sites/acme/events{query}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("poll request");
    let status = r.status().as_u16();
    assert_eq!(
        r.headers()["content-type"],
        "application/json",
        "poll {query}"
    );
    (status, r.json().await.expect("poll JSON body"))
}

/// A 200 page: its events' seqs, `next` and `reset`.
async fn page(delivery: &TestService, query: &str) -> (Vec<Value>, u64, Value) {
    let (status, body) = poll(delivery, query).await;
    assert_eq!(status, 200, "poll {query}: {body}");
    let obj = body.as_object().expect("a JSON object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["events", "next", "reset"], "poll {query}: {body}");
    let events = body["events"].as_array().expect("events array").clone();
    let next = body["next"].as_u64().expect("numeric next");
    (events, next, body["reset"].clone())
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

/// Publishes a webhook for any site of the system and returns its seq.
async fn publish_to(sys: &System, site: &str, id: &str, collection: &str) -> u64 {
    let (status, body) = Webhook::published(id, collection, id)
        .send(&sys.ingest.http, &sys.ingest.base_url, site)
        .await;
    assert_eq!(status, 202, "{body}");
    body["seq"].as_u64().unwrap()
}

/// Waits until the delivery's feed has seen `seq` (the poll without `since` says so).
async fn feed_reached(delivery: &TestService, seq: u64) {
    eventually("the feed to reach the last seq", T, || async {
        let (_, next, _) = page(delivery, "").await;
        (next >= seq).then_some(())
    })
    .await;
}

/// The stored events of `site`, as the delivered JSON (seq included).
async fn stored(sys: &System, site: &str) -> Vec<Value> {
    read_events(&sys.nats.url())
        .await
        .into_iter()
        .filter(|s| s.event.site.as_str() == site)
        .map(|s| {
            let mut v = serde_json::to_value(&s.event).unwrap();
            v["seq"] = s.seq.into();
            v
        })
        .collect()
}

/// Follows `next` with `limit` until an empty page; returns every event seen.
async fn page_through(delivery: &TestService, since: u64, limit: usize, extra: &str) -> Vec<Value> {
    let mut cursor = since;
    let mut all = Vec::new();
    for _ in 0..1000 {
        let (events, next, reset) =
            page(delivery, &format!("?since={cursor}&limit={limit}{extra}")).await;
        assert_eq!(reset, Value::Null);
        assert!(
            events.len() <= limit,
            "a page of {} > limit {limit}",
            events.len()
        );
        if events.is_empty() {
            assert!(next >= cursor, "an empty page never moves the cursor back");
            return all;
        }
        let last = *seqs(&events).last().unwrap();
        assert!(next >= last, "next = its last seq, or where reading ended");
        cursor = next;
        all.extend(events);
    }
    panic!("paging never ended");
}

/// A second delivery started now: its window starts at the stream's end, so every older
/// cursor is served from JetStream.
async fn fresh_delivery(sys: &System) -> TestService {
    TestService::start_delivery(delivery_config(&sys.nats.url())).await
}

#[tokio::test]
async fn no_since_answers_no_events_and_the_current_last_seq() {
    let sys = System::start().await;
    let (events, next, reset) = page(&sys.delivery, "").await;
    assert!(events.is_empty());
    assert_eq!((next, reset), (0, Value::Null));

    let mut last = 0;
    for i in 0..3 {
        last = sys.publish(&format!("m{i}"), "blog").await;
    }
    // Another site's event moves the stream's end too.
    sys.ingest.put_site(&site_json("other")).await;
    let other = publish_to(&sys, "other", "o1", "blog").await;
    assert!(other > last);
    feed_reached(&sys.delivery, other).await;
    let (events, next, reset) = page(&sys.delivery, "").await;
    assert!(events.is_empty(), "no since = no events");
    assert_eq!((next, reset), (other, Value::Null));
    // With limit, wait and collections, still nothing and at once.
    let started = Instant::now();
    let (events, next, _) = page(&sys.delivery, "?limit=5&wait=5&collections=blog").await;
    assert!(events.is_empty());
    assert_eq!(next, other);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "no since does not wait"
    );
}

#[tokio::test]
async fn since_returns_the_later_events_in_order_as_the_sse_json() {
    let sys = System::start().await;
    let mut published = Vec::new();
    for i in 0..5 {
        published.push(sys.publish(&format!("m{i}"), "blog").await);
    }
    feed_reached(&sys.delivery, published[4]).await;
    let want = stored(&sys, "acme").await;
    assert_eq!(seqs(&want), published);

    // What SSE sends for the same events.
    let mut sse = SseClient::connect(sys.stream("?since=0"), None).await;
    let mut sse_json = Vec::new();
    for _ in 0..5 {
        let m = sse.next_message(T).await.unwrap();
        assert_eq!(m.data["seq"], m.id);
        sse_json.push(m.data);
    }
    assert_eq!(sse_json, want);

    let fresh = fresh_delivery(&sys).await;
    for (name, delivery) in [("window", &sys.delivery), ("jetstream", &fresh)] {
        let (events, next, reset) = page(delivery, "?since=0").await;
        assert_eq!(
            events, want,
            "{name}: since=0 = every event, as SSE sends them"
        );
        assert_eq!((next, &reset), (published[4], &Value::Null), "{name}");

        let (events, next, _) = page(delivery, &format!("?since={}", published[1])).await;
        assert_eq!(events, want[2..].to_vec(), "{name}: the events after since");
        assert_eq!(next, published[4], "{name}");

        let (events, next, _) = page(delivery, &format!("?since={}", published[4])).await;
        assert!(events.is_empty(), "{name}: nothing after the last");
        assert_eq!(next, published[4], "{name}");
    }
    assert_eq!(
        want[0]["paths"],
        json!(["/blog/post-m0", "/blog"]),
        "the contract's mapping"
    );
}

#[tokio::test]
async fn limit_pages_through_every_event_exactly_once_in_order() {
    let sys = System::start().await;
    sys.ingest.put_site(&site_json("other")).await;
    let mut acme = Vec::new();
    for i in 0..23 {
        acme.push(sys.publish(&format!("a{i}"), "blog").await);
        if i % 3 == 0 {
            // Another site's events in between: not acme's, never in its pages.
            publish_to(&sys, "other", &format!("o{i}"), "blog").await;
        }
    }
    let last = publish_to(&sys, "other", "o-last", "blog").await;
    feed_reached(&sys.delivery, last).await;
    let want = stored(&sys, "acme").await;
    assert_eq!(seqs(&want), acme);

    let fresh = fresh_delivery(&sys).await;
    for (name, delivery) in [("window", &sys.delivery), ("jetstream", &fresh)] {
        for limit in [1, 5, 7, 23, 1000] {
            let got = page_through(delivery, 0, limit, "").await;
            assert_eq!(got, want, "{name}, limit={limit}");
        }
        // From the middle.
        let got = page_through(delivery, acme[10], 4, "").await;
        assert_eq!(got, want[11..].to_vec(), "{name}, from the middle");
    }
    // The default page is 100 events.
    for i in 23..105 {
        acme.push(sys.publish(&format!("a{i}"), "blog").await);
    }
    feed_reached(&sys.delivery, *acme.last().unwrap()).await;
    let (events, next, _) = page(&sys.delivery, "?since=0").await;
    assert_eq!(seqs(&events), acme[..100].to_vec(), "limit defaults to 100");
    assert_eq!(next, acme[99]);
}

/// The value of `spool_delivery_open_connections{kind="poll"}` (shared by every service of
/// this test process, so only a hint that *a* poll is open).
async fn open_polls(delivery: &TestService) -> f64 {
    let text = metrics_text(&delivery.http, &delivery.base_url)
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("spool_delivery_open_connections") && l.contains("\"poll\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_long_poll_answers_promptly_when_an_event_arrives() {
    let sys = System::start().await;
    let first = sys.publish("m0", "blog").await;
    feed_reached(&sys.delivery, first).await;

    let delivery = sys.delivery.http.clone();
    let url = sys
        .delivery
        .url(&format!("/v1/sites/acme/events?since={first}&wait=10"));
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        let r = delivery.get(url).bearer_auth(TOKEN).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap(), started.elapsed())
    });
    // Best effort: publish once a poll is open (if it is not ours, the poll finds the event
    // at once instead, which is also right).
    eventually("an open poll", T, || async {
        (open_polls(&sys.delivery).await >= 1.0).then_some(())
    })
    .await;
    let second = sys.publish("m1", "blog").await;
    let (status, body, elapsed) = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("the long-poll answered")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(seqs(body["events"].as_array().unwrap()), [second]);
    assert_eq!(body["next"], second);
    assert_eq!(body["reset"], Value::Null);
    assert_eq!(body["events"][0], stored(&sys, "acme").await[1]);
    assert!(
        elapsed < Duration::from_secs(5),
        "a long-poll with wait=10 took {elapsed:?} to see an event"
    );
}

#[tokio::test]
async fn a_long_poll_with_nothing_new_answers_empty_after_its_wait() {
    let sys = System::start().await;
    let last = sys.publish("m0", "blog").await;
    feed_reached(&sys.delivery, last).await;

    let started = Instant::now();
    let (events, next, reset) = page(&sys.delivery, &format!("?since={last}&wait=1")).await;
    let elapsed = started.elapsed();
    assert!(events.is_empty());
    assert_eq!((next, reset), (last, Value::Null), "next = since");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "wait=1 answered after {elapsed:?}"
    );

    // wait=0 (the default) answers at once.
    let started = Instant::now();
    let (events, next, _) = page(&sys.delivery, &format!("?since={last}&wait=0")).await;
    assert!(events.is_empty());
    assert_eq!(next, last);
    assert!(started.elapsed() < Duration::from_millis(900));
}

#[tokio::test]
async fn collections_filters_pages_and_long_polls() {
    let sys = System::start().await;
    let b1 = sys.publish("b1", "blog").await;
    let p1 = sys.publish("p1", "pages").await;
    let n1 = sys.publish("n1", "news").await;
    let b2 = sys.publish("b2", "blog").await;
    let p2 = sys.publish("p2", "pages").await;
    feed_reached(&sys.delivery, p2).await;
    let all = stored(&sys, "acme").await;
    assert_eq!(seqs(&all), [b1, p1, n1, b2, p2]);

    let fresh = fresh_delivery(&sys).await;
    for (name, delivery) in [("window", &sys.delivery), ("jetstream", &fresh)] {
        let (events, next, _) = page(delivery, "?since=0&collections=blog,news").await;
        assert_eq!(seqs(&events), [b1, n1, b2], "{name}");
        assert_eq!(events[1], all[2], "{name}");
        assert_eq!(next, p2, "{name}: caught up, next = where reading ended");

        let (events, next, _) = page(delivery, "?since=0&collections=pages").await;
        assert_eq!(seqs(&events), [p1, p2], "{name}");
        assert_eq!(next, p2, "{name}");

        let (events, next, _) = page(delivery, "?since=0&collections=nothing").await;
        assert!(events.is_empty(), "{name}");
        assert_eq!(
            next, p2,
            "{name}: the cursor moves past what isn't the reader's"
        );

        let got = page_through(delivery, 0, 1, "&collections=blog,pages").await;
        assert_eq!(seqs(&got), [b1, p1, b2, p2], "{name}: paging with a filter");
    }

    // A long-poll for `news` is not woken by `pages`, and answers with the `news` event.
    let delivery = sys.delivery.http.clone();
    let url = sys.delivery.url(&format!(
        "/v1/sites/acme/events?since={p2}&wait=10&collections=news"
    ));
    let waiting = tokio::spawn(async move {
        let r = delivery.get(url).bearer_auth(TOKEN).send().await.unwrap();
        r.json::<Value>().await.unwrap()
    });
    eventually("an open poll", T, || async {
        (open_polls(&sys.delivery).await >= 1.0).then_some(())
    })
    .await;
    sys.publish("p3", "pages").await;
    let n2 = sys.publish("n2", "news").await;
    let body = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("the long-poll answered")
        .unwrap();
    assert_eq!(seqs(body["events"].as_array().unwrap()), [n2], "{body}");
    assert_eq!(body["next"], n2);
}
