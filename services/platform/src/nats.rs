//! NATS wiring: the connection (reconnecting for ever) and the idempotent provisioning of
//! `SPOOL_EVENTS`, `SPOOL_DLQ`, `SPOOL_RETRY`, `SPOOL_OUTCOMES` and the `spool-sites` and
//! `spool-revalidator-targets` buckets from configuration.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use spool_proto::names::{
    DLQ_STREAM, DLQ_SUBJECTS, EVENTS_STREAM, EVENTS_SUBJECTS, OUTCOMES_STREAM, OUTCOMES_SUBJECTS,
    RETRY_STREAM, RETRY_SUBJECTS, SITES_BUCKET, TARGETS_BUCKET,
};
use tokio::sync::watch;

use crate::config::{CommonConfig, StreamSettings};

/// Largest stored message: a 256 KiB webhook body plus its mapped paths and tags.
pub const MAX_MESSAGE_SIZE: i32 = 512 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("stream {name}: {source}")]
    Stream {
        name: &'static str,
        source: jetstream::context::CreateStreamError,
    },
    #[error("bucket {name}: {source}")]
    Bucket {
        name: &'static str,
        source: jetstream::context::CreateKeyValueError,
    },
}

/// How often the client pings a server it has heard nothing from. A server that stops
/// answering while its connection stays up — paused, hung, or cut off by a one-way
/// partition — is left for another after three unanswered pings, about 10 s. (The client's
/// default, 60 s, kept a service on a hung node of a cluster for three minutes: every
/// webhook answered 503, the delivery's feed stalled, though the other nodes had long
/// elected new leaders.) Busy connections don't ping: any traffic from the server counts.
pub const PING_INTERVAL: Duration = Duration::from_secs(3);

/// Connects in the background and keeps reconnecting for ever (quickly: a NATS restart
/// should cost seconds, not a pod restart). The client is usable at once; requests made
/// while disconnected fail with a timeout, which callers answer as 503.
pub async fn connect(
    config: &CommonConfig,
    service: &str,
) -> anyhow::Result<(async_nats::Client, Disconnects)> {
    use anyhow::Context as _;
    let (disconnects_tx, disconnects) = watch::channel(0u64);
    let mut options = async_nats::ConnectOptions::new()
        .name(service)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .ping_interval(PING_INTERVAL)
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            if matches!(event, async_nats::Event::Disconnected) {
                disconnects_tx.send_modify(|n| *n += 1);
            }
            async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("NATS connected"),
                    async_nats::Event::Disconnected => tracing::warn!("NATS disconnected"),
                    other => tracing::info!(event = %other, "NATS event"),
                }
            }
        });
    if let Some(creds) = &config.nats_creds {
        options = options
            .credentials_file(creds)
            .await
            .with_context(|| format!("--nats-creds {}", creds.display()))?;
    }
    let servers = config.nats_servers().map_err(|e| anyhow::anyhow!(e))?;
    let client = options
        .connect(servers)
        .await
        .with_context(|| format!("NATS_URL {}", config.nats_url))?;
    Ok((client, Disconnects(disconnects)))
}

/// Tells long-lived consumers (the delivery feed, the registry watch) that the connection
/// dropped, so they start over after the reconnect instead of waiting for their own
/// heartbeats to notice (tens of seconds after a NATS restart, however short the outage).
#[derive(Clone)]
pub struct Disconnects(watch::Receiver<u64>);

impl Disconnects {
    /// Resolves at the next disconnect after this call.
    pub async fn next(&self) {
        let mut rx = self.0.clone();
        rx.mark_unchanged();
        if rx.changed().await.is_err() {
            // The client is gone: nothing will ever reconnect.
            std::future::pending::<()>().await;
        }
    }
}

/// The pause between two attempts of NATS work: doubling from 100 ms to at most `max`.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Backoff {
        Backoff {
            next: Duration::from_millis(100),
            max,
        }
    }

    /// Waits the pause (false: `shutdown` came first) and doubles the next one.
    async fn wait(&mut self, shutdown: &tokio_util::sync::CancellationToken) -> bool {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = tokio::time::sleep(pause) => true,
            _ = shutdown.cancelled() => false,
        }
    }
}

/// Runs `attempt` until it succeeds — after a failure, again after a pause doubling from
/// 100 ms to at most 5 s — and returns its value; `None` if `shutdown` came first. For the
/// one-off NATS work of a start-up (provisioning).
pub async fn retry_until_ok<T, F, Fut>(
    what: &str,
    shutdown: &tokio_util::sync::CancellationToken,
    mut attempt: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut backoff = Backoff::new(Duration::from_secs(5));
    loop {
        let result = tokio::select! {
            r = attempt() => r,
            _ = shutdown.cancelled() => return None,
        };
        match result {
            Ok(value) => return Some(value),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff.next, "{what} failed; retrying");
            }
        }
        if !backoff.wait(shutdown).await {
            return None;
        }
    }
}

/// Runs `attempt` until `shutdown`, starting it again whenever it ends (it should run for
/// ever: an end is a failure) or the connection drops, after a pause doubling from 100 ms
/// to at most 2 s. `after` runs after every end (to say "not ready", say). For the
/// long-lived NATS work of a service: a watch, a consumer.
pub async fn keep_running<F, Fut>(
    what: &str,
    disconnects: &Disconnects,
    shutdown: &tokio_util::sync::CancellationToken,
    mut attempt: F,
    mut after: impl FnMut(),
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut backoff = Backoff::new(Duration::from_secs(2));
    while !shutdown.is_cancelled() {
        let result = tokio::select! {
            r = attempt() => r,
            _ = disconnects.next() => Err(anyhow::anyhow!("NATS disconnected")),
            _ = shutdown.cancelled() => return,
        };
        after();
        if let Err(e) = result {
            tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff.next, "{what} interrupted; starting over");
        }
        if !backoff.wait(shutdown).await {
            return;
        }
    }
}

/// 0 ms, then doubling from 50 ms to at most 2 s.
pub fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts.saturating_sub(2).min(6)).unwrap_or(6);
    Duration::from_millis(50u64.saturating_mul(1 << exp)).min(Duration::from_secs(2))
}

/// The configuration of `SPOOL_EVENTS`.
pub fn events_stream_config(s: &StreamSettings) -> stream::Config {
    stream::Config {
        name: EVENTS_STREAM.into(),
        description: Some("Spool Live content events".into()),
        subjects: vec![EVENTS_SUBJECTS.into()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: s.max_age,
        max_bytes: s.max_bytes,
        max_message_size: MAX_MESSAGE_SIZE,
        duplicate_window: s.duplicate_window,
        num_replicas: usize::from(s.replicas),
        allow_direct: true,
        ..Default::default()
    }
}

/// The configuration of `SPOOL_OUTCOMES`: one record per revalidation call, kept
/// `SPOOL_OUTCOMES_MAX_AGE`.
pub fn outcomes_stream_config(s: &StreamSettings) -> stream::Config {
    stream::Config {
        name: OUTCOMES_STREAM.into(),
        description: Some("Spool Live revalidation outcomes".into()),
        subjects: vec![OUTCOMES_SUBJECTS.into()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: s.outcomes_max_age,
        max_message_size: 2 * MAX_MESSAGE_SIZE,
        num_replicas: usize::from(s.replicas),
        allow_direct: true,
        ..Default::default()
    }
}

/// The configuration of `SPOOL_DLQ`.
pub fn dlq_stream_config(s: &StreamSettings) -> stream::Config {
    stream::Config {
        name: DLQ_STREAM.into(),
        description: Some("Spool Live revalidation dead letters".into()),
        subjects: vec![DLQ_SUBJECTS.into()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: s.dlq_max_age,
        max_message_size: 2 * MAX_MESSAGE_SIZE,
        num_replicas: usize::from(s.replicas),
        allow_direct: true,
        ..Default::default()
    }
}

/// The configuration of `SPOOL_RETRY`: the revalidator's waiting retries, each a message
/// schedule (`Nats-Schedule: @at ...`) the server turns into a due message at its time; the
/// retry consumer takes the due messages (a work queue: a retry is gone once acknowledged).
/// No age limit: a retry waits as long as its schedule says.
pub fn retry_stream_config(s: &StreamSettings) -> stream::Config {
    stream::Config {
        name: RETRY_STREAM.into(),
        description: Some("Spool Live revalidation retries (scheduled)".into()),
        subjects: vec![RETRY_SUBJECTS.into()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::WorkQueue,
        discard: stream::DiscardPolicy::Old,
        max_message_size: 2 * MAX_MESSAGE_SIZE,
        num_replicas: usize::from(s.replicas),
        allow_message_schedules: true,
        ..Default::default()
    }
}

/// The configuration of the `spool-sites` bucket: latest value only, kept for ever.
pub fn sites_bucket_config(s: &StreamSettings) -> kv::Config {
    kv::Config {
        bucket: SITES_BUCKET.into(),
        description: "Spool Live site registry".into(),
        history: 1,
        max_value_size: 1024 * 1024,
        storage: stream::StorageType::File,
        num_replicas: usize::from(s.replicas),
        ..Default::default()
    }
}

/// The configuration of the `spool-revalidator-targets` bucket: a paused target's pause,
/// latest value only; entries expire a day after their last write (no pause is longer).
pub fn targets_bucket_config(s: &StreamSettings) -> kv::Config {
    kv::Config {
        bucket: TARGETS_BUCKET.into(),
        description: "Spool Live revalidation targets paused after failing".into(),
        history: 1,
        max_age: Duration::from_secs(25 * 3600),
        max_value_size: 1024,
        storage: stream::StorageType::File,
        num_replicas: usize::from(s.replicas),
        ..Default::default()
    }
}

/// Creates or updates both streams and the bucket to match `settings`. Safe to run from
/// every replica of every service at every start.
pub async fn provision(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<kv::Store, ProvisionError> {
    for (name, config) in [
        (EVENTS_STREAM, events_stream_config(settings)),
        (DLQ_STREAM, dlq_stream_config(settings)),
        (RETRY_STREAM, retry_stream_config(settings)),
        (OUTCOMES_STREAM, outcomes_stream_config(settings)),
    ] {
        js.create_or_update_stream(config)
            .await
            .map_err(|source| ProvisionError::Stream { name, source })?;
    }
    js.create_or_update_key_value(targets_bucket_config(settings))
        .await
        .map_err(|source| ProvisionError::Bucket {
            name: TARGETS_BUCKET,
            source,
        })?;
    js.create_or_update_key_value(sites_bucket_config(settings))
        .await
        .map_err(|source| ProvisionError::Bucket {
            name: SITES_BUCKET,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_grows_and_is_capped() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(50));
        assert_eq!(reconnect_delay(3), Duration::from_millis(100));
        assert_eq!(reconnect_delay(100), Duration::from_secs(2));
    }

    #[test]
    fn stream_configs_follow_settings() {
        let s = StreamSettings {
            replicas: 3,
            max_bytes: 1 << 30,
            ..Default::default()
        };
        let e = events_stream_config(&s);
        assert_eq!(e.name, "SPOOL_EVENTS");
        assert_eq!(e.subjects, ["spool.events.>"]);
        assert_eq!(e.num_replicas, 3);
        assert_eq!(e.max_bytes, 1 << 30);
        assert_eq!(e.duplicate_window, Duration::from_secs(3600));
        assert_eq!(e.storage, stream::StorageType::File);
        let d = dlq_stream_config(&s);
        assert_eq!(d.subjects, ["spool.dlq.>"]);
        assert_eq!(sites_bucket_config(&s).bucket, "spool-sites");
        let r = retry_stream_config(&s);
        assert_eq!(r.subjects, ["spool.retry.>"]);
        assert_eq!(r.retention, stream::RetentionPolicy::WorkQueue);
        assert!(r.allow_message_schedules);
    }
}
