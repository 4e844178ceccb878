//! State machine tests with a fake clock (a base `Instant` plus offsets).

use super::*;

pub(super) const DIRECT: &str = "198.18.0.31:51820";
pub(super) const RELAY: &str = "127.0.0.1:40001";

pub(super) struct Sim {
    pub(super) t0: Instant,
    pub(super) now: Instant,
    pub(super) ps: PathState,
    pub(super) obs: Observation,
    pub(super) log: Vec<Transition>,
}

impl Sim {
    pub(super) fn new(planned: PlannedPath, relay_allowed: bool) -> Sim {
        Sim::with_punch(planned, relay_allowed, false)
    }

    pub(super) fn with_punch(planned: PlannedPath, relay_allowed: bool, punched: bool) -> Sim {
        let t0 = Instant::now();
        // Start "late" so that now - HANDSHAKE_FRESH does not underflow.
        let now = t0 + Duration::from_secs(1000);
        let plan = Plan {
            planned,
            relay_allowed,
            keepalive: 25,
            punched,
        };
        Sim {
            t0,
            now,
            ps: PathState::new(
                Timing::with_probe_min(Duration::from_secs(10), Duration::from_secs(30)),
                plan,
                now,
            ),
            obs: Observation::default(),
            log: vec![],
        }
    }

    /// Advances the clock in 1 s ticks (as the agent's stats tick does), feeding `obs`.
    pub(super) fn run(&mut self, secs: u64) {
        for _ in 0..secs {
            self.now += Duration::from_secs(1);
            if let Some(t) = self.ps.observe(&self.obs, self.now) {
                self.log.push(t);
            }
        }
    }

    pub(super) fn handshake(&mut self, endpoint: &str) {
        self.obs.last_handshake = Some(self.now);
        self.obs.endpoint = Some(endpoint.parse().unwrap());
        self.obs.via_relay = endpoint == RELAY;
    }

    /// From a fallback: 1 s ticks until a probe slot, a handshake on the direct endpoint when
    /// probing, until the pair is Direct again (fails after 1000 s).
    pub(super) fn probe_back_to_direct(&mut self) {
        while self.ps.actual() != ActualPath::Direct {
            self.now += Duration::from_secs(1);
            if matches!(self.ps.phase(), Phase::Probing { .. }) {
                self.handshake(DIRECT);
            }
            if let Some(t) = self.ps.observe(&self.obs, self.now) {
                self.log.push(t);
            }
            assert!(self.elapsed() < 2000, "never probed back");
        }
    }

    pub(super) fn traffic(&mut self, rx: u64, tx: u64) {
        self.obs.rx_bytes += rx;
        self.obs.tx_bytes += tx;
    }

    pub(super) fn elapsed(&self) -> u64 {
        (self.now - self.t0).as_secs() - 1000
    }
}

#[test]
fn planned_direct_connects_on_handshake() {
    let mut s = Sim::new(PlannedPath::Direct, true);
    assert_eq!(s.ps.actual(), ActualPath::Connecting);
    assert_eq!(s.ps.want(), Want::Direct);
    s.run(3);
    s.handshake(DIRECT);
    s.run(1);
    assert_eq!(s.ps.actual(), ActualPath::Direct);
    assert!(!s.ps.fallback());
    assert_eq!(s.ps.transitions, 1);
    assert_eq!(s.log[0].cause, Cause::Handshake);
}

#[test]
fn no_handshake_falls_back_after_direct_timeout_then_probes_with_backoff() {
    let mut s = Sim::new(PlannedPath::Direct, true);
    s.run(9);
    assert_eq!(s.ps.actual(), ActualPath::Connecting);
    s.run(1);
    assert_eq!(s.ps.actual(), ActualPath::Relay);
    assert!(s.ps.fallback());
    assert_eq!(s.ps.want(), Want::Relay);
    assert_eq!(s.log[0].cause, Cause::DirectTimeout);
    let fell_at = s.elapsed();
    // Relay handshake: stays on relay.
    s.handshake(RELAY);
    s.run(9);
    assert_eq!(s.ps.want(), Want::Relay);
    // Probes on slots of the backoff (30 s, 60 s, 120 s, 240 s, capped at 8x) counted from
    // the clock's origin, at least half a backoff after the previous try; each lasts 5 s.
    let mut probe_starts = vec![];
    let mut was_probing = false;
    for _ in 0..1200 {
        s.run(1);
        let probing = matches!(s.ps.phase(), Phase::Probing { .. });
        if probing && !was_probing {
            probe_starts.push(s.elapsed() - fell_at);
        }
        was_probing = probing;
        // While probing the report stays relay + fallback.
        assert_eq!(s.ps.actual(), ActualPath::Relay);
        assert!(s.ps.fallback());
    }
    assert_eq!(
        &probe_starts[..5],
        &[20, 110, 230, 470, 710],
        "{probe_starts:?}"
    );
    // Probing is not a reported path change.
    assert_eq!(s.ps.transitions, 1);
}

#[test]
fn probe_success_upgrades_and_quick_failure_doubles_backoff() {
    let mut s = Sim::new(PlannedPath::Direct, true);
    s.run(10);
    assert!(s.ps.fallback());
    s.handshake(RELAY);
    s.run(20);
    assert!(matches!(s.ps.phase(), Phase::Probing { .. }));
    // The peer's packets (still through the relay) keep the probe going.
    for _ in 0..2 {
        s.traffic(100, 0);
        s.run(1);
    }
    s.handshake(DIRECT);
    s.run(1);
    assert_eq!(s.ps.actual(), ActualPath::Direct);
    assert!(!s.ps.fallback());
    assert_eq!(s.ps.transitions, 2);
    // Fails again after 20 s (stall: we send, nothing comes back).
    for _ in 0..20 {
        s.traffic(1000, 1000);
        s.run(1);
    }
    for _ in 0..15 {
        s.traffic(0, 5000);
        s.run(1);
    }
    assert_eq!(s.ps.actual(), ActualPath::Relay, "{:?}", s.ps.phase());
    assert_eq!(s.log.last().unwrap().cause, Cause::Stall);
    // Hysteresis: the next probe waits 60 s, not 30 s.
    assert_eq!(s.ps.backoff(), Duration::from_secs(60));
}

#[test]
fn stable_direct_resets_backoff() {
    let mut s = Sim::new(PlannedPath::Direct, true);
    s.run(10);
    s.handshake(RELAY);
    s.run(31);
    s.handshake(DIRECT);
    s.run(1);
    assert_eq!(s.ps.actual(), ActualPath::Direct);
    for _ in 0..400 {
        s.traffic(100, 100);
        s.run(1);
        if s.elapsed().is_multiple_of(100) {
            s.handshake(DIRECT);
        }
    }
    assert_eq!(s.ps.actual(), ActualPath::Direct);
    // Peer falls back (one-way loss): its packets arrive via the relay, WireGuard roams.
    s.handshake(RELAY);
    s.run(1);
    assert_eq!(s.ps.actual(), ActualPath::Relay);
    assert_eq!(s.log.last().unwrap().cause, Cause::PeerOnRelay);
    assert_eq!(s.ps.backoff(), Duration::from_secs(30));
}

#[test]
fn keepalives_alone_are_not_a_stall() {
    let mut s = Sim::new(PlannedPath::Direct, true);
    s.handshake(DIRECT);
    s.run(1);
    assert_eq!(s.ps.actual(), ActualPath::Direct);
    // 60 s of our keepalives (32 B every 25 s) with nothing received.
    for i in 0..60 {
        if i % 25 == 0 {
            s.traffic(0, 32);
        }
        s.run(1);
    }
    assert_eq!(s.ps.actual(), ActualPath::Direct);
}

#[test]
fn idle_peer_with_old_handshake_stays_direct_until_it_sends() {
    let mut s = Sim::new(PlannedPath::Direct, true);
    s.handshake(DIRECT);
    s.run(1);
    s.run(400);
    assert_eq!(s.ps.actual(), ActualPath::Direct);
    // Now we try to send and no handshake completes: keys expired long ago -> failure.
    s.traffic(0, 148);
    s.run(1);
    assert_eq!(s.ps.actual(), ActualPath::Relay);
}

#[test]
fn relay_frames_from_peer_while_connecting_converge_on_relay() {
    let mut s = Sim::new(PlannedPath::Direct, true);
    s.run(2);
    s.handshake(RELAY);
    s.run(1);
    // A peer whose spec still says Relay right after the plan changed is not followed...
    assert_eq!(s.ps.actual(), ActualPath::Connecting);
    // ... one still on the relay after half of directTimeout has fallen back: follow it.
    s.handshake(RELAY);
    s.run(2);
    assert_eq!(s.ps.actual(), ActualPath::Relay);
    assert!(s.ps.fallback());
    assert_eq!(s.log[0].cause, Cause::PeerOnRelay);
}

#[test]
fn peer_lagging_on_the_relay_then_direct_connects_without_a_detour() {
    let mut s = Sim::new(PlannedPath::Direct, true);
    // Start-up: the peer's spec says Relay for 2 s more, its packets arrive via the relay...
    s.handshake(RELAY);
    s.traffic(200, 0);
    s.run(2);
    // ... then its spec says Direct and its handshake arrives directly.
    s.handshake(DIRECT);
    s.run(1);
    assert_eq!(s.ps.actual(), ActualPath::Direct);
    assert!(
        s.log.iter().all(|t| t.cause != Cause::PeerOnRelay),
        "{:?}",
        s.log
    );
}

#[test]
fn peer_probe_arriving_directly_upgrades_without_new_handshake() {
    let mut s = Sim::new(PlannedPath::Direct, true);
    s.run(10);
    s.handshake(RELAY);
    s.traffic(100, 100);
    s.run(5);
    assert!(matches!(s.ps.phase(), Phase::Fallback { .. }));
    // The peer's packets now arrive directly over the existing session (no handshake).
    s.obs.endpoint = Some(DIRECT.parse().unwrap());
    s.obs.via_relay = false;
    for _ in 0..3 {
        s.traffic(100, 100);
        s.run(1);
    }
    assert_eq!(s.ps.actual(), ActualPath::Direct, "{:?}", s.ps.phase());
}

#[test]
fn mode_never_reports_down_and_recovers() {
    let mut s = Sim::new(PlannedPath::Direct, false);
    s.run(10);
    assert_eq!(s.ps.actual(), ActualPath::Down);
    assert!(!s.ps.fallback());
    assert!(s.ps.direct_failed());
    assert_eq!(s.ps.want(), Want::Direct);
    s.handshake(DIRECT);
    s.run(1);
    assert_eq!(s.ps.actual(), ActualPath::Direct);
}

#[test]
fn planned_relay_and_down() {
    let mut s = Sim::new(PlannedPath::Relay, true);
    assert_eq!(s.ps.actual(), ActualPath::Relay);
    assert_eq!(s.ps.want(), Want::Relay);
    assert!(!s.ps.fallback());
    s.handshake(DIRECT);
    s.run(60);
    assert_eq!(s.ps.actual(), ActualPath::Relay);
    let mut d = Sim::new(PlannedPath::Down, true);
    d.run(60);
    assert_eq!(d.ps.actual(), ActualPath::Down);
    assert_eq!(d.ps.transitions, 0);
}

#[test]
fn plan_change_restarts_and_counts_a_transition() {
    let mut s = Sim::new(PlannedPath::Relay, true);
    let plan = Plan {
        planned: PlannedPath::Direct,
        relay_allowed: true,
        keepalive: 25,
        punched: false,
    };
    let t = s.ps.set_plan(plan, s.now).unwrap();
    assert_eq!(t.to, ActualPath::Connecting);
    // A relay-era handshake (before the change) is no evidence for direct.
    s.obs.last_handshake = Some(s.now - Duration::from_secs(5));
    s.obs.endpoint = Some(DIRECT.parse().unwrap());
    s.run(1);
    assert_eq!(s.ps.actual(), ActualPath::Connecting);
    // Relay disappears while in fallback: down, not a relay with no relay.
    s.run(10);
    assert!(s.ps.fallback());
    let t =
        s.ps.set_plan(
            Plan {
                relay_allowed: false,
                ..plan
            },
            s.now,
        )
        .unwrap();
    assert_eq!(t.to, ActualPath::Down);
    assert!(s.ps.retry_direct(s.now, false).is_some());
    assert_eq!(s.ps.actual(), ActualPath::Connecting);
}

#[test]
fn restart_adopts_a_working_tunnel() {
    let t0 = Instant::now() + Duration::from_secs(1000);
    let plan = Plan {
        planned: PlannedPath::Direct,
        relay_allowed: true,
        keepalive: 25,
        punched: false,
    };
    let mut ps = PathState::new(
        Timing::with_probe_min(Duration::from_secs(10), Duration::from_secs(30)),
        plan,
        t0,
    );
    let obs = Observation {
        last_handshake: Some(t0 - Duration::from_secs(60)),
        endpoint: Some(DIRECT.parse().unwrap()),
        via_relay: false,
        rx_bytes: 10,
        tx_bytes: 10,
    };
    ps.observe(&obs, t0 + Duration::from_secs(1));
    assert_eq!(ps.actual(), ActualPath::Direct);
}

#[test]
fn a_silent_probe_ends_early() {
    // Nothing at all arrives from the peer: over after PROBE_SILENT_MAX (1.5 s), not the
    // 3 s window (1 s ticks: still probing at 1 s, over at 2 s).
    let mut s = Sim::new(PlannedPath::Direct, true);
    s.run(10);
    s.handshake(RELAY);
    s.run(20);
    assert!(matches!(s.ps.phase(), Phase::Probing { .. }));
    s.run(1);
    assert!(matches!(s.ps.phase(), Phase::Probing { .. }));
    s.run(1);
    assert!(matches!(s.ps.phase(), Phase::Fallback { .. }));
    assert_eq!(s.log.len(), 1, "probing is not a reported change");
}

#[test]
fn a_probe_lasts_the_short_probe_window_not_direct_timeout() {
    let mut s = Sim::new(PlannedPath::Direct, true);
    s.run(10);
    s.handshake(RELAY);
    s.run(20);
    assert!(matches!(s.ps.phase(), Phase::Probing { .. }));
    // Packets from the peer keep arriving (through the relay): the whole window.
    for _ in 0..2 {
        s.traffic(100, 0);
        s.run(1);
    }
    assert!(matches!(s.ps.phase(), Phase::Probing { .. }));
    s.traffic(100, 0);
    s.run(1);
    assert!(
        matches!(s.ps.phase(), Phase::Fallback { .. }),
        "{:?}",
        s.ps.phase()
    );
    assert_eq!(s.ps.backoff(), Duration::from_secs(60));
}

#[test]
fn relay_traffic_without_a_handshake_moves_direct_to_relay() {
    // An existing session needs no handshake when the peer moves to the relay: its packets
    // simply start arriving from the relay socket and WireGuard roams there.
    let mut s = Sim::new(PlannedPath::Direct, true);
    s.handshake(DIRECT);
    s.traffic(100, 100);
    s.run(1);
    assert_eq!(s.ps.actual(), ActualPath::Direct);
    s.run(5);
    s.obs.endpoint = Some(RELAY.parse().unwrap());
    s.obs.via_relay = true;
    s.run(1);
    assert_eq!(s.ps.actual(), ActualPath::Direct, "no new packets yet");
    s.traffic(100, 0);
    s.run(1);
    assert_eq!(s.ps.actual(), ActualPath::Relay);
    assert_eq!(s.log.last().unwrap().cause, Cause::PeerOnRelay);
}

#[test]
fn probe_slots_are_wall_clock_multiples_of_the_backoff() {
    let t = Instant::now();
    // Unix 1000.4 s at `t`.
    let c = WallClock::new(t, Duration::from_millis(1_000_400));
    let secs = |i: Instant| (i - t).as_millis();
    // >= 1000.4 + 15 -> 1020 (a multiple of 30).
    assert_eq!(secs(c.next_slot(t, Duration::from_secs(30))), 19_600);
    // >= 1000.4 + 30 -> 1080.
    assert_eq!(secs(c.next_slot(t, Duration::from_secs(60))), 79_600);
    // Exactly on the half-way mark counts.
    let at = t + Duration::from_millis(4_600); // unix 1005.0, +15 = 1020
    assert_eq!(secs(c.next_slot(at, Duration::from_secs(30))), 19_600);
}

#[test]
fn two_nodes_that_fell_back_apart_probe_together() {
    // Nodes A and B share Unix time but not their monotonic clocks; B starts (and falls back)
    // 7 s after A. Their first probes may land on different slots (one fell back just before
    // the half-backoff mark of a slot, the other just after); from then on they coincide.
    let (ta, tb) = (Instant::now(), Instant::now() + Duration::from_secs(5000));
    let unix = Duration::from_secs(1_764_000_003);
    let plan = Plan {
        planned: PlannedPath::Direct,
        relay_allowed: true,
        keepalive: 25,
        punched: false,
    };
    let timing = Timing::with_probe_min(Duration::from_secs(10), Duration::from_secs(30));
    let mut a = PathState::new(timing, plan, ta);
    a.set_clock(WallClock::new(ta, unix));
    let mut b = PathState::new(timing, plan, tb + Duration::from_secs(7));
    b.set_clock(WallClock::new(tb, unix));
    let relay = Observation {
        last_handshake: None,
        endpoint: Some(RELAY.parse().unwrap()),
        via_relay: true,
        rx_bytes: 0,
        tx_bytes: 0,
    };
    let (mut pa, mut pb) = (Vec::new(), Vec::new());
    for sec in 1..2000u64 {
        let d = Duration::from_secs(sec);
        for (ps, t0, probes, from) in [(&mut a, ta, &mut pa, 1), (&mut b, tb, &mut pb, 8)] {
            if sec < from {
                continue;
            }
            let was = matches!(ps.phase(), Phase::Probing { .. });
            ps.observe(&relay, t0 + d);
            if !was && matches!(ps.phase(), Phase::Probing { .. }) {
                probes.push(sec);
            }
        }
    }
    assert_eq!(
        pa[0], 27,
        "A: Unix ...030, the first multiple of 30 s 15 s after falling back"
    );
    assert_eq!(pb[0], 57, "B fell back at 17 s: 27 is too soon, next slot");
    assert!(pb.len() >= 5, "{pb:?}");
    for p in &pb[1..] {
        assert!(pa.contains(p), "B probes at {p} s, A at {pa:?}");
    }
}

/// The agent's loop for liveness, in 250 ms steps: answers read before `observe`, requests
/// sent after. `answers` says whether the peer's kernel answers requests; `rx`/`tx` are bytes
/// per step. Returns the number of requests sent.
pub(super) fn run_live(s: &mut Sim, steps: u32, answers: bool, rx: u64, tx: u64) -> u32 {
    let mut sent = 0;
    let mut pending = false;
    for _ in 0..steps {
        s.now += Duration::from_millis(250);
        if pending {
            s.ps.liveness_answered(s.now);
            pending = false;
        }
        s.traffic(rx, tx);
        if let Some(t) = s.ps.observe(&s.obs, s.now) {
            s.log.push(t);
        }
        if s.ps.liveness_due(s.now) {
            s.ps.liveness_sent(s.now);
            sent += 1;
            pending = answers;
        }
    }
    sent
}

pub(super) fn direct_and_armed() -> Sim {
    let mut s = Sim::new(PlannedPath::Direct, true);
    s.handshake(DIRECT);
    // Both ways busy past the settle time, the capability request answered.
    run_live(&mut s, 24, true, 500, 500);
    assert_eq!(s.ps.actual(), ActualPath::Direct);
    assert!(s.ps.liveness_armed(), "the first request arms detection");
    s
}

#[test]
fn initiations_arriving_directly_without_a_session_are_no_direct_path() {
    let mut s = Sim::new(PlannedPath::Direct, true);
    // Crossed initiations: the peer's arrive on the direct endpoint (rx grows between two
    // direct samples), ours go out, and no handshake completes yet.
    s.obs.endpoint = Some(DIRECT.parse().unwrap());
    for _ in 0..3 {
        s.traffic(148, 148);
        s.run(1);
    }
    assert_eq!(s.ps.actual(), ActualPath::Connecting, "{:?}", s.log);
    // The restarted initiation completes: Direct, and it stays there.
    s.handshake(DIRECT);
    for _ in 0..5 {
        s.traffic(100, 100);
        s.run(1);
    }
    assert_eq!(s.ps.actual(), ActualPath::Direct, "{:?}", s.log);
    let causes: Vec<Cause> = s.log.iter().map(|t| t.cause).collect();
    assert_eq!(causes, [Cause::Handshake]);
}
