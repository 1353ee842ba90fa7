//! `GET /v1/sites/{site}/events/stream`: Server-Sent Events.
//!
//! The response body is the session itself ([`Session`], a stream the connection polls
//! whenever it can write): no task or queue of its own per client, so a change reaches a
//! browser in one hop from the feed, and an idle stream costs little more than its socket.
//! A client that stops reading holds nothing but the connection's own bounded write buffer
//! (the site's channel moves on without it; it catches up from the window when it reads
//! again), and the server closes its connection once no write has made progress for
//! `SPOOL_SLOW_CLIENT_TIMEOUT` ([`spool_platform::http::ConnectionLimits`]).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use tokio::time::{Interval, MissedTickBehavior};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use super::access::{self, with_cors};
use super::params::{stream_cursor, Params};
use super::{AppState, OpenConnection};
use crate::catchup::{catch_up, CatchUp};
use crate::error::DeliveryError;
use crate::frames::{self, FeedEvent};
use crate::history::{History, HistoryError};
use crate::hub::Hub;
use crate::window::Filter;

/// Events read per catch-up step (window or JetStream).
const PAGE: usize = 1000;

/// Most bytes of live events sent as one chunk.
const MAX_CHUNK: usize = 64 * 1024;

pub async fn stream(
    State(state): State<AppState>,
    Path(site): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
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
    let session = Session::start(&state, filter, cursor);
    with_cors(sse_response(Body::from_stream(session)), origin)
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

/// What the live side has for a client.
enum Live {
    Event(Arc<FeedEvent>),
    Lagged,
    Closed,
}

/// A catch-up page being read (from the window, or from JetStream).
type Fetch = Pin<Box<dyn Future<Output = Result<CatchUp, HistoryError>> + Send>>;

/// One client's stream: the `ready` frame, what it missed after its cursor, then the site's
/// live events and a heartbeat, until the feed closes (shutdown) or the client goes.
struct Session {
    hub: Arc<Hub>,
    history: History,
    filter: Filter,
    /// The last sequence sent (or skipped as not the client's).
    cursor: u64,
    live: BroadcastStream<Arc<FeedEvent>>,
    /// Frames ready to send before anything else (`ready`, a catch-up page).
    queued: VecDeque<Bytes>,
    fetching: Option<Fetch>,
    heartbeat: Interval,
    delivered: metrics::Counter,
    _open: OpenConnection,
}

impl Session {
    /// Subscribes first, so the catch-up and the live events meet with no gap: whatever the
    /// catch-up also returns, the live side skips by sequence.
    fn start(state: &AppState, filter: Filter, cursor: Option<u64>) -> Session {
        let settings = &state.settings;
        let live = state.hub.subscribe(&filter.site);
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + settings.heartbeat,
            settings.heartbeat,
        );
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut session = Session {
            hub: state.hub.clone(),
            history: state.history.clone(),
            filter,
            cursor: cursor.unwrap_or(live.last_seq),
            live: BroadcastStream::new(live.events),
            queued: VecDeque::from([frames::ready(millis(settings.retry), live.last_seq)]),
            fetching: None,
            heartbeat,
            delivered: metrics::counter!("spool_delivery_events_delivered_total", "kind" => "sse"),
            _open: OpenConnection::new("sse"),
        };
        if cursor.is_some() {
            session.fetch();
        }
        session
    }

    /// Starts reading the next page after the cursor.
    fn fetch(&mut self) {
        let (hub, history, filter) = (self.hub.clone(), self.history.clone(), self.filter.clone());
        let cursor = self.cursor;
        self.fetching = Some(Box::pin(async move {
            catch_up(&hub, &history, &filter, cursor, PAGE).await
        }));
    }

    /// Fell behind the site's channel: follows it again from its end, rather than wading
    /// through the old events it still holds, and reads what was missed from the window.
    /// Subscribing before reading is what makes the start gapless too; the live side skips
    /// by sequence whatever the catch-up also returns.
    fn recover(&mut self) {
        let live = self.hub.subscribe(&self.filter.site);
        self.live = BroadcastStream::new(live.events);
        self.fetch();
    }

    /// Queues a page read, and asks for the next one until the client is caught up.
    fn take_page(&mut self, page: CatchUp) {
        if let Some(reset) = &page.reset {
            self.queued.push_back(frames::reset(reset));
        }
        self.delivered.increment(page.events.len() as u64);
        self.queued
            .extend(page.events.iter().map(|event| event.frame()));
        self.cursor = page.cursor;
        if !page.complete {
            self.fetch();
        }
    }

    /// The next live event for this client, skipping what the catch-up already sent and
    /// other collections; moves the cursor past it. (The caller counts deliveries once per
    /// chunk rather than per event: every stream shares the counter.)
    fn poll_live(&mut self, cx: &mut Context<'_>) -> Poll<Live> {
        loop {
            return match self.live.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(event))) => {
                    if event.seq <= self.cursor || !self.filter.matches(&event) {
                        continue;
                    }
                    self.cursor = event.seq;
                    Poll::Ready(Live::Event(event))
                }
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(_)))) => {
                    Poll::Ready(Live::Lagged)
                }
                Poll::Ready(None) => Poll::Ready(Live::Closed),
                Poll::Pending => Poll::Pending,
            };
        }
    }

    /// `first`, followed by every other live event already waiting: one chunk and one
    /// write for a burst instead of one per event.
    fn with_ready_events(&mut self, first: Bytes, cx: &mut Context<'_>) -> Bytes {
        let mut events = 1;
        let chunk = join(first, || match self.poll_live(cx) {
            Poll::Ready(Live::Event(event)) => {
                events += 1;
                Some(event.frame())
            }
            Poll::Ready(Live::Lagged) => {
                self.recover();
                None
            }
            // Seen again on the next poll.
            Poll::Ready(Live::Closed) | Poll::Pending => None,
        });
        self.delivered.increment(events);
        chunk
    }
}

/// `first` and the frames `next` yields, as one chunk of about [`MAX_CHUNK`] bytes at most
/// (the last frame may go past it). A lone frame goes out as it is, shared, not copied.
fn join(first: Bytes, mut next: impl FnMut() -> Option<Bytes>) -> Bytes {
    let mut chunk = BytesMut::new();
    // `chunk` holds `first` too once it has anything.
    while chunk.len().max(first.len()) < MAX_CHUNK {
        let Some(frame) = next() else { break };
        if chunk.is_empty() {
            chunk.reserve(MAX_CHUNK.min((first.len() + frame.len()) * 8));
            chunk.extend_from_slice(&first);
        }
        chunk.extend_from_slice(&frame);
    }
    if chunk.is_empty() {
        first
    } else {
        chunk.freeze()
    }
}

impl Stream for Session {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.queued.pop_front() {
                let queued = &mut this.queued;
                return Poll::Ready(Some(Ok(join(frame, || queued.pop_front()))));
            }
            if let Some(fetching) = this.fetching.as_mut() {
                match fetching.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(page)) => {
                        this.fetching = None;
                        this.take_page(page);
                    }
                    Poll::Ready(Err(e)) => {
                        tracing::warn!(site = %this.filter.site, reason = %e, "SSE stream ended; the client will resume");
                        return Poll::Ready(None);
                    }
                }
                continue;
            }
            match this.poll_live(cx) {
                Poll::Ready(Live::Event(event)) => {
                    let chunk = this.with_ready_events(event.frame(), cx);
                    return Poll::Ready(Some(Ok(chunk)));
                }
                Poll::Ready(Live::Lagged) => {
                    this.recover();
                    continue;
                }
                // The feed closed the site's channels: shutting down. The client resumes
                // elsewhere from its last id.
                Poll::Ready(Live::Closed) => return Poll::Ready(None),
                Poll::Pending => {}
            }
            if this.heartbeat.poll_tick(cx).is_ready() {
                return Poll::Ready(Some(Ok(frames::ping())));
            }
            return Poll::Pending;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_frame_goes_out_uncopied() {
        let frame = Bytes::from_static(b"id: 1\ndata: {}\n\n");
        let chunk = join(frame.clone(), || None);
        assert_eq!(chunk.as_ptr(), frame.as_ptr());
    }

    #[test]
    fn waiting_frames_are_joined_in_order_up_to_the_chunk_size() {
        let frame = |i: usize| Bytes::from(format!("id: {i}\ndata: {}\n\n", "x".repeat(1000)));
        let mut waiting: VecDeque<Bytes> = (2..200).map(frame).collect();
        let chunk = join(frame(1), || waiting.pop_front());
        // Frames are added while the chunk is below MAX_CHUNK: the last one crosses it.
        let mut expected = Vec::new();
        let mut last = 0;
        while expected.len() < MAX_CHUNK {
            last += 1;
            expected.extend_from_slice(&frame(last));
        }
        assert_eq!(chunk, expected, "in order, until MAX_CHUNK was reached");
        assert_eq!(waiting.front(), Some(&frame(last + 1)), "the rest waits");
    }
}
