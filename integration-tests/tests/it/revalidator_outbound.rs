//! Where the revalidator may call, and what it shows of a target's URL: a target that is
//! not on a public address (here: loopback, where every test receiver listens) is refused
//! unless `SPOOL_ALLOWED_TARGET_NETWORKS` allows its network — never called, dead-lettered
//! at once (`target_not_allowed`) — and the credentials a target URL carries (userinfo,
//! query values) reach neither the dead letters nor the logs.

use std::process::Stdio;

use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::process::{listening_port, spawn_tied, tied_command};
use spool_integration_tests::receiver::{Reply, TestReceiver};
use spool_integration_tests::services::{ingest_config, revalidator_config, TestService};
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{
    eventually, metric_value, metrics_text, service_binary, site_json, write_sites_file,
    ADMIN_TOKEN, TEST_SECRET,
};

use crate::revalidator::{dead_letters, wait_consumer, wait_settled, Setup, T};

/// `POST /v1/admin/dlq/{seq}/replay` with the admin token: the status and the JSON answer.
async fn replay(revalidator: &TestService, dlq_seq: u64) -> (u16, serde_json::Value) {
    let r = revalidator
        .http
        .post(revalidator.url(&format!("/v1/admin/dlq/{dlq_seq}/replay")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("replay request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn a_loopback_target_is_dead_lettered_without_a_call_unless_its_network_is_allowed() {
    let receiver = TestReceiver::start([]).await;
    let url = format!("{}?token=abc", receiver.url);
    let target = serde_json::json!([{ "url": url, "secret": TEST_SECRET }]);
    // The production default: no allow list, public addresses only.
    let setup = Setup::start_with(target, |config| config.allowed_target_networks.clear()).await;
    let seq = setup.publish("msg_1", "blog").await;
    setup.wait_settled().await;
    assert!(receiver.calls().is_empty(), "a refused target was called");

    let (text, records) = setup.dead_letters().await;
    assert_eq!(records.len(), 1, "{text}");
    let record = &records[0];
    assert_eq!(record["reason"], "target_not_allowed", "{record}");
    assert_eq!(record["attempts"], 1, "not retried: {record}");
    assert_eq!(record["last_status"], serde_json::Value::Null, "{record}");
    assert_eq!(record["event"]["seq"], seq, "{record}");
    let error = record["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("127.0.0.1 (loopback) is not public")
            && error.contains("SPOOL_ALLOWED_TARGET_NETWORKS"),
        "{record}"
    );
    // The URL without the token's value; nothing else in the record holds it (the
    // webhook id, a hash, could hold the letters by chance: it is left out).
    assert_eq!(
        record["url"],
        format!("{}?token=REDACTED", receiver.url),
        "{record}"
    );
    let mut shown = record.clone();
    shown["webhook_id"] = serde_json::Value::Null;
    assert!(
        !shown.to_string().contains("abc"),
        "the token leaked: {record}"
    );
    let key = TEST_SECRET.trim_start_matches("whsec_");
    assert!(!text.contains(key), "the target's secret leaked: {text}");

    let metrics = metrics_text(&setup.revalidator.http, &setup.revalidator.base_url)
        .await
        .unwrap_or_default();
    assert_eq!(
        metric_value(
            &metrics,
            "spool_revalidator_dead_letters_total{reason=\"target_not_allowed\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "spool_revalidator_targets_refused_total"),
        Some(1.0),
        "{metrics}"
    );

    // A replay is refused the same way: the record stays, and still nothing is called.
    let dlq_seq = record["dlq_seq"].as_u64().unwrap();
    let (status, body) = replay(&setup.revalidator, dlq_seq).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "replay_failed", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("is not public"), "{body}");
    assert!(!message.contains("abc"), "{body}");
    assert!(receiver.calls().is_empty());

    // The same target with loopback allowed: called, with its token; the dead letter can
    // now be replayed (the record names its target by a key, not by the redacted URL).
    let Setup {
        nats,
        ingest,
        revalidator,
    } = setup;
    revalidator.stop().await.unwrap();
    let revalidator = TestService::start_revalidator(revalidator_config(&nats.url())).await;
    let (status, body) = Webhook::published("msg_2", "blog", "msg_2")
        .send(&ingest.http, &ingest.base_url, "acme")
        .await;
    assert_eq!(status, 202, "{body}");
    let calls = receiver.wait_calls(1, T).await;
    assert_eq!(calls[0].seqs(), [body["seq"].as_u64().unwrap()]);
    assert!(calls[0].signature_valid(TEST_SECRET), "bad signature");
    wait_settled(&nats.url()).await;
    let (status, body) = replay(&revalidator, dlq_seq).await;
    assert_eq!(status, 200, "{body}");
    let calls = receiver.wait_calls(2, T).await;
    assert_eq!(calls[1].seqs(), [seq]);
    let (text, records) = dead_letters(&revalidator.http, &revalidator.base_url).await;
    assert!(records.is_empty(), "{text}");
}

/// A `spool-revalidator` process whose logs (stdout) go to a file; killed when dropped.
struct LoggedProcess {
    child: std::process::Child,
    base_url: String,
}

impl LoggedProcess {
    async fn start(env: &[(&str, String)], log: &std::path::Path) -> LoggedProcess {
        let file = std::fs::File::create(log).expect("log file");
        let mut command = tied_command(service_binary("spool-revalidator"));
        command
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("SPOOL_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::from(file))
            .stderr(Stdio::inherit());
        let child = spawn_tied(command).expect("start spool-revalidator");
        let pid = child.id();
        let port = eventually("spool-revalidator listening", T, || async {
            listening_port(pid)
        })
        .await;
        LoggedProcess {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// SIGTERM, and waits for it to exit (its logs are then complete).
    async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        eventually("spool-revalidator to exit", T, || {
            let exited = matches!(self.child.try_wait(), Ok(Some(_)));
            async move { exited.then_some(()) }
        })
        .await;
    }
}

impl Drop for LoggedProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn credentials_in_target_urls_and_signing_secrets_never_reach_the_logs() {
    let nats = NatsServer::start().await;
    // Fails once (a retry, a pause: the paths that log the target), then accepts.
    let receiver = TestReceiver::start([Reply::Status(503)]).await;
    let with_credentials = receiver
        .url
        .replacen("http://", "http://user-Zq9:pass-Zq9@", 1)
        + "?token=tok-Zq9&sig=";
    let mut site = site_json("acme");
    site["revalidate"] = serde_json::json!([
        { "url": with_credentials, "secret": TEST_SECRET },
        // Refused (only 127.0.0.0/8 is allowed): dead-lettered.
        { "url": "http://[::1]:9/api/revalidate?token=tok-Zq9-refused", "secret": TEST_SECRET },
    ]);
    let dir = tempfile::tempdir().unwrap();
    let sites = write_sites_file(dir.path(), &[site]);
    let log = dir.path().join("revalidator.log");
    let env = [
        ("NATS_URL", nats.url()),
        ("SPOOL_SITES_FILE", sites.display().to_string()),
        ("SPOOL_ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
        ("SPOOL_ALLOWED_TARGET_NETWORKS", "127.0.0.0/8".to_string()),
        ("SPOOL_RETRY_SCHEDULE", "100ms".to_string()),
        // Everything the revalidator and its libraries log, with each span's fields.
        ("SPOOL_LOG_FORMAT", "json".to_string()),
        ("RUST_LOG", "debug".to_string()),
    ];
    let revalidator = LoggedProcess::start(&env, &log).await;
    wait_consumer(&nats.url()).await;
    let ingest = TestService::start(ingest_config(&nats.url())).await;
    let (status, body) = Webhook::published("msg_1", "blog", "1")
        .send(&ingest.http, &ingest.base_url, "acme")
        .await;
    assert_eq!(status, 202, "{body}");
    let calls = receiver.wait_calls(2, T).await;
    assert!(calls[1].signature_valid(TEST_SECRET), "bad signature");
    wait_settled(&nats.url()).await;
    let http = reqwest::Client::new();
    let (text, records) = dead_letters(&http, &revalidator.base_url).await;
    assert_eq!(records.len(), 1, "{text}");
    assert_eq!(records[0]["reason"], "target_not_allowed", "{text}");
    assert_eq!(
        records[0]["url"], "http://[::1]:9/api/revalidate?token=REDACTED",
        "{text}"
    );
    revalidator.stop().await;

    let logs = std::fs::read_to_string(&log).expect("the log");
    // The paths that log a target's URL did run.
    for expected in [
        "revalidation failed; will retry",
        "target paused",
        "dead-lettered",
        "target_not_allowed",
        "token=REDACTED&sig=REDACTED",
    ] {
        assert!(
            logs.contains(expected),
            "no {expected:?} in the logs:\n{logs}"
        );
    }
    let key = TEST_SECRET.trim_start_matches("whsec_");
    for secret in ["Zq9", key] {
        let leaks: Vec<&str> = logs.lines().filter(|l| l.contains(secret)).collect();
        assert!(
            leaks.is_empty(),
            "{secret:?} in the logs:\n{}",
            leaks.join("\n")
        );
    }
    assert!(!text.contains("Zq9"), "{text}");
}
