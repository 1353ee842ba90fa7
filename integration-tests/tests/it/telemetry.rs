//! One change, one trace: the three services, started as in production with the standard
//! OTEL_* variables, export spans of the CMS's trace to an OTLP receiver, and the site's
//! revalidation target sees the same trace. And the metrics move.

use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::otlp::{ExportedSpan, OtlpReceiver, SpanKind};
use spool_integration_tests::process::ServiceProcess;
use spool_integration_tests::receiver::TestReceiver;
use spool_integration_tests::webhook::Webhook;
use spool_integration_tests::{site_json, write_sites_file, LOOPBACK_TARGET_NETWORKS};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CMS_SPAN: &str = "00f067aa0ba902b7";

fn find<'a>(spans: &'a [ExportedSpan], service: &str, kind: SpanKind) -> Option<&'a ExportedSpan> {
    spans
        .iter()
        .find(|s| s.service == service && s.kind == kind)
}

/// A webhook of the site `acme`, sent as a child of the CMS's span; accepted.
async fn send_in_the_cms_trace(http: &reqwest::Client, ingest: &str, id: &str) {
    let r = Webhook::published(id, "blog", "1")
        .request(http, ingest, "acme")
        .header("traceparent", format!("00-{TRACE}-{CMS_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn one_webhook_is_one_trace_across_the_three_services_and_the_site() {
    let nats = NatsServer::start().await;
    let otlp = OtlpReceiver::start().await;
    let target = TestReceiver::start([]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut site = site_json("acme");
    site["revalidate"] = serde_json::json!([target.target(None)]);
    let sites = write_sites_file(dir.path(), &[site]);
    let env = [
        ("NATS_URL", nats.url()),
        ("SPOOL_SITES_FILE", sites.display().to_string()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint.clone()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_string()),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test".to_string(),
        ),
        ("SPOOL_COALESCE_WINDOW", "10ms".to_string()),
        (
            "SPOOL_ALLOWED_TARGET_NETWORKS",
            LOOPBACK_TARGET_NETWORKS.to_string(),
        ),
    ];
    let ingest = ServiceProcess::start("spool-ingest", &env).await;
    let delivery = ServiceProcess::start("spool-delivery", &env).await;
    let revalidator = ServiceProcess::start("spool-revalidator", &env).await;

    let http = reqwest::Client::new();
    send_in_the_cms_trace(&http, &ingest.base_url, "msg_traced").await;

    let calls = target
        .wait_calls(1, std::time::Duration::from_secs(20))
        .await;
    let traceparent = calls[0].header("traceparent").to_string();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1], TRACE, "the site sees the CMS's trace");

    let spans = otlp
        .wait_trace(TRACE, |spans| {
            find(spans, "spool-ingest", SpanKind::Server).is_some()
                && find(spans, "spool-ingest", SpanKind::Producer).is_some()
                && find(spans, "spool-delivery", SpanKind::Consumer).is_some()
                && find(spans, "spool-revalidator", SpanKind::Consumer).is_some()
                && find(spans, "spool-revalidator", SpanKind::Client).is_some()
        })
        .await;
    let server = find(&spans, "spool-ingest", SpanKind::Server).unwrap();
    let producer = find(&spans, "spool-ingest", SpanKind::Producer).unwrap();
    let fanout = find(&spans, "spool-delivery", SpanKind::Consumer).unwrap();
    let consumer = find(&spans, "spool-revalidator", SpanKind::Consumer).unwrap();
    let client = find(&spans, "spool-revalidator", SpanKind::Client).unwrap();

    // The tree: CMS → server → producer → {delivery consumer, revalidator consumer → client} → site.
    assert_eq!(server.parent_span_id, CMS_SPAN);
    assert_eq!(producer.parent_span_id, server.span_id);
    assert_eq!(fanout.parent_span_id, producer.span_id);
    assert_eq!(consumer.parent_span_id, producer.span_id);
    assert_eq!(client.parent_span_id, consumer.span_id);
    assert_eq!(
        parts[2], client.span_id,
        "the site's parent is the client span"
    );

    // Names and attributes per the semantic conventions.
    assert_eq!(server.name, "POST /v1/sites/{site}/webhooks");
    assert_eq!(server.attribute("http.request.method"), Some("POST"));
    assert_eq!(
        server.attribute("http.route"),
        Some("/v1/sites/{site}/webhooks")
    );
    assert_eq!(server.attribute("http.response.status_code"), Some("202"));
    assert_eq!(producer.name, "send spool.events.acme.blog");
    for span in [producer, fanout, consumer] {
        assert_eq!(span.attribute("messaging.system"), Some("nats"), "{span:?}");
        assert_eq!(
            span.attribute("messaging.destination.name"),
            Some("spool.events.acme.blog"),
            "{span:?}"
        );
        assert_eq!(
            span.attribute("messaging.message.id"),
            Some("acme:msg_traced"),
            "{span:?}"
        );
    }
    assert_eq!(producer.attribute("spool.event.seq"), Some("1"));
    assert_eq!(client.attribute("http.response.status_code"), Some("200"));
    assert_eq!(client.attribute("url.full"), Some(target.url.as_str()));
    // One consumer span per event per delivery process, whatever the number of browsers.
    assert_eq!(
        spans
            .iter()
            .filter(|s| s.service == "spool-delivery")
            .count(),
        1
    );

    // Metrics: the counters of this change moved.
    let scrape = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let text = scrape(ingest.url("/metrics")).await;
    assert!(
        text.contains("spool_ingest_webhooks_total{outcome=\"accepted\"} 1"),
        "{text}"
    );
    assert!(text.contains("http_server_request_duration_seconds_count{http_request_method=\"POST\",http_route=\"/v1/sites/{site}/webhooks\",http_response_status_code=\"202\"} 1"), "{text}");
    let text = scrape(delivery.url("/metrics")).await;
    assert!(
        text.contains("spool_delivery_feed_events_total 1"),
        "{text}"
    );
    let text = scrape(revalidator.url("/metrics")).await;
    assert!(
        text.contains(
            "spool_revalidator_calls_total{outcome=\"delivered\",status_class=\"2xx\",attempt=\"first\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("spool_revalidator_events_total 1"), "{text}");
}

#[tokio::test]
async fn spans_are_exported_over_otlp_grpc_too() {
    let nats = NatsServer::start().await;
    let otlp = OtlpReceiver::start_grpc().await;
    let dir = tempfile::tempdir().unwrap();
    let sites = write_sites_file(dir.path(), &[site_json("acme")]);
    let env = [
        ("NATS_URL", nats.url()),
        ("SPOOL_SITES_FILE", sites.display().to_string()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint.clone()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_string()),
    ];
    let ingest = ServiceProcess::start("spool-ingest", &env).await;
    let _delivery = ServiceProcess::start("spool-delivery", &env).await;

    let http = reqwest::Client::new();
    send_in_the_cms_trace(&http, &ingest.base_url, "msg_grpc").await;

    let spans = otlp
        .wait_trace(TRACE, |spans| {
            find(spans, "spool-ingest", SpanKind::Producer).is_some()
                && find(spans, "spool-delivery", SpanKind::Consumer).is_some()
        })
        .await;
    let server = find(&spans, "spool-ingest", SpanKind::Server).unwrap();
    let producer = find(&spans, "spool-ingest", SpanKind::Producer).unwrap();
    let fanout = find(&spans, "spool-delivery", SpanKind::Consumer).unwrap();
    assert_eq!(server.parent_span_id, CMS_SPAN);
    assert_eq!(producer.parent_span_id, server.span_id);
    assert_eq!(fanout.parent_span_id, producer.span_id);
}
