//! Unix time on the monotonic clock, for probe slots (`crate::pathstate`): both ends of a
//! pair start probes on wall-clock multiples of the backoff.

use std::time::{Duration, Instant};

/// Maps the monotonic clock the machine runs on to Unix time, for probe slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    origin: Instant,
    unix_at_origin: Duration,
}

impl WallClock {
    pub fn new(origin: Instant, unix_at_origin: Duration) -> Self {
        Self {
            origin,
            unix_at_origin,
        }
    }

    /// The system clock as of `now`.
    pub fn system(now: Instant) -> Self {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self::new(now, unix)
    }

    /// This clock `secs` seconds ahead (negative: behind). Only for the lab, which emulates
    /// a node with a wrong clock this way (`WIREKUBE_TEST_CLOCK_OFFSET_SECS`).
    pub fn shifted(self, secs: i64) -> Self {
        let by = Duration::from_secs(secs.unsigned_abs());
        let unix_at_origin = if secs >= 0 {
            self.unix_at_origin + by
        } else {
            self.unix_at_origin.saturating_sub(by)
        };
        Self {
            unix_at_origin,
            ..self
        }
    }

    /// The first instant at least `period / 2` from `now` at which Unix time is a multiple of
    /// `period` (whole milliseconds).
    pub fn next_slot(&self, now: Instant, period: Duration) -> Instant {
        let unix_now = match now.checked_duration_since(self.origin) {
            Some(d) => self.unix_at_origin + d,
            None => self
                .unix_at_origin
                .saturating_sub(self.origin.duration_since(now)),
        };
        let p = period.as_millis().max(1);
        let earliest = (unix_now + period / 2).as_millis();
        let slot = earliest.div_ceil(p) * p;
        let wait = slot.saturating_sub(unix_now.as_millis());
        now + Duration::from_millis(u64::try_from(wait).unwrap_or(u64::MAX / 2))
    }
}
