//! `GET /v1/sites/{site}/events?since=&limit=&wait=`: the poll and long-poll fallback.
//! The page is assembled from the events' pre-encoded JSON.

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use spool_platform::http::PathParam;
use spool_proto::Site;
use tokio::sync::broadcast;

use super::access::{self, with_cors};
use super::params::Params;
use super::{AppState, OpenConnection};
use crate::catchup::{catch_up, CatchUp};
use crate::error::DeliveryError;
use crate::history::HistoryError;
use crate::hub::Live;
use crate::window::Filter;

pub async fn poll(
    State(state): State<AppState>,
    PathParam(site): PathParam,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let params = Params::parse(query.as_deref());
    let site = match access::site(&state, site) {
        Ok(site) => site,
        Err(e) => {
            let e = access::hide_unknown(e, &headers, &params);
            return with_cors(e.into_response(), None);
        }
    };
    let origin = access::allowed_origin(&site, &headers);
    let response = match answer(&state, &site, &headers, &params).await {
        Ok(page) => page,
        Err(e) => e.into_response(),
    };
    with_cors(response, origin)
}

async fn answer(
    state: &AppState,
    site: &Site,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Response, DeliveryError> {
    let reader = access::authorize(state, site, headers, params).await?;
    let since = params.since()?;
    let limit = params.limit()?;
    let wait = params.wait()?;
    let filter = reader.filter(site, params)?;
    if !state.hub.is_ready() {
        return Err(DeliveryError::Unavailable(
            "the event feed is starting".into(),
        ));
    }
    let _open = OpenConnection::new("poll");
    let Some(since) = since else {
        // No cursor: nothing yet, and where "now" is.
        return Ok(page(
            &CatchUp {
                reset: None,
                events: Vec::new(),
                cursor: state.hub.released_end(&filter.site),
                complete: true,
            },
            filter.preview,
        ));
    };
    // Subscribed before looking, so an event landing in between wakes the wait.
    let mut live = (!wait.is_zero()).then(|| state.hub.subscribe(&filter.site));
    let refused = |e| history_refusal(state, e);
    let mut found = catch_up(&state.hub, &state.history, &filter, since, limit)
        .await
        .map_err(refused)?;
    if let Some(live) = live.as_mut() {
        if found.events.is_empty()
            && found.reset.is_none()
            && found.complete
            && wait_for(state, live, &filter, found.cursor, wait).await
        {
            found = catch_up(&state.hub, &state.history, &filter, found.cursor, limit)
                .await
                .map_err(refused)?;
        }
    }
    metrics::counter!("spool_delivery_events_delivered_total", "kind" => "poll")
        .increment(found.events.len() as u64);
    Ok(page(&found, filter.preview))
}

/// A history read that failed or was turned away, as the poll's answer.
fn history_refusal(state: &AppState, error: HistoryError) -> DeliveryError {
    match error {
        HistoryError::Busy => DeliveryError::Busy(state.settings.busy_retry),
        HistoryError::Failed(e) => DeliveryError::Unavailable(e),
    }
}

/// Waits until an event the filter wants arrives after `since`; false on timeout or shutdown.
async fn wait_for(
    state: &AppState,
    live: &mut crate::hub::Subscription,
    filter: &Filter,
    since: u64,
    wait: Duration,
) -> bool {
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            received = live.events.recv() => match received {
                Ok(Live::Event(event)) if event.seq > since && filter.matches(&event) => return true,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return true,
                Err(broadcast::error::RecvError::Closed) => return false,
            },
            _ = &mut deadline => return false,
            _ = state.platform.shutdown.cancelled() => return false,
        }
    }
}

/// `{"events": [...], "next": N, "reset": null | {...}}`.
fn page(found: &CatchUp, preview: bool) -> Response {
    let mut body = BytesMut::with_capacity(
        64 + found
            .events
            .iter()
            .map(|e| e.json(preview).len() + 1)
            .sum::<usize>(),
    );
    body.put_slice(b"{\"events\":[");
    for (i, event) in found.events.iter().enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        body.put_slice(&event.json(preview));
    }
    let reset = serde_json::to_string(&found.reset).unwrap_or_else(|_| "null".into());
    body.put_slice(format!("],\"next\":{},\"reset\":{reset}}}", found.cursor).as_bytes());
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        Bytes::from(body),
    )
        .into_response()
}
