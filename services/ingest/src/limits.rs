//! The webhook rate per site (`SPOOL_WEBHOOK_RATE`, `SPOOL_WEBHOOK_BURST`): a token bucket
//! per site, spent only by webhooks whose signature checked out (an unsigned flood can't
//! use up a site's budget). Over it, the CMS is answered `429` with `Retry-After` and
//! retries with the same webhook-id: nothing is lost.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use spool_platform::rate::{KeyedBuckets, Rate};

/// Most sites whose buckets are kept at once. Site ids come from the registry, so this is
/// a backstop; buckets full again are dropped long before.
const MAX_SITES: usize = 100_000;

#[derive(Debug)]
pub struct SiteLimits {
    buckets: Mutex<KeyedBuckets<String>>,
}

impl SiteLimits {
    pub fn new(rate: Rate) -> SiteLimits {
        SiteLimits {
            buckets: Mutex::new(KeyedBuckets::new(rate, MAX_SITES)),
        }
    }

    /// Takes one webhook from `site`'s bucket, or says how long until it may send one.
    pub fn check(&self, site: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        buckets.try_take(&site.to_owned(), now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_site_has_its_own_budget() {
        let limits = SiteLimits::new(Rate::new(1, 2));
        let now = Instant::now();
        assert!(limits.check("acme", now).is_ok());
        assert!(limits.check("acme", now).is_ok());
        assert_eq!(limits.check("acme", now), Err(Duration::from_secs(1)));
        assert!(limits.check("other", now).is_ok());
        assert!(limits.check("acme", now + Duration::from_secs(1)).is_ok());
    }
}
