//! Status helpers (pure): condition times, the significant-change diff and the apply body;
//! the status itself is built by `crate::step::report`.
//!
//! The agent patches its status only when something meaningful changed, plus a slow heartbeat
//! that refreshes the volatile fields (byte counters, handshake times). Comparing those on
//! every 1 s stats tick would mean a write per second per node.

use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use wirekube_crds::{ActualPath, PeerConnection, PeerSummary, WireKubePeerStatus};

/// Kubernetes times have one-second resolution on the wire; truncating here keeps a
/// read-back status equal to what was written.
pub fn to_time(t: SystemTime) -> Time {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// A condition as computed now, before merging with the previous one (the API types' [`Cond`]).
///
/// [`Cond`]: wirekube_crds::Cond
pub use wirekube_crds::Cond as CondInput;

/// Builds conditions, keeping `lastTransitionTime` from `old` when the status value did not
/// change (`wirekube_crds::condition::conditions`).
pub fn conditions(
    old: &[Condition],
    inputs: Vec<CondInput>,
    generation: Option<i64>,
    now: SystemTime,
) -> Vec<Condition> {
    wirekube_crds::condition::conditions(old, inputs, generation, &to_time(now))
}

pub fn summary(conns: &[PeerConnection]) -> PeerSummary {
    let mut s = PeerSummary::default();
    for c in conns {
        match c.path {
            ActualPath::Direct => s.direct += 1,
            ActualPath::Relay => s.relay += 1,
            ActualPath::Connecting => s.connecting += 1,
            ActualPath::Down => s.down += 1,
        }
    }
    s
}

/// The status with volatile fields blanked, for comparison.
fn stable_view(s: &WireKubePeerStatus) -> WireKubePeerStatus {
    let mut v = s.clone();
    for c in &mut v.connections {
        c.rx_bytes = 0;
        c.tx_bytes = 0;
        // A handshake appearing or disappearing matters; its exact time (every 2 min) not.
        c.last_handshake = c
            .last_handshake
            .as_ref()
            .map(|_| Time(Timestamp::UNIX_EPOCH));
    }
    v
}

/// True when `new` differs from `old` in anything but counters and handshake times.
pub fn significant_change(old: Option<&WireKubePeerStatus>, new: &WireKubePeerStatus) -> bool {
    match old {
        None => true,
        Some(old) => stable_view(old) != stable_view(new),
    }
}

/// The server-side apply body for the status subresource.
pub fn apply_body(name: &str, status: &WireKubePeerStatus) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": format!("{}/{}", wirekube_crds::GROUP, wirekube_crds::VERSION),
        "kind": "WireKubePeer",
        "metadata": { "name": name },
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use wirekube_crds::{NatType, PathReason, conditions as ct};

    fn conn(name: &str, path: ActualPath) -> PeerConnection {
        PeerConnection {
            name: name.into(),
            path,
            reason: Some(PathReason::ConeCone),
            endpoint: Some("198.18.0.31:51820".into()),
            ..Default::default()
        }
    }

    #[test]
    fn counters_and_handshake_times_are_not_significant() {
        let mut a = WireKubePeerStatus {
            nat_type: NatType::FullCone,
            connections: vec![conn("x", ActualPath::Direct)],
            ..Default::default()
        };
        a.connections[0].last_handshake = Some(to_time(SystemTime::now()));
        let mut b = a.clone();
        b.connections[0].rx_bytes = 1000;
        b.connections[0].tx_bytes = 2000;
        b.connections[0].last_handshake =
            Some(to_time(SystemTime::now() + Duration::from_secs(120)));
        assert!(!significant_change(Some(&a), &b));
        b.connections[0].path = ActualPath::Relay;
        assert!(significant_change(Some(&a), &b));
        let mut c = a.clone();
        c.connections[0].last_handshake = None;
        assert!(significant_change(Some(&a), &c));
        let mut d = a.clone();
        d.nat_type = NatType::Symmetric;
        assert!(significant_change(Some(&a), &d));
        assert!(significant_change(None, &a));
    }

    #[test]
    fn condition_transition_time_kept_until_status_flips() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t1 = t0 + Duration::from_secs(60);
        let c0 = conditions(
            &[],
            vec![CondInput::new(ct::STUN_REACHABLE, true, "Answered", "ok")],
            Some(1),
            t0,
        );
        let c1 = conditions(
            &c0,
            vec![CondInput::new(
                ct::STUN_REACHABLE,
                true,
                "Answered",
                "ok again",
            )],
            Some(2),
            t1,
        );
        assert_eq!(c1[0].last_transition_time, to_time(t0));
        assert_eq!(c1[0].observed_generation, Some(2));
        let c2 = conditions(
            &c1,
            vec![CondInput::new(
                ct::STUN_REACHABLE,
                false,
                "NoAnswer",
                "down",
            )],
            Some(2),
            t1,
        );
        assert_eq!(c2[0].status, "False");
        assert_eq!(c2[0].last_transition_time, to_time(t1));
    }

    #[test]
    fn summary_counts_paths_and_apply_body_is_status_only() {
        let conns = vec![
            conn("a", ActualPath::Direct),
            conn("b", ActualPath::Relay),
            conn("c", ActualPath::Relay),
            conn("d", ActualPath::Down),
        ];
        let s = summary(&conns);
        assert_eq!((s.direct, s.relay, s.connecting, s.down), (1, 2, 0, 1));
        let st = WireKubePeerStatus {
            observed_generation: Some(3),
            connections: conns,
            summary: s,
            ..Default::default()
        };
        let body = apply_body("node-a", &st);
        assert_eq!(body["apiVersion"], "wirekube.io/v1alpha1");
        assert_eq!(body["kind"], "WireKubePeer");
        assert!(body.get("spec").is_none());
        assert_eq!(body["status"]["observedGeneration"], 3);
        assert_eq!(body["status"]["connections"][1]["path"], "relay");
    }
}
