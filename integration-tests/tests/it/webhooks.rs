//! The ingest's webhook endpoint, answer by answer, checked against the stream itself.

use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::services::{ingest_config, TestIngest};
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{metrics_text, read_events, site_json, status};

async fn setup() -> (NatsServer, TestIngest) {
    let nats = NatsServer::start().await;
    let ingest = TestIngest::start(ingest_config(&nats.url())).await;
    ingest.put_site(&site_json("acme")).await;
    ingest.put_site(&site_json("other")).await;
    (nats, ingest)
}

#[tokio::test]
async fn a_signed_webhook_is_stored_then_answered_202() {
    let (nats, ingest) = setup().await;
    let mut hook = Webhook::published("msg_1", "blog", "42");
    let mut body: serde_json::Value = serde_json::from_slice(&hook.body).unwrap();
    body["paths"] = serde_json::json!(["/extra/path"]);
    body["tags"] = serde_json::json!(["extra-tag"]);
    hook.body = body.to_string().into_bytes();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = hook
        .request(&ingest.http, &ingest.base_url, "acme")
        .header("traceparent", traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(answer["id"], "msg_1");
    assert_eq!(answer["duplicate"], false);
    let seq = answer["seq"].as_u64().unwrap();

    let stored = read_events(&nats.url()).await;
    assert_eq!(stored.len(), 1);
    let s = &stored[0];
    assert_eq!(s.seq, seq);
    assert_eq!(s.subject, "spool.events.acme.blog");
    assert_eq!(s.msg_id.as_deref(), Some("acme:msg_1"));
    assert_eq!(s.traceparent.as_deref(), Some(traceparent));
    let e = &s.event;
    assert_eq!(
        (e.id.as_str(), e.site.as_str(), e.collection.as_str()),
        ("msg_1", "acme", "blog")
    );
    assert_eq!(e.kind, spool_proto::EventType::Published);
    assert_eq!(e.item.extra["title"], "Post 42");
    assert_eq!(e.paths, ["/blog/post-42", "/blog", "/extra/path"]);
    assert_eq!(e.tags, ["blog", "blog:post-42", "extra-tag"]);
    assert_eq!(e.occurred_at, time::macros::datetime!(2026-11-25 10:00 UTC));
    assert!(e.received_at > e.occurred_at);
}

#[tokio::test]
async fn a_repeated_webhook_id_answers_200_with_the_original_seq_and_stores_nothing() {
    let (nats, ingest) = setup().await;
    let hook = Webhook::published("msg_dup", "blog", "1");
    let (status, first) = hook.send(&ingest.http, &ingest.base_url, "acme").await;
    assert_eq!(status, 202);
    // Something else in between, so the original seq is not simply the last one.
    let (status, _) = Webhook::published("msg_between", "blog", "2")
        .send(&ingest.http, &ingest.base_url, "acme")
        .await;
    assert_eq!(status, 202);
    // The CMS retries with the same id (re-signed later, maybe with another body).
    let mut again = Webhook::published("msg_dup", "blog", "1-edited");
    again.timestamp += 1;
    let (status, second) = again.send(&ingest.http, &ingest.base_url, "acme").await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["duplicate"], true);
    assert_eq!(second["seq"], first["seq"]);
    assert_eq!(second["id"], "msg_dup");
    // The same id for another site is another event.
    let (status, other) = hook.send(&ingest.http, &ingest.base_url, "other").await;
    assert_eq!(status, 202);
    assert_ne!(other["seq"], first["seq"]);

    let stored = read_events(&nats.url()).await;
    let ids: Vec<_> = stored.iter().map(|s| s.msg_id.clone().unwrap()).collect();
    assert_eq!(ids, ["acme:msg_dup", "acme:msg_between", "other:msg_dup"]);
    assert_eq!(
        stored[0].event.item.id, "1",
        "the original is kept, not the repeat"
    );
}

/// Every refusal: status, error code, a message that says what is wrong, and nothing stored.
#[tokio::test]
async fn every_bad_request_gets_a_clear_error_and_stores_nothing() {
    let (nats, ingest) = setup().await;
    let http = &ingest.http;
    let base = &ingest.base_url;
    let good = Webhook::published("msg_x", "blog", "1");

    let mut cases: Vec<(&str, reqwest::RequestBuilder, u16, &str, &str)> = Vec::new();
    cases.push((
        "bad site id",
        good.request(http, base, "Acme"),
        400,
        "invalid_site_id",
        "invalid site id \"Acme\"",
    ));
    cases.push((
        "unknown site",
        good.request(http, base, "nobody"),
        404,
        "unknown_site",
        "unknown site \"nobody\"",
    ));
    let mut text_plain = good.request(http, base, "acme").build().unwrap();
    text_plain
        .headers_mut()
        .insert("content-type", "text/plain".parse().unwrap());
    cases.push((
        "not JSON",
        reqwest::RequestBuilder::from_parts(http.clone(), text_plain),
        415,
        "unsupported_media_type",
        "application/json",
    ));
    let big = Webhook::with_body("msg_big", vec![b' '; 256 * 1024 + 1]);
    cases.push((
        "too large",
        big.request(http, base, "acme"),
        413,
        "payload_too_large",
        "262144",
    ));
    let mut no_sig = good.request(http, base, "acme").build().unwrap();
    no_sig.headers_mut().remove("webhook-signature");
    cases.push((
        "no signature",
        reqwest::RequestBuilder::from_parts(http.clone(), no_sig),
        401,
        "unauthorized",
        "missing webhook-signature",
    ));
    let mut wrong = good.clone();
    wrong.secret = "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=".into();
    cases.push((
        "wrong secret",
        wrong.request(http, base, "acme"),
        401,
        "unauthorized",
        "no webhook-signature matches",
    ));
    let mut stale = good.clone();
    stale.timestamp -= 3600; // far outside the 5 min tolerance: immune to slow test runs
    cases.push((
        "stale timestamp",
        stale.request(http, base, "acme"),
        401,
        "unauthorized",
        "away from the server's clock",
    ));
    let mut future = good.clone();
    future.timestamp += 3600;
    cases.push((
        "future timestamp",
        future.request(http, base, "acme"),
        401,
        "unauthorized",
        "away from the server's clock",
    ));
    let bodies = [
        ("broken JSON", "{\"type\":", "invalid webhook body"),
        (
            "unknown type",
            r#"{"type":"content.moved","collection":"blog","item":{"id":"1"}}"#,
            "unknown variant `content.moved`",
        ),
        (
            "bad collection",
            r#"{"type":"content.created","collection":"Blog!","item":{"id":"1"}}"#,
            "invalid collection name",
        ),
        (
            "no item id",
            r#"{"type":"content.created","collection":"blog","item":{"slug":"a"}}"#,
            "missing field `id`",
        ),
        (
            "bad path",
            r#"{"type":"content.created","collection":"blog","item":{"id":"1"},"paths":["nope"]}"#,
            "paths[0]",
        ),
    ];
    for (name, body, want) in bodies {
        let hook = Webhook::with_body("msg_bad", body.as_bytes().to_vec());
        cases.push((
            name,
            hook.request(http, base, "acme"),
            400,
            "invalid_body",
            want,
        ));
    }

    for (name, request, status, code, message) in cases {
        let r = request.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{name}");
        if status == 401 {
            assert!(r.headers().contains_key("www-authenticate"), "{name}");
        }
        let body: serde_json::Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{name}: JSON error body ({e})"));
        assert_eq!(body["error"]["code"], code, "{name}: {body}");
        let text = body["error"]["message"].as_str().unwrap();
        assert!(text.contains(message), "{name}: {text:?} lacks {message:?}");
    }
    assert!(
        read_events(&nats.url()).await.is_empty(),
        "a refused webhook was stored"
    );

    // And the good one still goes through afterwards.
    assert_eq!(good.send(http, base, "acme").await.0, 202);
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let (_nats, ingest) = setup().await;
    assert_eq!(status(ingest.http.get(ingest.url("/healthz"))).await, 200);
    assert_eq!(status(ingest.http.get(ingest.url("/readyz"))).await, 200);
    assert_eq!(
        Webhook::published("m", "blog", "1")
            .send(&ingest.http, &ingest.base_url, "acme")
            .await
            .0,
        202
    );
    let text = metrics_text(&ingest.http, &ingest.base_url).await.unwrap();
    assert!(
        text.contains("spool_ingest_webhooks_total{outcome=\"accepted\"}"),
        "{text}"
    );
    assert!(
        text.contains("spool_ingest_publish_duration_seconds_bucket"),
        "{text}"
    );
    assert_eq!(
        status(ingest.http.get(ingest.url("/v1/nothing"))).await,
        404
    );
    assert_eq!(
        status(ingest.http.get(ingest.url("/v1/sites/acme/webhooks"))).await,
        405
    );
}
