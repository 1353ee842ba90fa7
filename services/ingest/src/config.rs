//! `spool-ingest` configuration: the shared settings plus the ingest's own.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use spool_platform::config::CommonConfig;

/// Receives Spool CMS webhooks and writes them to JetStream.
#[derive(Debug, Clone, Parser)]
#[command(name = "spool-ingest", version)]
pub struct IngestConfig {
    #[command(flatten)]
    pub common: CommonConfig,

    /// Address to listen on.
    #[arg(long, env = "SPOOL_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// How long a webhook waits for the JetStream acknowledgement before answering 503.
    #[arg(long, env = "SPOOL_PUBLISH_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub publish_timeout: Duration,

    /// Accepted distance between `webhook-timestamp` and the server's clock, either way.
    #[arg(long, env = "SPOOL_WEBHOOK_TOLERANCE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub webhook_tolerance: Duration,
}

impl IngestConfig {
    /// Defaults, with another NATS URL and a listen address (port 0 in tests).
    pub fn new(common: CommonConfig, listen: SocketAddr) -> IngestConfig {
        IngestConfig {
            common,
            listen,
            publish_timeout: Duration::from_secs(3),
            webhook_tolerance: Duration::from_secs(5 * 60),
        }
    }
}
