//! The record of every call, written to `SPOOL_OUTCOMES` with the call's trace: which
//! events it covered, their paths and tags, and how the target answered. A record that
//! can't be written is logged and counted; the call's own fate doesn't depend on it.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use spool_proto::names::{outcome_subject, MSG_ID_HEADER};
use spool_proto::outcome::{target_key, CallOutcome};
use spool_proto::revalidate::RevalidateBody;
use spool_proto::site::RevalidateTarget;
use spool_proto::SiteId;

use crate::dispatch::CallResult;
use crate::redact::redact_url;

/// Longest wait for JetStream to store a record.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The record of a call (the caller names itself in `replica`).
pub fn outcome_of(
    site: &SiteId,
    target: &RevalidateTarget,
    webhook_id: &str,
    attempt: u64,
    seqs: Vec<u64>,
    body: &RevalidateBody,
    result: &CallResult,
) -> CallOutcome {
    CallOutcome {
        site: site.clone(),
        target: target_key(site, &target.url),
        url: redact_url(&target.url),
        webhook_id: webhook_id.to_owned(),
        attempt,
        seqs,
        paths: body.paths.clone(),
        tags: body.tags.clone(),
        ok: result.status.is_some_and(|s| (200..300).contains(&s)),
        status: result.status,
        at: time::OffsetDateTime::now_utc(),
        replica: None,
    }
}

/// Stores `outcome` with the call's trace headers (de-duplicated per call and attempt).
pub async fn write(js: &jetstream::Context, outcome: &CallOutcome, trace: Vec<(String, String)>) {
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in trace {
        headers.insert(name.as_str(), value.as_str());
    }
    headers.insert(
        MSG_ID_HEADER,
        format!("{}:{}", outcome.webhook_id, outcome.attempt).as_str(),
    );
    let written = async {
        let payload = Bytes::from(serde_json::to_vec(outcome)?);
        js.publish_with_headers(outcome_subject(&outcome.site), headers, payload)
            .await?
            .await?;
        anyhow::Ok(())
    };
    let result = tokio::time::timeout(WRITE_TIMEOUT, written).await;
    let ok = matches!(result, Ok(Ok(())));
    metrics::counter!("spool_revalidator_outcomes_total", "written" => if ok { "yes" } else { "no" })
        .increment(1);
    if !ok {
        let error = match result {
            Ok(Err(e)) => format!("{e:#}"),
            _ => format!("no acknowledgement within {WRITE_TIMEOUT:?}"),
        };
        tracing::warn!(site = %outcome.site, webhook_id = outcome.webhook_id, error, "the record of a call could not be stored");
    }
}
