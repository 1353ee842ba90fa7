//! The site registry: an in-memory view of the `spool-sites` bucket that every service
//! keeps current by watching it, so a site added or changed anywhere takes effect
//! everywhere without a restart.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use anyhow::Context as _;
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use spool_proto::{Site, SiteId};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
struct Slot {
    revision: u64,
    /// `None` once deleted: remembered so an older revision can't bring it back.
    site: Option<Arc<Site>>,
}

#[derive(Clone)]
pub struct SiteRegistry {
    sites: Arc<RwLock<HashMap<String, Slot>>>,
    /// Bumped on every change of any site (see [`SiteRegistry::changes`]).
    changed: Arc<tokio::sync::watch::Sender<u64>>,
    /// It holds the whole bucket (read in full since the last (re)connection): a site it
    /// doesn't have is really unknown. A watch, so that work can wait for it.
    loaded: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for SiteRegistry {
    fn default() -> Self {
        SiteRegistry {
            sites: Arc::default(),
            changed: Arc::new(tokio::sync::watch::channel(0).0),
            loaded: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }
}

/// What the registry knows of a site id.
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(Arc<Site>),
    /// Not here, but the registry is (re)loading the bucket: it may be, in a moment.
    Loading,
    /// Not in the bucket.
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the site registry is not available yet (NATS unreachable or not provisioned)")]
    Unavailable,
    #[error("writing the site registry failed: {0}")]
    Nats(String),
}

impl SiteRegistry {
    /// The site, or whether its absence means anything yet: what a request for a site asks.
    pub fn lookup(&self, id: &str) -> Lookup {
        match self.get(id) {
            Some(site) => Lookup::Found(site),
            None if !self.is_loaded() => Lookup::Loading,
            None => Lookup::Unknown,
        }
    }

    /// The registry holds the whole bucket (an unknown site is really unknown).
    pub fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    /// Resolves once the registry holds the whole bucket (at once if it does).
    pub async fn loaded_wait(&self) {
        let mut loaded = self.loaded.subscribe();
        // The sender lives as long as `self`: the wait can't fail while we hold it.
        let _ = loaded.wait_for(|loaded| *loaded).await;
    }

    /// The current site, if it exists. Cheap: a read lock and an `Arc` clone.
    pub fn get(&self, id: &str) -> Option<Arc<Site>> {
        let sites = self.sites.read().unwrap_or_else(PoisonError::into_inner);
        sites.get(id).and_then(|slot| slot.site.clone())
    }

    /// Wakes on every change of any site: what holds access granted under an older
    /// version of a site (an open stream) checks it again.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Every current site, ordered by id.
    pub fn list(&self) -> Vec<Arc<Site>> {
        let sites = self.sites.read().unwrap_or_else(PoisonError::into_inner);
        let mut list: Vec<Arc<Site>> = sites.values().filter_map(|s| s.site.clone()).collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// Applies one bucket entry unless a newer revision of the key is already known.
    /// A value that is not a valid site is logged and ignored (the previous one stays).
    pub fn apply(&self, key: &str, revision: u64, value: Option<&[u8]>) {
        let site = match value {
            None => None,
            Some(bytes) => match Site::from_json(bytes) {
                Ok(site) if site.id.as_str() == key => Some(Arc::new(site)),
                Ok(site) => {
                    tracing::error!(key, id = %site.id, "registry entry's id differs from its key; ignored");
                    return;
                }
                Err(e) => {
                    tracing::error!(key, error = %e, "invalid site in the registry; ignored");
                    return;
                }
            },
        };
        let mut sites = self.sites.write().unwrap_or_else(PoisonError::into_inner);
        let newer = sites.get(key).is_none_or(|slot| revision > slot.revision);
        if newer {
            tracing::info!(
                site = key,
                revision,
                removed = site.is_none(),
                "site registry updated"
            );
            sites.insert(key.to_owned(), Slot { revision, site });
            drop(sites);
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Loads the whole bucket, then follows its changes until `shutdown`; on any watch
    /// failure or lost connection (NATS restart, ...) starts over, not loaded meanwhile.
    pub async fn follow(
        &self,
        disconnects: &crate::nats::Disconnects,
        store: kv::Store,
        shutdown: CancellationToken,
    ) {
        crate::nats::keep_running(
            "site registry watch",
            disconnects,
            &shutdown,
            || self.sync_and_watch(&store),
            || {
                self.loaded.send_replace(false);
            },
        )
        .await;
    }

    async fn sync_and_watch(&self, store: &kv::Store) -> anyhow::Result<()> {
        // Everything after `last` arrives through the watch; everything up to it is read now.
        let status = store.status().await.context("bucket status")?;
        let last = status.info.state.last_sequence;
        let mut keys = store.keys().await.context("listing keys")?;
        let mut present = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.context("listing keys")?;
            if let Some(entry) = store.entry(key.as_str()).await.context("reading a site")? {
                self.apply_entry(&entry);
                present.push(key);
            }
        }
        self.forget_missing(&present, last);
        self.loaded.send_replace(true);
        let mut watch = store
            .watch_all_from_revision(last + 1)
            .await
            .context("watching the bucket")?;
        while let Some(entry) = watch.next().await {
            self.apply_entry(&entry.context("watching the bucket")?);
        }
        anyhow::bail!("the bucket watch ended")
    }

    fn apply_entry(&self, entry: &kv::Entry) {
        match entry.operation {
            kv::Operation::Put => self.apply(&entry.key, entry.revision, Some(&entry.value)),
            kv::Operation::Delete | kv::Operation::Purge => {
                self.apply(&entry.key, entry.revision, None)
            }
        }
    }

    /// After a full reload: sites no longer in the bucket are gone.
    fn forget_missing(&self, present: &[String], revision: u64) {
        let mut sites = self.sites.write().unwrap_or_else(PoisonError::into_inner);
        let mut forgot = false;
        for (key, slot) in sites.iter_mut() {
            if slot.site.is_some() && !present.contains(key) && slot.revision <= revision {
                *slot = Slot {
                    revision,
                    site: None,
                };
                forgot = true;
            }
        }
        drop(sites);
        if forgot {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Stores a site in the bucket and applies it here at once. Returns whether it is new.
    pub async fn store(&self, bucket: Option<&kv::Store>, site: &Site) -> Result<bool, StoreError> {
        let bucket = bucket.ok_or(StoreError::Unavailable)?;
        let value = serde_json::to_vec(site).map_err(|e| StoreError::Nats(e.to_string()))?;
        let existed = self.get(site.id.as_str()).is_some();
        let revision = bucket
            .put(site.id.as_str(), Bytes::from(value.clone()))
            .await
            .map_err(|e| StoreError::Nats(e.to_string()))?;
        self.apply(site.id.as_str(), revision, Some(&value));
        Ok(!existed)
    }

    /// Deletes a site from the bucket and here. Returns whether it existed.
    pub async fn remove(
        &self,
        bucket: Option<&kv::Store>,
        id: &SiteId,
    ) -> Result<bool, StoreError> {
        let bucket = bucket.ok_or(StoreError::Unavailable)?;
        let existed = self.get(id.as_str()).is_some();
        bucket
            .delete(id.as_str())
            .await
            .map_err(|e| StoreError::Nats(e.to_string()))?;
        // The delete marker's revision is not returned; the watch brings it. Remove the site
        // here now with the revision it had, so a stale put can't resurrect it.
        let mut sites = self.sites.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = sites.get_mut(id.as_str()) {
            slot.site = None;
        }
        Ok(existed)
    }
}

/// Reads a sites file: a JSON array of sites, or the same as YAML. Every site is checked;
/// the error names the file, the site and every problem.
pub fn load_sites_file(path: &Path) -> anyhow::Result<Vec<Site>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading sites file {}", path.display()))?;
    let values: Vec<serde_json::Value> = if text.trim_start().starts_with('[') {
        serde_json::from_str(&text)
            .with_context(|| format!("sites file {} is not a JSON array", path.display()))?
    } else {
        serde_yaml::from_str(&text)
            .with_context(|| format!("sites file {} is not a YAML list", path.display()))?
    };
    let mut sites = Vec::with_capacity(values.len());
    for (i, value) in values.into_iter().enumerate() {
        let bytes = serde_json::to_vec(&value)?;
        let site = Site::from_json(&bytes)
            .with_context(|| format!("sites file {}: site #{i}", path.display()))?;
        if sites.iter().any(|s: &Site| s.id == site.id) {
            anyhow::bail!(
                "sites file {}: site {} appears twice",
                path.display(),
                site.id
            );
        }
        sites.push(site);
    }
    Ok(sites)
}

/// Writes the file's sites into the bucket, skipping those already stored unchanged (so
/// that every replica applying the same file at start-up does not churn revisions).
pub async fn apply_sites(store: &kv::Store, sites: &[Site]) -> anyhow::Result<()> {
    for site in sites {
        let current = store
            .get(site.id.as_str())
            .await
            .with_context(|| format!("reading site {}", site.id))?;
        let unchanged = current
            .as_deref()
            .and_then(|bytes| serde_json::from_slice::<Site>(bytes).ok())
            .is_some_and(|stored| &stored == site);
        if !unchanged {
            let value = serde_json::to_vec(site)?;
            store
                .put(site.id.as_str(), Bytes::from(value))
                .await
                .with_context(|| format!("writing site {}", site.id))?;
            tracing::info!(site = %site.id, "site from the sites file stored");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site_json(id: &str, public: bool) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": id, "webhook_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "public": public
        }))
        .unwrap()
    }

    #[test]
    fn newer_revisions_win() {
        let r = SiteRegistry::default();
        r.apply("acme", 5, Some(&site_json("acme", true)));
        r.apply("acme", 3, Some(&site_json("acme", false)));
        assert!(r.get("acme").unwrap().public);
        r.apply("acme", 6, None);
        assert!(r.get("acme").is_none());
        r.apply("acme", 4, Some(&site_json("acme", true)));
        assert!(
            r.get("acme").is_none(),
            "a stale put must not resurrect a deleted site"
        );
        r.apply("acme", 7, Some(&site_json("acme", false)));
        assert!(!r.get("acme").unwrap().public);
    }

    #[test]
    fn invalid_or_mismatched_values_are_ignored() {
        let r = SiteRegistry::default();
        r.apply("acme", 1, Some(&site_json("acme", true)));
        r.apply("acme", 2, Some(b"not json"));
        r.apply("acme", 3, Some(&site_json("other", false)));
        assert!(r.get("acme").unwrap().public);
    }

    #[test]
    fn sites_file_json_and_yaml() {
        let dir = std::env::temp_dir().join(format!("spool-sites-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = dir.join("sites.json");
        std::fs::write(
            &json,
            format!("[{}]", String::from_utf8(site_json("acme", true)).unwrap()),
        )
        .unwrap();
        assert_eq!(load_sites_file(&json).unwrap()[0].id.as_str(), "acme");
        let yaml = dir.join("sites.yaml");
        std::fs::write(
            &yaml,
            "- id: blog\n  webhook_secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n",
        )
        .unwrap();
        assert_eq!(load_sites_file(&yaml).unwrap()[0].id.as_str(), "blog");
        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"[{"id":"Bad","webhook_secret":"x"}]"#).unwrap();
        let err = format!("{:#}", load_sites_file(&bad).unwrap_err());
        assert!(
            err.contains("site #0") && err.contains("invalid site id"),
            "{err}"
        );
        let twice = dir.join("twice.json");
        let one = String::from_utf8(site_json("acme", true)).unwrap();
        std::fs::write(&twice, format!("[{one},{one}]")).unwrap();
        assert!(format!("{:#}", load_sites_file(&twice).unwrap_err()).contains("appears twice"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
