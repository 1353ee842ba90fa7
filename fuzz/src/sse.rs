//! An event-stream parser written from the WHATWG HTML standard's rules
//! (<https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation>),
//! independent of the delivery service's code: what a browser's `EventSource` makes of the
//! bytes the service writes.
//!
//! - The stream is UTF-8 (invalid sequences become U+FFFD); one leading BOM is dropped.
//! - Lines end at CRLF, a lone LF or a lone CR.
//! - A blank line dispatches the event being built, if its data buffer is not empty.
//! - A line starting with `:` is a comment. Otherwise the field name is up to the first
//!   `:` (the whole line if there is none), and the value is the rest with one leading
//!   space removed.
//! - `event` sets the type, `data` appends the value and a LF, `id` sets the last event id
//!   (unless the value has a NUL), `retry` sets the reconnection time if the value is all
//!   ASCII digits; other fields are ignored.
//! - The data's final LF is removed on dispatch; the type defaults to `message`; the last
//!   event id persists across events. An event not ended by a blank line is never
//!   dispatched.

/// One dispatched event, as `EventSource` hands it to a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `MessageEvent.type`: the `event` field, or `message`.
    pub kind: String,
    pub data: String,
    /// `MessageEvent.lastEventId`.
    pub last_event_id: String,
}

/// Everything a stream told the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub events: Vec<Event>,
    /// The `Last-Event-ID` a reconnection would send (empty: none).
    pub last_event_id: String,
    /// The last valid `retry` (ms), if any.
    pub retry: Option<u64>,
    /// The text of every comment line, without its `:`.
    pub comments: Vec<String>,
    /// Bytes after the last complete line (a frame cut short).
    pub incomplete: bool,
}

/// Parses a whole stream.
pub fn parse(bytes: &[u8]) -> Parsed {
    let text = String::from_utf8_lossy(bytes);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut out = Parsed::default();
    let mut data = String::new();
    let mut kind = String::new();
    let mut rest = text;
    loop {
        let Some(end) = rest.find(['\r', '\n']) else {
            out.incomplete = !rest.is_empty();
            break;
        };
        let line = &rest[..end];
        let after = if rest[end..].starts_with("\r\n") {
            end + 2
        } else {
            end + 1
        };
        rest = &rest[after..];
        if line.is_empty() {
            if !data.is_empty() {
                data.pop();
                out.events.push(Event {
                    kind: if kind.is_empty() {
                        "message".to_owned()
                    } else {
                        kind.clone()
                    },
                    data: std::mem::take(&mut data),
                    last_event_id: out.last_event_id.clone(),
                });
            }
            data.clear();
            kind.clear();
            continue;
        }
        if let Some(comment) = line.strip_prefix(':') {
            out.comments.push(comment.to_owned());
            continue;
        }
        let (field, value) = match line.find(':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(' ').unwrap_or(value))
            }
            None => (line, ""),
        };
        match field {
            "event" => kind = value.to_owned(),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => out.last_event_id = value.to_owned(),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                // A value too large for u64 is still all digits; saturate like a browser's
                // reconnection time would be clamped.
                out.retry = Some(value.parse().unwrap_or(u64::MAX));
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, data: &str, id: &str) -> Event {
        Event {
            kind: kind.into(),
            data: data.into(),
            last_event_id: id.into(),
        }
    }

    // The examples of the standard's section 9.2.
    #[test]
    fn the_standards_examples() {
        let p = parse(b"data: YHOO\ndata: +2\ndata: 10\n\n");
        assert_eq!(p.events, [event("message", "YHOO\n+2\n10", "")]);

        let p = parse(b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n");
        assert_eq!(
            p.events,
            [
                event("message", "first event", "1"),
                event("message", "second event", ""),
                event("message", " third event", ""),
            ]
        );
        assert_eq!(p.comments, [" test stream"]);

        let p = parse(b"data\n\ndata\ndata\n\ndata:");
        assert_eq!(
            p.events,
            [event("message", "", ""), event("message", "\n", "")]
        );
        assert!(p.incomplete);

        let p = parse(b"data:test\n\ndata: test\n\n");
        assert_eq!(p.events[0], p.events[1]);
    }

    #[test]
    fn line_ends_bom_retry_and_nul_ids() {
        let p = parse(
            "\u{feff}retry: 10\r\nevent: a\rdata: x\r\n\r\nid: 7\0\nretry: 1x\nid: 8\ndata: y\n\n"
                .as_bytes(),
        );
        assert_eq!(p.events, [event("a", "x", ""), event("message", "y", "8")]);
        assert_eq!(p.retry, Some(10));
        assert_eq!(p.last_event_id, "8");
        assert!(!p.incomplete);
        let p = parse(b"event: only\n\n");
        assert!(p.events.is_empty(), "no data, no event");
    }
}
