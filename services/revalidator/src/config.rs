//! `spool-revalidator` configuration: the shared settings plus the revalidator's own.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use spool_platform::config::CommonConfig;

use crate::destination::{self, DestinationPolicy};

/// Calls each site's revalidation webhooks for every change.
#[derive(Debug, Clone, Parser)]
#[command(name = "spool-revalidator", version)]
pub struct RevalidatorConfig {
    #[command(flatten)]
    pub common: CommonConfig,

    /// Address to listen on (health, metrics, dead-letter admin).
    #[arg(long, env = "SPOOL_LISTEN", default_value = "0.0.0.0:8082")]
    pub listen: SocketAddr,

    /// Name of the durable consumer all replicas share.
    #[arg(long, env = "SPOOL_CONSUMER_NAME", default_value = "spool-revalidator")]
    pub consumer_name: String,

    /// Events handed out and not yet acknowledged, across all replicas (and, separately,
    /// due retries). Waiting retries take none: only events being merged or called do.
    #[arg(long, env = "SPOOL_MAX_ACK_PENDING", default_value_t = 20_000)]
    pub max_ack_pending: i64,

    /// Events one target may keep waiting in a replica (for its window, a free call slot, or
    /// the end of a slow call); past that they are stored as retries, so no target holds
    /// more than this many of the consumer's unacknowledged events. At least
    /// SPOOL_COALESCE_MAX, at most SPOOL_MAX_ACK_PENDING.
    #[arg(long, env = "SPOOL_TARGET_MAX_HELD", default_value_t = 500)]
    pub target_max_held: usize,

    /// How long an unacknowledged event waits before JetStream redelivers it (a crashed
    /// replica's work comes back after this). Long calls send progress to extend it.
    #[arg(long, env = "SPOOL_ACK_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ack_wait: Duration,

    /// Timeout of one revalidation call.
    #[arg(long, env = "SPOOL_CALL_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub call_timeout: Duration,

    /// Calls in flight per target at once.
    #[arg(long, env = "SPOOL_TARGET_CONCURRENCY", default_value_t = 4)]
    pub target_concurrency: usize,

    /// Events for one target arriving within this window are merged into one call.
    #[arg(long, env = "SPOOL_COALESCE_WINDOW", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub coalesce_window: Duration,

    /// Most events merged into one call.
    #[arg(long, env = "SPOOL_COALESCE_MAX", default_value_t = 500)]
    pub coalesce_max: usize,

    /// Delays before the 2nd, 3rd, ... attempt (± 20 % jitter); after the last, the call is
    /// dead-lettered.
    #[arg(long, env = "SPOOL_RETRY_SCHEDULE", default_value = "5s,5m,30m,2h,5h,10h,10h", value_parser = crate::retry::RetryPolicy::parse_schedule)]
    pub retry_schedule: std::vec::Vec<Duration>,

    /// Networks a revalidation target may be on besides the public internet: comma-separated
    /// CIDRs (`10.0.0.0/8,fd00::/8`) or addresses. Empty (the default): public addresses
    /// only — loopback, private, link-local (the cloud metadata address), carrier-grade NAT,
    /// unique-local, multicast, documentation and other special ranges are refused.
    #[arg(long, env = "SPOOL_ALLOWED_TARGET_NETWORKS", default_value = "")]
    pub allowed_target_networks: String,
}

impl RevalidatorConfig {
    /// Defaults, with the given shared settings and listen address (port 0 in tests).
    pub fn new(common: CommonConfig, listen: SocketAddr) -> RevalidatorConfig {
        RevalidatorConfig {
            common,
            listen,
            consumer_name: "spool-revalidator".into(),
            max_ack_pending: 20_000,
            target_max_held: 500,
            ack_wait: Duration::from_secs(30),
            call_timeout: Duration::from_secs(10),
            target_concurrency: 4,
            coalesce_window: Duration::from_millis(100),
            coalesce_max: 500,
            retry_schedule: crate::retry::RetryPolicy::default().schedule,
            allowed_target_networks: String::new(),
        }
    }

    /// Where revalidation calls may connect (`SPOOL_ALLOWED_TARGET_NETWORKS`); the error
    /// names the setting and every bad entry.
    pub fn target_policy(&self) -> Result<DestinationPolicy, String> {
        destination::parse_networks(&self.allowed_target_networks).map(DestinationPolicy::allowing)
    }
}

impl RevalidatorConfig {
    /// Checks what the flags' types can't: every problem, one line each.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.max_ack_pending < 1 {
            problems.push("SPOOL_MAX_ACK_PENDING must be at least 1".to_string());
        }
        if self.target_concurrency < 1 {
            problems.push("SPOOL_TARGET_CONCURRENCY must be at least 1".to_string());
        }
        if self.coalesce_max < 1 {
            problems.push("SPOOL_COALESCE_MAX must be at least 1".to_string());
        }
        if self.target_max_held < self.coalesce_max {
            problems.push(format!(
                "SPOOL_TARGET_MAX_HELD ({}) must be at least SPOOL_COALESCE_MAX ({})",
                self.target_max_held, self.coalesce_max
            ));
        }
        if i64::try_from(self.target_max_held).map_or(true, |held| held > self.max_ack_pending) {
            problems.push(format!(
                "SPOOL_TARGET_MAX_HELD ({}) must be at most SPOOL_MAX_ACK_PENDING ({}): one target could stop every other",
                self.target_max_held, self.max_ack_pending
            ));
        }
        if self.ack_wait < std::time::Duration::from_secs(1) {
            problems.push("SPOOL_ACK_WAIT must be at least 1s".to_string());
        }
        if self.call_timeout.is_zero() {
            problems.push("SPOOL_CALL_TIMEOUT must be more than 0".to_string());
        }
        if let Err(problem) = self.target_policy() {
            problems.push(problem);
        }
        spool_platform::config::verdict(&problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_defaults_equal_the_constructor_defaults() {
        let parsed = RevalidatorConfig::try_parse_from(["x"]).unwrap();
        let built = RevalidatorConfig::new(parsed.common.clone(), parsed.listen);
        assert_eq!(parsed.retry_schedule, built.retry_schedule);
        assert_eq!(parsed.ack_wait, built.ack_wait);
        assert_eq!(parsed.coalesce_window, built.coalesce_window);
        assert_eq!(parsed.listen.port(), 8082);
        let err = RevalidatorConfig::try_parse_from(["x", "--retry-schedule", "1s,later"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("--retry-schedule"), "{err}");
    }

    #[test]
    fn defaults_validate_and_bad_limits_are_named() {
        let parsed = RevalidatorConfig::try_parse_from(["x"]).unwrap();
        parsed.validate().unwrap();
        let bad = RevalidatorConfig::try_parse_from([
            "x",
            "--target-max-held",
            "100",
            "--max-ack-pending",
            "50",
            "--target-concurrency",
            "0",
        ])
        .unwrap();
        let err = bad.validate().unwrap_err();
        assert!(
            err.contains("SPOOL_TARGET_MAX_HELD (100) must be at least SPOOL_COALESCE_MAX (500)"),
            "{err}"
        );
        assert!(err.contains("at most SPOOL_MAX_ACK_PENDING (50)"), "{err}");
        assert!(err.contains("SPOOL_TARGET_CONCURRENCY"), "{err}");
    }

    #[test]
    fn allowed_target_networks_default_to_none_and_bad_ones_are_named() {
        let parsed = RevalidatorConfig::try_parse_from(["x"]).unwrap();
        assert_eq!(parsed.allowed_target_networks, "");
        assert_eq!(
            parsed.target_policy().unwrap(),
            DestinationPolicy::public_only()
        );
        let built = RevalidatorConfig::new(parsed.common.clone(), parsed.listen);
        assert_eq!(
            built.allowed_target_networks,
            parsed.allowed_target_networks
        );

        let parsed = RevalidatorConfig::try_parse_from([
            "x",
            "--allowed-target-networks",
            "127.0.0.0/8,::1/128",
        ])
        .unwrap();
        parsed.validate().unwrap();
        assert_eq!(parsed.target_policy().unwrap().allowed().len(), 2);

        let bad = RevalidatorConfig::try_parse_from([
            "x",
            "--allowed-target-networks",
            "10.0.0.0/8,intranet",
        ])
        .unwrap();
        let err = bad.validate().unwrap_err();
        assert!(
            err.contains("SPOOL_ALLOWED_TARGET_NETWORKS: \"intranet\" is not a network"),
            "{err}"
        );
    }
}
