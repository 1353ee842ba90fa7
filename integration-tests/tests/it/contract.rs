//! Contract fuzzing (issue #16): schemathesis, from PyPI, generates requests from
//! `proto/openapi.yaml` — valid ones and deliberately invalid ones — and sends them to the
//! real services (the binaries of this build, a real nats-server, free ports); every answer must
//! be documented and match its schema, and none may be a 5xx.
//!
//! What it covers, per service (`--include-tag`): the ingest's webhook route (signed by the
//! hooks in `integration-tests/contract/hooks.py`, so valid cases get past the signature
//! check to the payload's validation and to JetStream), the admin API of sites (with the
//! admin token), and the operational routes; the delivery's poll, SSE stream (each event of
//! the stream checked against `StreamEvent`) and preflights, on a public site and on a
//! private one with its read token; the revalidator's dead-letter API (with a dead letter
//! in it: a target on a network the revalidator may not call). Checks: all of
//! schemathesis's but `positive_data_acceptance`, which expects 2xx for any schema-valid
//! request while some rules can't be said in JSON Schema (a secret's base64 decoding to 16
//! to 128 bytes, a body `id` equal to the path's, no `..` segment in a slug, a URL's host).
//! Phases: examples, coverage, fuzzing and stateful (the admin API's links).
//!
//! Knobs: `SPOOL_CONTRACT_EXAMPLES` (most cases per operation and phase; default 20) and
//! `SPOOL_CONTRACT_SEED` (default fixed, so a run is repeatable); `SPOOL_SCHEMATHESIS` (the
//! binary; default `.tools/contract-venv/bin/schemathesis`, which `make contract-tools`,
//! part of `make test`, installs pinned).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use serde_json::json;
use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::process::ServiceProcess;
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{metric_value, metrics_text, write_sites_file, TEST_SECRET};

const PUBLIC_SITE: &str = "contract-pub";
const PRIVATE_SITE: &str = "contract-priv";
const READ_TOKEN: &str = "rk_contract_0123456789abcdef";
const ADMIN_TOKEN: &str = "admin-contract-0123456789abcdef";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn schemathesis() -> PathBuf {
    let bin = std::env::var_os("SPOOL_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".tools/contract-venv/bin/schemathesis"));
    assert!(
        bin.exists(),
        "schemathesis is missing at {}: run `make contract-tools` (or set SPOOL_SCHEMATHESIS)",
        bin.display()
    );
    bin
}

/// Runs schemathesis on the operations tagged `tag` against `service`; returns its output
/// and whether it passed.
fn run(tag: &str, service: &ServiceProcess, admin: bool, dir: &std::path::Path) -> (bool, String) {
    let examples = std::env::var("SPOOL_CONTRACT_EXAMPLES").unwrap_or_else(|_| "20".into());
    let seed = std::env::var("SPOOL_CONTRACT_SEED").unwrap_or_else(|_| "16".into());
    let mut command = Command::new(schemathesis());
    command
        .current_dir(dir)
        .arg("--config-file")
        .arg(workspace().join("integration-tests/contract/schemathesis.toml"))
        .env("SCHEMATHESIS_HOOKS", "hooks")
        // No __pycache__ in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONPATH", workspace().join("integration-tests/contract"))
        .env("SPOOL_CONTRACT_SECRET", TEST_SECRET)
        .env("SPOOL_CONTRACT_PUBLIC_SITE", PUBLIC_SITE)
        .env("SPOOL_CONTRACT_PRIVATE_SITE", PRIVATE_SITE)
        .env("SPOOL_CONTRACT_READ_TOKEN", READ_TOKEN)
        .args(["run", "--no-color"])
        .arg(workspace().join("proto/openapi.yaml"))
        .args(["--url", &service.base_url, "--include-tag", tag])
        .args(["--max-examples", &examples, "--seed", &seed])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        // Streams have their own, shorter limit (schemathesis.toml).
        .args(["--request-timeout", "3", "--generation-database", "none"]);
    if admin {
        command.args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")]);
    }
    let started = Instant::now();
    let output = command.output().expect("running schemathesis");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("schemathesis {tag}: {:.1?}", started.elapsed());
    (output.status.success(), text)
}

#[tokio::test]
async fn every_answer_of_every_service_matches_the_openapi_document() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sites = write_sites_file(
        dir.path(),
        &[
            json!({"id": PUBLIC_SITE, "webhook_secret": TEST_SECRET, "public": true,
                   "cors_origins": ["*"]}),
            // Its target is on loopback, which the revalidator may not call: each of its
            // events becomes a dead letter at once (`target_not_allowed`).
            json!({"id": PRIVATE_SITE, "webhook_secret": TEST_SECRET, "read_tokens": [READ_TOKEN],
                   "cors_origins": ["https://acme.example"], "public_fields": ["slug", "title"],
                   "revalidate": [{"url": "http://127.0.0.1:9/api/revalidate", "secret": TEST_SECRET}]}),
        ],
    );
    let env = [
        ("NATS_URL", nats.url()),
        ("SPOOL_SITES_FILE", sites.display().to_string()),
        ("SPOOL_ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
        ("RUST_LOG", "warn".to_string()),
    ];
    let ingest = ServiceProcess::start("spool-ingest", &env).await;
    let delivery = ServiceProcess::start("spool-delivery", &env).await;
    let revalidator = ServiceProcess::start("spool-revalidator", &env).await;

    // Events to read back, with awkward content, public and draft, on both sites.
    let http = reqwest::Client::new();
    for site in [PUBLIC_SITE, PRIVATE_SITE] {
        for (i, kind) in ["content.published", "content.updated", "content.deleted"]
            .iter()
            .enumerate()
        {
            let body = json!({"type": kind, "collection": "blog",
                "item": {"id": i.to_string(), "slug": format!("post-{i}"),
                         "title": "line one\nline two\r\n\u{2028} é 🦀 \"quoted\""},
                "tags": ["extra"]});
            Webhook::with_body(&format!("seed-{site}-{i}"), body.to_string().into_bytes())
                .send_until_stored(&http, &ingest.base_url, site)
                .await;
        }
    }
    // The dead letters of the private site's events are there before the revalidator's turn.
    spool_integration_tests::eventually(
        "dead letters",
        std::time::Duration::from_secs(20),
        || async {
            let r = http
                .get(revalidator.url("/v1/admin/dlq"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .ok()?;
            let body: serde_json::Value = r.json().await.ok()?;
            (body["dead_letters"].as_array()?.len() >= 2).then_some(())
        },
    )
    .await;

    let work = tempfile::tempdir().unwrap();
    let mut failed = Vec::new();
    // The ingest last: its stateful phase adds and removes sites (not the two above: the
    // hooks send writes to them elsewhere).
    for (tag, service, admin) in [
        ("delivery", &delivery, false),
        ("revalidator", &revalidator, true),
        ("ingest", &ingest, true),
    ] {
        let (ok, output) = run(tag, service, admin, work.path());
        if ok {
            // What was covered (phases, operations, warnings such as only-401 answers).
            let summary = output.find("SUMMARY").map_or("", |i| &output[i..]);
            eprintln!("--- {tag} ---\n{summary}");
        } else {
            failed.push(format!("--- {tag} ---\n{output}"));
        }
    }
    assert!(
        failed.is_empty(),
        "schemathesis found answers that don't match proto/openapi.yaml:\n{}",
        failed.join("\n")
    );
    // The hooks got generated cases past authentication: signed webhooks were stored, and
    // polls and streams delivered events. (A fresh client: the services may have closed
    // the idle connections of the one above.)
    let http = reqwest::Client::new();
    let counter = |service: &ServiceProcess, metric: &'static str| {
        let (http, base) = (http.clone(), service.base_url.clone());
        async move {
            let text = metrics_text(&http, &base).await.expect("/metrics");
            metric_value(&text, metric).unwrap_or(0.0)
        }
    };
    let accepted = counter(&ingest, "spool_ingest_webhooks_total{outcome=\"accepted\"}").await;
    assert!(accepted > 6.0, "no generated webhook was stored");
    for metric in [
        "spool_delivery_events_delivered_total{kind=\"poll\"}",
        "spool_delivery_events_delivered_total{kind=\"sse\"}",
    ] {
        assert!(counter(&delivery, metric).await > 0.0, "{metric} is 0");
    }
}
