//! Reading a range of a stream: batched direct gets (nats-server 2.11+), answered by any
//! replica of a stream that allows direct access. No consumer is created, so a read costs
//! the server one request and its answer, whoever asks and however often — unlike an
//! ordered consumer per read, which is created, tracked and removed by the stream's (and,
//! in a cluster, the meta) leader.
//!
//! The one function that reads a stream's past: the delivery's history and the
//! revalidator's dead-letter listing both use it.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use spool_proto::names::direct_get_subject;

/// One stored message.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    pub subject: String,
    pub payload: Bytes,
}

/// What a read found.
#[derive(Debug, Default)]
pub struct Found {
    /// Matching messages after the asked-for sequence, oldest first.
    pub messages: Vec<Stored>,
    /// Matching messages the stream holds after the last one returned (as the answering
    /// replica knew them): `0` means the read reached the end.
    pub pending: u64,
}

impl Found {
    /// Did the read reach the end of what matches?
    pub fn complete(&self) -> bool {
        self.pending == 0
    }
}

/// A range to read: messages of `filter` (wildcards allowed) after sequence `after`, at
/// most `max_messages` of them and about `max_bytes` of payload (at least one message).
#[derive(Debug, Clone)]
pub struct Range<'a> {
    pub stream: &'a str,
    pub filter: &'a str,
    pub after: u64,
    pub max_messages: usize,
    pub max_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    #[error("reading {stream} took over {timeout:?}")]
    TimedOut { stream: String, timeout: Duration },
    #[error(
        "no server answers direct reads of {0} (stream missing, or not allowing direct access)"
    )]
    NoResponders(String),
    #[error("reading {stream}: {message}")]
    Failed { stream: String, message: String },
}

/// Most messages one direct-get request asks for; larger ranges take several.
const BATCH: usize = 256;

/// Reads `range`, in batches of at most [`BATCH`] messages, within `timeout` in all.
pub async fn read(
    client: &async_nats::Client,
    range: Range<'_>,
    timeout: Duration,
) -> Result<Found, RangeError> {
    let stream = range.stream;
    tokio::time::timeout(timeout, read_all(client, range))
        .await
        .map_err(|_| RangeError::TimedOut {
            stream: stream.to_owned(),
            timeout,
        })?
}

async fn read_all(client: &async_nats::Client, range: Range<'_>) -> Result<Found, RangeError> {
    let mut found = Found::default();
    let mut after = range.after;
    let mut bytes = 0;
    while found.messages.len() < range.max_messages && bytes < range.max_bytes {
        let want = (range.max_messages - found.messages.len()).min(BATCH);
        let batch = read_batch(client, &range, after, want, range.max_bytes - bytes).await?;
        found.pending = batch.pending;
        bytes += batch
            .messages
            .iter()
            .map(|m| m.payload.len())
            .sum::<usize>();
        after = batch.messages.last().map_or(after, |m| m.seq);
        let stop = batch.complete() || batch.messages.is_empty();
        found.messages.extend(batch.messages);
        if stop {
            break;
        }
    }
    Ok(found)
}

/// Does `stream` still hold the message at `seq`? (Direct get of one sequence, answered by
/// any replica.)
pub async fn holds(
    client: &async_nats::Client,
    stream: &str,
    seq: u64,
    timeout: Duration,
) -> Result<bool, RangeError> {
    let failed = |message: String| RangeError::Failed {
        stream: stream.to_owned(),
        message,
    };
    let request = Bytes::from(serde_json::json!({ "seq": seq }).to_string());
    let reply = tokio::time::timeout(timeout, client.request(direct_get_subject(stream), request))
        .await
        .map_err(|_| RangeError::TimedOut {
            stream: stream.to_owned(),
            timeout,
        })?
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => {
                RangeError::NoResponders(stream.to_owned())
            }
            _ => failed(e.to_string()),
        })?;
    match reply.status.map(|s| s.as_u16()) {
        None => Ok(true),
        Some(404) => Ok(false),
        Some(status) => Err(failed(format!(
            "status {status} {}",
            reply.description.unwrap_or_default()
        ))),
    }
}

/// One batched direct get: the server answers with up to `batch` messages, then an
/// end-of-batch status (`204 EOB`) carrying how many more match; `404` when none does.
async fn read_batch(
    client: &async_nats::Client,
    range: &Range<'_>,
    after: u64,
    batch: usize,
    max_bytes: usize,
) -> Result<Found, RangeError> {
    let failed = |message: String| RangeError::Failed {
        stream: range.stream.to_owned(),
        message,
    };
    let request = serde_json::json!({
        "seq": after.saturating_add(1),
        "next_by_subj": range.filter,
        "batch": batch,
        "max_bytes": max_bytes.max(1),
    });
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| failed(e.to_string()))?;
    client
        .publish_with_reply(
            direct_get_subject(range.stream),
            inbox,
            Bytes::from(request.to_string()),
        )
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut found = Found::default();
    while let Some(reply) = replies.next().await {
        let header = |name: &str| {
            reply
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let number = |name: &str| header(name).and_then(|v| v.parse::<u64>().ok());
        match reply.status.map(|s| s.as_u16()) {
            None => {
                let (Some(seq), Some(pending)) =
                    (number("Nats-Sequence"), number("Nats-Num-Pending"))
                else {
                    return Err(failed("a direct-get answer without its sequence".into()));
                };
                found.pending = pending;
                found.messages.push(Stored {
                    seq,
                    subject: header("Nats-Subject").unwrap_or_default(),
                    payload: reply.payload,
                });
            }
            // End of batch.
            Some(204) => {
                found.pending = number("Nats-Num-Pending").unwrap_or(found.pending);
                return Ok(found);
            }
            // Nothing matches after `after`.
            Some(404) => return Ok(found),
            Some(503) => return Err(RangeError::NoResponders(range.stream.to_owned())),
            Some(status) => {
                let description = reply.description.unwrap_or_default();
                return Err(failed(format!("status {status} {description}")));
            }
        }
    }
    Err(failed("the answer ended before its end-of-batch".into()))
}
