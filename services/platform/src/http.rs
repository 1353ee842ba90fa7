//! HTTP plumbing every service uses: the JSON error type, binding, serving with graceful
//! shutdown, and the operational routes (`/healthz`, `/readyz`, `/metrics`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::health::Readiness;
use crate::write_stall::{Stalled, WriteStall};

/// Pending connections the kernel queues: thousands of browsers reconnect at once after a
/// deploy, and the default of 128 would make most of them wait for a SYN retry.
pub const LISTEN_BACKLOG: u32 = 4096;

/// An error answer: `{"error": {"code": "...", "message": "..."}}`, with `Retry-After`
/// when the client should come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub fn with_retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn route_not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such endpoint")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive,
/// RFC 9110 §11.1).
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Why an admin request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAuthError {
    /// No `SPOOL_ADMIN_TOKEN` is configured: the admin API is off.
    Disabled,
    Missing,
    Wrong,
}

/// Checks `Authorization: Bearer <admin token>` against the configured token, in constant
/// time.
pub fn check_admin(
    expected: Option<&crate::config::Secret>,
    headers: &axum::http::HeaderMap,
) -> Result<(), AdminAuthError> {
    use subtle::ConstantTimeEq;
    let expected = expected.ok_or(AdminAuthError::Disabled)?;
    let given = bearer_token(headers).ok_or(AdminAuthError::Missing)?;
    if bool::from(given.as_bytes().ct_eq(expected.expose().as_bytes())) {
        Ok(())
    } else {
        Err(AdminAuthError::Wrong)
    }
}

impl From<AdminAuthError> for ApiError {
    fn from(e: AdminAuthError) -> ApiError {
        match e {
            AdminAuthError::Disabled => ApiError::new(
                StatusCode::FORBIDDEN,
                "admin_disabled",
                "the admin API is disabled: set SPOOL_ADMIN_TOKEN to enable it",
            ),
            AdminAuthError::Missing => {
                ApiError::unauthorized("missing Authorization: Bearer <admin token>")
            }
            AdminAuthError::Wrong => ApiError::unauthorized("wrong admin token"),
        }
    }
}

/// Binds with a large backlog. Port 0 picks a free port (tests); read it from the listener.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How the server treats each connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A connection whose writes make no progress for this long is closed at once: a
    /// client that stopped reading (its response, an SSE stream above all, would otherwise
    /// hold the connection and its buffers for ever).
    pub write_stall: Duration,
    /// Called for each connection closed so (the service counts it its own way).
    pub on_write_stall: fn(),
    /// A connection that sends no complete request head for this long — new, or idle
    /// between keep-alive requests — is closed (half-sent heads can't pile up).
    pub header_timeout: Duration,
    /// Open connections at most; one more is closed as soon as it is accepted.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            write_stall: Duration::from_secs(30),
            on_write_stall: || {},
            header_timeout: Duration::from_secs(10),
            max_connections: 20_000,
        }
    }
}

impl ConnectionLimits {
    /// The defaults with the shared settings (`SPOOL_HEADER_TIMEOUT`, `SPOOL_MAX_CONNECTIONS`).
    pub fn from_config(config: &crate::config::CommonConfig) -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: config.header_timeout,
            max_connections: config.max_connections,
            ..ConnectionLimits::default()
        }
    }
}

/// hyper's read and write buffer limit per connection (its default is about 400 KiB): a
/// client that reads slowly holds at most about this much of the process's memory besides
/// the response chunk being written, and a request head (line and headers) larger than
/// this is answered `431 Request Header Fields Too Large`.
const MAX_CONNECTION_BUFFER: usize = 64 * 1024;

/// Serves `router` until `shutdown` is cancelled: then stops accepting, lets each
/// connection finish its in-flight response (SSE and long-poll responses end on the same
/// token) and returns when all are closed. Bound the wait with a timeout of your own.
///
/// The accept loop is ours rather than `axum::serve` so that every connection gets the
/// [`ConnectionLimits`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    limits: ConnectionLimits,
) -> std::io::Result<()> {
    let connections = TaskTracker::new();
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics::counter!("http_server_connections_refused_total").increment(1);
            tracing::debug!(%peer, "connection limit reached; connection closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(WriteStall::new(stream, limits.write_stall));
        let service = TowerToHyperService::new(router.clone());
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let connection = hyper::server::conn::http1::Builder::new()
                .max_buf_size(MAX_CONNECTION_BUFFER)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(io, service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.as_mut().await
                }
            };
            if let Err(e) = result {
                if Stalled::caused(&e) {
                    tracing::info!(%peer, error = %e, "client stopped reading; connection closed");
                    (limits.on_write_stall)();
                }
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// [`serve`] until `shutdown`, then waits at most `grace` for open connections to finish.
pub async fn serve_with_grace(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    grace: Duration,
    limits: ConnectionLimits,
) -> std::io::Result<()> {
    let server = serve(listener, router, shutdown.clone(), limits);
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "connections still open after the grace period; exiting");
            Ok(())
        }
    }
}

/// Adds the server span and the request metric to a service's API routes, then the JSON
/// 404/405 answers and the (untraced) operational routes.
pub fn finish_router(router: Router, readiness: Readiness) -> Router {
    router
        .route_layer(axum::middleware::from_fn(trace_request))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz).with_state(readiness))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::route_not_found() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not accept that method",
            )
        })
}

/// A server span per API request (OpenTelemetry HTTP semantic conventions), a child of the
/// caller's `traceparent`, and `http_server_request_duration_seconds`.
async fn trace_request(
    matched: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use tracing::Instrument as _;
    let route = matched.map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = request.method().to_string();
    let span = tracing::info_span!(
        "http request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = %route,
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    crate::trace::adopt(&span, crate::trace::from_http(request.headers()));
    let started = std::time::Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    metrics::histogram!(
        "http_server_request_duration_seconds",
        "http_request_method" => method,
        "http_route" => route,
        "http_response_status_code" => status.to_string(),
    )
    .record(started.elapsed());
    response
}

async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

async fn readyz(axum::extract::State(readiness): axum::extract::State<Readiness>) -> Response {
    match readiness.check() {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(missing) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "missing": missing })),
        )
            .into_response(),
    }
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let with = |v: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            h
        };
        assert_eq!(bearer_token(&with("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&with("bearer abc ")), Some("abc"));
        assert_eq!(bearer_token(&with("BEARER abc")), Some("abc"));
        assert_eq!(bearer_token(&with("Basic abc")), None);
        assert_eq!(bearer_token(&with("Bearerabc")), None);
        assert_eq!(bearer_token(&axum::http::HeaderMap::new()), None);
    }

    /// The status line a raw HTTP/1.1 request with a `x-big` header of `size` bytes gets.
    async fn status_with_header_of(addr: SocketAddr, size: usize) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\nconnection: close\r\n\r\n",
            "a".repeat(size)
        );
        // The server may answer and close before it has read the whole request.
        let _ = socket.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = socket.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        answer.lines().next().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn a_request_head_over_the_connection_buffer_is_refused_with_431() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let router = Router::new().route("/healthz", get(healthz));
        let server = tokio::spawn(serve(
            listener,
            router,
            shutdown.clone(),
            ConnectionLimits::default(),
        ));
        let fits = status_with_header_of(addr, MAX_CONNECTION_BUFFER / 2).await;
        assert_eq!(fits, "HTTP/1.1 200 OK");
        let too_big = status_with_header_of(addr, MAX_CONNECTION_BUFFER * 2).await;
        assert_eq!(too_big, "HTTP/1.1 431 Request Header Fields Too Large");
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
