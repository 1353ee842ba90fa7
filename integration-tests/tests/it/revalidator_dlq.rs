//! Dead letters: replay through the revalidator's admin API.

use spool_integration_tests::receiver::{Reply, TestReceiver};
use spool_integration_tests::{eventually, site_json, ADMIN_TOKEN, TEST_SECRET};

use crate::revalidator::{list_dead_letters, Setup, T};

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

/// Stores a dead-letter record for `site` straight in `SPOOL_DLQ` (what the revalidator
/// writes), many at a time; their `SPOOL_DLQ` sequences, in order.
async fn store_dead_letters(js: &async_nats::jetstream::Context, sites: &[String]) -> Vec<u64> {
    let mut seqs = Vec::new();
    for chunk in sites.chunks(1000) {
        let mut acks = Vec::new();
        for (i, site) in chunk.iter().enumerate() {
            let record = serde_json::json!({
                "site": site, "url": "https://example.test/api/revalidate",
                "reason": "permanent_status", "webhook_id": format!("rv_{i}"), "attempts": 1,
                "last_status": 400, "last_error": null, "failed_at": "2026-11-25T10:00:00Z",
                "event": {
                    "seq": i + 1, "id": format!("msg_{i}"), "site": site,
                    "type": "content.published", "collection": "blog", "item": {"id": "1"},
                    "paths": ["/blog"], "tags": ["blog"],
                    "occurred_at": "2026-11-25T10:00:00Z", "received_at": "2026-11-25T10:00:00Z",
                },
            });
            let payload = serde_json::to_vec(&record).unwrap().into();
            acks.push(
                js.publish(format!("spool.dlq.{site}"), payload)
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            seqs.push(ack.await.unwrap().sequence);
        }
    }
    seqs
}

/// `GET /v1/admin/dlq?{query}`: (site, dlq_seq) of each record.
async fn list(setup: &Setup, query: &str) -> Vec<(String, u64)> {
    let (_, records) =
        list_dead_letters(&setup.revalidator.http, &setup.revalidator.base_url, query).await;
    let key = |r: &serde_json::Value| {
        (
            r["site"].as_str().unwrap().to_owned(),
            r["dlq_seq"].as_u64().unwrap(),
        )
    };
    records.iter().map(key).collect()
}

#[tokio::test]
async fn one_sites_dead_letters_are_listed_behind_thousands_of_other_sites() {
    let setup = Setup::start(serde_json::json!([])).await;
    let js = async_nats::jetstream::new(async_nats::connect(setup.nats.url()).await.unwrap());
    // 5,000 records of 50 other sites first, then `acme`'s three, one more of another site
    // between them.
    let mut sites: Vec<String> = (0..5000).map(|i| format!("other-{}", i % 50)).collect();
    sites.extend(["acme", "acme", "other-0", "acme"].map(str::to_owned));
    let seqs = store_dead_letters(&js, &sites).await;
    let acme: Vec<u64> = sites
        .iter()
        .zip(&seqs)
        .filter(|(site, _)| *site == "acme")
        .map(|(_, seq)| *seq)
        .collect();
    assert_eq!(acme.len(), 3);
    let only = |records: Vec<(String, u64)>| -> Vec<u64> {
        assert!(
            records.iter().all(|(site, _)| site == "acme"),
            "{records:?}"
        );
        records.into_iter().map(|(_, seq)| seq).collect()
    };

    // A site's records, oldest first, whatever the limit; `limit` stops early.
    assert_eq!(only(list(&setup, "site=acme").await), acme);
    assert_eq!(only(list(&setup, "site=acme&limit=1").await), acme[..1]);
    assert_eq!(only(list(&setup, "site=acme&limit=2").await), acme[..2]);
    // A site with no record: nothing.
    assert_eq!(list(&setup, "site=nobody").await, []);

    // Without a site: every site, in DLQ order, up to `limit`.
    let all = list(&setup, "limit=1000").await;
    let expected: Vec<(String, u64)> = sites
        .iter()
        .cloned()
        .zip(seqs.iter().copied())
        .take(1000)
        .collect();
    assert_eq!(all, expected);
    let first = list(&setup, "").await;
    assert_eq!(first, expected[..100], "the default limit is 100");
}
