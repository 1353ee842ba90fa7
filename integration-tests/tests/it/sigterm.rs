//! The real `spool-ingest` binary, configured by environment as in production: SIGTERM
//! stops it cleanly (exit 0), and every webhook it answered 2xx is in the stream.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{read_events, service_binary, site_json, write_sites_file};

#[tokio::test]
async fn sigterm_finishes_in_flight_webhooks_and_exits_zero() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sites = write_sites_file(dir.path(), &[site_json("acme")]);

    let mut child = Command::new(service_binary("spool-ingest"))
        .env("NATS_URL", nats.url())
        .env("SPOOL_LISTEN", "127.0.0.1:0")
        .env("SPOOL_SITES_FILE", &sites)
        .env("SPOOL_LOG_FORMAT", "json")
        .env("SPOOL_SHUTDOWN_GRACE", "10s")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // The service logs the port it bound (SPOOL_LISTEN port 0) as JSON.
    let stdout = child.stdout.take().unwrap();
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if let Some(port) = v["port"].as_u64() {
                    let _ = port_tx.send(port);
                }
            }
        }
    });
    let port = port_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("spool-ingest logs its port");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    spool_integration_tests::eventually("ready", Duration::from_secs(20), || async {
        let r = http.get(format!("{base}/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    // A burst of webhooks, with SIGTERM arriving in the middle of it.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let http = http.clone();
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let hook = Webhook::published(&format!("msg_{i}"), "blog", &i.to_string());
            let r = hook.request(&http, &base, "acme").send().await.ok()?;
            (r.status() == 202).then_some(hook.id)
        }));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut accepted = Vec::new();
    for t in tasks {
        if let Some(id) = t.await.unwrap() {
            accepted.push(id);
        }
    }

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "spool-ingest did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
    let stored: Vec<String> = read_events(&nats.url())
        .await
        .into_iter()
        .map(|s| s.event.id)
        .collect();
    for id in &accepted {
        assert!(
            stored.contains(id),
            "{id} was answered 202 but is not in the stream"
        );
    }
}
