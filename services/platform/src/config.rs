//! Configuration shared by every service, from flags and environment variables.
//! Each service flattens [`CommonConfig`] into its own `clap` parser and adds `--listen`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::client::TrustedProxies;

/// A secret from configuration: never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            Err("must not be empty".into())
        } else {
            Ok(Secret(s.into()))
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct CommonConfig {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// NATS credentials file (JWT + NKey), if the server requires one.
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,

    /// Sites file (a JSON or YAML array of sites) written to the registry at start-up.
    /// Empty (`SPOOL_SITES_FILE=`, as templates often render it) means none.
    #[arg(long, env = "SPOOL_SITES_FILE", value_parser = any_path)]
    pub sites_file: Option<PathBuf>,

    /// Bearer token of the admin API; unset = admin API disabled.
    #[arg(long, env = "SPOOL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,

    #[command(flatten)]
    pub streams: StreamSettings,

    /// How long shutdown waits for in-flight work after SIGTERM.
    #[arg(long, env = "SPOOL_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format: `text` (readable) or `json` (one object per line, for production).
    #[arg(long, env = "SPOOL_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// A connection that takes longer than this to send a request head — a new one, or an
    /// idle keep-alive one waiting for its next request — is closed.
    #[arg(long, env = "SPOOL_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,

    /// Open connections per process; past this, new ones are closed at once (clients retry).
    #[arg(long, env = "SPOOL_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,

    /// Open connections per client address (the socket peer; IPv6 by /64); past this, its
    /// new ones are closed at once. Trusted proxies are exempt.
    #[arg(long, env = "SPOOL_MAX_CONNECTIONS_PER_IP", default_value_t = 512)]
    pub max_connections_per_ip: usize,

    /// Proxies (comma-separated CIDRs or addresses) whose `X-Forwarded-For` names the
    /// client; empty = none: the socket peer is the client.
    #[arg(long, env = "SPOOL_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: TrustedProxies,

    /// New API requests per second per client address (refilling its bucket); past it, 429.
    #[arg(long, env = "SPOOL_REQUESTS_PER_IP_RATE", default_value_t = 50)]
    pub requests_per_ip_rate: u32,

    /// API requests a client address may make at once before its rate applies.
    #[arg(long, env = "SPOOL_REQUESTS_PER_IP_BURST", default_value_t = 200)]
    pub requests_per_ip_burst: u32,
}

/// How the streams and the bucket are provisioned (applied idempotently at start-up).
#[derive(Debug, Clone, Args)]
pub struct StreamSettings {
    /// Replicas of every stream and bucket (1 in dev, 3 in production: a 3-node cluster).
    #[arg(long = "stream-replicas", env = "SPOOL_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,

    /// How long events are kept (the history a client can resume from).
    #[arg(long = "stream-max-age", env = "SPOOL_STREAM_MAX_AGE", default_value = "7d", value_parser = humantime::parse_duration)]
    pub max_age: Duration,

    /// Size cap of `SPOOL_EVENTS` in bytes (oldest events go first); -1 = no cap.
    #[arg(long = "stream-max-bytes", env = "SPOOL_STREAM_MAX_BYTES", default_value_t = -1, allow_negative_numbers = true)]
    pub max_bytes: i64,

    /// Window in which a repeated `webhook-id` is recognised as a duplicate.
    #[arg(long, env = "SPOOL_DUPLICATE_WINDOW", default_value = "1h", value_parser = humantime::parse_duration)]
    pub duplicate_window: Duration,

    /// How long dead letters are kept.
    #[arg(long, env = "SPOOL_DLQ_MAX_AGE", default_value = "30d", value_parser = humantime::parse_duration)]
    pub dlq_max_age: Duration,

    /// How long the records of revalidation calls (`SPOOL_OUTCOMES`) are kept.
    #[arg(long, env = "SPOOL_OUTCOMES_MAX_AGE", default_value = "1d", value_parser = humantime::parse_duration)]
    pub outcomes_max_age: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            replicas: 1,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: -1,
            duplicate_window: Duration::from_secs(3600),
            dlq_max_age: Duration::from_secs(30 * 24 * 3600),
            outcomes_max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// A settings check's answer: every problem on one line, or none.
pub fn verdict(problems: &[impl AsRef<str>]) -> Result<(), String> {
    if problems.is_empty() {
        return Ok(());
    }
    Err(problems
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join("; "))
}

impl CommonConfig {
    /// The servers of `NATS_URL`: one URL, or several separated by commas (the client
    /// connects to any that answers, and moves to another when its node is gone).
    pub fn nats_servers(&self) -> Result<Vec<async_nats::ServerAddr>, String> {
        let urls: Vec<&str> = self
            .nats_url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err("NATS_URL must name at least one server".into());
        }
        urls.iter()
            .map(|url| {
                url.parse::<async_nats::ServerAddr>()
                    .map_err(|e| format!("NATS_URL: {url:?} is not a server URL ({e})"))
            })
            .collect()
    }

    /// The defaults with another NATS URL: what tests and embedders start from.
    pub fn for_nats(nats_url: impl Into<String>) -> CommonConfig {
        CommonConfig {
            nats_url: nats_url.into(),
            nats_creds: None,
            sites_file: None,
            admin_token: None,
            streams: StreamSettings::default(),
            shutdown_grace: Duration::from_secs(20),
            log_format: "text".into(),
            header_timeout: Duration::from_secs(10),
            max_connections: 20_000,
            max_connections_per_ip: 512,
            trusted_proxies: TrustedProxies::default(),
            requests_per_ip_rate: 50,
            requests_per_ip_burst: 200,
        }
    }

    /// Checks what the flags' types can't: every problem, one line each.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if let Err(e) = self.nats_servers() {
            problems.push(e);
        }
        if self.streams.outcomes_max_age < Duration::from_secs(60) {
            problems.push("SPOOL_OUTCOMES_MAX_AGE must be at least 1m".to_string());
        }
        if self.header_timeout < Duration::from_millis(100) {
            problems.push("SPOOL_HEADER_TIMEOUT must be at least 100ms".to_string());
        }
        if self.max_connections == 0 {
            problems.push("SPOOL_MAX_CONNECTIONS must be at least 1".to_string());
        }
        if self.max_connections_per_ip == 0 {
            problems.push("SPOOL_MAX_CONNECTIONS_PER_IP must be at least 1".to_string());
        }
        if self.requests_per_ip_rate == 0 {
            problems.push("SPOOL_REQUESTS_PER_IP_RATE must be more than 0".to_string());
        }
        if self.requests_per_ip_burst == 0 {
            problems.push("SPOOL_REQUESTS_PER_IP_BURST must be more than 0".to_string());
        }
        if self.shutdown_grace.is_zero() {
            problems.push("SPOOL_SHUTDOWN_GRACE must be more than 0".to_string());
        }
        if self.streams.duplicate_window.is_zero() {
            problems.push("SPOOL_DUPLICATE_WINDOW must be more than 0".to_string());
        }
        if !self.streams.max_age.is_zero() && self.streams.duplicate_window > self.streams.max_age {
            problems.push(format!(
                "SPOOL_DUPLICATE_WINDOW ({:?}) must not exceed SPOOL_STREAM_MAX_AGE ({:?})",
                self.streams.duplicate_window, self.streams.max_age
            ));
        }
        verdict(&problems)
    }
}

/// A path, empty allowed (clap's own path parser refuses an empty value).
fn any_path(value: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(value))
}

impl CommonConfig {
    /// The sites file to apply at start-up, if one is set (and not empty).
    pub fn sites_file(&self) -> Option<&std::path::Path> {
        self.sites_file
            .as_deref()
            .filter(|path| !path.as_os_str().is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonConfig,
    }

    #[test]
    fn nats_url_takes_a_list() {
        let mut config = CommonConfig::for_nats("nats://a:4222, nats://b:4223,nats://c:4224");
        let servers = config.nats_servers().unwrap();
        assert_eq!(servers.len(), 3);
        assert_eq!(servers[1].host(), "b");
        config.nats_url = "nats://a:4222,nats://b:port".into();
        let err = config.validate().unwrap_err();
        assert!(
            err.contains("NATS_URL") && err.contains("nats://b:port"),
            "{err}"
        );
        config.nats_url = " , ".into();
        assert!(config.validate().unwrap_err().contains("NATS_URL"));
    }

    #[test]
    fn defaults_match_the_contract() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        let d = StreamSettings::default();
        assert_eq!(cli.common.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(cli.common.streams.max_age, d.max_age);
        assert_eq!(cli.common.streams.duplicate_window, d.duplicate_window);
        assert_eq!(cli.common.streams.dlq_max_age, d.dlq_max_age);
        assert_eq!(cli.common.streams.max_bytes, -1);
        assert_eq!(cli.common.streams.replicas, 1);
    }

    #[test]
    fn an_empty_sites_file_means_none() {
        let cli = Cli::try_parse_from(["x", "--sites-file="]).unwrap();
        assert_eq!(cli.common.sites_file(), None);
        let cli = Cli::try_parse_from(["x", "--sites-file", "sites.yaml"]).unwrap();
        assert_eq!(
            cli.common.sites_file(),
            Some(std::path::Path::new("sites.yaml"))
        );
        assert_eq!(
            Cli::try_parse_from(["x"]).unwrap().common.sites_file(),
            None
        );
    }

    #[test]
    fn bad_values_name_the_flag() {
        let err = Cli::try_parse_from(["x", "--stream-max-age", "soon"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--stream-max-age"), "{err}");
        let err = Cli::try_parse_from(["x", "--stream-replicas", "0"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--stream-replicas"), "{err}");
    }

    #[test]
    fn the_limits_default_and_parse() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        let d = CommonConfig::for_nats("nats://127.0.0.1:4222");
        assert_eq!(cli.common.max_connections_per_ip, 512);
        assert_eq!(cli.common.max_connections_per_ip, d.max_connections_per_ip);
        assert_eq!(cli.common.requests_per_ip_rate, d.requests_per_ip_rate);
        assert_eq!(cli.common.requests_per_ip_burst, d.requests_per_ip_burst);
        assert!(cli.common.trusted_proxies.is_empty());
        cli.common.validate().unwrap();
        // Empty, as templates render an unset value.
        let cli = Cli::try_parse_from(["x", "--trusted-proxies="]).unwrap();
        assert!(cli.common.trusted_proxies.is_empty());
        let cli =
            Cli::try_parse_from(["x", "--trusted-proxies", "10.0.0.0/8, 192.168.0.1"]).unwrap();
        assert!(cli
            .common
            .trusted_proxies
            .contains("10.42.0.3".parse().unwrap()));
        assert!(cli
            .common
            .trusted_proxies
            .contains("192.168.0.1".parse().unwrap()));
        let err = Cli::try_parse_from(["x", "--trusted-proxies", "10.0.0.0/8,ingress"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--trusted-proxies"), "{err}");
        assert!(err.contains("ingress"), "{err}");
    }

    #[test]
    fn zero_limits_are_refused_by_name() {
        let mut config = CommonConfig::for_nats("nats://127.0.0.1:4222");
        config.max_connections_per_ip = 0;
        config.requests_per_ip_rate = 0;
        config.requests_per_ip_burst = 0;
        let err = config.validate().unwrap_err();
        assert!(err.contains("SPOOL_MAX_CONNECTIONS_PER_IP must"), "{err}");
        assert!(err.contains("SPOOL_REQUESTS_PER_IP_RATE must"), "{err}");
        assert!(err.contains("SPOOL_REQUESTS_PER_IP_BURST must"), "{err}");
    }

    #[test]
    fn secrets_are_not_printed() {
        let cli = Cli::try_parse_from(["x", "--admin-token", "hunter2"]).unwrap();
        assert!(!format!("{:?}", cli.common).contains("hunter2"));
    }
}
