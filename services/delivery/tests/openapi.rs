//! The OpenAPI document (`proto/openapi.yaml`) against the delivery's code: the operations
//! tagged `delivery` are exactly [`ROUTES`] minus the operational routes (documented once,
//! under `ingest`), and the router really serves every route of [`ROUTES`]. Runs offline:
//! no NATS server is needed.

// The helpers below are test code too: a failed `expect` is a failed test.
#![allow(clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use spool_delivery::history::History;
use spool_delivery::hub::Hub;
use spool_delivery::routes::{router, AppState, StreamSettings, ROUTES};
use spool_platform::config::CommonConfig;
use spool_platform::shutdown::CancellationToken;
use spool_platform::Platform;
use tower::ServiceExt as _;

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];
/// Served by every service, documented once under the `ingest` tag.
const OPERATIONAL: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

fn document() -> Value {
    serde_yaml::from_str(spool_proto::OPENAPI_YAML).expect("proto/openapi.yaml is not valid YAML")
}

/// (METHOD, path) of every operation of `paths` carrying `tag`.
fn tagged(doc: &Value, tag: &str) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
        return ops;
    };
    for (path, item) in paths {
        for method in HTTP_METHODS {
            let Some(op) = item.get(method) else { continue };
            let tags = op
                .get("tags")
                .and_then(Value::as_array)
                .map(|t| t.iter().filter_map(Value::as_str).collect::<Vec<_>>())
                .unwrap_or_default();
            if tags.contains(&tag) {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

fn served(operational: bool) -> BTreeSet<(String, String)> {
    ROUTES
        .iter()
        .filter(|(_, path)| OPERATIONAL.contains(path) == operational)
        .map(|(method, path)| (method.as_str().to_uppercase(), (*path).to_owned()))
        .collect()
}

#[test]
fn delivery_operations_are_exactly_the_routes_minus_the_operational_ones() {
    let documented = tagged(&document(), "delivery");
    let served = served(false);
    assert!(!served.is_empty());
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let not_served: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && not_served.is_empty(),
        "proto/openapi.yaml (operations tagged `delivery`) and spool_delivery::routes::ROUTES \
         (minus {OPERATIONAL:?}) differ:\n  \
         served but not documented: {undocumented:?}\n  \
         documented but not served: {not_served:?}"
    );
}

#[test]
fn the_operational_routes_are_documented_once_under_ingest() {
    let doc = document();
    let operational = served(true);
    assert_eq!(
        operational.len(),
        OPERATIONAL.len(),
        "ROUTES lacks an operational route"
    );
    let ingest = tagged(&doc, "ingest");
    for route in &operational {
        assert!(
            ingest.contains(route),
            "{route:?} is not documented under `ingest`"
        );
    }
    let delivery = tagged(&doc, "delivery");
    assert!(
        operational.is_disjoint(&delivery),
        "an operational route is documented under `delivery` too"
    );
}

/// `/v1/sites/{site}/events` → `/v1/sites/acme/events`.
fn concrete(path: &str) -> String {
    path.replace("{site}", "acme")
}

/// What the router answers; the JSON error code when there is one.
async fn answer(app: &axum::Router, method: &str, path: &str) -> (StatusCode, Option<String>) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("origin", "https://acme.example")
        .body(Body::empty())
        .expect("a valid request");
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let status = response.status();
    // An SSE answer may stay open: read only what comes within a moment.
    let bytes = tokio::time::timeout(
        Duration::from_secs(2),
        axum::body::to_bytes(response.into_body(), usize::MAX),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or_default();
    let code = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
    (status, code)
}

fn is_unrouted(status: StatusCode, code: Option<&str>) -> bool {
    (status == StatusCode::NOT_FOUND && code == Some("route_not_found"))
        || status == StatusCode::METHOD_NOT_ALLOWED
}

#[tokio::test]
async fn the_router_serves_every_route() {
    // Nothing listens on port 1: the registry never loads and the feed never starts, so every
    // route answers without NATS (503, 200 + retry, ...), but never with the router's own
    // 404 `route_not_found` or 405 `method_not_allowed`.
    let shutdown = CancellationToken::new();
    let platform = Platform::start(
        CommonConfig::for_nats("nats://127.0.0.1:1"),
        "spool-delivery-openapi-test",
        shutdown.clone(),
    )
    .await
    .expect("the platform starts without NATS");
    let state = AppState {
        history: History::new(platform.jetstream.clone()),
        hub: Arc::new(Hub::new(16, 1 << 20, 16)),
        settings: Arc::new(StreamSettings {
            heartbeat: Duration::from_secs(15),
            retry: Duration::from_secs(3),
        }),
        platform,
    };
    let app = router(state);

    // The check can tell: an unknown path and a wrong method are refused by the router.
    let (status, code) = answer(&app, "GET", "/v1/no-such-route").await;
    assert!(
        is_unrouted(status, code.as_deref()),
        "unknown path: {status} {code:?}"
    );
    let (status, code) = answer(&app, "POST", "/v1/sites/acme/events").await;
    assert!(
        is_unrouted(status, code.as_deref()),
        "wrong method: {status} {code:?}"
    );

    let mut unrouted = Vec::new();
    for (method, path) in ROUTES {
        let (status, code) = answer(&app, method.as_str(), &concrete(path)).await;
        if is_unrouted(status, code.as_deref()) {
            unrouted.push(format!("{method} {path}: {status} {code:?}"));
        }
    }
    shutdown.cancel();
    assert!(
        unrouted.is_empty(),
        "ROUTES lists routes the router does not serve:\n{}",
        unrouted.join("\n")
    );
}
