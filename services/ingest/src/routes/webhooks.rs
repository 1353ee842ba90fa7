//! `POST /v1/sites/{site}/webhooks`: verify, validate, map, publish, and answer only once
//! JetStream acknowledged the write.

use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use spool_platform::http::PathParam;
use spool_platform::rate::retry_after_secs;
use spool_platform::registry::Lookup;
use spool_proto::signing::{SigningKey, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use spool_proto::{mapping, SiteId, WebhookPayload};
use time::OffsetDateTime;

use super::{read_body, require_json, AppState};
use crate::error::IngestError;
use crate::publish::PublishError;

/// Largest accepted webhook body.
pub const MAX_BODY: usize = 256 * 1024;

const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

pub async fn receive(
    State(state): State<AppState>,
    PathParam(site): PathParam,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let started = Instant::now();
    let (outcome, response) = match handle(&state, site, &headers, body).await {
        Ok((status, answer)) => {
            let outcome = if answer["duplicate"] == true {
                "duplicate"
            } else {
                "accepted"
            };
            (outcome, (status, Json(answer)).into_response())
        }
        Err(e) => (e.outcome(), e.into_response()),
    };
    metrics::counter!("spool_ingest_webhooks_total", "outcome" => outcome).increment(1);
    metrics::histogram!("spool_ingest_webhook_duration_seconds", "outcome" => outcome)
        .record(started.elapsed());
    response
}

async fn handle(
    state: &AppState,
    site: String,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, serde_json::Value), IngestError> {
    let site_id = SiteId::parse(site).map_err(IngestError::InvalidSiteId)?;
    let platform = &state.platform;
    let site = match platform.registry.lookup(site_id.as_str()) {
        Lookup::Found(site) => site,
        Lookup::Loading => return Err(IngestError::RegistryLoading),
        Lookup::Unknown => return Err(IngestError::UnknownSite(site_id.to_string())),
    };
    require_json(headers)?;
    let body = read_body(headers, body, MAX_BODY, state.body_timeout).await?;

    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let key = SigningKey::from_secret(&site.webhook_secret).map_err(|e| {
        IngestError::Unavailable(format!(
            "site {} has an unusable webhook_secret: {e}",
            site.id
        ))
    })?;
    let now = OffsetDateTime::now_utc();
    let tolerance = i64::try_from(state.webhook_tolerance.as_secs()).unwrap_or(i64::MAX);
    key.verify(
        header(ID_HEADER),
        header(TIMESTAMP_HEADER),
        header(SIGNATURE_HEADER),
        &body,
        now.unix_timestamp(),
        tolerance,
    )
    .map_err(|e| IngestError::Unauthorized(e.to_string()))?;
    // Signed by the site's secret: now, and only now, the webhook counts against the
    // site's rate (an unsigned flood must not spend it).
    if let Err(wait) = state.webhook_limits.check(site.id.as_str(), Instant::now()) {
        metrics::counter!("spool_ingest_webhooks_limited_total", "site" => site.id.to_string())
            .increment(1);
        return Err(IngestError::RateLimited {
            site: site.id.to_string(),
            retry_after_secs: retry_after_secs(wait),
        });
    }
    // Verified, so the id header is present and well-formed.
    let webhook_id = header(ID_HEADER).unwrap_or_default().to_owned();

    let payload =
        WebhookPayload::parse(&body).map_err(|e| IngestError::InvalidBody(e.to_string()))?;
    let received_at = now
        .replace_nanosecond(now.millisecond() as u32 * 1_000_000)
        .unwrap_or(now);
    let event = mapping::to_event(&site, &webhook_id, payload, received_at);
    let trace: Vec<(&'static str, String)> = TRACE_HEADERS
        .iter()
        .filter_map(|name| header(name).map(|v| (*name, v.to_owned())))
        .collect();

    let published = state
        .publisher
        .publish(&event, &trace)
        .await
        .map_err(|e| match e {
            PublishError::Nats(ref inner)
                if inner.kind()
                    == async_nats::jetstream::context::PublishErrorKind::MaxPayloadExceeded =>
            {
                IngestError::TooLarge { limit: MAX_BODY }
            }
            other => IngestError::Unavailable(other.to_string()),
        })?;
    let status = if published.duplicate {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    tracing::debug!(site = %event.site, id = %webhook_id, seq = published.seq, duplicate = published.duplicate, "webhook stored");
    Ok((
        status,
        json!({ "id": webhook_id, "seq": published.seq, "duplicate": published.duplicate }),
    ))
}
