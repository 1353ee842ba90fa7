//! The sites' JWKS (`subscriber_jwks_url`), fetched when a token needs them and kept for
//! [`FRESH`]; a token whose `kid` the cached set lacks fetches the set again (a key was
//! rotated in), at most once per [`REFETCH_AFTER`] per URL, so a stream of made-up `kid`s
//! costs the site's server nothing more.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use tokio::time::Instant;

/// How long a fetched set is used without asking again.
pub const FRESH: Duration = Duration::from_secs(300);
/// Least time between two fetches of one URL.
pub const REFETCH_AFTER: Duration = Duration::from_secs(5);
/// Longest fetch, and largest set.
const TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("the site's JWKS ({url}) can't be read: {reason}")]
pub struct JwksError {
    url: String,
    reason: String,
}

struct Entry {
    set: Option<Arc<JwkSet>>,
    fetched: Instant,
}

pub struct JwksCache {
    http: reqwest::Client,
    entries: Mutex<HashMap<String, Entry>>,
}

impl JwksCache {
    pub fn new() -> anyhow::Result<JwksCache> {
        Ok(JwksCache {
            http: reqwest::Client::builder()
                .timeout(TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            entries: Mutex::default(),
        })
    }

    /// The set at `url`, holding `kid` if it can: the cached set when fresh and it holds
    /// the key, else fetched again (unless fetched under [`REFETCH_AFTER`] ago).
    pub async fn get(&self, url: &str, kid: &str) -> Result<Arc<JwkSet>, JwksError> {
        let cached = {
            let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            entries.get(url).map(|e| (e.set.clone(), e.fetched))
        };
        if let Some((set, fetched)) = cached {
            let holds = set.as_ref().is_some_and(|s| s.find(kid).is_some());
            let fresh = fetched.elapsed() < FRESH;
            if let Some(set) = set.filter(|_| (holds && fresh) || fetched.elapsed() < REFETCH_AFTER)
            {
                return Ok(set);
            }
        }
        let fetched = self.fetch(url).await;
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.entry(url.to_owned()).or_insert(Entry {
            set: None,
            fetched: Instant::now(),
        });
        entry.fetched = Instant::now();
        match fetched {
            Ok(set) => {
                let set = Arc::new(set);
                entry.set = Some(set.clone());
                Ok(set)
            }
            // A failed fetch keeps the last good set for its keys.
            Err(e) => entry.set.clone().ok_or(e),
        }
    }

    async fn fetch(&self, url: &str) -> Result<JwkSet, JwksError> {
        let failed = |reason: String| JwksError {
            url: url.to_owned(),
            reason,
        };
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| failed(e.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(failed(format!("answered {}", response.status())));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| failed(e.without_url().to_string()))?;
        if body.len() > MAX_BYTES {
            return Err(failed(format!("larger than {MAX_BYTES} bytes")));
        }
        serde_json::from_slice(&body).map_err(|e| failed(format!("not a JWKS: {e}")))
    }
}
