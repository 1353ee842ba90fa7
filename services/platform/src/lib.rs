//! What the three Spool Live services share, one module per concern:
//! configuration, telemetry, shutdown, NATS wiring and provisioning, the site registry,
//! the HTTP plumbing (errors, serving, health and metrics).
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod health;
pub mod http;
pub mod metrics;
pub mod nats;
pub mod range;
pub mod rate;
pub mod registry;
pub mod shutdown;
pub mod telemetry;
pub mod trace;
pub mod write_stall;

mod platform;

pub use platform::Platform;
