//! Cross-service tests, all in one binary: real nats-server, real services, real HTTP.

mod admin;
mod delivery_access;
mod delivery_audience;
mod delivery_history;
mod delivery_poll;
mod delivery_reset;
mod delivery_resume;
mod delivery_slow;
mod delivery_stream;
mod deploy;
mod http_limits;
mod memory;
mod nats_outage;
mod openapi;
mod provisioning;
mod revalidator;
mod revalidator_batch;
mod revalidator_crash;
mod revalidator_dlq;
mod revalidator_isolation;
mod revalidator_outbound;
mod revalidator_slow;
mod settings;
mod sigterm;
mod telemetry;
mod webhooks;
