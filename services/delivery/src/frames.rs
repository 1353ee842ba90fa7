//! Events as the feed holds them — each encoded once, as an SSE frame whose `data` is the
//! delivered JSON, shared by every client — and the other SSE frames.

use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde_json::json;
use spool_proto::{Audience, Event, EventType, Site};

/// One encoding of an event: the SSE frame `id: <seq>\ndata: <json>\n\n`, whose `data` is
/// also the poll's JSON.
#[derive(Debug, Clone, PartialEq)]
struct Encoded {
    frame: Bytes,
    json: Range<usize>,
}

impl Encoded {
    fn new(event: &Event) -> Result<Encoded, serde_json::Error> {
        let json = serde_json::to_vec(event)?;
        let head = format!("id: {}\ndata: ", event.seq);
        let mut frame = Vec::with_capacity(head.len() + json.len() + 2);
        frame.extend_from_slice(head.as_bytes());
        frame.extend_from_slice(&json);
        frame.extend_from_slice(b"\n\n");
        Ok(Encoded {
            json: head.len()..head.len() + json.len(),
            frame: Bytes::from(frame),
        })
    }
}

/// One event of `SPOOL_EVENTS`, ready to send, encoded once and shared by every client:
/// as preview readers see it (every field), and as visitors see it (the item cut to the
/// site's `public_fields`; the same bytes when nothing is cut, and none for a preview-only
/// event, which visitors never get).
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEvent {
    pub seq: u64,
    pub site: String,
    pub collection: String,
    pub audience: Audience,
    pub kind: EventType,
    /// When the ingest received it (a held event's deadline counts from here).
    pub received_at: SystemTime,
    full: Encoded,
    /// `None`: visitors get `full` (public event, nothing cut) or nothing (preview-only).
    public: Option<Encoded>,
}

impl FeedEvent {
    /// Encodes a stored message (the event without `seq`) found at stream sequence `seq`;
    /// `site_of` finds the event's site (if the registry still has it), which says which
    /// item fields visitors see (absent: the defaults).
    pub fn from_stored(
        seq: u64,
        payload: &[u8],
        site_of: &dyn Fn(&str) -> Option<Arc<Site>>,
    ) -> Result<FeedEvent, serde_json::Error> {
        let mut event: Event = serde_json::from_slice(payload)?;
        event.seq = seq;
        let full = Encoded::new(&event)?;
        let public = match event.audience {
            Audience::Preview => None,
            Audience::Public => {
                let item = match site_of(event.site.as_str()) {
                    Some(site) => site.public_item(&event.item),
                    None => Site::default_public_item(&event.item),
                };
                if item == event.item {
                    None
                } else {
                    event.item = item;
                    Some(Encoded::new(&event)?)
                }
            }
        };
        Ok(FeedEvent {
            seq,
            site: event.site.to_string(),
            collection: event.collection.to_string(),
            audience: event.audience,
            kind: event.kind,
            received_at: event.received_at.into(),
            full,
            public,
        })
    }

    /// This event marked `"fresh": false`: held for its site's revalidation targets, it goes
    /// out without all of them having answered `2xx` in time.
    pub fn stale(&self) -> FeedEvent {
        let mark = |encoded: &Encoded| {
            let json = &encoded.frame[encoded.json.clone()];
            let mut marked = Vec::with_capacity(json.len() + 16);
            marked.extend_from_slice(b"{\"fresh\":false,");
            marked.extend_from_slice(json.get(1..).unwrap_or_default());
            let head = format!("id: {}\ndata: ", self.seq);
            let mut frame = Vec::with_capacity(head.len() + marked.len() + 2);
            frame.extend_from_slice(head.as_bytes());
            frame.extend_from_slice(&marked);
            frame.extend_from_slice(b"\n\n");
            Encoded {
                json: head.len()..head.len() + marked.len(),
                frame: Bytes::from(frame),
            }
        };
        FeedEvent {
            full: mark(&self.full),
            public: self.public.as_ref().map(mark),
            ..self.clone()
        }
    }

    fn encoded(&self, preview: bool) -> &Encoded {
        match (&self.public, preview) {
            (Some(public), false) => public,
            _ => &self.full,
        }
    }

    /// The SSE frame for a reader with (or without) preview rights (a cheap, shared
    /// handle). Only meaningful for events the reader may see.
    pub fn frame(&self, preview: bool) -> Bytes {
        self.encoded(preview).frame.clone()
    }

    /// The SSE frame, to copy into a larger chunk (no reference counting).
    pub fn frame_bytes(&self, preview: bool) -> &[u8] {
        &self.encoded(preview).frame
    }

    /// Bytes held for this event.
    pub fn size(&self) -> usize {
        self.full.frame.len()
            + self.public.as_ref().map_or(0, |p| p.frame.len())
            + std::mem::size_of::<FeedEvent>()
            + self.site.len()
            + self.collection.len()
    }

    /// The event's paths and tags (read back from its encoding: asked for rarely, by
    /// `event: revalidated`, so not kept twice).
    pub fn paths_and_tags(&self) -> (Vec<String>, Vec<String>) {
        #[derive(serde::Deserialize)]
        struct Asked {
            #[serde(default)]
            paths: Vec<String>,
            #[serde(default)]
            tags: Vec<String>,
        }
        let encoded = &self.full;
        serde_json::from_slice::<Asked>(&encoded.frame[encoded.json.clone()])
            .map(|a| (a.paths, a.tags))
            .unwrap_or_default()
    }

    /// The delivered event JSON (a slice of the frame; no copy).
    pub fn json(&self, preview: bool) -> Bytes {
        let encoded = self.encoded(preview);
        encoded.frame.slice(encoded.json.clone())
    }
}

/// `retry: <ms>`: how long a browser waits before reconnecting.
pub fn retry(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// The first frame of a stream: the `retry:` hint, the client's position as its `id:`
/// (where a reconnection resumes from) and `event: ready` with the last sequence this
/// server knows.
pub fn ready(retry_ms: u64, cursor: u64, last_seq: u64) -> Bytes {
    Bytes::from(format!(
        "retry: {retry_ms}\nid: {cursor}\nevent: ready\ndata: {}\n\n",
        json!({ "last_seq": last_seq })
    ))
}

/// `event: goaway`: the site has as many streams open here as it may; the client should
/// long-poll instead (`@spool-live/client` does), and a plain EventSource comes back after
/// `retry_ms`.
pub fn goaway(reason: &str, retry_ms: u64) -> Bytes {
    Bytes::from(format!(
        "retry: {retry_ms}\nevent: goaway\ndata: {}\n\n",
        json!({ "reason": reason, "retry_ms": retry_ms })
    ))
}

/// `event: token_expired`: the reader's subscriber token expired; the stream ends. The
/// client asks its site for a new token and resumes from its last id.
pub fn token_expired() -> Bytes {
    Bytes::from_static(b"event: token_expired\ndata: {\"reason\":\"token_expired\"}\n\n")
}

/// `event: position`: the client is caught up to `seq` though its last event is older (the
/// events after it were other sites' or collections'). Its `id:` makes a reconnection resume
/// from there, which the window still holds.
pub fn position(seq: u64) -> Bytes {
    Bytes::from(format!(
        "id: {seq}\nevent: position\ndata: {}\n\n",
        json!({ "seq": seq })
    ))
}

/// `event: reset`: the cursor can't be honoured (history truncated, or ahead of the stream).
pub fn reset(reset: &Reset) -> Bytes {
    let data = serde_json::to_string(reset).unwrap_or_default();
    Bytes::from(format!("event: reset\ndata: {data}\n\n"))
}

/// The heartbeat comment.
pub fn ping() -> Bytes {
    Bytes::from_static(b": ping\n\n")
}

/// Why a client's cursor was moved, as sent in `event: reset` and the poll's `reset`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reset {
    /// `history_truncated`: events after the cursor are no longer retained.
    /// `cursor_ahead`: the cursor is beyond the stream's last event (another stream's id).
    pub reason: &'static str,
    /// The first sequence still retained.
    pub first_seq: u64,
}

/// For events read without a registry at hand (tests): every site's defaults.
pub fn no_site(_: &str) -> Option<Arc<Site>> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORED: &str = r#"{"id":"msg_1","site":"acme","type":"content.published","collection":"blog",
        "item":{"id":"42","slug":"my-post","title":"My post"},"paths":["/blog/my-post"],"tags":["blog"],
        "occurred_at":"2026-11-25T10:00:00Z","received_at":"2026-11-25T10:00:00.012Z"}"#;

    #[test]
    fn a_frame_carries_the_seq_as_id_and_in_the_json() {
        let e = FeedEvent::from_stored(123, STORED.as_bytes(), &no_site).unwrap();
        let frame = String::from_utf8(e.frame(true).to_vec()).unwrap();
        assert!(frame.starts_with("id: 123\ndata: {"), "{frame}");
        assert!(frame.ends_with("}\n\n"));
        assert_eq!(frame.matches('\n').count(), 3, "one data line only");
        let json: serde_json::Value = serde_json::from_slice(&e.json(true)).unwrap();
        assert_eq!(json["seq"], 123);
        assert_eq!(json["item"]["title"], "My post");
        assert_eq!(json["received_at"], "2026-11-25T10:00:00.012Z");
        assert_eq!((e.site.as_str(), e.collection.as_str()), ("acme", "blog"));
    }

    #[test]
    fn newlines_in_content_stay_escaped() {
        let stored = STORED.replace("My post", "line one\\nline two");
        let e = FeedEvent::from_stored(1, stored.as_bytes(), &no_site).unwrap();
        assert_eq!(e.frame(true).iter().filter(|b| **b == b'\n').count(), 3);
    }

    #[test]
    fn control_frames() {
        assert_eq!(&retry(3000)[..], b"retry: 3000\n\n");
        assert_eq!(
            &ready(3000, 5, 7)[..],
            b"retry: 3000\nid: 5\nevent: ready\ndata: {\"last_seq\":7}\n\n"
        );
        assert_eq!(
            &position(9)[..],
            b"id: 9\nevent: position\ndata: {\"seq\":9}\n\n"
        );
        let r = reset(&Reset {
            reason: "history_truncated",
            first_seq: 5,
        });
        assert_eq!(
            &r[..],
            b"event: reset\ndata: {\"reason\":\"history_truncated\",\"first_seq\":5}\n\n"
        );
    }

    #[test]
    fn a_bad_stored_message_is_an_error() {
        assert!(FeedEvent::from_stored(1, b"{}", &no_site).is_err());
    }

    #[test]
    fn a_stale_event_says_so_in_both_encodings() {
        let e = FeedEvent::from_stored(5, STORED.as_bytes(), &no_site)
            .unwrap()
            .stale();
        for preview in [true, false] {
            let json: serde_json::Value = serde_json::from_slice(&e.json(preview)).unwrap();
            assert_eq!(json["fresh"], false);
            assert_eq!(json["seq"], 5);
            let frame = String::from_utf8(e.frame(preview).to_vec()).unwrap();
            assert!(
                frame.starts_with("id: 5\ndata: {\"fresh\":false,") && frame.ends_with("}\n\n")
            );
        }
    }

    #[test]
    fn visitors_get_the_public_fields_and_preview_readers_everything() {
        let e = FeedEvent::from_stored(5, STORED.as_bytes(), &no_site).unwrap();
        let public: serde_json::Value = serde_json::from_slice(&e.json(false)).unwrap();
        assert_eq!(
            public["item"],
            serde_json::json!({"id": "42", "slug": "my-post"})
        );
        assert_eq!(public["audience"], "public");
        let full: serde_json::Value = serde_json::from_slice(&e.json(true)).unwrap();
        assert_eq!(full["item"]["title"], "My post");
        assert!(String::from_utf8_lossy(&e.frame(false)).starts_with("id: 5\ndata: {"));
        // Nothing to cut: one encoding, shared.
        let plain = STORED.replace(r#","title":"My post""#, "");
        let e = FeedEvent::from_stored(6, plain.as_bytes(), &no_site).unwrap();
        assert_eq!(e.frame(false).as_ptr(), e.frame(true).as_ptr());
        // A draft: preview readers only.
        let draft = STORED
            .replace("content.published", "content.updated")
            .replace(
                r#""collection":"blog","#,
                r#""collection":"blog","audience":"preview","#,
            );
        let e = FeedEvent::from_stored(7, draft.as_bytes(), &no_site).unwrap();
        assert_eq!(e.audience, Audience::Preview);
        assert_eq!(e.frame(false).as_ptr(), e.frame(true).as_ptr());
    }
}
