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
