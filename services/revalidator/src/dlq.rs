//! Dead letters: what could not be delivered, kept in `SPOOL_DLQ` under
//! `spool.dlq.<site>`, one record per (event, target).

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use spool_platform::range::Range;
use spool_proto::names::{dlq_subject, DLQ_STREAM, DLQ_SUBJECTS, MSG_ID_HEADER};
use spool_proto::{Event, SiteId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub site: SiteId,
    /// The target's URL without credentials ([`crate::redact::redact_url`]: no userinfo,
    /// query values `REDACTED`); its secret is never stored here.
    pub url: String,
    /// The target's key ([`crate::retries::target_key`]: a hash of the site and the full
    /// URL), by which replay finds the target. Absent in records of older versions, which
    /// kept the full URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_key: Option<String>,
    pub reason: Reason,
    /// The `webhook-id` of the failed call.
    pub webhook_id: String,
    pub attempts: u64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub failed_at: time::OffsetDateTime,
    pub event: Event,
}

/// Why a call was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The target answered a 4xx other than 408/429: retrying won't change it.
    PermanentStatus,
    /// Every attempt of the retry schedule failed.
    RetriesExhausted,
    /// The target's address is not public and not in `SPOOL_ALLOWED_TARGET_NETWORKS`:
    /// nothing was sent.
    TargetNotAllowed,
    /// The stored event could not be decoded (counted; there is no record to keep).
    Undecodable,
    /// A reason written by a newer version.
    #[serde(other)]
    Other,
}

impl Reason {
    /// Its name in records and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::PermanentStatus => "permanent_status",
            Reason::RetriesExhausted => "retries_exhausted",
            Reason::TargetNotAllowed => "target_not_allowed",
            Reason::Undecodable => "undecodable",
            Reason::Other => "other",
        }
    }
}

impl DeadLetter {
    /// Whether `url` is the URL of this record's target (the full URL, as the site has it).
    pub fn is_for(&self, url: &str) -> bool {
        match &self.target_key {
            Some(key) => *key == crate::retries::target_key(&self.site, url),
            None => self.url == url,
        }
    }
}

/// A stored dead letter with its `SPOOL_DLQ` sequence (what replay takes).
#[derive(Debug, Clone, Serialize)]
pub struct StoredDeadLetter {
    pub dlq_seq: u64,
    #[serde(flatten)]
    pub record: DeadLetter,
}

/// Writes a record, de-duplicated per (site, event seq, target): a crash between writing
/// and acking writes it once.
pub async fn write(js: &jetstream::Context, record: &DeadLetter) -> anyhow::Result<()> {
    let mut headers = async_nats::HeaderMap::new();
    let target = record
        .target_key
        .clone()
        .unwrap_or_else(|| crate::dispatch::call_id(&record.site, &record.url, &[]));
    headers.insert(
        MSG_ID_HEADER,
        format!("{}:{}:{target}", record.site, record.event.seq).as_str(),
    );
    let payload = Bytes::from(serde_json::to_vec(record)?);
    js.publish_with_headers(dlq_subject(&record.site), headers, payload)
        .await?
        .await?;
    metrics::counter!("spool_revalidator_dead_letters_total", "reason" => record.reason.as_str())
        .increment(1);
    tracing::warn!(site = %record.site, seq = record.event.seq, url = %record.url, reason = record.reason.as_str(), "dead-lettered");
    Ok(())
}

/// How long listing may take before the admin is told to come back.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// Most bytes of records one listing returns (a record can be 1 MiB): fewer than `limit`
/// records come back when they are that large.
const LIST_BYTES: usize = 16 * 1024 * 1024;

/// Up to `limit` dead letters (of one site, or all), oldest first, read with batched direct
/// gets on the site's subject (or every DLQ subject): a site's records cost what they are,
/// not a scan of the whole DLQ, and no consumer is created.
pub async fn list(
    client: &async_nats::Client,
    site: Option<&SiteId>,
    limit: usize,
) -> anyhow::Result<Vec<StoredDeadLetter>> {
    let filter = site.map_or_else(|| DLQ_SUBJECTS.to_owned(), dlq_subject);
    let range = Range {
        stream: DLQ_STREAM,
        filter: &filter,
        after: 0,
        max_messages: limit,
        max_bytes: LIST_BYTES,
    };
    let found = spool_platform::range::read(client, range, LIST_TIMEOUT).await?;
    Ok(found
        .messages
        .into_iter()
        .filter_map(|m| match serde_json::from_slice(&m.payload) {
            Ok(record) => Some(StoredDeadLetter {
                dlq_seq: m.seq,
                record,
            }),
            Err(e) => {
                tracing::warn!(dlq_seq = m.seq, error = %e, "not a dead-letter record; skipped");
                None
            }
        })
        .collect())
}

/// One dead letter by its `SPOOL_DLQ` sequence (`None` if absent or not a record; an
/// error if JetStream can't say).
pub async fn get(
    js: &jetstream::Context,
    dlq_seq: u64,
) -> anyhow::Result<Option<StoredDeadLetter>> {
    use async_nats::jetstream::stream::RawMessageErrorKind;
    let stream = js.get_stream(DLQ_STREAM).await?;
    let message = match stream.get_raw_message(dlq_seq).await {
        Ok(message) => message,
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(serde_json::from_slice(&message.payload)
        .ok()
        .map(|record| StoredDeadLetter { dlq_seq, record }))
}

/// Removes a dead letter once it has been delivered after all.
pub async fn remove(js: &jetstream::Context, dlq_seq: u64) -> anyhow::Result<()> {
    let stream = js.get_stream(DLQ_STREAM).await?;
    stream.delete_message(dlq_seq).await?;
    Ok(())
}
