//! The real services, in-process on port 0, each with its own shutdown token.

use std::net::SocketAddr;
use std::time::Duration;

use spool_ingest::{Application, IngestConfig};
use spool_platform::config::{CommonConfig, Secret};
use spool_platform::shutdown::CancellationToken;
use tokio::task::JoinHandle;

use crate::{eventually, ADMIN_TOKEN};

pub struct TestIngest {
    pub base_url: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// The configuration tests start from: loopback port 0, the test admin token.
pub fn ingest_config(nats_url: &str) -> IngestConfig {
    let mut common = CommonConfig::for_nats(nats_url);
    common.admin_token = Some(Secret::new(ADMIN_TOKEN));
    common.shutdown_grace = Duration::from_secs(5);
    IngestConfig::new(common, SocketAddr::from(([127, 0, 0, 1], 0)))
}

impl TestIngest {
    /// Starts an ingest and waits until `/readyz` says ready.
    pub async fn start(config: IngestConfig) -> TestIngest {
        let ingest = TestIngest::start_unready(config).await;
        ingest.wait_ready().await;
        ingest
    }

    /// Starts an ingest without waiting for NATS.
    pub async fn start_unready(config: IngestConfig) -> TestIngest {
        spool_platform::telemetry::init("text", "error");
        let shutdown = CancellationToken::new();
        let app = Application::build(config, shutdown.clone())
            .await
            .expect("ingest builds");
        let base_url = format!("http://127.0.0.1:{}", app.port());
        let handle = tokio::spawn(app.run());
        TestIngest {
            base_url,
            http: reqwest::Client::new(),
            shutdown,
            handle: Some(handle),
        }
    }

    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.base_url);
        eventually("ingest /readyz", Duration::from_secs(20), || async {
            let r = self.http.get(&url).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// An admin request with the test token.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN)
    }

    /// Creates or replaces a site through the admin API.
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

impl Drop for TestIngest {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
