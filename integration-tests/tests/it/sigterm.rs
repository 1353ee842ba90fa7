//! The real binaries, configured by environment as in production: SIGTERM stops them
//! cleanly (exit 0) without losing or stranding work.

use std::time::Duration;

use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::process::ServiceProcess;
use spool_integration_tests::sse::SseClient;
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{eventually_metric, read_events, site_json, write_sites_file};

#[tokio::test]
async fn ingest_sigterm_finishes_in_flight_webhooks_and_exits_zero() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sites = write_sites_file(dir.path(), &[site_json("acme")]);
    let mut ingest = ServiceProcess::start(
        "spool-ingest",
        &[
            ("NATS_URL", nats.url()),
            ("SPOOL_SITES_FILE", sites.display().to_string()),
            ("SPOOL_SHUTDOWN_GRACE", "10s".into()),
        ],
    )
    .await;
    // The fixture addresses the service itself (its children are started through
    // `setpriv --pdeathsig`, which execs): signals and /proc reads reach spool-ingest.
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", ingest.pid())).unwrap();
    assert_eq!(comm.trim(), "spool-ingest");
    assert!(ingest.rss_kib() > 0);
    let http = reqwest::Client::new();

    // A burst of webhooks, with SIGTERM arriving in the middle of it.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let http = http.clone();
        let base = ingest.base_url.clone();
        tasks.push(tokio::spawn(async move {
            let hook = Webhook::published(&format!("msg_{i}"), "blog", &i.to_string());
            let r = hook.request(&http, &base, "acme").send().await.ok()?;
            (r.status() == 202).then_some(hook.id)
        }));
    }
    ingest.sigterm();
    let mut accepted = Vec::new();
    for t in tasks {
        if let Some(id) = t.await.unwrap() {
            accepted.push(id);
        }
    }

    let status = ingest.wait_exit(Duration::from_secs(15)).await;
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

#[tokio::test]
async fn delivery_sigterm_ends_open_streams_and_exits_zero() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut site = site_json("acme");
    site["public"] = true.into();
    let sites = write_sites_file(dir.path(), &[site]);
    let mut delivery = ServiceProcess::start(
        "spool-delivery",
        &[
            ("NATS_URL", nats.url()),
            ("SPOOL_SITES_FILE", sites.display().to_string()),
            ("SPOOL_SHUTDOWN_GRACE", "10s".into()),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let request = http.get(delivery.url("/v1/sites/acme/events/stream"));
        let mut client = SseClient::connect(request, None).await;
        assert_eq!(
            client
                .next_event(Duration::from_secs(10))
                .await
                .unwrap()
                .event,
            "ready"
        );
        clients.push(client);
    }
    // Long-polls end too, with what they have.
    let poll = tokio::spawn({
        let http = http.clone();
        let url = delivery.url("/v1/sites/acme/events?since=0&wait=30");
        async move {
            let r = http.get(url).send().await.expect("poll answered");
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.expect("poll JSON"),
            )
        }
    });
    let waiting = "spool_delivery_open_connections{kind=\"poll\"} 1";
    eventually_metric(&http, &delivery.base_url, waiting, Duration::from_secs(10)).await;

    delivery.sigterm();
    for client in &mut clients {
        // The stream ends (so the browser resumes elsewhere) well before the grace period.
        assert!(
            client.next_event(Duration::from_secs(5)).await.is_none(),
            "stream still open"
        );
    }
    let status = delivery.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}");
    let (code, page) = poll.await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(page["events"], serde_json::json!([]));
}

#[tokio::test]
async fn every_service_exits_on_sigterm_while_nats_is_down() {
    let mut nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sites = write_sites_file(dir.path(), &[site_json("acme")]);
    let env = [
        ("NATS_URL", nats.url()),
        ("SPOOL_SITES_FILE", sites.display().to_string()),
        ("SPOOL_SHUTDOWN_GRACE", "5s".to_string()),
    ];
    let mut services = Vec::new();
    for name in ["spool-ingest", "spool-delivery", "spool-revalidator"] {
        services.push((name, ServiceProcess::start(name, &env).await));
    }
    nats.stop().await;
    for (_, service) in &services {
        service.sigterm();
    }
    for (name, service) in &mut services {
        let status = service.wait_exit(Duration::from_secs(12)).await;
        assert!(status.success(), "{name} exited with {status}");
    }
}
