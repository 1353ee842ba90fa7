//! The admin API: `PUT/GET/DELETE /v1/admin/sites/{site}` and `GET /v1/admin/sites`,
//! behind `Authorization: Bearer $SPOOL_ADMIN_TOKEN`. Secrets are never echoed in full.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use spool_platform::http::{check_admin, PathParam};
use spool_proto::site::REDACTED_MARK;
use spool_proto::{Site, SiteId};

use super::{read_body, require_json, AppState};
use crate::error::IngestError;

/// Largest accepted site document.
pub const MAX_SITE_BODY: usize = 1024 * 1024;

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), IngestError> {
    check_admin(state.admin_token.as_deref(), headers).map_err(IngestError::Admin)
}

fn parse_id(site: String) -> Result<SiteId, IngestError> {
    SiteId::parse(site).map_err(IngestError::InvalidSiteId)
}

pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, IngestError> {
    authorize(&state, &headers)?;
    let sites: Vec<Site> = state
        .platform
        .registry
        .list()
        .iter()
        .map(|s| s.redacted())
        .collect();
    Ok(Json(json!({ "sites": sites })).into_response())
}

pub async fn get(
    State(state): State<AppState>,
    PathParam(site): PathParam,
    headers: HeaderMap,
) -> Result<Response, IngestError> {
    authorize(&state, &headers)?;
    let id = parse_id(site)?;
    let site = state
        .platform
        .registry
        .get(id.as_str())
        .ok_or_else(|| IngestError::UnknownSite(id.to_string()))?;
    Ok(Json(site.redacted()).into_response())
}

/// Creates (201) or replaces (200) a site. The body is the site JSON; `id` may be left out
/// and must otherwise equal the path's.
pub async fn put(
    State(state): State<AppState>,
    PathParam(site): PathParam,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, IngestError> {
    authorize(&state, &headers)?;
    let id = parse_id(site)?;
    require_json(&headers)?;
    let body = read_body(&headers, body, MAX_SITE_BODY, state.body_timeout).await?;
    let mut value: Value = serde_json::from_slice(&body)
        .map_err(|e| IngestError::InvalidBody(format!("invalid site JSON: {e}")))?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| IngestError::InvalidBody("the site must be a JSON object".into()))?;
    match object.get("id") {
        None => {
            object.insert("id".into(), Value::String(id.to_string()));
        }
        Some(Value::String(body_id)) if body_id == id.as_str() => {}
        Some(other) => {
            return Err(IngestError::InvalidBody(format!(
                "id {other} in the body differs from {id:?} in the path"
            )))
        }
    }
    let site: Site = serde_json::from_value(value)
        .map_err(|e| IngestError::InvalidBody(format!("invalid site: {e}")))?;
    // Checked first: the stubs GET shows would otherwise be reported as malformed secrets.
    if site.has_redacted_secret() {
        return Err(IngestError::InvalidBody(format!(
            "a secret holds the redaction mark {REDACTED_MARK:?}: send the real secrets, not the values GET shows"
        )));
    }
    site.validate()
        .map_err(|e| IngestError::InvalidBody(e.to_string()))?;
    let created = state
        .platform
        .registry
        .store(state.platform.sites_bucket(), &site)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(site.redacted())).into_response())
}

pub async fn delete(
    State(state): State<AppState>,
    PathParam(site): PathParam,
    headers: HeaderMap,
) -> Result<Response, IngestError> {
    authorize(&state, &headers)?;
    let id = parse_id(site)?;
    let existed = state
        .platform
        .registry
        .remove(state.platform.sites_bucket(), &id)
        .await?;
    if existed {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(IngestError::UnknownSite(id.to_string()))
    }
}
