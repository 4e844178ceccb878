//! The agent's decisions for one reconcile pass, without I/O (docs/agent.md, "The loop").
//!
//! The reconcile layer (`crate::reconcile`) gathers the observations: the spec's peer targets,
//! WireGuard's per-peer stats, which endpoints are relay bridge sockets, the answers to
//! liveness requests, the peers' probe announcements, the interface addresses, the relay
//! client's state, and the clock (an [`Instant`] for the state machines, a [`SystemTime`] for
//! WireGuard's handshake times and the status). This module turns them into what to do:
//!
//! - [`targets::apply_targets`]: the spec's peers → one [`PeerPath`] each (kept, started
//!   fresh after a key change, adopted after a restart, removed), with the plan transitions;
//! - [`PeerPath::step`]: one peer's observation → its path transition, the endpoint the
//!   dataplane should give it ([`PeerStep::config`]), and the datagrams to send (handshake
//!   triggers, a probe announcement, a liveness or RTT request);
//! - [`report::build_status`]: everything → the `WireKubePeer` status.
//!
//! The reconcile layer applies the result (dataplane write, sockets, metrics, logs, status
//! patch) and feeds back what only the I/O knows afterwards ([`PeerPath::request_sent`]).

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use wirekube_crds::ActualPath;
use wirekube_dataplane::{PeerConfig, PeerStats, Restart};

use crate::pathstate::{Observation, PathState, Phase, Transition, Want};
use crate::rtt::{Rtt, RttTiming};
use crate::spec::{self, Current, PeerTarget};

pub mod report;
pub mod targets;

/// Trigger cadence while probing a direct path (several per probe window).
pub const PROBE_TRIGGER_EVERY: Duration = Duration::from_millis(300);

/// Trigger cadence while connecting: WireGuard's own retry interval (REKEY_TIMEOUT).
pub const CONNECT_TRIGGER_EVERY: Duration = Duration::from_secs(5);

/// Trigger cadence while connecting to a peer WireGuard never completed a handshake with:
/// each trigger follows a handshake restart ([`PeerStep::restart`]), which lifts
/// WireGuard's one initiation per 5 s. An initiation that the peer dropped because it had not
/// configured us yet (the operator writes the specs one after another), or that our own NAT
/// could not deliver yet, is repeated within this interval instead of after 5 s.
pub const CONNECT_RESTART_EVERY: Duration = Duration::from_secs(1);

/// How long after a pair went onto the relay (planned there, or fallen back) the agent makes
/// sure traffic flows through it: a handshake that never completed is restarted and
/// triggered like a connecting one, and requests go out every second until one is
/// answered. The relay path is reported at once, but the first initiation often reaches a
/// peer that has not configured us yet (the specs are written one by one), or crosses the
/// peer's (see [`PeerPath::trigger`]), and WireGuard then retries only after 5 s or 15 s: in
/// the NAT grid relayed pairs answered pings 5-15 s after both sides reported the relay.
/// Bounded so that a peer that is really gone costs WireGuard's own retries, not one
/// initiation per second, through the relay.
pub const RELAY_CONFIRM_WINDOW: Duration = Duration::from_secs(20);

/// Requests while a relay pair is unconfirmed: one per second (a peer's kernel answers about
/// one per second per source after a burst of six), each answered within a round trip on a
/// working path.
pub const RELAY_CONFIRM_RTT: RttTiming = RttTiming {
    every: Duration::from_secs(1),
    timeout: Duration::from_secs(1),
    ..RttTiming::DEFAULT
};

/// RTT sampling (crate::rtt).
pub const RTT_TIMING: RttTiming = RttTiming::DEFAULT;

/// What the agent keeps per peer between passes.
#[derive(Clone, Debug)]
pub struct PeerPath {
    /// The peer as the spec describes it (validated).
    pub target: PeerTarget,
    /// The path state machine.
    pub state: PathState,
    /// When the last handshake trigger went out.
    pub last_trigger: Option<Instant>,
    /// Round-trip time over the path in use, sampled with liveness requests.
    pub rtt: Rtt,
    /// When the spec last gave a new direct endpoint (wall clock, like WireGuard's handshake
    /// times): a newer address beats a roamed one only if it came after that roam's proof.
    pub endpoint_planned_at: SystemTime,
}

/// What the reconcile layer observed of one peer in this pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerObservation {
    /// WireGuard's stats for the peer's key (`None`: not on the interface yet).
    pub wireguard: Option<PeerStats>,
    /// WireGuard's endpoint for the peer is a relay bridge socket (or any loopback address).
    pub via_relay: bool,
    /// Arrival times of answers to our liveness and RTT requests since the last pass.
    pub liveness_answers: Vec<Instant>,
    /// The peer announced (through the relay) that it starts a probe now.
    pub probe_announced: bool,
}

/// A datagram to the peer's mesh IP over the liveness socket (crate::liveness, crate::rtt):
/// both are the same datagram, and every request is a possible RTT sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Fast loss detection on a suspect direct path.
    Liveness,
    /// A round-trip sample.
    Rtt,
}

/// What to do for one peer in this pass.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerStep {
    /// What WireGuard has for the peer (from the observation).
    pub current: Current,
    /// [`PeerPath::endpoint_planned_at`].
    pub endpoint_planned_at: SystemTime,
    /// Which endpoint the dataplane should give the peer.
    pub want: Want,
    /// The path change this pass caused (metrics, log).
    pub transition: Option<Transition>,
    /// The peer's probe announcement started a probe of ours.
    pub joined_peer_probe: bool,
    /// A fallen-back path started probing: tell the peer (through the relay, so before the
    /// endpoint changes) at this mesh IP.
    pub announce_probe: Option<IpAddr>,
    /// Probing, but WireGuard roamed back to the relay socket: point it at the direct
    /// endpoint again, or the probe's triggers (and their answers) go through the relay.
    pub reassert_endpoint: bool,
    /// Send one datagram into the tunnel to this mesh IP (after the dataplane write).
    pub trigger: Option<IpAddr>,
    /// Before the trigger, re-create the WireGuard peer, and under which condition
    /// (`Restart`: `Unused` if it never received anything, so that the trigger's initiation
    /// is not held back by an earlier attempt, [`CONNECT_RESTART_EVERY`]; `Crossed` on a
    /// direct pair whose initiations crossed, as long as no handshake completed;
    /// `Unconfirmed` on the tie-breaking side of an unconfirmed relay pair, even over a
    /// session). The dataplane checks the condition again when it writes.
    pub restart: Option<Restart>,
    /// Send a liveness or RTT request (then report it with [`PeerPath::request_sent`]).
    pub request: Option<Request>,
    /// Round trips measured from this pass's answers.
    pub rtt_samples: Vec<Duration>,
    /// This pass's answers were the peer's first: fast failover is armed from now on.
    pub liveness_armed: bool,
}

impl PeerStep {
    /// The pass took the pair off a direct path (a NAT re-check may be due).
    pub fn left_direct(&self) -> bool {
        self.transition
            .is_some_and(|t| t.from == ActualPath::Direct && t.to != ActualPath::Direct)
    }

    /// The WireGuard peer config; `relay_endpoint` is the relay bridge socket for the peer,
    /// which the reconcile layer opens when [`PeerStep::want`] is [`Want::Relay`].
    pub fn config(
        &self,
        target: &PeerTarget,
        relay_endpoint: Option<std::net::SocketAddr>,
        now_sys: SystemTime,
    ) -> PeerConfig {
        spec::peer_config(
            target,
            self.want,
            self.current,
            relay_endpoint,
            self.endpoint_planned_at,
            now_sys,
        )
    }
}

/// Converts a wall-clock handshake time to the monotonic clock the state machine uses.
pub fn to_instant(t: SystemTime, now_sys: SystemTime, now: Instant) -> Instant {
    let age = now_sys.duration_since(t).unwrap_or(Duration::ZERO);
    now.checked_sub(age).unwrap_or(now)
}

impl PeerPath {
    /// One pass for this peer: liveness answers, the peer's probe announcement and
    /// WireGuard's counters go into the state machine; out come the transition, the wanted
    /// endpoint and the datagrams to send.
    pub fn step(&mut self, obs: &PeerObservation, now: Instant, now_sys: SystemTime) -> PeerStep {
        let wg = obs.wireguard.as_ref();
        let current = Current {
            endpoint: wg.and_then(|s| s.endpoint),
            last_handshake: wg.and_then(|s| s.last_handshake),
            via_relay: obs.via_relay,
        };
        let sample = Observation {
            last_handshake: current.last_handshake.map(|t| to_instant(t, now_sys, now)),
            endpoint: current.endpoint,
            via_relay: current.via_relay,
            rx_bytes: wg.map_or(0, |s| s.rx_bytes),
            tx_bytes: wg.map_or(0, |s| s.tx_bytes),
        };
        // Answers first, so that one merely read late still counts for this sample.
        let (rtt_samples, liveness_armed) = self.take_answers(&obs.liveness_answers, now);
        let joined_peer_probe = obs.probe_announced && self.state.peer_probing(now);
        let was_fallback = matches!(self.state.phase(), Phase::Fallback { .. });
        let transition = self.state.observe(&sample, now);
        let probing = matches!(self.state.phase(), Phase::Probing { .. });
        let announce_probe = (was_fallback && probing)
            .then_some(self.target.mesh_ip)
            .flatten();
        self.rtt.on_path(self.state.actual());
        let nothing_to_lose = current.last_handshake.is_none() && sample.rx_bytes == 0;
        let (trigger, restart) =
            self.trigger(nothing_to_lose, current.last_handshake.is_some(), now);
        PeerStep {
            current,
            endpoint_planned_at: self.endpoint_planned_at,
            want: self.state.want(),
            transition,
            joined_peer_probe,
            announce_probe,
            reassert_endpoint: probing && current.via_relay,
            trigger,
            restart,
            request: self.request_due(now),
            rtt_samples,
            liveness_armed,
        }
    }

    /// Feeds answers to earlier requests to the RTT estimate and the state machine; returns
    /// the RTT samples and whether these answers armed fast failover.
    fn take_answers(&mut self, answers: &[Instant], now: Instant) -> (Vec<Duration>, bool) {
        let samples = answers
            .iter()
            .filter_map(|at| self.rtt.answered(*at, &RTT_TIMING))
            .collect();
        if answers.is_empty() {
            return (samples, false);
        }
        let armed_now = !self.state.liveness_armed();
        self.state.liveness_answered(now);
        (samples, armed_now)
    }

    /// A liveness request when due, otherwise an RTT request when due (crate::rtt), or every
    /// second on an unconfirmed relay pair ([`RELAY_CONFIRM_WINDOW`]).
    fn request_due(&self, now: Instant) -> Option<Request> {
        if self.state.liveness_due(now) {
            Some(Request::Liveness)
        } else if self.rtt.due(self.state.rtt_ready(now), now, &RTT_TIMING)
            || (self.relay_unconfirmed(now) && self.rtt.due(true, now, &RELAY_CONFIRM_RTT))
        {
            Some(Request::Rtt)
        } else {
            None
        }
    }

    /// The reconcile layer sent `request` at `at`; `answered_unknown_time` when the send
    /// itself reported an answer that was pending (its arrival time is unknown).
    pub fn request_sent(
        &mut self,
        request: Request,
        at: Instant,
        answered_unknown_time: bool,
        now: Instant,
    ) {
        if answered_unknown_time {
            self.state.liveness_answered(now);
        }
        self.rtt.sent(at, &RTT_TIMING);
        if request == Request::Liveness {
            self.state.liveness_sent(now);
        }
    }

    /// The dataplane wrote a new endpoint for the peer (after this pass's step): whether to
    /// send a datagram into the tunnel at once (and record it), so that the handshake over
    /// the new endpoint starts now instead of at the next 5 s trigger slot. Only while
    /// attempting (connecting or probing): a working path needs none.
    ///
    /// A peer without a completed handshake was re-created for the write, which clears
    /// WireGuard's handshake rate limit (an attempt made before, e.g. toward the relay before
    /// it was connected, would hold back the next one for 5 s); this datagram is what makes
    /// use of it.
    pub fn endpoint_written(&mut self, now: Instant) -> Option<IpAddr> {
        let ip = self
            .target
            .mesh_ip
            .filter(|_| self.attempting() || self.relay_young(now))?;
        self.last_trigger = Some(now);
        Some(ip)
    }

    fn attempting(&self) -> bool {
        matches!(self.state.phase(), Phase::Probing { .. })
            || self.state.actual() == ActualPath::Connecting
    }

    /// On the relay for less than [`RELAY_CONFIRM_WINDOW`] and no request answered yet.
    fn relay_unconfirmed(&self, now: Instant) -> bool {
        self.relay_young(now) && !self.state.liveness_armed()
    }

    /// On the relay for less than [`RELAY_CONFIRM_WINDOW`].
    fn relay_young(&self, now: Instant) -> bool {
        match self.state.phase() {
            Phase::Relay { since } | Phase::Fallback { since, .. } => {
                now.duration_since(since) < RELAY_CONFIRM_WINDOW
            }
            _ => false,
        }
    }

    /// Whether to send a datagram into the tunnel now (and record it), and whether to restart
    /// the handshake before it.
    ///
    /// Initiation: WireGuard handshakes on demand, so one datagram makes sure a handshake
    /// starts; the keepalive set for initiating peers keeps it going. This covers engines that
    /// do not send an initiation when a peer is added (boringtun, docs/lab-findings.md §4.1).
    /// A probe (either side) is confirmed by traffic over the direct endpoint, i.e. rx growth
    /// between two samples (an existing session does not handshake again), so while probing
    /// it triggers every [`PROBE_TRIGGER_EVERY`]; the peer's kernel answers (port unreachable)
    /// through its tunnel, over the path it now uses.
    ///
    /// The non-initiating side triggers too. On a hole-punched pair its WireGuard then sends
    /// toward the punch target, which opens its own NAT's filter for the initiator: without it
    /// nothing left that side until the first probe (the lab's cone <-> symmetric pairs stayed
    /// unconnected for the whole directTimeout). And when the initiator's first initiation
    /// reached us before we had configured it (dropped, retried only after 5 s), ours reaches
    /// a peer that has us already and passes the filter its initiation opened: the NAT grid's
    /// second wave of pairs at ~11.5 s.
    ///
    /// That second wave remained for pairs with a symmetric NAT side (only that side can
    /// initiate): WireGuard sends one initiation per 5 s, and the first one reached the peer
    /// before the operator had written the peer's spec. So while connecting to a peer that
    /// WireGuard has `nothing_to_lose` with (no handshake ever, nothing received: a received
    /// initiation is a handshake in progress that a restart would break), every trigger
    /// restarts the handshake and they come every [`CONNECT_RESTART_EVERY`]. The same for a
    /// pair that went onto the relay without a handshake, for [`RELAY_CONFIRM_WINDOW`].
    ///
    /// On the relay both sides initiate, usually within milliseconds of each other (the
    /// operator writes both specs at once), and the initiations can cross: each side answers
    /// the other's and drops its own handshake state. wireguard-go's log in the NAT grid
    /// showed both ends "Received handshake initiation", "Sending handshake response", and
    /// then either nothing until the 5 s retry or a session that carried only one direction
    /// until "stopped hearing back after 15 seconds". WireGuard's counters cannot tell that
    /// apart from a working session; an answered request can. So while a relay pair is
    /// unconfirmed (no request answered), one side of it (`PeerTarget::breaks_ties`)
    /// restarts its handshake every [`CONNECT_RESTART_EVERY`] whatever arrived (a fresh
    /// handshake and the answer to the next request take milliseconds through the relay; 2 s
    /// left the grid's crossed pairs without traffic for 2-3 s): on the
    /// relay a restart loses nothing (the endpoint is our own bridge socket), and the other
    /// side answers the fresh initiation.
    ///
    /// Direct pairs cross too: both sides initiate when both get the plan at once, each
    /// answers the other's initiation, and neither session completes until WireGuard's 5 s
    /// retry (wireguard-go's log in the NAT grid; the 10-node start-up's 7-14 s tails). So
    /// while connecting with something received but no handshake, the tie-breaking side
    /// restarts every [`CONNECT_RESTART_EVERY`] too, if it is one that initiates (its planned
    /// endpoint is the peer's real one); the dataplane re-creates the peer only while no
    /// handshake completed and WireGuard has not roamed off that endpoint (`Restart::Crossed`).
    fn trigger(
        &mut self,
        nothing_to_lose: bool,
        handshook: bool,
        now: Instant,
    ) -> (Option<IpAddr>, Option<Restart>) {
        let probing = matches!(self.state.phase(), Phase::Probing { .. });
        let relay_young = self.relay_young(now);
        let unconfirmed =
            !nothing_to_lose && self.relay_unconfirmed(now) && self.target.breaks_ties;
        let crossed = !nothing_to_lose
            && !handshook
            && self.state.actual() == ActualPath::Connecting
            && self.target.initiate
            && self.target.breaks_ties;
        // Only the side that must initiate restarts while connecting: the other one (the
        // cone side of a cone <-> symmetric pair) learns the peer's real port by roaming
        // when the peer's initiation arrives, and a restart that raced with that arrival
        // (between the dataplane's read and its write) put the guessed punch target back:
        // the grid's addr-cone <-> lan-a pair then sent every later initiation to a closed
        // port and took the relay and a probe (31 s). Its 5 s triggers still open its NAT.
        let unused = nothing_to_lose && (relay_young || self.target.initiate);
        let restart = if probing {
            None
        } else if unconfirmed {
            Some(Restart::Unconfirmed)
        } else if crossed {
            Some(Restart::Crossed)
        } else if unused {
            Some(Restart::Unused)
        } else {
            None
        };
        let every = if probing {
            PROBE_TRIGGER_EVERY
        } else if restart.is_some() {
            CONNECT_RESTART_EVERY
        } else {
            CONNECT_TRIGGER_EVERY
        };
        let due = self
            .last_trigger
            .is_none_or(|t| now.duration_since(t) >= every);
        let attempting = self.attempting() || (relay_young && (unused || unconfirmed));
        let Some(ip) = self.target.mesh_ip.filter(|_| attempting && due) else {
            return (None, None);
        };
        self.last_trigger = Some(now);
        (Some(ip), restart)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod trigger_tests;
