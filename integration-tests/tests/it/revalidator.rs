//! The revalidator against real HTTP targets started by the test: retries, dead letters.
//! The other revalidator tests (`revalidator_*.rs`) use the [`Setup`] and helpers here.

use std::time::Duration;

use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::receiver::{Reply, TestReceiver};
use spool_integration_tests::services::{ingest_config, revalidator_config, TestService};
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{eventually, site_json, ADMIN_TOKEN, TEST_SECRET};
use spool_revalidator::RevalidatorConfig;

pub const T: Duration = Duration::from_secs(15);
/// The durable consumer every replica shares (the default `SPOOL_CONSUMER_NAME`).
pub const CONSUMER: &str = "spool-revalidator";

pub struct Setup {
    pub nats: NatsServer,
    pub ingest: TestService,
    pub revalidator: TestService,
}

pub async fn consumer_info(
    js: &async_nats::jetstream::Context,
) -> Option<async_nats::jetstream::consumer::Info> {
    let stream = js.get_stream("SPOOL_EVENTS").await.ok()?;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(CONSUMER).await.ok()?;
    consumer.info().await.ok().cloned()
}

/// Waits until the revalidator's durable consumer exists. It is created from new events
/// on: an event published before it exists is never revalidated. `/readyz` waits for it
/// too; this also covers a revalidator started as a process and tests that don't wait
/// for `/readyz`.
pub async fn wait_consumer(nats_url: &str) {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await.unwrap());
    eventually("the revalidation consumer", T, || consumer_info(&js)).await;
}

/// Waits until the revalidator's consumer has nothing pending or unacknowledged and no
/// retry waits in `SPOOL_RETRY`: every event so far was delivered or dead-lettered.
pub async fn wait_settled(nats_url: &str) {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await.unwrap());
    eventually("the revalidator to settle", T, || async {
        let info = consumer_info(&js).await?;
        let waiting = retries_waiting(&js).await?;
        (info.num_pending == 0 && info.num_ack_pending == 0 && waiting == 0).then_some(())
    })
    .await;
}

/// Retries in `SPOOL_RETRY`: waiting for their time, or due and not yet acknowledged.
pub async fn retries_waiting(js: &async_nats::jetstream::Context) -> Option<u64> {
    let mut stream = js.get_stream("SPOOL_RETRY").await.ok()?;
    Some(stream.info().await.ok()?.state.messages)
}

/// `GET /v1/admin/dlq?site=acme` with the admin token: the raw text and the records.
pub async fn dead_letters(
    http: &reqwest::Client,
    base_url: &str,
) -> (String, Vec<serde_json::Value>) {
    list_dead_letters(http, base_url, "site=acme").await
}

/// `GET /v1/admin/dlq?{query}` with the admin token: the raw text and the records.
pub async fn list_dead_letters(
    http: &reqwest::Client,
    base_url: &str,
    query: &str,
) -> (String, Vec<serde_json::Value>) {
    let r = http
        .get(format!("{base_url}/v1/admin/dlq?{query}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("GET /v1/admin/dlq");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{query}: {text}");
    let json: serde_json::Value = serde_json::from_str(&text).expect("DLQ JSON");
    let records = json["dead_letters"]
        .as_array()
        .expect("dead_letters")
        .clone();
    (text, records)
}

impl Setup {
    /// NATS, an ingest, a revalidator, and site `acme` calling `targets`.
    pub async fn start(targets: serde_json::Value) -> Setup {
        Setup::start_with(targets, |_| {}).await
    }

    /// [`Setup::start`] with the test revalidator configuration changed by `configure`.
    pub async fn start_with(
        targets: serde_json::Value,
        configure: impl FnOnce(&mut RevalidatorConfig),
    ) -> Setup {
        let nats = NatsServer::start().await;
        let ingest = TestService::start(ingest_config(&nats.url())).await;
        let mut site = site_json("acme");
        site["revalidate"] = targets;
        ingest.put_site(&site).await;
        let mut config = revalidator_config(&nats.url());
        configure(&mut config);
        let revalidator = TestService::start_revalidator(config).await;
        wait_consumer(&nats.url()).await;
        Setup {
            nats,
            ingest,
            revalidator,
        }
    }

    pub async fn wait_settled(&self) {
        wait_settled(&self.nats.url()).await;
    }

    /// The dead letters of site `acme`, from the revalidator's admin API.
    pub async fn dead_letters(&self) -> (String, Vec<serde_json::Value>) {
        dead_letters(&self.revalidator.http, &self.revalidator.base_url).await
    }

    pub async fn publish(&self, id: &str, collection: &str) -> u64 {
        let (status, body) = Webhook::published(id, collection, id)
            .send(&self.ingest.http, &self.ingest.base_url, "acme")
            .await;
        assert_eq!(status, 202, "{body}");
        body["seq"].as_u64().unwrap()
    }
}

#[tokio::test]
async fn a_target_failing_twice_gets_exactly_three_signed_calls_with_one_webhook_id() {
    let target = TestReceiver::start([Reply::Status(500), Reply::Status(503)]).await;
    let setup = Setup::start(serde_json::json!([target.target(None)])).await;
    let seq = setup.publish("msg_1", "blog").await;
    target.wait_calls(3, T).await;
    setup.wait_settled().await;
    let calls = target.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    let id = calls[0].webhook_id().to_string();
    assert!(id.starts_with("rv_"));
    for call in &calls {
        assert_eq!(call.webhook_id(), id);
        assert!(call.signature_valid(TEST_SECRET), "bad signature");
        assert_eq!(call.body["type"], "revalidate");
        assert_eq!(call.body["site"], "acme");
        assert_eq!(call.seqs(), [seq]);
        assert_eq!(call.paths(), ["/blog/post-msg_1", "/blog"]);
        assert_eq!(
            call.body["tags"],
            serde_json::json!(["blog", "blog:post-msg_1"])
        );
        assert_eq!(call.body["events"][0]["slug"], "post-msg_1");
    }
    // Backoff: the second call waited at least the first delay (100 ms - 20 % jitter).
    assert!(calls[1].at - calls[0].at >= Duration::from_millis(80));
}

#[tokio::test]
async fn a_400_is_dead_lettered_at_once_without_the_secret() {
    let target = TestReceiver::start([Reply::Status(400)]).await;
    let setup = Setup::start(serde_json::json!([target.target(None)])).await;
    let seq = setup.publish("msg_1", "blog").await;
    target.wait_calls(1, T).await;
    setup.wait_settled().await;
    assert_eq!(target.calls().len(), 1, "a 400 is not retried");

    let (text, records) = setup.dead_letters().await;
    assert_eq!(records.len(), 1, "{text}");
    let record = &records[0];
    assert_eq!(record["reason"], "permanent_status", "{record}");
    assert_eq!(record["last_status"], 400, "{record}");
    assert_eq!(record["attempts"], 1, "{record}");
    assert_eq!(record["site"], "acme", "{record}");
    assert_eq!(record["url"], target.url.as_str(), "{record}");
    assert_eq!(record["event"]["seq"], seq, "{record}");
    assert_eq!(record["event"]["id"], "msg_1", "{record}");
    assert_eq!(
        record["webhook_id"],
        target.calls()[0].webhook_id(),
        "{record}"
    );
    assert!(record["dlq_seq"].as_u64().is_some(), "{record}");
    // Neither the secret nor its key material is anywhere in the answer.
    let key = TEST_SECRET.trim_start_matches("whsec_");
    assert!(!text.contains(key), "the target's secret leaked: {text}");
}

#[tokio::test]
async fn exhausted_retries_are_dead_lettered_after_schedule_plus_one_attempts() {
    // The test schedule has 3 delays: 4 attempts, then the dead letter.
    let target = TestReceiver::start(std::iter::repeat_n(Reply::Status(500), 10)).await;
    let setup = Setup::start(serde_json::json!([target.target(None)])).await;
    let seq = setup.publish("msg_1", "blog").await;
    target.wait_calls(4, T).await;
    setup.wait_settled().await;
    let calls = target.calls();
    assert_eq!(calls.len(), 4, "{calls:?}");
    let id = calls[0].webhook_id();
    assert!(calls
        .iter()
        .all(|c| c.webhook_id() == id && c.seqs() == [seq]));

    let (text, records) = setup.dead_letters().await;
    assert_eq!(records.len(), 1, "{text}");
    let record = &records[0];
    assert_eq!(record["reason"], "retries_exhausted", "{record}");
    assert_eq!(record["attempts"], 4, "{record}");
    assert_eq!(record["last_status"], 500, "{record}");
    assert_eq!(record["event"]["seq"], seq, "{record}");
    assert_eq!(record["webhook_id"], id, "{record}");
}

#[tokio::test]
async fn retry_after_of_a_429_is_honoured() {
    let target = TestReceiver::start([Reply::RetryAfter(429, 1)]).await;
    let setup = Setup::start(serde_json::json!([target.target(None)])).await;
    let seq = setup.publish("msg_1", "blog").await;
    let calls = target.wait_calls(2, T).await;
    setup.wait_settled().await;
    assert_eq!(target.calls().len(), 2);
    let waited = calls[1].at - calls[0].at;
    println!("second call {waited:?} after the 429");
    // The schedule's own first delay is 100 ms (± 20 %): only Retry-After explains a second.
    assert!(
        waited >= Duration::from_millis(950),
        "the retry came {waited:?} after a 429 with Retry-After: 1"
    );
    assert_eq!(calls[1].webhook_id(), calls[0].webhook_id());
    assert_eq!(calls[1].seqs(), [seq]);
    assert!(setup.dead_letters().await.1.is_empty());
}
