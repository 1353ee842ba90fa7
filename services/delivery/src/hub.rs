//! The process's one live feed from JetStream, fanned out in memory: an ordered consumer on
//! `SPOOL_EVENTS` feeds the recent-events [`Window`] and a broadcast channel per site.
//! Browsers never get a JetStream consumer of their own.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use spool_platform::nats::Disconnects;
use spool_platform::registry::SiteRegistry;
use spool_platform::trace;
use spool_proto::names::{EVENTS_STREAM, EVENTS_SUBJECTS, MSG_ID_HEADER};
use spool_proto::outcome::CallOutcome;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::frames::FeedEvent;
use crate::revalidated::Revalidated;
use crate::window::{Filter, Page, Window};

/// What a site's live channel carries: its events, in order, and after them the notices
/// that targets revalidated them (`event: revalidated`, for the readers that ask).
#[derive(Debug, Clone)]
pub enum Live {
    Event(Arc<FeedEvent>),
    Revalidated(Arc<Revalidated>),
}

pub struct Hub {
    state: Mutex<State>,
    /// The feed has started (the window's starting point is set).
    started: AtomicBool,
    /// The feed has caught up with the stream as it was at start: resumes are served.
    ready: AtomicBool,
    /// The stream's last sequence when the feed started.
    ready_at: AtomicU64,
    /// Shutting down: every site's channel is closed, and new subscriptions start closed.
    closed: AtomicBool,
    window_capacity: usize,
    window_bytes: usize,
    channel_capacity: usize,
}

struct State {
    window: Window,
    /// The last stream sequence the feed has seen (events it could not decode included).
    last_seq: u64,
    sites: HashMap<String, broadcast::Sender<Live>>,
    /// Per site of `notify: after_revalidate`, the events not released yet, in order:
    /// nothing of the site goes out past the first of them.
    held: HashMap<String, VecDeque<HeldEvent>>,
    /// Targets that answered `2xx` for events this replica's feed hasn't seen yet
    /// (seq → target keys); bounded, oldest dropped.
    early: BTreeMap<u64, HashSet<String>>,
}

/// An event waiting for its site's revalidation targets.
struct HeldEvent {
    event: Arc<FeedEvent>,
    /// The targets (keys) that haven't answered `2xx` for it yet.
    waiting: HashSet<String>,
    /// It goes out then anyway, marked `"fresh": false`.
    deadline: SystemTime,
    /// Notices of targets' `2xx` that go out right after it.
    then: Vec<Arc<Revalidated>>,
}

/// What an event of an `after_revalidate` site waits for: these targets' `2xx`, until
/// `deadline`.
#[derive(Debug, Clone)]
pub struct Hold {
    pub targets: Vec<String>,
    pub deadline: SystemTime,
}

/// Most early answers kept (outcomes seen before their events).
const MAX_EARLY: usize = 100_000;

/// A live subscription: every event of the site published after `last_seq` arrives on
/// `events` (unless the receiver lags, which it reports).
pub struct Subscription {
    pub events: broadcast::Receiver<Live>,
    pub last_seq: u64,
}

impl Hub {
    /// `window_capacity` recent events (at most `window_bytes`) are kept for resumes; each
    /// site's channel buffers `channel_capacity` events for its slowest reader before that
    /// reader lags.
    pub fn new(window_capacity: usize, window_bytes: usize, channel_capacity: usize) -> Hub {
        Hub {
            state: Mutex::new(State {
                window: Window::new(window_capacity, window_bytes, 0),
                last_seq: 0,
                sites: HashMap::new(),
                held: HashMap::new(),
                early: BTreeMap::new(),
            }),
            started: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            ready_at: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            window_capacity,
            window_bytes,
            channel_capacity: channel_capacity.max(1),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The feed starts after `from` and is ready once it has read up to `ready_at` (the
    /// stream's end when it started): the window is filled with the recent past first, so
    /// that browsers resuming after a deploy are served from memory, not by JetStream.
    fn start(&self, from: u64, ready_at: u64) {
        let mut state = self.state();
        state.window = Window::new(self.window_capacity, self.window_bytes, from);
        state.last_seq = from;
        self.ready_at.store(ready_at, Ordering::Release);
        self.started.store(true, Ordering::Release);
        if from >= ready_at {
            self.ready.store(true, Ordering::Release);
        }
    }

    /// Marks the feed ready. Takes the sequence rather than reading it: the caller may hold
    /// the state lock (publishing), and the lock is not re-entrant.
    fn caught_up(&self, last_seq: u64) {
        if !self.ready.swap(true, Ordering::AcqRel) {
            tracing::info!(last_seq, "event feed caught up");
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn last_seq(&self) -> u64 {
        self.state().last_seq
    }

    fn publish(&self, seq: u64, event: Option<Arc<FeedEvent>>, hold: Option<Hold>) {
        let mut state = self.state();
        state.last_seq = seq;
        if seq >= self.ready_at.load(Ordering::Acquire) {
            self.caught_up(seq);
        }
        let Some(event) = event else { return };
        state.window.push(event.clone());
        let queued = state.held.get(&event.site).is_some_and(|q| !q.is_empty());
        if hold.is_none() && !queued {
            state.send(&event.site, Live::Event(event.clone()));
            return;
        }
        // Held for its targets, or behind an earlier held event of its site.
        let (mut waiting, deadline) = match hold {
            Some(hold) => (hold.targets.into_iter().collect(), hold.deadline),
            None => (HashSet::new(), SystemTime::UNIX_EPOCH),
        };
        if let Some(answered) = state.early.remove(&seq) {
            waiting.retain(|t: &String| !answered.contains(t));
        }
        let site = event.site.clone();
        state
            .held
            .entry(site.clone())
            .or_default()
            .push_back(HeldEvent {
                event,
                waiting,
                deadline,
                then: Vec::new(),
            });
        state.release(&site, SystemTime::now());
    }

    /// A revalidation call's outcome: a target that answered `2xx` no longer holds the
    /// events it covered, and the site's readers hear that their paths are fresh (after the
    /// events, which may still be held). The notice is built outside the lock the feed
    /// takes for every event: it reads the events' paths back from their JSON.
    pub fn answered(&self, outcome: &CallOutcome) {
        if !outcome.ok {
            return;
        }
        let site = outcome.site.as_str();
        let covered = self.unhold(outcome);
        let Some(notice) = Revalidated::new(outcome, covered.iter().map(|e| &**e)) else {
            return;
        };
        // Sent now if its events went out meanwhile, else right after the last one's release.
        self.state().notify(site, Arc::new(notice));
    }

    /// Takes the outcome's target off the events it covered, releases what that frees, and
    /// returns the covered events this replica has, if anyone reads the site here.
    fn unhold(&self, outcome: &CallOutcome) -> Vec<Arc<FeedEvent>> {
        let (site, target) = (outcome.site.as_str(), outcome.target.as_str());
        let mut state = self.state();
        let last_seq = state.last_seq;
        for &seq in &outcome.seqs {
            let held = state
                .held
                .get_mut(site)
                .and_then(|q| q.iter_mut().find(|h| h.event.seq == seq));
            match held {
                Some(held) => {
                    held.waiting.remove(target);
                }
                // Not seen yet by this replica's feed: kept for when it is.
                None if seq > last_seq => {
                    state
                        .early
                        .entry(seq)
                        .or_default()
                        .insert(target.to_owned());
                    while state.early.len() > MAX_EARLY {
                        state.early.pop_first();
                    }
                }
                None => {}
            }
        }
        state.release(site, SystemTime::now());
        if !state.sites.contains_key(site) {
            return Vec::new();
        }
        // Only the site's own events count (an outcome can't speak for another site's).
        outcome
            .seqs
            .iter()
            .filter_map(|&seq| state.window.get(seq))
            .filter(|event| event.site == site)
            .cloned()
            .collect()
    }

    /// Releases every held event whose time has come (its deadline passed).
    pub fn tick(&self, now: SystemTime) {
        let mut state = self.state();
        let sites: Vec<String> = state.held.keys().cloned().collect();
        for site in sites {
            state.release(&site, now);
        }
    }

    /// Up to where `site`'s readers may read: the last sequence the feed has seen, or the
    /// one before the site's first held event.
    pub fn released_end(&self, site: &str) -> u64 {
        self.state().released_end(site)
    }

    /// Subscribes to a site's live events. Taken under the same lock as publishing, so
    /// `last_seq` is exactly the point after which the subscription sees everything.
    /// After [`Hub::close`], the subscription is closed from the start.
    pub fn subscribe(&self, site: &str) -> Subscription {
        let mut state = self.state();
        let last_seq = state.last_seq;
        if self.closed.load(Ordering::Acquire) {
            let (_, events) = broadcast::channel(1);
            return Subscription { events, last_seq };
        }
        let capacity = self.channel_capacity;
        let tx = state
            .sites
            .entry(site.to_owned())
            .or_insert_with(|| broadcast::channel(capacity).0);
        Subscription {
            events: tx.subscribe(),
            last_seq,
        }
    }

    /// Ends every live subscription (after the events already sent to it): the process is
    /// shutting down, and its streams end so that their clients resume elsewhere.
    pub fn close(&self) {
        let mut state = self.state();
        self.closed.store(true, Ordering::Release);
        state.sites.clear();
    }

    /// Up to `limit` events after `cursor` (about `max_bytes` of them) from the window, or
    /// `None` when the window no longer (or not yet) holds everything after it. A page that
    /// reaches the end moves the cursor to the last sequence the feed has seen.
    pub fn recent(
        &self,
        cursor: u64,
        filter: &Filter,
        limit: usize,
        max_bytes: usize,
    ) -> Option<Page> {
        let state = self.state();
        // Nothing the site still holds back (`notify: after_revalidate`) is read.
        let end = state.released_end(&filter.site).max(cursor);
        (self.is_ready() && state.window.covers(cursor) && cursor <= state.last_seq)
            .then(|| state.window.page(cursor, filter, limit, max_bytes, end))
    }

    /// The window holds every event after this sequence.
    pub fn window_start(&self) -> u64 {
        self.state().window.start()
    }
}

impl State {
    /// Sends a released event, or a notice, to the site's live readers.
    fn send(&mut self, site: &str, item: Live) {
        if let Some(tx) = self.sites.get(site) {
            if tx.send(item).is_err() {
                // Nobody listens to this site any more.
                self.sites.remove(site);
            }
        }
    }

    /// Sends `notice` after the last event it covers: now if that is released, or else
    /// right after that event's release.
    fn notify(&mut self, site: &str, notice: Arc<Revalidated>) {
        let last = notice.last_seq();
        if last <= self.released_end(site) {
            self.send(site, Live::Revalidated(notice));
            return;
        }
        let held = self.held.get_mut(site).and_then(|queue| {
            // The last event held at or before `last` (it is `last`, unless that was
            // released already, which `released_end` rules out).
            queue.iter_mut().rev().find(|h| h.event.seq <= last)
        });
        if let Some(held) = held {
            held.then.push(notice);
        }
    }

    fn released_end(&self, site: &str) -> u64 {
        match self.held.get(site).and_then(VecDeque::front) {
            Some(first) => first.event.seq - 1,
            None => self.last_seq,
        }
    }

    /// Releases `site`'s held events from the front, in order, while each is answered by
    /// every target or past its deadline (then marked `"fresh": false`).
    fn release(&mut self, site: &str, now: SystemTime) {
        loop {
            let Some(queue) = self.held.get_mut(site) else {
                return;
            };
            let Some(first) = queue.front() else {
                self.held.remove(site);
                return;
            };
            let fresh = first.waiting.is_empty();
            if !fresh && now < first.deadline {
                return;
            }
            let Some(held) = queue.pop_front() else {
                return;
            };
            let event = if fresh {
                held.event
            } else {
                let stale = Arc::new(held.event.stale());
                self.window.replace(stale.clone());
                stale
            };
            metrics::counter!("spool_delivery_held_released_total", "fresh" => if fresh { "yes" } else { "no" })
                .increment(1);
            self.send(site, Live::Event(event));
            for notice in held.then {
                self.send(site, Live::Revalidated(notice));
            }
        }
    }
}

/// Releases held events whose deadline passed, every 100 ms, until `shutdown`.
pub async fn run_release_timer(hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_millis(100));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => hub.tick(SystemTime::now()),
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Follows `SPOOL_EVENTS` from its current end until `shutdown`, then closes the hub's
/// live subscriptions.
pub async fn run_feed(
    js: jetstream::Context,
    disconnects: Disconnects,
    registry: SiteRegistry,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
) {
    // Each event is encoded once, with its site's public fields: none before the registry
    // has loaded (an event encoded without its site would show visitors the defaults).
    tokio::select! {
        _ = registry.loaded_wait() => {}
        _ = shutdown.cancelled() => {
            hub.close();
            return;
        }
    }
    feed(js, disconnects, &registry, &hub, shutdown).await;
    hub.close();
}

/// Re-creates the consumer after the last sequence seen whenever it fails or the
/// connection drops (the window stays valid: nothing after the last sequence is skipped).
async fn feed(
    js: jetstream::Context,
    disconnects: Disconnects,
    registry: &SiteRegistry,
    hub: &Hub,
    shutdown: CancellationToken,
) {
    spool_platform::nats::keep_running(
        "the event feed",
        &disconnects,
        &shutdown,
        || follow(&js, registry, hub),
        || {},
    )
    .await;
}

async fn follow(js: &jetstream::Context, registry: &SiteRegistry, hub: &Hub) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut stream = js
        .get_stream(EVENTS_STREAM)
        .await
        .context("opening SPOOL_EVENTS")?;
    if !hub.started.load(Ordering::Acquire) {
        let state = stream
            .info()
            .await
            .context("SPOOL_EVENTS info")?
            .state
            .clone();
        let window = u64::try_from(hub.window_capacity).unwrap_or(u64::MAX);
        let from = state
            .last_sequence
            .saturating_sub(window)
            .max(state.first_sequence.saturating_sub(1));
        hub.start(from, state.last_sequence);
        tracing::info!(from, last_seq = state.last_sequence, "event feed started");
    }
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: EVENTS_SUBJECTS.into(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: hub.last_seq() + 1,
            },
            ..Default::default()
        })
        .await
        .context("creating the feed consumer")?;
    let mut messages = consumer.messages().await.context("reading the feed")?;
    while let Some(message) = messages.next().await {
        let message = message.context("feed message")?;
        let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        if seq <= hub.last_seq() {
            continue;
        }
        // One consumer span per event and process (not per browser): the fan-out.
        let span = tracing::info_span!(
            "process",
            otel.name = "process spool.events",
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.destination.name = %message.subject,
            messaging.message.id = message.headers.as_ref().and_then(|h| h.get(MSG_ID_HEADER)).map(|v| v.as_str()),
            spool.event.seq = seq,
            trace_id = tracing::field::Empty,
        );
        trace::adopt(&span, trace::from_nats(message.headers.as_ref()));
        let _entered = span.enter();
        let event = match FeedEvent::from_stored(seq, &message.payload, &|id| registry.get(id)) {
            Ok(event) => Some(Arc::new(event)),
            Err(e) => {
                tracing::error!(seq, error = %e, "undecodable event in SPOOL_EVENTS; skipped");
                None
            }
        };
        let hold = event.as_ref().and_then(|e| hold_of(registry, e));
        hub.publish(seq, event, hold);
        if pending == 0 {
            // Nothing more in the stream right now: caught up even if the event at the
            // starting end was removed meanwhile.
            hub.caught_up(seq);
        }
        metrics::counter!("spool_delivery_feed_events_total").increment(1);
    }
    anyhow::bail!("the feed consumer ended")
}

/// What an event waits for before its site's readers hear of it (`None`: nothing).
fn hold_of(registry: &SiteRegistry, event: &FeedEvent) -> Option<Hold> {
    let site = registry.get(&event.site)?;
    // Most sites notify at once: nothing more to look at for their events.
    if site.notify != Some(spool_proto::site::Notify::AfterRevalidate) {
        return None;
    }
    let collection = spool_proto::CollectionName::parse(event.collection.clone()).ok()?;
    let (targets, timeout) = site.hold_for(&collection, event.kind, event.audience)?;
    Some(Hold {
        targets,
        deadline: event.received_at + timeout,
    })
}

/// Follows `SPOOL_OUTCOMES` (from a few minutes back, so that events held at start meet
/// their answers) and tells the hub which targets answered `2xx` for which events.
pub async fn run_outcomes(
    js: jetstream::Context,
    disconnects: Disconnects,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
) {
    let started = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
    spool_platform::nats::keep_running(
        "the outcomes feed",
        &disconnects,
        &shutdown,
        || follow_outcomes(&js, &hub, started),
        || {},
    )
    .await;
}

async fn follow_outcomes(
    js: &jetstream::Context,
    hub: &Hub,
    from: time::OffsetDateTime,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let stream = js
        .get_stream(spool_proto::names::OUTCOMES_STREAM)
        .await
        .context("opening SPOOL_OUTCOMES")?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time: from },
            ..Default::default()
        })
        .await
        .context("creating the outcomes consumer")?;
    let mut messages = consumer.messages().await.context("reading outcomes")?;
    while let Some(message) = messages.next().await {
        let message = message.context("outcome message")?;
        match serde_json::from_slice::<CallOutcome>(&message.payload) {
            Ok(outcome) => hub.answered(&outcome),
            Err(e) => tracing::warn!(error = %e, "not a call outcome in SPOOL_OUTCOMES; skipped"),
        }
    }
    anyhow::bail!("the outcomes consumer ended")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, site: &str) -> Arc<FeedEvent> {
        let stored = serde_json::json!({
            "id": format!("m{seq}"), "site": site, "type": "content.updated", "collection": "blog",
            "item": {"id": "1"}, "paths": [], "tags": [],
            "occurred_at": "2026-11-25T10:00:00Z", "received_at": "2026-11-25T10:00:00Z"
        });
        Arc::new(
            FeedEvent::from_stored(seq, stored.to_string().as_bytes(), &crate::frames::no_site)
                .unwrap(),
        )
    }

    fn seq(item: Live) -> u64 {
        match item {
            Live::Event(event) => event.seq,
            Live::Revalidated(notice) => panic!("a notice, not an event: {notice:?}"),
        }
    }

    /// `target` answered `2xx` for `seqs` of `site`.
    fn ok(site: &str, target: &str, seqs: &[u64]) -> CallOutcome {
        CallOutcome {
            site: spool_proto::names::SiteId::parse(site).unwrap(),
            target: target.into(),
            url: "https://example.com/api/revalidate".into(),
            webhook_id: "w".into(),
            attempt: 1,
            seqs: seqs.to_vec(),
            paths: vec!["/blog".into()],
            tags: vec![],
            ok: true,
            status: Some(200),
            replica: None,
            at: time::OffsetDateTime::now_utc(),
        }
    }

    #[test]
    fn a_subscription_sees_exactly_what_follows_its_last_seq() {
        let hub = Hub::new(100, usize::MAX, 16);
        hub.start(10, 10);
        hub.publish(11, Some(event(11, "a")), None);
        let mut sub = hub.subscribe("a");
        assert_eq!(sub.last_seq, 11);
        hub.publish(12, Some(event(12, "b")), None);
        hub.publish(13, None, None);
        hub.publish(14, Some(event(14, "a")), None);
        assert_eq!(seq(sub.events.try_recv().unwrap()), 14);
        assert!(sub.events.try_recv().is_err());
        assert_eq!(hub.last_seq(), 14);
        let a = Filter {
            site: "a".into(),
            collections: None,
            preview: false,
        };
        let recent: Vec<u64> = hub
            .recent(10, &a, 10, usize::MAX)
            .unwrap()
            .events
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(recent, [11, 14]);
        assert!(
            hub.recent(9, &a, 10, usize::MAX).is_none(),
            "before the feed started"
        );
        assert!(
            hub.recent(15, &a, 10, usize::MAX).is_none(),
            "ahead of the feed"
        );
    }

    #[test]
    fn ready_once_the_backfill_reaches_the_end_seen_at_start() {
        let hub = Hub::new(100, usize::MAX, 4);
        hub.start(5, 8);
        assert!(!hub.is_ready());
        hub.publish(6, Some(event(6, "a")), None);
        hub.publish(7, None, None);
        assert!(!hub.is_ready());
        hub.publish(8, Some(event(8, "a")), None);
        assert!(hub.is_ready());
        let a = Filter {
            site: "a".into(),
            collections: None,
            preview: false,
        };
        let recent: Vec<u64> = hub
            .recent(5, &a, 10, usize::MAX)
            .unwrap()
            .events
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(recent, [6, 8], "the backfilled past serves resumes");
    }

    #[test]
    fn a_held_event_and_what_follows_it_wait_for_the_targets_in_order() {
        let hub = Hub::new(100, usize::MAX, 16);
        hub.start(10, 10);
        let mut a = hub.subscribe("a");
        let mut b = hub.subscribe("b");
        let later = SystemTime::now() + Duration::from_secs(60);
        let hold = |targets: &[&str]| Hold {
            targets: targets.iter().map(|t| t.to_string()).collect(),
            deadline: later,
        };
        // t2 answers before this replica's feed sees event 11.
        hub.answered(&ok("a", "t2", &[11]));
        hub.publish(11, Some(event(11, "a")), Some(hold(&["t1", "t2"])));
        hub.publish(12, Some(event(12, "a")), None);
        hub.publish(13, Some(event(13, "b")), None);
        assert_eq!(
            seq(b.events.try_recv().unwrap()),
            13,
            "another site is not held"
        );
        assert!(a.events.try_recv().is_err(), "11 waits, and 12 behind it");
        assert_eq!(hub.released_end("a"), 10);
        assert_eq!(hub.released_end("b"), 13);
        let filter = Filter {
            site: "a".into(),
            collections: None,
            preview: false,
        };
        let page = hub.recent(10, &filter, 10, usize::MAX).unwrap();
        assert!(page.events.is_empty());
        assert_eq!(
            (page.cursor, page.complete),
            (10, true),
            "stops before the held event"
        );

        hub.answered(&ok("a", "t1", &[11]));
        assert_eq!(seq(a.events.try_recv().unwrap()), 11);
        assert_eq!(seq(a.events.try_recv().unwrap()), 12);
        assert_eq!(hub.released_end("a"), 13);
        let json = a_json(&hub, &filter, 11);
        assert!(json.get("fresh").is_none(), "in time: not marked");

        // No answer: released at its deadline, marked stale, in the window too.
        hub.publish(
            14,
            Some(event(14, "a")),
            Some(Hold {
                targets: vec!["t1".into()],
                deadline: SystemTime::now() + Duration::from_millis(50),
            }),
        );
        hub.tick(SystemTime::now());
        assert!(a.events.try_recv().is_err());
        hub.tick(SystemTime::now() + Duration::from_secs(1));
        assert_eq!(seq(a.events.try_recv().unwrap()), 14);
        assert_eq!(a_json(&hub, &filter, 13)["fresh"], false);
    }

    #[test]
    fn a_notice_follows_the_events_it_covers() {
        let hub = Hub::new(100, usize::MAX, 16);
        hub.start(0, 0);
        let mut a = hub.subscribe("a");
        let event = |seq: u64, site: &str| {
            let stored = serde_json::json!({
                "id": format!("m{seq}"), "site": site, "type": "content.updated",
                "collection": "blog", "item": {"id": "1"}, "paths": ["/blog"], "tags": [],
                "occurred_at": "2026-11-25T10:00:00Z", "received_at": "2026-11-25T10:00:00Z"
            });
            Arc::new(
                FeedEvent::from_stored(seq, stored.to_string().as_bytes(), &crate::frames::no_site)
                    .unwrap(),
            )
        };
        // Released at once (notify: immediate): the notice comes after it.
        hub.publish(1, Some(event(1, "a")), None);
        hub.publish(2, Some(event(2, "b")), None);
        hub.answered(&ok("a", "t1", &[1, 2]));
        assert_eq!(seq(a.events.try_recv().unwrap()), 1);
        let Live::Revalidated(notice) = a.events.try_recv().unwrap() else {
            panic!("a notice")
        };
        assert_eq!(
            notice.last_seq(),
            1,
            "site b's event 2 is not site a's to hear of"
        );
        // Held for two targets: t1's notice waits for the event's release, after it.
        let hold = Hold {
            targets: vec!["t1".into(), "t2".into()],
            deadline: SystemTime::now() + Duration::from_secs(60),
        };
        hub.publish(3, Some(event(3, "a")), Some(hold));
        hub.answered(&ok("a", "t1", &[3]));
        assert!(a.events.try_recv().is_err(), "3 is held: so is its notice");
        hub.answered(&ok("a", "t2", &[3]));
        assert_eq!(seq(a.events.try_recv().unwrap()), 3);
        for _ in ["t1", "t2"] {
            assert!(matches!(a.events.try_recv(), Ok(Live::Revalidated(_))));
        }
        // A failed call, or an event this replica hasn't seen: nothing to tell.
        let mut failed = ok("a", "t1", &[3]);
        failed.ok = false;
        hub.answered(&failed);
        hub.answered(&ok("a", "t1", &[99]));
        assert!(a.events.try_recv().is_err());
    }

    /// The JSON a reader gets from the window for the event after `cursor`.
    fn a_json(hub: &Hub, filter: &Filter, cursor: u64) -> serde_json::Value {
        let page = hub.recent(cursor - 1, filter, 1, usize::MAX).unwrap();
        let _ = cursor;
        serde_json::from_slice(&page.events[0].json(false)).unwrap()
    }

    #[test]
    fn closing_ends_every_subscription_after_what_it_was_sent() {
        let hub = Hub::new(100, usize::MAX, 16);
        hub.start(0, 0);
        let mut sub = hub.subscribe("a");
        hub.publish(1, Some(event(1, "a")), None);
        hub.close();
        assert_eq!(seq(sub.events.try_recv().unwrap()), 1);
        assert!(matches!(
            sub.events.try_recv(),
            Err(broadcast::error::TryRecvError::Closed)
        ));
        let mut late = hub.subscribe("a");
        assert!(matches!(
            late.events.try_recv(),
            Err(broadcast::error::TryRecvError::Closed)
        ));
    }

    #[test]
    fn a_slow_reader_lags_instead_of_growing_the_buffer() {
        let hub = Hub::new(100, usize::MAX, 4);
        hub.start(0, 0);
        let mut sub = hub.subscribe("a");
        for seq in 1..=10 {
            hub.publish(seq, Some(event(seq, "a")), None);
        }
        assert!(matches!(
            sub.events.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(6))
        ));
    }
}
