//! The OpenAPI document (`proto/openapi.yaml`) against the revalidator's code: the
//! operations of `paths` tagged `revalidator` are exactly [`ROUTES`] minus the operational
//! routes (documented once, under `ingest`). The `revalidate` entry of `webhooks` is the
//! call the revalidator makes, not a route it serves. Runs offline: no NATS server is needed.

// The helpers below are test code too: a failed `expect` is a failed test.
#![allow(clippy::expect_used)]

use std::collections::BTreeSet;

use serde_json::Value;
use spool_revalidator::routes::ROUTES;

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

#[test]
fn revalidator_operations_are_exactly_the_routes_minus_the_operational_ones() {
    let documented = tagged(&document(), "revalidator");
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .filter(|(_, path)| !OPERATIONAL.contains(path))
        .map(|(method, path)| (method.as_str().to_uppercase(), (*path).to_owned()))
        .collect();
    assert!(!served.is_empty());
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let not_served: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && not_served.is_empty(),
        "proto/openapi.yaml (operations of `paths` tagged `revalidator`) and \
         spool_revalidator::routes::ROUTES (minus {OPERATIONAL:?}) differ:\n  \
         served but not documented: {undocumented:?}\n  \
         documented but not served: {not_served:?}"
    );
}

#[test]
fn the_operational_routes_are_served_and_documented_under_ingest() {
    let doc = document();
    let operational: BTreeSet<(String, String)> = ROUTES
        .iter()
        .filter(|(_, path)| OPERATIONAL.contains(path))
        .map(|(method, path)| (method.as_str().to_uppercase(), (*path).to_owned()))
        .collect();
    assert_eq!(
        operational.len(),
        OPERATIONAL.len(),
        "ROUTES lacks an operational route"
    );
    let ingest = tagged(&doc, "ingest");
    assert!(
        operational.is_subset(&ingest),
        "{operational:?} not all under `ingest`"
    );
}

#[test]
fn the_admin_routes_are_served_by_the_revalidator_port() {
    let doc = document();
    for (_, path) in tagged(&doc, "revalidator") {
        let servers: Vec<&str> = doc["paths"][&path]["servers"]
            .as_array()
            .map(|s| s.iter().filter_map(|s| s["url"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(servers, ["http://localhost:8082"], "servers of {path}");
    }
}
