//! Token buckets, as pure logic: no clock and no I/O, the time is passed in. The ingest
//! limits each site's webhooks with them, the HTTP layer each client address's requests.
//!
//! A bucket holds at most `burst` tokens and gains `per_second` tokens a second; a request
//! takes one, or is refused with the time until one is back. [`KeyedBuckets`] keeps one
//! bucket per key and stays bounded: a bucket idle long enough to be full again is the
//! same as no bucket, so it is dropped, and past a hard cap the least recently used go.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How fast a bucket refills and how much it holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    per_second: f64,
    burst: f64,
}

impl Rate {
    /// `per_second` tokens a second, at most `burst` at once; both at least 1 (a zero is
    /// taken as 1: configuration refuses it before this is built).
    pub fn new(per_second: u32, burst: u32) -> Rate {
        Rate {
            per_second: f64::from(per_second.max(1)),
            burst: f64::from(burst.max(1)),
        }
    }

    /// How long an empty bucket takes to be full again.
    pub fn time_to_fill(&self) -> Duration {
        Duration::from_secs_f64(self.burst / self.per_second)
    }
}

/// One bucket: its tokens when it was last touched, and when that was.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket (a new client starts with its whole burst).
    pub fn full(rate: &Rate, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: rate.burst,
            updated: now,
        }
    }

    /// The tokens at `now` (a `now` before the last update counts as no time passed).
    fn tokens_at(&self, rate: &Rate, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        (self.tokens + elapsed * rate.per_second).min(rate.burst)
    }

    /// Takes one token, or says how long until one is there (nothing is taken then).
    pub fn try_take(&mut self, rate: &Rate, now: Instant) -> Result<(), Duration> {
        let tokens = self.tokens_at(rate, now);
        if now > self.updated {
            self.updated = now;
        }
        self.tokens = tokens;
        if tokens >= 1.0 {
            self.tokens = tokens - 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - tokens) / rate.per_second))
        }
    }

    /// Full again at `now`: keeping it or starting a new one is the same.
    pub fn is_full(&self, rate: &Rate, now: Instant) -> bool {
        self.tokens_at(rate, now) >= rate.burst
    }
}

/// A wait as a `Retry-After` value: whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// One bucket per key, bounded (see the module's documentation).
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    rate: Rate,
    max_keys: usize,
    buckets: HashMap<K, TokenBucket>,
    /// When full buckets are next swept out.
    next_sweep: Option<Instant>,
}

impl<K: Hash + Eq + Clone> KeyedBuckets<K> {
    /// Buckets of `rate`, at most `max_keys` of them (at least 1).
    pub fn new(rate: Rate, max_keys: usize) -> KeyedBuckets<K> {
        KeyedBuckets {
            rate,
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
            next_sweep: None,
        }
    }

    pub fn rate(&self) -> &Rate {
        &self.rate
    }

    /// Buckets kept now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Takes a token from `key`'s bucket, or says how long until it has one.
    pub fn try_take(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        self.sweep_if_due(now);
        let rate = self.rate;
        if let Some(bucket) = self.buckets.get_mut(key) {
            return bucket.try_take(&rate, now);
        }
        if self.buckets.len() >= self.max_keys {
            self.make_room(now);
        }
        let mut bucket = TokenBucket::full(&rate, now);
        let taken = bucket.try_take(&rate, now);
        self.buckets.insert(key.clone(), bucket);
        taken
    }

    /// Drops the buckets that are full again, at most once per refill time: the sweeps
    /// cost about one look at each bucket per refill time, whatever the traffic.
    fn sweep_if_due(&mut self, now: Instant) {
        match self.next_sweep {
            Some(at) if now < at => {}
            _ => {
                self.drop_full(now);
                // At least a second apart, so a tiny refill time does not sweep constantly.
                let every = self.rate.time_to_fill().max(Duration::from_secs(1));
                self.next_sweep = now.checked_add(every);
            }
        }
    }

    fn drop_full(&mut self, now: Instant) {
        let rate = self.rate;
        self.buckets.retain(|_, bucket| !bucket.is_full(&rate, now));
    }

    /// At the cap: drops the full buckets, then, unless that freed a tenth of the cap, the
    /// least recently used down to nine tenths of it (one pass for many insertions, not one
    /// per insertion).
    fn make_room(&mut self, now: Instant) {
        self.drop_full(now);
        let target = self.max_keys - (self.max_keys / 10).max(1);
        if self.buckets.len() <= target {
            return;
        }
        let evict = self.buckets.len() - target;
        let mut times: Vec<Instant> = self.buckets.values().map(|b| b.updated).collect();
        let (_, cutoff, _) = times.select_nth_unstable(evict - 1);
        let cutoff = *cutoff;
        // Everything older than the cutoff goes, and as many as needed of those at it.
        let older = times.iter().filter(|t| **t < cutoff).count();
        let mut at_cutoff = evict - older;
        self.buckets.retain(|_, bucket| {
            if bucket.updated < cutoff {
                false
            } else if bucket.updated == cutoff && at_cutoff > 0 {
                at_cutoff -= 1;
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_new_bucket_allows_its_burst_then_refuses_with_the_wait_for_one_token() {
        let rate = Rate::new(1, 2);
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(&rate, t0);
        assert_eq!(bucket.try_take(&rate, t0), Ok(()));
        assert_eq!(bucket.try_take(&rate, t0), Ok(()));
        assert_eq!(bucket.try_take(&rate, t0), Err(secs(1.0)));
        // Half a second later, half a token: half a second more to wait.
        let wait = bucket.try_take(&rate, t0 + secs(0.5)).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
        // A refused take spends nothing: a second after the burst, one token is back.
        assert_eq!(bucket.try_take(&rate, t0 + secs(1.0)), Ok(()));
        assert!(bucket.try_take(&rate, t0 + secs(1.0)).is_err());
    }

    #[test]
    fn refills_at_the_rate_and_never_beyond_the_burst() {
        let rate = Rate::new(10, 5);
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(&rate, t0);
        for _ in 0..5 {
            bucket.try_take(&rate, t0).unwrap();
        }
        assert!(bucket.try_take(&rate, t0).is_err());
        // 0.3 s at 10/s: 3 tokens.
        let later = t0 + secs(0.3);
        for _ in 0..3 {
            bucket.try_take(&rate, later).unwrap();
        }
        assert!(bucket.try_take(&rate, later).is_err());
        // An hour later: the burst, not 36,000.
        let much_later = t0 + secs(3600.0);
        assert!(bucket.is_full(&rate, much_later));
        for _ in 0..5 {
            bucket.try_take(&rate, much_later).unwrap();
        }
        assert!(bucket.try_take(&rate, much_later).is_err());
    }

    #[test]
    fn a_clock_going_backwards_adds_nothing() {
        let rate = Rate::new(1, 1);
        let t0 = Instant::now() + secs(10.0);
        let mut bucket = TokenBucket::full(&rate, t0);
        bucket.try_take(&rate, t0).unwrap();
        assert!(bucket.try_take(&rate, t0 - secs(5.0)).is_err());
        assert_eq!(bucket.try_take(&rate, t0 + secs(1.0)), Ok(()));
    }

    #[test]
    fn sustained_traffic_gets_the_rate() {
        // 1000 attempts a second for 10 s against 50/s with a burst of 200: 200 + 10 × 50.
        let rate = Rate::new(50, 200);
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(&rate, t0);
        let allowed = (0..10_000)
            .filter(|i| {
                bucket
                    .try_take(&rate, t0 + secs(f64::from(*i) / 1000.0))
                    .is_ok()
            })
            .count();
        assert!((695..=701).contains(&allowed), "{allowed}");
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(secs(0.001)), 1);
        assert_eq!(retry_after_secs(secs(1.0)), 1);
        assert_eq!(retry_after_secs(secs(1.2)), 2);
        assert_eq!(retry_after_secs(secs(59.9)), 60);
    }

    #[test]
    fn keys_have_their_own_buckets() {
        let mut buckets = KeyedBuckets::new(Rate::new(1, 2), 100);
        let t0 = Instant::now();
        assert!(buckets.try_take(&"a", t0).is_ok());
        assert!(buckets.try_take(&"a", t0).is_ok());
        assert_eq!(buckets.try_take(&"a", t0), Err(secs(1.0)));
        assert!(buckets.try_take(&"b", t0).is_ok());
        assert!(buckets.try_take(&"b", t0).is_ok());
        assert!(buckets.try_take(&"b", t0).is_err());
        assert_eq!(buckets.len(), 2);
    }

    #[test]
    fn buckets_full_again_are_dropped() {
        // Refill time 2 s: sweeps at most every 2 s.
        let mut buckets = KeyedBuckets::new(Rate::new(1, 2), 100);
        let t0 = Instant::now();
        for key in 0..50 {
            buckets.try_take(&key, t0).unwrap();
        }
        assert_eq!(buckets.len(), 50);
        // Before the first sweep is due (2 s): kept.
        buckets.try_take(&1000, t0 + secs(1.8)).unwrap();
        assert_eq!(buckets.len(), 51);
        // At 2.5 s the first fifty are full (1000 is not: 1.7 tokens): the sweep drops them.
        buckets.try_take(&1001, t0 + secs(2.5)).unwrap();
        assert_eq!(buckets.len(), 2, "only 1000 (refilling) and 1001 are kept");
        // A dropped key comes back with a full bucket: the same as if it had been kept.
        assert!(buckets.try_take(&0, t0 + secs(2.5)).is_ok());
        assert!(buckets.try_take(&0, t0 + secs(2.5)).is_ok());
        assert!(buckets.try_take(&0, t0 + secs(2.5)).is_err());
    }

    #[test]
    fn past_the_cap_the_least_recently_used_go() {
        // A slow refill: nothing is full again during the test.
        let mut buckets = KeyedBuckets::new(Rate::new(1, 1000), 100);
        let t0 = Instant::now();
        for key in 0..100u32 {
            buckets
                .try_take(&key, t0 + secs(f64::from(key) / 1000.0))
                .unwrap();
        }
        assert_eq!(buckets.len(), 100);
        // Key 99 is used again, then a new key needs room: the oldest tenth (0..10) goes.
        let now = t0 + secs(0.5);
        buckets.try_take(&99, now).unwrap();
        buckets.try_take(&100, now).unwrap();
        assert_eq!(buckets.len(), 91);
        for key in 0..10u32 {
            assert!(!buckets.buckets.contains_key(&key), "{key} kept");
        }
        for key in 10..=100u32 {
            assert!(buckets.buckets.contains_key(&key), "{key} dropped");
        }
        // However many new keys arrive, the map stays at the cap.
        for key in 1000..5000u32 {
            buckets.try_take(&key, now).unwrap();
            assert!(buckets.len() <= 100);
        }
    }

    #[test]
    fn zero_settings_are_taken_as_one() {
        let rate = Rate::new(0, 0);
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(&rate, t0);
        assert!(bucket.try_take(&rate, t0).is_ok());
        assert_eq!(bucket.try_take(&rate, t0), Err(secs(1.0)));
    }
}
