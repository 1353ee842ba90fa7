//! The real `spool-revalidator` binary killed with SIGKILL in the middle of a call: the
//! event is called again after a restart, never lost.

use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::process::ServiceProcess;
use spool_integration_tests::receiver::{Reply, TestReceiver};
use spool_integration_tests::services::{ingest_config, TestService};
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{
    site_json, write_sites_file, ADMIN_TOKEN, LOOPBACK_TARGET_NETWORKS, TEST_SECRET,
};

use crate::revalidator::{dead_letters, wait_consumer, wait_settled, T};

#[tokio::test]
async fn kill_9_mid_call_then_restart_calls_again() {
    let nats = NatsServer::start().await;
    // The first call never gets an answer; the next ones get 200.
    let target = TestReceiver::start([Reply::Hang]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut site = site_json("acme");
    site["revalidate"] = serde_json::json!([target.target(None)]);
    let sites = write_sites_file(dir.path(), &[site]);
    let env = [
        ("NATS_URL", nats.url()),
        ("SPOOL_SITES_FILE", sites.display().to_string()),
        ("SPOOL_ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
        ("SPOOL_ACK_WAIT", "1s".to_string()),
        ("SPOOL_CALL_TIMEOUT", "30s".to_string()),
        ("SPOOL_RETRY_SCHEDULE", "100ms".to_string()),
        (
            "SPOOL_ALLOWED_TARGET_NETWORKS",
            LOOPBACK_TARGET_NETWORKS.to_string(),
        ),
    ];
    let mut first = ServiceProcess::start("spool-revalidator", &env).await;
    wait_consumer(&nats.url()).await;
    // The ingest finds the site in the registry the revalidator wrote from its file.
    let ingest = TestService::start(ingest_config(&nats.url())).await;
    let (status, body) = Webhook::published("msg_1", "blog", "1")
        .send(&ingest.http, &ingest.base_url, "acme")
        .await;
    assert_eq!(status, 202, "{body}");
    let seq = body["seq"].as_u64().unwrap();

    target.wait_calls(1, T).await;
    let exit = first.kill9().await;
    assert!(!exit.success(), "killed: {exit}");

    let second = ServiceProcess::start("spool-revalidator", &env).await;
    let calls = target.wait_calls(2, T).await;
    wait_settled(&nats.url()).await;
    let calls_after = target.calls();
    assert_eq!(calls_after.len(), 2, "{calls_after:?}");
    assert_eq!(calls[1].webhook_id(), calls[0].webhook_id());
    for call in &calls {
        assert_eq!(call.seqs(), [seq]);
        assert!(call.signature_valid(TEST_SECRET), "bad signature");
    }
    let (text, records) = dead_letters(&reqwest::Client::new(), &second.base_url).await;
    assert!(records.is_empty(), "{text}");
}
