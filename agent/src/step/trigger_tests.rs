//! Table tests of the handshake triggers and restarts per pass: connecting, on the relay
//! until confirmed, and after an endpoint write (helpers in `tests.rs`).

use wirekube_crds::{ActualPath, PlannedPath};

use super::tests::{DIRECT_EP, RELAY_EP, Run, mesh_ip, target};
use super::*;

#[test]
fn a_connecting_pair_triggers_every_1_s_with_restart_until_a_handshake_then_every_5_s() {
    let connecting = ActualPath::Connecting;
    // (ms after start, trigger sent, handshake restarted, path after the pass)
    let never = [
        (0, true, true, connecting),
        (500, false, false, connecting),
        (1_000, true, true, connecting),
        (1_500, false, false, connecting),
        (2_000, true, true, connecting),
        (9_000, true, true, connecting),
        // Fallen back without any handshake: the relay's first initiation may be dropped
        // too, so restarts go on (RELAY_CONFIRM_WINDOW).
        (10_000, true, true, ActualPath::Relay),
        (11_000, true, true, ActualPath::Relay),
        // The first probe slot (4 s backoff): probing triggers again, without restarts (a
        // probe keeps the relay's session).
        (12_000, true, false, ActualPath::Relay),
    ];
    // A peer WireGuard had a session with before (our key is new, so that old handshake does
    // not count as direct): WireGuard retries by itself, trigger on its own 5 s cadence.
    let before = [
        (0, true, false, connecting),
        (1_000, false, false, connecting),
        (4_999, false, false, connecting),
        (5_000, true, false, connecting),
        (9_000, false, false, connecting),
        (10_000, false, false, ActualPath::Relay),
    ];
    // The side that waits for the peer's initiation (the cone side of a cone <-> symmetric
    // pair): triggers every 5 s and never restarts (a restart could undo the roam to the
    // peer's real port); on the relay after the fallback it restarts like any side.
    let waiting = [
        (0, true, false, connecting),
        (1_000, false, false, connecting),
        (5_000, true, false, connecting),
        (9_000, false, false, connecting),
        (10_000, true, true, ActualPath::Relay),
        (11_000, true, true, ActualPath::Relay),
    ];
    // (WireGuard's handshake, bytes received, this side initiates, rows): never and nothing
    // received; a session before; no handshake yet but the peer's initiation arrived (a
    // handshake in progress that a restart would break): the 5 s cadence without restarts.
    for (hs, rx, initiate, rows) in [
        (None, 0, true, &never[..]),
        (None, 0, false, &waiting[..]),
        (Some(-60_000), 0, true, &before[..]),
        (None, 148, true, &before[..]),
    ] {
        let mut t = target(1, PlannedPath::Direct, true);
        t.initiate = initiate;
        let mut r = Run::new(t, hs.is_some());
        let obs = r.wg(DIRECT_EP, hs, rx, 0);
        for &(ms, trigger, restart, path) in rows {
            let s = r.step_at(ms, &obs);
            let at = format!("at {ms} ms, handshake {hs:?}, rx {rx}");
            assert_eq!(s.trigger, trigger.then(mesh_ip).flatten(), "{at}");
            assert_eq!(s.restart.is_some(), restart, "{at}");
            assert_eq!(r.path().state.actual(), path, "{at}");
        }
    }
}

#[test]
fn crossed_direct_initiations_are_restarted_by_the_tie_breaking_initiator_only() {
    let connecting = ActualPath::Connecting;
    // (ms after start, trigger sent, handshake restarted)
    let tie_breaker = [
        (0, true, true),
        (500, false, false),
        (1_000, true, true),
        (2_000, true, true),
        (9_000, true, true),
    ];
    let five_s = [
        (0, true, false),
        (1_000, false, false),
        (5_000, true, false),
        (9_000, false, false),
    ];
    // (this side initiates, breaks ties, rows): the peer's initiation arrived (148 bytes),
    // no handshake completed.
    for (initiate, breaks_ties, rows) in [
        (true, true, &tie_breaker[..]),
        (true, false, &five_s[..]),
        // The side that waits for the peer (cone side of cone <-> symmetric): a restart
        // could undo its roam to the peer's real port.
        (false, true, &five_s[..]),
    ] {
        let mut t = target(1, PlannedPath::Direct, true);
        t.initiate = initiate;
        t.breaks_ties = breaks_ties;
        let mut r = Run::new(t, false);
        let obs = r.wg(DIRECT_EP, None, 148, 0);
        for &(ms, trigger, restart) in rows {
            let s = r.step_at(ms, &obs);
            let at = format!("at {ms} ms, initiate {initiate}, ties {breaks_ties}");
            assert_eq!(s.trigger, trigger.then(mesh_ip).flatten(), "{at}");
            assert_eq!(s.restart.is_some(), restart, "{at}");
            assert_eq!((s.restart == Some(Restart::Crossed)), restart, "{at}");
            assert_ne!(s.restart, Some(Restart::Unconfirmed), "{at}");
            assert_eq!(r.path().state.actual(), connecting, "{at}");
        }
    }
    // Once a handshake completed, no more restarts.
    let mut t = target(1, PlannedPath::Direct, true);
    t.breaks_ties = true;
    let mut r = Run::new(t, false);
    let s = r.step_at(1_000, &r.wg(DIRECT_EP, Some(-500), 148, 0));
    assert!(s.restart.is_none());
}

#[test]
fn a_relay_pair_is_restarted_until_a_request_is_answered_through_it() {
    // Rows of (ms, trigger and restart, an RTT request).
    let never = [
        (0, true, true),
        (500, false, false),
        (1_000, true, true),
        (19_000, true, true),
        // RELAY_CONFIRM_WINDOW over: WireGuard's own retries (a peer that is gone), and
        // requests at the usual RTT cadence only.
        (20_000, false, false),
        (25_000, false, false),
        (29_500, false, true),
    ];
    // Something arrived or a handshake completed, but no request was answered: only the
    // tie-breaking side restarts (both restarting would cross again), every second.
    let tie_breaker = [
        (0, true, true),
        (500, false, false),
        (1_000, true, true),
        (2_000, true, true),
        // Over: the usual 10 s RTT cadence.
        (20_000, false, true),
    ];
    let other_side = [
        (0, false, true),
        (1_000, false, true),
        (2_000, false, true),
        (20_000, false, true),
    ];
    let answered = [
        (0, false, false),
        (2_000, false, false),
        (5_000, false, false),
    ];
    // (handshake, bytes received, this side breaks ties, the peer answered at 0, rows)
    for (hs, rx, breaks_ties, armed, rows) in [
        (None, 0, false, false, &never[..]),
        (None, 0, true, false, &never[..]),
        (None, 148, true, false, &tie_breaker[..]),
        (Some(-1_000), 0, true, false, &tie_breaker[..]),
        (Some(-1_000), 148, true, false, &tie_breaker[..]),
        (None, 148, false, false, &other_side[..]),
        (Some(-1_000), 148, false, false, &other_side[..]),
        (Some(-1_000), 148, true, true, &answered[..]),
        (Some(-1_000), 148, false, true, &answered[..]),
    ] {
        let mut t = target(1, PlannedPath::Relay, true);
        t.breaks_ties = breaks_ties;
        let mut r = Run::new(t, hs.is_some());
        let obs = r.wg(RELAY_EP, hs, rx, 0);
        if armed {
            let mut first = obs.clone();
            let now = r.clock.at(0).0;
            first.liveness_answers = vec![now];
            if let Some(req) = r.step_at(0, &first).request {
                r.path().request_sent(req, now, false, now);
            }
        }
        for &(ms, restart, request) in rows {
            let s = r.step_at(ms, &obs);
            let at = format!("at {ms} ms, handshake {hs:?}, rx {rx}, ties {breaks_ties}");
            assert_eq!(s.trigger, restart.then(mesh_ip).flatten(), "{at}");
            assert_eq!(s.restart.is_some(), restart, "{at}");
            let unconfirmed = restart && (rx > 0 || hs.is_some());
            assert_eq!(
                (s.restart == Some(Restart::Unconfirmed)),
                unconfirmed,
                "{at}"
            );
            assert_eq!(s.request, request.then_some(Request::Rtt), "{at}");
            if let Some(req) = s.request {
                let (now, _) = r.clock.at(ms);
                r.path().request_sent(req, now, false, now);
            }
            assert_eq!(r.path().state.actual(), ActualPath::Relay, "{at}");
        }
    }
}

#[test]
fn a_written_endpoint_triggers_at_once_while_attempting_and_restarts_the_5_s_cadence() {
    // A peer WireGuard had a session with before (5 s cadence, see above).
    let mut r = Run::new(target(1, PlannedPath::Direct, true), true);
    let obs = r.wg(DIRECT_EP, Some(-60_000), 0, 0);
    assert!(r.step_at(0, &obs).trigger.is_some());
    // (ms, endpoint written in this pass, datagram right after the write, step trigger)
    for (ms, written, at_once, trigger) in [
        // The planned endpoint arrives 1.5 s after the first trigger: no 5 s wait.
        (1_500, true, true, false),
        // The cadence counts from that datagram.
        (5_000, false, false, false),
        (6_500, false, false, true),
    ] {
        let s = r.step_at(ms, &obs);
        assert_eq!(s.trigger.is_some(), trigger, "at {ms} ms");
        if written {
            let (now, _) = r.clock.at(ms);
            assert_eq!(
                r.path().endpoint_written(now),
                at_once.then(mesh_ip).flatten()
            );
        }
    }
    // On a path that works (a fresh handshake over the direct endpoint) a write sends nothing.
    let obs = r.wg(DIRECT_EP, Some(7_000), 100, 100);
    r.step_at(7_500, &obs);
    assert_eq!(r.path().state.actual(), ActualPath::Direct);
    let (now, _) = r.clock.at(8_000);
    assert_eq!(r.path().endpoint_written(now), None);
}
