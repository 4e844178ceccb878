//! The timing of the path state machine (`crate::pathstate`): its knobs and the fixed
//! durations they are derived from.

use std::time::{Duration, Instant};

use crate::liveness::LivenessTiming;

/// WireGuard's REJECT_AFTER_TIME: after this, a session's keys are dead, so a handshake older
/// than this proves nothing about the current path.
pub const HANDSHAKE_FRESH: Duration = Duration::from_secs(180);

/// Longest probe of a fallen-back path. A path that works shows it within a round trip plus
/// one 250 ms sample after the first 300 ms trigger; the rest is slack for a loaded machine.
/// Both ends start together whatever their clocks say (the probe announcement,
/// `reconcile/probe_signal.rs`), so no slack for clock skew is needed. Every probe of a path
/// that is still broken loses the pair's traffic for this long (docs/agent.md).
pub const PROBE_WINDOW_MAX: Duration = Duration::from_secs(3);

/// A probe that received nothing at all for this long ends before its window. A working
/// path shows itself within a round trip of the first 300 ms trigger (the peer probes with
/// us, so its triggers arrive too), and every second a probe of a broken path lasts loses the
/// pair's traffic (the NAT-reboot fault lost 51 pings with 3 s probes). Anything arriving,
/// even through the relay (the peer not probing yet), keeps the whole window.
pub const PROBE_SILENT_MAX: Duration = Duration::from_millis(1500);

/// Whether a probe that started at `since` is over (failed) at `now`; `last_rx`: when
/// anything last arrived from the peer.
pub(crate) fn probe_over(t: &Timing, since: Instant, last_rx: Instant, now: Instant) -> bool {
    let spent = now.saturating_duration_since(since);
    spent >= t.probe_window || (last_rx <= since && spent >= PROBE_SILENT_MAX)
}

/// Default wait before the first probe after a fallback (`--probe-interval`): a pair whose
/// path comes back returns within one to one and a half of it (the target is 30 s).
pub const PROBE_MIN_DEFAULT: Duration = Duration::from_secs(10);

/// Extra time a hole-punched pair (cone ↔ cone, cone ↔ symmetric) gets to connect before it
/// falls back: one more of WireGuard's handshake retries (REKEY_TIMEOUT, 5 s, plus up to a
/// third of a second of jitter) and a second of scheduling slack. Such a pair typically needs
/// one retry for the punch (the first initiation meets a closed filter) and another when that
/// initiation reached a peer whose agent had not configured us yet (docs/lab-findings.md
/// §7.10), so its handshake lands near 10 s, right at the default `directTimeout`; falling
/// back then parked it on the relay until the first probe slot, 30-60 s later.
pub const PUNCH_GRACE: Duration = Duration::from_secs(6);

/// Timing knobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub direct_timeout: Duration,
    /// First wait before probing direct again after a fallback.
    pub probe_min: Duration,
    /// Longest wait between probes (`probe_min * 2^k`, see the module docs).
    pub probe_max: Duration,
    /// How long one probe waits for direct traffic before returning to the relay.
    pub probe_window: Duration,
    /// A direct path must last this long before the probe backoff resets.
    pub stable_after: Duration,
    /// Fast loss detection on direct paths.
    pub liveness: LivenessTiming,
}

impl Timing {
    pub fn new(direct_timeout: Duration) -> Self {
        Self::with_probe_min(direct_timeout, PROBE_MIN_DEFAULT)
    }

    pub fn with_probe_min(direct_timeout: Duration, probe_min: Duration) -> Self {
        let probe_min = probe_min.max(Duration::from_secs(1));
        Self {
            direct_timeout,
            probe_min,
            probe_max: probe_min * 8,
            probe_window: direct_timeout.min(PROBE_WINDOW_MAX),
            stable_after: Duration::from_secs(300).max(probe_min * 8),
            liveness: LivenessTiming::DEFAULT,
        }
    }

    /// How long nothing may arrive while we keep sending before a direct path is declared
    /// stalled. WireGuard answers data with a passive keepalive 10 s after it last sent
    /// anything, so 15 s of silence while sending means the return path is broken. (12 s was
    /// tried and gave a false stall in the seed-4 lab under CI load: an idle NATed→public
    /// pair whose only traffic was our own small packets.)
    pub(crate) fn stall_window(&self) -> Duration {
        self.direct_timeout.max(Duration::from_secs(15))
    }
}

/// Bytes sent without anything received that make a direct pair suspect: more than one
/// keepalive (32 B) or a lone TCP ACK, so idle pairs never trigger liveness requests.
pub(crate) const SUSPECT_MIN_TX: u64 = 96;

/// What a peer sends on its own while our packets do not reach it, in one suspect spell: its
/// RTT request (~96 B), a handshake initiation (148 B) and a keepalive (32 B). Up to this much
/// received since an armed peer's spell began does not end it: under one-way loss these are no
/// answers, and ending the spell on them restarted the 1 s deadline. A path that carries our
/// traffic answers with more, or answers the liveness request itself.
pub(crate) const PEER_CHATTER_MAX: u64 = 320;
