//! Who sees what. A draft (`content.updated` by default) reaches readers with preview rights
//! only — a subscriber token of scope `preview` — on every path (SSE live, SSE resume from
//! the window and from JetStream, poll), and visitors' cursors move past it; visitors see
//! only the site's public item fields. Subscriber tokens are verified (expiry, site, scope,
//! signature, algorithm, collections), and a stream ends at its token's expiry with
//! `event: token_expired`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::services::{delivery_config, ingest_config, TestService};
use spool_integration_tests::sse::SseClient;
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{eventually, site_json, TEST_SECRET};
use spool_proto::signing::SigningKey;

const T: Duration = Duration::from_secs(10);
/// The site's static read token: what its public pages carry.
const READ_TOKEN: &str = "rk_test_acme_0123456789";
const SECRET_TITLE: &str = "Secret plan for the launch";

struct Sys {
    nats: NatsServer,
    ingest: TestService,
    delivery: TestService,
}

/// acme with the default audiences and public fields, and a subscriber secret.
async fn start() -> Sys {
    let nats = NatsServer::start().await;
    let ingest = TestService::start(ingest_config(&nats.url())).await;
    let mut site = site_json("acme");
    site.as_object_mut().unwrap().remove("public_fields");
    site["subscriber_secret"] = TEST_SECRET.into();
    ingest.put_site(&site).await;
    let delivery = TestService::start_delivery(delivery_config(&nats.url())).await;
    Sys {
        nats,
        ingest,
        delivery,
    }
}

impl Sys {
    async fn send(&self, id: &str, kind: &str, title: &str) -> u64 {
        let body = json!({
            "type": kind, "collection": "blog",
            "item": {"id": id, "slug": id, "title": title, "body": "text"},
        });
        let (status, answer) = Webhook::with_body(id, body.to_string().into_bytes())
            .send(&self.ingest.http, &self.ingest.base_url, "acme")
            .await;
        assert_eq!(status, 202, "{answer}");
        answer["seq"].as_u64().unwrap()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A subscriber token signed with the site's secret (or `key`).
fn token(claims: Value) -> String {
    let key = SigningKey::from_secret(TEST_SECRET).unwrap();
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap()
}

fn preview_token() -> String {
    token(json!({"sub": "editor", "site": "acme", "exp": now() + 600, "scope": "preview"}))
}

fn poll(delivery: &TestService, query: &str, token: &str) -> reqwest::RequestBuilder {
    delivery
        .http
        .get(delivery.url(&format!("/v1/sites/acme/events{query}")))
        .bearer_auth(token)
}

fn stream(delivery: &TestService, query: &str, token: &str) -> reqwest::RequestBuilder {
    delivery
        .http
        .get(delivery.url(&format!("/v1/sites/acme/events/stream{query}")))
        .bearer_auth(token)
}

async fn page(delivery: &TestService, query: &str, token: &str) -> Value {
    let r = poll(delivery, query, token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    if token == READ_TOKEN {
        assert!(!text.contains("Secret"), "a visitor saw the draft: {text}");
    }
    serde_json::from_str(&text).unwrap()
}

fn seqs(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

/// Reads a stream's raw body until it holds `id: {seq}\ndata:` (or times out).
async fn raw_until(request: reqwest::RequestBuilder, seq: u64) -> String {
    let r = request.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut text = String::new();
    let want = format!("id: {seq}\ndata:");
    while !text.contains(&want) {
        let chunk = tokio::time::timeout(T, body.next())
            .await
            .unwrap_or_else(|_| panic!("no event {seq} in {text}"))
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}

#[tokio::test]
async fn a_draft_reaches_preview_readers_only_on_every_path() {
    let sys = start().await;
    let mut visitor = SseClient::connect(stream(&sys.delivery, "", READ_TOKEN), None).await;
    let mut editor = SseClient::connect(stream(&sys.delivery, "", &preview_token()), None).await;
    assert_eq!(visitor.next_event(T).await.unwrap().event, "ready");
    assert_eq!(editor.next_event(T).await.unwrap().event, "ready");

    let draft = sys.send("d1", "content.updated", SECRET_TITLE).await;
    let published = sys.send("p1", "content.published", "Launch").await;

    // Live.
    let got = visitor.next_message(T).await.unwrap();
    assert_eq!(
        got.id, published,
        "the visitor's first event is the published one"
    );
    assert_eq!(
        got.data["item"],
        json!({"id": "p1", "slug": "p1"}),
        "public fields only"
    );
    assert_eq!(got.data["audience"], "public");
    let first = editor.next_message(T).await.unwrap();
    assert_eq!(first.id, draft);
    assert_eq!(first.data["item"]["title"], SECRET_TITLE);
    assert_eq!(first.data["audience"], "preview");
    let second = editor.next_message(T).await.unwrap();
    assert_eq!(
        second.data["item"]["body"], "text",
        "every field for preview"
    );

    // Resume from before the draft (from the window), and poll.
    let raw = raw_until(stream(&sys.delivery, "?since=0", READ_TOKEN), published).await;
    assert!(!raw.contains("Secret"), "{raw}");
    let visitor_page = page(&sys.delivery, "?since=0", READ_TOKEN).await;
    assert_eq!(seqs(&visitor_page), [published]);
    let only_draft = page(&sys.delivery, &format!("?since={}", draft - 1), READ_TOKEN).await;
    assert_eq!(seqs(&only_draft), [published]);
    let editor_page = page(&sys.delivery, "?since=0", &preview_token()).await;
    assert_eq!(seqs(&editor_page), [draft, published]);
    assert_eq!(editor_page["events"][0]["item"]["title"], SECRET_TITLE);

    // A visitor polling right after the draft: nothing, and its cursor moves past it.
    let after_draft = page(&sys.delivery, &format!("?since={published}"), READ_TOKEN).await;
    assert!(seqs(&after_draft).is_empty());
    let draft2 = sys.send("d2", "content.created", SECRET_TITLE).await;
    let moved = eventually("the visitor's cursor past the draft", T, || async {
        let p = page(&sys.delivery, &format!("?since={published}"), READ_TOKEN).await;
        assert!(seqs(&p).is_empty());
        let next = p["next"].as_u64().unwrap();
        (next >= draft2).then_some(next)
    })
    .await;
    assert_eq!(moved, draft2, "the visitor's cursor moved past the draft");

    // From JetStream: a delivery whose window no longer holds these events.
    let mut config = delivery_config(&sys.nats.url());
    config.replay_window = 1;
    let small = TestService::start_delivery(config).await;
    sys.send("p2", "content.published", "Later").await;
    let last = sys.send("p3", "content.published", "Latest").await;
    let raw = raw_until(stream(&small, "?since=0", READ_TOKEN), last).await;
    assert!(!raw.contains("Secret"), "{raw}");
    let from_stream = page(&small, "?since=0", READ_TOKEN).await;
    assert!(!seqs(&from_stream).contains(&draft));
    let editor_stream = page(&small, "?since=0", &preview_token()).await;
    assert!(seqs(&editor_stream).starts_with(&[draft, published]));
}

#[tokio::test]
async fn subscriber_tokens_are_refused_with_the_reason() {
    let sys = start().await;
    let base = json!({"sub": "u", "site": "acme", "exp": now() + 600, "scope": "preview"});
    let with = |field: &str, value: Value| {
        let mut claims = base.clone();
        claims[field] = value;
        token(claims)
    };
    let signed_elsewhere = encode(
        &Header::new(Algorithm::HS256),
        &base,
        &EncodingKey::from_secret(b"another key, not the site's one"),
    )
    .unwrap();
    let parts: Vec<String> = preview_token().split('.').map(str::to_owned).collect();
    let none = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(base.to_string())
        )
    };
    let tampered = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut claims = base.clone();
        claims["site"] = "acme".into();
        claims["exp"] = (now() + 99_999).into();
        format!(
            "{}.{}.{}",
            parts[0],
            b64.encode(claims.to_string()),
            parts[2]
        )
    };
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "expired",
            with("exp", (now() - 10).into()),
            401,
            "token_expired",
        ),
        (
            "wrong site",
            with("site", "other".into()),
            401,
            "token_invalid",
        ),
        (
            "wrong scope",
            with("scope", "admin".into()),
            403,
            "forbidden",
        ),
        ("another key", signed_elsewhere, 401, "token_invalid"),
        ("tampered", tampered, 401, "token_invalid"),
        ("alg none", none, 401, "token_invalid"),
    ];
    for (what, token, status, code) in cases {
        for (kind, request) in [
            ("poll", poll(&sys.delivery, "?since=0", &token)),
            ("stream", stream(&sys.delivery, "", &token)),
        ] {
            let r = request.send().await.unwrap();
            assert_eq!(r.status().as_u16(), status, "{what} ({kind})");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], code, "{what} ({kind}): {body}");
            assert!(
                !body.to_string().contains(&token),
                "the token is never echoed"
            );
        }
    }
    // Collections: a token for `blog` may not ask for `news`, and gets `blog` by default.
    let blog_only = with("collections", json!(["blog"]));
    let r = poll(&sys.delivery, "?since=0&collections=news", &blog_only)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = poll(&sys.delivery, "?since=0", &blog_only)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // An unknown site answers a token as a site without a subscriber key does.
    let r = sys
        .delivery
        .http
        .get(sys.delivery.url("/v1/sites/nosuchsite/events"))
        .bearer_auth(preview_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn a_stream_ends_at_its_tokens_expiry_saying_so() {
    let sys = start().await;
    let short = token(json!({"sub": "u", "site": "acme", "exp": now() + 2, "scope": "preview"}));
    let started = std::time::Instant::now();
    let mut client = SseClient::connect(stream(&sys.delivery, "", &short), None).await;
    assert_eq!(client.next_event(T).await.unwrap().event, "ready");
    let end = client.next_event(T).await.unwrap();
    assert_eq!(end.event, "token_expired");
    assert!(client.next_event(T).await.is_none(), "and the stream ends");
    assert!(started.elapsed() < Duration::from_secs(5));
    // With a new token, it resumes.
    let seq = sys.send("p1", "content.published", "After").await;
    let mut again =
        SseClient::connect(stream(&sys.delivery, "?since=0", &preview_token()), None).await;
    assert_eq!(again.next_message(T).await.unwrap().id, seq);
}

/// A JWKS endpoint whose keys the test changes.
async fn jwks_server(keys: std::sync::Arc<std::sync::Mutex<Value>>) -> String {
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let keys = keys.clone();
            async move { axum::Json(keys.lock().unwrap().clone()) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// An Ed25519 key: what signs (PKCS#8) and its public JWK under `kid`.
fn ed25519(kid: &str) -> (EncodingKey, Value) {
    use base64::Engine as _;
    use ring::signature::KeyPair as _;
    let pkcs8 =
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
    (
        EncodingKey::from_ed_der(pkcs8.as_ref()),
        json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}),
    )
}

fn eddsa(key: &EncodingKey, kid: &str) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.into());
    let claims = json!({"sub": "editor", "site": "acme", "exp": now() + 600, "scope": "preview"});
    encode(&header, &claims, key).unwrap()
}

#[tokio::test]
async fn tokens_signed_with_a_key_of_the_sites_jwks_are_accepted_and_rotation_is_followed() {
    let sys = start().await;
    let (k1, jwk1) = ed25519("k1");
    let (k2, jwk2) = ed25519("k2");
    let keys = std::sync::Arc::new(std::sync::Mutex::new(json!({"keys": [jwk1]})));
    let url = jwks_server(keys.clone()).await;
    let mut site = site_json("acme");
    site.as_object_mut().unwrap().remove("public_fields");
    site["subscriber_jwks_url"] = url.into();
    sys.ingest.put_site(&site).await;
    let status = |token: String| {
        let request = poll(&sys.delivery, "?since=0", &token);
        async move {
            let r = request.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    // The site change reaches the delivery through the registry watch.
    eventually(
        "an EdDSA token of the JWKS's key k1 accepted",
        T,
        || async { (status(eddsa(&k1, "k1")).await.0 == 200).then_some(()) },
    )
    .await;
    let (code, body) = status(eddsa(&k1, "k9")).await;
    assert_eq!(
        (code, &body["error"]["code"]),
        (401, &json!("token_invalid")),
        "{body}"
    );
    assert!(body["error"]["message"].as_str().unwrap().contains("kid"));
    // A token signed by k2 but naming k1: the signature does not verify.
    let (code, _) = status(eddsa(&k2, "k1")).await;
    assert_eq!(code, 401);

    // Rotation: the site publishes k2 and drops k1; a token of k2 is accepted once the set
    // is fetched again (a `kid` the cached set lacks asks for it, at most every few seconds).
    *keys.lock().unwrap() = json!({"keys": [jwk2]});
    eventually("k2 accepted after the rotation", T, || async {
        (status(eddsa(&k2, "k2")).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(status(eddsa(&k1, "k1")).await.0, 401, "k1 is gone");
}

#[tokio::test]
async fn a_jwks_that_cannot_be_read_is_transient_trouble_not_the_readers_fault() {
    let sys = start().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut site = site_json("acme");
    site["subscriber_jwks_url"] = format!("http://127.0.0.1:{dead}/jwks.json").into();
    sys.ingest.put_site(&site).await;
    let (key, _) = ed25519("k1");
    let token = eddsa(&key, "k1");
    // The poll is told to come back (once the site change reached the delivery).
    let (status, retry_after, body) = eventually("a 503 for the unreadable JWKS", T, || async {
        let r = poll(&sys.delivery, "?since=0", &token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let retry_after = r.headers().get("retry-after").is_some();
        let body: Value = r.json().await.unwrap();
        (status == 503).then_some((status, retry_after, body))
    })
    .await;
    assert_eq!((status, retry_after), (503, true), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("JWKS"));
    // A stream: 200 with only a retry hint, so EventSource comes back.
    let r = stream(&sys.delivery, "", &token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.starts_with("retry: ") && !text.contains("event:"),
        "{text}"
    );
}
