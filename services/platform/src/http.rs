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
use tower::ServiceExt as _;

use crate::client::{ConnectionsPerIp, RequestLimiter, TrustedProxies};
use crate::health::Readiness;
use crate::rate::Rate;
use crate::write_stall::{Stalled, WriteStall};

/// Pending connections the kernel queues: thousands of browsers reconnect at once after a
/// deploy, and the default of 128 would make most of them wait for a SYN retry.
pub const LISTEN_BACKLOG: u32 = 4096;

/// A path parameter as text (axum's `Path<String>`), whose refusal — a segment that is not
/// UTF-8 once percent-decoded, such as `/v1/sites/%80/events` — is the API's JSON
/// `400 invalid_path`, not axum's plain-text answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathParam(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| PathParam(value))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", e.body_text()))
    }
}

/// An error answer: `{"error": {"code": "...", "message": "..."}}`, with `Retry-After`
/// when the client should come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

/// Seconds a client is asked to wait after a `503 unavailable` (NATS unreachable or slow).
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 2;

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

    /// `503 unavailable` with `Retry-After` ([`UNAVAILABLE_RETRY_AFTER_SECS`]): NATS can't
    /// serve the request right now; the same request later will do.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            .with_retry_after(UNAVAILABLE_RETRY_AFTER_SECS)
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdminAuthError {
    /// No `SPOOL_ADMIN_TOKEN` is configured: the admin API is off.
    #[error("the admin API is disabled: set SPOOL_ADMIN_TOKEN to enable it")]
    Disabled,
    #[error("missing Authorization: Bearer <admin token>")]
    Missing,
    #[error("wrong admin token")]
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
            AdminAuthError::Disabled => {
                ApiError::new(StatusCode::FORBIDDEN, "admin_disabled", e.to_string())
            }
            AdminAuthError::Missing | AdminAuthError::Wrong => {
                ApiError::unauthorized(e.to_string())
            }
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
#[derive(Debug, Clone)]
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
    /// Open connections per socket peer address (IPv6: per /64) at most; one more is
    /// closed as soon as it is accepted. Trusted proxies are exempt.
    pub max_connections_per_ip: usize,
    /// Proxies whose `X-Forwarded-For` names the client (see [`crate::client`]).
    pub trusted_proxies: TrustedProxies,
    /// New API requests per client address: refused with `429` past this.
    pub requests_per_ip: Rate,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            write_stall: Duration::from_secs(30),
            on_write_stall: || {},
            header_timeout: Duration::from_secs(10),
            max_connections: 20_000,
            max_connections_per_ip: 512,
            trusted_proxies: TrustedProxies::default(),
            requests_per_ip: Rate::new(50, 200),
        }
    }
}

impl ConnectionLimits {
    /// The defaults with the shared settings (`SPOOL_HEADER_TIMEOUT`,
    /// `SPOOL_MAX_CONNECTIONS`, `SPOOL_MAX_CONNECTIONS_PER_IP`, `SPOOL_TRUSTED_PROXIES`,
    /// `SPOOL_REQUESTS_PER_IP_RATE` and `_BURST`).
    pub fn from_config(config: &crate::config::CommonConfig) -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: config.header_timeout,
            max_connections: config.max_connections,
            max_connections_per_ip: config.max_connections_per_ip,
            trusted_proxies: config.trusted_proxies.clone(),
            requests_per_ip: Rate::new(config.requests_per_ip_rate, config.requests_per_ip_burst),
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
/// [`ConnectionLimits`]. Each request carries its socket peer as
/// `ConnectInfo<SocketAddr>` and the server's [`RequestLimiter`] as extensions; the
/// middleware of [`finish_router`] limits API requests per client with them.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    limits: ConnectionLimits,
) -> std::io::Result<()> {
    let connections = TaskTracker::new();
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_ip = ConnectionsPerIp::new(limits.max_connections_per_ip);
    let requests = Arc::new(RequestLimiter::new(
        limits.trusted_proxies.clone(),
        limits.requests_per_ip,
    ));
    let (write_stall, on_write_stall, header_timeout) = (
        limits.write_stall,
        limits.on_write_stall,
        limits.header_timeout,
    );
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
            metrics::counter!("http_server_connections_refused_total", "reason" => "process")
                .increment(1);
            tracing::debug!(%peer, "connection limit reached; connection closed");
            drop(stream);
            continue;
        };
        // A trusted proxy carries many clients: its connections count only for the process.
        let per_ip_slot = if limits.trusted_proxies.contains(peer.ip()) {
            None
        } else {
            match per_ip.try_open(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    metrics::counter!("http_server_connections_refused_total", "reason" => "per_ip")
                        .increment(1);
                    tracing::debug!(%peer, "connection limit per address reached; connection closed");
                    drop(stream);
                    continue;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(WriteStall::new(stream, write_stall));
        let requests = requests.clone();
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                let extensions = request.extensions_mut();
                extensions.insert(axum::extract::ConnectInfo(peer));
                extensions.insert(requests.clone());
                request
            },
        ));
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permits = (permit, per_ip_slot);
            let connection = hyper::server::conn::http1::Builder::new()
                .max_buf_size(MAX_CONNECTION_BUFFER)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
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
                    on_write_stall();
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

/// Adds the limit of requests per client address, the server span and the request metric
/// to a service's API routes, then the JSON 404/405 answers and the (untraced, unlimited)
/// operational routes.
pub fn finish_router(router: Router, readiness: Readiness) -> Router {
    router
        .route_layer(axum::middleware::from_fn(limit_requests))
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

/// `429 rate_limited` with `Retry-After` when the request's client (see
/// [`crate::client::client_addr`]) has no request left in its bucket. A request served
/// without [`serve`] (no limiter among its extensions) is not limited.
///
/// An event-stream request (`Accept: text/event-stream`, as every `EventSource` sends) is
/// answered instead as the delivery answers transient trouble: `200` with only a
/// `retry:` of the wait, because a browser's `EventSource` gives up for good on any
/// other status, and being limited is not for good.
async fn limit_requests(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let limiter = request.extensions().get::<Arc<RequestLimiter>>();
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>();
    if let (Some(limiter), Some(axum::extract::ConnectInfo(peer))) = (limiter, peer) {
        let client = limiter.client(peer.ip(), request.headers());
        if let Err(wait) = limiter.check(client, std::time::Instant::now()) {
            metrics::counter!("http_server_requests_limited_total").increment(1);
            let secs = crate::rate::retry_after_secs(wait);
            tracing::debug!(%client, "request rate per address exceeded; answering 429");
            let response = if wants_event_stream(request.headers()) {
                (
                    [
                        (
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("text/event-stream"),
                        ),
                        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                        (header::RETRY_AFTER, HeaderValue::from(secs)),
                    ],
                    format!("retry: {}\n\n", secs.saturating_mul(1000)),
                )
                    .into_response()
            } else {
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("too many requests from this address: retry after {secs} s"),
                )
                .with_retry_after(secs)
                .into_response()
            };
            return readable_by_any_origin(response, request.headers());
        }
    }
    next.run(request).await
}

/// Lets the requesting page read a refusal that carries nothing of any site's (a browser's
/// `EventSource` that can't read its answer gives up for good; a `fetch` sees only a
/// network error): the services' own CORS rules are per site, and this answer comes before
/// the site is known.
fn readable_by_any_origin(mut response: Response, request: &axum::http::HeaderMap) -> Response {
    if let Some(origin) = request.get(header::ORIGIN) {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// The request asks for Server-Sent Events.
fn wants_event_stream(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/event-stream"))
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

    /// Serves `router` with `limits` on a loopback port.
    async fn start(
        router: Router,
        limits: ConnectionLimits,
    ) -> (
        SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, router, shutdown.clone(), limits));
        (addr, shutdown, server)
    }

    /// The whole answer to `GET path` with `headers` on a fresh connection.
    async fn get_raw(addr: SocketAddr, path: &str, headers: &str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request =
            format!("GET {path} HTTP/1.1\r\nhost: x\r\n{headers}connection: close\r\n\r\n");
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = socket.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// A router as [`finish_router`] builds it, without the readiness route.
    fn limited_router() -> Router {
        Router::new()
            .route("/api", get(|| async { "ok" }))
            .route_layer(axum::middleware::from_fn(limit_requests))
            .route("/healthz", get(healthz))
    }

    #[tokio::test]
    async fn api_requests_past_the_burst_get_429_with_retry_after() {
        let limits = ConnectionLimits {
            requests_per_ip: Rate::new(1, 2),
            ..ConnectionLimits::default()
        };
        let (addr, shutdown, server) = start(limited_router(), limits).await;
        assert!(get_raw(addr, "/api", "").await.starts_with("HTTP/1.1 200"));
        assert!(get_raw(addr, "/api", "").await.starts_with("HTTP/1.1 200"));
        let refused = get_raw(addr, "/api", "").await;
        assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
        assert!(refused.contains("retry-after: 1\r\n"), "{refused}");
        assert!(refused.contains(r#""code":"rate_limited""#), "{refused}");
        // A forwarded address from an untrusted peer changes nothing.
        let spoofed = get_raw(addr, "/api", "x-forwarded-for: 9.9.9.9\r\n").await;
        assert!(spoofed.starts_with("HTTP/1.1 429"), "{spoofed}");
        // An EventSource is told to come back (it gives up for good on a 4xx).
        let stream = get_raw(addr, "/api", "accept: text/event-stream\r\n").await;
        assert!(stream.starts_with("HTTP/1.1 200"), "{stream}");
        assert!(
            stream.contains("content-type: text/event-stream"),
            "{stream}"
        );
        assert!(stream.contains("retry-after: 1\r\n"), "{stream}");
        assert!(stream.ends_with("\r\n\r\nretry: 1000\n\n"), "{stream}");
        // The operational routes are not limited.
        for _ in 0..5 {
            assert!(get_raw(addr, "/healthz", "")
                .await
                .starts_with("HTTP/1.1 200"));
        }
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() {
        let limits = ConnectionLimits {
            requests_per_ip: Rate::new(1, 1),
            trusted_proxies: "127.0.0.1/32".parse().unwrap(),
            ..ConnectionLimits::default()
        };
        let (addr, shutdown, server) = start(limited_router(), limits).await;
        let alice = "x-forwarded-for: 203.0.113.1\r\n";
        let bob = "x-forwarded-for: 6.6.6.6, 203.0.113.2\r\n";
        assert!(get_raw(addr, "/api", alice)
            .await
            .starts_with("HTTP/1.1 200"));
        assert!(get_raw(addr, "/api", alice)
            .await
            .starts_with("HTTP/1.1 429"));
        assert!(get_raw(addr, "/api", bob).await.starts_with("HTTP/1.1 200"));
        assert!(get_raw(addr, "/api", bob).await.starts_with("HTTP/1.1 429"));
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }

    /// Opens a connection and sends a request on it: `Some(stream)` if it was answered
    /// (kept open), `None` if the server closed it unanswered.
    async fn hold(addr: SocketAddr) -> Option<tokio::net::TcpStream> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = socket
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => Some(socket),
            Ok(_) => None,
            Err(_) => panic!("neither answered nor closed within 5 s"),
        }
    }

    #[tokio::test]
    async fn connections_per_address_are_capped_unless_the_peer_is_a_trusted_proxy() {
        let limits = ConnectionLimits {
            max_connections_per_ip: 2,
            ..ConnectionLimits::default()
        };
        let (addr, shutdown, server) = start(limited_router(), limits).await;
        let first = hold(addr).await.expect("first served");
        let _second = hold(addr).await.expect("second served");
        assert!(hold(addr).await.is_none(), "a third connection was served");
        drop(first);
        // Served again once the server has seen the first one close.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let _third = loop {
            if let Some(stream) = hold(addr).await {
                break stream;
            }
            assert!(std::time::Instant::now() < deadline, "never served again");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        shutdown.cancel();
        server.await.unwrap().unwrap();

        let limits = ConnectionLimits {
            max_connections_per_ip: 2,
            trusted_proxies: "127.0.0.0/8".parse().unwrap(),
            ..ConnectionLimits::default()
        };
        let (addr, shutdown, server) = start(limited_router(), limits).await;
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(
                hold(addr)
                    .await
                    .expect("a trusted proxy's connection served"),
            );
        }
        drop(held);
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
