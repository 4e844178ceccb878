//! Node-to-node round-trip time (sans-IO; the agent timestamps requests and answers).
//!
//! The sample is the liveness request of [`crate::liveness`]: a UDP datagram to port 9 of the
//! peer's mesh IP, answered by the peer's kernel with ICMP port unreachable. Both legs go
//! through the tunnel over the path in use (direct, or through the relay), so a sample is the
//! mesh round trip between the two agents' hosts: WireGuard encryption on both ends, the
//! network (and relay) both ways, and the peer's kernel answer — no agent scheduling on the
//! peer. The agent asks once every [`RttTiming::every`] per peer that is up, and the answers
//! to liveness requests count too.
//!
//! Requests are not numbered (ICMP echoes only the first bytes of the request, and Linux
//! reports an answer as `ECONNREFUSED` without them), so a sample is only taken when exactly
//! one request was outstanding (Karn's rule): an answer while two are in flight is ambiguous.
//!
//! The published value is a smoothed RTT as in RFC 6298 (`srtt += (sample - srtt) / 8`; the
//! first sample after a path change sets it), and it is only republished when it moved by at
//! least [`RttTiming::publish_min`] and [`RttTiming::publish_ratio_pct`] of the published value,
//! so the status (written only when its content changes) is not rewritten for jitter.

use std::time::{Duration, Instant};

use wirekube_crds::ActualPath;

/// RTT knobs (defaults: [`RttTiming::DEFAULT`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RttTiming {
    /// Interval between RTT requests to a peer that is up.
    pub every: Duration,
    /// An answer later than this is not a sample (and the request no longer blocks the next).
    pub timeout: Duration,
    /// Republish only when the smoothed value moved by at least this much...
    pub publish_min: Duration,
    /// ...and by at least this percentage of the published value.
    pub publish_ratio_pct: u32,
}

impl RttTiming {
    /// One request per 10 s per peer: a peer's kernel answers about one ICMP error per second
    /// per source after a burst of six (the token bucket of `net.ipv4.icmp_ratelimit`), so
    /// this spends at most a tenth of the allowance that liveness requests rely on.
    pub const DEFAULT: RttTiming = RttTiming {
        every: Duration::from_secs(10),
        timeout: Duration::from_secs(3),
        publish_min: Duration::from_millis(5),
        publish_ratio_pct: 20,
    };
}

impl Default for RttTiming {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Per-peer RTT state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rtt {
    /// The path the samples were taken on; a change restarts the estimate.
    path: Option<ActualPath>,
    /// The request in flight, and whether another went out meanwhile (ambiguous answer).
    outstanding: Option<(Instant, bool)>,
    last_request: Option<Instant>,
    srtt: Option<Duration>,
    /// The estimate has restarted since the last publication (the next sample publishes).
    restarted: bool,
    published: Option<Duration>,
}

impl Rtt {
    /// Tells the estimator the path in use; samples from another path do not mix.
    pub fn on_path(&mut self, path: ActualPath) {
        if self.path != Some(path) {
            self.path = Some(path);
            self.srtt = None;
            self.outstanding = None;
            self.restarted = true;
            if !matches!(path, ActualPath::Direct | ActualPath::Relay) {
                // Not up: no round trip to report.
                self.published = None;
            }
        }
    }

    /// Whether an RTT request should go out now. `ready`: the path is up and quiet enough to
    /// ask (the caller's test: no liveness spell or probe in progress).
    pub fn due(&self, ready: bool, now: Instant, t: &RttTiming) -> bool {
        ready
            && self.in_flight(now, t).is_none()
            && self
                .last_request
                .is_none_or(|s| now.saturating_duration_since(s) >= t.every)
    }

    fn in_flight(&self, now: Instant, t: &RttTiming) -> Option<(Instant, bool)> {
        self.outstanding
            .filter(|(s, _)| now.saturating_duration_since(*s) < t.timeout)
    }

    /// A request (an RTT or a liveness request) went out at `at`.
    pub fn sent(&mut self, at: Instant, t: &RttTiming) {
        self.outstanding = match self.in_flight(at, t) {
            Some((s, _)) => Some((s, true)),
            None => Some((at, false)),
        };
        self.last_request = Some(at);
    }

    /// An answer arrived at `at`. Returns the sample it gave, if any.
    pub fn answered(&mut self, at: Instant, t: &RttTiming) -> Option<Duration> {
        let (sent, ambiguous) = self.outstanding.take()?;
        let rtt = at.checked_duration_since(sent)?;
        if ambiguous || rtt >= t.timeout {
            return None;
        }
        self.sample(rtt, t);
        Some(rtt)
    }

    /// Feeds one sample (RFC 6298 SRTT, gain 1/8) and republishes when it moved enough.
    pub fn sample(&mut self, rtt: Duration, t: &RttTiming) {
        let srtt = match self.srtt {
            None => rtt,
            Some(s) if rtt >= s => s + (rtt - s) / 8,
            Some(s) => s - (s - rtt) / 8,
        };
        self.srtt = Some(srtt);
        let publish = match self.published {
            None => true,
            Some(_) if self.restarted => true,
            Some(p) => {
                let moved = srtt.abs_diff(p);
                moved >= t.publish_min && moved >= p * t.publish_ratio_pct / 100
            }
        };
        if publish {
            self.published = Some(srtt);
            self.restarted = false;
        }
    }

    /// The smoothed RTT as published in the status, in microseconds (at least 1).
    pub fn published_micros(&self) -> Option<u32> {
        self.published
            .map(|d| u32::try_from(d.as_micros()).unwrap_or(u32::MAX).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: RttTiming = RttTiming::DEFAULT;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn up() -> Rtt {
        let mut r = Rtt::default();
        r.on_path(ActualPath::Direct);
        r
    }

    /// (case, samples in ms fed in order, published value in µs after each)
    type SmoothCase = (&'static str, &'static [u64], &'static [Option<u32>]);

    /// Samples (ms) fed in order -> published value (µs) after each.
    #[test]
    fn smoothing_and_publish_threshold() {
        let cases: &[SmoothCase] = &[
            ("first sample publishes", &[40], &[Some(40_000)]),
            // 40 -> 45 -> 50 ... srtt moves by 1/8 of the gap: 40.6 (0.6 ms: kept)
            (
                "jitter below 5 ms is not published",
                &[40, 45],
                &[Some(40_000), Some(40_000)],
            ),
            // srtt 40 + 60/8 = 47.5: moved 7.5 ms >= 5 ms but < 20 % of 40 (8 ms): kept;
            // next 47.5 + 52.5/8 = 54.06: moved 14 ms >= 8 ms: published.
            (
                "a lasting change is published once it passes 20 % and 5 ms",
                &[40, 100, 100],
                &[Some(40_000), Some(40_000), Some(54_062)],
            ),
            // A 0 ms sample reports 1 µs (present means measured); a 1 ms spike moves srtt
            // 0.125 ms, far below 5 ms: kept.
            (
                "small values need 5 ms",
                &[0, 1, 0],
                &[Some(1), Some(1), Some(1)],
            ),
        ];
        for (name, samples, want) in cases {
            let mut r = up();
            for (s, w) in samples.iter().zip(want.iter()) {
                r.sample(ms(*s), &T);
                assert_eq!(r.published_micros(), *w, "{name}: after {s} ms");
            }
        }
    }

    /// (requests sent at ms, answer at ms) -> sample (ms)
    #[test]
    fn samples_only_from_unambiguous_timely_answers() {
        let cases: &[(&str, &[u64], u64, Option<u64>)] = &[
            ("one request", &[0], 12, Some(12)),
            ("two in flight: ambiguous (Karn)", &[0, 200], 250, None),
            ("answer after the timeout", &[0], 3_000, None),
            (
                "earlier request timed out: the new one counts",
                &[0, 3_500],
                3_520,
                Some(20),
            ),
        ];
        for (name, sends, answer, want) in cases {
            let t0 = Instant::now();
            let mut r = up();
            for s in *sends {
                r.sent(t0 + ms(*s), &T);
            }
            assert_eq!(r.answered(t0 + ms(*answer), &T), want.map(ms), "{name}");
        }
    }

    #[test]
    fn answer_without_request_is_no_sample() {
        let t0 = Instant::now();
        let mut r = up();
        assert_eq!(r.answered(t0, &T), None);
        r.sent(t0, &T);
        assert_eq!(r.answered(t0 + ms(5), &T), Some(ms(5)));
        assert_eq!(
            r.answered(t0 + ms(9), &T),
            None,
            "a second answer is not a sample"
        );
    }

    #[test]
    fn requests_every_interval_when_ready_and_none_in_flight() {
        let t0 = Instant::now();
        let mut r = up();
        assert!(r.due(true, t0, &T));
        assert!(!r.due(false, t0, &T), "not ready: no request");
        r.sent(t0, &T);
        assert!(!r.due(true, t0 + ms(9_999), &T));
        r.answered(t0 + ms(1), &T);
        assert!(r.due(true, t0 + ms(10_000), &T));
        // An unanswered request blocks only until its timeout.
        r.sent(t0 + ms(10_000), &T);
        r.last_request = Some(t0);
        assert!(!r.due(true, t0 + ms(12_000), &T));
        assert!(r.due(true, t0 + ms(13_000), &T));
    }

    #[test]
    fn path_change_restarts_and_down_unpublishes() {
        let t0 = Instant::now();
        let mut r = up();
        r.sample(ms(1), &T);
        assert_eq!(r.published_micros(), Some(1_000));
        r.on_path(ActualPath::Relay);
        assert_eq!(
            r.published_micros(),
            Some(1_000),
            "kept until the relay's first sample"
        );
        r.sent(t0, &T);
        r.answered(t0 + ms(3), &T);
        assert_eq!(
            r.published_micros(),
            Some(3_000),
            "first sample on the new path publishes"
        );
        r.on_path(ActualPath::Relay);
        r.sample(ms(4), &T);
        assert_eq!(
            r.published_micros(),
            Some(3_000),
            "same path: smoothed, below threshold"
        );
        r.on_path(ActualPath::Down);
        assert_eq!(r.published_micros(), None);
    }
}
