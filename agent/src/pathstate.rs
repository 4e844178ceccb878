//! Per-peer path state machine (sans-IO; time is passed in, so tests use a fake clock).
//!
//! The operator plans each pair Direct, Relay or Down from NAT types; the agent has the final
//! say on liveness. A planned Direct peer starts *connecting*; a handshake over a real
//! (non-relay) endpoint within `directTimeout` makes it *direct*. Without one it falls back to
//! the relay (when the mode allows and a relay is configured), and probes direct again with
//! exponential backoff; a direct handshake during a probe moves it back. A direct path that
//! keeps getting our packets but sends nothing back (data stall), or whose peer started
//! talking to us through the relay (WireGuard roamed to the relay socket), counts as failed.
//!
//! Hysteresis against flapping: probes are spaced by a backoff that only resets after the
//! direct path stayed up for `stable_after`; a path that fails again soon after an upgrade
//! doubles the wait instead.
//!
//! Probes are short (`probe_window`, at most [`PROBE_WINDOW_MAX`]) because while one lasts our
//! packets to the peer take the direct path and are lost if it is still broken. They start on
//! wall-clock slots (multiples of the backoff in Unix time) so that both ends of a pair probe at
//! the same moment: behind a restricted-cone NAT a direct packet only gets in after the other
//! side sent one out, and a lone probe would never pass. Backoffs are `probe_min * 2^k`, so the
//! slots of two nodes with different backoffs still coincide (every slot of the larger one).

use std::time::{Duration, Instant};

use wirekube_crds::{ActualPath, PlannedPath};

use crate::liveness::Liveness;
pub use crate::observation::Observation;
pub use crate::pathtiming::{
    HANDSHAKE_FRESH, PROBE_MIN_DEFAULT, PROBE_WINDOW_MAX, PUNCH_GRACE, Timing,
};
use crate::pathtiming::{PEER_CHATTER_MAX, SUSPECT_MIN_TX, probe_over};
pub use crate::wallclock::WallClock;

/// What the spec and the relay say about one peer right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub planned: PlannedPath,
    /// relayMode is not `never` and a relay is configured: falling back is possible.
    pub relay_allowed: bool,
    /// Our persistent keepalive toward this peer, seconds (0 = off); keepalives we send are
    /// not "data" for stall detection.
    pub keepalive: u16,
    /// The direct path needs a hole punched through NAT filters (planner reasons cone-cone
    /// and cone-symmetric): connecting may take [`PUNCH_GRACE`] longer than `directTimeout`.
    pub punched: bool,
}

/// Which endpoint the dataplane should give this peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// The direct endpoint (spec, punch target, or whatever WireGuard roamed to).
    Direct,
    /// The relay bridge socket for this peer.
    Relay,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Planned direct, no handshake yet. Handshakes before `evidence_after` do not count.
    Connecting {
        since: Instant,
        evidence_after: Instant,
    },
    Direct {
        since: Instant,
    },
    /// Direct failed and no relay may be used: reported down, WireGuard keeps trying.
    DirectFailed {
        since: Instant,
    },
    /// On the relay after the direct path failed.
    Fallback {
        since: Instant,
        next_probe: Instant,
    },
    /// Trying direct again after a fallback.
    Probing {
        since: Instant,
    },
    /// Planned relay.
    Relay {
        since: Instant,
    },
    /// Planned down.
    Down,
}

/// Why a transition happened (logged and counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    Plan,
    Handshake,
    DirectTimeout,
    Stall,
    /// Liveness requests on a suspect direct path went unanswered (crate::liveness).
    LivenessLost,
    PeerOnRelay,
    ProbeDue,
    ProbeFailed,
    RelayUnavailable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: ActualPath,
    pub to: ActualPath,
    pub cause: Cause,
}

#[derive(Clone, Debug)]
pub struct PathState {
    timing: Timing,
    clock: WallClock,
    plan: Plan,
    phase: Phase,
    backoff: Duration,
    pub transitions: u32,
    pub last_transition: Option<Instant>,
    // Stall tracking.
    rx: u64,
    rx_changed_at: Instant,
    tx_at_rx_change: u64,
    /// rx when the current liveness spell began ([`PEER_CHATTER_MAX`]).
    rx_at_spell: u64,
    tx: u64,
    tx_changed_at: Instant,
    /// rx at the previous sample if that sample's endpoint was direct (reset on every phase
    /// change): rx growth between two direct samples proves packets arrive directly, which
    /// matters because an existing session sends over a new endpoint without a handshake.
    direct_rx: Option<u64>,
    liveness: Liveness,
    /// A direct path that a probe brought back gets no fast failover before this.
    settle_until: Option<Instant>,
    /// The current direct phase was entered from the relay (a probe, or the peer's probe):
    /// only such a path failing soon is flapping, which doubles the probe backoff.
    direct_from_relay: bool,
}

impl PathState {
    /// A new peer. On agent start-up an existing recent handshake is accepted as evidence
    /// (the tunnel survived the restart), hence `evidence_after = now - HANDSHAKE_FRESH`.
    pub fn new(timing: Timing, plan: Plan, now: Instant) -> Self {
        let mut s = Self {
            timing,
            clock: WallClock::new(now, Duration::ZERO),
            plan,
            phase: Phase::Down,
            backoff: timing.probe_min,
            transitions: 0,
            last_transition: None,
            rx: 0,
            rx_changed_at: now,
            tx_at_rx_change: 0,
            rx_at_spell: 0,
            tx: 0,
            tx_changed_at: now,
            direct_rx: None,
            liveness: Liveness::default(),
            settle_until: None,
            direct_from_relay: false,
        };
        s.phase = s.initial_phase(now, now.checked_sub(HANDSHAKE_FRESH).unwrap_or(now));
        s
    }

    /// A peer with no usable history: its key or ours is new, so no WireGuard session that
    /// existed before (an adopted interface still holds the old key's sessions and their
    /// handshake times, which die as soon as the new key is written) proves anything about
    /// the new pair; only handshakes from `now` on count.
    pub fn fresh(timing: Timing, plan: Plan, now: Instant) -> Self {
        let mut s = Self::new(timing, plan, now);
        s.phase = s.initial_phase(now, now);
        s
    }

    fn initial_phase(&self, now: Instant, evidence_after: Instant) -> Phase {
        match self.plan.planned {
            PlannedPath::Direct => Phase::Connecting {
                since: now,
                evidence_after,
            },
            PlannedPath::Relay => Phase::Relay { since: now },
            PlannedPath::Down => Phase::Down,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn plan(&self) -> Plan {
        self.plan
    }

    pub fn set_timing(&mut self, timing: Timing) {
        self.timing = timing;
    }

    /// The wall clock probe slots are aligned to (defaults to slots counted from creation).
    pub fn set_clock(&mut self, clock: WallClock) {
        self.clock = clock;
    }

    /// The path to report.
    pub fn actual(&self) -> ActualPath {
        match self.phase {
            Phase::Connecting { .. } => ActualPath::Connecting,
            Phase::Direct { .. } => ActualPath::Direct,
            Phase::DirectFailed { .. } | Phase::Down => ActualPath::Down,
            Phase::Fallback { .. } | Phase::Probing { .. } | Phase::Relay { .. } => {
                ActualPath::Relay
            }
        }
    }

    /// The planned direct path did not work and the relay carries the peer.
    pub fn fallback(&self) -> bool {
        matches!(self.phase, Phase::Fallback { .. } | Phase::Probing { .. })
    }

    /// Direct failed (with or without a relay to fall back to).
    pub fn direct_failed(&self) -> bool {
        self.fallback() || matches!(self.phase, Phase::DirectFailed { .. })
    }

    pub fn want(&self) -> Want {
        match self.phase {
            Phase::Fallback { .. } | Phase::Relay { .. } => Want::Relay,
            _ => Want::Direct,
        }
    }

    /// The current probe backoff (for status/metrics and tests).
    pub fn backoff(&self) -> Duration {
        self.backoff
    }

    fn go(&mut self, to: Phase, cause: Cause, now: Instant) -> Option<Transition> {
        let from = self.actual();
        let was_fallback = self.fallback();
        self.phase = to;
        self.direct_rx = None;
        self.liveness.end_spell();
        self.settle_until = None;
        self.direct_from_relay = false;
        let changed = from != self.actual() || was_fallback != self.fallback();
        // Probing is internal (still reported relay); everything else is a path change.
        if changed {
            self.transitions += 1;
            self.last_transition = Some(now);
            Some(Transition {
                from,
                to: self.actual(),
                cause,
            })
        } else {
            None
        }
    }

    /// New plan from the spec. A change of planned path restarts the machine; a change of
    /// relay availability only matters while on the relay.
    pub fn set_plan(&mut self, plan: Plan, now: Instant) -> Option<Transition> {
        let old = self.plan;
        self.plan = plan;
        if old.planned != plan.planned {
            let p = self.initial_phase(now, now);
            return self.go(p, Cause::Plan, now);
        }
        if !plan.relay_allowed && self.fallback() {
            return self.go(
                Phase::DirectFailed { since: now },
                Cause::RelayUnavailable,
                now,
            );
        }
        None
    }

    fn enter_fallback(&mut self, cause: Cause, now: Instant) -> Option<Transition> {
        if !self.plan.relay_allowed {
            if matches!(self.phase, Phase::DirectFailed { .. }) {
                return None;
            }
            return self.go(Phase::DirectFailed { since: now }, cause, now);
        }
        let next_probe = self.clock.next_slot(now, self.backoff);
        self.go(
            Phase::Fallback {
                since: now,
                next_probe,
            },
            cause,
            now,
        )
    }

    /// How long a connect attempt waits for direct evidence before falling back.
    fn connect_timeout(&self) -> Duration {
        if self.plan.punched {
            self.timing.direct_timeout + PUNCH_GRACE
        } else {
            self.timing.direct_timeout
        }
    }

    fn stalled(&self, now: Instant) -> bool {
        let window = self.timing.stall_window();
        if now.duration_since(self.rx_changed_at) < window {
            return false;
        }
        // Bytes our own persistent keepalives account for in the window (32 B each), plus a
        // handshake initiation: sending only these is not "data that got no answer".
        let ka = u64::from(self.plan.keepalive);
        let noise = 148 + window.as_secs().checked_div(ka).map_or(0, |n| 32 * (n + 1));
        self.tx.saturating_sub(self.tx_at_rx_change) > noise
    }

    /// Feeds one sample; returns the transition it caused, if any.
    pub fn observe(&mut self, obs: &Observation, now: Instant) -> Option<Transition> {
        let on_direct = !obs.via_relay && obs.endpoint.is_some();
        let rx_grew = obs.rx_bytes > self.rx;
        let direct_traffic =
            on_direct && obs.live_session(now) && self.direct_rx.is_some_and(|p| obs.rx_bytes > p);
        self.direct_rx = on_direct.then_some(obs.rx_bytes);
        if obs.rx_bytes != self.rx {
            // Counters also reset when the peer is re-added; any change is "activity" (the
            // stall rule counts it). Only an armed peer's own chatter does not end a liveness
            // spell: the spell's deadline decides then, not the stall rule.
            let chatter = self.liveness.is_armed()
                && self.liveness.in_spell()
                && obs.rx_bytes > self.rx
                && obs.rx_bytes - self.rx_at_spell.min(self.rx) <= PEER_CHATTER_MAX;
            self.rx = obs.rx_bytes;
            self.rx_changed_at = now;
            self.tx_at_rx_change = obs.tx_bytes;
            if !chatter {
                self.liveness.end_spell();
            }
        }
        if obs.tx_bytes != self.tx {
            self.tx = obs.tx_bytes;
            self.tx_changed_at = now;
        }
        if obs.tx_bytes < self.tx_at_rx_change {
            self.tx_at_rx_change = obs.tx_bytes;
        }
        let hs_after = |t: Instant| obs.last_handshake.is_some_and(|h| h >= t);
        let direct_ok = |t: Instant| (hs_after(t) && on_direct) || direct_traffic;
        // The peer talks to us through the relay: a handshake there, or (an existing session
        // needs none) its packets arriving from the relay socket, which WireGuard roamed to.
        let peer_on_relay = |t: Instant| (hs_after(t) || rx_grew) && obs.via_relay;
        match self.phase {
            Phase::Down | Phase::Relay { .. } => None,
            Phase::Connecting {
                since,
                evidence_after,
            } => {
                if direct_ok(evidence_after) {
                    self.reset_stall(now);
                    self.go(Phase::Direct { since: now }, Cause::Handshake, now)
                } else if peer_on_relay(evidence_after)
                    && self.plan.relay_allowed
                    && now.duration_since(since) >= self.timing.direct_timeout / 2
                {
                    // The peer already fell back (one-way loss): converge on the relay. Not
                    // at once: right after a plan change the peer's spec may still say Relay
                    // (the operator writes specs one by one), and following it would park the
                    // pair on the relay until the first probe slot, 5-15 s away.
                    self.enter_fallback(Cause::PeerOnRelay, now)
                } else if now.duration_since(since) >= self.connect_timeout() {
                    self.enter_fallback(Cause::DirectTimeout, now)
                } else {
                    None
                }
            }
            Phase::Direct { since } => {
                let failed = if peer_on_relay(since) {
                    Some(Cause::PeerOnRelay)
                } else if self.liveness.lost(
                    // A spell begins suspect; only an answer or more than chatter ends it.
                    self.liveness.in_spell(),
                    now,
                    &self.timing.liveness,
                ) {
                    Some(Cause::LivenessLost)
                } else if self.stalled(now) {
                    Some(Cause::Stall)
                } else {
                    // Keys expired and we are still trying to send: the path is gone.
                    let stale = obs.last_handshake.is_none_or(|h| {
                        now.duration_since(h) > HANDSHAKE_FRESH + self.timing.direct_timeout
                    });
                    let sending =
                        now.duration_since(self.tx_changed_at) < self.timing.stall_window();
                    (stale && sending).then_some(Cause::Stall)
                };
                let cause = failed?;
                // Hysteresis: a path that failed soon after a probe brought it back (flapping)
                // waits longer next time. A path that came up at start-up (or after a plan
                // change) and failed is not flapping: its first probe comes at the usual
                // `probe_min` slot (before, it waited a doubled backoff and the fault suite's
                // healed pairs took 44-81 s to return).
                let flapping =
                    self.direct_from_relay && now.duration_since(since) < self.timing.stable_after;
                self.backoff = if flapping {
                    (self.backoff * 2).min(self.timing.probe_max)
                } else {
                    self.timing.probe_min
                };
                self.enter_fallback(cause, now)
            }
            Phase::DirectFailed { since } => {
                if direct_ok(since) {
                    self.reset_stall(now);
                    self.go(Phase::Direct { since: now }, Cause::Handshake, now)
                } else if peer_on_relay(since) && self.plan.relay_allowed {
                    self.enter_fallback(Cause::PeerOnRelay, now)
                } else {
                    None
                }
            }
            Phase::Fallback { since, next_probe } => {
                if direct_ok(since) {
                    // The peer's probe reached us directly and WireGuard roamed: upgrade.
                    self.reset_stall(now);
                    self.upgrade(now)
                } else if on_direct && rx_grew {
                    // Something arrived directly (the peer's probe) and WireGuard roamed:
                    // keep that endpoint and confirm it like a probe of our own.
                    self.go(Phase::Probing { since: now }, Cause::ProbeDue, now)
                } else if now >= next_probe {
                    self.go(Phase::Probing { since: now }, Cause::ProbeDue, now)
                } else {
                    None
                }
            }
            Phase::Probing { since } => {
                if direct_ok(since) {
                    self.reset_stall(now);
                    self.upgrade(now)
                } else if probe_over(&self.timing, since, self.rx_changed_at, now) {
                    self.backoff = (self.backoff * 2).min(self.timing.probe_max);
                    let next_probe = self.clock.next_slot(now, self.backoff);
                    self.go(
                        Phase::Fallback {
                            since: now,
                            next_probe,
                        },
                        Cause::ProbeFailed,
                        now,
                    )
                } else {
                    None
                }
            }
        }
    }

    /// The peer announced (through the relay) that it starts a probe now: probe with it, so
    /// that both ends send directly at the same moment even when their clocks disagree about
    /// the slot. Returns whether a probe started.
    pub fn peer_probing(&mut self, now: Instant) -> bool {
        if !matches!(self.phase, Phase::Fallback { .. }) {
            return false;
        }
        self.go(Phase::Probing { since: now }, Cause::ProbeDue, now);
        true
    }

    /// Back to direct from the relay: fast failover waits for the path to settle.
    fn upgrade(&mut self, now: Instant) -> Option<Transition> {
        let t = self.go(Phase::Direct { since: now }, Cause::Handshake, now);
        self.settle_until = Some(now + self.timing.liveness.settle);
        self.direct_from_relay = true;
        t
    }

    /// Direct (and settled after an upgrade), we sent data since anything last arrived, and
    /// that was `suspect_after` ago.
    /// Our own persistent keepalives in that time do not count (a peer answers them with
    /// nothing), so idle pairs are never suspect.
    fn suspect(&self, now: Instant) -> bool {
        let quiet = now.saturating_duration_since(self.rx_changed_at);
        let keepalives = quiet
            .as_secs()
            .checked_div(u64::from(self.plan.keepalive))
            .map_or(0, |n| 32 * (n + 1));
        let settled = matches!(self.phase, Phase::Direct { .. })
            && self.settle_until.is_none_or(|t| now >= t);
        settled
            && self.tx.saturating_sub(self.tx_at_rx_change) > SUSPECT_MIN_TX + keepalives
            && quiet >= self.timing.liveness.suspect_after
    }

    /// Whether the agent should send the peer a liveness request now (crate::liveness).
    pub fn liveness_due(&self, now: Instant) -> bool {
        matches!(self.phase, Phase::Direct { .. })
            && self
                .liveness
                .due(self.suspect(now), now, &self.timing.liveness)
    }

    /// Whether an RTT request (crate::rtt) may go out: the pair is up and nothing is being
    /// decided. On a direct path only for a peer that answers (a request that is never
    /// answered is data without an answer to the stall rule) and not while suspect or
    /// settling after a probe (the peer's ICMP allowance belongs to liveness then).
    pub fn rtt_ready(&self, now: Instant) -> bool {
        match self.phase {
            Phase::Direct { .. } => {
                self.liveness.is_armed()
                    && !self.liveness.in_spell()
                    && self.settle_until.is_none_or(|t| now >= t)
                    && !self.suspect(now)
            }
            Phase::Relay { .. } | Phase::Fallback { .. } => true,
            _ => false,
        }
    }

    /// The agent sent a liveness request.
    pub fn liveness_sent(&mut self, now: Instant) {
        let suspect = self.suspect(now);
        if suspect && !self.liveness.in_spell() {
            self.rx_at_spell = self.rx;
        }
        self.liveness.sent(suspect, now);
    }

    /// The peer answered a liveness request: the path carries traffic right now.
    pub fn liveness_answered(&mut self, now: Instant) {
        self.liveness.answered();
        if matches!(self.phase, Phase::Direct { .. }) {
            self.reset_stall(now);
        }
    }

    /// Liveness requests are waiting for an answer: sample faster than the stats tick.
    pub fn fast_tick(&self) -> bool {
        self.liveness.in_spell()
    }

    /// The peer has answered a liveness request, so fast loss detection is armed.
    pub fn liveness_armed(&self) -> bool {
        self.liveness.is_armed()
    }

    fn reset_stall(&mut self, now: Instant) {
        self.rx_changed_at = now;
        self.tx_at_rx_change = self.tx;
    }

    /// Tries direct again now: the spec endpoint changed while down, or moved to another IP
    /// (`new_ip`: the peer's NAT came back on a new address) while on the relay (probe due at
    /// once; the next step announces it). Not on a port change there: the spec's endpoint
    /// changes after every fallback (prflx), and probing then cost the relay's first seconds.
    pub fn retry_direct(&mut self, now: Instant, new_ip: bool) -> Option<Transition> {
        match self.phase {
            Phase::Fallback { since, .. } if new_ip => {
                self.phase = Phase::Fallback {
                    since,
                    next_probe: now,
                };
                None
            }
            Phase::DirectFailed { .. } if self.plan.planned == PlannedPath::Direct => self.go(
                Phase::Connecting {
                    since: now,
                    evidence_after: now,
                },
                Cause::Plan,
                now,
            ),
            _ => None,
        }
    }
}

#[cfg(test)]
#[path = "pathstate_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "pathstate_probe_tests.rs"]
mod probe_tests;

#[cfg(test)]
#[path = "pathstate_liveness_tests.rs"]
mod liveness_tests;
