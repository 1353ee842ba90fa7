//! `GET /v1/sites/{site}/events/stream`: Server-Sent Events. One task per client pumps
//! frames into a small queue the response body drains; a client whose queue stays full is
//! disconnected (it resumes from its last id), so no client makes the server buffer more
//! than its queue.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use futures::StreamExt;
use spool_platform::http::ConnectionClose;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::access::{self, with_cors};
use super::params::{stream_cursor, Params};
use super::{AppState, OpenConnection};
use crate::catchup::catch_up;
use crate::error::DeliveryError;
use crate::frames;
use crate::window::Filter;

/// Events read per catch-up step (window or JetStream).
const PAGE: usize = 1000;

pub async fn stream(
    State(state): State<AppState>,
    Path(site): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    close: Option<Extension<ConnectionClose>>,
) -> Response {
    let params = Params::parse(query.as_deref());
    let site = match access::site(&state, site) {
        Ok(site) => site,
        Err(e) => return refuse(&state, e, None),
    };
    let origin = access::allowed_origin(&site, &headers);
    let start = access::authorize(&site, &headers, &params).and_then(|()| {
        let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
        let cursor = stream_cursor(&params, last_event_id)?;
        let filter = Filter {
            site: site.id.to_string(),
            collections: params.collections()?,
        };
        if !state.hub.is_ready() {
            return Err(DeliveryError::Unavailable(
                "the event feed is starting".into(),
            ));
        }
        if state.platform.shutdown.is_cancelled() {
            return Err(DeliveryError::Unavailable("shutting down".into()));
        }
        Ok((cursor, filter))
    });
    let (cursor, filter) = match start {
        Ok(start) => start,
        Err(e) => return refuse(&state, e, origin),
    };
    let (tx, rx) = mpsc::channel(state.settings.client_buffer.max(1));
    let session = Session {
        state,
        filter,
        tx,
        close: close.map(|Extension(c)| c),
    };
    tokio::spawn(session.run(cursor));
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<Bytes, Infallible>));
    with_cors(sse_response(body), origin)
}

fn sse_response(body: Body) -> Response {
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        body,
    )
        .into_response()
}

/// A browser's EventSource gives up for good on any status but 200: transient trouble is
/// answered 200 with a `retry:` hint and an immediate end, so it comes back later.
fn refuse(state: &AppState, error: DeliveryError, origin: Option<HeaderValue>) -> Response {
    let response = if error.is_transient() {
        tracing::debug!(reason = %error, "SSE request told to retry");
        let retry = frames::retry(millis(state.settings.retry));
        sse_response(Body::from(retry))
    } else {
        error.into_response()
    };
    with_cors(response, origin)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Why a session ended.
enum End {
    ClientGone,
    Slow,
    Shutdown,
    Failed(String),
}

struct Session {
    state: AppState,
    filter: Filter,
    tx: mpsc::Sender<Bytes>,
    close: Option<ConnectionClose>,
}

impl Session {
    async fn run(self, cursor: Option<u64>) {
        let _open = OpenConnection::new("sse");
        let Err(end) = self.serve(cursor).await;
        match end {
            End::ClientGone | End::Shutdown => {}
            End::Slow => {
                metrics::counter!("spool_delivery_slow_clients_dropped_total").increment(1);
                tracing::info!(site = %self.filter.site, "SSE client not keeping up; disconnected");
                if let Some(close) = &self.close {
                    close.close();
                }
            }
            End::Failed(reason) => {
                tracing::warn!(site = %self.filter.site, %reason, "SSE stream ended; the client will resume");
            }
        }
    }

    /// Sends until something ends the session; never returns `Ok`.
    async fn serve(&self, cursor: Option<u64>) -> Result<Infallible, End> {
        let settings = self.state.settings.clone();
        let mut live = self.state.hub.subscribe(&self.filter.site);
        self.send(frames::ready(millis(settings.retry), live.last_seq))
            .await?;
        let mut cursor = match cursor {
            Some(cursor) => self.catch_up(cursor).await?,
            None => live.last_seq,
        };
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + settings.heartbeat,
            settings.heartbeat,
        );
        let shutdown = self.state.platform.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Err(End::Shutdown),
                _ = self.tx.closed() => return Err(End::ClientGone),
                received = live.events.recv() => match received {
                    Ok(event) => {
                        // Skips what the catch-up already sent.
                        if event.seq > cursor && self.filter.matches(&event) {
                            self.send_event(event.frame()).await?;
                            cursor = event.seq;
                        }
                    }
                    // Fell behind the site's channel: fetch what was missed, then go on.
                    Err(broadcast::error::RecvError::Lagged(_)) => cursor = self.catch_up(cursor).await?,
                    Err(broadcast::error::RecvError::Closed) => return Err(End::Failed("feed closed".into())),
                },
                _ = heartbeat.tick() => self.send(frames::ping()).await?,
            }
        }
    }

    /// Sends every event after `cursor` (with a reset first when it had to move); returns
    /// the new cursor.
    async fn catch_up(&self, mut cursor: u64) -> Result<u64, End> {
        let (hub, history) = (&self.state.hub, &self.state.history);
        loop {
            // Boxed: a JetStream read is a large future, and keeping it inline would make
            // every idle session (one per open stream) that large too.
            let page = Box::pin(catch_up(hub, history, &self.filter, cursor, PAGE))
                .await
                .map_err(|e| End::Failed(e.to_string()))?;
            if let Some(reset) = &page.reset {
                self.send(frames::reset(reset)).await?;
            }
            for event in &page.events {
                self.send_event(event.frame()).await?;
            }
            cursor = page.cursor;
            if page.complete {
                return Ok(cursor);
            }
        }
    }

    async fn send_event(&self, frame: Bytes) -> Result<(), End> {
        self.send(frame).await?;
        metrics::counter!("spool_delivery_events_delivered_total", "kind" => "sse").increment(1);
        Ok(())
    }

    /// Queues a frame; a queue that stays full for the slow-client timeout ends the session.
    async fn send(&self, frame: Bytes) -> Result<(), End> {
        let frame = match self.tx.try_send(frame) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(End::ClientGone),
            Err(mpsc::error::TrySendError::Full(frame)) => frame,
        };
        let shutdown = self.state.platform.shutdown.clone();
        tokio::select! {
            sent = tokio::time::timeout(self.state.settings.slow_client_timeout, self.tx.send(frame)) => match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(End::ClientGone),
                Err(_) => Err(End::Slow),
            },
            _ = shutdown.cancelled() => Err(End::Shutdown),
        }
    }
}
