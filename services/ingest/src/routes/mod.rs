//! The ingest's HTTP routes. [`ROUTES`] lists them for the OpenAPI check.

mod admin;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, Method};
use axum::routing::{get, post};
use axum::Router;
use spool_platform::config::Secret;
use spool_platform::Platform;

use crate::error::IngestError;
use crate::limits::SiteLimits;
use crate::publish::Publisher;

pub const WEBHOOKS: &str = "/v1/sites/{site}/webhooks";
pub const ADMIN_SITES: &str = "/v1/admin/sites";
pub const ADMIN_SITE: &str = "/v1/admin/sites/{site}";

/// Every route the ingest serves, as (method, path template).
pub const ROUTES: &[(Method, &str)] = &[
    (Method::POST, WEBHOOKS),
    (Method::GET, ADMIN_SITES),
    (Method::PUT, ADMIN_SITE),
    (Method::GET, ADMIN_SITE),
    (Method::DELETE, ADMIN_SITE),
    (Method::GET, "/healthz"),
    (Method::GET, "/readyz"),
    (Method::GET, "/metrics"),
];

#[derive(Clone)]
pub struct AppState {
    pub platform: Platform,
    pub publisher: Publisher,
    pub admin_token: Option<Arc<Secret>>,
    pub webhook_tolerance: Duration,
    /// Longest time a request body may take to arrive (`SPOOL_BODY_TIMEOUT`).
    pub body_timeout: Duration,
    /// The webhook rate per site, spent after the signature check.
    pub webhook_limits: Arc<SiteLimits>,
}

pub fn router(state: AppState) -> Router {
    let readiness = state.platform.readiness.clone();
    let api = Router::new()
        .route(WEBHOOKS, post(webhooks::receive))
        .route(ADMIN_SITES, get(admin::list))
        .route(
            ADMIN_SITE,
            get(admin::get).put(admin::put).delete(admin::delete),
        )
        .with_state(state);
    spool_platform::http::finish_router(api, readiness)
}

/// `Content-Type: application/json` (or any `+json` type), parameters allowed.
fn require_json(headers: &HeaderMap) -> Result<(), IngestError> {
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match essence.as_deref() {
        Some(t)
            if t == "application/json"
                || (t.starts_with("application/") && t.ends_with("+json")) =>
        {
            Ok(())
        }
        _ => Err(IngestError::NotJson),
    }
}

/// Reads a body of at most `limit` bytes; a declared or actual larger one is a 413.
async fn read_body(
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
    deadline: Duration,
) -> Result<bytes::Bytes, IngestError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(IngestError::TooLarge { limit });
    }
    let read = tokio::time::timeout(deadline, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| IngestError::BodyTimeout(deadline))?;
    read.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            IngestError::TooLarge { limit }
        } else {
            IngestError::InvalidBody(format!("the body could not be read: {e}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::HeaderValue;

    fn with(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/cloudevents+json",
        ] {
            assert!(
                require_json(&with(header::CONTENT_TYPE, ok)).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "json",
            "",
        ] {
            assert!(
                matches!(
                    require_json(&with(header::CONTENT_TYPE, bad)),
                    Err(IngestError::NotJson)
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            require_json(&HeaderMap::new()),
            Err(IngestError::NotJson)
        ));
    }

    #[tokio::test]
    async fn bodies_are_limited_by_declared_and_actual_size() {
        let ok = read_body(
            &HeaderMap::new(),
            Body::from("12345"),
            5,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(&ok[..], b"12345");
        // Declared too large: refused before reading.
        let declared = with(header::CONTENT_LENGTH, "6");
        assert!(matches!(
            read_body(&declared, Body::from("1"), 5, Duration::from_secs(1)).await,
            Err(IngestError::TooLarge { limit: 5 })
        ));
        // Streamed without a length and too large.
        let chunks = futures::stream::iter(["123", "456"].map(Ok::<_, std::io::Error>));
        let streamed = Body::from_stream(chunks);
        assert!(matches!(
            read_body(&HeaderMap::new(), streamed, 5, Duration::from_secs(1)).await,
            Err(IngestError::TooLarge { limit: 5 })
        ));
    }
}
