//! An OTLP trace receiver on port 0, over HTTP (`http/protobuf`) or gRPC: decodes what the
//! services export (protobuf, with the `opentelemetry-proto` types and, for gRPC, its
//! generated tonic service — no mock of the SDK) and keeps every span.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message as _;

use crate::eventually;

pub use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

/// One exported span, flattened.
#[derive(Debug, Clone)]
pub struct ExportedSpan {
    pub service: String,
    pub name: String,
    pub kind: SpanKind,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub attributes: Vec<(String, String)>,
    pub links: Vec<String>,
}

impl ExportedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone)]
pub struct OtlpReceiver {
    /// The base URL for `OTEL_EXPORTER_OTLP_ENDPOINT` (the exporter appends `/v1/traces`).
    pub endpoint: String,
    spans: Arc<Mutex<Vec<ExportedSpan>>>,
    _server: Arc<tokio::task::JoinHandle<()>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

type Spans = Arc<Mutex<Vec<ExportedSpan>>>;

/// `POST /v1/traces` of OTLP/HTTP.
async fn receive(State(spans): State<Spans>, body: Bytes) -> (StatusCode, Vec<u8>) {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    spans.lock().expect("spans lock").extend(flatten(request));
    (StatusCode::OK, Vec::new())
}

/// `TraceService/Export` of OTLP/gRPC.
struct GrpcCollector(Spans);

#[tonic::async_trait]
impl TraceService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = flatten(request.into_inner());
        self.0.lock().expect("spans lock").extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<ExportedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .map(text)
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(ExportedSpan {
                    service: service.clone(),
                    kind: SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv)))
                        .collect(),
                    links: span.links.iter().map(|l| hex(&l.span_id)).collect(),
                });
            }
        }
    }
    out
}

impl OtlpReceiver {
    pub async fn start() -> OtlpReceiver {
        let spans = Spans::default();
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(receive))
            .with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind OTLP receiver");
        let port = listener.local_addr().expect("port").port();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        OtlpReceiver {
            endpoint: format!("http://127.0.0.1:{port}"),
            spans,
            _server: Arc::new(server),
        }
    }

    /// The same receiver over gRPC (`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`; the endpoint is
    /// used as it is).
    pub async fn start_grpc() -> OtlpReceiver {
        let spans = Spans::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind OTLP/gRPC receiver");
        let port = listener.local_addr().expect("port").port();
        let incoming = futures::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(stream, _)| stream);
            Some((accepted, listener))
        });
        let service = TraceServiceServer::new(GrpcCollector(spans.clone()));
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        OtlpReceiver {
            endpoint: format!("http://127.0.0.1:{port}"),
            spans,
            _server: Arc::new(server),
        }
    }

    /// Every span of `trace_id` received so far.
    pub fn trace(&self, trace_id: &str) -> Vec<ExportedSpan> {
        let spans = self.spans.lock().expect("spans lock");
        spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    /// Waits until `check` accepts the spans of `trace_id`.
    pub async fn wait_trace(
        &self,
        trace_id: &str,
        check: impl Fn(&[ExportedSpan]) -> bool,
    ) -> Vec<ExportedSpan> {
        eventually(
            &format!("the spans of trace {trace_id}"),
            Duration::from_secs(20),
            || async {
                let spans = self.trace(trace_id);
                check(&spans).then_some(spans)
            },
        )
        .await
    }
}
