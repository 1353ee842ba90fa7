//! Fuzz targets (issue #16) for what readers send and what they receive: the query string
//! and `Last-Event-ID`, and every SSE frame the delivery writes, read back through an
//! independent parser written from the WHATWG rules (`spool_fuzz::sse`), as a browser's
//! EventSource would read them. See the `spool-fuzz` crate for how long they run
//! (`SPOOL_FUZZ_CASES`, `make fuzz`).

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use spool_fuzz::sse::{self, Event as SseEvent};
use spool_fuzz::{awkward_string, config, mutated_one_of};
use spool_proto::outcome::CallOutcome;
use spool_proto::{Audience, Event, EventType, Item, Site, SiteId};

use crate::frames::{self, FeedEvent, Reset};
use crate::revalidated::Revalidated;
use crate::routes::params::{self, Params, MAX_COLLECTIONS, MAX_LIMIT, MAX_WAIT_SECS};
use crate::window::Filter;

// --- Query string and Last-Event-ID ---------------------------------------------------------

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9_-]{0,62}"
}

/// A raw query string: pieces of `k=v&` with awkward text and percent escapes.
fn raw_query() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            proptest::sample::select(vec![
                "since",
                "limit",
                "wait",
                "collections",
                "token",
                "revalidated",
                "=",
                "&",
                "%",
                "%2",
                "%zz",
                "%FF",
                "%C3%A9",
                "%00",
                "+",
                ",",
                "-1",
                "18446744073709551616",
                "1001",
                "31",
                "0",
                "true",
                "1",
            ])
            .prop_map(str::to_owned),
            awkward_string(3),
        ],
        0..12,
    )
    .prop_map(|p| p.concat())
}

/// Every accessor of a query string answers; a refusal names its parameter.
fn read_all(params: &Params) -> Result<(), TestCaseError> {
    let named = |name: &str, e: crate::error::DeliveryError| -> Result<(), TestCaseError> {
        let text = e.to_string();
        prop_assert!(
            matches!(e, crate::error::DeliveryError::BadParameter(_)),
            "{text}"
        );
        prop_assert!(text.starts_with(&format!("{name}: ")), "{text}");
        Ok(())
    };
    let _ = params.token();
    match params.since() {
        Ok(_) => {}
        Err(e) => named("since", e)?,
    }
    match params.limit() {
        Ok(n) => prop_assert!((1..=MAX_LIMIT).contains(&n)),
        Err(e) => named("limit", e)?,
    }
    match params.wait() {
        Ok(d) => prop_assert!(d.as_secs() <= MAX_WAIT_SECS),
        Err(e) => named("wait", e)?,
    }
    match params.collections() {
        Ok(Some(list)) => {
            prop_assert!(!list.is_empty() && list.len() <= MAX_COLLECTIONS);
            prop_assert!(list.iter().all(|c| spool_proto::names::is_valid_name(c)));
        }
        Ok(None) => {}
        Err(e) => named("collections", e)?,
    }
    match params.flag("revalidated") {
        Ok(_) => {}
        Err(e) => named("revalidated", e)?,
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(1))]

    #[test]
    fn fuzz_query_arbitrary(raw in raw_query()) {
        read_all(&Params::parse(Some(&raw)))?;
    }

    /// Values written the way a browser encodes them read back as themselves.
    #[test]
    fn fuzz_query_valid_round_trips(
        since in proptest::option::of(any::<u64>()),
        limit in proptest::option::of(1..=MAX_LIMIT),
        wait in proptest::option::of(0..=MAX_WAIT_SECS),
        collections in proptest::option::of(proptest::collection::vec(name(), 1..=MAX_COLLECTIONS)),
        token in proptest::option::of(awkward_string(6)),
        revalidated in proptest::option::of(any::<bool>()),
        unknown in proptest::collection::vec((awkward_string(2), awkward_string(2)), 0..3),
    ) {
        let mut q = form_urlencoded::Serializer::new(String::new());
        // Unknown parameters (even ones named like ours, after ours) change nothing.
        if let Some(s) = since { q.append_pair("since", &s.to_string()); }
        if let Some(l) = limit { q.append_pair("limit", &l.to_string()); }
        if let Some(w) = wait { q.append_pair("wait", &w.to_string()); }
        if let Some(c) = &collections { q.append_pair("collections", &c.join(",")); }
        if let Some(t) = &token { q.append_pair("token", t); }
        if let Some(r) = revalidated { q.append_pair("revalidated", if r { "1" } else { "false" }); }
        for (k, v) in &unknown { q.append_pair(k, v); }
        let raw = q.finish();
        let p = Params::parse(Some(&raw));
        prop_assert_eq!(p.since().ok(), Some(since), "{}", raw);
        prop_assert_eq!(p.limit().ok(), Some(limit.unwrap_or(params::DEFAULT_LIMIT)));
        prop_assert_eq!(p.wait().ok().map(|d| d.as_secs()), Some(wait.unwrap_or(0)));
        let mut deduped: Option<Vec<String>> = collections.clone();
        if let Some(list) = &mut deduped {
            let mut seen = Vec::new();
            list.retain(|c| { let new = !seen.contains(c); seen.push(c.clone()); new });
        }
        prop_assert_eq!(p.collections().ok(), Some(deduped));
        prop_assert_eq!(p.token().map(str::to_owned), token);
        prop_assert_eq!(p.flag("revalidated").ok(), Some(revalidated.unwrap_or(false)));
    }

    /// Any `Last-Event-ID` bytes a client can send: a cursor or a 400 naming the header,
    /// never a panic; a number (padded with spaces) is that cursor over any valid `since`.
    #[test]
    fn fuzz_last_event_id(
        raw in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..24),
            any::<u64>().prop_map(|n| n.to_string().into_bytes()),
            awkward_string(3).prop_map(String::into_bytes),
        ],
        seq in any::<u64>(),
        pad in "[ \t]{0,3}",
        since in raw_query(),
    ) {
        let query = Params::parse(Some(&since));
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_bytes(&raw) {
            headers.insert("last-event-id", value);
            match params::last_event_id(&headers) {
                Ok(text) => {
                    if let Err(e) = params::stream_cursor(&query, text) {
                        let t = e.to_string();
                        prop_assert!(t.starts_with("Last-Event-ID: ") || t.starts_with("since: "), "{t}");
                    }
                }
                Err(e) => prop_assert!(e.to_string().starts_with("Last-Event-ID: ")),
            }
        }
        let padded = format!("{pad}{seq}{pad}");
        headers.insert("last-event-id", HeaderValue::from_str(&padded).map_err(|e| TestCaseError::fail(e.to_string()))?);
        let text = params::last_event_id(&headers).map_err(|e| TestCaseError::fail(e.to_string()))?;
        match query.since() {
            // A valid `since` loses to the header.
            Ok(_) => prop_assert_eq!(params::stream_cursor(&query, text).ok(), Some(Some(seq))),
            // A bad one is refused all the same.
            Err(_) => prop_assert!(params::stream_cursor(&query, text).is_err_and(|e| e.to_string().starts_with("since: "))),
        }
    }
}

// --- SSE frames -----------------------------------------------------------------------------

/// A JSON value without floats, with awkward text (line ends of every kind, separators,
/// BOM, NUL, quotes, `data:` ...).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        awkward_string(8).prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(awkward_string(3), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn event() -> impl Strategy<Value = Event> {
    (
        (any::<u64>(), awkward_string(4), name(), name()),
        (
            proptest::sample::select(EventType::ALL.to_vec()),
            prop_oneof![Just(Audience::Public), Just(Audience::Preview)],
        ),
        (
            awkward_string(4),
            proptest::option::of(awkward_string(4)),
            proptest::collection::btree_map(
                awkward_string(3).prop_filter("not id or slug", |k| k != "id" && k != "slug"),
                json_value(),
                0..4,
            ),
        ),
        proptest::collection::vec(awkward_string(4), 0..4),
        proptest::collection::vec(awkward_string(4), 0..4),
        (0i64..253_402_300_799, 0i64..253_402_300_799),
    )
        .prop_map(
            |(
                (seq, id, site, collection),
                (kind, audience),
                (item_id, slug, extra),
                paths,
                tags,
                (t1, t2),
            )| {
                let at = |t| {
                    time::OffsetDateTime::from_unix_timestamp(t)
                        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
                };
                Event {
                    seq: seq.max(1),
                    id,
                    site: SiteId::parse(site).unwrap_or_else(|_| unreachable!()),
                    kind,
                    collection: spool_proto::CollectionName::parse(collection)
                        .unwrap_or_else(|_| unreachable!()),
                    audience,
                    item: Item {
                        id: item_id,
                        slug,
                        extra: extra.into_iter().collect::<Map<String, Value>>(),
                    },
                    paths,
                    tags,
                    occurred_at: at(t1),
                    received_at: at(t2),
                }
            },
        )
}

/// The site the event's public fields come from: absent (defaults) or any field list.
fn public_fields() -> impl Strategy<Value = Option<Vec<String>>> {
    proptest::option::of(proptest::collection::vec(
        prop_oneof![
            Just("slug".to_owned()),
            Just("title".to_owned()),
            awkward_string(2)
        ],
        0..4,
    ))
}

fn site_with(fields: Option<Vec<String>>, id: &SiteId) -> Arc<Site> {
    Arc::new(Site {
        id: id.clone(),
        webhook_secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
        read_tokens: vec![],
        public: true,
        cors_origins: vec![],
        collections: Default::default(),
        revalidate: vec![],
        public_types: None,
        public_fields: fields,
        subscriber_secret: None,
        subscriber_jwks_url: None,
        notify: None,
        notify_timeout_ms: None,
    })
}

/// The JSON a reader must receive for `event`: every field for preview readers, the item
/// cut to the site's public fields for visitors; `"fresh": false` when held too long.
fn expected(event: &Event, site: Option<&Site>, preview: bool, stale: bool) -> Value {
    let mut e = event.clone();
    if !preview {
        e.item = match site {
            Some(site) => site.public_item(&e.item),
            None => Site::default_public_item(&e.item),
        };
    }
    let mut v = serde_json::to_value(&e).unwrap_or(Value::Null);
    if stale {
        if let Value::Object(m) = &mut v {
            m.insert("fresh".into(), Value::Bool(false));
        }
    }
    v
}

/// A stream's frames and what a browser must make of them.
#[derive(Debug, Default)]
struct Stream {
    bytes: Vec<u8>,
    events: Vec<(String, Value, String)>,
    last_id: String,
    retry: Option<u64>,
}

impl Stream {
    fn push(
        &mut self,
        frame: &[u8],
        event: Option<(&str, Value)>,
        id: Option<String>,
        retry: Option<u64>,
    ) {
        self.bytes.extend_from_slice(frame);
        if let Some(id) = id {
            self.last_id = id;
        }
        if let Some(retry) = retry {
            self.retry = Some(retry);
        }
        if let Some((kind, data)) = event {
            self.events
                .push((kind.to_owned(), data, self.last_id.clone()));
        }
    }

    /// Parsed independently, the stream says exactly what it should.
    fn check(&self) -> Result<(), TestCaseError> {
        let parsed = sse::parse(&self.bytes);
        prop_assert!(!parsed.incomplete, "a frame is not ended");
        prop_assert_eq!(parsed.events.len(), self.events.len());
        for (got, (kind, data, id)) in parsed.events.iter().zip(&self.events) {
            let SseEvent {
                kind: got_kind,
                data: got_data,
                last_event_id,
            } = got;
            prop_assert_eq!(got_kind, kind);
            prop_assert_eq!(last_event_id, id);
            prop_assert!(
                !got_data.contains(['\n', '\r']),
                "one data line: {got_data:?}"
            );
            let value: Value = serde_json::from_str(got_data).map_err(|e| {
                TestCaseError::fail(format!("data is not JSON ({e}): {got_data:?}"))
            })?;
            prop_assert_eq!(&value, data);
        }
        prop_assert_eq!(&parsed.last_event_id, &self.last_id);
        prop_assert_eq!(parsed.retry, self.retry);
        Ok(())
    }
}

/// One of the frames a stream may carry.
#[derive(Debug, Clone)]
enum Frame {
    Event { preview: bool, stale: bool },
    Ready { retry: u64, cursor: u64, last: u64 },
    Position(u64),
    Reset { truncated: bool, first: u64 },
    GoAway { reason: String, retry: u64 },
    TokenExpired,
    Retry(u64),
    Ping,
    Revalidated { preview: bool },
}

fn frame_kind() -> impl Strategy<Value = Frame> {
    prop_oneof![
        4 => (any::<bool>(), any::<bool>()).prop_map(|(preview, stale)| Frame::Event { preview, stale }),
        1 => (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(retry, cursor, last)| Frame::Ready { retry, cursor, last }),
        1 => any::<u64>().prop_map(Frame::Position),
        1 => (any::<bool>(), any::<u64>()).prop_map(|(truncated, first)| Frame::Reset { truncated, first }),
        1 => (awkward_string(4), any::<u64>()).prop_map(|(reason, retry)| Frame::GoAway { reason, retry }),
        1 => Just(Frame::TokenExpired),
        1 => any::<u64>().prop_map(Frame::Retry),
        1 => Just(Frame::Ping),
        2 => any::<bool>().prop_map(|preview| Frame::Revalidated { preview }),
    ]
}

fn outcome(event: &Event, target: String, keep: &[bool]) -> CallOutcome {
    let pick = |list: &[String]| -> Vec<String> {
        list.iter()
            .enumerate()
            .filter(|(i, _)| keep.get(*i).copied().unwrap_or(true))
            .map(|(_, v)| v.clone())
            .collect()
    };
    CallOutcome {
        site: event.site.clone(),
        target,
        url: "https://example.com/api/revalidate".into(),
        webhook_id: event.id.clone(),
        attempt: 1,
        seqs: vec![event.seq],
        paths: pick(&event.paths),
        tags: pick(&event.tags),
        ok: true,
        status: Some(200),
        at: event.received_at,
        replica: None,
    }
}

/// What `event: revalidated` must carry for a reader that may see the event.
fn expected_revalidated(event: &Event, call: &CallOutcome) -> Value {
    let mut paths: Vec<&String> = Vec::new();
    for p in event.paths.iter().filter(|p| call.paths.contains(p)) {
        if !paths.contains(&p) {
            paths.push(p);
        }
    }
    let mut tags: Vec<&String> = Vec::new();
    for t in event.tags.iter().filter(|t| call.tags.contains(t)) {
        if !tags.contains(&t) {
            tags.push(t);
        }
    }
    let at = call
        .at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    json!({"target": call.target, "seqs": [event.seq], "paths": paths, "tags": tags, "at": at})
}

fn stored_seeds() -> Vec<Vec<u8>> {
    vec![br#"{"id":"msg_1","site":"acme","type":"content.published","collection":"blog","audience":"public",
        "item":{"id":"42","slug":"my-post","title":"My post"},"paths":["/blog/my-post"],"tags":["blog"],
        "occurred_at":"2026-11-25T10:00:00Z","received_at":"2026-11-25T10:00:00.012Z"}"#
        .to_vec()]
}

proptest! {
    #![proptest_config(config(1))]

    /// A stored message of any bytes: an encoded event or an error, never a panic; an
    /// encoded one is one well-formed frame.
    #[test]
    fn fuzz_sse_stored_messages(
        stored in prop_oneof![mutated_one_of(stored_seeds()), proptest::collection::vec(any::<u8>(), 0..128)],
        seq in any::<u64>(),
    ) {
        if let Ok(e) = FeedEvent::from_stored(seq, &stored, &frames::no_site) {
            for preview in [true, false] {
                let parsed = sse::parse(&e.frame(preview));
                prop_assert_eq!(parsed.events.len(), 1);
                prop_assert_eq!(&parsed.events[0].last_event_id, &seq.to_string());
                prop_assert_eq!(parsed.events[0].data.as_bytes(), &e.json(preview)[..]);
                let stale = e.stale();
                let parsed = sse::parse(&stale.frame(preview));
                let v: Value = serde_json::from_str(&parsed.events[0].data).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&v["fresh"], &json!(false));
            }
            let _ = e.paths_and_tags();
        }
    }

    /// Any sequence of frames with any content, as one stream: an independent parser reads
    /// every event (type, data, id), the last id and the retry exactly as sent.
    #[test]
    fn fuzz_sse_stream_round_trips(
        event in event(),
        fields in public_fields(),
        site_known in any::<bool>(),
        frames_list in proptest::collection::vec(frame_kind(), 1..12),
        target in awkward_string(4),
        keep in proptest::collection::vec(any::<bool>(), 0..4),
    ) {
        let site = site_with(fields, &event.site);
        let site_of = |id: &str| (site_known && id == site.id.as_str()).then(|| site.clone());
        let mut stored = event.clone();
        stored.seq = 0;
        let stored = serde_json::to_vec(&stored).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let feed = FeedEvent::from_stored(event.seq, &stored, &site_of).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(feed.paths_and_tags(), (event.paths.clone(), event.tags.clone()));
        let call = outcome(&event, target, &keep);
        let notice = Revalidated::new(&call, [&feed]);
        let known = site_known.then_some(&*site);
        let mut stream = Stream::default();
        for f in frames_list {
            match f {
                Frame::Event { preview, stale } => {
                    // Visitors never get a preview-only event.
                    if !preview && event.audience == Audience::Preview { continue; }
                    let e = if stale { feed.stale() } else { feed.clone() };
                    let frame = e.frame(preview);
                    prop_assert_eq!(e.frame_bytes(preview), &frame[..]);
                    let json: Value = serde_json::from_slice(&e.json(preview)).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let want = expected(&event, known, preview, stale);
                    prop_assert_eq!(&json, &want);
                    stream.push(&frame, Some(("message", want)), Some(event.seq.to_string()), None);
                }
                Frame::Ready { retry, cursor, last } => stream.push(
                    &frames::ready(retry, cursor, last),
                    Some(("ready", json!({"last_seq": last}))),
                    Some(cursor.to_string()),
                    Some(retry),
                ),
                Frame::Position(seq) => stream.push(
                    &frames::position(seq),
                    Some(("position", json!({"seq": seq}))),
                    Some(seq.to_string()),
                    None,
                ),
                Frame::Reset { truncated, first } => {
                    let reason = if truncated { "history_truncated" } else { "cursor_ahead" };
                    stream.push(
                        &frames::reset(&Reset { reason, first_seq: first }),
                        Some(("reset", json!({"reason": reason, "first_seq": first}))),
                        None,
                        None,
                    )
                }
                Frame::GoAway { reason, retry } => stream.push(
                    &frames::goaway(&reason, retry),
                    Some(("goaway", json!({"reason": reason, "retry_ms": retry}))),
                    None,
                    Some(retry),
                ),
                Frame::TokenExpired => stream.push(
                    &frames::token_expired(),
                    Some(("token_expired", json!({"reason": "token_expired"}))),
                    None,
                    None,
                ),
                Frame::Retry(ms) => stream.push(&frames::retry(ms), None, None, Some(ms)),
                Frame::Ping => stream.push(&frames::ping(), None, None, None),
                Frame::Revalidated { preview } => {
                    let filter = Filter { site: event.site.to_string(), collections: None, preview };
                    let frame = notice.as_ref().and_then(|n| n.frame(&filter));
                    let want = expected_revalidated(&event, &call);
                    let visible = preview || event.audience == Audience::Public;
                    let covered = want["paths"] != json!([]) || want["tags"] != json!([]);
                    prop_assert_eq!(frame.is_some(), visible && covered);
                    if let Some(frame) = frame {
                        prop_assert_eq!(notice.as_ref().map(Revalidated::last_seq), Some(event.seq));
                        stream.push(&frame, Some(("revalidated", want)), None, None);
                    }
                }
            }
        }
        stream.check()?;
    }
}
