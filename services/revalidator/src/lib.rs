//! `spool-revalidator`: a durable JetStream consumer, shared by any number of replicas,
//! that calls each site's revalidation targets — signed, retried with backoff, merged when
//! events come close together, dead-lettered when they can't succeed.
#![forbid(unsafe_code)]

pub mod config;
pub mod consumer;
pub mod destination;
pub mod dispatch;
pub mod dlq;
pub mod error;
pub mod lane;
pub mod outcomes;
pub mod pauses;
pub mod redact;
pub mod retries;
pub mod retry;
pub mod routes;
pub mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use spool_platform::http;
use spool_platform::shutdown::CancellationToken;
use spool_platform::Platform;
use tokio::net::TcpListener;

pub use config::RevalidatorConfig;

/// `/readyz`'s reason until the target pauses are loaded and both consumers pull.
pub const NOT_READY_CONSUMER: &str = "consumer_not_ready";

/// A built revalidator: listening, but not serving until [`Application::run`].
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    platform: Platform,
    worker: Arc<worker::Worker>,
    port: u16,
}

impl Application {
    /// Binds the listener, connects to NATS in the background and starts consuming.
    pub async fn build(
        config: RevalidatorConfig,
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
            Platform::start(config.common.clone(), "spool-revalidator", shutdown.clone()).await?;
        let policy = config
            .target_policy()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        if !policy.allowed().is_empty() {
            tracing::info!(networks = ?policy.allowed(), "revalidation targets may also be on these networks (SPOOL_ALLOWED_TARGET_NETWORKS)");
        }
        let worker = worker::Worker::new(
            platform.clone(),
            dispatch::Dispatcher::new(config.call_timeout, policy)?,
            worker::Settings::from_config(&config),
        );
        let consumer = consumer::ConsumerSettings {
            name: config.consumer_name.clone(),
            ack_wait: config.ack_wait,
            max_ack_pending: config.max_ack_pending,
        };
        // The shared target pauses are loaded before anything is consumed: a replica that
        // starts must not call a target another one paused.
        let pauses_synced = Arc::new(AtomicBool::new(false));
        let (first_sync, mut synced_once) = tokio::sync::watch::channel(false);
        {
            let (synced, changed) = (pauses_synced.clone(), worker.clone());
            tokio::spawn(worker.pauses.clone().follow(
                platform.jetstream.clone(),
                platform.disconnects.clone(),
                shutdown.clone(),
                move |ok| {
                    synced.store(ok, Ordering::Release);
                    if ok {
                        first_sync.send_replace(true);
                    }
                },
                move |key, pause| changed.pause_changed(key, pause),
            ));
        }
        let mut feeds = vec![pauses_synced];
        let mut consumers = Vec::new();
        for feed in [consumer::Feed::Events, consumer::Feed::Retries] {
            let consuming = Arc::new(AtomicBool::new(false));
            feeds.push(consuming.clone());
            consumers.push(consumer::run(
                platform.jetstream.clone(),
                consumer.clone(),
                feed,
                worker.clone(),
                platform.disconnects.clone(),
                consuming,
                shutdown.clone(),
            ));
        }
        tokio::spawn(async move {
            if synced_once.wait_for(|synced| *synced).await.is_ok() {
                futures::future::join_all(consumers).await;
            }
        });
        platform.readiness.add_check(NOT_READY_CONSUMER, move || {
            feeds.iter().all(|ready| ready.load(Ordering::Acquire))
        });
        tokio::spawn(consumer::report_pending(
            platform.jetstream.clone(),
            config.consumer_name.clone(),
            shutdown,
        ));
        let state = routes::AppState {
            platform: platform.clone(),
            worker: worker.clone(),
            admin_token: config.common.admin_token.clone().map(Arc::new),
        };
        Ok(Application {
            listener,
            router: routes::router(state),
            platform,
            worker,
            port,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the shutdown token is cancelled; then stops taking events, lets the
    /// calls in flight finish (within the grace period) and returns. Events not acknowledged
    /// by then are redelivered to another replica after the ack wait.
    pub async fn run(self) -> anyhow::Result<()> {
        let shutdown = self.platform.shutdown.clone();
        let grace = self.platform.config.shutdown_grace;
        // Bounded like the other services: a half-open connection can't hold SIGTERM.
        http::serve_with_grace(
            self.listener,
            self.router,
            shutdown.clone(),
            grace,
            http::ConnectionLimits::from_config(&self.platform.config),
        )
        .await?;
        self.worker.calls.close();
        if tokio::time::timeout(grace, self.worker.calls.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "revalidation calls still running after the grace period; they will be redelivered"
            );
        }
        self.platform.flush_on_shutdown().await;
        tracing::info!("spool-revalidator stopped");
        Ok(())
    }
}
