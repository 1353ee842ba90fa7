//! W3C trace context across the hops of one change: HTTP request → NATS message headers →
//! the consumers → the outgoing revalidation request. Spans follow the OpenTelemetry
//! semantic conventions for HTTP and messaging (`otel.kind`, `messaging.*`, `http.*`).

use opentelemetry::propagation::{Extractor, Injector};
pub use opentelemetry::Context;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

struct HttpHeaders<'a>(&'a axum::http::HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct NatsHeaders<'a>(Option<&'a async_nats::HeaderMap>);

impl Extractor for NatsHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0?.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .map(|h| h.iter().map(|(k, _)| k.as_ref()).collect())
            .unwrap_or_default()
    }
}

struct Collect(Vec<(String, String)>);

impl Injector for Collect {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

fn extract(extractor: &dyn Extractor) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(extractor))
}

/// The trace context an HTTP request carries (`traceparent`, `tracestate`).
pub fn from_http(headers: &axum::http::HeaderMap) -> Context {
    extract(&HttpHeaders(headers))
}

/// The trace context a NATS message carries.
pub fn from_nats(headers: Option<&async_nats::HeaderMap>) -> Context {
    extract(&NatsHeaders(headers))
}

/// The headers (`traceparent`, `tracestate`) that continue `span`'s trace in the next hop.
pub fn headers_of(span: &tracing::Span) -> Vec<(String, String)> {
    let cx = span.context();
    let mut collect = Collect(Vec::new());
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut collect));
    collect.0
}

/// Makes `span` a child of `parent` (a no-op without an exporter) and records its trace id
/// as the `trace_id` field, so that the logs written inside it carry it.
pub fn adopt(span: &tracing::Span, parent: Context) {
    let _ = span.set_parent(parent);
    let trace_id = {
        use opentelemetry::trace::TraceContextExt as _;
        span.context().span().span_context().trace_id()
    };
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

/// The OpenTelemetry context of `span` (to parent work that runs elsewhere).
pub fn context_of(span: &tracing::Span) -> Context {
    span.context()
}

/// Links `span` to another trace (a call that merges several changes).
pub fn link(span: &tracing::Span, other: &Context) {
    use opentelemetry::trace::TraceContextExt as _;
    let span_context = other.span().span_context().clone();
    if span_context.is_valid() {
        span.add_link(span_context);
    }
}
