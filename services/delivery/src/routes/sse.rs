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
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::Stream;
use spool_platform::http::PathParam;
use tokio::time::{Interval, MissedTickBehavior};

use super::access::{self, with_cors};
use super::params::{last_event_id, stream_cursor, Params};
use super::{AppState, OpenConnection, SiteStream};
use crate::catchup::{catch_up, CatchUp};
use crate::error::DeliveryError;
use crate::frames::{self, FeedEvent};
use crate::history::{History, HistoryError};
use crate::hub::{Hub, Live};
use crate::live::{LiveReceiver, Recv};
use crate::window::Filter;

/// Events read per catch-up step (window or JetStream).
const PAGE: usize = 1000;

/// Most bytes of live events sent as one chunk.
const MAX_CHUNK: usize = 64 * 1024;

pub async fn stream(
    State(state): State<AppState>,
    PathParam(site): PathParam,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let params = Params::parse(query.as_deref());
    let site = match access::site(&state, site) {
        Ok(site) => site,
        Err(e) => return refuse(&state, access::hide_unknown(e, &headers, &params), None),
    };
    let origin = access::allowed_origin(&site, &headers);
    let revalidated = match params.flag("revalidated") {
        Ok(flag) => flag,
        Err(e) => return refuse(&state, e, origin),
    };
    let start = match access::authorize(&state, &site, &headers, &params).await {
        Ok(reader) => start_point(&state, &site, &headers, &params, reader),
        Err(e) => Err(e),
    };
    let (cursor, filter, token_expires) = match start {
        Ok(start) => start,
        Err(e) => return refuse(&state, e, origin),
    };
    let Some(slot) = state.streams.open(&filter.site) else {
        metrics::counter!("spool_delivery_streams_refused_total", "reason" => "site_limit")
            .increment(1);
        let goaway = frames::goaway("site_stream_limit", spread(state.settings.busy_retry));
        return with_cors(sse_response(Body::from(goaway)), origin);
    };
    let revoked = Box::pin(access::revoked(
        &state,
        site.id.clone(),
        access::presented_token(&headers, &params),
    ));
    let mut session = Session::start(&state, filter, cursor, revoked, slot);
    session.revalidated = revalidated;
    if let Some(at) = token_expires {
        let left = at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        session.token_expires = Some(Box::pin(tokio::time::sleep(left)));
    }
    with_cors(sse_response(Body::from_stream(session)), origin)
}

/// Where a stream of `reader` starts and what it gets, or why it can't start now.
fn start_point(
    state: &AppState,
    site: &spool_proto::Site,
    headers: &HeaderMap,
    params: &Params,
    reader: access::Reader,
) -> Result<(Option<u64>, Filter, Option<std::time::SystemTime>), DeliveryError> {
    let cursor = stream_cursor(params, last_event_id(headers)?)?;
    let filter = reader.filter(site, params)?;
    if !state.hub.is_ready() {
        return Err(DeliveryError::Unavailable(
            "the event feed is starting".into(),
        ));
    }
    if state.platform.shutdown.is_cancelled() {
        return Err(DeliveryError::Unavailable("shutting down".into()));
    }
    Ok((cursor, filter, reader.expires))
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
        let retry = match error {
            DeliveryError::Busy(after) => busy_retry(after),
            _ => frames::retry(millis(state.settings.retry)),
        };
        sse_response(Body::from(retry))
    } else {
        error.into_response()
    };
    with_cors(response, origin)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A random number (from the standard library's per-map random keys: no generator to
/// seed or share).
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// How long a client turned away is asked to wait, in ms: `after`, and up to half as long
/// again at random, so that the clients turned away together don't all come back together.
fn spread(after: Duration) -> u64 {
    let base = millis(after);
    base.saturating_add(random() % (base / 2 + 1))
}

/// The `retry:` for a client turned away because the process is busy.
fn busy_retry(after: Duration) -> Bytes {
    frames::retry(spread(after))
}

/// A stream's life: between three quarters of `max` and `max`, at random.
fn lifetime(max: Duration) -> Duration {
    let max = millis(max);
    Duration::from_millis(max - random() % (max / 4 + 1))
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
    /// The last `id:` the client was sent: when the cursor moves past it without an event
    /// of the client's, an `event: position` tells it.
    sent_id: u64,
    /// Turned away (too many history reads): the stream ends once `queued` is sent.
    ending: bool,
    /// The feed's last sequence when the heartbeat came, while caught up: once the live
    /// channel is read empty, every event of the site up to it has been seen, and the
    /// cursor moves there (a quiet site's clients resume from the window after a deploy).
    at_end: Option<u64>,
    busy_retry: Duration,
    live: LiveReceiver<Live>,
    /// The client asked for `event: revalidated` frames.
    revalidated: bool,
    /// Frames ready to send before anything else (`ready`, a catch-up page).
    queued: VecDeque<Bytes>,
    fetching: Option<Fetch>,
    heartbeat: Interval,
    /// Resolves once this reader may no longer read the site (token rotated, site private
    /// or deleted): the stream ends at once.
    revoked: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// The end of this stream's life (`SPOOL_MAX_STREAM_LIFETIME`): it ends, and its client
    /// resumes from its last id.
    expires: Pin<Box<tokio::time::Sleep>>,
    /// When the reader's subscriber token expires: the stream ends then with
    /// `event: token_expired`, and the client resumes with a new token.
    token_expires: Option<Pin<Box<tokio::time::Sleep>>>,
    delivered: metrics::Counter,
    _open: OpenConnection,
    _slot: SiteStream,
}

impl Session {
    /// Subscribes first, so the catch-up and the live events meet with no gap: whatever the
    /// catch-up also returns, the live side skips by sequence.
    fn start(
        state: &AppState,
        filter: Filter,
        cursor: Option<u64>,
        revoked: Pin<Box<dyn Future<Output = ()> + Send>>,
        slot: SiteStream,
    ) -> Session {
        let settings = &state.settings;
        let live = state.hub.subscribe(&filter.site);
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + settings.heartbeat,
            settings.heartbeat,
        );
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let start = cursor.unwrap_or(live.last_seq);
        let mut session = Session {
            hub: state.hub.clone(),
            history: state.history.clone(),
            filter,
            cursor: start,
            sent_id: start,
            ending: false,
            at_end: None,
            busy_retry: settings.busy_retry,
            live: LiveReceiver::new(live.events),
            revalidated: false,
            queued: VecDeque::from([frames::ready(millis(settings.retry), start, live.last_seq)]),
            fetching: None,
            heartbeat,
            revoked,
            expires: Box::pin(tokio::time::sleep(lifetime(settings.max_lifetime))),
            token_expires: None,
            delivered: metrics::counter!("spool_delivery_events_delivered_total", "kind" => "sse"),
            _open: OpenConnection::new("sse"),
            _slot: slot,
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
        metrics::counter!("spool_delivery_streams_lagged_total").increment(1);
        self.at_end = None;
        let live = self.hub.subscribe(&self.filter.site);
        self.live = LiveReceiver::new(live.events);
        self.fetch();
    }

    /// Queues a page read, and asks for the next one until the client is caught up.
    fn take_page(&mut self, page: CatchUp) {
        if let Some(reset) = &page.reset {
            self.queued.push_back(frames::reset(reset));
        }
        self.delivered.increment(page.events.len() as u64);
        self.queued.extend(
            page.events
                .iter()
                .map(|event| event.frame(self.filter.preview)),
        );
        if let Some(last) = page.events.last() {
            self.sent_id = last.seq;
        }
        self.cursor = page.cursor;
        if page.complete {
            self.tell_position();
        } else {
            self.fetch();
        }
    }

    /// Queues `event: position` if the cursor moved past the last id the client has.
    fn tell_position(&mut self) {
        if self.cursor > self.sent_id {
            self.sent_id = self.cursor;
            self.queued.push_back(frames::position(self.cursor));
        }
    }

    /// The next live event for this client, skipping what the catch-up already sent and
    /// other collections, and moving the cursor past it; or a notice that paths of its events
    /// are fresh, if it asked. (The caller counts deliveries once per chunk rather than per
    /// event: every stream shares the counter.)
    fn poll_live(&mut self, cx: &mut Context<'_>) -> Poll<Recv<Out>> {
        loop {
            let item = match std::task::ready!(self.live.poll_recv(cx)) {
                Recv::Item(item) => item,
                Recv::Lagged => return Poll::Ready(Recv::Lagged),
                Recv::Closed => return Poll::Ready(Recv::Closed),
            };
            match item {
                // The site's channel carries only the site's events.
                Live::Event(event) => {
                    if event.seq <= self.cursor {
                        continue;
                    }
                    self.cursor = event.seq;
                    if !self.filter.wants(&event) {
                        continue;
                    }
                    self.sent_id = event.seq;
                    return Poll::Ready(Recv::Item(Out::Event(event)));
                }
                Live::Revalidated(notice) if self.revalidated => {
                    if let Some(frame) = notice.frame(&self.filter) {
                        return Poll::Ready(Recv::Item(Out::Notice(frame)));
                    }
                }
                Live::Revalidated(_) => {}
            }
        }
    }

    /// `first`, followed by every other live event already waiting: one chunk and one
    /// write for a burst instead of one per event.
    fn with_ready_events(&mut self, first: Out, cx: &mut Context<'_>) -> Bytes {
        let (first, mut events) = match first {
            Out::Event(event) => (event.frame(self.filter.preview), 1),
            Out::Notice(frame) => (frame, 0),
        };
        let mut chunk = Chunk::new(first);
        while chunk.has_room() {
            match self.poll_live(cx) {
                Poll::Ready(Recv::Item(Out::Event(event))) => {
                    events += 1;
                    chunk.push(event.frame_bytes(self.filter.preview), || {
                        self.live.waiting()
                    });
                }
                Poll::Ready(Recv::Item(Out::Notice(frame))) => {
                    chunk.push(&frame, || self.live.waiting());
                }
                Poll::Ready(Recv::Lagged) => {
                    self.recover();
                    break;
                }
                // Seen again on the next poll.
                Poll::Ready(Recv::Closed) | Poll::Pending => break,
            }
        }
        self.delivered.increment(events);
        chunk.finish()
    }
}

/// What the live channel has for one client: an event of its own, or the frame of a
/// notice about its events.
enum Out {
    Event(Arc<FeedEvent>),
    Notice(Bytes),
}

/// Frames sent as one chunk of about [`MAX_CHUNK`] bytes at most (the last frame may go
/// past it). A lone frame goes out as it is, shared, not copied.
struct Chunk {
    first: Bytes,
    /// `first` and the frames after it, once there is a second.
    joined: BytesMut,
}

impl Chunk {
    fn new(first: Bytes) -> Chunk {
        Chunk {
            first,
            joined: BytesMut::new(),
        }
    }

    fn has_room(&self) -> bool {
        self.joined.len().max(self.first.len()) < MAX_CHUNK
    }

    /// Appends `frame`. On the first, `more()` tells how many frames of about its size are
    /// known to follow, so that the chunk is sized once rather than grown (asked once per
    /// chunk: counting what waits in a channel takes its lock).
    fn push(&mut self, frame: &[u8], more: impl FnOnce() -> usize) {
        if self.joined.is_empty() {
            let expected = self.first.len() + frame.len().saturating_mul(more().saturating_add(1));
            self.joined.reserve(expected.min(MAX_CHUNK + frame.len()));
            self.joined.extend_from_slice(&self.first);
        }
        self.joined.extend_from_slice(frame);
    }

    fn finish(self) -> Bytes {
        if self.joined.is_empty() {
            self.first
        } else {
            self.joined.freeze()
        }
    }
}

/// The frames waiting in `queued` (the `ready` frame, a catch-up page), as one chunk.
fn take_chunk(queued: &mut VecDeque<Bytes>) -> Option<Bytes> {
    let mut chunk = Chunk::new(queued.pop_front()?);
    while chunk.has_room() {
        let Some(frame) = queued.pop_front() else {
            break;
        };
        chunk.push(&frame, || queued.len());
    }
    Some(chunk.finish())
}

impl Stream for Session {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.revoked.as_mut().poll(cx).is_ready() {
            tracing::info!(site = %this.filter.site, "access revoked; SSE stream ended");
            return Poll::Ready(None);
        }
        if this.expires.as_mut().poll(cx).is_ready() {
            metrics::counter!("spool_delivery_streams_expired_total").increment(1);
            return Poll::Ready(None);
        }
        if let Some(token_expires) = this.token_expires.as_mut() {
            if token_expires.as_mut().poll(cx).is_ready() {
                this.token_expires = None;
                this.ending = true;
                this.fetching = None;
                this.queued.push_back(frames::token_expired());
            }
        }
        loop {
            if let Some(chunk) = take_chunk(&mut this.queued) {
                return Poll::Ready(Some(Ok(chunk)));
            }
            if this.ending {
                return Poll::Ready(None);
            }
            if let Some(fetching) = this.fetching.as_mut() {
                match fetching.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(page)) => {
                        this.fetching = None;
                        this.take_page(page);
                    }
                    Poll::Ready(Err(HistoryError::Busy)) => {
                        // Comes back later, from what it was sent.
                        this.fetching = None;
                        this.ending = true;
                        this.queued.push_back(busy_retry(this.busy_retry));
                    }
                    Poll::Ready(Err(e)) => {
                        tracing::warn!(site = %this.filter.site, reason = %e, "SSE stream ended; the client will resume");
                        return Poll::Ready(None);
                    }
                }
                continue;
            }
            match this.poll_live(cx) {
                Poll::Ready(Recv::Item(out)) => {
                    let chunk = this.with_ready_events(out, cx);
                    return Poll::Ready(Some(Ok(chunk)));
                }
                Poll::Ready(Recv::Lagged) => {
                    this.recover();
                    continue;
                }
                // The feed closed the site's channels: shutting down. The client resumes
                // elsewhere from its last id.
                Poll::Ready(Recv::Closed) => return Poll::Ready(None),
                Poll::Pending => {}
            }
            if let Some(end) = this.at_end.take() {
                // Read after `end` was taken: nothing of the site up to it is left unread.
                this.cursor = this.cursor.max(end);
                this.tell_position();
                continue;
            }
            if this.heartbeat.poll_tick(cx).is_ready() {
                this.at_end = Some(this.hub.released_end(&this.filter.site));
                this.queued.push_back(frames::ping());
                continue;
            }
            return Poll::Pending;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(i: usize) -> Bytes {
        Bytes::from(format!("id: {i}\ndata: {}\n\n", "x".repeat(1000)))
    }

    #[test]
    fn a_lone_frame_goes_out_uncopied() {
        let frame = Bytes::from_static(b"id: 1\ndata: {}\n\n");
        let chunk = take_chunk(&mut VecDeque::from([frame.clone()])).unwrap();
        assert_eq!(chunk.as_ptr(), frame.as_ptr());
        assert!(take_chunk(&mut VecDeque::new()).is_none());
    }

    #[test]
    fn waiting_frames_are_joined_in_order_up_to_the_chunk_size() {
        let mut waiting: VecDeque<Bytes> = (1..200).map(frame).collect();
        let chunk = take_chunk(&mut waiting).unwrap();
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

    #[test]
    fn a_chunk_is_sized_once_for_the_frames_known_to_follow() {
        let mut chunk = Chunk::new(frame(1));
        chunk.push(&frame(2), || 500);
        let capacity = chunk.joined.capacity();
        let mut next = 3;
        while chunk.has_room() {
            chunk.push(&frame(next), || unreachable!("asked once"));
            next += 1;
        }
        assert_eq!(chunk.joined.capacity(), capacity, "never grown");
        assert!(capacity < MAX_CHUNK + 2 * frame(1).len(), "nor oversized");
        let mut few = Chunk::new(frame(1));
        few.push(&frame(2), || 1);
        assert!(
            few.joined.capacity() < 4 * frame(1).len(),
            "a short burst, a small chunk"
        );
    }
}
