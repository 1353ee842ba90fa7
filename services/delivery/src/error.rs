//! Every way a read can be refused, and the one place each becomes an HTTP answer.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use spool_platform::http::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("{0}")]
    InvalidSiteId(spool_proto::InvalidName),
    #[error("unknown site {0:?}")]
    UnknownSite(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A subscriber token that can't be used, and why.
    #[error("{0}")]
    TokenRefused(crate::subscriber::Refusal),
    /// The credentials are good but don't allow this (a token's scope or collections).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadParameter(String),
    #[error("origin {0:?} is not in the site's cors_origins")]
    OriginNotAllowed(String),
    /// Too many history reads in progress: come back after this long.
    #[error("too many history reads in progress; retry later")]
    Busy(std::time::Duration),
    /// Retrying will help: NATS unreachable, the registry or the feed still loading,
    /// shutting down.
    #[error("{0}")]
    Unavailable(String),
}

impl DeliveryError {
    /// Will the same request succeed later? (SSE answers those 200 + `retry:`, because a
    /// browser's EventSource gives up for good on any other status.)
    pub fn is_transient(&self) -> bool {
        matches!(self, DeliveryError::Unavailable(_) | DeliveryError::Busy(_))
    }
}

impl IntoResponse for DeliveryError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let error = match self {
            DeliveryError::InvalidSiteId(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_site_id", message)
            }
            DeliveryError::BadParameter(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", message)
            }
            DeliveryError::UnknownSite(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_site", message)
            }
            DeliveryError::Unauthorized(_) => ApiError::unauthorized(message),
            DeliveryError::TokenRefused(refusal) => {
                use crate::subscriber::Refusal;
                let code = match refusal {
                    Refusal::Expired => "token_expired",
                    _ => "token_invalid",
                };
                ApiError::new(StatusCode::UNAUTHORIZED, code, message)
            }
            DeliveryError::Forbidden(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
            }
            DeliveryError::OriginNotAllowed(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "origin_not_allowed", message)
            }
            DeliveryError::Busy(after) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "busy", message)
                    .with_retry_after(after.as_secs().max(1))
            }
            DeliveryError::Unavailable(_) => ApiError::unavailable(message),
        };
        error.into_response()
    }
}
