//! What `/readyz` reports: NATS connected, streams and bucket provisioned, registry loaded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use async_nats::connection::State;

type Check = Box<dyn Fn() -> bool + Send + Sync>;

#[derive(Clone)]
pub struct Readiness {
    client: async_nats::Client,
    provisioned: Arc<AtomicBool>,
    /// The registry holds the whole bucket: a watch, so that work can wait for it.
    registry_synced: Arc<tokio::sync::watch::Sender<bool>>,
    /// A service's own conditions: (what is missing when false, the check).
    extra: Arc<RwLock<Vec<(&'static str, Check)>>>,
}

impl Readiness {
    pub fn new(client: async_nats::Client) -> Readiness {
        Readiness {
            client,
            provisioned: Arc::default(),
            registry_synced: Arc::new(tokio::sync::watch::Sender::new(false)),
            extra: Arc::default(),
        }
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

    pub fn set_registry_synced(&self, synced: bool) {
        self.registry_synced.send_replace(synced);
    }

    /// The registry holds the whole bucket (an unknown site is really unknown).
    pub fn registry_loaded(&self) -> bool {
        *self.registry_synced.borrow()
    }

    /// Resolves once the registry has loaded the whole bucket (at once if it has).
    pub async fn registry_loaded_wait(&self) {
        let mut synced = self.registry_synced.subscribe();
        // The sender lives as long as `self`: the wait can't fail while we hold it.
        let _ = synced.wait_for(|loaded| *loaded).await;
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
        if !self.nats_connected() {
            missing.push(Self::REASONS[0]);
        }
        if !self.provisioned.load(Ordering::Acquire) {
            missing.push(Self::REASONS[1]);
        }
        if !self.registry_loaded() {
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
