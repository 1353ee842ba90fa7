//! The delivery's HTTP routes. [`ROUTES`] lists them for the OpenAPI check.

mod access;
pub mod params;
mod poll;
mod sse;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::Method;
use axum::routing::get;
use axum::Router;
use spool_platform::Platform;

use crate::history::History;
use crate::hub::Hub;
use crate::jwks::JwksCache;

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

/// How readers are paced: the SSE sessions' heartbeat, `retry:` and life, and what a reader
/// turned away is asked to wait (SSE and poll).
#[derive(Debug, Clone)]
pub struct ReadSettings {
    pub heartbeat: Duration,
    pub retry: Duration,
    /// How long a reader turned away by the history-read limits is asked to wait.
    pub busy_retry: Duration,
    /// Longest life of one stream (each is drawn between 3/4 of this and this).
    pub max_lifetime: Duration,
}

#[derive(Clone)]
pub struct AppState {
    pub platform: Platform,
    pub hub: Arc<Hub>,
    pub history: History,
    pub settings: Arc<ReadSettings>,
    pub streams: Arc<SiteStreams>,
    /// The sites' JWKS, for asymmetric subscriber tokens.
    pub jwks: Arc<JwksCache>,
}

/// Open SSE streams per site, capped: one site can't take every connection of the process.
#[derive(Debug)]
pub struct SiteStreams {
    cap: usize,
    open: Mutex<HashMap<String, usize>>,
}

impl SiteStreams {
    pub fn new(cap: usize) -> SiteStreams {
        SiteStreams {
            cap: cap.max(1),
            open: Mutex::default(),
        }
    }

    /// A place for one more stream of `site`, held until dropped; `None` at the cap.
    pub(crate) fn open(self: &Arc<Self>, site: &str) -> Option<SiteStream> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(site.to_owned()).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(SiteStream {
            streams: self.clone(),
            site: site.to_owned(),
        })
    }
}

/// One open stream's place in [`SiteStreams`].
pub(crate) struct SiteStream {
    streams: Arc<SiteStreams>,
    site: String,
}

impl Drop for SiteStream {
    fn drop(&mut self) {
        let mut open = self
            .streams
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.site) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.site);
            }
        }
    }
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
