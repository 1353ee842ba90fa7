//! [`Platform`]: what a service gets from start-up — the NATS client and JetStream
//! context, the site registry kept current, readiness, and the shutdown token.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use spool_proto::Site;
use tokio_util::sync::CancellationToken;

use crate::config::CommonConfig;
use crate::health::Readiness;
use crate::nats::Disconnects;
use crate::registry::{self, SiteRegistry};

#[derive(Clone)]
pub struct Platform {
    pub config: Arc<CommonConfig>,
    pub client: async_nats::Client,
    /// Fires on every lost connection (see [`Disconnects`]).
    pub disconnects: Disconnects,
    pub jetstream: jetstream::Context,
    pub registry: SiteRegistry,
    pub readiness: Readiness,
    pub shutdown: CancellationToken,
    /// This process among the replicas: its host's name (a pod's name in Kubernetes) and a
    /// random suffix, e.g. `spool-revalidator-7d9f-x2k4q-3fa81c`. Records name it.
    pub instance: Arc<str>,
    bucket: Arc<OnceLock<kv::Store>>,
}

/// `<host>-<6 random hex digits>`: the host from `HOSTNAME` (Kubernetes sets the pod's name)
/// or `/etc/hostname`, and a suffix that tells apart processes on one host.
fn instance_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "spool".to_owned());
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{host}-{:06x}", random & 0xff_ffff)
}

impl Platform {
    /// Reads the sites file (a bad file fails start-up, naming the problem), starts the
    /// NATS connection in the background and spawns the bring-up: provision the streams and
    /// the bucket (retrying until NATS answers), write the file's sites, follow the bucket.
    pub async fn start(
        config: CommonConfig,
        service: &str,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Platform> {
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        let sites = match config.sites_file() {
            Some(path) => registry::load_sites_file(path)?,
            None => Vec::new(),
        };
        crate::metrics::handle();
        let (client, disconnects) = crate::nats::connect(&config, service).await?;
        let jetstream = jetstream::new(client.clone());
        let registry = SiteRegistry::default();
        let platform = Platform {
            config: Arc::new(config),
            readiness: Readiness::new(client.clone(), registry.clone()),
            client,
            disconnects,
            jetstream,
            registry,
            shutdown,
            instance: instance_name().into(),
            bucket: Arc::default(),
        };
        tokio::spawn(platform.clone().bring_up(sites));
        Ok(platform)
    }

    /// Flushes what the NATS client still buffers, bounded: with NATS unreachable there is
    /// nothing to flush to, and shutdown must not wait for it.
    pub async fn flush_on_shutdown(&self) {
        match tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await {
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing NATS on shutdown failed"),
            Err(_) => tracing::warn!("NATS unreachable: nothing flushed on shutdown"),
            Ok(Ok(())) => {}
        }
    }

    /// The `spool-sites` bucket, once provisioned.
    pub fn sites_bucket(&self) -> Option<&kv::Store> {
        self.bucket.get()
    }

    async fn bring_up(self, sites: Vec<Site>) {
        let provisioned = crate::nats::retry_until_ok("provisioning", &self.shutdown, || async {
            let store = crate::nats::provision(&self.jetstream, &self.config.streams).await?;
            registry::apply_sites(&store, &sites).await?;
            anyhow::Ok(store)
        })
        .await;
        let Some(store) = provisioned else { return };
        tracing::info!("streams and site registry provisioned");
        self.readiness.set_provisioned();
        let _ = self.bucket.set(store.clone());
        self.registry
            .follow(&self.disconnects, store, self.shutdown.clone())
            .await;
    }
}
