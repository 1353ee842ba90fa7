//! The durable pull consumer on `SPOOL_EVENTS` that every replica shares: JetStream hands
//! each event to one replica at a time, and hands it again if it is not acknowledged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use spool_platform::nats::Disconnects;
use spool_proto::names::{EVENTS_STREAM, EVENTS_SUBJECTS};
use tokio_util::sync::CancellationToken;

use crate::worker::Worker;

/// What the consumer is created with.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub name: String,
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
}

/// The durable's configuration: explicit acks, no delivery limit (exhausted retries are
/// dead-lettered by us, with the reason), and — when first created — from new events on.
pub fn consumer_config(s: &ConsumerSettings) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(s.name.clone()),
        description: Some("Spool Live revalidation calls".into()),
        filter_subject: EVENTS_SUBJECTS.into(),
        deliver_policy: consumer::DeliverPolicy::New,
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
    worker: Arc<Worker>,
    disconnects: Disconnects,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let result = tokio::select! {
            r = consume(&js, &settings, &worker, &ready) => r,
            _ = disconnects.next() => Err(anyhow::anyhow!("NATS disconnected")),
            _ = shutdown.cancelled() => return,
        };
        ready.store(false, Ordering::Release);
        if let Err(e) = result {
            tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "revalidation consumer interrupted");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn consume(
    js: &jetstream::Context,
    settings: &ConsumerSettings,
    worker: &Arc<Worker>,
    ready: &AtomicBool,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let stream = js
        .get_stream(EVENTS_STREAM)
        .await
        .context("opening SPOOL_EVENTS")?;
    let consumer = stream
        .create_consumer(consumer_config(settings))
        .await
        .context("creating the durable consumer")?;
    tracing::info!(name = %settings.name, "revalidation consumer ready");
    let mut messages = consumer.messages().await.context("pulling events")?;
    ready.store(true, Ordering::Release);
    while let Some(message) = messages.next().await {
        worker.handle(message.context("pulling events")?).await;
    }
    anyhow::bail!("the consumer's message stream ended")
}

/// Publishes the consumer's backlog as gauges, every few seconds.
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
    }
}
