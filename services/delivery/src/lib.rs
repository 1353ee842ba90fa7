//! `spool-delivery`: each site's events as Server-Sent Events and as a poll/long-poll
//! fallback, resumable from any stream sequence on any replica.
//!
//! One ordered JetStream consumer per process (the feed, [`hub`]) fills a window of recent
//! events and a broadcast channel per site; clients resume from the window, or from
//! JetStream when their cursor is older ([`history`]), then follow the live channel with no
//! gap and no duplicate ([`catchup`]).
#![forbid(unsafe_code)]

pub mod catchup;
pub mod config;
pub mod error;
pub mod frames;
pub mod history;
pub mod hub;
pub mod jwks;
pub mod live;
pub mod revalidated;
pub mod routes;
pub mod subscriber;
pub mod window;

use std::sync::Arc;

use spool_platform::http;
use spool_platform::shutdown::CancellationToken;
use spool_platform::Platform;
use tokio::net::TcpListener;

pub use config::DeliveryConfig;

/// `/readyz`'s reason while the live feed has not filled the window from the stream.
pub const NOT_READY_FEED: &str = "feed_not_started";

/// Events buffered per site for its slowest live reader before that reader must catch up
/// from the window instead.
const SITE_CHANNEL_CAPACITY: usize = 1024;

/// A built delivery service: listening, but not serving until [`Application::run`].
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    platform: Platform,
    port: u16,
    slow_client_timeout: std::time::Duration,
}

impl Application {
    /// Binds the listener (port 0 picks a free one), connects to NATS in the background and
    /// starts the feed. Fails only on a bad sites file or an unusable listen address.
    pub async fn build(
        config: DeliveryConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Application> {
        use anyhow::Context as _;
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        let listener = http::bind(config.listen)
            .with_context(|| format!("binding SPOOL_LISTEN {}", config.listen))?;
        let port = listener.local_addr()?.port();
        let platform =
            Platform::start(config.common.clone(), "spool-delivery", shutdown.clone()).await?;
        let hub = Arc::new(hub::Hub::new(
            config.replay_window,
            config.replay_window_bytes,
            SITE_CHANNEL_CAPACITY,
        ));
        let ready_hub = hub.clone();
        platform
            .readiness
            .add_check(NOT_READY_FEED, move || ready_hub.is_ready());
        platform.readiness.set_nats_grace(config.ready_nats_grace);
        tokio::spawn(hub::run_outcomes(
            platform.jetstream.clone(),
            platform.disconnects.clone(),
            hub.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(hub::run_release_timer(hub.clone(), shutdown.clone()));
        tokio::spawn(hub::run_feed(
            platform.jetstream.clone(),
            platform.disconnects.clone(),
            platform.registry.clone(),
            hub.clone(),
            shutdown,
        ));
        let state = routes::AppState {
            history: history::History::new(
                platform.client.clone(),
                platform.jetstream.clone(),
                platform.registry.clone(),
                history::ReadLimits {
                    process: config.history_reads,
                    per_site: config.history_reads_per_site,
                },
            ),
            hub,
            settings: Arc::new(routes::ReadSettings {
                heartbeat: config.heartbeat,
                retry: config.sse_retry,
                busy_retry: config.busy_retry,
                max_lifetime: config.max_stream_lifetime,
            }),
            streams: Arc::new(routes::SiteStreams::new(config.max_streams_per_site)),
            jwks: Arc::new(jwks::JwksCache::new()?),
            platform: platform.clone(),
        };
        Ok(Application {
            listener,
            router: routes::router(state),
            platform,
            port,
            slow_client_timeout: config.slow_client_timeout,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the shutdown token is cancelled; then open streams end at once (clients
    /// resume elsewhere with their last id), long-polls answer what they have, and the
    /// process returns within the grace period.
    pub async fn run(self) -> anyhow::Result<()> {
        let shutdown = self.platform.shutdown.clone();
        let grace = self.platform.config.shutdown_grace;
        let limits = http::ConnectionLimits {
            write_stall: self.slow_client_timeout,
            on_write_stall: || {
                metrics::counter!("spool_delivery_slow_clients_dropped_total").increment(1);
            },
            ..http::ConnectionLimits::from_config(&self.platform.config)
        };
        http::serve_with_grace(self.listener, self.router, shutdown, grace, limits).await?;
        tracing::info!("spool-delivery stopped");
        Ok(())
    }
}

#[cfg(test)]
mod fuzz;
