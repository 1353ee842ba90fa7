//! One target's lane, as pure state: what waits for the target, what is being called, and
//! whether the target may be called now. The I/O shell (`worker`) feeds it work and the
//! results of calls and carries out the [`Action`]s it returns; nothing here waits, calls
//! or reads a clock (every method takes `now`), so it is tested with tokio's paused time.
//!
//! The rules, per target:
//! - Fresh events that arrive within the coalescing window are merged into one call (up to
//!   `max_events` events and `max_bytes` of event JSON, so that a call's retry record always
//!   fits in one NATS message). A retry is called as it was first made: never merged.
//! - At most `concurrency` calls at once; after a failure, one call at a time (a probe)
//!   until a call succeeds.
//! - A failed call pauses the target: no call before the pause ends (the retry schedule by
//!   consecutive failures, or the target's `Retry-After` when longer). Whatever is queued
//!   or arrives meanwhile is parked — stored as a retry due when the pause ends — not held;
//!   a retry that comes due during the pause counts as an attempt failed with the target
//!   (the shell's rule), so every retry's life stays within its schedule.
//! - At most `max_held` events wait in the lane (a retry weighs its events); past that (the
//!   target is slow, or a probe
//!   is out) the oldest are parked until a call could have finished. So a target never
//!   holds more than its share of the consumer's unacknowledged events, whatever it does.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The lane's limits.
#[derive(Debug, Clone)]
pub struct LaneSettings {
    pub window: Duration,
    pub max_events: usize,
    pub max_bytes: usize,
    pub concurrency: usize,
    pub max_held: usize,
    /// How long a call may take: parked overflow comes back after this.
    pub call_timeout: Duration,
}

/// Work for the target: fresh events to merge, or a retry to make as it was.
#[derive(Debug)]
pub enum Work<F, R> {
    Fresh(F),
    Retry(R),
}

/// What one call or one parking covers.
#[derive(Debug)]
pub enum Batch<F, R> {
    Fresh(Vec<F>),
    Retry(R),
}

impl<F, R> Batch<F, R> {
    pub fn len(&self) -> usize {
        match self {
            Batch::Fresh(jobs) => jobs.len(),
            Batch::Retry(_) => 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the shell should do next.
#[derive(Debug)]
pub enum Action<F, R> {
    /// Make this call; report its end with [`LaneCore::finished`] and the ticket.
    Call(Batch<F, R>, Ticket),
    /// Don't call: store this as a retry due at the instant.
    Park(Batch<F, R>, Instant, Parked),
    /// Nothing to do before the instant (`None`: before new work or a call's end).
    Wait(Option<Instant>),
}

/// Why work was parked instead of called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parked {
    /// The target is paused after a failure: for a retry, this attempt failed with it.
    Paused,
    /// The target is busy (its calls are all out, or a probe is): nothing failed.
    Busy,
}

/// Handed out with a call, given back with its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The target's consecutive failures when the call started.
    failures_at_start: u32,
}

/// How a call ended, for the lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEnd {
    Delivered,
    /// Not delivered; `pause(failures)` gives the pause after the target's `failures`-th
    /// consecutive failure (the shell's retry policy, with the call's `Retry-After`).
    Failed,
    /// Answered with a status that retrying won't change: the target is up.
    Refused,
}

struct Queued<F, R> {
    work: Work<F, R>,
    bytes: usize,
    /// Events it stands for (a retry: its record's).
    events: usize,
    arrived: Instant,
}

pub struct LaneCore<F, R> {
    settings: LaneSettings,
    queue: VecDeque<Queued<F, R>>,
    /// Events in `queue`.
    held: usize,
    in_flight: usize,
    failures: u32,
    paused_until: Option<Instant>,
}

impl<F, R> LaneCore<F, R> {
    pub fn new(mut settings: LaneSettings) -> Self {
        settings.max_events = settings.max_events.max(1);
        settings.concurrency = settings.concurrency.max(1);
        settings.max_held = settings.max_held.max(settings.max_events);
        LaneCore {
            settings,
            queue: VecDeque::new(),
            held: 0,
            in_flight: 0,
            failures: 0,
            paused_until: None,
        }
    }

    /// Adds work of one event (`bytes`: its size in a retry record).
    pub fn push(&mut self, work: Work<F, R>, bytes: usize, now: Instant) {
        self.push_events(work, bytes, 1, now);
    }

    /// Adds work that stands for `events` events (a retry of a merged call).
    pub fn push_events(&mut self, work: Work<F, R>, bytes: usize, events: usize, now: Instant) {
        let events = events.max(1);
        self.held += events;
        self.queue.push_back(Queued {
            work,
            bytes,
            events,
            arrived: now,
        });
    }

    /// Events waiting (not in a call).
    pub fn held(&self) -> usize {
        self.held
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The end of the target's pause, if it is paused at `now`.
    pub fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.paused_until.filter(|until| *until > now)
    }

    /// Consecutive failed calls (0: the target answered the last call).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Another replica's word on the target: its pause (end, consecutive failures), or
    /// `None` when a call to it succeeded. A pause only ever lengthens here.
    pub fn adopt(&mut self, pause: Option<(Instant, u32)>, now: Instant) {
        match pause {
            Some((until, failures)) => {
                if until > now && self.paused_until.is_none_or(|p| p < until) {
                    self.paused_until = Some(until);
                }
                self.failures = self.failures.max(failures);
            }
            None => {
                self.failures = 0;
                self.paused_until = None;
            }
        }
    }

    /// Nothing waits, nothing is in flight, no pause to remember: the lane may end.
    pub fn is_idle(&self, now: Instant) -> bool {
        self.queue.is_empty() && self.in_flight == 0 && self.paused_until(now).is_none()
    }

    /// The next thing to do.
    pub fn next(&mut self, now: Instant) -> Action<F, R> {
        if self.queue.is_empty() {
            return Action::Wait(self.paused_until(now));
        }
        let overflowing = self.held > self.settings.max_held;
        if let Some(until) = self.paused_until(now) {
            // Parked work is merged like calls are: one record per window, not per event.
            return match self.ready_at() {
                Some(ready_at) if ready_at > now && !overflowing => {
                    Action::Wait(Some(ready_at.min(until)))
                }
                _ => Action::Park(self.take_batch(), until, Parked::Paused),
            };
        }
        let probing = self.failures > 0 && self.in_flight > 0;
        if !probing && self.in_flight < self.settings.concurrency {
            if let Some(ready_at) = self.ready_at() {
                if ready_at <= now {
                    let batch = self.take_batch();
                    self.in_flight += 1;
                    let ticket = Ticket {
                        failures_at_start: self.failures,
                    };
                    return Action::Call(batch, ticket);
                }
                if !overflowing {
                    return Action::Wait(Some(ready_at));
                }
            }
        }
        if overflowing {
            let batch = self.take_batch();
            return Action::Park(batch, now + self.settings.call_timeout, Parked::Busy);
        }
        Action::Wait(None)
    }

    /// A call ended. `pause` gives the pause after the target's n-th consecutive failure.
    /// Returns when the call's events may be tried again (for its retry record).
    pub fn finished(
        &mut self,
        ticket: Ticket,
        end: CallEnd,
        now: Instant,
        pause: impl FnOnce(u32) -> Duration,
    ) -> Instant {
        self.in_flight = self.in_flight.saturating_sub(1);
        match end {
            CallEnd::Delivered | CallEnd::Refused => {
                self.failures = 0;
                self.paused_until = None;
                now
            }
            CallEnd::Failed => {
                // Calls already out when an earlier one failed don't escalate the backoff
                // (four calls failing together are one failure of the target), but they
                // may lengthen the pause (a later Retry-After).
                let failures = if ticket.failures_at_start == self.failures {
                    self.failures = self.failures.saturating_add(1);
                    self.failures
                } else {
                    self.failures.max(1)
                };
                let until = now + pause(failures);
                let until = self.paused_until.map_or(until, |p| p.max(until));
                self.paused_until = Some(until);
                until
            }
        }
    }

    /// When the front of the queue may be called: a retry at once; fresh events when the
    /// window since the oldest has passed, or at once when a full batch waits.
    fn ready_at(&self) -> Option<Instant> {
        let front = self.queue.front()?;
        if matches!(front.work, Work::Retry(_)) {
            return Some(front.arrived);
        }
        let (mut events, mut bytes) = (0, 0);
        for item in &self.queue {
            if matches!(item.work, Work::Retry(_)) {
                break;
            }
            events += 1;
            bytes += item.bytes;
            if events >= self.settings.max_events || bytes >= self.settings.max_bytes {
                return Some(front.arrived);
            }
        }
        Some(front.arrived + self.settings.window)
    }

    /// The front retry, or the fresh events at the front that fit one call.
    fn take_batch(&mut self) -> Batch<F, R> {
        let mut fresh = Vec::new();
        let mut bytes = 0;
        while let Some(front) = self.queue.front() {
            let full = fresh.len() >= self.settings.max_events
                || (!fresh.is_empty() && bytes + front.bytes > self.settings.max_bytes);
            if full {
                break;
            }
            let Some(item) = self.queue.pop_front() else {
                break;
            };
            self.held = self.held.saturating_sub(item.events);
            match item.work {
                Work::Retry(retry) if fresh.is_empty() => return Batch::Retry(retry),
                Work::Retry(retry) => {
                    self.held += item.events;
                    self.queue.push_front(Queued {
                        work: Work::Retry(retry),
                        bytes: item.bytes,
                        events: item.events,
                        arrived: item.arrived,
                    });
                    break;
                }
                Work::Fresh(job) => {
                    bytes += item.bytes;
                    fresh.push(job);
                }
            }
        }
        Batch::Fresh(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LaneSettings {
        LaneSettings {
            window: Duration::from_millis(100),
            max_events: 3,
            max_bytes: 1000,
            concurrency: 2,
            max_held: 5,
            call_timeout: Duration::from_secs(10),
        }
    }

    type Lane = LaneCore<u32, &'static str>;

    fn fresh(lane: &mut Lane, ids: impl IntoIterator<Item = u32>) {
        for id in ids {
            lane.push(Work::Fresh(id), 10, Instant::now());
        }
    }

    fn call(action: Action<u32, &'static str>) -> (Vec<u32>, Ticket) {
        match action {
            Action::Call(Batch::Fresh(jobs), ticket) => (jobs, ticket),
            other => panic!("expected a call of fresh events, got {other:?}"),
        }
    }

    fn pause(_failures: u32) -> Duration {
        Duration::from_secs(5)
    }

    #[tokio::test(start_paused = true)]
    async fn events_within_the_window_are_one_call() {
        let mut lane = Lane::new(settings());
        fresh(&mut lane, [1]);
        tokio::time::advance(Duration::from_millis(50)).await;
        fresh(&mut lane, [2]);
        let now = Instant::now();
        assert!(
            matches!(lane.next(now), Action::Wait(Some(t)) if t == now + Duration::from_millis(50))
        );
        tokio::time::advance(Duration::from_millis(50)).await;
        let (jobs, _) = call(lane.next(Instant::now()));
        assert_eq!(jobs, [1, 2]);
        assert!(matches!(lane.next(Instant::now()), Action::Wait(None)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_at_once_and_bytes_cap_it() {
        let mut lane = Lane::new(settings());
        fresh(&mut lane, [1, 2, 3, 4]);
        assert_eq!(call(lane.next(Instant::now())).0, [1, 2, 3]);
        let mut lane = Lane::new(settings());
        lane.push(Work::Fresh(1), 600, Instant::now());
        lane.push(Work::Fresh(2), 600, Instant::now());
        assert_eq!(call(lane.next(Instant::now())).0, [1]);
        // One item bigger than the budget still goes, alone.
        let mut lane = Lane::new(settings());
        lane.push(Work::Fresh(1), 5000, Instant::now());
        assert_eq!(call(lane.next(Instant::now())).0, [1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_is_never_merged() {
        let mut lane = Lane::new(settings());
        fresh(&mut lane, [1]);
        lane.push(Work::Retry("r"), 10, Instant::now());
        fresh(&mut lane, [2]);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(call(lane.next(Instant::now())).0, [1]);
        assert!(matches!(
            lane.next(Instant::now()),
            Action::Call(Batch::Retry("r"), _)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_capped_and_overflow_is_parked() {
        let mut lane = Lane::new(settings());
        fresh(&mut lane, 1..=6);
        let (_, _a) = call(lane.next(Instant::now()));
        let (_, _b) = call(lane.next(Instant::now()));
        assert_eq!(lane.in_flight(), 2);
        assert!(matches!(lane.next(Instant::now()), Action::Wait(None)));
        fresh(&mut lane, 7..=12);
        // 6 held, 5 allowed: the oldest three are parked until a call could have ended.
        let now = Instant::now();
        match lane.next(now) {
            Action::Park(Batch::Fresh(jobs), due, Parked::Busy) => {
                assert_eq!(jobs, [7, 8, 9]);
                assert_eq!(due, now + Duration::from_secs(10));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(lane.next(now), Action::Wait(None)));
        assert_eq!(lane.held(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_weighs_its_events_against_the_waiting_room() {
        let mut lane = Lane::new(settings());
        fresh(&mut lane, [1]);
        tokio::time::advance(Duration::from_millis(100)).await;
        let (_, ticket) = call(lane.next(Instant::now()));
        lane.finished(ticket, CallEnd::Failed, Instant::now(), |_| Duration::ZERO);
        // A probe is out; a retry of 4 events waits, one of 3 more overflows (5 allowed).
        lane.push(Work::Retry("probe"), 10, Instant::now());
        let Action::Call(Batch::Retry("probe"), _) = lane.next(Instant::now()) else {
            panic!("the probe");
        };
        lane.push_events(Work::Retry("a"), 10, 4, Instant::now());
        assert!(matches!(lane.next(Instant::now()), Action::Wait(None)));
        lane.push_events(Work::Retry("b"), 10, 3, Instant::now());
        assert_eq!(lane.held(), 7);
        assert!(matches!(
            lane.next(Instant::now()),
            Action::Park(Batch::Retry("a"), _, Parked::Busy)
        ));
        assert_eq!(lane.held(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_pauses_the_target_and_parks_what_waits() {
        let mut lane = Lane::new(settings());
        fresh(&mut lane, [1, 2, 3]);
        let (_, ticket) = call(lane.next(Instant::now()));
        fresh(&mut lane, [4]);
        let now = Instant::now();
        let due = lane.finished(ticket, CallEnd::Failed, now, pause);
        assert_eq!(due, now + Duration::from_secs(5));
        assert_eq!(lane.paused_until(now), Some(due));
        // What waits is parked once its window is up, merged as a call would be.
        fresh(&mut lane, [5]);
        assert!(matches!(lane.next(now), Action::Wait(Some(_))));
        tokio::time::advance(Duration::from_millis(100)).await;
        let now = Instant::now();
        match lane.next(now) {
            Action::Park(Batch::Fresh(jobs), at, Parked::Paused) => {
                assert_eq!(jobs, [4, 5]);
                assert_eq!(at, due);
            }
            other => panic!("{other:?}"),
        }
        // A retry that comes due during the pause is not called.
        lane.push(Work::Retry("r"), 10, now);
        assert!(
            matches!(lane.next(now), Action::Park(Batch::Retry("r"), at, Parked::Paused) if at == due)
        );
        assert!(matches!(lane.next(now), Action::Wait(Some(at)) if at == due));
        assert!(!lane.is_idle(now));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(lane.is_idle(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_failure_one_probe_at_a_time_and_success_reopens() {
        let mut lane = Lane::new(settings());
        fresh(&mut lane, [1]);
        tokio::time::advance(Duration::from_millis(100)).await;
        let (_, ticket) = call(lane.next(Instant::now()));
        lane.finished(ticket, CallEnd::Failed, Instant::now(), pause);
        tokio::time::advance(Duration::from_secs(5)).await;
        lane.push(Work::Retry("a"), 10, Instant::now());
        lane.push(Work::Retry("b"), 10, Instant::now());
        let Action::Call(Batch::Retry("a"), probe) = lane.next(Instant::now()) else {
            panic!("the probe");
        };
        assert!(matches!(lane.next(Instant::now()), Action::Wait(None)));
        lane.finished(probe, CallEnd::Delivered, Instant::now(), pause);
        assert_eq!(lane.failures(), 0);
        assert!(matches!(
            lane.next(Instant::now()),
            Action::Call(Batch::Retry("b"), _)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn calls_failing_together_count_once_but_may_lengthen_the_pause() {
        let mut lane = Lane::new(settings());
        fresh(&mut lane, 1..=6);
        let (_, a) = call(lane.next(Instant::now()));
        let (_, b) = call(lane.next(Instant::now()));
        let now = Instant::now();
        lane.finished(a, CallEnd::Failed, now, |n| {
            Duration::from_secs(5 * u64::from(n))
        });
        let due = lane.finished(b, CallEnd::Failed, now, |n| {
            assert_eq!(n, 1, "not escalated");
            Duration::from_secs(60) // a longer Retry-After
        });
        assert_eq!(lane.failures(), 1);
        assert_eq!(due, now + Duration::from_secs(60));
        assert_eq!(lane.paused_until(now), Some(due));
    }

    #[tokio::test(start_paused = true)]
    async fn another_replicas_pause_is_adopted_and_its_success_clears_it() {
        let mut lane = Lane::new(settings());
        let now = Instant::now();
        let until = now + Duration::from_secs(60);
        lane.adopt(Some((until, 3)), now);
        assert_eq!(lane.paused_until(now), Some(until));
        assert_eq!(lane.failures(), 3);
        // A shorter pause heard later does not shorten it.
        lane.adopt(Some((now + Duration::from_secs(1), 1)), now);
        assert_eq!(lane.paused_until(now), Some(until));
        fresh(&mut lane, [1]);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(
            matches!(lane.next(Instant::now()), Action::Park(_, at, Parked::Paused) if at == until)
        );
        lane.adopt(None, Instant::now());
        assert_eq!(lane.paused_until(Instant::now()), None);
        assert_eq!(lane.failures(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_an_answer_not_an_outage() {
        let mut lane = Lane::new(settings());
        fresh(&mut lane, [1, 2, 3]);
        let (_, ticket) = call(lane.next(Instant::now()));
        let now = Instant::now();
        assert_eq!(lane.finished(ticket, CallEnd::Refused, now, pause), now);
        assert_eq!(lane.paused_until(now), None);
    }
}
