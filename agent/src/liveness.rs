//! Fast loss detection on a direct path (sans-IO; the agent sends and receives the probes).
//!
//! WireGuard's counters alone cannot tell a dead path from a quiet peer: a peer that has
//! nothing to send answers our data only with a passive keepalive after 10 s, so the counter
//! rule ([`crate::pathstate`]'s stall window) needs 15 s. Instead, as soon as a direct pair is
//! *suspect* (we sent data, nothing came back for [`LivenessTiming::suspect_after`]), the agent
//! asks the peer for an answer: a UDP datagram to port 9 of the peer's mesh IP, through the
//! tunnel. The peer's **kernel** answers with ICMP port unreachable (no agent, no scheduling
//! delay on the peer), which our connected socket reports as `ECONNREFUSED`. Requests go every
//! [`LivenessTiming::every`]; when none is answered and nothing else arrives within
//! [`LivenessTiming::deadline`] of the first, the path is lost.
//!
//! A peer whose host drops that datagram (a firewall on its mesh interface) would never answer,
//! and declaring its paths lost on every quiet spell would flap them. So fast detection is only
//! armed for a peer that *has* answered once; one request goes out when a pair turns direct
//! (and every [`LivenessTiming::capability_every`] until one is answered). Peers that never
//! answer keep the counter rule.

use std::time::{Duration, Instant};

/// Liveness knobs (defaults: [`LivenessTiming::DEFAULT`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LivenessTiming {
    /// Sending without receiving anything for this long makes a direct pair suspect.
    pub suspect_after: Duration,
    /// Interval between requests while suspect.
    pub every: Duration,
    /// No answer and no traffic for this long after the first request: the path is lost.
    pub deadline: Duration,
    /// Interval between requests to a peer that has never answered.
    pub capability_every: Duration,
    /// No fast detection for this long after a probe brings a pair back to direct: both
    /// ends are still moving their endpoints (stray relay packets roam WireGuard back for a
    /// moment) and the peer's kernel has spent its ICMP allowance (about one answer a second
    /// after a burst of six) on the probe's trigger datagrams. The data-stall rule covers it.
    pub settle: Duration,
}

impl LivenessTiming {
    /// 0.5 s suspect + 1 s deadline: a dead path is detected 1.5-2 s after its last packet
    /// (plus one stats tick), so traffic moves to the relay within the 3 s target. A healthy
    /// path answers within one round trip, i.e. milliseconds to a few hundred.
    pub const DEFAULT: LivenessTiming = LivenessTiming {
        suspect_after: Duration::from_millis(500),
        every: Duration::from_millis(200),
        deadline: Duration::from_millis(1000),
        capability_every: Duration::from_secs(30),
        settle: Duration::from_secs(5),
    };
}

impl Default for LivenessTiming {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Per-peer liveness state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Liveness {
    /// The peer has answered at least once: fast detection is armed.
    answered: bool,
    last_sent: Option<Instant>,
    /// First unanswered request of the current suspect spell.
    spell_since: Option<Instant>,
}

impl Liveness {
    /// Whether a request should go out now. `suspect`: the caller's counter test.
    pub fn due(&self, suspect: bool, now: Instant, t: &LivenessTiming) -> bool {
        let every = match (suspect, self.answered) {
            (true, _) => t.every,
            (false, false) => t.capability_every,
            (false, true) => return false,
        };
        self.last_sent
            .is_none_or(|s| now.saturating_duration_since(s) >= every)
    }

    /// A request went out.
    pub fn sent(&mut self, suspect: bool, now: Instant) {
        self.last_sent = Some(now);
        if suspect && self.spell_since.is_none() {
            self.spell_since = Some(now);
        }
    }

    /// The peer answered: the path works and fast detection is armed.
    pub fn answered(&mut self) {
        self.answered = true;
        self.spell_since = None;
    }

    /// Traffic arrived (or the path changed): any suspect spell is over.
    pub fn end_spell(&mut self) {
        self.spell_since = None;
    }

    /// Requests are in flight without an answer (the agent samples faster meanwhile).
    pub fn in_spell(&self) -> bool {
        self.spell_since.is_some()
    }

    /// The path is lost: armed, still suspect, and nothing answered for `deadline`.
    pub fn lost(&self, suspect: bool, now: Instant, t: &LivenessTiming) -> bool {
        self.answered
            && suspect
            && self
                .spell_since
                .is_some_and(|s| now.saturating_duration_since(s) >= t.deadline)
    }

    pub fn is_armed(&self) -> bool {
        self.answered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: LivenessTiming = LivenessTiming::DEFAULT;

    fn ms(base: Instant, n: u64) -> Instant {
        base + Duration::from_millis(n)
    }

    #[test]
    fn capability_request_until_answered_then_only_when_suspect() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        assert!(l.due(false, t0, &T), "first request arms detection");
        l.sent(false, t0);
        assert!(!l.due(false, ms(t0, 1_000), &T));
        assert!(l.due(false, ms(t0, 30_000), &T), "retried while unanswered");
        l.answered();
        assert!(
            !l.due(false, ms(t0, 60_000), &T),
            "armed and healthy: silent"
        );
        assert!(l.due(true, ms(t0, 60_000), &T), "suspect: ask");
    }

    #[test]
    fn requests_every_interval_while_suspect() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        l.answered();
        l.sent(true, t0);
        assert!(!l.due(true, ms(t0, 100), &T));
        assert!(l.due(true, ms(t0, 200), &T));
    }

    /// (armed, suspect at the check, answered during the spell, ms since first request, lost)
    #[test]
    fn lost_only_when_armed_suspect_unanswered_past_deadline() {
        let cases = [
            (true, true, false, 999, false),
            (true, true, false, 1_000, true),
            (true, false, false, 5_000, false),
            (false, true, false, 5_000, false),
            (true, true, true, 5_000, false),
        ];
        for (armed, suspect, answer, after, want) in cases {
            let t0 = Instant::now();
            let mut l = Liveness::default();
            if armed {
                l.answered();
            }
            l.sent(true, t0);
            if answer {
                l.answered();
            }
            assert_eq!(
                l.lost(suspect, ms(t0, after), &T),
                want,
                "armed {armed} suspect {suspect} answered {answer} after {after} ms"
            );
        }
    }

    #[test]
    fn traffic_ends_the_spell() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        l.answered();
        l.sent(true, t0);
        assert!(l.in_spell());
        l.end_spell();
        assert!(!l.in_spell());
        assert!(!l.lost(true, ms(t0, 5_000), &T));
        l.sent(true, ms(t0, 5_000));
        assert!(
            l.lost(true, ms(t0, 6_000), &T),
            "a new spell counts from its own start"
        );
    }
}
