//! When discovery runs outside its periodic re-check (pure, table-tested): the agent's first
//! rounds before WireGuard binds its port, and re-checks after a direct path failed.

use std::time::{Duration, Instant};

/// How long the agent's first discovery may keep the WireGuard port unbound while STUN stays
/// silent, when nothing says why (the relay is not reachable over TCP either: the agents of a
/// new cluster start before the relay pod is ready and its address routed).
pub const FIRST_DISCOVERY_GRACE: Duration = Duration::from_secs(30);

/// What the agent does after a round of its first discovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstRound {
    /// A server answered (or the round could not run from the WireGuard port anyway, after a
    /// restart): done, the dataplane may bind the port.
    Done,
    /// No answer, but the relay's TCP connection was authenticated before the round's last
    /// request ([`relay_up_for_round`]): the relay is up and reachable, its STUN responder is
    /// the same process, so it is this node's UDP that is blocked. Waiting longer would only
    /// delay the relay path.
    UdpBlocked,
    /// No answer for [`FIRST_DISCOVERY_GRACE`]: bind anyway.
    GraceOver,
    /// No answer yet: keep the port unbound and ask again.
    Retry,
}

/// Decides after one round of the first discovery. `from_listen_port`: the round ran from the
/// WireGuard port (the only time its mapping can be measured); `relay_up`: the relay client
/// was connected and authenticated before the round's last request
/// ([`relay_up_for_round`]); `since_start`: since the agent started.
pub fn after_first_round(
    answered: bool,
    from_listen_port: bool,
    relay_up: bool,
    since_start: Duration,
) -> FirstRound {
    if answered || !from_listen_port {
        FirstRound::Done
    } else if relay_up {
        FirstRound::UdpBlocked
    } else if since_start >= FIRST_DISCOVERY_GRACE {
        FirstRound::GraceOver
    } else {
        FirstRound::Retry
    }
}

/// Whether the relay was up for a silent first round: connected and authenticated no later
/// than the round's last request went out (`last_send` after the round started), and still
/// connected (`connected_since` is `None` otherwise). That request then went to a relay whose
/// STUN responder, the same process, was serving. Judged at the round's start instead, a
/// TCP-only node whose relay connection came up a few milliseconds into the round waited for
/// one more silent round: 2.75 s of its start-up (20-node grid, session 9).
pub fn relay_up_for_round(
    connected_since: Option<Instant>,
    round_started: Instant,
    last_send: Duration,
) -> bool {
    connected_since.is_some_and(|t| t <= round_started + last_send)
}

/// After a direct path failed (liveness, stall, or the peer moved to the relay) the agent
/// re-checks its NAT at once instead of at the next periodic round: a NAT gateway that
/// rebooted onto a new public IP broke every direct pair, and its new address was published
/// only by the periodic re-check, up to `--discovery-interval` (300 s) later. Not more often
/// than this.
pub const RECHECK_MIN_GAP: Duration = Duration::from_secs(10);

/// For this long after such a failure, a round in which no STUN server answered is retried
/// after [`super::RETRY_FIRST`] instead of being published: a gateway that is still rebooting would
/// otherwise make the node `udp-blocked` for a moment, and the operator re-plan every pair
/// with it (a burst of writes for a passing outage).
pub const RECHECK_WINDOW: Duration = Duration::from_secs(60);

/// Whether a direct-path failure now triggers a NAT re-check.
pub fn recheck_now(
    direct_failed: bool,
    last: Option<std::time::Instant>,
    now: std::time::Instant,
) -> bool {
    direct_failed && last.is_none_or(|t| now.saturating_duration_since(t) >= RECHECK_MIN_GAP)
}

/// What to do with a finished discovery round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundVerdict {
    Publish,
    /// Drop it and run another round after this long.
    RetryIn(Duration),
}

/// Whether a finished round is published or dropped and retried. `window_left` is what remains
/// of [`RECHECK_WINDOW`] after a failure-triggered re-check (`None` outside it).
///
/// Inside the window, a silent round is retried soon (a gateway still rebooting), and a round
/// that answered but classifies the NAT differently from the published type is held until
/// the window is over: the re-check exists to publish a *new address* quickly, and a round
/// taken while the path is broken (a cut that also drops some STUN answers, a gateway that
/// lost and rebuilds its mappings) has read a full cone as "mapping differs per destination",
/// which re-planned every pair of the node onto the relay (fault suite, UDP cut). A real type
/// change is published by the first round after the window instead.
pub fn judge_round(
    answered: bool,
    window_left: Option<Duration>,
    type_changed: bool,
) -> RoundVerdict {
    match window_left {
        None => RoundVerdict::Publish,
        Some(_) if !answered => RoundVerdict::RetryIn(super::RETRY_FIRST),
        Some(left) if type_changed => RoundVerdict::RetryIn(left + Duration::from_secs(1)),
        Some(_) => RoundVerdict::Publish,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_discovery_waits_for_stun_only_while_the_relay_is_unreachable_too() {
        use FirstRound::*;
        let s = Duration::from_secs;
        // (answered, from the WireGuard port, relay up for the round, since start) -> step
        for (answered, from_port, relay_up, since, want) in [
            (true, true, false, s(1), Done),
            (true, true, true, s(1), Done),
            // After a restart the port is bound already: nothing to measure, go on.
            (false, false, false, s(1), Done),
            // Silent STUN, relay not reachable either (relay pod not ready): wait...
            (false, true, false, s(3), Retry),
            (false, true, false, s(29), Retry),
            // ... up to the grace.
            (false, true, false, s(30), GraceOver),
            // Silent STUN while the relay answers over TCP: UDP is blocked here, at once.
            (false, true, true, s(3), UdpBlocked),
            (false, true, true, s(40), UdpBlocked),
        ] {
            assert_eq!(
                after_first_round(answered, from_port, relay_up, since),
                want,
                "answered {answered}, from port {from_port}, relay up {relay_up}, {since:?}"
            );
        }
    }

    #[test]
    fn the_relay_counts_as_up_when_it_was_before_the_last_request() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let last = ms(1750);
        // (connected since, relative to the round's start) -> up for the round
        for (since, want) in [
            (None, false),
            // Up before the round, or during it before the last request went out.
            (Some(t0 - ms(5000)), true),
            (Some(t0), true),
            (Some(t0 + ms(3)), true),
            (Some(t0 + ms(1750)), true),
            // Up only after the last request: its silence proves nothing.
            (Some(t0 + ms(1751)), false),
            (Some(t0 + ms(2700)), false),
        ] {
            assert_eq!(relay_up_for_round(since, t0, last), want, "{since:?}");
        }
        assert_eq!(crate::discovery::Retransmit::default().last_send(), last);
    }

    #[test]
    fn a_failed_direct_path_rechecks_the_nat_at_most_every_ten_seconds() {
        let t0 = std::time::Instant::now();
        let s = Duration::from_secs;
        // (a direct path failed, last triggered re-check, now) -> re-check
        for (failed, last, now, want) in [
            (false, None, t0, false),
            (true, None, t0, true),
            (true, Some(t0), t0 + s(9), false),
            (true, Some(t0), t0 + s(10), true),
            (false, Some(t0), t0 + s(60), false),
        ] {
            assert_eq!(
                recheck_now(failed, last, now),
                want,
                "{failed} {last:?} {now:?}"
            );
        }
    }

    #[test]
    fn rounds_inside_the_recheck_window_publish_a_new_address_but_not_a_new_nat_type() {
        use RoundVerdict::*;
        let s = Duration::from_secs;
        // (answered, window left, NAT type differs from the published one) -> verdict
        for (answered, left, changed, want) in [
            // Outside the window every round is published, silent or not.
            (true, None, false, Publish),
            (true, None, true, Publish),
            (false, None, false, Publish),
            (false, None, true, Publish),
            // Inside: a silent round is retried soon ...
            (
                false,
                Some(s(50)),
                false,
                RetryIn(super::super::RETRY_FIRST),
            ),
            (false, Some(s(50)), true, RetryIn(super::super::RETRY_FIRST)),
            // ... an answered one with the same type publishes (a new public address) ...
            (true, Some(s(50)), false, Publish),
            // ... and a changed type waits for the first round after the window.
            (true, Some(s(50)), true, RetryIn(s(51))),
            (true, Some(Duration::ZERO), true, RetryIn(s(1))),
        ] {
            assert_eq!(
                judge_round(answered, left, changed),
                want,
                "answered {answered}, left {left:?}, changed {changed}"
            );
        }
    }
}
