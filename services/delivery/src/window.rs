//! The recent-events window of one process: every event the feed saw after a known point,
//! oldest first, bounded in count and in bytes. Most resumes are served from here without
//! asking JetStream. No I/O.

use std::collections::VecDeque;
use std::sync::Arc;

use spool_proto::Audience;

use crate::frames::FeedEvent;

/// Which events a client gets: one site, optionally some collections; preview-only events
/// only with preview rights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub site: String,
    /// `None` = every collection.
    pub collections: Option<Vec<String>>,
    /// The reader may see preview-only events (drafts) and every item field.
    pub preview: bool,
}

impl Filter {
    pub fn matches(&self, event: &FeedEvent) -> bool {
        event.site == self.site && self.wants(event)
    }

    /// Whether the client gets the event (for events known to be its site's): its
    /// collection, and its audience.
    pub fn wants(&self, event: &FeedEvent) -> bool {
        self.wants_kind(&event.collection, event.audience)
    }

    /// Whether the client gets events of this collection and audience.
    pub fn wants_kind(&self, collection: &str, audience: Audience) -> bool {
        (self.preview || audience == Audience::Public)
            && self
                .collections
                .as_ref()
                .is_none_or(|list| list.iter().any(|c| c == collection))
    }
}

#[derive(Debug)]
pub struct Window {
    events: VecDeque<Arc<FeedEvent>>,
    capacity: usize,
    max_bytes: usize,
    bytes: usize,
    /// Every event with a greater sequence that the feed has seen is in the window.
    complete_after: u64,
}

impl Window {
    /// An empty window of at most `capacity` events and `max_bytes` of frames, for a feed
    /// that starts after `last_seq`.
    pub fn new(capacity: usize, max_bytes: usize, last_seq: u64) -> Window {
        Window {
            events: VecDeque::with_capacity(capacity.min(4096)),
            capacity: capacity.max(1),
            max_bytes,
            bytes: 0,
            complete_after: last_seq,
        }
    }

    pub fn push(&mut self, event: Arc<FeedEvent>) {
        self.bytes += event.size();
        self.events.push_back(event);
        while self.events.len() > self.capacity
            || (self.bytes > self.max_bytes && self.events.len() > 1)
        {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.size();
                self.complete_after = old.seq;
            }
        }
    }

    /// Can every event after `cursor` be served from here?
    pub fn covers(&self, cursor: u64) -> bool {
        cursor >= self.complete_after
    }

    /// The last sequence the feed has seen.
    pub fn last_seq(&self) -> u64 {
        self.events.back().map_or(self.complete_after, |e| e.seq)
    }

    /// Puts `event` in place of the one with its sequence (a held event released marked).
    pub fn replace(&mut self, event: Arc<FeedEvent>) {
        if let Ok(i) = self.events.binary_search_by_key(&event.seq, |e| e.seq) {
            self.bytes = self.bytes - self.events[i].size() + event.size();
            self.events[i] = event;
        }
    }

    /// The event with this sequence, if the window holds it.
    pub fn get(&self, seq: u64) -> Option<&Arc<FeedEvent>> {
        let i = self.events.binary_search_by_key(&seq, |e| e.seq).ok()?;
        self.events.get(i)
    }

    /// Where the window starts: it holds every event after this sequence.
    pub fn start(&self) -> u64 {
        self.complete_after
    }

    /// Up to `limit` events after `cursor` that `filter` wants, and about `max_bytes` of
    /// them (at least one), oldest first. Only meaningful when [`Window::covers`] the
    /// cursor. Nothing after `end` is read: the last sequence the feed has seen, or, while
    /// the site holds an event back, the one before it. A page that reaches `end` moves the
    /// cursor there: the client is caught up, even if the last events were other sites'.
    pub fn page(
        &self,
        cursor: u64,
        filter: &Filter,
        limit: usize,
        max_bytes: usize,
        end: u64,
    ) -> Page {
        let start = self.events.partition_point(|e| e.seq <= cursor);
        let mut events: Vec<Arc<FeedEvent>> = Vec::new();
        let mut bytes = 0;
        let upto = self.events.range(start..).take_while(|e| e.seq <= end);
        for event in upto.filter(|e| filter.matches(e)) {
            if events.len() >= limit || (bytes >= max_bytes && !events.is_empty()) {
                return Page {
                    cursor: events.last().map_or(cursor, |e| e.seq),
                    events,
                    complete: false,
                };
            }
            bytes += event.size();
            events.push(event.clone());
        }
        Page {
            events,
            cursor: end.max(cursor),
            complete: true,
        }
    }
}

/// A page of events read for a client.
#[derive(Debug)]
pub struct Page {
    pub events: Vec<Arc<FeedEvent>>,
    /// Where the client is after this page: the last event's sequence, or, when the page
    /// reached the end, that end.
    pub cursor: u64,
    /// Nothing more after `cursor` (as of the read).
    pub complete: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn event(seq: u64, site: &str, collection: &str) -> Arc<FeedEvent> {
        let stored = serde_json::json!({
            "id": format!("m{seq}"), "site": site, "type": "content.updated", "collection": collection,
            "item": {"id": "1"}, "paths": [], "tags": [],
            "occurred_at": "2026-11-25T10:00:00Z", "received_at": "2026-11-25T10:00:00Z"
        });
        Arc::new(
            FeedEvent::from_stored(seq, stored.to_string().as_bytes(), &crate::frames::no_site)
                .unwrap(),
        )
    }

    fn site(s: &str) -> Filter {
        Filter {
            site: s.into(),
            collections: None,
            preview: false,
        }
    }

    #[test]
    fn serves_after_a_cursor_filtered_and_limited() {
        let mut w = Window::new(10, usize::MAX, 100);
        for seq in 101..=106 {
            w.push(event(
                seq,
                if seq % 2 == 0 { "a" } else { "b" },
                if seq < 104 { "blog" } else { "pages" },
            ));
        }
        let seqs = |p: Page| p.events.iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(
            seqs(w.page(100, &site("a"), 10, usize::MAX, w.last_seq())),
            [102, 104, 106]
        );
        assert_eq!(
            seqs(w.page(102, &site("a"), 10, usize::MAX, w.last_seq())),
            [104, 106]
        );
        assert_eq!(
            seqs(w.page(100, &site("a"), 2, usize::MAX, w.last_seq())),
            [102, 104]
        );
        let blog = Filter {
            site: "b".into(),
            collections: Some(vec!["blog".into()]),
            preview: false,
        };
        assert_eq!(
            seqs(w.page(100, &blog, 10, usize::MAX, w.last_seq())),
            [101, 103]
        );
        assert!(w.covers(100) && !w.covers(99));
        assert_eq!(w.last_seq(), 106);
    }

    #[test]
    fn a_page_that_reaches_the_end_moves_the_cursor_there() {
        let mut w = Window::new(10, usize::MAX, 100);
        for seq in 101..=105 {
            w.push(event(seq, if seq == 102 { "a" } else { "b" }, "blog"));
        }
        let caught_up = w.page(100, &site("a"), 10, usize::MAX, 107);
        assert_eq!(
            (caught_up.events.len(), caught_up.cursor, caught_up.complete),
            (1, 107, true)
        );
        let quiet = w.page(100, &site("c"), 10, usize::MAX, 105);
        assert_eq!(
            (quiet.events.len(), quiet.cursor, quiet.complete),
            (0, 105, true)
        );
        let full = w.page(100, &site("b"), 2, usize::MAX, 105);
        assert_eq!(
            (full.cursor, full.complete),
            (103, false),
            "a full page stops at its last event"
        );
        let exactly = w.page(100, &site("b"), 4, usize::MAX, 105);
        assert_eq!(
            (exactly.cursor, exactly.complete),
            (105, true),
            "as many as the limit, and no more"
        );
        let one = event(101, "b", "blog").size();
        let by_bytes = w.page(100, &site("b"), 10, one + 1, 105);
        assert_eq!(
            (by_bytes.events.len(), by_bytes.cursor, by_bytes.complete),
            (2, 103, false)
        );
        let tiny = w.page(100, &site("b"), 10, 1, 105);
        assert_eq!(
            tiny.events.len(),
            1,
            "at least one event, however small the byte budget"
        );
    }

    #[test]
    fn eviction_moves_the_complete_point() {
        let mut w = Window::new(3, usize::MAX, 0);
        assert_eq!(w.last_seq(), 0);
        for seq in 1..=5 {
            w.push(event(seq, "a", "blog"));
        }
        assert!(w.covers(2) && !w.covers(1));
        assert_eq!(
            w.page(2, &site("a"), 10, usize::MAX, w.last_seq())
                .events
                .len(),
            3
        );
    }

    #[test]
    fn bytes_bound_the_window_too() {
        let one = event(1, "a", "blog").size();
        // Room for three events (with a few bytes of slack for longer ids).
        let mut w = Window::new(100, one * 3 + 3, 0);
        for seq in 1..=9 {
            w.push(event(seq, "a", "blog"));
        }
        assert!(!w.covers(0));
        assert!(w.covers(6) && !w.covers(5));
        assert_eq!(
            w.page(6, &site("a"), 100, usize::MAX, w.last_seq())
                .events
                .len(),
            3
        );
    }

    proptest! {
        /// Whatever the capacity and traffic, a covered cursor gets exactly the site's
        /// events after it, in order.
        #[test]
        fn a_covered_cursor_gets_exactly_the_later_events(
            capacity in 1usize..20, sites in proptest::collection::vec(0u8..3, 1..60), cursor in 0u64..70,
        ) {
            let mut w = Window::new(capacity, usize::MAX, 0);
            for (i, s) in sites.iter().enumerate() {
                w.push(event(i as u64 + 1, &format!("s{s}"), "blog"));
            }
            if w.covers(cursor) {
                let got: Vec<u64> = w.page(cursor, &site("s0"), usize::MAX, usize::MAX, w.last_seq()).events.iter().map(|e| e.seq).collect();
                let want: Vec<u64> = sites.iter().enumerate()
                    .map(|(i, s)| (i as u64 + 1, *s))
                    .filter(|(seq, s)| *seq > cursor && *s == 0)
                    .map(|(seq, _)| seq)
                    .collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}
