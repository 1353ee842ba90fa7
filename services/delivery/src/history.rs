//! Reading a site's history from JetStream, for cursors the window no longer holds.
//!
//! What a history read costs JetStream is bounded whatever readers do: a read is a batched
//! direct get (no consumer is created), bounded in messages and bytes; at most
//! `SPOOL_HISTORY_READS` run at once in a process and `SPOOL_HISTORY_READS_PER_SITE` for one
//! site (over either, the reader is told to come back later: [`HistoryError::Busy`]); and
//! the stream's bounds are asked for at most once per [`BOUNDS_TTL`], not per read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream;
use spool_platform::range::{self, Range};
use spool_platform::registry::SiteRegistry;
use spool_proto::names::EVENTS_STREAM;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::frames::{FeedEvent, Reset};
use crate::window::Filter;

/// How long one history read may take before the client is told to come back.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the stream's bounds are trusted before they are asked for again.
pub const BOUNDS_TTL: Duration = Duration::from_secs(1);

/// Least time between two questions for the bounds, however many readers ask.
const MIN_BOUNDS_REFRESH: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Too many history reads in progress (in the process, or for the site).
    #[error("too many history reads in progress; come back later")]
    Busy,
    #[error("reading history from JetStream failed: {0}")]
    Failed(String),
}

fn err(e: impl std::fmt::Display) -> HistoryError {
    HistoryError::Failed(e.to_string())
}

/// Where a catch-up starts, given what the stream still holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub from: u64,
    pub reset: Option<Reset>,
}

/// Decides where to read from for a client at `cursor` when the stream holds
/// `first_seq..=last_seq` (`first_seq = last_seq + 1` when empty). `0` asks for all
/// retained history and is never a reset.
pub fn plan(cursor: u64, first_seq: u64, last_seq: u64) -> Plan {
    if cursor != 0 && cursor.saturating_add(1) < first_seq {
        return Plan {
            from: first_seq - 1,
            reset: Some(Reset {
                reason: "history_truncated",
                first_seq,
            }),
        };
    }
    if cursor > last_seq {
        return Plan {
            from: last_seq,
            reset: Some(Reset {
                reason: "cursor_ahead",
                first_seq,
            }),
        };
    }
    Plan {
        from: cursor,
        reset: None,
    }
}

/// What one history read found.
#[derive(Debug)]
pub struct Read {
    /// Set when the cursor had to move (history truncated, or ahead of the stream).
    pub reset: Option<Reset>,
    /// The filter's events after the cursor, oldest first.
    pub events: Vec<Arc<FeedEvent>>,
    /// Where the next read starts: the last sequence read (the site's, whatever the
    /// collections asked for), or where this one started.
    pub cursor: u64,
    /// The read reached the stream's end.
    pub complete: bool,
}

/// How many history reads may run at once.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    pub process: usize,
    pub per_site: usize,
}

#[derive(Clone)]
pub struct History {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    /// Which item fields of a site's events visitors see.
    registry: SiteRegistry,
    reads: Arc<Semaphore>,
    per_site: usize,
    /// Reads in progress per site (sites with none are not kept).
    sites: Mutex<HashMap<String, usize>>,
    /// The stream's `(first_seq, last_seq)` and when they were read; the lock is held
    /// while asking, so concurrent readers share one question.
    bounds: tokio::sync::Mutex<Option<(u64, u64, Instant)>>,
}

/// A history read's place in the process's and its site's limits, released on drop.
struct Permit {
    inner: Arc<Inner>,
    site: String,
    _process: OwnedSemaphorePermit,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut sites = self
            .inner
            .sites
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = sites.get_mut(&self.site) {
            *n -= 1;
            if *n == 0 {
                sites.remove(&self.site);
            }
        }
    }
}

impl History {
    pub fn new(
        client: async_nats::Client,
        js: jetstream::Context,
        registry: SiteRegistry,
        limits: ReadLimits,
    ) -> History {
        History {
            inner: Arc::new(Inner {
                client,
                js,
                registry,
                reads: Arc::new(Semaphore::new(limits.process.max(1))),
                per_site: limits.per_site.max(1),
                sites: Mutex::default(),
                bounds: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// A place for one more read of `site`, or [`HistoryError::Busy`].
    fn permit(&self, site: &str) -> Result<Permit, HistoryError> {
        let busy = |scope: &'static str| {
            metrics::counter!("spool_delivery_history_reads_refused_total", "scope" => scope)
                .increment(1);
            HistoryError::Busy
        };
        let process = self
            .inner
            .reads
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy("process"))?;
        let mut sites = self
            .inner
            .sites
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = sites.entry(site.to_owned()).or_insert(0);
        if *n >= self.inner.per_site {
            return Err(busy("site"));
        }
        *n += 1;
        Ok(Permit {
            inner: self.inner.clone(),
            site: site.to_owned(),
            _process: process,
        })
    }

    /// The stream's `(first_seq, last_seq)`, from the cache unless it is older than
    /// [`BOUNDS_TTL`] (or `fresh` is asked for) or `cursor` is past its end (then asked
    /// again, but never more often than every [`MIN_BOUNDS_REFRESH`]: a cursor from another
    /// replica may be a moment ahead of what was cached, and must not be taken for one from
    /// another stream).
    async fn bounds(&self, cursor: u64, fresh: bool) -> Result<(u64, u64), HistoryError> {
        let asked = Instant::now();
        let mut cached = self.inner.bounds.lock().await;
        if let Some((first, last, at)) = *cached {
            // Asked for fresh bounds: those read since this call began are fresh.
            let young = if fresh {
                at >= asked
            } else {
                at.elapsed() < BOUNDS_TTL
            };
            if young && cursor <= last {
                return Ok((first, last));
            }
            tokio::time::sleep_until(at + MIN_BOUNDS_REFRESH).await;
        }
        let read = async {
            let stream = self.inner.js.get_stream(EVENTS_STREAM).await.map_err(err)?;
            let state = &stream.cached_info().state;
            Ok::<_, HistoryError>((state.first_sequence, state.last_sequence))
        };
        let (first, last) = tokio::time::timeout(READ_TIMEOUT, read)
            .await
            .map_err(err)??;
        *cached = Some((first, last, Instant::now()));
        Ok((first, last))
    }

    /// Where to read from for `cursor`. The cached bounds may be up to [`BOUNDS_TTL`] old,
    /// and the stream's start moves as old events expire: a cursor whose next event is gone
    /// must be told (`history_truncated`), never skipped past in silence. So the plan is
    /// checked against the stream itself — the next event is still there, or the bounds are
    /// asked for again — which costs one direct get of one message.
    async fn plan(&self, cursor: u64) -> Result<Plan, HistoryError> {
        let (first_seq, last_seq) = self.bounds(cursor, false).await?;
        let planned = plan(cursor, first_seq, last_seq);
        let next = cursor.saturating_add(1);
        let settled = match &planned.reset {
            // The start only moves forward: a truncation seen in old bounds is real, but
            // its `first_seq` may be out of date.
            Some(reset) => reset.reason != "history_truncated",
            None => cursor == 0 || next > last_seq || self.holds(next).await?,
        };
        if settled {
            return Ok(planned);
        }
        let (first_seq, last_seq) = self.bounds(cursor, true).await?;
        Ok(plan(cursor, first_seq, last_seq))
    }

    async fn holds(&self, seq: u64) -> Result<bool, HistoryError> {
        range::holds(&self.inner.client, EVENTS_STREAM, seq, READ_TIMEOUT)
            .await
            .map_err(err)
    }

    /// Up to `limit` events of `filter` after `cursor` (and about `max_bytes` of them),
    /// oldest first; moves the cursor first if the stream can't honour it ([`plan`]).
    pub async fn read(
        &self,
        filter: &Filter,
        cursor: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Read, HistoryError> {
        let _permit = self.permit(&filter.site)?;
        metrics::counter!("spool_delivery_replays_total", "source" => "jetstream").increment(1);
        let plan = self.plan(cursor).await?;
        let subjects = spool_proto::names::site_events_filter(&filter.site);
        let found = range::read(
            &self.inner.client,
            Range {
                stream: EVENTS_STREAM,
                filter: &subjects,
                after: plan.from,
                max_messages: limit,
                max_bytes,
            },
            READ_TIMEOUT,
        )
        .await
        .map_err(err)?;
        let complete = found.complete();
        let cursor = found.messages.last().map_or(plan.from, |m| m.seq);
        let events = found
            .messages
            .into_iter()
            .filter_map(|m| match FeedEvent::from_stored(m.seq, &m.payload, &|id| self.inner.registry.get(id)) {
                Ok(event) => Some(Arc::new(event)),
                Err(e) => {
                    tracing::error!(seq = m.seq, error = %e, "undecodable event in SPOOL_EVENTS; skipped");
                    None
                }
            })
            .filter(|event| filter.wants(event))
            .collect();
        Ok(Read {
            reset: plan.reset,
            events,
            cursor,
            complete,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        // Within the retained range: as asked.
        assert_eq!(
            plan(5, 3, 10),
            Plan {
                from: 5,
                reset: None
            }
        );
        assert_eq!(
            plan(2, 3, 10),
            Plan {
                from: 2,
                reset: None
            },
            "next is the first retained"
        );
        assert_eq!(
            plan(10, 3, 10),
            Plan {
                from: 10,
                reset: None
            }
        );
        // All history.
        assert_eq!(
            plan(0, 3, 10),
            Plan {
                from: 0,
                reset: None
            }
        );
        // Truncated.
        assert_eq!(
            plan(1, 3, 10),
            Plan {
                from: 2,
                reset: Some(Reset {
                    reason: "history_truncated",
                    first_seq: 3
                })
            }
        );
        // Ahead of the stream.
        assert_eq!(
            plan(11, 3, 10),
            Plan {
                from: 10,
                reset: Some(Reset {
                    reason: "cursor_ahead",
                    first_seq: 3
                })
            }
        );
        // An empty stream that never had events.
        assert_eq!(
            plan(0, 1, 0),
            Plan {
                from: 0,
                reset: None
            }
        );
    }
}
