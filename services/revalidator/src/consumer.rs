//! The two durable pull consumers every replica shares: the events of `SPOOL_EVENTS`, and
//! the retries of `SPOOL_RETRY` as they come due. JetStream hands each message to one
//! replica at a time, and hands it again if it is not acknowledged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use spool_platform::nats::Disconnects;
use spool_proto::names::{EVENTS_STREAM, EVENTS_SUBJECTS, RETRY_DUE_FILTER, RETRY_STREAM};
use tokio_util::sync::CancellationToken;

use crate::worker::Worker;

/// Most messages one pull asks for.
const PULL_BATCH: usize = 200;
/// Most bytes one pull asks for.
const PULL_BATCH_BYTES: usize = 1024 * 1024;

/// What the consumers are created with.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// The events consumer's name; the retry consumer's is this with `-retry`.
    pub name: String,
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
}

/// Which of the two consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    Events,
    Retries,
}

impl Feed {
    fn stream(self) -> &'static str {
        match self {
            Feed::Events => EVENTS_STREAM,
            Feed::Retries => RETRY_STREAM,
        }
    }
}

/// The name of the retry consumer for an events consumer `name`.
pub fn retry_consumer_name(name: &str) -> String {
    format!("{name}-retry")
}

/// A durable's configuration: explicit acks, no delivery limit (exhausted retries are
/// dead-lettered by us, with the reason). The events consumer starts — when first created
/// — from new events on; the retry consumer takes every due retry.
pub fn consumer_config(s: &ConsumerSettings, feed: Feed) -> consumer::pull::Config {
    let (name, description, filter, deliver_policy) = match feed {
        Feed::Events => (
            s.name.clone(),
            "Spool Live revalidation calls",
            EVENTS_SUBJECTS,
            consumer::DeliverPolicy::New,
        ),
        Feed::Retries => (
            retry_consumer_name(&s.name),
            "Spool Live revalidation retries, as they come due",
            RETRY_DUE_FILTER,
            consumer::DeliverPolicy::All,
        ),
    };
    consumer::pull::Config {
        durable_name: Some(name),
        description: Some(description.into()),
        filter_subject: filter.into(),
        deliver_policy,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: s.ack_wait,
        max_ack_pending: s.max_ack_pending,
        max_deliver: -1,
        ..Default::default()
    }
}

/// Consumes until `shutdown`, starting over after any failure or lost connection. `ready`
/// is true while the durable exists and is being pulled from.
pub async fn run(
    js: jetstream::Context,
    settings: ConsumerSettings,
    feed: Feed,
    worker: Arc<Worker>,
    disconnects: Disconnects,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    spool_platform::nats::keep_running(
        "revalidation consumer",
        &disconnects,
        &shutdown,
        || consume(&js, &settings, feed, &worker, &ready),
        || ready.store(false, Ordering::Release),
    )
    .await;
}

async fn consume(
    js: &jetstream::Context,
    settings: &ConsumerSettings,
    feed: Feed,
    worker: &Arc<Worker>,
    ready: &AtomicBool,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let stream = js
        .get_stream(feed.stream())
        .await
        .with_context(|| format!("opening {}", feed.stream()))?;
    let config = consumer_config(settings, feed);
    let consumer = stream
        .create_consumer(config.clone())
        .await
        .context("creating the durable consumer")?;
    tracing::info!(name = ?config.durable_name, "revalidation consumer ready");
    // Pulled in batches bounded in bytes as well as in number: a batch of retry records
    // (each up to a merged call's events) must not balloon the process's memory.
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .max_bytes_per_batch(PULL_BATCH_BYTES)
        .messages()
        .await
        .context("pulling messages")?;
    ready.store(true, Ordering::Release);
    while let Some(message) = messages.next().await {
        let message = message.context("pulling messages")?;
        match feed {
            Feed::Events => worker.handle_event(message).await,
            Feed::Retries => worker.handle_retry(message).await,
        }
    }
    anyhow::bail!("the consumer's message stream ended")
}

/// Publishes the backlogs as gauges, every few seconds: the events consumer's, and the
/// waiting retries (their number, and the age of the oldest).
pub async fn report_pending(js: jetstream::Context, name: String, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let info = async {
            let stream = js.get_stream(EVENTS_STREAM).await.ok()?;
            let mut consumer: consumer::PullConsumer = stream.get_consumer(&name).await.ok()?;
            consumer.info().await.ok().cloned()
        };
        if let Some(info) = info.await {
            metrics::gauge!("spool_revalidator_consumer_pending").set(info.num_pending as f64);
            metrics::gauge!("spool_revalidator_consumer_ack_pending")
                .set(info.num_ack_pending as f64);
        }
        let retries = async {
            let mut stream = js.get_stream(RETRY_STREAM).await.ok()?;
            stream.info().await.ok().map(|info| info.state.clone())
        };
        if let Some(state) = retries.await {
            metrics::gauge!("spool_revalidator_retries_waiting").set(state.messages as f64);
            let oldest = if state.messages == 0 {
                0.0
            } else {
                (time::OffsetDateTime::now_utc() - state.first_timestamp)
                    .as_seconds_f64()
                    .max(0.0)
            };
            metrics::gauge!("spool_revalidator_retries_oldest_seconds").set(oldest);
        }
    }
}
