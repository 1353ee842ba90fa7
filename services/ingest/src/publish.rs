//! Writing an event to `SPOOL_EVENTS` and waiting for JetStream's acknowledgement.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use spool_platform::trace;
use spool_proto::names::{event_subject, msg_id, MSG_ID_HEADER};
use spool_proto::Event;
use tracing::Instrument as _;

/// What JetStream answered: where the event is, and whether it was already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub seq: u64,
    pub duplicate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("NATS is not connected")]
    Disconnected,
    #[error("no acknowledgement within {0:?}")]
    TimedOut(Duration),
    #[error("{0}")]
    Nats(#[from] jetstream::context::PublishError),
    #[error("event could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

#[derive(Clone)]
pub struct Publisher {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    timeout: Duration,
}

impl Publisher {
    pub fn new(client: async_nats::Client, timeout: Duration) -> Publisher {
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(timeout)
            .build(client.clone());
        Publisher {
            client,
            jetstream,
            timeout,
        }
    }

    /// Publishes with `Nats-Msg-Id` = site + webhook id, so JetStream de-duplicates a
    /// repeat within the duplicate window and answers it with the original sequence.
    /// The message carries the trace context of a producer span (a child of the current
    /// span); without a trace exporter, the caller's `incoming` trace headers, unchanged.
    pub async fn publish(
        &self,
        event: &Event,
        incoming: &[(&'static str, String)],
    ) -> Result<Published, PublishError> {
        // Fail fast: while disconnected the client would only queue the write and time out.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(PublishError::Disconnected);
        }
        let subject = event_subject(&event.site, &event.collection);
        let id = msg_id(&event.site, &event.id);
        let span = tracing::info_span!(
            "publish",
            otel.name = %format!("send {subject}"),
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.operation.type = "send",
            messaging.destination.name = %subject,
            messaging.message.id = %id,
            spool.site = %event.site,
            spool.event.seq = tracing::field::Empty,
        );
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID_HEADER, id.as_str());
        let produced = trace::headers_of(&span);
        if produced.is_empty() {
            for (name, value) in incoming {
                headers.insert(*name, value.as_str());
            }
        } else {
            for (name, value) in &produced {
                headers.insert(name.as_str(), value.as_str());
            }
        }
        let payload = Bytes::from(serde_json::to_vec(event)?);
        let started = Instant::now();
        let write = async {
            let ack = self
                .jetstream
                .publish_with_headers(subject, headers, payload)
                .await?;
            Ok::<_, PublishError>(ack.await?)
        };
        let ack = tokio::time::timeout(self.timeout, write)
            .instrument(span.clone())
            .await
            .map_err(|_| PublishError::TimedOut(self.timeout))??;
        span.record("spool.event.seq", ack.sequence);
        metrics::histogram!("spool_ingest_publish_duration_seconds").record(started.elapsed());
        Ok(Published {
            seq: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}
