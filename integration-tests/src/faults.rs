//! The parts of the fault tests (issue #16): a CMS that keeps writing webhooks and retries
//! every `5xx` and connection error with the same `webhook-id`; readers that follow a site
//! over SSE (resuming with `Last-Event-ID`) and long-poll (following `next`); and the tally
//! of what was written, acknowledged, delivered, lost and duplicated.
//!
//! Every part addresses its service through a [`BaseUrl`] that the test can switch, the way
//! a load balancer sends the next request to the new process after a crash.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::eventually;
use crate::webhook::Webhook;

/// How long a client waits before trying again after an error: the CMS's retry delay, an
/// EventSource's before the server sent a `retry:`. A behaviour of the client, not a wait
/// for readiness.
const CLIENT_RETRY: Duration = Duration::from_millis(100);

/// A CMS gives up on a webhook after this long (it stays "written, not acknowledged").
const GIVE_UP_AFTER: Duration = Duration::from_secs(90);

/// A service's base URL, switchable while clients use it.
#[derive(Clone)]
pub struct BaseUrl(Arc<RwLock<String>>);

impl BaseUrl {
    pub fn new(url: impl Into<String>) -> BaseUrl {
        BaseUrl(Arc::new(RwLock::new(url.into())))
    }

    pub fn get(&self) -> String {
        self.0.read().expect("base URL lock").clone()
    }

    pub fn set(&self, url: impl Into<String>) {
        *self.0.write().expect("base URL lock") = url.into();
    }
}

/// What the CMS saw of one webhook.
#[derive(Debug, Clone)]
pub struct Sent {
    pub id: String,
    /// The `seq` of its `2xx`, if one came.
    pub seq: Option<u64>,
    /// Requests made for it (1 when the first was answered `2xx`).
    pub attempts: usize,
    /// Its `2xx` said `"duplicate": true`: an earlier attempt had been stored though its
    /// answer was lost (a 503 after a timeout, a connection cut by a crash).
    pub duplicate: bool,
}

/// Webhooks sent by `lanes` concurrent CMS workers, each one after the other.
pub struct Writer {
    stop: CancellationToken,
    acked: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
    lanes: Vec<JoinHandle<Vec<Sent>>>,
}

/// What the writer did, once stopped.
#[derive(Debug, Default)]
pub struct Written {
    pub sent: Vec<Sent>,
    /// Answers that were not `2xx`, and requests that got no answer.
    pub failures: usize,
}

impl Written {
    pub fn written(&self) -> usize {
        self.sent.len()
    }

    /// `webhook-id` → the `seq` of its `2xx`.
    pub fn acked(&self) -> BTreeMap<String, u64> {
        self.sent
            .iter()
            .filter_map(|s| Some((s.id.clone(), s.seq?)))
            .collect()
    }

    /// Webhooks whose `2xx` said an earlier attempt had already been stored.
    pub fn answered_duplicate(&self) -> usize {
        self.sent.iter().filter(|s| s.duplicate).count()
    }
}

impl Writer {
    /// Starts `lanes` workers sending `content.published` webhooks to `site`, ids
    /// `{prefix}{lane}_{n}`, each after the previous one's `2xx`, with `pace` between them.
    pub fn start(
        http: &reqwest::Client,
        base: &BaseUrl,
        site: &str,
        prefix: &str,
        lanes: usize,
        pace: Duration,
    ) -> Writer {
        let stop = CancellationToken::new();
        let acked = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let lanes = (0..lanes)
            .map(|lane| {
                let (http, base, site) = (http.clone(), base.clone(), site.to_string());
                let (stop, acked, failures) = (stop.clone(), acked.clone(), failures.clone());
                let prefix = prefix.to_string();
                tokio::spawn(async move {
                    let mut sent = Vec::new();
                    for n in 0.. {
                        if stop.is_cancelled() {
                            break;
                        }
                        let id = format!("{prefix}{lane}_{n}");
                        let hook = Webhook::published(&id, "blog", &format!("{lane}-{n}"));
                        let one = send_until_acked(&http, &base, &site, hook, &failures).await;
                        if one.seq.is_some() {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        sent.push(one);
                        tokio::select! {
                            _ = tokio::time::sleep(pace) => {}
                            _ = stop.cancelled() => {}
                        }
                    }
                    sent
                })
            })
            .collect();
        Writer {
            stop,
            acked,
            failures,
            lanes,
        }
    }

    /// Webhooks answered `2xx` so far.
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Failed attempts so far (`5xx`, no answer).
    pub fn failures(&self) -> usize {
        self.failures.load(Ordering::Relaxed)
    }

    /// Waits until `more` webhooks beyond those acknowledged now are acknowledged: the
    /// system takes writes again.
    pub async fn wait_progress(&self, more: usize, within: Duration) {
        let target = self.acked() + more;
        eventually(
            &format!("{target} webhooks acknowledged"),
            within,
            || async { (self.acked() >= target).then_some(()) },
        )
        .await;
    }

    /// Waits until `more` attempts beyond those failed now have failed: the fault is felt.
    pub async fn wait_failures(&self, more: usize, within: Duration) {
        let target = self.failures() + more;
        eventually(&format!("{target} failed attempts"), within, || async {
            (self.failures() >= target).then_some(())
        })
        .await;
    }

    /// Stops after the webhooks in progress (each is still retried until its `2xx`).
    pub async fn stop(self) -> Written {
        self.stop.cancel();
        let mut sent = Vec::new();
        for lane in self.lanes {
            sent.extend(lane.await.expect("writer lane"));
        }
        Written {
            sent,
            failures: self.failures.load(Ordering::Relaxed),
        }
    }
}

/// Sends `hook` until it is answered `2xx`, retrying `5xx`, `429` and requests without an
/// answer with the same id, as a CMS does; gives up after [`GIVE_UP_AFTER`].
async fn send_until_acked(
    http: &reqwest::Client,
    base: &BaseUrl,
    site: &str,
    hook: Webhook,
    failures: &AtomicUsize,
) -> Sent {
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let answer = hook
            .request(http, &base.get(), site)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => {
                let body: serde_json::Value = match r.json().await {
                    Ok(body) => body,
                    // The answer was cut (the service died while writing it): not an
                    // answer; try again.
                    Err(_) => serde_json::Value::Null,
                };
                if let Some(seq) = body["seq"].as_u64() {
                    return Sent {
                        id: hook.id,
                        seq: Some(seq),
                        attempts,
                        duplicate: body["duplicate"].as_bool().unwrap_or(false),
                    };
                }
            }
            Ok(r) => {
                let status = r.status().as_u16();
                assert!(
                    status >= 500 || status == 429,
                    "webhook {} answered {status}: {}",
                    hook.id,
                    r.text().await.unwrap_or_default()
                );
            }
            Err(_) => {}
        }
        failures.fetch_add(1, Ordering::Relaxed);
        if started.elapsed() > GIVE_UP_AFTER {
            return Sent {
                id: hook.id,
                seq: None,
                attempts,
                duplicate: false,
            };
        }
        tokio::time::sleep(CLIENT_RETRY).await;
    }
}

/// One event as a reader received it: its `seq` and `webhook-id`.
pub type Got = (u64, String);

/// A reader following a site from the start of its history until stopped, reconnecting
/// (SSE: with `Last-Event-ID`; poll: from `next`) after every error or end.
pub struct Follower {
    pub kind: &'static str,
    stop: CancellationToken,
    got: Arc<AtomicUsize>,
    last_seq: Arc<AtomicU64>,
    reconnects: Arc<AtomicUsize>,
    handle: JoinHandle<Vec<Got>>,
}

/// What a follower received, once stopped.
#[derive(Debug)]
pub struct Followed {
    pub kind: &'static str,
    pub got: Vec<Got>,
    /// Connections it opened after its first (streams ended or cut, polls failed).
    pub reconnects: usize,
}

impl Follower {
    /// Follows `site`'s SSE stream from `since=0`, then from its last id.
    pub fn sse(http: &reqwest::Client, base: &BaseUrl, site: &str, token: &str) -> Follower {
        Follower::spawn("sse", |stop, got, last_seq, reconnects| {
            let (http, base) = (http.clone(), base.clone());
            let path = format!("/v1/sites/{site}/events/stream?since=0&token={token}");
            async move {
                let mut out = Vec::new();
                let mut last_id: Option<String> = None;
                // The server's `retry:`, as EventSource keeps it.
                let mut retry = CLIENT_RETRY;
                let mut first = true;
                'connect: while !stop.is_cancelled() {
                    if !first {
                        reconnects.fetch_add(1, Ordering::Relaxed);
                        // Spread over half as long again, so that a thousand readers cut
                        // at once don't all come back in the same millisecond.
                        let wait = retry.mul_f64(rand::random_range(1.0..1.5));
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = stop.cancelled() => break,
                        }
                    }
                    first = false;
                    let mut request = http
                        .get(format!("{}{path}", base.get()))
                        .header("accept", "text/event-stream");
                    if let Some(id) = &last_id {
                        request = request.header("last-event-id", id);
                    }
                    let response = tokio::select! {
                        r = request.send() => r,
                        _ = stop.cancelled() => break,
                    };
                    let Ok(response) = response else { continue };
                    if !response.status().is_success() {
                        continue;
                    }
                    let mut events = response.bytes_stream().eventsource();
                    loop {
                        let event = tokio::select! {
                            e = events.next() => e,
                            _ = stop.cancelled() => break 'connect,
                        };
                        let Some(Ok(event)) = event else {
                            continue 'connect;
                        };
                        if !event.id.is_empty() {
                            last_id = Some(event.id.clone());
                        }
                        if let Some(hint) = event.retry {
                            retry = hint;
                        }
                        match event.event.as_str() {
                            "message" => {
                                let data: serde_json::Value =
                                    serde_json::from_str(&event.data).expect("event JSON");
                                let seq = data["seq"].as_u64().expect("seq");
                                let id = data["id"].as_str().expect("id").to_string();
                                out.push((seq, id));
                                got.fetch_add(1, Ordering::Relaxed);
                                last_seq.store(seq, Ordering::Relaxed);
                            }
                            "reset" => panic!("SSE reset: {}", event.data),
                            _ => {}
                        }
                    }
                }
                out
            }
        })
    }

    /// Follows `site` by long-poll from `since=0`, then from each answer's `next`.
    pub fn poll(http: &reqwest::Client, base: &BaseUrl, site: &str, token: &str) -> Follower {
        Follower::spawn("poll", |stop, got, last_seq, reconnects| {
            let (http, base) = (http.clone(), base.clone());
            let (site, token) = (site.to_string(), token.to_string());
            async move {
                let mut out = Vec::new();
                let mut next = 0u64;
                while !stop.is_cancelled() {
                    let url = format!(
                        "{}/v1/sites/{site}/events?since={next}&wait=5&limit=1000&token={token}",
                        base.get()
                    );
                    let answer = tokio::select! {
                        r = async {
                            let r = http.get(url).timeout(Duration::from_secs(15)).send().await?;
                            r.error_for_status()?.json::<serde_json::Value>().await
                        } => r,
                        _ = stop.cancelled() => break,
                    };
                    let Ok(page) = answer else {
                        reconnects.fetch_add(1, Ordering::Relaxed);
                        tokio::select! {
                            _ = tokio::time::sleep(CLIENT_RETRY) => {}
                            _ = stop.cancelled() => break,
                        }
                        continue;
                    };
                    assert!(page["reset"].is_null(), "poll reset: {page}");
                    for event in page["events"].as_array().expect("events") {
                        let seq = event["seq"].as_u64().expect("seq");
                        out.push((seq, event["id"].as_str().expect("id").to_string()));
                        got.fetch_add(1, Ordering::Relaxed);
                        last_seq.store(seq, Ordering::Relaxed);
                    }
                    next = page["next"].as_u64().expect("next");
                }
                out
            }
        })
    }

    fn spawn<F, Fut>(kind: &'static str, body: F) -> Follower
    where
        F: FnOnce(CancellationToken, Arc<AtomicUsize>, Arc<AtomicU64>, Arc<AtomicUsize>) -> Fut,
        Fut: std::future::Future<Output = Vec<Got>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let got = Arc::new(AtomicUsize::new(0));
        let last_seq = Arc::new(AtomicU64::new(0));
        let reconnects = Arc::new(AtomicUsize::new(0));
        let handle = tokio::spawn(body(
            stop.clone(),
            got.clone(),
            last_seq.clone(),
            reconnects.clone(),
        ));
        Follower {
            kind,
            stop,
            got,
            last_seq,
            reconnects,
            handle,
        }
    }

    /// Events received so far.
    pub fn got(&self) -> usize {
        self.got.load(Ordering::Relaxed)
    }

    /// The `seq` of the last event received.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Relaxed)
    }

    pub async fn stop(self) -> Followed {
        self.stop.cancel();
        Followed {
            kind: self.kind,
            got: self.handle.await.expect("follower"),
            reconnects: self.reconnects.load(Ordering::Relaxed),
        }
    }
}

/// Waits until every follower has received the event at `last_seq` (or later).
pub async fn wait_followers(followers: &[Follower], last_seq: u64, within: Duration) {
    eventually(
        &format!("every reader at seq {last_seq}"),
        within,
        || async {
            followers
                .iter()
                .all(|f| f.last_seq() >= last_seq)
                .then_some(())
        },
    )
    .await;
}

/// How one reader's events compare with what the CMS was told was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Acknowledged webhooks the reader received (at least once).
    pub delivered: usize,
    /// Acknowledged webhooks it never received.
    pub lost: usize,
    /// Events it received more than once (each extra copy counts).
    pub duplicated: usize,
    /// Events that came after one with a higher or equal `seq`.
    pub out_of_order: usize,
    /// Events whose `seq` is not the one the CMS was answered for that id.
    pub wrong_seq: usize,
}

/// Compares what a reader got with `acked` (`webhook-id` → `seq`).
pub fn delivered(got: &[Got], acked: &BTreeMap<String, u64>) -> Delivered {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut out_of_order = 0;
    let mut wrong_seq = 0;
    for (i, (seq, id)) in got.iter().enumerate() {
        *seen.entry(id.as_str()).or_default() += 1;
        if i > 0 && got[i - 1].0 >= *seq {
            out_of_order += 1;
        }
        if acked.get(id).is_some_and(|s| s != seq) {
            wrong_seq += 1;
        }
    }
    let delivered = acked
        .keys()
        .filter(|id| seen.contains_key(id.as_str()))
        .count();
    Delivered {
        delivered,
        lost: acked.len() - delivered,
        duplicated: seen.values().map(|n| n - 1).sum(),
        out_of_order,
        wrong_seq,
    }
}

/// What the stream holds of the written webhooks: how many of the acknowledged ones are
/// stored (with the answered `seq`), and how many ids are stored more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub stored: usize,
    pub lost: usize,
    pub duplicated: usize,
    /// Stored ids the CMS was never answered `2xx` for (it gave up).
    pub unacknowledged: usize,
}

/// Compares the stream's events (`seq`, `webhook-id`) with `acked`.
pub fn stored(events: &[(u64, String)], acked: &BTreeMap<String, u64>) -> Stored {
    let mut by_id: HashMap<&str, Vec<u64>> = HashMap::new();
    for (seq, id) in events {
        by_id.entry(id.as_str()).or_default().push(*seq);
    }
    let lost = acked
        .iter()
        .filter(|(id, seq)| !by_id.get(id.as_str()).is_some_and(|s| s.contains(seq)))
        .count();
    let acked_ids: HashSet<&str> = acked.keys().map(String::as_str).collect();
    Stored {
        stored: acked.len() - lost,
        lost,
        duplicated: by_id.values().map(|s| s.len() - 1).sum(),
        unacknowledged: by_id.keys().filter(|id| !acked_ids.contains(*id)).count(),
    }
}

/// A row of the figures: the fault, written, acknowledged, delivered (per reader, the
/// smallest), lost and duplicated (the largest of the stream and any reader).
pub fn report(fault: &str, written: &Written, stored: Stored, readers: &[(String, Delivered)]) {
    let acked = written.acked().len();
    let delivered = readers.iter().map(|(_, d)| d.delivered).min();
    let lost = readers
        .iter()
        .map(|(_, d)| d.lost)
        .chain([stored.lost])
        .max()
        .unwrap_or(0);
    let duplicated = readers
        .iter()
        .map(|(_, d)| d.duplicated)
        .chain([stored.duplicated])
        .max()
        .unwrap_or(0);
    let delivered = delivered.map_or("-".to_string(), |d| d.to_string());
    println!(
        "FAULTS | {fault} | {} | {acked} | {delivered} | {lost} | {duplicated} |",
        written.written()
    );
    println!(
        "  stored {stored:?}; failed attempts {}; 2xx saying duplicate {}",
        written.failures,
        written.answered_duplicate()
    );
    for (name, d) in readers {
        println!("  reader {name}: {d:?}");
    }
}

/// How the revalidation calls a target received cover the acknowledged webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revalidated {
    /// Acknowledged events named in at least one call.
    pub revalidated: usize,
    /// Acknowledged events in no call.
    pub missing: usize,
    /// Events named in more than one call (each extra call counts): at least once, so
    /// allowed, and reported.
    pub repeated: usize,
}

/// Compares the seqs of `calls` with `acked`.
pub fn revalidated(calls: &[crate::receiver::Call], acked: &BTreeMap<String, u64>) -> Revalidated {
    let mut times: HashMap<u64, usize> = HashMap::new();
    for seq in calls.iter().flat_map(|c| c.seqs()) {
        *times.entry(seq).or_default() += 1;
    }
    let revalidated = acked.values().filter(|s| times.contains_key(s)).count();
    Revalidated {
        revalidated,
        missing: acked.len() - revalidated,
        repeated: times.values().map(|n| n - 1).sum(),
    }
}

/// The stream's events of `site`, as (`seq`, `webhook-id`), read from `nats_url`.
pub async fn stored_events(nats_url: &str, site: &str) -> Vec<(u64, String)> {
    crate::read_events(nats_url)
        .await
        .into_iter()
        .filter(|s| s.event.site.as_str() == site)
        .map(|s| (s.seq, s.event.id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs
            .iter()
            .map(|(id, seq)| (id.to_string(), *seq))
            .collect()
    }

    fn got(pairs: &[(u64, &str)]) -> Vec<Got> {
        pairs
            .iter()
            .map(|(seq, id)| (*seq, id.to_string()))
            .collect()
    }

    #[test]
    fn a_reader_with_everything_once_in_order_is_clean() {
        let a = acked(&[("a", 1), ("b", 2), ("c", 3)]);
        let d = delivered(&got(&[(1, "a"), (2, "b"), (3, "c")]), &a);
        assert_eq!(
            d,
            Delivered {
                delivered: 3,
                lost: 0,
                duplicated: 0,
                out_of_order: 0,
                wrong_seq: 0
            }
        );
    }

    #[test]
    fn a_reader_counts_what_is_missing_repeated_reordered_or_misnumbered() {
        let a = acked(&[("a", 1), ("b", 2), ("c", 3), ("d", 4)]);
        // "d" missing, "a" twice (and so out of order), "c" under another seq.
        let d = delivered(&got(&[(1, "a"), (2, "b"), (1, "a"), (5, "c")]), &a);
        assert_eq!(d.delivered, 3);
        assert_eq!(d.lost, 1);
        assert_eq!(d.duplicated, 1);
        assert_eq!(d.out_of_order, 1);
        assert_eq!(d.wrong_seq, 1);
    }

    #[test]
    fn the_stream_counts_lost_duplicated_and_unacknowledged() {
        let a = acked(&[("a", 1), ("b", 2), ("c", 9)]);
        // "c" stored under another seq than answered: lost; "b" twice; "x" never acked.
        let s = stored(
            &got(&[(1, "a"), (2, "b"), (3, "b"), (4, "c"), (5, "x")]),
            &a,
        );
        assert_eq!(
            s,
            Stored {
                stored: 2,
                lost: 1,
                duplicated: 1,
                unacknowledged: 1
            }
        );
    }

    #[test]
    fn written_counts_only_the_answered_as_acknowledged() {
        let sent = |id: &str, seq: Option<u64>, duplicate| Sent {
            id: id.into(),
            seq,
            attempts: 1,
            duplicate,
        };
        let w = Written {
            sent: vec![
                sent("a", Some(1), false),
                sent("b", None, false),
                sent("c", Some(2), true),
            ],
            failures: 3,
        };
        assert_eq!(w.written(), 3);
        assert_eq!(w.acked(), acked(&[("a", 1), ("c", 2)]));
        assert_eq!(w.answered_duplicate(), 1);
    }
}
