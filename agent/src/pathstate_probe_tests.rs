//! State machine tests, second part: start-up of hole-punched pairs, new keys, probes with
//! clocks that disagree, and the backoff hysteresis (helpers in `pathstate_tests.rs`).

use super::tests::{DIRECT, RELAY, Sim, direct_and_armed, run_live};
use super::*;

#[test]
fn a_punched_pair_gets_one_more_handshake_retry_before_falling_back() {
    // (hole-punched, second of the first direct handshake) -> connected without a detour.
    // A cone <-> symmetric pair typically handshakes on WireGuard's second retry, near 10 s:
    // a plain pair falls back at directTimeout (10 s; a handshake seen in that very sample
    // still counts), a punched one waits PUNCH_GRACE more.
    for (punched, at, direct_first) in [
        (false, 9, true),
        (false, 10, true),
        (false, 11, false),
        (true, 11, true),
        (true, 14, true),
        (true, 16, true),
        (true, 17, false),
    ] {
        let mut s = Sim::with_punch(PlannedPath::Direct, true, punched);
        s.run(at - 1);
        s.now += Duration::from_secs(1);
        s.handshake(DIRECT);
        if let Some(t) = s.ps.observe(&s.obs, s.now) {
            s.log.push(t);
        }
        let causes: Vec<Cause> = s.log.iter().map(|t| t.cause).collect();
        if direct_first {
            assert_eq!(causes, [Cause::Handshake], "punched {punched}, at {at} s");
            assert_eq!(s.ps.actual(), ActualPath::Direct);
        } else {
            // The detour: on the relay first (the sim's endpoint stays direct, so the late
            // handshake then upgrades at once; a real pair waits for a probe slot).
            assert_eq!(
                causes[0],
                Cause::DirectTimeout,
                "punched {punched}, at {at} s"
            );
        }
    }
}

#[test]
fn a_punched_pair_that_never_connects_falls_back_and_probes_on_the_usual_slots() {
    let mut s = Sim::with_punch(PlannedPath::Direct, true, true);
    s.run(15);
    assert_eq!(s.ps.actual(), ActualPath::Connecting);
    s.run(1);
    assert!(s.ps.fallback());
    assert_eq!(s.log[0].cause, Cause::DirectTimeout);
    s.handshake(RELAY);
    // Fell back at 16 s: the first 30 s slot at least 15 s away is 60 s (counted from the
    // clock's origin, the creation), then 120 s (60 s backoff after a failed probe).
    let mut starts = vec![];
    for _ in 0..150 {
        let was = matches!(s.ps.phase(), Phase::Probing { .. });
        s.run(1);
        if !was && matches!(s.ps.phase(), Phase::Probing { .. }) {
            starts.push(s.elapsed());
        }
    }
    assert_eq!(starts, [60, 120], "{starts:?}");
}

#[test]
fn a_new_key_does_not_adopt_the_old_keys_session() {
    // An agent whose key file was deleted comes back with a new key on the interface its
    // predecessor left; the sessions there (handshake 60 s ago, direct) belong to the old
    // key and die when the new one is written. Adopting them reported the pair direct,
    // then stalled it onto the relay with a doubled probe backoff.
    let t0 = Instant::now() + Duration::from_secs(1000);
    let plan = Plan {
        planned: PlannedPath::Direct,
        relay_allowed: true,
        keepalive: 25,
        punched: false,
    };
    let old_session = Observation {
        last_handshake: Some(t0 - Duration::from_secs(60)),
        endpoint: Some(DIRECT.parse().unwrap()),
        via_relay: false,
        rx_bytes: 10,
        tx_bytes: 10,
    };
    let timing = Timing::with_probe_min(Duration::from_secs(10), Duration::from_secs(30));
    let mut ps = PathState::fresh(timing, plan, t0);
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(ps.observe(&old_session, t1), None);
    assert_eq!(ps.actual(), ActualPath::Connecting);
    // A handshake with the new key connects it as usual.
    let new_session = Observation {
        last_handshake: Some(t1),
        ..old_session
    };
    let t = ps
        .observe(&new_session, t1 + Duration::from_secs(1))
        .unwrap();
    assert_eq!((t.to, t.cause), (ActualPath::Direct, Cause::Handshake));
    assert_eq!(ps.backoff(), timing.probe_min);
}

/// Two fallen-back ends of a pair whose clocks differ by `skew`, for 2000 s: how many probes
/// started and how many of them found the other end not probing at that moment. With
/// `announce`, a probe started on one's own slot makes the other probe too (as the agent does
/// through the relay, `reconcile::probe_signal`).
fn probes_alone(skew: Duration, announce: bool) -> (usize, usize) {
    let t0 = Instant::now();
    let unix = Duration::from_secs(1_764_000_003);
    let plan = Plan {
        planned: PlannedPath::Direct,
        relay_allowed: true,
        keepalive: 25,
        punched: false,
    };
    let timing = Timing::with_probe_min(Duration::from_secs(10), Duration::from_secs(30));
    let mut ends = [
        PathState::new(timing, plan, t0),
        PathState::new(timing, plan, t0),
    ];
    ends[0].set_clock(WallClock::new(t0, unix));
    ends[1].set_clock(WallClock::new(t0, unix + skew));
    let relay = Observation {
        last_handshake: None,
        endpoint: Some(RELAY.parse().unwrap()),
        via_relay: true,
        rx_bytes: 0,
        tx_bytes: 0,
    };
    let (mut probes, mut alone) = (0, 0);
    for step in 1..8000u64 {
        let now = t0 + Duration::from_millis(250 * step);
        let mut started = [false; 2];
        for (i, end) in ends.iter_mut().enumerate() {
            let was_fallback = matches!(end.phase(), Phase::Fallback { .. });
            end.observe(&relay, now);
            started[i] = was_fallback && matches!(end.phase(), Phase::Probing { .. });
        }
        for i in 0..2 {
            if started[i] {
                probes += 1;
                if announce {
                    ends[1 - i].peer_probing(now);
                }
            }
        }
        for i in 0..2 {
            if started[i] && !matches!(ends[1 - i].phase(), Phase::Probing { .. }) {
                alone += 1;
            }
        }
    }
    (probes, alone)
}

#[test]
fn clocks_apart_probe_alone_without_announcements_and_together_with_them() {
    let s = Duration::from_secs;
    // In sync: every probe meets the other end's.
    assert_eq!(probes_alone(s(0), false).1, 0);
    // 30 s apart: the first probes still meet (a multiple of the 30 s slot), the later ones
    // on 60 s and longer slots do not.
    let (probes, alone) = probes_alone(s(30), false);
    assert!(alone >= 4, "{alone} of {probes} probes alone");
    // With announcements every probe is a joint one, whatever the skew.
    for skew in [0, 7, 30, 45, 100] {
        let (probes, alone) = probes_alone(s(skew), true);
        assert!(probes >= 8, "skew {skew} s: {probes} probes");
        assert_eq!(alone, 0, "skew {skew} s: {alone} of {probes} probes alone");
    }
}

#[test]
fn an_announced_probe_only_starts_from_the_relay() {
    let mut s = Sim::new(PlannedPath::Direct, true);
    // Connecting: the peer's announcement does not cut the connect attempt short.
    assert!(!s.ps.peer_probing(s.now));
    s.run(10);
    assert!(matches!(s.ps.phase(), Phase::Fallback { .. }));
    assert!(s.ps.peer_probing(s.now));
    assert!(matches!(s.ps.phase(), Phase::Probing { .. }));
    // Already probing: nothing more; the probe ends after its window as usual.
    assert!(!s.ps.peer_probing(s.now));
    s.handshake(RELAY);
    s.run(5);
    assert!(matches!(s.ps.phase(), Phase::Fallback { .. }));
    assert_eq!(s.ps.transitions, 1, "probing is not a reported change");
}

#[test]
fn a_shifted_clock_moves_the_slots() {
    let t = Instant::now();
    let c = WallClock::new(t, Duration::from_millis(1_000_400));
    let secs = |i: Instant| (i - t).as_millis();
    // 30 s ahead: unix 1030.4 + 15 -> 1050.
    assert_eq!(
        secs(c.shifted(30).next_slot(t, Duration::from_secs(30))),
        19_600
    );
    // 10 s behind: unix 990.4 + 15 -> 1020.
    assert_eq!(
        secs(c.shifted(-10).next_slot(t, Duration::from_secs(30))),
        29_600
    );
}

#[test]
fn only_a_path_a_probe_brought_back_doubles_the_backoff_when_it_fails_soon() {
    // Direct since start-up, fails after 20 s: not flapping, the next probe waits probe_min.
    let mut s = direct_and_armed();
    while s.ps.actual() == ActualPath::Direct {
        run_live(&mut s, 1, false, 0, 500);
    }
    assert_eq!(s.log.last().unwrap().cause, Cause::LivenessLost);
    assert_eq!(s.ps.backoff(), Duration::from_secs(30));
    // A probe brings it back and it fails again within stable_after: flapping, doubled.
    s.obs.endpoint = Some(RELAY.parse().unwrap());
    s.obs.via_relay = true;
    s.probe_back_to_direct();
    run_live(&mut s, 40, true, 500, 500);
    while s.ps.actual() == ActualPath::Direct {
        run_live(&mut s, 1, false, 0, 500);
    }
    assert_eq!(s.log.last().unwrap().cause, Cause::LivenessLost);
    assert_eq!(s.ps.backoff(), Duration::from_secs(60));
}

#[test]
fn with_the_default_timing_a_healed_pair_is_probed_back_within_fifteen_seconds() {
    // A pair that never connects falls back at directTimeout; its path works from then on.
    // Whatever the wall clock says at that moment, the first probe (and with it the return
    // to direct) comes 5-15 s later: slots of 10 s, at least half of one away.
    let timing = Timing::new(Duration::from_secs(10));
    assert_eq!(
        (timing.probe_min, timing.probe_window),
        (Duration::from_secs(10), Duration::from_secs(3))
    );
    let plan = Plan {
        planned: PlannedPath::Direct,
        relay_allowed: true,
        keepalive: 25,
        punched: false,
    };
    let mut waits = vec![];
    for unix_ms in (0..10_000).step_by(500) {
        let t0 = Instant::now() + Duration::from_secs(1000);
        let mut ps = PathState::new(timing, plan, t0);
        ps.set_clock(WallClock::new(
            t0,
            Duration::from_millis(1_000_000 + unix_ms),
        ));
        let relay = Observation {
            endpoint: Some(RELAY.parse().unwrap()),
            via_relay: true,
            ..Observation::default()
        };
        let mut now = t0;
        while !ps.fallback() {
            now += Duration::from_millis(250);
            ps.observe(&relay, now);
        }
        let fell_back = now;
        while ps.actual() != ActualPath::Direct {
            now += Duration::from_millis(250);
            let probing = matches!(ps.phase(), Phase::Probing { .. });
            let obs = if probing {
                Observation {
                    last_handshake: Some(now),
                    endpoint: Some(DIRECT.parse().unwrap()),
                    ..Observation::default()
                }
            } else {
                relay
            };
            ps.observe(&obs, now);
            assert!(now - fell_back < Duration::from_secs(60), "never returned");
        }
        waits.push((now - fell_back).as_millis());
    }
    let (min, max) = (waits.iter().min(), waits.iter().max());
    assert!(
        min >= Some(&5_000) && max <= Some(&15_500),
        "returns after {waits:?} ms"
    );
}
