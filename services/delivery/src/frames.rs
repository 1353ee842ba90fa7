//! Events as the feed holds them — each encoded once, as an SSE frame whose `data` is the
//! delivered JSON, shared by every client — and the other SSE frames.

use std::ops::Range;

use bytes::Bytes;
use serde_json::json;
use spool_proto::Event;

/// One event of `SPOOL_EVENTS`, ready to send: `id: <seq>\ndata: <json>\n\n`.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEvent {
    pub seq: u64,
    pub site: String,
    pub collection: String,
    frame: Bytes,
    json: Range<usize>,
}

impl FeedEvent {
    /// Encodes a stored message (the event without `seq`) found at stream sequence `seq`.
    pub fn from_stored(seq: u64, payload: &[u8]) -> Result<FeedEvent, serde_json::Error> {
        let mut event: Event = serde_json::from_slice(payload)?;
        event.seq = seq;
        let json = serde_json::to_vec(&event)?;
        let head = format!("id: {seq}\ndata: ");
        let mut frame = Vec::with_capacity(head.len() + json.len() + 2);
        frame.extend_from_slice(head.as_bytes());
        frame.extend_from_slice(&json);
        frame.extend_from_slice(b"\n\n");
        Ok(FeedEvent {
            seq,
            site: event.site.to_string(),
            collection: event.collection.to_string(),
            json: head.len()..head.len() + json.len(),
            frame: Bytes::from(frame),
        })
    }

    /// The SSE frame (a cheap, shared handle).
    pub fn frame(&self) -> Bytes {
        self.frame.clone()
    }

    /// The SSE frame, to copy into a larger chunk (no reference counting).
    pub fn frame_bytes(&self) -> &[u8] {
        &self.frame
    }

    /// Bytes held for this event.
    pub fn size(&self) -> usize {
        self.frame.len()
            + std::mem::size_of::<FeedEvent>()
            + self.site.len()
            + self.collection.len()
    }

    /// The delivered event JSON (a slice of the frame; no copy).
    pub fn json(&self) -> Bytes {
        self.frame.slice(self.json.clone())
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

#[cfg(test)]
mod tests {
    use super::*;

    const STORED: &str = r#"{"id":"msg_1","site":"acme","type":"content.published","collection":"blog",
        "item":{"id":"42","slug":"my-post","title":"My post"},"paths":["/blog/my-post"],"tags":["blog"],
        "occurred_at":"2026-11-25T10:00:00Z","received_at":"2026-11-25T10:00:00.012Z"}"#;

    #[test]
    fn a_frame_carries_the_seq_as_id_and_in_the_json() {
        let e = FeedEvent::from_stored(123, STORED.as_bytes()).unwrap();
        let frame = String::from_utf8(e.frame().to_vec()).unwrap();
        assert!(frame.starts_with("id: 123\ndata: {"), "{frame}");
        assert!(frame.ends_with("}\n\n"));
        assert_eq!(frame.matches('\n').count(), 3, "one data line only");
        let json: serde_json::Value = serde_json::from_slice(&e.json()).unwrap();
        assert_eq!(json["seq"], 123);
        assert_eq!(json["item"]["title"], "My post");
        assert_eq!(json["received_at"], "2026-11-25T10:00:00.012Z");
        assert_eq!((e.site.as_str(), e.collection.as_str()), ("acme", "blog"));
    }

    #[test]
    fn newlines_in_content_stay_escaped() {
        let stored = STORED.replace("My post", "line one\\nline two");
        let e = FeedEvent::from_stored(1, stored.as_bytes()).unwrap();
        assert_eq!(e.frame().iter().filter(|b| **b == b'\n').count(), 3);
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
        assert!(FeedEvent::from_stored(1, b"{}").is_err());
    }
}
