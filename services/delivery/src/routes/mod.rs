//! The delivery's HTTP routes. [`ROUTES`] lists them for the OpenAPI check.

mod access;
pub mod params;
mod poll;
mod sse;

use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use axum::routing::get;
use axum::Router;
use spool_platform::Platform;

use crate::history::History;
use crate::hub::Hub;

pub const STREAM: &str = "/v1/sites/{site}/events/stream";
pub const POLL: &str = "/v1/sites/{site}/events";

/// Every route the delivery serves, as (method, path template).
pub const ROUTES: &[(Method, &str)] = &[
    (Method::GET, STREAM),
    (Method::OPTIONS, STREAM),
    (Method::GET, POLL),
    (Method::OPTIONS, POLL),
    (Method::GET, "/healthz"),
    (Method::GET, "/readyz"),
    (Method::GET, "/metrics"),
];

/// Settings of the SSE sessions.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub heartbeat: Duration,
    pub retry: Duration,
}

#[derive(Clone)]
pub struct AppState {
    pub platform: Platform,
    pub hub: Arc<Hub>,
    pub history: History,
    pub settings: Arc<StreamSettings>,
}

pub fn router(state: AppState) -> Router {
    let readiness = state.platform.readiness.clone();
    let api = Router::new()
        .route(STREAM, get(sse::stream).options(access::preflight))
        .route(POLL, get(poll::poll).options(access::preflight))
        .with_state(state);
    spool_platform::http::finish_router(api, readiness)
}

/// Counts an open connection of a kind (`sse`, `poll`) while alive.
pub(crate) struct OpenConnection(&'static str);

impl OpenConnection {
    pub(crate) fn new(kind: &'static str) -> OpenConnection {
        metrics::gauge!("spool_delivery_open_connections", "kind" => kind).increment(1.0);
        OpenConnection(kind)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!("spool_delivery_open_connections", "kind" => self.0).decrement(1.0);
    }
}
