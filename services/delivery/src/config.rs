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

    /// History reads (cursors older than the window) running at once in the process; one
    /// more is told to come back later (`429` + `Retry-After` to a poll, a longer `retry:`
    /// to a stream).
    #[arg(long, env = "SPOOL_HISTORY_READS", default_value_t = 32)]
    pub history_reads: usize,

    /// History reads running at once for one site (at most `SPOOL_HISTORY_READS`).
    #[arg(long, env = "SPOOL_HISTORY_READS_PER_SITE", default_value_t = 4)]
    pub history_reads_per_site: usize,

    /// How long a reader turned away by those limits is asked to wait: a poll's
    /// `Retry-After`, a stream's `retry:` (up to half as long again, spread at random).
    #[arg(long, env = "SPOOL_BUSY_RETRY", default_value = "10s", value_parser = humantime::parse_duration)]
    pub busy_retry: Duration,

    /// Open SSE streams of one site in the process; one more is told (`event: goaway`) to
    /// long-poll instead, so one site can't take every connection of a shared install.
    #[arg(long, env = "SPOOL_MAX_STREAMS_PER_SITE", default_value_t = 10_000)]
    pub max_streams_per_site: usize,

    /// Longest life of one SSE stream: it then ends and its client resumes from its last
    /// id (each stream's life is drawn between three quarters of this and this, so that
    /// reconnects spread over time rather than all coming back together).
    #[arg(long, env = "SPOOL_MAX_STREAM_LIFETIME", default_value = "30m", value_parser = humantime::parse_duration)]
    pub max_stream_lifetime: Duration,

    /// How long a client may accept no data at all (its socket full) before it is
    /// disconnected; it resumes from its last id.
    #[arg(long, env = "SPOOL_SLOW_CLIENT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub slow_client_timeout: Duration,

    /// How long a NATS disconnection may last before `/readyz` says `nats_disconnected`
    /// (`0s`: at once). Meanwhile the process serves resumes from its window and tells new
    /// streams to retry, which a browser does, rather than leaving the load balancer.
    #[arg(long, env = "SPOOL_READY_NATS_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ready_nats_grace: Duration,
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
        if self.history_reads == 0 {
            problems.push("SPOOL_HISTORY_READS must be at least 1");
        }
        if self.history_reads_per_site == 0 || self.history_reads_per_site > self.history_reads {
            problems.push("SPOOL_HISTORY_READS_PER_SITE must be between 1 and SPOOL_HISTORY_READS");
        }
        if self.max_streams_per_site == 0 {
            problems.push("SPOOL_MAX_STREAMS_PER_SITE must be at least 1");
        }
        if self.max_stream_lifetime < Duration::from_secs(10) {
            problems.push("SPOOL_MAX_STREAM_LIFETIME must be at least 10s");
        }
        if self.busy_retry < Duration::from_secs(1) {
            problems.push("SPOOL_BUSY_RETRY must be at least 1s");
        }
        if self.slow_client_timeout < Duration::from_millis(100) {
            problems.push("SPOOL_SLOW_CLIENT_TIMEOUT must be at least 100ms");
        }
        if self.ready_nats_grace > Duration::from_secs(600) {
            problems.push("SPOOL_READY_NATS_GRACE must be at most 10m");
        }
        spool_platform::config::verdict(&problems)
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
            history_reads: 32,
            history_reads_per_site: 4,
            busy_retry: Duration::from_secs(10),
            max_streams_per_site: 10_000,
            max_stream_lifetime: Duration::from_secs(30 * 60),
            slow_client_timeout: Duration::from_secs(10),
            ready_nats_grace: Duration::from_secs(30),
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
        let bad = DeliveryConfig::try_parse_from([
            "x",
            "--heartbeat",
            "0s",
            "--replay-window",
            "0",
            "--history-reads",
            "2",
            "--history-reads-per-site",
            "3",
            "--busy-retry",
            "0s",
            "--max-stream-lifetime",
            "1s",
            "--ready-nats-grace",
            "1h",
        ])
        .unwrap();
        let err = bad.validate().unwrap_err();
        assert!(err.contains("SPOOL_HISTORY_READS_PER_SITE must"), "{err}");
        assert!(err.contains("SPOOL_BUSY_RETRY"), "{err}");
        assert!(err.contains("SPOOL_MAX_STREAM_LIFETIME"), "{err}");
        assert!(
            err.contains("SPOOL_READY_NATS_GRACE must be at most 10m"),
            "{err}"
        );
        assert!(err.contains("SPOOL_HEARTBEAT"), "{err}");
        assert!(err.contains("SPOOL_REPLAY_WINDOW must"), "{err}");
    }
}
