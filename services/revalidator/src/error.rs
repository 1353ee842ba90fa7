//! Every way an admin call of the revalidator can fail, and the one place each becomes an
//! HTTP answer.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use spool_platform::http::{AdminAuthError, ApiError};

#[derive(Debug, thiserror::Error)]
pub enum RevalidatorError {
    #[error(transparent)]
    Admin(#[from] AdminAuthError),
    #[error("{0}")]
    BadParameter(String),
    #[error("no dead letter {0}")]
    UnknownDeadLetter(u64),
    #[error("site {site} no longer has the target {url}")]
    TargetGone { site: String, url: String },
    #[error("{0}")]
    ReplayFailed(String),
    /// JetStream could not be read or written (unreachable, timed out, refused).
    #[error("the dead letters can't be read right now: {0}")]
    Unavailable(String),
}

impl RevalidatorError {
    pub fn unavailable(e: anyhow::Error) -> RevalidatorError {
        RevalidatorError::Unavailable(format!("{e:#}"))
    }

    fn to_api_error(&self) -> ApiError {
        let message = self.to_string();
        match self {
            RevalidatorError::Admin(e) => ApiError::from(*e),
            RevalidatorError::BadParameter(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", message)
            }
            RevalidatorError::UnknownDeadLetter(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_dead_letter", message)
            }
            RevalidatorError::TargetGone { .. } => {
                ApiError::new(StatusCode::CONFLICT, "target_gone", message)
            }
            RevalidatorError::ReplayFailed(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "replay_failed", message)
            }
            RevalidatorError::Unavailable(_) => ApiError::unavailable(message),
        }
    }
}

impl IntoResponse for RevalidatorError {
    fn into_response(self) -> Response {
        self.to_api_error().into_response()
    }
}
