//! The admin API, and sites taking effect without a restart (on every instance).

use std::time::Duration;

use reqwest::Method;
use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::services::{ingest_config, TestIngest};
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{eventually, site_json, status, ADMIN_TOKEN, TEST_SECRET};

#[tokio::test]
async fn a_site_added_through_the_admin_api_is_accepted_by_every_instance_without_restart() {
    let nats = NatsServer::start().await;
    let a = TestIngest::start(ingest_config(&nats.url())).await;
    let b = TestIngest::start(ingest_config(&nats.url())).await;
    let hook = Webhook::published("msg_new", "blog", "1");
    assert_eq!(hook.send(&b.http, &b.base_url, "newsite").await.0, 404);

    let r = a
        .admin(Method::PUT, "/v1/admin/sites/newsite")
        .json(&site_json("newsite"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let shown: serde_json::Value = r.json().await.unwrap();
    assert_eq!(shown["id"], "newsite");
    assert!(
        !shown.to_string().contains(&TEST_SECRET[6..]),
        "secret echoed: {shown}"
    );

    // The instance that stored it accepts at once; the other one once its watch saw it.
    assert_eq!(hook.send(&a.http, &a.base_url, "newsite").await.0, 202);
    let hook2 = Webhook::published("msg_new2", "blog", "2");
    eventually(
        "instance b to know the new site",
        Duration::from_secs(10),
        || async { (hook2.send(&b.http, &b.base_url, "newsite").await.0 == 202).then_some(()) },
    )
    .await;

    // Replacing answers 200; deleting removes it everywhere.
    assert_eq!(
        status(
            a.admin(Method::PUT, "/v1/admin/sites/newsite")
                .json(&site_json("newsite"))
        )
        .await,
        200
    );
    assert_eq!(
        status(a.admin(Method::DELETE, "/v1/admin/sites/newsite")).await,
        204
    );
    assert_eq!(
        status(a.admin(Method::DELETE, "/v1/admin/sites/newsite")).await,
        404
    );
    let hook3 = Webhook::published("msg_new3", "blog", "3");
    eventually(
        "instance b to forget the site",
        Duration::from_secs(10),
        || async { (hook3.send(&b.http, &b.base_url, "newsite").await.0 == 404).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn admin_reads_are_redacted_and_writes_are_checked() {
    let nats = NatsServer::start().await;
    let ingest = TestIngest::start(ingest_config(&nats.url())).await;
    let mut site = site_json("acme");
    site["revalidate"] = serde_json::json!([{ "url": "https://acme.example/api/revalidate", "secret": TEST_SECRET }]);
    ingest.put_site(&site).await;

    let one: serde_json::Value = ingest
        .admin(Method::GET, "/v1/admin/sites/acme")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let all: serde_json::Value = ingest
        .admin(Method::GET, "/v1/admin/sites")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["sites"][0], one);
    for secret in [&TEST_SECRET[6..], "0123456789"] {
        assert!(!one.to_string().contains(secret), "{one}");
    }
    assert!(one["webhook_secret"]
        .as_str()
        .unwrap()
        .starts_with("whsec_"));

    // Putting back what GET showed is refused: it would overwrite the secrets with stubs.
    let r = ingest
        .admin(Method::PUT, "/v1/admin/sites/acme")
        .json(&one)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("redaction mark"));

    let cases = [
        (
            "id mismatch",
            "/v1/admin/sites/acme",
            serde_json::json!({"id": "other", "webhook_secret": TEST_SECRET}),
            "differs from",
        ),
        (
            "bad secret",
            "/v1/admin/sites/acme",
            serde_json::json!({"webhook_secret": "plain"}),
            "webhook_secret: must start with \"whsec_\"",
        ),
        (
            "bad template",
            "/v1/admin/sites/acme",
            serde_json::json!({"webhook_secret": TEST_SECRET, "collections": {"blog": {"paths": ["/b/{title}"]}}}),
            "unknown placeholder {title}",
        ),
        (
            "not an object",
            "/v1/admin/sites/acme",
            serde_json::json!([1]),
            "must be a JSON object",
        ),
        (
            "bad id",
            "/v1/admin/sites/ACME",
            serde_json::json!({"webhook_secret": TEST_SECRET}),
            "invalid site id",
        ),
    ];
    for (name, path, body, want) in cases {
        let r = ingest
            .admin(Method::PUT, path)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{name}");
        let body: serde_json::Value = r.json().await.unwrap();
        let text = body["error"]["message"].as_str().unwrap();
        assert!(text.contains(want), "{name}: {text}");
    }
    assert_eq!(
        status(ingest.admin(Method::PUT, "/v1/admin/sites/acme").body("{}")).await,
        415
    );
    assert_eq!(
        status(ingest.admin(Method::GET, "/v1/admin/sites/nobody")).await,
        404
    );

    // Auth: no token, a wrong token.
    assert_eq!(
        status(ingest.http.get(ingest.url("/v1/admin/sites"))).await,
        401
    );
    assert_eq!(
        status(
            ingest
                .http
                .get(ingest.url("/v1/admin/sites"))
                .bearer_auth(format!("{ADMIN_TOKEN}x"))
        )
        .await,
        401
    );
    // The stored site still works after all the refused writes.
    assert_eq!(
        Webhook::published("m", "blog", "1")
            .send(&ingest.http, &ingest.base_url, "acme")
            .await
            .0,
        202
    );
}

#[tokio::test]
async fn without_an_admin_token_the_admin_api_is_disabled() {
    let nats = NatsServer::start().await;
    let mut config = ingest_config(&nats.url());
    config.common.admin_token = None;
    let ingest = TestIngest::start(config).await;
    let r = ingest
        .admin(Method::GET, "/v1/admin/sites")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "admin_disabled");
}
