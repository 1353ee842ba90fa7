//! The OpenAPI document (`proto/openapi.yaml`) against the code of the three services: the
//! operations of `paths` tagged with a service are exactly its `ROUTES` (the operational
//! routes, served by every service, are documented once, under `ingest`), every operation
//! has an id and one service tag, every `$ref` resolves, and each router really serves every
//! route of its `ROUTES`. The `revalidate` entry of `webhooks` is the call the revalidator
//! makes, not a route it serves. Runs offline: no NATS server is needed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use serde_json::Value;
use spool_platform::config::CommonConfig;
use spool_platform::shutdown::CancellationToken;
use spool_platform::Platform;
use tower::ServiceExt as _;

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];
const SERVICE_TAGS: [&str; 3] = ["ingest", "delivery", "revalidator"];
/// Served by every service, documented once under the `ingest` tag.
const OPERATIONAL: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

type Routes = &'static [(Method, &'static str)];

/// Every service's tag and `ROUTES`.
const SERVICES: [(&str, Routes); 3] = [
    ("ingest", spool_ingest::routes::ROUTES),
    ("delivery", spool_delivery::routes::ROUTES),
    ("revalidator", spool_revalidator::routes::ROUTES),
];

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

/// (METHOD, path) of every operation of `paths` carrying `tag`.
fn tagged(doc: &Value, tag: &str) -> BTreeSet<(String, String)> {
    operations(doc)
        .into_iter()
        .filter(|(section, _, _, op)| *section == "paths" && tags(op).contains(&tag))
        .map(|(_, method, path, _)| (method, path))
        .collect()
}

/// (METHOD, path) of the routes of `routes` that are operational, or that are not.
fn served(routes: Routes, operational: bool) -> BTreeSet<(String, String)> {
    routes
        .iter()
        .filter(|(_, path)| OPERATIONAL.contains(path) == operational)
        .map(|(method, path)| (method.as_str().to_uppercase(), (*path).to_owned()))
        .collect()
}

/// The operations tagged `tag` are exactly `routes`, minus the operational routes unless
/// the service is the one documenting them (`ingest`).
fn assert_operations_are_the_routes(tag: &str, routes: Routes) {
    let mut expected = served(routes, false);
    assert!(!expected.is_empty(), "{tag}: ROUTES has no API route");
    if tag == "ingest" {
        expected.extend(served(routes, true));
    }
    let documented = tagged(&document(), tag);
    let undocumented: Vec<_> = expected.difference(&documented).collect();
    let not_served: Vec<_> = documented.difference(&expected).collect();
    assert!(
        undocumented.is_empty() && not_served.is_empty(),
        "proto/openapi.yaml (operations of `paths` tagged `{tag}`) and spool_{tag}::routes::ROUTES \
         (the operational routes {OPERATIONAL:?} only under `ingest`) differ:\n  \
         served but not documented: {undocumented:?}\n  \
         documented but not served: {not_served:?}"
    );
}

#[test]
fn the_document_is_openapi_3_1() {
    let doc = document();
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(
        version.starts_with("3.1"),
        "openapi is {version:?}, expected 3.1.x"
    );
}

#[test]
fn ingest_operations_are_exactly_the_routes() {
    assert_operations_are_the_routes("ingest", spool_ingest::routes::ROUTES);
}

#[test]
fn delivery_operations_are_exactly_the_routes_minus_the_operational_ones() {
    assert_operations_are_the_routes("delivery", spool_delivery::routes::ROUTES);
}

#[test]
fn revalidator_operations_are_exactly_the_routes_minus_the_operational_ones() {
    assert_operations_are_the_routes("revalidator", spool_revalidator::routes::ROUTES);
}

#[test]
fn the_operational_routes_are_served_by_every_service_and_documented_once_under_ingest() {
    let doc = document();
    let ingest = tagged(&doc, "ingest");
    for (tag, routes) in SERVICES {
        let operational = served(routes, true);
        assert_eq!(
            operational.len(),
            OPERATIONAL.len(),
            "{tag}: ROUTES lacks an operational route"
        );
        assert!(
            operational.is_subset(&ingest),
            "{tag}: {operational:?} not all documented under `ingest`"
        );
        for other in SERVICE_TAGS.iter().filter(|t| **t != "ingest") {
            assert!(
                operational.is_disjoint(&tagged(&doc, other)),
                "{tag}: an operational route is documented under `{other}` too"
            );
        }
    }
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

#[test]
fn the_admin_routes_are_served_by_the_revalidator_port() {
    let doc = document();
    let routes = tagged(&doc, "revalidator");
    assert!(!routes.is_empty(), "nothing is tagged `revalidator`");
    for (_, path) in routes {
        let servers: Vec<&str> = doc["paths"][&path]["servers"]
            .as_array()
            .map(|s| s.iter().filter_map(|s| s["url"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(servers, ["http://localhost:8082"], "servers of {path}");
    }
}

// The routers, offline. Nothing listens on port 1: the client keeps trying in the
// background, the registry never loads and no feed or consumer starts, so every route
// answers without NATS (503, 401, 200 + retry, ...), but never with the router's own 404
// `route_not_found` or 405 `method_not_allowed`.

/// `/v1/sites/{site}/events` → `/v1/sites/acme/events`, `{seq}` → `1`.
fn concrete(path: &str) -> String {
    path.replace("{site}", "acme").replace("{seq}", "1")
}

/// What the router answers; the JSON error code when there is one.
async fn answer(app: &Router, method: &str, path: &str) -> (StatusCode, Option<String>) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("origin", "https://acme.example")
        .header("content-type", "application/json")
        .body(Body::from("{}"))
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

/// The router `build` makes on an offline platform serves every route of `routes`; an
/// unknown path and `wrong_method` (a method a served path does not take) are refused, so
/// the check can tell.
async fn assert_serves_every_route(
    service: &str,
    build: impl FnOnce(Platform) -> Router,
    routes: Routes,
    wrong_method: (&str, &str),
) {
    let shutdown = CancellationToken::new();
    let platform = Platform::start(
        CommonConfig::for_nats("nats://127.0.0.1:1"),
        &format!("{service}-openapi-test"),
        shutdown.clone(),
    )
    .await
    .expect("the platform starts without NATS");
    let app = build(platform);

    let (status, code) = answer(&app, "GET", "/v1/no-such-route").await;
    assert!(
        is_unrouted(status, code.as_deref()),
        "unknown path: {status} {code:?}"
    );
    let (method, path) = wrong_method;
    let (status, code) = answer(&app, method, path).await;
    assert!(
        is_unrouted(status, code.as_deref()),
        "wrong method {method} {path}: {status} {code:?}"
    );

    let mut unrouted = Vec::new();
    for (method, path) in routes {
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

#[tokio::test]
async fn the_ingest_router_serves_every_route() {
    use spool_ingest::publish::Publisher;
    use spool_ingest::routes::{router, AppState, ROUTES};

    let build = |platform: Platform| {
        router(AppState {
            publisher: Publisher::new(platform.client.clone(), Duration::from_secs(1)),
            admin_token: None,
            webhook_tolerance: Duration::from_secs(300),
            body_timeout: Duration::from_secs(10),
            webhook_limits: Arc::new(spool_ingest::limits::SiteLimits::new(
                spool_platform::rate::Rate::new(200, 1000),
            )),
            platform,
        })
    };
    let wrong_method = ("PATCH", "/v1/sites/acme/webhooks");
    assert_serves_every_route("spool-ingest", build, ROUTES, wrong_method).await;
}

#[tokio::test]
async fn the_delivery_router_serves_every_route() {
    use spool_delivery::history::{History, ReadLimits};
    use spool_delivery::hub::Hub;
    use spool_delivery::routes::{router, AppState, ReadSettings, SiteStreams, ROUTES};

    let build = |platform: Platform| {
        router(AppState {
            history: History::new(
                platform.client.clone(),
                platform.jetstream.clone(),
                platform.registry.clone(),
                ReadLimits {
                    process: 4,
                    per_site: 1,
                },
            ),
            hub: Arc::new(Hub::new(16, 1 << 20, 16)),
            settings: Arc::new(ReadSettings {
                heartbeat: Duration::from_secs(15),
                retry: Duration::from_secs(3),
                busy_retry: Duration::from_secs(10),
                max_lifetime: Duration::from_secs(1800),
            }),
            streams: Arc::new(SiteStreams::new(10)),
            jwks: Arc::new(spool_delivery::jwks::JwksCache::new().expect("a JWKS client")),
            platform,
        })
    };
    let wrong_method = ("POST", "/v1/sites/acme/events");
    assert_serves_every_route("spool-delivery", build, ROUTES, wrong_method).await;
}

#[tokio::test]
async fn the_revalidator_router_serves_every_route() {
    use spool_revalidator::dispatch::Dispatcher;
    use spool_revalidator::routes::{router, AppState, ROUTES};
    use spool_revalidator::worker::{Settings, Worker};
    use spool_revalidator::RevalidatorConfig;

    let build = |platform: Platform| {
        let config = RevalidatorConfig::new(
            (*platform.config).clone(),
            "127.0.0.1:0".parse().expect("an address"),
        );
        let settings = Settings::from_config(&config);
        let policy = config.target_policy().expect("a target policy");
        let dispatcher = Dispatcher::new(Duration::from_secs(1), policy).expect("a dispatcher");
        router(AppState {
            worker: Worker::new(platform.clone(), dispatcher, settings),
            admin_token: None,
            platform,
        })
    };
    let wrong_method = ("DELETE", "/v1/admin/dlq");
    assert_serves_every_route("spool-revalidator", build, ROUTES, wrong_method).await;
}

#[test]
fn every_readiness_reason_is_documented_in_the_readme_and_the_openapi() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let openapi = std::fs::read_to_string(root.join("proto/openapi.yaml")).expect("openapi");
    let reasons = spool_platform::health::Readiness::REASONS
        .into_iter()
        .chain([
            spool_delivery::NOT_READY_FEED,
            spool_revalidator::NOT_READY_CONSUMER,
        ]);
    for reason in reasons {
        let quoted = format!("`{reason}`");
        assert!(readme.contains(&quoted), "README.md does not name {quoted}");
        assert!(
            openapi.contains(&quoted),
            "openapi.yaml does not name {quoted}"
        );
    }
}

fn repository_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The error codes the `Error` schema names, each with its status: "`code` (400)".
fn documented_error_codes(openapi: &Value) -> BTreeSet<(String, String)> {
    let text = openapi["components"]["schemas"]["Error"]["properties"]["error"]["properties"]
        ["code"]["description"]
        .as_str()
        .expect("the Error schema's code description")
        .replace('\n', " ");
    let mut codes = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find('`') {
        let Some(len) = rest[start + 1..].find('`') else {
            break;
        };
        let code = &rest[start + 1..start + 1 + len];
        rest = &rest[start + 2 + len..];
        let status: String = rest
            .trim_start()
            .strip_prefix('(')
            .map(|s| s.chars().take_while(char::is_ascii_digit).collect())
            .unwrap_or_default();
        if !status.is_empty() {
            codes.insert((code.to_string(), status));
        }
    }
    codes
}

#[test]
fn the_api_page_names_every_operation_and_error_code_of_the_openapi() {
    let openapi = document();
    let page = repository_file("docs/api.md");
    for (path, item) in openapi["paths"].as_object().expect("paths") {
        for method in HTTP_METHODS {
            if item.get(method).is_some() {
                let operation = format!("{} {path}", method.to_uppercase());
                assert!(
                    page.contains(&format!("`{operation}")),
                    "docs/api.md does not name `{operation}`"
                );
            }
        }
    }
    let codes = documented_error_codes(&openapi);
    assert!(codes.len() >= 20, "{codes:?}");
    for (code, status) in codes {
        let row = format!("| `{code}` | {status} |");
        assert!(page.contains(&row), "docs/api.md's error table lacks {row}");
    }
}

#[test]
fn every_link_in_the_docs_resolves_inside_the_repository() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root");
    let mut pages = vec![
        "README.md".to_string(),
        "deploy/README.md".to_string(),
        "clients/js/packages/client/README.md".to_string(),
        "clients/js/packages/next/README.md".to_string(),
    ];
    for entry in std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            pages.push(format!("docs/{name}"));
        }
    }
    let mut checked = 0;
    for page in pages {
        let text = repository_file(&page);
        let dir = root
            .join(&page)
            .parent()
            .expect("a page's folder")
            .to_path_buf();
        for (i, _) in text.match_indices("](") {
            let target: String = text[i + 2..].chars().take_while(|c| *c != ')').collect();
            let target = target.split('#').next().unwrap_or("").trim();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let resolved = dir.join(target).canonicalize().unwrap_or_else(|_| {
                panic!("{page} links to {target}, which is not in the repository")
            });
            assert!(
                resolved.starts_with(&root),
                "{page} links to {target}, outside the repository"
            );
            checked += 1;
        }
    }
    assert!(checked > 10, "only {checked} links found");
}
