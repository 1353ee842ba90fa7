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
    bucket: Arc<OnceLock<kv::Store>>,
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
        let platform = Platform {
            config: Arc::new(config),
            readiness: Readiness::new(client.clone()),
            client,
            disconnects,
            jetstream,
            registry: SiteRegistry::default(),
            shutdown,
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
        let mut backoff = Duration::from_millis(100);
        let store = loop {
            let attempt = async {
                let store = crate::nats::provision(&self.jetstream, &self.config.streams).await?;
                registry::apply_sites(&store, &sites).await?;
                anyhow::Ok(store)
            };
            let result = tokio::select! {
                r = attempt => r,
                _ = self.shutdown.cancelled() => return,
            };
            match result {
                Ok(store) => break store,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "provisioning failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        tracing::info!("streams and site registry provisioned");
        self.readiness.set_provisioned();
        let _ = self.bucket.set(store.clone());
        let readiness = self.readiness.clone();
        self.registry
            .follow(
                &self.disconnects,
                store,
                self.shutdown.clone(),
                move |synced| readiness.set_registry_synced(synced),
            )
            .await;
    }
}
