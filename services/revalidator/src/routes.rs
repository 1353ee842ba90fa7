//! The revalidator's HTTP surface: health and metrics (every service's), and the
//! dead-letter admin API behind `SPOOL_ADMIN_TOKEN`:
//! `GET /v1/admin/dlq[?site=&limit=]`, `POST /v1/admin/dlq/{seq}/replay`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use spool_platform::config::Secret;
use spool_platform::http::check_admin;
use spool_platform::http::PathParam;
use spool_platform::Platform;
use spool_proto::SiteId;

use crate::dlq;
use crate::error::RevalidatorError;
use crate::retry::Outcome;
use crate::worker::Worker;

pub const DLQ: &str = "/v1/admin/dlq";
pub const DLQ_REPLAY: &str = "/v1/admin/dlq/{seq}/replay";

/// Every route the revalidator serves, as (method, path template).
pub const ROUTES: &[(Method, &str)] = &[
    (Method::GET, DLQ),
    (Method::POST, DLQ_REPLAY),
    (Method::GET, "/healthz"),
    (Method::GET, "/readyz"),
    (Method::GET, "/metrics"),
];

#[derive(Clone)]
pub struct AppState {
    pub platform: Platform,
    pub worker: Arc<Worker>,
    pub admin_token: Option<Arc<Secret>>,
}

pub fn router(state: AppState) -> Router {
    let readiness = state.platform.readiness.clone();
    let api = Router::new()
        .route(DLQ, get(list))
        .route(DLQ_REPLAY, post(replay))
        .with_state(state);
    spool_platform::http::finish_router(api, readiness)
}

fn bad_parameter(message: String) -> RevalidatorError {
    RevalidatorError::BadParameter(message)
}

/// Parameters are read after the admin check, and every bad one is a JSON 400.
async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, RevalidatorError> {
    check_admin(state.admin_token.as_deref(), &headers)?;
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let site = param("site")
        .map(SiteId::parse)
        .transpose()
        .map_err(|e| bad_parameter(format!("site: {e}")))?;
    let limit = match param("limit") {
        None => 100,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                bad_parameter(format!(
                    "limit: {raw:?} is not a whole number from 1 to 1000"
                ))
            })?,
    };
    let records = dlq::list(&state.platform.client, site.as_ref(), limit)
        .await
        .map_err(RevalidatorError::unavailable)?;
    Ok(Json(json!({ "dead_letters": records })).into_response())
}

/// Calls the record's target again, as configured now. Delivered: the record is removed
/// (200). Not delivered: it stays, and the answer says why (502).
async fn replay(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParam(seq): PathParam,
) -> Result<Response, RevalidatorError> {
    check_admin(state.admin_token.as_deref(), &headers)?;
    // Sequences start at 1: JetStream refuses a read of 0 (found by the contract test: it
    // was a 503).
    let seq: u64 = seq.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
        bad_parameter(format!(
            "seq: {seq:?} is not a dead-letter sequence number (a whole number from 1)"
        ))
    })?;
    let js = &state.platform.jetstream;
    let stored = dlq::get(js, seq)
        .await
        .map_err(RevalidatorError::unavailable)?
        .ok_or(RevalidatorError::UnknownDeadLetter(seq))?;
    let record = stored.record;
    let target = state
        .platform
        .registry
        .get(record.site.as_str())
        .and_then(|site| {
            site.revalidate
                .iter()
                .find(|t| record.is_for(&t.url))
                .cloned()
        })
        .ok_or_else(|| RevalidatorError::TargetGone {
            site: record.site.to_string(),
            url: record.url.clone(),
        })?;
    let result = state.worker.replay(&target, &record.event).await;
    if result.outcome == Outcome::Delivered {
        dlq::remove(js, seq)
            .await
            .map_err(RevalidatorError::unavailable)?;
        return Ok(Json(json!({ "replayed": true, "status": result.status })).into_response());
    }
    Err(RevalidatorError::ReplayFailed(result.error.unwrap_or_else(
        || "the target did not accept the call".into(),
    )))
}
