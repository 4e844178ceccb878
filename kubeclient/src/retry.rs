//! How a failed watch retries. kube's default backoff starts at 800 ms and doubles to 30 s; on a
//! fresh node the API server's Service address is typically not routed yet (kube-proxy still
//! programming it) when our pods start, and the first list fails: an agent lost 3-5 s to that
//! backoff before it saw its WireKubePeer, and the operator 1-2 s before its first plan.

use std::time::Duration;

use kube::runtime::utils::{Backoff, ResetTimerBackoff};

/// Retry delays: `first`, doubling up to `max`, each stretched by a per-process jitter of up to
/// +50 % so that clients that lost the API server together do not come back in lock step; they
/// start over after `reset` without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchRetry {
    pub first: Duration,
    pub max: Duration,
    pub reset: Duration,
}

impl WatchRetry {
    /// The delay before retry number `attempt` (0 = the first), `jitter` in 0..1 (clamped).
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let base = self
            .first
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        base.mul_f64(1.0 + jitter.clamp(0.0, 1.0) / 2.0)
    }

    /// These delays as a kube-runtime watcher backoff (`WatchStreamExt::backoff`).
    pub fn backoff(self) -> ResetTimerBackoff<WatchBackoff> {
        ResetTimerBackoff::new(WatchBackoff::new(self), self.reset)
    }
}

/// The iterator behind [`WatchRetry::backoff`].
pub struct WatchBackoff {
    retry: WatchRetry,
    attempt: u32,
    hasher: std::hash::RandomState,
}

impl WatchBackoff {
    pub fn new(retry: WatchRetry) -> Self {
        WatchBackoff {
            retry,
            attempt: 0,
            hasher: std::hash::RandomState::new(),
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        use std::hash::BuildHasher;
        // A per-process random fraction (RandomState is seeded randomly per process).
        let jitter = (self.hasher.hash_one(self.attempt) % 1000) as f64 / 1000.0;
        let d = self.retry.delay(self.attempt, jitter);
        self.attempt = self.attempt.saturating_add(1);
        Some(d)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY: WatchRetry = WatchRetry {
        first: Duration::from_millis(200),
        max: Duration::from_secs(30),
        reset: Duration::from_secs(120),
    };

    #[test]
    fn retries_start_at_first_and_double_up_to_max_with_jitter() {
        let ms = Duration::from_millis;
        // (attempt, jitter) -> delay
        for (attempt, jitter, want) in [
            (0, 0.0, ms(200)),
            (1, 0.0, ms(400)),
            (2, 0.0, ms(800)),
            (3, 0.0, ms(1600)),
            (7, 0.0, ms(25_600)),
            (8, 0.0, ms(30_000)),
            (u32::MAX, 0.0, ms(30_000)),
            (0, 1.0, ms(300)),
            (8, 1.0, ms(45_000)),
            (2, 0.5, ms(1000)),
            (2, 7.0, ms(1200)),
            (2, -1.0, ms(800)),
        ] {
            assert_eq!(RETRY.delay(attempt, jitter), want, "{attempt} {jitter}");
        }
    }

    #[test]
    fn a_lower_max_caps_every_later_retry() {
        let five = WatchRetry {
            max: Duration::from_secs(5),
            ..RETRY
        };
        assert_eq!(five.delay(4, 0.0), Duration::from_millis(3200));
        assert_eq!(five.delay(5, 0.0), Duration::from_secs(5));
        assert_eq!(five.delay(40, 1.0), Duration::from_millis(7500));
    }

    #[test]
    fn the_backoff_walks_the_delays_and_starts_over_on_reset() {
        let mut b = WatchBackoff::new(RETRY);
        // The first three retries fit in 1.4-2.1 s (kube's default: 0.8-5.6 s).
        let first: Duration = b.by_ref().take(3).sum();
        assert!(
            first >= Duration::from_millis(1400) && first <= Duration::from_millis(2100),
            "{first:?}"
        );
        b.reset();
        let again = b.next().unwrap();
        assert!(again >= Duration::from_millis(200) && again <= Duration::from_millis(300));
    }
}
