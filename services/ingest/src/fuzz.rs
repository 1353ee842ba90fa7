//! Fuzz target (issue #16) for the webhook route as a whole, offline: any site segment,
//! content type, signature headers and body (arbitrary, mutated, or mutated and then
//! signed with the site's key) gets a 4xx JSON error naming what is wrong — never a panic
//! and never a 5xx — up to the write to JetStream, which isn't reached (a body that is
//! valid and signed is left to the integration tests). The payload parser and signature
//! check themselves are fuzzed in `spool-proto`. See the `spool-fuzz` crate for how long
//! it runs (`SPOOL_FUZZ_CASES`, `make fuzz`).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use proptest::prelude::*;
use serde_json::{json, Value};
use spool_fuzz::{awkward_string, config, mutated_one_of};
use spool_platform::config::CommonConfig;
use spool_platform::shutdown::CancellationToken;
use spool_platform::Platform;
use spool_proto::signing::SigningKey;
use spool_proto::WebhookPayload;
use tower::ServiceExt as _;

use crate::publish::Publisher;
use crate::routes::{router, AppState};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The ingest's router on a platform whose NATS is unreachable, with the site `acme`
/// applied to its registry by hand; built once, on a runtime of its own.
fn offline_app() -> &'static (tokio::runtime::Runtime, axum::Router) {
    static APP: OnceLock<(tokio::runtime::Runtime, axum::Router)> = OnceLock::new();
    APP.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|e| unreachable!("a runtime: {e}"));
        let _entered = rt.enter();
        let platform = rt
            .block_on(Platform::start(
                CommonConfig::for_nats("nats://127.0.0.1:1"),
                "spool-ingest-fuzz",
                CancellationToken::new(),
            ))
            .unwrap_or_else(|e| unreachable!("the platform starts without NATS: {e}"));
        let site = json!({"id": "acme", "webhook_secret": SECRET});
        platform
            .registry
            .apply("acme", 1, Some(site.to_string().as_bytes()));
        platform.registry.set_loaded(true);
        let app = router(AppState {
            publisher: Publisher::new(platform.client.clone(), Duration::from_secs(1)),
            admin_token: None,
            webhook_tolerance: Duration::from_secs(300),
            body_timeout: Duration::from_secs(10),
            webhook_limits: Arc::new(crate::limits::SiteLimits::new(
                spool_platform::rate::Rate::new(1_000_000, 1_000_000),
            )),
            platform,
        });
        (rt, app)
    })
}

fn body_seeds() -> Vec<Vec<u8>> {
    [
        json!({"type": "content.published", "collection": "blog",
               "item": {"id": "42", "slug": "my-post", "title": "My post"},
               "paths": ["/extra/path"], "tags": ["extra-tag"], "occurred_at": "2026-11-25T10:00:00Z"}),
        json!({"type": "content.deleted", "collection": "news", "item": {"id": "1"}}),
    ]
    .iter()
    .map(|v| v.to_string().into_bytes())
    .collect()
}

/// A header value: a typical one, or any bytes a client can send.
fn header_value(typical: &'static [&'static str]) -> impl Strategy<Value = Option<Vec<u8>>> {
    proptest::option::weighted(
        0.9,
        prop_oneof![
            proptest::sample::select(typical).prop_map(|s| s.as_bytes().to_vec()),
            awkward_string(3).prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..16),
        ],
    )
}

#[derive(Debug, Clone)]
struct Call {
    site: String,
    content_type: Option<Vec<u8>>,
    id: Option<Vec<u8>>,
    timestamp: Option<Vec<u8>>,
    signature: Option<Vec<u8>>,
    /// Sign the body with the site's key (overrides the three headers).
    signed: bool,
    body: Vec<u8>,
}

fn call() -> impl Strategy<Value = Call> {
    (
        prop_oneof![
            8 => Just("acme".to_owned()),
            1 => Just("other".to_owned()),
            1 => "[A-Za-z0-9%._~-]{1,12}",
        ],
        header_value(&[
            "application/json",
            "application/json; charset=utf-8",
            "text/plain",
            "application/x+json",
            "",
        ]),
        header_value(&["msg_1", "a b", ""]),
        header_value(&["1764000000", "-1", "99999999999999999999", "now"]),
        header_value(&["v1,AAAA", "v1,", "v2,x v1,y"]),
        any::<bool>(),
        prop_oneof![
            mutated_one_of(body_seeds()),
            proptest::collection::vec(any::<u8>(), 0..64)
        ],
    )
        .prop_map(
            |(site, content_type, id, timestamp, signature, signed, body)| Call {
                site,
                content_type,
                id,
                timestamp,
                signature,
                signed,
                body,
            },
        )
}

proptest! {
    #![proptest_config(config(2))]

    #[test]
    fn fuzz_webhook_route(calls in proptest::collection::vec(call(), 1..8)) {
        let (rt, app) = offline_app();
        let key = SigningKey::from_secret(SECRET).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for c in calls {
            let signed_ok = c.signed && c.site == "acme";
            // Signed and valid: it would be written to JetStream (not here).
            if c.signed && WebhookPayload::parse(&c.body).is_ok() {
                continue;
            }
            let mut req = Request::post(format!("/v1/sites/{}/webhooks", c.site));
            let mut set = |name: &str, value: &Option<Vec<u8>>| {
                if let Some(v) = value {
                    if let Ok(v) = axum::http::HeaderValue::from_bytes(v) {
                        req.headers_mut().map(|h| h.insert(axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap_or_else(|_| unreachable!()), v));
                    }
                }
            };
            set("content-type", &c.content_type);
            if c.signed {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let sig = key.sign("msg_fuzz", now, &c.body);
                set("webhook-id", &Some(b"msg_fuzz".to_vec()));
                set("webhook-timestamp", &Some(now.to_string().into_bytes()));
                set("webhook-signature", &Some(sig.into_bytes()));
            } else {
                set("webhook-id", &c.id);
                set("webhook-timestamp", &c.timestamp);
                set("webhook-signature", &c.signature);
            }
            let Ok(req) = req.body(Body::from(c.body.clone())) else { continue };
            let content_type_ok = req.headers().get("content-type").and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/json") || v.to_ascii_lowercase().split(';').next().is_some_and(|t| t.trim().starts_with("application/") && t.trim().ends_with("+json")));
            let response = rt.block_on(app.clone().oneshot(req)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let status = response.status();
            let bytes = rt.block_on(axum::body::to_bytes(response.into_body(), 1 << 20)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let answer: Value = serde_json::from_slice(&bytes).map_err(|e| TestCaseError::fail(format!("{status}: not JSON: {e}")))?;
            let code = answer["error"]["code"].as_str().unwrap_or_default().to_owned();
            prop_assert!(status.is_client_error(), "{:?}: {} {}", c, status, answer);
            prop_assert!(!code.is_empty() && answer["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", answer);
            if c.site == "acme" && content_type_ok {
                if signed_ok {
                    prop_assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, "invalid_body"), "{}", answer);
                } else {
                    prop_assert_eq!(status, StatusCode::UNAUTHORIZED, "{}", answer);
                }
            }
        }
    }
}

// Found by fuzz_webhook_route: a site segment that is not UTF-8 once percent-decoded got
// axum's plain-text 400, not the API's JSON error.
#[test]
fn a_path_segment_that_is_not_utf8_is_a_json_400() {
    let (rt, app) = offline_app();
    let req = Request::post("/v1/sites/%80/webhooks")
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap_or_else(|e| unreachable!("{e}"));
    let response = rt
        .block_on(app.clone().oneshot(req))
        .unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let bytes = rt
        .block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
        .unwrap_or_else(|e| unreachable!("{e}"));
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    assert_eq!(answer["error"]["code"], "invalid_path", "{answer}");
}
