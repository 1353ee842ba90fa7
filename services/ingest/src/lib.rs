//! `spool-ingest`: receives the CMS's signed webhooks, turns each into a content event and
//! writes it to JetStream, answering 2xx only once JetStream acknowledged the write.
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod limits;
pub mod publish;
pub mod routes;

use std::sync::Arc;

use spool_platform::http;
use spool_platform::rate::Rate;
use spool_platform::shutdown::CancellationToken;
use spool_platform::Platform;
use tokio::net::TcpListener;

pub use config::IngestConfig;

/// A built ingest service: listening, but not serving until [`Application::run`].
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    platform: Platform,
    port: u16,
}

impl Application {
    /// Binds the listener (port 0 picks a free one), connects to NATS in the background and
    /// starts provisioning. Fails only on a bad sites file or an unusable listen address.
    pub async fn build(
        config: IngestConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Application> {
        use anyhow::Context as _;
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        let listener = http::bind(config.listen)
            .with_context(|| format!("binding SPOOL_LISTEN {}", config.listen))?;
        let port = listener.local_addr()?.port();
        let platform = Platform::start(config.common.clone(), "spool-ingest", shutdown).await?;
        let state = routes::AppState {
            publisher: publish::Publisher::new(platform.client.clone(), config.publish_timeout),
            admin_token: config.common.admin_token.clone().map(Arc::new),
            webhook_tolerance: config.webhook_tolerance,
            body_timeout: config.body_timeout,
            webhook_limits: Arc::new(limits::SiteLimits::new(Rate::new(
                config.webhook_rate,
                config.webhook_burst,
            ))),
            platform: platform.clone(),
        };
        Ok(Application {
            listener,
            router: routes::router(state),
            platform,
            port,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the shutdown token is cancelled, lets in-flight webhooks finish (each
    /// either acknowledged by JetStream or answered 503), then flushes the NATS connection.
    pub async fn run(self) -> anyhow::Result<()> {
        let shutdown = self.platform.shutdown.clone();
        let grace = self.platform.config.shutdown_grace;
        http::serve_with_grace(
            self.listener,
            self.router,
            shutdown,
            grace,
            http::ConnectionLimits::from_config(&self.platform.config),
        )
        .await?;
        self.platform.flush_on_shutdown().await;
        tracing::info!("spool-ingest stopped");
        Ok(())
    }
}

#[cfg(test)]
mod fuzz;
