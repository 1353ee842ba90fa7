//! The OpenAPI document (`proto/openapi.yaml`) against the ingest's code: the operations
//! tagged `ingest` are exactly [`ROUTES`], every `$ref` resolves, and the router really
//! serves every route of [`ROUTES`]. Runs offline: no NATS server is needed.

// The helpers below are test code too: a failed `expect` is a failed test.
#![allow(clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use spool_ingest::publish::Publisher;
use spool_ingest::routes::{router, AppState, ROUTES};
use spool_platform::config::CommonConfig;
use spool_platform::shutdown::CancellationToken;
use spool_platform::Platform;
use tower::ServiceExt as _;

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];
const SERVICE_TAGS: [&str; 3] = ["ingest", "delivery", "revalidator"];

fn document() -> Value {
    serde_yaml::from_str(spool_proto::OPENAPI_YAML).expect("proto/openapi.yaml is not valid YAML")
}

/// Every operation of `paths` and `webhooks`: (where, METHOD, path or webhook name, operation).
fn operations(doc: &Value) -> Vec<(&'static str, String, String, &Value)> {
    let mut ops = Vec::new();
    for section in ["paths", "webhooks"] {
        let Some(items) = doc.get(section).and_then(Value::as_object) else {
            continue;
        };
        for (path, item) in items {
            for method in HTTP_METHODS {
                if let Some(op) = item.get(method) {
                    ops.push((section, method.to_uppercase(), path.clone(), op));
                }
            }
        }
    }
    ops
}

fn tags(op: &Value) -> Vec<&str> {
    op.get("tags")
        .and_then(Value::as_array)
        .map(|tags| tags.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn ingest_operations_are_exactly_the_routes() {
    let doc = document();
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(
        version.starts_with("3.1"),
        "openapi is {version:?}, expected 3.1.x"
    );

    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .filter(|(section, _, _, op)| *section == "paths" && tags(op).contains(&"ingest"))
        .map(|(_, method, path, _)| (method, path))
        .collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path)| (method.as_str().to_uppercase(), (*path).to_owned()))
        .collect();

    let undocumented: Vec<_> = served.difference(&documented).collect();
    let not_served: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && not_served.is_empty(),
        "proto/openapi.yaml (operations tagged `ingest`) and spool_ingest::routes::ROUTES differ:\n  \
         served but not documented: {undocumented:?}\n  \
         documented but not served: {not_served:?}"
    );
}

#[test]
fn every_operation_has_an_id_and_one_service_tag() {
    let doc = document();
    let mut ids = BTreeSet::new();
    let mut problems = Vec::new();
    for (section, method, path, op) in operations(&doc) {
        let at = format!("{section}: {method} {path}");
        match op.get("operationId").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => {
                if !ids.insert(id.to_owned()) {
                    problems.push(format!("{at}: operationId {id:?} is used twice"));
                }
            }
            _ => problems.push(format!("{at}: no operationId")),
        }
        let tags = tags(op);
        if tags.len() != 1 || !SERVICE_TAGS.contains(&tags[0]) {
            problems.push(format!(
                "{at}: tags {tags:?}, expected exactly one of {SERVICE_TAGS:?}"
            ));
        }
    }
    assert!(!ids.is_empty(), "the document has no operations");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Collects every `$ref` string with the JSON pointer of where it stands.
fn collect_refs<'a>(value: &'a Value, at: String, refs: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "$ref" {
                    if let Some(target) = child.as_str() {
                        refs.push((at.clone(), target));
                    }
                }
                let escaped = key.replace('~', "~0").replace('/', "~1");
                collect_refs(child, format!("{at}/{escaped}"), refs);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                collect_refs(child, format!("{at}/{i}"), refs);
            }
        }
        _ => {}
    }
}

#[test]
fn every_ref_resolves_to_a_component() {
    let doc = document();
    let mut refs = Vec::new();
    collect_refs(&doc, String::new(), &mut refs);
    assert!(!refs.is_empty(), "the document has no $ref at all");
    let broken: Vec<String> = refs
        .iter()
        .filter(|(_, target)| {
            let resolved = target
                .strip_prefix('#')
                .filter(|pointer| pointer.starts_with("/components/"))
                .and_then(|pointer| doc.pointer(pointer));
            resolved.is_none()
        })
        .map(|(at, target)| format!("{at}: $ref {target:?} does not resolve to a component"))
        .collect();
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// `/v1/sites/{site}/webhooks` → `/v1/sites/acme/webhooks`.
fn concrete(path: &str) -> String {
    path.replace("{site}", "acme")
}

/// What the router answers; the JSON error code when there is one.
async fn answer(app: &axum::Router, method: &str, path: &str) -> (StatusCode, Option<String>) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .expect("a valid request");
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("the body is readable");
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
    // Nothing listens on port 1: the client keeps trying in the background, the registry
    // never loads, and every route answers without NATS (503, 403, ...), but never with the
    // router's own 404 `route_not_found` or 405 `method_not_allowed`.
    let shutdown = CancellationToken::new();
    let platform = Platform::start(
        CommonConfig::for_nats("nats://127.0.0.1:1"),
        "spool-ingest-openapi-test",
        shutdown.clone(),
    )
    .await
    .expect("the platform starts without NATS");
    let state = AppState {
        publisher: Publisher::new(platform.client.clone(), Duration::from_secs(1)),
        admin_token: None,
        webhook_tolerance: Duration::from_secs(300),
        platform,
    };
    let app = router(state);

    // The check can tell: an unknown path and a wrong method are refused by the router.
    let (status, code) = answer(&app, "GET", "/v1/no-such-route").await;
    assert!(
        is_unrouted(status, code.as_deref()),
        "unknown path: {status} {code:?}"
    );
    let (status, code) = answer(&app, "PATCH", "/v1/sites/acme/webhooks").await;
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
