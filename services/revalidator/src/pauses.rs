//! Target pauses shared by every replica, through the `spool-revalidator-targets` bucket.
//!
//! A lane pauses its target after a failed call (see [`crate::lane`]); that pause lives in
//! the replica that made the call. A long one (30 s or more: a `Retry-After`, the later
//! steps of the schedule), written to the bucket (key `<site>.<target>`, value the pause's
//! end and the consecutive failures), reaches every other replica — and a replica started
//! later, which loads the bucket before it consumes — so no replica calls the target before
//! the time it asked for. A success deletes the key. Short pauses are not written: each
//! write measurably grew the process's resident memory in the leak check (a cost not yet
//! explained), and within a few seconds' pause another replica's one probe is harmless.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use spool_platform::nats::Disconnects;
use spool_proto::names::TARGETS_BUCKET;
use spool_proto::SiteId;
use tokio_util::sync::CancellationToken;

/// A target's pause, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// The pause's end, Unix milliseconds.
    pub until_ms: i64,
    /// Consecutive failed calls.
    pub failures: u32,
}

impl Pause {
    /// The pause's remaining time from `now_ms` (zero once over).
    pub fn remaining(&self, now_ms: i64) -> Duration {
        Duration::from_millis(u64::try_from(self.until_ms.saturating_sub(now_ms)).unwrap_or(0))
    }
}

/// The bucket key of a target.
pub fn key(site: &SiteId, target_key: &str) -> String {
    format!("{site}.{target_key}")
}

pub fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX)
}

/// What a replica knows of the paused targets; `on_change` hears of every change.
pub struct Pauses {
    known: Mutex<HashMap<String, Pause>>,
    /// The bucket, once opened (by [`Pauses::follow`]).
    store: Mutex<Option<kv::Store>>,
}

impl Pauses {
    pub fn new() -> Arc<Pauses> {
        Arc::new(Pauses {
            known: Mutex::default(),
            store: Mutex::default(),
        })
    }

    pub fn get(&self, key: &str) -> Option<Pause> {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied()
    }

    fn set(&self, key: &str, pause: Option<Pause>) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        match pause {
            Some(pause) => {
                known.insert(key.to_owned(), pause);
            }
            None => {
                known.remove(key);
            }
        }
    }

    /// Loads the bucket, then follows it until `shutdown`, starting over after any failure
    /// or lost connection. `synced` is told after each full load (and `false` on failure);
    /// `on_change` hears every change, with the key and the pause (`None`: cleared).
    pub async fn follow(
        self: Arc<Self>,
        js: jetstream::Context,
        disconnects: Disconnects,
        shutdown: CancellationToken,
        synced: impl Fn(bool),
        on_change: impl Fn(&str, Option<Pause>),
    ) {
        spool_platform::nats::keep_running(
            "target pauses watch",
            &disconnects,
            &shutdown,
            || self.sync_and_watch(&js, &synced, &on_change),
            || synced(false),
        )
        .await;
    }

    async fn sync_and_watch(
        &self,
        js: &jetstream::Context,
        synced: &impl Fn(bool),
        on_change: &impl Fn(&str, Option<Pause>),
    ) -> anyhow::Result<()> {
        let store = js
            .get_key_value(TARGETS_BUCKET)
            .await
            .context("opening the targets bucket")?;
        *self.store.lock().unwrap_or_else(PoisonError::into_inner) = Some(store.clone());
        let status = store.status().await.context("bucket status")?;
        let last = status.info.state.last_sequence;
        let mut keys = store.keys().await.context("listing keys")?;
        while let Some(key) = keys.next().await {
            let key = key.context("listing keys")?;
            if let Some(entry) = store.entry(key.as_str()).await.context("reading a pause")? {
                self.apply(&entry, on_change);
            }
        }
        synced(true);
        let mut watch = store
            .watch_all_from_revision(last + 1)
            .await
            .context("watching the bucket")?;
        while let Some(entry) = watch.next().await {
            self.apply(&entry.context("watching the bucket")?, on_change);
        }
        anyhow::bail!("the bucket watch ended")
    }

    fn apply(&self, entry: &kv::Entry, on_change: &impl Fn(&str, Option<Pause>)) {
        let pause = match entry.operation {
            kv::Operation::Put => serde_json::from_slice::<Pause>(&entry.value).ok(),
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        self.set(&entry.key, pause);
        on_change(&entry.key, pause);
    }
}

impl Pauses {
    /// Writes a target's pause (`None`: it answered again) for every replica. Best effort:
    /// a replica that misses it learns from its own first call.
    pub async fn publish(&self, key: &str, pause: Option<Pause>) {
        let store = self
            .store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(store) = store else {
            return;
        };
        let result = async {
            match pause {
                Some(pause) => {
                    store.put(key, serde_json::to_vec(&pause)?.into()).await?;
                }
                None => store.delete(key).await?,
            }
            anyhow::Ok(())
        };
        if let Err(e) = result.await {
            tracing::warn!(error = %format!("{e:#}"), key, "sharing a target's pause failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_counts_down_to_zero() {
        let pause = Pause {
            until_ms: 10_000,
            failures: 2,
        };
        assert_eq!(pause.remaining(9_000), Duration::from_secs(1));
        assert_eq!(pause.remaining(11_000), Duration::ZERO);
        let json = serde_json::to_string(&pause).unwrap();
        assert_eq!(json, r#"{"until_ms":10000,"failures":2}"#);
    }
}
