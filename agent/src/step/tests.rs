//! Table tests of one pass's decisions per peer: fixtures, no Kubernetes, no sockets.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use wirekube_crds::{ActualPath, PlannedPath};
use wirekube_dataplane::PeerStats;
use wirekube_relay_proto::PublicKey;

use super::targets::{PathSettings, TargetEvent, apply_targets};
use super::*;
use crate::pathstate::{Cause, Plan, Timing};

pub(super) const PEER: &str = "b";
pub(super) const MESH_IP: &str = "10.99.0.2";
pub(super) const DIRECT_EP: &str = "198.18.0.2:51820";
/// Relay bridge sockets are on loopback.
pub(super) const RELAY_EP: &str = "127.0.0.1:40001";

/// The peer as the spec gives it.
pub(super) fn target(key: u8, planned: PlannedPath, relay_allowed: bool) -> PeerTarget {
    let ip: IpAddr = MESH_IP.parse().unwrap();
    PeerTarget {
        name: PEER.into(),
        key: PublicKey([key; 32]),
        allowed_ips: vec![ipnet::IpNet::from(ip)],
        direct_endpoint: Some(DIRECT_EP.parse().unwrap()),
        keepalive: None,
        initiate: true,
        plan: Plan {
            planned,
            relay_allowed,
            keepalive: 0,
            punched: false,
        },
        mesh_ip: Some(ip),
        breaks_ties: false,
    }
}

/// directTimeout 10 s, probes from 4 s.
pub(super) fn settings(own_key_created: bool) -> PathSettings {
    PathSettings {
        timing: Timing::with_probe_min(Duration::from_secs(10), Duration::from_secs(4)),
        own_key_created,
        clock_offset_secs: 0,
    }
}

/// A fake clock: monotonic and wall time advance together; Unix time at the start is a
/// multiple of every probe backoff, so probe slots fall on whole seconds of the run.
#[derive(Clone, Copy)]
pub(super) struct Clock {
    pub t0: Instant,
    pub sys0: SystemTime,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            t0: Instant::now(),
            sys0: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000 - 1_000_000_000 % 960),
        }
    }
    pub fn at(&self, ms: u64) -> (Instant, SystemTime) {
        let d = Duration::from_millis(ms);
        (self.t0 + d, self.sys0 + d)
    }
}

/// One peer's path and the clock, driven pass by pass.
pub(super) struct Run {
    pub clock: Clock,
    pub paths: BTreeMap<String, PeerPath>,
    pub ms: u64,
}

impl Run {
    pub fn new(t: PeerTarget, own_key_created: bool) -> Self {
        let clock = Clock::new();
        let mut paths = BTreeMap::new();
        let (now, now_sys) = clock.at(0);
        apply_targets(&mut paths, &[t], settings(own_key_created), now, now_sys);
        Self {
            clock,
            paths,
            ms: 0,
        }
    }
    pub fn path(&mut self) -> &mut PeerPath {
        self.paths.get_mut(PEER).unwrap()
    }
    /// One pass at `ms` after the start.
    pub fn step_at(&mut self, ms: u64, obs: &PeerObservation) -> PeerStep {
        self.ms = ms;
        let (now, now_sys) = self.clock.at(ms);
        self.path().step(obs, now, now_sys)
    }
    /// WireGuard's stats as of `ms`: `endpoint`, a handshake `hs_ms` after the start (may
    /// be before it: negative), counters.
    pub fn wg(&self, endpoint: &str, hs_ms: Option<i64>, rx: u64, tx: u64) -> PeerObservation {
        let ep: SocketAddr = endpoint.parse().unwrap();
        let hs = hs_ms.map(|ms| {
            if ms >= 0 {
                self.clock.sys0 + Duration::from_millis(ms as u64)
            } else {
                self.clock.sys0 - Duration::from_millis(ms.unsigned_abs())
            }
        });
        PeerObservation {
            wireguard: Some(PeerStats {
                public_key: [1; 32],
                endpoint: Some(ep),
                last_handshake: hs,
                rx_bytes: rx,
                tx_bytes: tx,
            }),
            via_relay: ep.ip().is_loopback(),
            ..Default::default()
        }
    }
}

pub(super) fn mesh_ip() -> Option<IpAddr> {
    MESH_IP.parse().ok()
}

#[test]
fn direct_is_confirmed_by_a_handshake_over_a_real_endpoint_after_the_start() {
    // (own key new at this start, endpoint, handshake ms after start) -> path after one pass
    // at 2 s. A handshake before the start counts only for a peer adopted after a restart of
    // the agent (same keys); one over the relay socket proves nothing about direct.
    let (direct, connecting) = (ActualPath::Direct, ActualPath::Connecting);
    for (own_new, ep, hs, want) in [
        (false, DIRECT_EP, Some(1_500), direct),
        (true, DIRECT_EP, Some(1_500), direct),
        (false, DIRECT_EP, Some(-60_000), direct),
        (true, DIRECT_EP, Some(-60_000), connecting),
        (false, DIRECT_EP, Some(-200_000), connecting),
        (false, DIRECT_EP, None, connecting),
        (false, RELAY_EP, Some(1_500), connecting),
    ] {
        let mut r = Run::new(target(1, PlannedPath::Direct, true), own_new);
        let obs = r.wg(ep, hs, 100, 100);
        let s = r.step_at(2_000, &obs);
        assert_eq!(r.path().state.actual(), want, "{own_new} {ep} {hs:?}");
        assert_eq!(s.want, Want::Direct);
        if want == direct {
            let t = s.transition.unwrap();
            assert_eq!(
                (t.from, t.to, t.cause),
                (connecting, direct, Cause::Handshake)
            );
            assert!(!s.left_direct());
        }
    }
}

#[test]
fn no_direct_handshake_within_direct_timeout_falls_back_to_the_relay_or_down() {
    // (relay allowed) -> (reported path, dataplane endpoint wanted)
    for (relay_allowed, path, want) in [
        (true, ActualPath::Relay, Want::Relay),
        (false, ActualPath::Down, Want::Direct),
    ] {
        let mut r = Run::new(target(1, PlannedPath::Direct, relay_allowed), false);
        r.step_at(0, &PeerObservation::default());
        let s = r.step_at(10_000, &PeerObservation::default());
        let t = s.transition.unwrap();
        assert_eq!((t.to, t.cause), (path, Cause::DirectTimeout));
        assert_eq!(s.want, want);
        assert!(r.path().state.direct_failed());
        // The dataplane gets the relay bridge socket only when the relay carries the pair.
        let relay: SocketAddr = RELAY_EP.parse().unwrap();
        let target = r.path().target.clone();
        let cfg = s.config(
            &target,
            (want == Want::Relay).then_some(relay),
            r.clock.at(10_000).1,
        );
        let expect = if relay_allowed {
            relay
        } else {
            DIRECT_EP.parse().unwrap()
        };
        assert_eq!(cfg.endpoint, Some(expect));
    }
}

/// On the relay after a fallback at 10 s; the first probe slot (4 s backoff) is at 12 s.
fn fallen_back() -> Run {
    let mut r = Run::new(target(1, PlannedPath::Direct, true), false);
    r.step_at(0, &PeerObservation::default());
    r.step_at(10_000, &PeerObservation::default());
    assert!(matches!(r.path().state.phase(), Phase::Fallback { .. }));
    r
}

#[test]
fn a_probe_announces_itself_triggers_every_300_ms_and_returns_to_direct_on_direct_traffic() {
    let mut r = fallen_back();
    let on_relay = r.wg(RELAY_EP, Some(10_500), 1_000, 1_000);
    let s = r.step_at(11_000, &on_relay);
    assert_eq!(
        (s.want, s.announce_probe, s.trigger),
        (Want::Relay, None, None)
    );
    // The slot: probing starts, is announced to the peer and triggers at once.
    let s = r.step_at(12_000, &on_relay);
    assert!(matches!(r.path().state.phase(), Phase::Probing { .. }));
    assert_eq!(s.transition, None, "probing is still reported relay");
    assert_eq!(
        (s.want, s.announce_probe, s.trigger),
        (Want::Direct, mesh_ip(), mesh_ip())
    );
    // WireGuard roamed back to the relay socket: reassert the direct endpoint.
    assert!(s.reassert_endpoint);
    // (ms, trigger again) at the 300 ms cadence
    for (ms, trigger) in [
        (12_100, false),
        (12_300, true),
        (12_500, false),
        (12_600, true),
    ] {
        let obs = r.wg(DIRECT_EP, Some(10_500), 1_000, 1_000);
        let s = r.step_at(ms, &obs);
        assert_eq!(s.trigger.is_some(), trigger, "at {ms} ms");
        assert_eq!((s.announce_probe, s.reassert_endpoint), (None, false));
    }
    // Bytes arriving over the direct endpoint between two samples confirm it.
    let obs = r.wg(DIRECT_EP, Some(10_500), 1_200, 1_100);
    let s = r.step_at(12_900, &obs);
    let t = s.transition.unwrap();
    assert_eq!(
        (t.from, t.to, t.cause),
        (ActualPath::Relay, ActualPath::Direct, Cause::Handshake)
    );
    assert_eq!(s.want, Want::Direct);
}

#[test]
fn a_probe_without_direct_traffic_ends_on_the_relay_after_its_window() {
    let mut r = fallen_back();
    // Nothing but an old handshake and the peer's first direct packet.
    let obs = r.wg(DIRECT_EP, Some(5_000), 1_000, 1_000);
    r.step_at(12_000, &obs);
    assert!(matches!(r.path().state.phase(), Phase::Probing { .. }));
    // (ms, wanted endpoint): nothing more arrives, so the probe ends after
    // PROBE_SILENT_MAX (1.5 s), before its window (min(directTimeout, 3 s)).
    for (ms, want) in [(13_400, Want::Direct), (13_500, Want::Relay)] {
        let s = r.step_at(ms, &obs);
        assert_eq!(s.want, want, "at {ms} ms");
        assert_eq!(s.transition, None);
    }
    assert_eq!(r.path().state.backoff(), Duration::from_secs(8));
}

#[test]
fn the_peers_probe_announcement_starts_ours_without_announcing_back() {
    // (announced at 11 s, before our slot) -> (joined, wanted endpoint)
    for (announced, joined, want) in [(true, true, Want::Direct), (false, false, Want::Relay)] {
        let mut r = fallen_back();
        let mut obs = r.wg(RELAY_EP, Some(10_500), 1_000, 1_000);
        obs.probe_announced = announced;
        let s = r.step_at(11_000, &obs);
        assert_eq!((s.joined_peer_probe, s.want), (joined, want));
        assert_eq!(s.announce_probe, None);
        assert_eq!(s.trigger.is_some(), joined);
    }
}

#[test]
fn a_direct_pair_whose_peer_talks_through_the_relay_leaves_direct() {
    let mut r = Run::new(target(1, PlannedPath::Direct, true), false);
    let obs = r.wg(DIRECT_EP, Some(500), 100, 100);
    r.step_at(1_000, &obs);
    assert_eq!(r.path().state.actual(), ActualPath::Direct);
    // The peer fell back: its packets arrive from the relay socket WireGuard roamed to.
    let obs = r.wg(RELAY_EP, Some(500), 300, 200);
    let s = r.step_at(3_000, &obs);
    let t = s.transition.unwrap();
    assert_eq!(
        (t.from, t.to, t.cause),
        (ActualPath::Direct, ActualPath::Relay, Cause::PeerOnRelay)
    );
    assert!(s.left_direct());
    assert_eq!(s.want, Want::Relay);
}

#[test]
fn answers_give_rtt_samples_and_arm_fast_failover_once() {
    let mut r = Run::new(target(1, PlannedPath::Relay, true), false);
    let obs = r.wg(RELAY_EP, Some(500), 100, 100);
    // A relayed pair samples its round trip.
    let s = r.step_at(1_000, &obs);
    assert_eq!(s.request, Some(Request::Rtt));
    let (sent, _) = r.clock.at(1_000);
    r.path().request_sent(Request::Rtt, sent, false, sent);
    // (ms, answered after ms) -> (samples, armed now)
    for (ms, answer_after, samples, armed) in [
        (1_100, Some(3), vec![Duration::from_millis(3)], true),
        (1_200, None, vec![], false),
    ] {
        let mut obs = obs.clone();
        obs.liveness_answers = answer_after
            .map(|d| sent + Duration::from_millis(d))
            .into_iter()
            .collect();
        let s = r.step_at(ms, &obs);
        assert_eq!(
            (s.rtt_samples, s.liveness_armed),
            (samples, armed),
            "at {ms} ms"
        );
        assert_eq!(s.request, None, "one request per RTT interval");
    }
    assert!(r.path().state.liveness_armed());
}

#[test]
fn the_spec_keeps_restarts_adopts_and_removes_paths() {
    let clock = Clock::new();
    let mut paths = BTreeMap::new();
    let (t0, s0) = clock.at(0);
    let direct = target(1, PlannedPath::Direct, true);
    assert_eq!(
        apply_targets(
            &mut paths,
            std::slice::from_ref(&direct),
            settings(false),
            t0,
            s0
        ),
        []
    );
    // Direct at 1 s.
    let (t1, s1) = clock.at(1_000);
    let mut r = Run {
        clock,
        paths,
        ms: 1_000,
    };
    let obs = r.wg(DIRECT_EP, Some(500), 100, 100);
    r.path().step(&obs, t1, s1);
    assert_eq!(r.path().state.actual(), ActualPath::Direct);
    let (t2, s2) = clock.at(2_000);
    // (spec's target, event, path after)
    let relay = target(1, PlannedPath::Relay, true);
    let new_key = target(2, PlannedPath::Relay, true);
    let cases: [(PeerTarget, Option<TargetEvent>, ActualPath, u32); 3] = [
        (direct.clone(), None, ActualPath::Direct, 1),
        (
            relay,
            Some(TargetEvent::Transition(
                PEER.into(),
                crate::pathstate::Transition {
                    from: ActualPath::Direct,
                    to: ActualPath::Relay,
                    cause: Cause::Plan,
                },
            )),
            ActualPath::Relay,
            2,
        ),
        // A new key: the path starts over (no transitions counted yet).
        (
            new_key,
            Some(TargetEvent::KeyChanged(PEER.into())),
            ActualPath::Relay,
            0,
        ),
    ];
    for (t, event, path, transitions) in cases {
        let events = apply_targets(
            &mut r.paths,
            std::slice::from_ref(&t),
            settings(false),
            t2,
            s2,
        );
        assert_eq!(events, event.into_iter().collect::<Vec<_>>(), "{t:?}");
        assert_eq!(r.path().state.actual(), path);
        assert_eq!(r.path().state.transitions, transitions);
        assert_eq!(r.path().target, t);
    }
    // Removed from the spec: gone.
    assert_eq!(
        apply_targets(&mut r.paths, &[], settings(false), t2, s2),
        []
    );
    assert!(r.paths.is_empty());
}

#[test]
fn a_new_direct_endpoint_retries_a_failed_direct_path_without_relay() {
    let mut r = Run::new(target(1, PlannedPath::Direct, false), false);
    r.step_at(0, &PeerObservation::default());
    r.step_at(10_000, &PeerObservation::default());
    assert_eq!(r.path().state.actual(), ActualPath::Down);
    let (now, now_sys) = r.clock.at(11_000);
    // (direct endpoint) -> path after the spec update
    for (ep, path) in [
        (DIRECT_EP, ActualPath::Down),
        ("198.18.0.9:51820", ActualPath::Connecting),
    ] {
        let mut t = target(1, PlannedPath::Direct, false);
        t.direct_endpoint = ep.parse().ok();
        apply_targets(&mut r.paths, &[t], settings(false), now, now_sys);
        assert_eq!(r.path().state.actual(), path, "{ep}");
    }
}

#[test]
fn a_new_direct_endpoint_probes_a_fallen_back_pair_at_once_and_tells_the_peer() {
    // (direct endpoint in the spec update at 11 s) -> probing, announced, at 11.1 s (the
    // slot would be 12 s; after failed probes it is minutes away)
    // (only a new port: the peer on the relay stopped reporting where it saw us)
    for (ep, probes) in [
        (DIRECT_EP, false),
        ("198.18.0.9:51820", true),
        ("198.18.0.2:40000", false),
    ] {
        let mut r = fallen_back();
        let on_relay = r.wg(RELAY_EP, Some(10_500), 1_000, 1_000);
        r.step_at(11_000, &on_relay);
        let (now, now_sys) = r.clock.at(11_000);
        let mut t = target(1, PlannedPath::Direct, true);
        t.direct_endpoint = ep.parse().ok();
        apply_targets(&mut r.paths, &[t], settings(false), now, now_sys);
        let s = r.step_at(11_100, &on_relay);
        let probing = matches!(r.path().state.phase(), Phase::Probing { .. });
        assert_eq!(probing, probes, "{ep}");
        assert_eq!(s.announce_probe, mesh_ip().filter(|_| probes), "{ep}");
    }
}

#[test]
fn handshake_times_map_to_the_monotonic_clock() {
    let c = Clock::new();
    let (now, now_sys) = c.at(10_000);
    // (wall time) -> monotonic
    for (t, want) in [
        (c.sys0, c.t0),
        (now_sys, now),
        (now_sys + Duration::from_secs(5), now),
    ] {
        assert_eq!(to_instant(t, now_sys, now), want);
    }
}

#[test]
fn a_changed_key_on_either_side_starts_the_path_over() {
    use super::targets::{PeerUpdate::*, peer_update};
    let (k1, k2) = (PublicKey([1; 32]), PublicKey([2; 32]));
    // (key kept for the peer, key in the spec, own key generated at this start) -> update
    for (kept, key, own_new, want) in [
        (Some(&k1), &k1, false, Keep),
        (Some(&k1), &k1, true, Keep),
        (Some(&k1), &k2, false, Fresh),
        (None, &k1, false, Adopt),
        (None, &k1, true, Fresh),
    ] {
        assert_eq!(
            peer_update(kept, key, own_new),
            want,
            "{kept:?} {key:?} {own_new}"
        );
    }
}

#[test]
fn direct_timeout_comes_from_the_spec_and_defaults_to_10_s() {
    use super::targets::path_timing;
    // (spec's directTimeout) -> the state machines' direct timeout, seconds
    for (v, want) in [("12s", 12), ("1m", 60), ("", 10), ("soon", 10)] {
        let spec = wirekube_crds::WireKubePeerSpec {
            direct_timeout: v.into(),
            ..Default::default()
        };
        let t = path_timing(&spec, Duration::from_secs(4));
        assert_eq!(t.direct_timeout, Duration::from_secs(want), "{v:?}");
        assert_eq!(t.probe_min, Duration::from_secs(4));
    }
}
