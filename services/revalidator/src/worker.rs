//! From consumed events to calls: each event becomes one job per matching target; a
//! worker per target merges the jobs that arrive close together into one call; an event is
//! acknowledged only when every one of its jobs was delivered or dead-lettered, and NAKed
//! with the retry delay otherwise (JetStream redelivers it then: retries survive crashes).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use spool_platform::{trace, Platform};
use spool_proto::names::MSG_ID_HEADER;
use spool_proto::revalidate::RevalidateBody;
use spool_proto::site::RevalidateTarget;
use spool_proto::{Event, SiteId};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::dispatch::{call_id, CallResult, Dispatcher};
use crate::dlq::{self, DeadLetter};
use crate::retry::{Outcome, RetryPolicy};

/// How the worker merges and retries.
#[derive(Debug, Clone)]
pub struct Settings {
    pub policy: RetryPolicy,
    pub coalesce_window: Duration,
    pub coalesce_max: usize,
    pub target_concurrency: usize,
    pub ack_wait: Duration,
}

/// (event seq, target url) pairs this process settled recently (delivered or
/// dead-lettered), so that an event redelivered for another target's sake doesn't call the
/// settled ones again.
struct Settled {
    set: HashSet<(u64, String)>,
    order: VecDeque<(u64, String)>,
}

const SETTLED_MEMORY: usize = 100_000;

impl Settled {
    fn insert(&mut self, key: (u64, String)) {
        if self.set.insert(key.clone()) {
            self.order.push_back(key);
            if self.order.len() > SETTLED_MEMORY {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// One consumed message waiting for its jobs.
struct Pending {
    message: jetstream::Message,
    remaining: AtomicUsize,
    /// The longest retry delay any of its jobs asked for.
    retry: Mutex<Option<Duration>>,
    /// Cancelled once every job is settled (ends the keep-alive).
    settled: CancellationToken,
}

impl Pending {
    async fn complete(&self, retry: Option<Duration>) {
        if let Some(delay) = retry {
            let mut longest = self.retry.lock().unwrap_or_else(PoisonError::into_inner);
            *longest = Some(longest.map_or(delay, |d| d.max(delay)));
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        self.settled.cancel();
        let retry = *self.retry.lock().unwrap_or_else(PoisonError::into_inner);
        let result = match retry {
            Some(delay) => {
                metrics::counter!("spool_revalidator_retries_total").increment(1);
                self.message.ack_with(AckKind::Nak(Some(delay))).await
            }
            // Double ack: the server confirmed it, or the event comes back.
            None => self.message.double_ack().await,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "acknowledging an event failed; it will be redelivered");
        }
    }
}

impl Pending {
    /// Tells JetStream the event is still being worked on (`+WPI`) every `every` until it
    /// is settled: while it waits for a coalescing window, a call slot or a slow call, no
    /// other replica gets it and the wait doesn't count as an attempt.
    async fn keep_alive(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                _ = self.settled.cancelled() => return,
                _ = tick.tick() => {
                    if let Err(e) = self.message.ack_with(AckKind::Progress).await {
                        tracing::debug!(error = %e, "progress for an event failed");
                    }
                }
            }
        }
    }
}

struct Job {
    event: Arc<Event>,
    target: RevalidateTarget,
    /// 1 for the first delivery of the event, 2 for the first redelivery, ...
    attempt: u64,
    /// The `traceparent` the event was published with (used when no exporter runs here).
    traceparent: Option<String>,
    /// The consumer span's context: the parent of the call's client span.
    trace_context: trace::Context,
    pending: Arc<Pending>,
}

pub struct Worker {
    platform: Platform,
    dispatcher: Dispatcher,
    settings: Settings,
    targets: Mutex<HashMap<(SiteId, String), mpsc::UnboundedSender<Job>>>,
    settled: Mutex<Settled>,
    /// Every call in flight; shutdown waits for them.
    pub calls: TaskTracker,
}

impl Worker {
    pub fn new(platform: Platform, dispatcher: Dispatcher, settings: Settings) -> Arc<Worker> {
        Arc::new(Worker {
            platform,
            dispatcher,
            settings,
            targets: Mutex::default(),
            settled: Mutex::new(Settled {
                set: HashSet::new(),
                order: VecDeque::new(),
            }),
            calls: TaskTracker::new(),
        })
    }

    /// Takes one message of `SPOOL_EVENTS` into work.
    pub async fn handle(self: &Arc<Self>, message: jetstream::Message) {
        let (seq, attempt) = match message.info() {
            Ok(info) => (
                info.stream_sequence,
                u64::try_from(info.delivered).unwrap_or(1).max(1),
            ),
            Err(e) => {
                tracing::error!(error = %e, "a message without JetStream metadata; dropped");
                return;
            }
        };
        let mut event: Event = match serde_json::from_slice(&message.payload) {
            Ok(event) => event,
            Err(e) => {
                tracing::error!(seq, error = %e, "undecodable event; not revalidated");
                metrics::counter!("spool_revalidator_dead_letters_total", "reason" => "undecodable").increment(1);
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        event.seq = seq;
        metrics::counter!("spool_revalidator_events_total").increment(1);
        let span = tracing::info_span!(
            "process",
            otel.name = "process spool.events",
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.destination.name = %message.subject,
            messaging.consumer.group.name = "spool-revalidator",
            messaging.message.id = message.headers.as_ref().and_then(|h| h.get(MSG_ID_HEADER)).map(|v| v.as_str()),
            spool.event.seq = seq,
            spool.attempt = attempt,
            trace_id = tracing::field::Empty,
        );
        trace::adopt(&span, trace::from_nats(message.headers.as_ref()));
        let trace_context = trace::context_of(&span);
        let Some(site) = self.platform.registry.get(event.site.as_str()) else {
            if self.platform.readiness.registry_loaded() {
                // The site is gone: nobody to call.
                let _ = message.double_ack().await;
            } else {
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
            return;
        };
        let targets: Vec<RevalidateTarget> = {
            let settled = self.settled.lock().unwrap_or_else(PoisonError::into_inner);
            site.revalidate
                .iter()
                .filter(|t| t.wants(&event.collection))
                .filter(|t| !settled.set.contains(&(seq, t.url.clone())))
                .cloned()
                .collect()
        };
        if targets.is_empty() {
            let _ = message.double_ack().await;
            return;
        }
        let traceparent = message
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.to_string());
        let pending = Arc::new(Pending {
            message,
            remaining: AtomicUsize::new(targets.len()),
            retry: Mutex::new(None),
            settled: CancellationToken::new(),
        });
        tokio::spawn(pending.clone().keep_alive(self.settings.ack_wait / 3));
        let event = Arc::new(event);
        for target in targets {
            let job = Job {
                event: event.clone(),
                target,
                attempt,
                traceparent: traceparent.clone(),
                trace_context: trace_context.clone(),
                pending: pending.clone(),
            };
            self.enqueue(job);
        }
    }

    fn enqueue(self: &Arc<Self>, job: Job) {
        let key = (job.event.site.clone(), job.target.url.clone());
        let mut targets = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        let sender = targets.entry(key).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(self.clone().run_target(rx));
            tx
        });
        if let Err(mpsc::error::SendError(job)) = sender.send(job) {
            // Only if the target's worker died; start a new one for this job.
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(self.clone().run_target(rx));
            let _ = tx.send(job);
            *sender = tx;
        }
    }

    /// Merges the jobs of one target that arrive within the coalescing window (up to the
    /// batch maximum) and calls with at most `target_concurrency` calls in flight.
    async fn run_target(self: Arc<Self>, mut jobs: mpsc::UnboundedReceiver<Job>) {
        let slots = Arc::new(Semaphore::new(self.settings.target_concurrency.max(1)));
        while let Some(first) = jobs.recv().await {
            let mut batch = vec![first];
            let window = tokio::time::sleep(self.settings.coalesce_window);
            tokio::pin!(window);
            while batch.len() < self.settings.coalesce_max.max(1) {
                tokio::select! {
                    job = jobs.recv() => match job {
                        Some(job) => batch.push(job),
                        None => break,
                    },
                    _ = &mut window => break,
                }
            }
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let worker = self.clone();
            self.calls.spawn(async move {
                worker.call(batch).await;
                drop(slot);
            });
        }
    }

    async fn call(&self, mut batch: Vec<Job>) {
        batch.sort_by_key(|job| job.event.seq);
        batch.dedup_by_key(|job| job.event.seq);
        let Some(last) = batch.last() else { return };
        // The newest job carries the target as currently configured (secret rotations).
        let target = last.target.clone();
        let site = last.event.site.clone();
        let seqs: Vec<u64> = batch.iter().map(|job| job.event.seq).collect();
        let id = call_id(&site, &target.url, &seqs);
        let body = RevalidateBody::merge(&site, batch.iter().map(|job| job.event.as_ref()));
        metrics::histogram!("spool_revalidator_events_per_call").record(batch.len() as f64);

        // A client span per call, a child of the first event's consumer span, linked to the
        // others; its context is the traceparent the site receives.
        let span = tracing::info_span!(
            "revalidate",
            otel.name = "POST",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = "POST",
            url.full = %target.url,
            http.response.status_code = tracing::field::Empty,
            spool.site = %site,
            spool.events = batch.len(),
        );
        trace::adopt(&span, batch[0].trace_context.clone());
        for job in &batch[1..] {
            trace::link(&span, &job.trace_context);
        }
        let traceparent = trace::headers_of(&span)
            .into_iter()
            .find(|(name, _)| name == "traceparent")
            .map(|(_, value)| value)
            .or_else(|| batch[0].traceparent.clone());

        let result: CallResult = self
            .dispatcher
            .call(&target, &id, &body, traceparent.as_deref())
            .instrument(span.clone())
            .await;
        if let Some(status) = result.status {
            span.record("http.response.status_code", status);
        }
        if result.outcome != Outcome::Delivered {
            span.record("otel.status_code", "ERROR");
        }
        // One jitter draw per call, so that events that failed together come back together
        // (and are merged into one call again).
        let unit: f64 = rand::random();
        for job in &batch {
            let retry = self.settle(job, &id, &result, unit).await;
            job.pending.complete(retry).await;
        }
    }

    /// Decides one job's fate; returns the delay after which its event must come back.
    async fn settle(
        &self,
        job: &Job,
        id: &str,
        result: &CallResult,
        unit: f64,
    ) -> Option<Duration> {
        let reason = match &result.outcome {
            Outcome::Delivered => {
                self.settle_done(job);
                return None;
            }
            Outcome::Retryable { retry_after } => {
                match self
                    .settings
                    .policy
                    .next_delay(job.attempt, *retry_after, unit)
                {
                    Some(delay) => {
                        tracing::info!(seq = job.event.seq, url = %job.target.url, attempt = job.attempt, ?delay, error = ?result.error, "revalidation failed; will retry");
                        return Some(delay);
                    }
                    None => "retries_exhausted",
                }
            }
            Outcome::Permanent => "permanent_status",
        };
        let record = DeadLetter {
            site: job.event.site.clone(),
            url: job.target.url.clone(),
            reason: reason.into(),
            webhook_id: id.into(),
            attempts: job.attempt,
            last_status: result.status,
            last_error: result.error.clone(),
            failed_at: time::OffsetDateTime::now_utc(),
            event: (*job.event).clone(),
        };
        match dlq::write(&self.platform.jetstream, &record).await {
            Ok(()) => {
                self.settle_done(job);
                None
            }
            // Not recorded, so not done: the event comes back and is decided again.
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "writing a dead letter failed; retrying the event");
                Some(Duration::from_secs(1))
            }
        }
    }

    fn settle_done(&self, job: &Job) {
        let mut settled = self.settled.lock().unwrap_or_else(PoisonError::into_inner);
        settled.insert((job.event.seq, job.target.url.clone()));
    }

    /// Calls a target once for a dead letter's event (replay), through the same signing,
    /// timeout and classification as every call.
    pub async fn replay(&self, target: &RevalidateTarget, event: &Event) -> CallResult {
        let id = call_id(&event.site, &target.url, &[event.seq]);
        let body = RevalidateBody::merge(&event.site, [event]);
        self.dispatcher.call(target, &id, &body, None).await
    }
}
