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

    /// Marks the registry as holding the whole bucket (or not): its follower does, after
    /// each full read; so does code that fills it by hand (tests).
    pub fn set_loaded(&self, loaded: bool) {
        self.loaded.send_replace(loaded);
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
            || self.set_loaded(false),
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
        self.set_loaded(true);
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
    parse_sites_file(&text, &path.display().to_string())
}

/// The sites of a sites file's text (`origin` names it in errors): a JSON array, or a YAML
/// list (block or flow style: `[{id: acme, ...}]` is YAML too).
pub fn parse_sites_file(text: &str, origin: &str) -> anyhow::Result<Vec<Site>> {
    let values: Vec<serde_json::Value> = if text.trim_start().starts_with('[') {
        match serde_json::from_str(text) {
            Ok(values) => values,
            // Not JSON: maybe a YAML flow list; if not that either, the JSON error says more.
            Err(json) => serde_yaml::from_str(text).map_err(|_| {
                anyhow::Error::new(json).context(format!("sites file {origin} is not a JSON array"))
            })?,
        }
    } else {
        serde_yaml::from_str(text)
            .with_context(|| format!("sites file {origin} is not a YAML list"))?
    };
    let mut sites = Vec::with_capacity(values.len());
    for (i, value) in values.into_iter().enumerate() {
        let bytes = serde_json::to_vec(&value)?;
        let site =
            Site::from_json(&bytes).with_context(|| format!("sites file {origin}: site #{i}"))?;
        if sites.iter().any(|s: &Site| s.id == site.id) {
            anyhow::bail!("sites file {origin}: site {} appears twice", site.id);
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

    // Found by fuzz_sites_file_valid_round_trips: a YAML flow list (`[{id: ...}]`) starts
    // with '[' and was refused as "not a JSON array".
    #[test]
    fn a_yaml_flow_list_is_yaml_and_bad_json_still_says_json() {
        let sites = parse_sites_file(
            "[{id: acme, webhook_secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw}]",
            "f",
        )
        .unwrap();
        assert_eq!(sites[0].id.as_str(), "acme");
        let err = format!(
            "{:#}",
            parse_sites_file("[{\"id\": \"acme\"", "f").unwrap_err()
        );
        assert!(err.contains("sites file f is not a JSON array"), "{err}");
    }
}

#[cfg(test)]
mod fuzz {
    //! Fuzz targets (issue #16) for the sites file; see the `spool-fuzz` crate for how long
    //! they run (`SPOOL_FUZZ_CASES`, `make fuzz`).

    use super::parse_sites_file;
    use proptest::prelude::*;
    use serde_json::{json, Value};
    use spool_fuzz::{awkward_string, config, mutated_one_of};

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn full_site(id: &str) -> Value {
        json!({"id": id, "webhook_secret": SECRET, "read_tokens": ["rk_live_0123456789abcdef"],
               "public": false, "cors_origins": ["https://acme.example"],
               "collections": {"blog": {"paths": ["/blog/{slug}", "/blog"], "tags": ["blog", "blog:{slug}"]}},
               "revalidate": [{"url": "https://acme.example/api/revalidate", "secret": SECRET, "collections": ["blog"]}],
               "public_fields": ["slug", "title"], "notify": "after_revalidate", "notify_timeout_ms": 5000})
    }

    fn seeds() -> Vec<Vec<u8>> {
        let sites =
            json!([full_site("acme"), {"id": "b", "webhook_secret": SECRET, "public": true}]);
        vec![
            sites.to_string().into_bytes(),
            serde_json::to_vec_pretty(&sites).unwrap_or_default(),
            serde_yaml::to_string(&sites).unwrap_or_default().into_bytes(),
            b"# sites\n- id: blog\n  webhook_secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n  public: yes\n  read_tokens: &t [rk_live_0123456789abcdef]\n- id: b2\n  webhook_secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n  read_tokens: *t\n".to_vec(),
        ]
    }

    /// Parses, and checks what an accepted file must be: valid sites, each id once.
    fn check(text: &str) -> Result<(), TestCaseError> {
        match parse_sites_file(text, "fuzz.yaml") {
            Ok(sites) => {
                for (i, site) in sites.iter().enumerate() {
                    prop_assert_eq!(site.validate(), Ok(()));
                    prop_assert!(sites[..i].iter().all(|s| s.id != site.id));
                }
            }
            Err(e) => {
                let text = format!("{e:#}");
                prop_assert!(text.contains("sites file fuzz.yaml"), "{}", text);
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(config(1))]

        #[test]
        fn fuzz_sites_file_arbitrary(text in prop_oneof![awkward_string(12), any::<String>()]) {
            check(&text)?;
        }

        #[test]
        fn fuzz_sites_file_mutated(bytes in mutated_one_of(seeds())) {
            check(&String::from_utf8_lossy(&bytes))?;
        }

        /// Valid sites, written as JSON (compact or pretty) or YAML (block or flow), read back
        /// as themselves.
        #[test]
        fn fuzz_sites_file_valid_round_trips(
            ids in proptest::collection::btree_set("[a-z0-9][a-z0-9_-]{0,20}", 0..4),
            public in any::<bool>(),
            tokens in proptest::collection::vec("[!-~]{16,30}", 0..3),
            form in 0u8..4,
        ) {
            let sites: Vec<Value> = ids.iter().map(|id| {
                let mut s = full_site(id);
                s["public"] = public.into();
                s["read_tokens"] = json!(tokens.iter().filter(|t| !t.contains('…')).collect::<Vec<_>>());
                s
            }).collect();
            let text = match form {
                0 => serde_json::to_string(&sites).unwrap_or_default(),
                1 => serde_json::to_string_pretty(&sites).unwrap_or_default(),
                2 => serde_yaml::to_string(&sites).unwrap_or_default(),
                // YAML's flow style: JSON-like, with YAML's quoting.
                _ => format!("[{}]", sites.iter().map(|s| serde_yaml::to_string(&vec![s]).unwrap_or_default()).map(|y| {
                    let v: Value = serde_yaml::from_str(&y).unwrap_or(Value::Null);
                    let single: String = serde_json::to_string(&v[0]).unwrap_or_default();
                    single.replacen("{\"id\":", "{id: ", 1)
                }).collect::<Vec<_>>().join(", ")),
            };
            let parsed = parse_sites_file(&text, "f").map_err(|e| TestCaseError::fail(format!("{e:#}\n{text}")))?;
            let want: Vec<spool_proto::Site> = sites.iter().map(|s| serde_json::from_value(s.clone())).collect::<Result<_, _>>().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(parsed, want);
        }
    }

    /// 10,000 levels: a recursive parser would overflow a test thread's stack. (The YAML
    /// parser takes time quadratic in the depth: ~1 s here, ~100 s at 100,000 levels; a
    /// sites file is the operator's own, read once at start-up.)
    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        for text in [
            "[".repeat(10_000),
            "- ".repeat(10_000),
            "{a: ".repeat(10_000),
            format!("[{}]", "[".repeat(10_000)),
        ] {
            assert!(parse_sites_file(&text, "f").is_err());
        }
    }
}
