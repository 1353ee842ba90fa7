//! Every way a webhook or admin call can fail, and the one place each becomes an HTTP answer.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use spool_platform::http::{AdminAuthError, ApiError};
use spool_platform::registry::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    InvalidSiteId(spool_proto::InvalidName),
    #[error("unknown site {0:?}")]
    UnknownSite(String),
    #[error("the site registry is still loading")]
    RegistryLoading,
    #[error("{0}")]
    Unauthorized(String),
    /// An admin call without the admin token (the answers are the platform's).
    #[error("{0}")]
    Admin(AdminAuthError),
    #[error("body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the body did not arrive in full within {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("Content-Type must be application/json")]
    NotJson,
    #[error("{0}")]
    InvalidBody(String),
    /// The site sent more signed webhooks than `SPOOL_WEBHOOK_RATE` / `_BURST` allow.
    #[error("site {site:?} is over its webhook rate: retry after {retry_after_secs} s with the same webhook-id")]
    RateLimited { site: String, retry_after_secs: u64 },
    /// JetStream did not acknowledge the write (unreachable, timed out, refused).
    #[error("the event stream can't be written right now: {0}")]
    Unavailable(String),
}

impl IngestError {
    /// The label of the `outcome` metric: bounded, one per variant.
    pub fn outcome(&self) -> &'static str {
        match self {
            IngestError::InvalidSiteId(_) | IngestError::InvalidBody(_) => "bad_request",
            IngestError::UnknownSite(_) => "unknown_site",
            IngestError::Unauthorized(_) | IngestError::Admin(_) => "unauthorized",
            IngestError::TooLarge { .. } => "too_large",
            IngestError::BodyTimeout(_) => "body_timeout",
            IngestError::NotJson => "unsupported_media_type",
            IngestError::RateLimited { .. } => "rate_limited",
            IngestError::RegistryLoading | IngestError::Unavailable(_) => "unavailable",
        }
    }

    fn to_api_error(&self) -> ApiError {
        let message = self.to_string();
        match self {
            IngestError::InvalidSiteId(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_site_id", message)
            }
            IngestError::InvalidBody(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", message)
            }
            IngestError::UnknownSite(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_site", message)
            }
            IngestError::Unauthorized(_) => ApiError::unauthorized(message),
            IngestError::Admin(e) => ApiError::from(*e),
            IngestError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
            }
            IngestError::BodyTimeout(_) => {
                ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", message)
            }
            IngestError::NotJson => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                message,
            ),
            IngestError::RateLimited {
                retry_after_secs, ..
            } => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
                .with_retry_after(*retry_after_secs),
            IngestError::RegistryLoading | IngestError::Unavailable(_) => {
                ApiError::unavailable(message)
            }
        }
    }
}

impl From<StoreError> for IngestError {
    fn from(e: StoreError) -> Self {
        IngestError::Unavailable(e.to_string())
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        if let IngestError::Unavailable(reason) = &self {
            tracing::warn!(%reason, "answering 503");
        }
        self.to_api_error().into_response()
    }
}
