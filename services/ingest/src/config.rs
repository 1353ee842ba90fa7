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

    /// Longest time a request body may take to arrive in full (a body that trickles in is
    /// answered `408`): a webhook is at most 256 KiB.
    #[arg(long, env = "SPOOL_BODY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,

    /// Signed webhooks accepted per second per site (refilling its bucket); past it, 429
    /// with `Retry-After` (the CMS retries with the same webhook-id).
    #[arg(long, env = "SPOOL_WEBHOOK_RATE", default_value_t = 200)]
    pub webhook_rate: u32,

    /// Signed webhooks a site may send at once before its rate applies.
    #[arg(long, env = "SPOOL_WEBHOOK_BURST", default_value_t = 1000)]
    pub webhook_burst: u32,
}

impl IngestConfig {
    /// Defaults, with another NATS URL and a listen address (port 0 in tests).
    pub fn new(common: CommonConfig, listen: SocketAddr) -> IngestConfig {
        IngestConfig {
            common,
            listen,
            publish_timeout: Duration::from_secs(3),
            webhook_tolerance: Duration::from_secs(5 * 60),
            body_timeout: Duration::from_secs(10),
            webhook_rate: 200,
            webhook_burst: 1000,
        }
    }

    /// Checks what the flags' types can't: every problem, one line each.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.body_timeout < Duration::from_millis(100) {
            problems.push("SPOOL_BODY_TIMEOUT must be at least 100ms");
        }
        if self.webhook_rate == 0 {
            problems.push("SPOOL_WEBHOOK_RATE must be more than 0");
        }
        if self.webhook_burst == 0 {
            problems.push("SPOOL_WEBHOOK_BURST must be more than 0");
        }
        spool_platform::config::verdict(&problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_zero_webhook_limits_are_named() {
        let parsed = IngestConfig::try_parse_from(["x"]).unwrap();
        parsed.validate().unwrap();
        let built = IngestConfig::new(parsed.common.clone(), parsed.listen);
        assert_eq!(parsed.webhook_rate, built.webhook_rate);
        assert_eq!(parsed.webhook_burst, built.webhook_burst);
        assert_eq!((built.webhook_rate, built.webhook_burst), (200, 1000));
        let bad =
            IngestConfig::try_parse_from(["x", "--webhook-rate", "0", "--webhook-burst", "0"])
                .unwrap();
        let err = bad.validate().unwrap_err();
        assert!(err.contains("SPOOL_WEBHOOK_RATE must"), "{err}");
        assert!(err.contains("SPOOL_WEBHOOK_BURST must"), "{err}");
    }
}
