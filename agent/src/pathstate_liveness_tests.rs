//! Fast failover tests: when liveness requests go out, when a direct path is lost, and what
//! does not end a suspect spell (helpers in `pathstate_tests.rs`).

use super::tests::{DIRECT, RELAY, Sim, direct_and_armed, run_live};
use super::*;

#[test]
fn busy_healthy_pair_sends_no_requests_once_armed() {
    let mut s = direct_and_armed();
    assert_eq!(run_live(&mut s, 400, true, 500, 500), 0);
    assert_eq!(s.ps.actual(), ActualPath::Direct);
}

#[test]
fn idle_pair_never_becomes_suspect() {
    let mut s = direct_and_armed();
    // 100 s with only a keepalive every 25 s.
    let mut sent = 0;
    for i in 0..400 {
        let ka = if i % 100 == 0 { 32 } else { 0 };
        sent += run_live(&mut s, 1, true, 0, ka);
    }
    assert_eq!(sent, 0);
    assert_eq!(s.ps.actual(), ActualPath::Direct);
}

/// Sends 500 B per 250 ms step with requests unanswered and `rx(step)` bytes arriving, until
/// the pair leaves Direct (at most 20 s); returns how long that took.
fn fail_over(s: &mut Sim, rx: impl Fn(u32) -> u64) -> Duration {
    let before = s.now;
    let mut step = 0;
    while s.ps.actual() == ActualPath::Direct && step < 80 {
        run_live(s, 1, false, rx(step), 500);
        step += 1;
    }
    s.now - before
}

#[test]
fn dead_path_under_traffic_fails_over_within_two_seconds() {
    let mut s = direct_and_armed();
    // The path dies: we keep sending, nothing arrives, requests go unanswered.
    let took = fail_over(&mut s, |_| 0);
    assert_eq!(s.ps.actual(), ActualPath::Relay);
    assert_eq!(s.log.last().unwrap().cause, Cause::LivenessLost);
    // suspect_after (0.5 s) + deadline (1 s), in 250 ms steps.
    assert!(took <= Duration::from_millis(1750), "took {took:?}");
    assert!(s.ps.fallback() && s.ps.want() == Want::Relay);
}

/// One-way loss (our packets lost, the peer's arrive): the peer's own RTT requests and
/// handshake initiations reach us during the spell. They are not answers and must not restart
/// the deadline.
#[test]
fn one_way_loss_with_peer_chatter_fails_over_as_fast_as_two_way() {
    let mut s = direct_and_armed();
    // Inside the spell (it starts 0.5 s after the last reply): the peer's RTT request, then a
    // handshake initiation.
    let took = fail_over(&mut s, |step| match step {
        4 => 96,
        5 => 148,
        _ => 0,
    });
    assert_eq!(s.ps.actual(), ActualPath::Relay);
    assert_eq!(s.log.last().unwrap().cause, Cause::LivenessLost);
    assert!(took <= Duration::from_millis(1750), "took {took:?}");
}

/// Replies to our traffic (more than the peer's chatter) during a spell end it: a path that
/// carries traffic is not lost because its kernel's answers are rate-limited.
#[test]
fn real_replies_during_a_spell_keep_the_path() {
    let mut s = direct_and_armed();
    // Suspect, requests unanswered for 0.75 s...
    run_live(&mut s, 3, false, 0, 500);
    assert!(s.ps.fast_tick(), "in a spell");
    // ... then the peer's replies arrive (and keep arriving), its kernel still silent.
    run_live(&mut s, 40, false, 400, 500);
    assert_eq!(s.ps.actual(), ActualPath::Direct, "{:?}", s.log.last());
}

#[test]
fn one_way_sender_whose_peer_answers_stays_direct() {
    let mut s = direct_and_armed();
    // We stream, the peer sends nothing back, but its kernel answers each request.
    let sent = run_live(&mut s, 400, true, 0, 5_000);
    assert_eq!(s.ps.actual(), ActualPath::Direct);
    assert!(sent > 0, "suspect spells asked the peer");
    assert!(s.log.iter().all(|t| t.cause != Cause::LivenessLost));
}

/// A peer that never answered a liveness request keeps the counter rule, and for it anything
/// received is activity: its keepalives every 10 s keep a pair we send on from stalling.
#[test]
fn small_arrivals_keep_an_unarmed_pair_from_stalling() {
    let mut s = Sim::new(PlannedPath::Direct, true);
    s.handshake(DIRECT);
    run_live(&mut s, 8, false, 500, 500);
    assert!(!s.ps.liveness_armed());
    for step in 0..240 {
        let keepalive = if step % 40 == 39 { 32 } else { 0 };
        run_live(&mut s, 1, false, keepalive, 500);
    }
    assert_eq!(s.ps.actual(), ActualPath::Direct, "{:?}", s.log.last());
}

#[test]
fn peer_that_never_answers_keeps_the_counter_rule() {
    let mut s = Sim::new(PlannedPath::Direct, true);
    s.handshake(DIRECT);
    run_live(&mut s, 8, false, 500, 500);
    assert!(!s.ps.liveness_armed());
    let before = s.now;
    while s.ps.actual() == ActualPath::Direct && s.now - before < Duration::from_secs(30) {
        run_live(&mut s, 1, false, 0, 500);
    }
    // Not armed: the 15 s stall window decides, not the 1 s deadline.
    let took = s.now - before;
    assert_eq!(s.log.last().unwrap().cause, Cause::Stall);
    assert!(took >= Duration::from_secs(15), "took {took:?}");
}

#[test]
fn an_answer_read_late_still_saves_the_path() {
    let mut s = direct_and_armed();
    // Suspect, one request out...
    run_live(&mut s, 3, false, 0, 500);
    // ... and the agent is descheduled for 3 s; the answer is pending when it runs again.
    s.now += Duration::from_secs(3);
    s.ps.liveness_answered(s.now);
    if let Some(t) = s.ps.observe(&s.obs, s.now) {
        s.log.push(t);
    }
    assert_eq!(s.ps.actual(), ActualPath::Direct);
}

#[test]
fn no_fast_failover_while_a_new_direct_path_settles() {
    let mut s = direct_and_armed();
    // Back on the relay and up again by a probe...
    s.obs.endpoint = Some(RELAY.parse().unwrap());
    s.obs.via_relay = true;
    s.obs.last_handshake = Some(s.now);
    run_live(&mut s, 4, true, 500, 500);
    assert!(s.ps.fallback(), "{:?}", s.ps.phase());
    s.probe_back_to_direct();
    // ... and a 2 s silence right after the upgrade while the endpoints settle: no failover.
    run_live(&mut s, 8, false, 0, 500);
    assert_eq!(s.ps.actual(), ActualPath::Direct, "{:?}", s.log.last());
    // Silence past the settle time is a dead path again.
    run_live(&mut s, 24, false, 0, 500);
    assert_eq!(s.log.last().unwrap().cause, Cause::LivenessLost);
}
