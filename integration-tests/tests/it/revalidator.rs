//! The revalidator against real HTTP targets started by the test.

use std::time::Duration;

use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::receiver::{Reply, TestReceiver};
use spool_integration_tests::services::{ingest_config, revalidator_config, TestService};
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{site_json, TEST_SECRET};

const T: Duration = Duration::from_secs(15);

pub struct Setup {
    pub nats: NatsServer,
    pub ingest: TestService,
    pub revalidator: TestService,
}

impl Setup {
    /// NATS, an ingest, a revalidator, and site `acme` calling `targets`.
    pub async fn start(targets: serde_json::Value) -> Setup {
        let nats = NatsServer::start().await;
        let ingest = TestService::start(ingest_config(&nats.url())).await;
        let mut site = site_json("acme");
        site["revalidate"] = targets;
        ingest.put_site(&site).await;
        let revalidator = TestService::start_revalidator(revalidator_config(&nats.url())).await;
        Setup {
            nats,
            ingest,
            revalidator,
        }
    }

    /// Waits until the revalidator's consumer has nothing pending or unacknowledged: every
    /// event so far was delivered or dead-lettered.
    pub async fn wait_settled(&self) {
        let client = async_nats::connect(self.nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        spool_integration_tests::eventually("the revalidator to settle", T, || async {
            let stream = js.get_stream("SPOOL_EVENTS").await.ok()?;
            let mut consumer: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer("spool-revalidator").await.ok()?;
            let info = consumer.info().await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        })
        .await;
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
