//! The spec's peers → the per-peer paths the agent keeps: which carry on, which start over
//! (a key changed), which are adopted from a previous run of the agent, which go.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wirekube_crds::{WireKubePeerSpec, duration::parse_duration};
use wirekube_relay_proto::PublicKey;

use super::PeerPath;
use crate::pathstate::{PathState, Timing, Transition, WallClock};
use crate::rtt::Rtt;
use crate::spec::PeerTarget;

/// `directTimeout` when the spec's value does not parse.
const DIRECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// The state machines' timing: the spec's `directTimeout` and the agent's probe flag.
pub fn path_timing(spec: &WireKubePeerSpec, probe_min: Duration) -> Timing {
    Timing::with_probe_min(
        parse_duration(&spec.direct_timeout).unwrap_or(DIRECT_TIMEOUT_DEFAULT),
        probe_min,
    )
}

/// What a peer of a new spec does with the path state kept for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerUpdate {
    /// Same key: the state carries on.
    Keep,
    /// New to this agent: an existing recent handshake on the interface (an agent restart
    /// that kept the interface) is evidence for the path (`PathState::new`).
    Adopt,
    /// The peer's key changed, or ours was generated at this start: sessions on the interface
    /// belong to the old key and prove nothing (`PathState::fresh`). Keeping the old state
    /// instead read the new WireGuard peer's zeroed counters and missing handshake as "keys
    /// expired while sending", stalled every pair with the node onto the relay and doubled
    /// their probe backoff.
    Fresh,
}

pub fn peer_update(
    kept_key: Option<&PublicKey>,
    key: &PublicKey,
    own_key_created: bool,
) -> PeerUpdate {
    match kept_key {
        Some(k) if k == key => PeerUpdate::Keep,
        Some(_) => PeerUpdate::Fresh,
        None if own_key_created => PeerUpdate::Fresh,
        None => PeerUpdate::Adopt,
    }
}

/// Agent settings that shape new paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathSettings {
    pub timing: Timing,
    /// This agent generated its key at this start (no key on disk).
    pub own_key_created: bool,
    /// Test only: seconds added to the system clock for probe slots.
    pub clock_offset_secs: i64,
}

/// Something [`apply_targets`] did that the reconcile layer logs or counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetEvent {
    /// The peer's key changed: its path (and its liveness socket) start over.
    KeyChanged(String),
    /// A changed plan moved the peer's path.
    Transition(String, Transition),
}

/// Brings `paths` in line with the spec's `targets` at `now`: peers no longer listed go,
/// new ones start (adopted or fresh, see [`PeerUpdate`]; probe slots on `now_sys`), kept ones take the new plan and
/// timing, and a changed direct endpoint retries a failed direct path.
pub fn apply_targets(
    paths: &mut BTreeMap<String, PeerPath>,
    targets: &[PeerTarget],
    settings: PathSettings,
    now: Instant,
    now_sys: SystemTime,
) -> Vec<TargetEvent> {
    let mut events = Vec::new();
    paths.retain(|name, _| targets.iter().any(|t| &t.name == name));
    for t in targets {
        let kept = paths.get(&t.name).map(|p| &p.target.key);
        let update = peer_update(kept, &t.key, settings.own_key_created);
        if update == PeerUpdate::Fresh && paths.remove(&t.name).is_some() {
            events.push(TargetEvent::KeyChanged(t.name.clone()));
        }
        match paths.get_mut(&t.name) {
            Some(p) => {
                p.state.set_timing(settings.timing);
                if let Some(tr) = p.state.set_plan(t.plan, now) {
                    events.push(TargetEvent::Transition(t.name.clone(), tr));
                }
                if p.target.direct_endpoint != t.direct_endpoint {
                    let new_ip = match (p.target.direct_endpoint, t.direct_endpoint) {
                        (Some(old), Some(new)) => old.ip() != new.ip(),
                        (old, new) => old.is_none() && new.is_some(),
                    };
                    p.state.retry_direct(now, new_ip);
                    p.endpoint_planned_at = now_sys;
                }
                p.target = t.clone();
            }
            None => {
                paths.insert(t.name.clone(), new_path(t, update, settings, now, now_sys));
            }
        }
    }
    events
}

fn new_path(
    t: &PeerTarget,
    update: PeerUpdate,
    settings: PathSettings,
    now: Instant,
    now_sys: SystemTime,
) -> PeerPath {
    let mut state = if update == PeerUpdate::Adopt {
        PathState::new(settings.timing, t.plan, now)
    } else {
        PathState::fresh(settings.timing, t.plan, now)
    };
    // Probe slots are multiples of the backoff in Unix time (crate::pathstate).
    let unix = now_sys.duration_since(UNIX_EPOCH).unwrap_or_default();
    state.set_clock(WallClock::new(now, unix).shifted(settings.clock_offset_secs));
    PeerPath {
        target: t.clone(),
        state,
        last_trigger: None,
        rtt: Rtt::default(),
        endpoint_planned_at: now_sys,
    }
}
