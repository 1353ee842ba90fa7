//! What `/readyz` reports: NATS connected, streams and bucket provisioned, registry loaded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_nats::connection::State;

type Check = Box<dyn Fn() -> bool + Send + Sync>;

#[derive(Clone)]
pub struct Readiness {
    client: async_nats::Client,
    provisioned: Arc<AtomicBool>,
    registry: crate::registry::SiteRegistry,
    /// A service's own conditions: (what is missing when false, the check).
    extra: Arc<RwLock<Vec<(&'static str, Check)>>>,
    /// A NATS blip shorter than this is not reported (see [`Readiness::set_nats_grace`]).
    grace: Arc<Mutex<Grace>>,
}

/// What a NATS blip is allowed, and since when one lasts (as first seen by a check).
#[derive(Default)]
struct Grace {
    length: Duration,
    disconnected: Option<Instant>,
    /// The registry was loaded once: re-reading it after a reconnection is part of the blip.
    registry_was_loaded: bool,
    unsynced: Option<Instant>,
}

/// Whether a condition is met or has been failing for less than `grace`; `since` keeps
/// when it started failing.
fn lenient(ok: bool, since: &mut Option<Instant>, now: Instant, grace: Duration) -> bool {
    if ok {
        *since = None;
        return true;
    }
    now.duration_since(*since.get_or_insert(now)) < grace
}

impl Readiness {
    pub fn new(client: async_nats::Client, registry: crate::registry::SiteRegistry) -> Readiness {
        Readiness {
            client,
            provisioned: Arc::default(),
            registry,
            extra: Arc::default(),
            grace: Arc::default(),
        }
    }

    /// Reports `nats_disconnected` only once a disconnection has lasted `grace` (as seen
    /// by the checks: a probe every few seconds), and `registry_not_loaded` for a registry
    /// that was loaded once only after it has been out of sync that long (it keeps the sites
    /// it had while it reconnects and reads the bucket again). A service that serves well without NATS
    /// for a while — the delivery answers from its window, and tells its streams to retry —
    /// stays in its load balancer through a blip instead of leaving it: were every pod to
    /// leave, the edge would answer new streams `503` itself, and a browser's EventSource
    /// gives up for good on that.
    pub fn set_nats_grace(&self, grace: Duration) {
        self.grace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .length = grace;
    }

    /// Adds a condition of the service's own; `missing` names it in `/readyz` while false.
    pub fn add_check(
        &self,
        missing: &'static str,
        check: impl Fn() -> bool + Send + Sync + 'static,
    ) {
        let mut extra = self.extra.write().unwrap_or_else(PoisonError::into_inner);
        extra.push((missing, Box::new(check)));
    }

    pub fn set_provisioned(&self) {
        self.provisioned.store(true, Ordering::Release);
    }

    pub fn nats_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// The reasons every service's `/readyz` may give (services add their own with
    /// [`Readiness::add_check`]).
    pub const REASONS: [&'static str; 3] = [
        "nats_disconnected",
        "streams_not_provisioned",
        "registry_not_loaded",
    ];

    /// `Ok` when ready, else the list of what is not.
    pub fn check(&self) -> Result<(), Vec<&'static str>> {
        let mut missing = Vec::new();
        let (nats_ok, registry_ok) = {
            let now = Instant::now();
            let mut grace = self.grace.lock().unwrap_or_else(PoisonError::into_inner);
            let Grace {
                length,
                disconnected,
                registry_was_loaded,
                unsynced,
            } = &mut *grace;
            let loaded = self.registry.is_loaded();
            *registry_was_loaded |= loaded;
            (
                lenient(self.nats_connected(), disconnected, now, *length),
                *registry_was_loaded && lenient(loaded, unsynced, now, *length),
            )
        };
        if !nats_ok {
            missing.push(Self::REASONS[0]);
        }
        if !self.provisioned.load(Ordering::Acquire) {
            missing.push(Self::REASONS[1]);
        }
        if !registry_ok {
            missing.push(Self::REASONS[2]);
        }
        let extra = self.extra.read().unwrap_or_else(PoisonError::into_inner);
        missing.extend(
            extra
                .iter()
                .filter(|(_, check)| !check())
                .map(|(name, _)| *name),
        );
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_forgiven_for_the_grace_from_when_it_was_first_seen() {
        let (t0, grace) = (Instant::now(), Duration::from_secs(30));
        let mut since = None;
        assert!(lenient(false, &mut since, t0, grace));
        assert!(lenient(
            false,
            &mut since,
            t0 + Duration::from_secs(29),
            grace
        ));
        assert!(!lenient(
            false,
            &mut since,
            t0 + Duration::from_secs(30),
            grace
        ));
        assert!(lenient(
            true,
            &mut since,
            t0 + Duration::from_secs(31),
            grace
        ));
        assert!(
            lenient(false, &mut since, t0 + Duration::from_secs(40), grace),
            "a new blip"
        );
        let mut at_once = None;
        assert!(
            !lenient(false, &mut at_once, t0, Duration::ZERO),
            "no grace"
        );
    }
}
