//! Dead letters: replay through the revalidator's admin API.

use spool_integration_tests::receiver::{Reply, TestReceiver};
use spool_integration_tests::{eventually, site_json, ADMIN_TOKEN, TEST_SECRET};

use crate::revalidator::{Setup, T};

/// `POST /v1/admin/dlq/{seq}/replay`: the status and the JSON answer.
async fn replay(setup: &Setup, dlq_seq: u64, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut request = setup.revalidator.http.post(
        setup
            .revalidator
            .url(&format!("/v1/admin/dlq/{dlq_seq}/replay")),
    );
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let r = request.send().await.expect("replay request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn a_dead_letter_is_replayed_and_removed_once_the_target_accepts_it() {
    // The event's call: 400 (dead letter); the first replay: 400 again; then 200.
    let target = TestReceiver::start([Reply::Status(400), Reply::Status(400)]).await;
    let setup = Setup::start(serde_json::json!([target.target(None)])).await;
    let seq = setup.publish("msg_1", "blog").await;
    target.wait_calls(1, T).await;
    setup.wait_settled().await;
    let (text, records) = setup.dead_letters().await;
    assert_eq!(records.len(), 1, "{text}");
    let dlq_seq = records[0]["dlq_seq"].as_u64().unwrap();

    // Refusals: no token, an unknown record. Neither calls the target.
    let (status, body) = replay(&setup, dlq_seq, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, body) = replay(&setup, dlq_seq + 1000, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "unknown_dead_letter");
    assert_eq!(target.calls().len(), 1);

    // The target still refuses: 502, and the record stays.
    let (status, body) = replay(&setup, dlq_seq, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "replay_failed");
    assert_eq!(target.calls().len(), 2);
    let (text, records) = setup.dead_letters().await;
    assert_eq!(records.len(), 1, "{text}");
    assert_eq!(records[0]["dlq_seq"], dlq_seq);

    // Now it accepts: 200, a signed call for the event, and the record is gone.
    let (status, body) = replay(&setup, dlq_seq, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"], true, "{body}");
    assert_eq!(body["status"], 200, "{body}");
    let calls = target.calls();
    assert_eq!(calls.len(), 3);
    for call in &calls {
        assert!(call.signature_valid(TEST_SECRET), "bad signature");
        assert_eq!(call.seqs(), [seq]);
        assert_eq!(call.paths(), ["/blog/post-msg_1", "/blog"]);
    }
    let (text, records) = setup.dead_letters().await;
    assert!(records.is_empty(), "{text}");
    let (status, body) = replay(&setup, dlq_seq, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 404, "a replayed record is gone: {body}");
}

#[tokio::test]
async fn replaying_for_a_target_the_site_no_longer_has_is_a_409() {
    // 400 for good: a replay before the revalidator sees the change fails (502), and the
    // record stays.
    let target = TestReceiver::start(std::iter::repeat_n(Reply::Status(400), 100)).await;
    let setup = Setup::start(serde_json::json!([target.target(None)])).await;
    setup.publish("msg_1", "blog").await;
    target.wait_calls(1, T).await;
    setup.wait_settled().await;
    let dlq_seq = setup.dead_letters().await.1[0]["dlq_seq"].as_u64().unwrap();

    // The site drops the target; the revalidator sees it through the registry.
    setup.ingest.put_site(&site_json("acme")).await;
    let body = eventually("replay to answer 409", T, || async {
        let (status, body) = replay(&setup, dlq_seq, Some(ADMIN_TOKEN)).await;
        (status == 409).then_some(body)
    })
    .await;
    assert_eq!(body["error"]["code"], "target_gone", "{body}");
    let calls = target.calls().len();
    let (status, _) = replay(&setup, dlq_seq, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 409);
    assert_eq!(
        target.calls().len(),
        calls,
        "no call to a target that is gone"
    );
    assert_eq!(setup.dead_letters().await.1.len(), 1, "the record stays");
}

#[tokio::test]
async fn bad_parameters_of_the_dlq_admin_api_are_json_400s() {
    let setup = Setup::start(serde_json::json!([])).await;
    let http = &setup.revalidator.http;
    for (method, path) in [
        (reqwest::Method::GET, "/v1/admin/dlq?site=Acme!"),
        (reqwest::Method::GET, "/v1/admin/dlq?limit=abc"),
        (reqwest::Method::POST, "/v1/admin/dlq/abc/replay"),
    ] {
        let r = http
            .request(method.clone(), setup.revalidator.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_parameter")),
            "{method} {path}: {text}"
        );
    }
    // Without the token, the answer is 401 whatever the parameters.
    let r = http
        .get(setup.revalidator.url("/v1/admin/dlq?limit=abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
