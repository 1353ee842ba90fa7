//! One signed revalidation call to a site's target.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use spool_proto::revalidate::RevalidateBody;
use spool_proto::signing::{SigningKey, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use spool_proto::site::RevalidateTarget;
use spool_proto::SiteId;

use crate::retry::{classify, parse_retry_after, Outcome};

/// What a call came to.
#[derive(Debug, Clone)]
pub struct CallResult {
    pub outcome: Outcome,
    pub status: Option<u16>,
    /// Why it failed, for the dead-letter record and the logs.
    pub error: Option<String>,
}

#[derive(Clone)]
pub struct Dispatcher {
    http: reqwest::Client,
}

/// The `webhook-id` of a call: the same for every retry of the same events to the same
/// target, different for anything else.
pub fn call_id(site: &SiteId, url: &str, seqs: &[u64]) -> String {
    let mut hash = Sha256::new();
    hash.update(site.as_str());
    hash.update([0]);
    hash.update(url);
    for seq in seqs {
        hash.update(seq.to_be_bytes());
    }
    let digest = hash.finalize();
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("rv_{hex}")
}

impl Dispatcher {
    pub fn new(timeout: Duration) -> anyhow::Result<Dispatcher> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            // A redirect of a POST is not a delivery: report it as the answer it is.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("spool-revalidator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Dispatcher { http })
    }

    /// POSTs `body` to the target, signed with its secret (Standard Webhooks), with the
    /// trace context of the change. `attempt` (1 = first, 0 = an admin's replay) labels the
    /// call's metrics.
    pub async fn call(
        &self,
        target: &RevalidateTarget,
        id: &str,
        body: &RevalidateBody,
        traceparent: Option<&str>,
        attempt: u64,
    ) -> CallResult {
        let started = Instant::now();
        let result = self.send(target, id, body, traceparent).await;
        let class = match result.status {
            Some(s) => format!("{}xx", s / 100),
            None => "none".to_string(),
        };
        let outcome = match result.outcome {
            Outcome::Delivered => "delivered",
            Outcome::Retryable { .. } => "retryable",
            Outcome::Permanent => "permanent",
        };
        let attempt = match attempt {
            0 => "replay",
            1 => "first",
            _ => "retry",
        };
        metrics::counter!("spool_revalidator_calls_total", "outcome" => outcome, "status_class" => class, "attempt" => attempt).increment(1);
        metrics::histogram!("spool_revalidator_call_duration_seconds").record(started.elapsed());
        result
    }

    async fn send(
        &self,
        target: &RevalidateTarget,
        id: &str,
        body: &RevalidateBody,
        traceparent: Option<&str>,
    ) -> CallResult {
        let fail = |error: String, outcome| CallResult {
            outcome,
            status: None,
            error: Some(error),
        };
        let key = match SigningKey::from_secret(&target.secret) {
            Ok(key) => key,
            Err(e) => return fail(format!("unusable target secret: {e}"), Outcome::Permanent),
        };
        let payload = match serde_json::to_vec(body) {
            Ok(payload) => payload,
            Err(e) => return fail(format!("encoding the body: {e}"), Outcome::Permanent),
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut request = self
            .http
            .post(&target.url)
            .header("content-type", "application/json")
            .header(ID_HEADER, id)
            .header(TIMESTAMP_HEADER, now.to_string())
            .header(SIGNATURE_HEADER, key.sign(id, now, &payload));
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        match request.body(payload).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, now));
                let outcome = classify(Some(status), retry_after);
                let error = (outcome != Outcome::Delivered)
                    .then(|| format!("the target answered {status}"));
                CallResult {
                    outcome,
                    status: Some(status),
                    error,
                }
            }
            Err(e) => {
                let kind = if e.is_timeout() {
                    "timed out"
                } else {
                    "failed"
                };
                fail(format!("the call {kind}: {e}"), classify(None, None))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_are_stable_and_distinct() {
        let site = SiteId::parse("acme").unwrap();
        let a = call_id(&site, "https://a.example/r", &[1, 2]);
        assert_eq!(a, call_id(&site, "https://a.example/r", &[1, 2]));
        assert!(a.starts_with("rv_") && a.len() == 27);
        assert_ne!(a, call_id(&site, "https://a.example/r", &[1, 3]));
        assert_ne!(a, call_id(&site, "https://b.example/r", &[1, 2]));
        assert_ne!(
            a,
            call_id(
                &SiteId::parse("other").unwrap(),
                "https://a.example/r",
                &[1, 2]
            )
        );
    }
}
