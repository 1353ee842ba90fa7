//! Reading a site's history from JetStream, for cursors the window no longer holds.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use spool_proto::names::EVENTS_STREAM;

use crate::frames::{FeedEvent, Reset};
use crate::window::Filter;

/// How long one history read may take before the client is told to come back.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("reading history from JetStream failed: {0}")]
pub struct HistoryError(String);

fn err(e: impl std::fmt::Display) -> HistoryError {
    HistoryError(e.to_string())
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

#[derive(Clone)]
pub struct History {
    js: jetstream::Context,
}

impl History {
    pub fn new(js: jetstream::Context) -> History {
        History { js }
    }

    /// The stream's `(first_seq, last_seq)`.
    pub async fn bounds(&self) -> Result<(u64, u64), HistoryError> {
        let read = async {
            let mut stream = self.js.get_stream(EVENTS_STREAM).await.map_err(err)?;
            let state = stream.info().await.map_err(err)?.state.clone();
            Ok((state.first_sequence, state.last_sequence))
        };
        tokio::time::timeout(READ_TIMEOUT, read)
            .await
            .map_err(err)?
    }

    /// Up to `limit` events of `filter` after `after`, oldest first, through a short-lived
    /// ordered consumer filtered on the site's (or the collections') subjects.
    pub async fn read(
        &self,
        filter: &Filter,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<FeedEvent>>, HistoryError> {
        metrics::counter!("spool_delivery_replays_total", "source" => "jetstream").increment(1);
        tokio::time::timeout(READ_TIMEOUT, self.read_inner(filter, after, limit))
            .await
            .map_err(err)?
    }

    async fn read_inner(
        &self,
        filter: &Filter,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<FeedEvent>>, HistoryError> {
        let subjects = match &filter.collections {
            None => vec![format!("spool.events.{}.>", filter.site)],
            Some(list) => list
                .iter()
                .map(|c| format!("spool.events.{}.{c}", filter.site))
                .collect(),
        };
        let stream = self.js.get_stream(EVENTS_STREAM).await.map_err(err)?;
        let mut consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subjects: subjects,
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(err)?;
        let mut events = Vec::new();
        if consumer.info().await.map_err(err)?.num_pending == 0 {
            return Ok(events);
        }
        let mut messages = consumer.messages().await.map_err(err)?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(err)?;
            let info = message.info().map_err(err)?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            match FeedEvent::from_stored(seq, &message.payload) {
                Ok(event) => events.push(Arc::new(event)),
                Err(e) => {
                    tracing::error!(seq, error = %e, "undecodable event in SPOOL_EVENTS; skipped")
                }
            }
            if pending == 0 || events.len() >= limit {
                break;
            }
        }
        Ok(events)
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
