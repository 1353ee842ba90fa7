//! The record of one revalidation call, stored in `SPOOL_OUTCOMES` (subject
//! `spool.outcomes.<site>`) with the call's trace: which events it covered, the paths and
//! tags they asked for, and how the target answered. Who needs to know that a page is fresh
//! reads it there.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::names::SiteId;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallOutcome {
    pub site: SiteId,
    /// The target's key ([`target_key`]): stable, and without the URL's secrets.
    pub target: String,
    /// The target's URL, credentials and query values redacted.
    pub url: String,
    /// The `webhook-id` of the call (the same on every attempt of it).
    pub webhook_id: String,
    pub attempt: u64,
    /// The events the call covered.
    pub seqs: Vec<u64>,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    /// The target answered 2xx: the paths and tags are fresh.
    pub ok: bool,
    /// The answer's status, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The revalidator process that made the call (its instance name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

/// A revalidation target's key: a hash of its site and URL, the same in every service and
/// replica (URLs can't be subject tokens, and may carry secrets).
pub fn target_key(site: &SiteId, url: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(site.as_str());
    hash.update([0]);
    hash.update(url);
    hash.finalize()
        .iter()
        .take(10)
        .map(|b| format!("{b:02x}"))
        .collect()
}
