//! The real services, in-process on port 0, each with its own shutdown token.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use spool_delivery::DeliveryConfig;
use spool_ingest::IngestConfig;
use spool_platform::config::{CommonConfig, Secret};
use spool_platform::shutdown::CancellationToken;
use spool_revalidator::RevalidatorConfig;
use tokio::task::JoinHandle;

use crate::{eventually, ADMIN_TOKEN, LOOPBACK_TARGET_NETWORKS};

/// A running service: its base URL, a client, and a way to stop it.
pub struct TestService {
    pub base_url: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// The old name, kept for the ingest tests.
pub type TestIngest = TestService;

/// The shared settings tests start from: the test admin token, a short grace period, and
/// the limits per client address out of the way — every test client is 127.0.0.1, and
/// tests open many streams and poll quickly (the tests of the limits set their own).
pub fn common_config(nats_url: &str) -> CommonConfig {
    let mut common = CommonConfig::for_nats(nats_url);
    common.admin_token = Some(Secret::new(ADMIN_TOKEN));
    common.shutdown_grace = Duration::from_secs(5);
    common.max_connections_per_ip = common.max_connections;
    common.requests_per_ip_rate = UNLIMITED;
    common.requests_per_ip_burst = UNLIMITED;
    common
}

/// A rate or burst no test reaches.
const UNLIMITED: u32 = 1_000_000_000;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// An ingest configuration on loopback port 0, without a practical webhook rate per site
/// (tests send their webhooks as fast as they can; the test of the rate sets its own).
pub fn ingest_config(nats_url: &str) -> IngestConfig {
    let mut config = IngestConfig::new(common_config(nats_url), loopback());
    config.webhook_rate = UNLIMITED;
    config.webhook_burst = UNLIMITED;
    config
}

/// A revalidator configuration on loopback port 0, with retries in milliseconds and a
/// short ack wait so that tests see redeliveries quickly. Its targets may be on loopback
/// ([`LOOPBACK_TARGET_NETWORKS`]), where the tests' receivers listen.
pub fn revalidator_config(nats_url: &str) -> RevalidatorConfig {
    let mut config = RevalidatorConfig::new(common_config(nats_url), loopback());
    config.allowed_target_networks = LOOPBACK_TARGET_NETWORKS.into();
    config.retry_schedule = vec![
        Duration::from_millis(100),
        Duration::from_millis(200),
        Duration::from_millis(400),
    ];
    config.ack_wait = Duration::from_secs(2);
    config.call_timeout = Duration::from_secs(2);
    config.coalesce_window = Duration::from_millis(50);
    config
}

/// A delivery configuration on loopback port 0.
pub fn delivery_config(nats_url: &str) -> DeliveryConfig {
    DeliveryConfig::new(common_config(nats_url), loopback())
}

impl TestService {
    /// Starts an ingest and waits until `/readyz` says ready.
    pub async fn start(config: IngestConfig) -> TestService {
        let service = TestService::start_unready(config).await;
        service.wait_ready().await;
        service
    }

    /// Starts an ingest without waiting for NATS.
    pub async fn start_unready(config: IngestConfig) -> TestService {
        let shutdown = CancellationToken::new();
        let app = spool_ingest::Application::build(config, shutdown.clone())
            .await
            .expect("ingest builds");
        TestService::spawn(app.port(), app.run(), shutdown)
    }

    /// Starts a delivery and waits until `/readyz` says ready (feed started).
    pub async fn start_delivery(config: DeliveryConfig) -> TestService {
        let service = TestService::start_delivery_unready(config).await;
        service.wait_ready().await;
        service
    }

    /// Starts a delivery without waiting for NATS (it connects in the background).
    pub async fn start_delivery_unready(config: DeliveryConfig) -> TestService {
        let shutdown = CancellationToken::new();
        let app = spool_delivery::Application::build(config, shutdown.clone())
            .await
            .expect("delivery builds");
        TestService::spawn(app.port(), app.run(), shutdown)
    }

    /// Starts a revalidator and waits until `/readyz` says ready.
    pub async fn start_revalidator(config: RevalidatorConfig) -> TestService {
        let shutdown = CancellationToken::new();
        let app = spool_revalidator::Application::build(config, shutdown.clone())
            .await
            .expect("revalidator builds");
        let service = TestService::spawn(app.port(), app.run(), shutdown);
        service.wait_ready().await;
        service
    }

    fn spawn(
        port: u16,
        run: impl Future<Output = anyhow::Result<()>> + Send + 'static,
        shutdown: CancellationToken,
    ) -> TestService {
        spool_platform::telemetry::init("text", "error", "spool-tests").shutdown();
        TestService {
            base_url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            shutdown,
            handle: Some(tokio::spawn(run)),
        }
    }

    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.base_url);
        eventually("/readyz", Duration::from_secs(20), || async {
            let r = self.http.get(&url).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// An admin request with the test token (ingest only).
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN)
    }

    /// Creates or replaces a site through the admin API (ingest only).
    pub async fn put_site(&self, site: &serde_json::Value) {
        let id = site["id"].as_str().expect("site id");
        let r = self
            .admin(reqwest::Method::PUT, &format!("/v1/admin/sites/{id}"))
            .json(site)
            .send()
            .await
            .expect("admin PUT");
        assert!(
            r.status().is_success(),
            "PUT site {id}: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }

    /// Cancels the service and waits for it to exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        match self.handle.take() {
            Some(h) => h.await?,
            None => Ok(()),
        }
    }
}

impl Drop for TestService {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
