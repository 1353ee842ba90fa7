//! Everything a client missed after its cursor: from the window when it still holds it,
//! else from JetStream. Both the SSE stream and the poll are built on this.

use std::sync::Arc;

use crate::frames::{FeedEvent, Reset};
use crate::history::{plan, History, HistoryError};
use crate::hub::Hub;
use crate::window::Filter;

#[derive(Debug)]
pub struct CatchUp {
    /// Set when the cursor had to move (history truncated, or ahead of the stream).
    pub reset: Option<Reset>,
    pub events: Vec<Arc<FeedEvent>>,
    /// The cursor after these events: the last event's sequence, or where reading started.
    pub cursor: u64,
    /// Fewer than `limit` came back: the client is caught up (with the window's or the
    /// stream's end at the time of the call).
    pub complete: bool,
}

/// Up to `limit` events of `filter` after `cursor`.
pub async fn catch_up(
    hub: &Hub,
    history: &History,
    filter: &Filter,
    cursor: u64,
    limit: usize,
) -> Result<CatchUp, HistoryError> {
    if let Some(events) = hub.recent(cursor, filter, limit) {
        metrics::counter!("spool_delivery_replays_total", "source" => "window").increment(1);
        return Ok(finish(None, events, cursor, limit));
    }
    let (first_seq, last_seq) = history.bounds().await?;
    let plan = plan(cursor, first_seq, last_seq);
    let events = history.read(filter, plan.from, limit).await?;
    Ok(finish(plan.reset, events, plan.from, limit))
}

fn finish(reset: Option<Reset>, events: Vec<Arc<FeedEvent>>, from: u64, limit: usize) -> CatchUp {
    CatchUp {
        reset,
        cursor: events.last().map_or(from, |e| e.seq),
        complete: events.len() < limit,
        events,
    }
}
