//! Waiting retries, kept in JetStream (`SPOOL_RETRY`), not in memory and not as unacknowledged
//! events.
//!
//! Why this design: a retry used to be a NAK with a delay on the one durable consumer all
//! sites share, and a NAKed event keeps its ack-pending slot while it waits — so 1,000
//! events of one broken site stopped revalidation for every site for as long as their
//! schedule ran (up to a day). Now a call that fails is written down as a *retry record*
//! (the call as it was made: its `webhook-id`, its events, its attempt) and published as a
//! JetStream message schedule (`Nats-Schedule: @at <time>`, nats-server 2.12+); then its
//! events are acknowledged. The server itself publishes the record to
//! `spool.retry.due.<site>.<target>` when its time comes, and the retry consumer takes it
//! from there. A waiting retry holds no consumer slot and no memory in any replica, survives
//! the loss of every replica, and is never called early: it does not exist as a message to
//! consume before its time. A record is removed once acknowledged (a work-queue stream).
//! Per-consumer alternatives were weighed: a consumer per site costs the cluster a raft
//! group per site; per-target records in a KV bucket need a poller to find what is due.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use spool_proto::names::{retry_due_subject, retry_schedule_subject};
use spool_proto::{Event, SiteId};

/// The stored form of a call that must be made again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryRecord {
    pub site: SiteId,
    /// The target's URL: the retry goes to the target of the site with this URL, as it is
    /// configured when the retry is made (its secret may have been rotated).
    pub url: String,
    /// The call's `webhook-id`: the same on every attempt.
    pub webhook_id: String,
    /// The number of the next attempt (1: never called yet, parked while the target was
    /// paused or busy).
    pub attempt: u64,
    /// When the first attempt failed or was parked.
    #[serde(with = "time::serde::rfc3339")]
    pub since: time::OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The `traceparent` of the first event's change, so the retry joins its trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The call's events, in seq order.
    pub events: Vec<Event>,
}

pub use spool_proto::outcome::target_key;

/// `Nats-Schedule` value for a one-shot schedule at `at`.
fn schedule_at(at: time::OffsetDateTime) -> anyhow::Result<String> {
    let at = at.to_offset(time::UtcOffset::UTC);
    let text = at.format(&time::format_description::well_known::Rfc3339)?;
    Ok(format!("@at {text}"))
}

/// Stores `record` to come due after `delay`. Returns once JetStream has it: from then on
/// the retry exists whatever happens to this process. Scheduling the same call again (a
/// crash between scheduling and acknowledging) replaces the first schedule.
pub async fn schedule(
    js: &jetstream::Context,
    record: &RetryRecord,
    delay: Duration,
) -> anyhow::Result<()> {
    let key = target_key(&record.site, &record.url);
    let call = record.webhook_id.as_str();
    let at = time::OffsetDateTime::now_utc() + delay;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Schedule", schedule_at(at)?.as_str());
    headers.insert(
        "Nats-Schedule-Target",
        retry_due_subject(&record.site, &key).as_str(),
    );
    let payload = Bytes::from(serde_json::to_vec(record)?);
    js.publish_with_headers(
        retry_schedule_subject(&record.site, &key, call),
        headers,
        payload,
    )
    .await?
    .await?;
    metrics::counter!("spool_revalidator_retries_scheduled_total").increment(1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_keys_are_subject_tokens_per_site_and_url() {
        let acme = SiteId::parse("acme").unwrap();
        let key = target_key(&acme, "https://a.example/r");
        assert_eq!(key.len(), 20);
        assert!(key.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(key, target_key(&acme, "https://a.example/r"));
        assert_ne!(key, target_key(&acme, "https://b.example/r"));
        let other = SiteId::parse("other").unwrap();
        assert_ne!(key, target_key(&other, "https://a.example/r"));
    }

    #[test]
    fn schedules_are_utc_instants() {
        let at = time::macros::datetime!(2026-12-02 10:00:00.25 +02:00);
        assert_eq!(schedule_at(at).unwrap(), "@at 2026-12-02T08:00:00.25Z");
    }
}
