//! What to do after a call: pure functions of the answer, the attempt and the schedule.

use std::time::Duration;

/// How a call went, for the retry decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Delivered,
    /// 408, 429, 5xx, timeouts and connection errors: worth trying again.
    Retryable { retry_after: Option<Duration> },
    /// Any other answer: retrying won't change it.
    Permanent,
}

/// Classifies an HTTP status (`None` = no answer: timeout or connection error).
pub fn classify(status: Option<u16>, retry_after: Option<Duration>) -> Outcome {
    match status {
        Some(200..=299) => Outcome::Delivered,
        None | Some(408) | Some(429) | Some(500..=599) => Outcome::Retryable { retry_after },
        Some(_) => Outcome::Permanent,
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP date (relative to `now_unix`).
pub fn parse_retry_after(value: &str, now_unix: i64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let format = time::format_description::well_known::Rfc2822;
    let at = time::OffsetDateTime::parse(value, &format).ok()?;
    let secs = at.unix_timestamp().saturating_sub(now_unix).max(0);
    Some(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// The delays between attempts: attempt 1 is immediate, attempt `n + 1` waits
/// `schedule[n - 1]` (± jitter). Defaults follow established webhook senders, reaching
/// hours: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub schedule: Vec<Duration>,
    /// Fraction of each delay added or removed at random (0.2 = ±20 %), so that targets
    /// that failed together don't retry together.
    pub jitter: f64,
    /// The longest `Retry-After` honoured.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        let m = 60;
        let h = 3600;
        RetryPolicy {
            schedule: [5, 5 * m, 30 * m, 2 * h, 5 * h, 10 * h, 10 * h]
                .map(Duration::from_secs)
                .to_vec(),
            jitter: 0.2,
            max_retry_after: Duration::from_secs(24 * h),
        }
    }
}

impl RetryPolicy {
    /// After failed attempt `attempt` (1-based): wait this long before the next one, or
    /// `None` when the schedule is exhausted. `unit` in `[0, 1)` draws the jitter.
    pub fn next_delay(
        &self,
        attempt: u64,
        retry_after: Option<Duration>,
        unit: f64,
    ) -> Option<Duration> {
        let index = usize::try_from(attempt.checked_sub(1)?).ok()?;
        let base = *self.schedule.get(index)?;
        let factor = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        let jittered = base.mul_f64(factor.max(0.0));
        Some(match retry_after {
            // The target said when: honour it (bounded), never sooner than our own delay.
            Some(after) => after.min(self.max_retry_after).max(jittered),
            None => jittered,
        })
    }

    /// Whether a call that failed on attempt `attempt` gets another attempt.
    pub fn allows_retry_after(&self, attempt: u64) -> bool {
        attempt >= 1 && usize::try_from(attempt).is_ok_and(|a| a <= self.schedule.len())
    }

    /// How long a target is left alone after its `failures`-th consecutive failure: the
    /// schedule's step for that many failures (its last step once past the end), or the
    /// target's own `Retry-After` when longer (capped at `max_retry_after`).
    pub fn target_pause(
        &self,
        failures: u32,
        retry_after: Option<Duration>,
        unit: f64,
    ) -> Duration {
        let steps = u64::try_from(self.schedule.len()).unwrap_or(u64::MAX);
        let step = u64::from(failures).clamp(1, steps.max(1));
        self.next_delay(step, retry_after, unit)
            .or_else(|| retry_after.map(|after| after.min(self.max_retry_after)))
            .unwrap_or(Duration::ZERO)
    }

    /// Parses `5s,5m,30m` (humantime durations, comma-separated).
    pub fn parse_schedule(text: &str) -> Result<Vec<Duration>, String> {
        text.split(',')
            .map(|part| {
                humantime::parse_duration(part.trim()).map_err(|e| format!("{part:?}: {e}"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classification_follows_the_contract() {
        assert_eq!(classify(Some(200), None), Outcome::Delivered);
        assert_eq!(classify(Some(204), None), Outcome::Delivered);
        for retry in [
            None,
            Some(408),
            Some(429),
            Some(500),
            Some(502),
            Some(503),
            Some(599),
        ] {
            assert!(
                matches!(classify(retry, None), Outcome::Retryable { .. }),
                "{retry:?}"
            );
        }
        for permanent in [301, 400, 401, 403, 404, 410, 422] {
            assert_eq!(
                classify(Some(permanent), None),
                Outcome::Permanent,
                "{permanent}"
            );
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("120", 0), Some(Duration::from_secs(120)));
        let now = time::macros::datetime!(2015-10-21 07:28:00 UTC).unix_timestamp();
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn the_schedule_then_exhaustion() {
        let p = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        assert_eq!(p.next_delay(1, None, 0.5), Some(Duration::from_secs(5)));
        assert_eq!(p.next_delay(2, None, 0.5), Some(Duration::from_secs(300)));
        assert_eq!(
            p.next_delay(7, None, 0.5),
            Some(Duration::from_secs(36_000))
        );
        assert_eq!(p.next_delay(8, None, 0.5), None);
        assert_eq!(p.next_delay(0, None, 0.5), None);
        // Retry-After wins when longer, and is capped.
        assert_eq!(
            p.next_delay(1, Some(Duration::from_secs(60)), 0.5),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            p.next_delay(1, Some(Duration::from_secs(1)), 0.5),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            p.next_delay(1, Some(Duration::from_secs(1 << 30)), 0.5),
            Some(Duration::from_secs(86_400))
        );
    }

    #[test]
    fn schedules_parse() {
        assert_eq!(
            RetryPolicy::parse_schedule("100ms, 1s,2m").unwrap(),
            vec![
                Duration::from_millis(100),
                Duration::from_secs(1),
                Duration::from_secs(120)
            ]
        );
        assert!(RetryPolicy::parse_schedule("1s,soon")
            .unwrap_err()
            .contains("soon"));
    }

    #[test]
    fn a_target_pauses_by_its_consecutive_failures() {
        let p = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        assert_eq!(p.target_pause(1, None, 0.5), Duration::from_secs(5));
        assert_eq!(p.target_pause(2, None, 0.5), Duration::from_secs(300));
        // Past the schedule's end: its last step, for as long as the target fails.
        assert_eq!(p.target_pause(50, None, 0.5), Duration::from_secs(36_000));
        // Retry-After is honoured per target, up to a day.
        let hour = Duration::from_secs(3600);
        assert_eq!(p.target_pause(1, Some(hour), 0.5), hour);
        assert_eq!(
            p.target_pause(1, Some(hour * 100), 0.5),
            Duration::from_secs(86_400)
        );
        let none = RetryPolicy {
            schedule: Vec::new(),
            ..p.clone()
        };
        assert_eq!(none.target_pause(1, None, 0.5), Duration::ZERO);
        assert_eq!(none.target_pause(1, Some(hour), 0.5), hour);
        assert!(p.allows_retry_after(1) && p.allows_retry_after(7));
        assert!(!p.allows_retry_after(8) && !p.allows_retry_after(0));
    }

    proptest! {
        #[test]
        fn jitter_stays_within_bounds(attempt in 1u64..8, unit in 0.0f64..1.0) {
            let p = RetryPolicy::default();
            let base = p.schedule[(attempt - 1) as usize];
            let d = p.next_delay(attempt, None, unit).unwrap();
            prop_assert!(d >= base.mul_f64(0.8) && d <= base.mul_f64(1.2));
        }
    }
}
