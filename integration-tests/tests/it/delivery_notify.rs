//! `notify: after_revalidate`: a browser hears of a change only once every revalidation
//! target that wants it answered `2xx` (the page it refetches is fresh), or at the site's
//! timeout, marked `"fresh": false`. Nothing of the site overtakes a held event, on the
//! live stream or the poll.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::receiver::{Reply, TestReceiver};
use spool_integration_tests::services::{
    delivery_config, ingest_config, revalidator_config, TestService,
};
use spool_integration_tests::site_json;
use spool_integration_tests::sse::SseClient;
use spool_integration_tests::webhook::Webhook;

const T: Duration = Duration::from_secs(20);

struct Sys {
    _nats: NatsServer,
    ingest: TestService,
    _revalidator: TestService,
    delivery: TestService,
}

async fn start(sites: &[Value]) -> Sys {
    let nats = NatsServer::start().await;
    let ingest = TestService::start(ingest_config(&nats.url())).await;
    for site in sites {
        ingest.put_site(site).await;
    }
    let mut config = revalidator_config(&nats.url());
    // Room for a target that takes 2 s.
    config.call_timeout = Duration::from_secs(5);
    let revalidator = TestService::start_revalidator(config).await;
    crate::revalidator::wait_consumer(&nats.url()).await;
    let delivery = TestService::start_delivery(delivery_config(&nats.url())).await;
    Sys {
        _nats: nats,
        ingest,
        _revalidator: revalidator,
        delivery,
    }
}

impl Sys {
    async fn publish(&self, site: &str, id: &str) -> u64 {
        let (status, body) = Webhook::published(id, "blog", id)
            .send(&self.ingest.http, &self.ingest.base_url, site)
            .await;
        assert_eq!(status, 202, "{body}");
        body["seq"].as_u64().unwrap()
    }

    fn stream(&self, site: &str) -> reqwest::RequestBuilder {
        self.delivery
            .http
            .get(
                self.delivery
                    .url(&format!("/v1/sites/{site}/events/stream")),
            )
            .bearer_auth(format!("rk_test_{site}_0123456789"))
    }

    async fn poll(&self, site: &str, since: u64) -> Value {
        self.delivery
            .http
            .get(
                self.delivery
                    .url(&format!("/v1/sites/{site}/events?since={since}")),
            )
            .bearer_auth(format!("rk_test_{site}_0123456789"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn held_site(id: &str, target: &TestReceiver, timeout_ms: u64) -> Value {
    let mut site = site_json(id);
    site["revalidate"] = json!([target.target(None)]);
    site["notify"] = "after_revalidate".into();
    site["notify_timeout_ms"] = timeout_ms.into();
    site
}

#[tokio::test]
async fn an_event_reaches_the_browser_only_after_the_targets_2xx() {
    let target = TestReceiver::start([]).await;
    target.otherwise(Reply::Slow(Duration::from_secs(2)));
    let sys = start(&[held_site("acme", &target, 15_000)]).await;
    let mut browser = SseClient::connect(sys.stream("acme"), None).await;
    let ready = browser.next_event(T).await.unwrap();
    assert_eq!(ready.event, "ready");
    let before: u64 = ready.id.parse().unwrap();

    let seq = sys.publish("acme", "m1").await;
    let calls = target.wait_seqs(&[seq], T).await;
    let answered = calls[0].at + Duration::from_secs(2);
    // While the target works, a poll from before the event gets nothing, and its cursor
    // stops before the held event.
    let page = sys.poll("acme", before).await;
    assert_eq!(page["events"], json!([]), "{page}");
    assert_eq!(page["next"], before);
    // A browser resuming from before the event during the hold.
    let mut resumed = SseClient::connect(sys.stream("acme"), Some(before)).await;
    let again = resumed.next_message(T).await.unwrap();
    assert_eq!(again.id, seq);
    assert!(
        Instant::now() + Duration::from_millis(20) >= answered,
        "the resumed stream got the event before the target's 2xx"
    );

    let got = browser.next_message(T).await.unwrap();
    let arrived = Instant::now();
    assert_eq!(got.id, seq);
    assert!(
        arrived + Duration::from_millis(20) >= answered,
        "the event arrived {:?} before the target's 2xx",
        answered.saturating_duration_since(arrived)
    );
    assert!(
        got.data.get("fresh").is_none(),
        "fresh in time: {}",
        got.data
    );
    // Now released: a poll and a resume see it.
    let page = sys.poll("acme", before).await;
    assert_eq!(page["events"][0]["seq"], seq);
}

#[tokio::test]
async fn a_failing_target_releases_the_event_at_the_timeout_marked_not_fresh_and_in_order() {
    let target = TestReceiver::start([]).await;
    target.otherwise(Reply::Status(500));
    let sys = start(&[held_site("acme", &target, 1_000)]).await;
    let mut browser = SseClient::connect(sys.stream("acme"), None).await;
    assert_eq!(browser.next_event(T).await.unwrap().event, "ready");
    let sent = Instant::now();
    let first = sys.publish("acme", "m1").await;
    let second = sys.publish("acme", "m2").await;
    let got = browser.next_message(T).await.unwrap();
    assert_eq!(got.id, first, "in order");
    assert_eq!(got.data["fresh"], false, "{}", got.data);
    assert!(
        sent.elapsed() >= Duration::from_millis(900),
        "held for the timeout"
    );
    let next = browser.next_message(T).await.unwrap();
    assert_eq!(next.id, second);
    assert_eq!(next.data["fresh"], false);
    // The window keeps the marked event: a resume sees it the same way.
    let page = sys.poll("acme", first - 1).await;
    assert_eq!(page["events"][0]["fresh"], false);
    assert_eq!(page["events"][1]["seq"], second);
}

#[tokio::test]
async fn two_replicas_release_the_same_events_the_same_way() {
    let slow = TestReceiver::start([]).await;
    slow.otherwise(Reply::Slow(Duration::from_millis(300)));
    let failing = TestReceiver::start([]).await;
    failing.otherwise(Reply::Status(500));
    let mut site = held_site("acme", &slow, 8_000);
    // `news` goes to the failing target (held until the timeout), `blog` to the slow one.
    site["revalidate"] = json!([
        slow.target(Some(&["blog"])),
        failing.target(Some(&["news"]))
    ]);
    site["notify_timeout_ms"] = 1_500.into();
    let sys = start(&[site]).await;
    let second = TestService::start_delivery(delivery_config(&sys._nats.url())).await;
    let connect = |delivery: &TestService| {
        SseClient::connect(
            delivery
                .http
                .get(delivery.url("/v1/sites/acme/events/stream"))
                .bearer_auth("rk_test_acme_0123456789"),
            None,
        )
    };
    let mut a = connect(&sys.delivery).await;
    let mut b = connect(&second).await;
    assert_eq!(a.next_event(T).await.unwrap().event, "ready");
    assert_eq!(b.next_event(T).await.unwrap().event, "ready");
    let mut sent = Vec::new();
    for (i, collection) in ["blog", "news", "blog"].iter().enumerate() {
        let id = format!("m{i}");
        let (status, body) = Webhook::published(&id, collection, &id)
            .send(&sys.ingest.http, &sys.ingest.base_url, "acme")
            .await;
        assert_eq!(status, 202, "{body}");
        sent.push(body["seq"].as_u64().unwrap());
    }
    let mut seen = Vec::new();
    for client in [&mut a, &mut b] {
        let mut got = Vec::new();
        for _ in 0..3 {
            let m = client.next_message(T).await.unwrap();
            got.push((m.id, m.data.get("fresh").cloned()));
        }
        seen.push(got);
    }
    assert_eq!(seen[0], seen[1], "both replicas released the same way");
    let ids: Vec<u64> = seen[0].iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids, sent,
        "in order: the blog event behind the held news event waits"
    );
    assert_eq!(seen[0][0].1, None, "the first blog event: fresh in time");
    assert_eq!(
        seen[0][1].1,
        Some(json!(false)),
        "the news event: timed out"
    );
}

/// A preview reader's subscriber token for acme (signed with the site's secret).
fn preview_token() -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let key = spool_proto::signing::SigningKey::from_secret(spool_integration_tests::TEST_SECRET)
        .unwrap();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "editor", "site": "acme", "exp": exp, "scope": "preview"}),
        &EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap()
}

/// Reads a stream until its `event: revalidated` frames have covered `seqs`; checks that
/// each frame comes after the events it names. Returns the events' ids and the frames.
async fn until_revalidated(client: &mut SseClient, seqs: &[u64]) -> (Vec<u64>, Vec<Value>) {
    let (mut events, mut notices) = (Vec::<u64>::new(), Vec::<Value>::new());
    let covered = |notices: &[Value]| -> Vec<u64> {
        let mut all: Vec<u64> = notices
            .iter()
            .flat_map(|n| n["seqs"].as_array().unwrap().clone())
            .map(|s| s.as_u64().unwrap())
            .collect();
        all.sort();
        all
    };
    while covered(&notices) != seqs {
        let event = client.next_event(T).await.expect("stream open");
        match event.event.as_str() {
            "message" => events.push(event.id.parse().unwrap()),
            "revalidated" => {
                let notice: Value = serde_json::from_str(&event.data).unwrap();
                for seq in notice["seqs"].as_array().unwrap() {
                    assert!(
                        events.contains(&seq.as_u64().unwrap()),
                        "a notice before its event: {notice} after {events:?}"
                    );
                }
                notices.push(notice);
            }
            _ => {}
        }
    }
    (events, notices)
}

#[tokio::test]
async fn revalidated_frames_tell_each_reader_what_is_fresh_after_its_events_and_no_drafts() {
    let target = TestReceiver::start([]).await;
    target.otherwise(Reply::Status(200));
    let mut site = held_site("acme", &target, 10_000);
    // The target is sent drafts too (a preview deployment's cache).
    let mut with_drafts = target.target(None);
    with_drafts["types"] = json!(["content.updated", "content.published"]);
    site["revalidate"] = json!([with_drafts.clone()]);
    site["subscriber_secret"] = spool_integration_tests::TEST_SECRET.into();
    let sys = start(&[site]).await;
    let stream = |query: &str, token: &str| {
        sys.delivery
            .http
            .get(
                sys.delivery
                    .url(&format!("/v1/sites/acme/events/stream{query}")),
            )
            .bearer_auth(token)
    };
    let visitor_token = "rk_test_acme_0123456789";
    let mut visitor = SseClient::connect(stream("?revalidated=1", visitor_token), None).await;
    let mut editor = SseClient::connect(stream("?revalidated=true", &preview_token()), None).await;
    let mut plain = SseClient::connect(stream("", visitor_token), None).await;
    for client in [&mut visitor, &mut editor, &mut plain] {
        assert_eq!(client.next_event(T).await.unwrap().event, "ready");
    }

    let draft_body = json!({"type": "content.updated", "collection": "blog",
        "item": {"id": "d1", "slug": "secret-draft", "title": "Secret"}});
    let (status, body) = Webhook::with_body("d1", draft_body.to_string().into_bytes())
        .send(&sys.ingest.http, &sys.ingest.base_url, "acme")
        .await;
    assert_eq!(status, 202, "{body}");
    let draft = body["seq"].as_u64().unwrap();
    let published = sys.publish("acme", "p1").await;

    // The editor: both events, each before the notice of its revalidation.
    let key = spool_proto::outcome::target_key(
        &spool_proto::names::SiteId::parse("acme").unwrap(),
        with_drafts["url"].as_str().unwrap(),
    );
    let (events, notices) = until_revalidated(&mut editor, &[draft, published]).await;
    assert_eq!(events, [draft, published]);
    let paths: Vec<&Value> = notices
        .iter()
        .flat_map(|n| n["paths"].as_array().unwrap())
        .collect();
    assert!(paths.contains(&&json!("/blog/secret-draft")), "{notices:?}");
    for notice in &notices {
        assert_eq!(notice["target"], key, "{notice}");
        assert!(notice["at"].is_string(), "{notice}");
    }

    // The visitor: the published event and the notice of it only; never the draft's path.
    let (events, notices) = until_revalidated(&mut visitor, &[published]).await;
    assert_eq!(events, [published]);
    assert!(
        !format!("{notices:?}").contains("secret-draft"),
        "{notices:?}"
    );
    assert_eq!(notices.len(), 1);
    assert_eq!(
        notices[0]["paths"],
        json!(["/blog/post-p1", "/blog"]),
        "{notices:?}"
    );
    assert_eq!(
        notices[0]["tags"],
        json!(["blog", "blog:post-p1"]),
        "{notices:?}"
    );

    // A reader that didn't ask gets the events only.
    assert_eq!(plain.next_message(T).await.unwrap().id, published);
    let next = sys.publish("acme", "p2").await;
    let event = plain.next_event(T).await.unwrap();
    assert_eq!(
        (event.event.as_str(), event.id.as_str()),
        ("message", &*next.to_string())
    );

    // A bad value is refused with a clear message.
    let bad = stream("?revalidated=yes", visitor_token)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("revalidated"));
}
