//! Everything a client missed after its cursor: from the window when it still holds it,
//! else from JetStream and then the window. Both the SSE stream and the poll are built on
//! this.
//!
//! The cursor moves with the stream, not only with the client's own events: a page that
//! reaches the end leaves the client at the end of what was read (the window's, or the
//! stream's), so a quiet site's clients resume from the window next time instead of
//! reading JetStream again.

use std::sync::Arc;

use crate::frames::{FeedEvent, Reset};
use crate::history::{History, HistoryError};
use crate::hub::Hub;
use crate::window::Filter;

/// Most bytes of events one catch-up page holds (at least one event): what a client costs
/// the process in memory while its page is written, whatever its `limit`.
pub const PAGE_BYTES: usize = 1024 * 1024;

#[derive(Debug)]
pub struct CatchUp {
    /// Set when the cursor had to move (history truncated, or ahead of the stream).
    pub reset: Option<Reset>,
    pub events: Vec<Arc<FeedEvent>>,
    /// Where the client is after these events: the last one's sequence, or, once caught
    /// up, the end of what was read.
    pub cursor: u64,
    /// Nothing more after `cursor` as of the read: the client is caught up.
    pub complete: bool,
}

/// Up to `limit` events of `filter` after `cursor`, and about [`PAGE_BYTES`] of them.
pub async fn catch_up(
    hub: &Hub,
    history: &History,
    filter: &Filter,
    cursor: u64,
    limit: usize,
) -> Result<CatchUp, HistoryError> {
    if let Some(page) = hub.recent(cursor, filter, limit, PAGE_BYTES) {
        metrics::counter!("spool_delivery_replays_total", "source" => "window").increment(1);
        return Ok(CatchUp {
            reset: None,
            events: page.events,
            cursor: page.cursor,
            complete: page.complete,
        });
    }
    // Taken before the read: everything up to here was in the stream when it was read.
    let window_start = hub.window_start();
    let read = history.read(filter, cursor, limit, PAGE_BYTES).await?;
    let mut found = CatchUp {
        reset: read.reset,
        events: read.events,
        cursor: read.cursor,
        complete: read.complete,
    };
    // Nothing the site still holds back (`notify: after_revalidate`) goes out from the
    // stream either: the client stops before it, and hears of it when it is released.
    let released_end = hub.released_end(&filter.site);
    if found.cursor > released_end {
        found.events.retain(|e| e.seq <= released_end);
        // Never back past the client's own position (it may come from a replica that
        // released more already).
        let own = if found.reset.is_some() { 0 } else { cursor };
        found.cursor = released_end.max(own);
        found.complete = true;
        return Ok(found);
    }
    if !found.complete {
        return Ok(found);
    }
    // The read reached the stream's end, and the window holds everything after its start
    // (the window's oldest event is far older than any replica's lag): what follows comes
    // from memory, and the cursor moves to the window's end. If the feed is behind here
    // (starting, or the cursor came from a replica ahead of it), the client is caught up
    // with the stream as read.
    let from = found.cursor.max(window_start);
    let room = limit.saturating_sub(found.events.len());
    let bytes: usize = found.events.iter().map(|e| e.size()).sum();
    if let Some(rest) = hub.recent(from, filter, room, PAGE_BYTES.saturating_sub(bytes).max(1)) {
        found.events.extend(rest.events);
        found.cursor = rest.cursor;
        found.complete = rest.complete;
    }
    Ok(found)
}
