//! From consumed messages to calls. An event becomes one job per matching target; a due
//! retry is one job for its target. Each target has a lane (a task driving the pure
//! [`LaneCore`]) that merges, calls, pauses and parks. A message is acknowledged once each
//! of its jobs is *settled*: delivered, dead-lettered, or stored as a retry record in
//! `SPOOL_RETRY` (see [`crate::retries`] for why). A job that could not be settled (NATS
//! refused the record) makes its message come back in a second, whole.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use spool_platform::{trace, Platform};
use spool_proto::names::MSG_ID_HEADER;
use spool_proto::revalidate::RevalidateBody;
use spool_proto::site::RevalidateTarget;
use spool_proto::{Event, SiteId};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::dispatch::{call_id, CallResult, Dispatcher};
use crate::dlq::{self, DeadLetter, Reason};
use crate::lane::{Action, Batch, CallEnd, LaneCore, LaneSettings, Parked, Ticket, Work};
use crate::pauses::{self, Pause, Pauses};
use crate::redact::redact_url;
use crate::retries::{self, RetryRecord};
use crate::retry::{Outcome, RetryPolicy};

/// How the worker merges, limits and retries.
#[derive(Debug, Clone)]
pub struct Settings {
    pub policy: RetryPolicy,
    pub coalesce_window: Duration,
    pub coalesce_max: usize,
    pub target_concurrency: usize,
    /// Jobs one target may keep waiting in this process (beyond them: parked).
    pub target_max_held: usize,
    pub call_timeout: Duration,
    pub ack_wait: Duration,
}

impl Settings {
    pub fn from_config(config: &crate::RevalidatorConfig) -> Settings {
        Settings {
            policy: RetryPolicy {
                schedule: config.retry_schedule.clone(),
                ..Default::default()
            },
            coalesce_window: config.coalesce_window,
            coalesce_max: config.coalesce_max,
            target_concurrency: config.target_concurrency,
            target_max_held: config.target_max_held,
            call_timeout: config.call_timeout,
            ack_wait: config.ack_wait,
        }
    }
}

/// Most event JSON in one call (and so in one retry record, which must fit a NATS message).
pub const MAX_CALL_BYTES: usize = 512 * 1024;

/// A lane with nothing to do for this long ends (a removed target's lane, among others).
const LANE_IDLE: Duration = Duration::from_secs(30);

/// Pauses at least this long are shared with every replica (`spool-revalidator-targets`).
const SHARE_PAUSES_FROM: Duration = Duration::from_secs(30);

/// How soon a message whose job could not be settled comes back.
const SETTLE_RETRY: Duration = Duration::from_secs(1);

/// One consumed message (an event, or a due retry) waiting for its jobs.
struct Held {
    message: jetstream::Message,
    remaining: AtomicUsize,
    unsettled: AtomicBool,
    /// Cancelled once every job is settled (ends the keep-alive).
    settled: CancellationToken,
}

impl Held {
    fn new(message: jetstream::Message, jobs: usize, keep_alive_every: Duration) -> Arc<Held> {
        let held = Arc::new(Held {
            message,
            remaining: AtomicUsize::new(jobs),
            unsettled: AtomicBool::new(false),
            settled: CancellationToken::new(),
        });
        tokio::spawn(held.clone().keep_alive(keep_alive_every));
        held
    }

    /// One job is done; `settled` = its fate is recorded (delivered, dead-lettered or
    /// stored as a retry). The last job acknowledges the message, or, if any job could not
    /// be settled, has it redelivered shortly.
    async fn done(&self, settled: bool) {
        if !settled {
            self.unsettled.store(true, Ordering::Release);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        self.settled.cancel();
        let result = if self.unsettled.load(Ordering::Acquire) {
            self.message
                .ack_with(AckKind::Nak(Some(SETTLE_RETRY)))
                .await
        } else {
            // Double ack: the server confirmed it, or the message comes back.
            self.message.double_ack().await
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "acknowledging a message failed; it will be redelivered");
        }
    }

    /// Tells JetStream the message is still being worked on (`+WPI`) every `every` until
    /// it is settled: while it waits for its window or a slow call, no other replica gets
    /// it and the wait doesn't count as an attempt.
    async fn keep_alive(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        loop {
            tokio::select! {
                _ = self.settled.cancelled() => return,
                _ = tick.tick() => {
                    if let Err(e) = self.message.ack_with(AckKind::Progress).await {
                        tracing::debug!(error = %e, "progress for a message failed");
                    }
                }
            }
        }
    }
}

/// One event for one target.
struct FreshJob {
    event: Arc<Event>,
    target: RevalidateTarget,
    /// The `traceparent` the event was published with (used when no exporter runs here).
    traceparent: Option<String>,
    /// The consumer span's context: the parent of the call's client span.
    trace_context: trace::Context,
    held: Arc<Held>,
}

/// A retry come due, for its target as configured now.
struct RetryJob {
    record: RetryRecord,
    target: RevalidateTarget,
    trace_context: trace::Context,
    held: Arc<Held>,
}

type LaneWork = Work<FreshJob, RetryJob>;
type LaneBatch = Batch<FreshJob, RetryJob>;
/// A lane per (site, target URL).
type LaneKey = (SiteId, String);
/// What a lane is told. (Work is by far the common message: boxing it to shrink the rare
/// `Pause` would cost an allocation per job.)
#[allow(clippy::large_enum_variant)]
enum LaneInput {
    /// Work, with its size in a retry record.
    Work(LaneWork, usize),
    /// Another replica's pause of the target (`None`: the target answered).
    Pause(Option<Pause>),
}
type LaneInbox = mpsc::UnboundedSender<LaneInput>;

/// What a call covered and how it went, from the call task back to its lane.
struct CallReport {
    batch: LaneBatch,
    webhook_id: String,
    attempt: u64,
    result: CallResult,
}

pub struct Worker {
    platform: Platform,
    dispatcher: Dispatcher,
    settings: Settings,
    lanes: Mutex<HashMap<LaneKey, LaneInbox>>,
    /// Target pauses shared by every replica.
    pub pauses: Arc<Pauses>,
    /// Every call and every settling in flight; shutdown waits for them.
    pub calls: TaskTracker,
}

impl Worker {
    pub fn new(platform: Platform, dispatcher: Dispatcher, settings: Settings) -> Arc<Worker> {
        Arc::new(Worker {
            platform,
            dispatcher,
            settings,
            lanes: Mutex::default(),
            pauses: Pauses::new(),
            calls: TaskTracker::new(),
        })
    }

    fn keep_alive_every(&self) -> Duration {
        (self.settings.ack_wait / 3).max(Duration::from_millis(100))
    }

    /// Takes one event of `SPOOL_EVENTS` into work.
    pub async fn handle_event(self: &Arc<Self>, message: jetstream::Message) {
        let (seq, attempt) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered),
            Err(e) => {
                tracing::error!(error = %e, "a message without JetStream metadata; dropped");
                return;
            }
        };
        let mut event: Event = match serde_json::from_slice(&message.payload) {
            Ok(event) => event,
            Err(e) => {
                tracing::error!(seq, error = %e, "undecodable event; not revalidated");
                metrics::counter!("spool_revalidator_dead_letters_total", "reason" => Reason::Undecodable.as_str()).increment(1);
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        event.seq = seq;
        // Revalidation needs the item's id and slug, never its other fields: held events,
        // retry records and dead letters stay small (and carry no content).
        event.item.extra = serde_json::Map::new();
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
            self.unknown_site(&message, &event.site).await;
            return;
        };
        let targets: Vec<RevalidateTarget> = site
            .revalidate
            .iter()
            .filter(|t| t.wants(&event.collection) && t.wants_event(event.kind, event.audience))
            .cloned()
            .collect();
        if targets.is_empty() {
            let _ = message.double_ack().await;
            return;
        }
        let traceparent = message
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.to_string());
        let bytes = record_size(&event);
        let held = Held::new(message, targets.len(), self.keep_alive_every());
        let event = Arc::new(event);
        for target in targets {
            let job = FreshJob {
                event: event.clone(),
                target,
                traceparent: traceparent.clone(),
                trace_context: trace_context.clone(),
                held: held.clone(),
            };
            self.submit(Work::Fresh(job), bytes);
        }
    }

    /// Takes one due retry of `SPOOL_RETRY` into work.
    pub async fn handle_retry(self: &Arc<Self>, message: jetstream::Message) {
        let record: RetryRecord = match serde_json::from_slice(&message.payload) {
            Ok(record) => record,
            Err(e) => {
                tracing::error!(subject = %message.subject, error = %e, "undecodable retry record; dropped");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        let span = tracing::info_span!(
            "process",
            otel.name = "process spool.retry",
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.destination.name = %message.subject,
            messaging.consumer.group.name = "spool-revalidator",
            spool.attempt = record.attempt,
            trace_id = tracing::field::Empty,
        );
        trace::adopt(&span, trace::from_nats(message.headers.as_ref()));
        let trace_context = trace::context_of(&span);
        let Some(site) = self.platform.registry.get(record.site.as_str()) else {
            self.unknown_site(&message, &record.site).await;
            return;
        };
        let Some(target) = site
            .revalidate
            .iter()
            .find(|t| t.url == record.url)
            .cloned()
        else {
            tracing::warn!(site = %record.site, url = %redact_url(&record.url), webhook_id = %record.webhook_id,
                "the site no longer has this target; its retry is dropped");
            metrics::counter!("spool_revalidator_retries_dropped_total", "reason" => "target_removed").increment(1);
            let _ = message.double_ack().await;
            return;
        };
        let bytes = message.payload.len();
        let held = Held::new(message, 1, self.keep_alive_every());
        let job = RetryJob {
            record,
            target,
            trace_context,
            held,
        };
        self.submit(Work::Retry(job), bytes);
    }

    /// A message for a site this replica doesn't know: if the registry's bucket has it,
    /// this replica's copy lags (an admin PUT a moment ago), so the message comes back
    /// shortly; if the bucket doesn't, the site is gone and nobody is called.
    async fn unknown_site(&self, message: &jetstream::Message, site: &SiteId) {
        let gone = match self.platform.sites_bucket() {
            Some(bucket) if self.platform.registry.is_loaded() => {
                matches!(bucket.get(site.as_str()).await, Ok(None))
            }
            _ => false,
        };
        let result = if gone {
            tracing::info!(%site, "a message for a removed site; acknowledged without a call");
            message.double_ack().await
        } else {
            message.ack_with(AckKind::Nak(Some(SETTLE_RETRY))).await
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "acknowledging a message of an unknown site failed");
        }
    }

    fn submit(self: &Arc<Self>, work: LaneWork, bytes: usize) {
        let (site, url) = match &work {
            Work::Fresh(job) => (job.event.site.clone(), job.target.url.clone()),
            Work::Retry(job) => (job.record.site.clone(), job.record.url.clone()),
        };
        let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (site, url);
        let sender = lanes.entry(key.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(self.clone().run_lane(key.clone(), rx));
            tx
        });
        if let Err(mpsc::error::SendError(item)) = sender.send(LaneInput::Work(work, bytes)) {
            // Only if the lane's task died; start a new one.
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(self.clone().run_lane(key, rx));
            let _ = tx.send(item);
            *sender = tx;
        }
    }

    /// Tells the lane of a target, if this replica has one, of a pause shared by another.
    pub fn pause_changed(&self, key: &str, pause: Option<Pause>) {
        let lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        for ((site, url), inbox) in lanes.iter() {
            if pauses::key(site, &retries::target_key(site, url)) == key {
                let _ = inbox.send(LaneInput::Pause(pause));
            }
        }
    }

    fn lane_settings(&self) -> LaneSettings {
        LaneSettings {
            window: self.settings.coalesce_window,
            max_events: self.settings.coalesce_max,
            max_bytes: MAX_CALL_BYTES,
            concurrency: self.settings.target_concurrency,
            max_held: self.settings.target_max_held,
            call_timeout: self.settings.call_timeout,
        }
    }

    /// Drives one target's lane until it has been idle for [`LANE_IDLE`].
    async fn run_lane(self: Arc<Self>, key: LaneKey, mut work: mpsc::UnboundedReceiver<LaneInput>) {
        let mut lane: LaneCore<FreshJob, RetryJob> = LaneCore::new(self.lane_settings());
        let shared_key = pauses::key(&key.0, &retries::target_key(&key.0, &key.1));
        let adopt = |lane: &mut LaneCore<FreshJob, RetryJob>, pause: Option<Pause>| {
            let now = Instant::now();
            let pause = pause.map(|p| (now + p.remaining(pauses::now_ms()), p.failures));
            lane.adopt(pause, now);
        };
        // The pause this lane last shared (or adopted).
        let mut shared_last = self.pauses.get(&shared_key);
        if let Some(pause) = shared_last {
            adopt(&mut lane, Some(pause));
        }
        let (done_tx, mut done) = mpsc::unbounded_channel::<(Ticket, CallReport)>();
        loop {
            let wake = loop {
                match lane.next(Instant::now()) {
                    Action::Call(batch, ticket) => {
                        let (worker, done_tx) = (self.clone(), done_tx.clone());
                        self.calls.spawn(async move {
                            let report = worker.call(batch).await;
                            let _ = done_tx.send((ticket, report));
                        });
                    }
                    Action::Park(batch, due, why) => {
                        let worker = self.clone();
                        self.calls
                            .spawn(async move { worker.park(batch, due, why).await });
                    }
                    Action::Wait(wake) => break wake,
                }
            };
            let idle = lane.is_idle(Instant::now());
            tokio::select! {
                item = work.recv() => match item {
                    Some(LaneInput::Work(item, bytes)) => {
                        let events = match &item {
                            Work::Retry(job) => job.record.events.len(),
                            Work::Fresh(_) => 1,
                        };
                        lane.push_events(item, bytes, events, Instant::now());
                    }
                    Some(LaneInput::Pause(pause)) => {
                        shared_last = pause;
                        adopt(&mut lane, pause);
                    }
                    None => return,
                },
                Some((ticket, report)) = done.recv() => {
                    let end = match &report.result.outcome {
                        Outcome::Delivered => CallEnd::Delivered,
                        Outcome::Permanent => CallEnd::Refused,
                        Outcome::Retryable { .. } => CallEnd::Failed,
                    };
                    let retry_after = match &report.result.outcome {
                        Outcome::Retryable { retry_after } => *retry_after,
                        _ => None,
                    };
                    let unit: f64 = rand::random();
                    let policy = &self.settings.policy;
                    let due = lane.finished(ticket, end, Instant::now(), |failures| {
                        policy.target_pause(failures, retry_after, unit)
                    });
                    let shared = if lane.paused_until(Instant::now()).is_some() {
                        let pause = due.saturating_duration_since(Instant::now());
                        tracing::info!(site = %key.0, url = %redact_url(&key.1), failures = lane.failures(),
                            ?pause, "target paused");
                        let until_ms = pauses::now_ms()
                            .saturating_add(i64::try_from(pause.as_millis()).unwrap_or(i64::MAX));
                        Some(Pause { until_ms, failures: lane.failures() })
                    } else {
                        None
                    };
                    // Shared when a long pause starts or grows by a minute or more, and when
                    // a target whose pause was shared answers again: not on every failed
                    // probe. A short pause (the first steps of the schedule) is not shared:
                    // another replica may probe once within it, which costs the target one
                    // call; a long one (Retry-After, hours of backoff) is always honoured.
                    let long = |p: &Pause| p.remaining(pauses::now_ms()) >= SHARE_PAUSES_FROM;
                    let worth_sharing = match (shared_last, shared) {
                        (None, None) => false,
                        (Some(_), None) => true,
                        (None, Some(new)) => long(&new),
                        (Some(last), Some(new)) => {
                            long(&new) && new.until_ms >= last.until_ms + 60_000
                        }
                    };
                    if worth_sharing {
                        shared_last = shared;
                        let (pauses, shared_key) = (self.pauses.clone(), shared_key.clone());
                        self.calls.spawn(async move { pauses.publish(&shared_key, shared).await });
                    }
                    let worker = self.clone();
                    self.calls.spawn(async move { worker.settle(report, due).await });
                }
                _ = sleep_until(wake) => {}
                _ = tokio::time::sleep(LANE_IDLE), if idle => {
                    let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
                    if work.is_empty() {
                        lanes.remove(&key);
                        return;
                    }
                }
            }
        }
    }

    /// Makes one call: a merged call of fresh events, or a retry as it was first made.
    async fn call(&self, batch: LaneBatch) -> CallReport {
        let (events, target, webhook_id, attempt, parent, links, fallback_traceparent) =
            match &batch {
                Batch::Fresh(jobs) => {
                    let events = distinct_events(jobs);
                    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
                    // The newest job carries the target as currently configured.
                    let target = jobs.last().map(|j| j.target.clone());
                    let site = events.first().map(|e| e.site.clone());
                    let (Some(target), Some(site)) = (target, site) else {
                        return empty_report(batch);
                    };
                    let id = call_id(&site, &target.url, &seqs);
                    let parent = jobs[0].trace_context.clone();
                    let links: Vec<trace::Context> =
                        jobs[1..].iter().map(|j| j.trace_context.clone()).collect();
                    let traceparent = jobs[0].traceparent.clone();
                    (events, target, id, 1, parent, links, traceparent)
                }
                Batch::Retry(job) => {
                    let events: Vec<Arc<Event>> =
                        job.record.events.iter().cloned().map(Arc::new).collect();
                    let parent = job.trace_context.clone();
                    (
                        events,
                        job.target.clone(),
                        job.record.webhook_id.clone(),
                        job.record.attempt,
                        parent,
                        Vec::new(),
                        job.record.traceparent.clone(),
                    )
                }
            };
        let Some(site) = events.first().map(|e| e.site.clone()) else {
            return empty_report(batch);
        };
        let body = RevalidateBody::merge(&site, events.iter().map(|e| e.as_ref()));
        metrics::histogram!("spool_revalidator_events_per_call").record(events.len() as f64);

        // A client span per call, a child of the first event's consumer span, linked to the
        // others; its context is the traceparent the site receives.
        let span = tracing::info_span!(
            "revalidate",
            otel.name = "POST",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = "POST",
            url.full = %redact_url(&target.url),
            http.response.status_code = tracing::field::Empty,
            spool.site = %site,
            spool.events = events.len(),
            spool.attempt = attempt,
        );
        trace::adopt(&span, parent);
        for link in &links {
            trace::link(&span, link);
        }
        let traceparent = trace::headers_of(&span)
            .into_iter()
            .find(|(name, _)| name == "traceparent")
            .map(|(_, value)| value)
            .or(fallback_traceparent);
        let result = self
            .dispatcher
            .call(&target, &webhook_id, &body, traceparent.as_deref(), attempt)
            .instrument(span.clone())
            .await;
        if let Some(status) = result.status {
            span.record("http.response.status_code", status);
        }
        if result.outcome != Outcome::Delivered {
            span.record("otel.status_code", "ERROR");
        }
        let seqs = events.iter().map(|e| e.seq).collect();
        let mut outcome =
            crate::outcomes::outcome_of(&site, &target, &webhook_id, attempt, seqs, &body, &result);
        outcome.replica = Some(self.platform.instance.to_string());
        // The trace the site received, so the record joins the same trace.
        let trace = traceparent
            .map(|t| vec![("traceparent".to_owned(), t)])
            .unwrap_or_default();
        crate::outcomes::write(&self.platform.jetstream, &outcome, trace).await;
        CallReport {
            batch,
            webhook_id,
            attempt,
            result,
        }
    }

    /// Records a call's fate and settles its jobs: delivered; dead-lettered (refused, or
    /// no attempts left); or stored as a retry due at `due`.
    async fn settle(&self, report: CallReport, due: Instant) {
        let CallReport {
            batch,
            webhook_id,
            attempt,
            result,
        } = report;
        let settled = match &result.outcome {
            Outcome::Delivered => true,
            Outcome::Permanent => {
                let reason = if result.not_allowed {
                    Reason::TargetNotAllowed
                } else {
                    Reason::PermanentStatus
                };
                self.dead_letter(&batch, &webhook_id, attempt, &result, reason)
                    .await
            }
            Outcome::Retryable { retry_after }
                if self.settings.policy.allows_retry_after(attempt) =>
            {
                // The target's pause, or the call's own step of the schedule when longer.
                let own = self
                    .settings
                    .policy
                    .next_delay(attempt, *retry_after, rand::random())
                    .unwrap_or_default();
                let delay = due.saturating_duration_since(Instant::now()).max(own);
                tracing::info!(webhook_id, attempt, ?delay, error = ?result.error, "revalidation failed; will retry");
                match self.record_of(&batch, &webhook_id) {
                    Some(mut record) => {
                        record.attempt = attempt + 1;
                        record.last_status = result.status;
                        record.last_error = result.error.clone();
                        schedule_or_log(&self.platform.jetstream, &record, delay).await
                    }
                    None => true,
                }
            }
            Outcome::Retryable { .. } => {
                self.dead_letter(
                    &batch,
                    &webhook_id,
                    attempt,
                    &result,
                    Reason::RetriesExhausted,
                )
                .await
            }
        };
        complete(batch, settled).await;
    }

    /// Stores what waits as a retry due at `due`, without calling, and settles it. A retry
    /// that came due while its target is paused has had its attempt: the target's failure
    /// stands for it (so a record lives no longer than its schedule, however long the
    /// target is down), and it is dead-lettered when that was its last.
    async fn park(&self, batch: LaneBatch, due: Instant, why: Parked) {
        let webhook_id = match &batch {
            Batch::Retry(job) => job.record.webhook_id.clone(),
            Batch::Fresh(jobs) => {
                let Some(first) = jobs.first() else { return };
                let seqs: Vec<u64> = distinct_events(jobs).iter().map(|e| e.seq).collect();
                call_id(&first.event.site, &first.target.url, &seqs)
            }
        };
        let Some(mut record) = self.record_of(&batch, &webhook_id) else {
            return;
        };
        let mut delay = due.saturating_duration_since(Instant::now());
        if why == Parked::Paused && matches!(batch, Batch::Retry(_)) {
            let attempt = record.attempt;
            let result = CallResult {
                outcome: Outcome::Retryable { retry_after: None },
                status: record.last_status,
                error: Some(format!(
                    "not called: the target is paused after failing ({})",
                    record.last_error.as_deref().unwrap_or("no answer")
                )),
                not_allowed: false,
            };
            if !self.settings.policy.allows_retry_after(attempt) {
                let settled = self
                    .dead_letter(
                        &batch,
                        &webhook_id,
                        attempt,
                        &result,
                        Reason::RetriesExhausted,
                    )
                    .await;
                complete(batch, settled).await;
                return;
            }
            let own = self
                .settings
                .policy
                .next_delay(attempt, None, rand::random())
                .unwrap_or_default();
            delay = delay.max(own);
            record.attempt = attempt + 1;
            record.last_error = result.error;
        }
        let label = match why {
            Parked::Paused => "target_paused",
            Parked::Busy => "target_busy",
        };
        metrics::counter!("spool_revalidator_parked_total", "reason" => label)
            .increment(batch.len() as u64);
        let settled = schedule_or_log(&self.platform.jetstream, &record, delay).await;
        complete(batch, settled).await;
    }

    /// The retry record of a batch: a due retry's own record, or a new one (attempt 1).
    /// `None` for an empty batch (the lane makes none).
    fn record_of(&self, batch: &LaneBatch, webhook_id: &str) -> Option<RetryRecord> {
        let jobs = match batch {
            Batch::Retry(job) => return Some(job.record.clone()),
            Batch::Fresh(jobs) => jobs,
        };
        let first = jobs.first()?;
        let events: Vec<Event> = distinct_events(jobs)
            .iter()
            .map(|e| Event::clone(e))
            .collect();
        Some(RetryRecord {
            site: first.event.site.clone(),
            url: first.target.url.clone(),
            webhook_id: webhook_id.to_owned(),
            attempt: 1,
            since: time::OffsetDateTime::now_utc(),
            last_status: None,
            last_error: None,
            traceparent: first.traceparent.clone(),
            events,
        })
    }

    /// One dead letter per (event, target); true when every one was stored.
    async fn dead_letter(
        &self,
        batch: &LaneBatch,
        webhook_id: &str,
        attempt: u64,
        result: &CallResult,
        reason: Reason,
    ) -> bool {
        let Some(record) = self.record_of(batch, webhook_id) else {
            return true;
        };
        let letters: Vec<DeadLetter> = record
            .events
            .iter()
            .map(|event| DeadLetter {
                site: record.site.clone(),
                url: redact_url(&record.url),
                target_key: Some(retries::target_key(&record.site, &record.url)),
                reason,
                webhook_id: webhook_id.to_owned(),
                attempts: attempt,
                last_status: result.status,
                last_error: result.error.clone(),
                failed_at: time::OffsetDateTime::now_utc(),
                event: event.clone(),
            })
            .collect();
        // Written side by side: a merged call's letters cost one round trip, not one each.
        let js = &self.platform.jetstream;
        let written = futures::future::join_all(letters.iter().map(|l| dlq::write(js, l))).await;
        let mut all = true;
        for result in written {
            if let Err(e) = result {
                tracing::error!(error = %format!("{e:#}"), "writing a dead letter failed; the call comes back");
                all = false;
            }
        }
        all
    }

    /// Calls a target once for a dead letter's event (replay), through the same signing,
    /// timeout and classification as every call.
    pub async fn replay(&self, target: &RevalidateTarget, event: &Event) -> CallResult {
        let id = call_id(&event.site, &target.url, &[event.seq]);
        let body = RevalidateBody::merge(&event.site, [event]);
        self.dispatcher.call(target, &id, &body, None, 0).await
    }
}

/// A fresh batch's events in seq order, each once: a redelivered duplicate of an event
/// rides in the same call as the first delivery (each job is still settled).
fn distinct_events(jobs: &[FreshJob]) -> Vec<Arc<Event>> {
    let mut events: Vec<Arc<Event>> = jobs.iter().map(|j| j.event.clone()).collect();
    events.sort_by_key(|e| e.seq);
    events.dedup_by_key(|e| e.seq);
    events
}

/// About what an event takes in a retry record (its JSON without the item's fields).
fn record_size(event: &Event) -> usize {
    let text = |list: &[String]| list.iter().map(|s| s.len() + 3).sum::<usize>();
    256 + event.id.len()
        + event.item.id.len()
        + event.item.slug.as_ref().map_or(0, String::len)
        + text(&event.paths)
        + text(&event.tags)
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn empty_report(batch: LaneBatch) -> CallReport {
    CallReport {
        batch,
        webhook_id: String::new(),
        attempt: 0,
        result: CallResult {
            outcome: Outcome::Delivered,
            status: None,
            error: None,
            not_allowed: false,
        },
    }
}

async fn schedule_or_log(js: &jetstream::Context, record: &RetryRecord, delay: Duration) -> bool {
    match retries::schedule(js, record, delay).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), webhook_id = %record.webhook_id,
                "storing a retry failed; its events come back");
            false
        }
    }
}

/// Settles every job of a batch — duplicates of one event included: each holds its own
/// message.
async fn complete(batch: LaneBatch, settled: bool) {
    match batch {
        Batch::Fresh(jobs) => {
            for job in jobs {
                job.held.done(settled).await;
            }
        }
        Batch::Retry(job) => job.held.done(settled).await,
    }
}
