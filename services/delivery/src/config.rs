//! `spool-delivery` configuration: the shared settings plus the delivery's own.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use spool_platform::config::CommonConfig;

/// Serves each site's events as Server-Sent Events and long-poll.
#[derive(Debug, Clone, Parser)]
#[command(name = "spool-delivery", version)]
pub struct DeliveryConfig {
    #[command(flatten)]
    pub common: CommonConfig,

    /// Address to listen on.
    #[arg(long, env = "SPOOL_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,

    /// Recent events kept in memory (all sites) to serve resumes without JetStream.
    #[arg(long, env = "SPOOL_REPLAY_WINDOW", default_value_t = 10_000)]
    pub replay_window: usize,

    /// Most bytes of events the replay window holds (the oldest go first).
    #[arg(long, env = "SPOOL_REPLAY_WINDOW_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub replay_window_bytes: usize,

    /// Interval of the SSE heartbeat comment.
    #[arg(long, env = "SPOOL_HEARTBEAT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,

    /// The `retry:` hint sent to browsers (how long they wait before reconnecting).
    #[arg(long, env = "SPOOL_SSE_RETRY", default_value = "3s", value_parser = humantime::parse_duration)]
    pub sse_retry: Duration,

    /// How long a client may accept no data at all (its socket full) before it is
    /// disconnected; it resumes from its last id.
    #[arg(long, env = "SPOOL_SLOW_CLIENT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub slow_client_timeout: Duration,
}

impl DeliveryConfig {
    /// Checks what the flags' types can't: every problem, one line each.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.replay_window == 0 {
            problems.push("SPOOL_REPLAY_WINDOW must be at least 1");
        }
        if self.replay_window_bytes < 1024 * 1024 {
            problems.push(
                "SPOOL_REPLAY_WINDOW_BYTES must be at least 1 MiB (one event can be 512 KiB)",
            );
        }
        if self.heartbeat < Duration::from_millis(100) {
            problems.push("SPOOL_HEARTBEAT must be at least 100ms");
        }
        if self.sse_retry < Duration::from_millis(100) {
            problems.push("SPOOL_SSE_RETRY must be at least 100ms");
        }
        if self.slow_client_timeout < Duration::from_millis(100) {
            problems.push("SPOOL_SLOW_CLIENT_TIMEOUT must be at least 100ms");
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Defaults, with the given shared settings and listen address (port 0 in tests).
    pub fn new(common: CommonConfig, listen: SocketAddr) -> DeliveryConfig {
        DeliveryConfig {
            common,
            listen,
            replay_window: 10_000,
            replay_window_bytes: 64 * 1024 * 1024,
            heartbeat: Duration::from_secs(15),
            sse_retry: Duration::from_secs(3),
            slow_client_timeout: Duration::from_secs(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_zero_durations_are_named() {
        let parsed = DeliveryConfig::try_parse_from(["x"]).unwrap();
        parsed.validate().unwrap();
        let bad =
            DeliveryConfig::try_parse_from(["x", "--heartbeat", "0s", "--replay-window", "0"])
                .unwrap();
        let err = bad.validate().unwrap_err();
        assert!(err.contains("SPOOL_HEARTBEAT"), "{err}");
        assert!(err.contains("SPOOL_REPLAY_WINDOW must"), "{err}");
    }
}
