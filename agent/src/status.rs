//! Status helpers (pure): condition times, when a status is worth a write, and the apply body;
//! the status itself is built by `crate::step::report`.
//!
//! The agent patches its status only when something meaningful changed, plus a slow heartbeat
//! that refreshes the volatile fields (byte counters, handshake times). Comparing those on
//! every 1 s stats tick would mean a write per second per node.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

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

/// The fields in which `new` differs from `old`, counted over the connections
/// (`connections.rttMicros×3 natType`), for the log line of a status write.
pub fn changed_fields(old: Option<&WireKubePeerStatus>, new: &WireKubePeerStatus) -> String {
    let Some(old) = old else {
        return "first".into();
    };
    let mut out: Vec<String> = Vec::new();
    let mut top = |name: &str, differs: bool| {
        if differs {
            out.push(name.into());
        }
    };
    top("publicKey", old.public_key != new.public_key);
    top("candidates", old.candidates != new.candidates);
    top("natType", old.nat_type != new.nat_type);
    top("publicIP", old.public_ip != new.public_ip);
    top("engine", old.engine != new.engine);
    top("conditions", old.conditions != new.conditions);
    top(
        "observedGeneration",
        old.observed_generation != new.observed_generation,
    );
    let mut per_conn: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &new.connections {
        let Some(o) = old.connections.iter().find(|o| o.name == c.name) else {
            *per_conn.entry("added").or_default() += 1;
            continue;
        };
        let fields = [
            ("path", o.path != c.path),
            ("reason", o.reason != c.reason),
            ("endpoint", o.endpoint != c.endpoint),
            (
                "lastHandshake",
                o.last_handshake.is_some() != c.last_handshake.is_some(),
            ),
            ("fallback", o.fallback != c.fallback),
            ("transitions", o.transitions != c.transitions),
            ("rttMicros", o.rtt_micros != c.rtt_micros),
        ];
        for (name, differs) in fields {
            if differs {
                *per_conn.entry(name).or_default() += 1;
            }
        }
    }
    let removed = (old.connections.iter())
        .filter(|o| !new.connections.iter().any(|c| c.name == o.name))
        .count();
    if removed > 0 {
        per_conn.insert("removed", removed);
    }
    out.extend(per_conn.iter().map(|(k, n)| format!("connections.{k}×{n}")));
    out.join(" ")
}

/// A change that only moves round-trip times waits this long after the last write (or rides
/// along with the next other change). The first RTT samples of a node's peers come one by
/// one over its first 10 s; written each at once, they were a third of the 30-node lab's
/// status writes during its start-up, and the API server was the bottleneck.
pub const RTT_ONLY_EVERY: Duration = Duration::from_secs(30);

/// The status without round-trip times, for comparison.
fn without_rtt(mut s: WireKubePeerStatus) -> WireKubePeerStatus {
    for c in &mut s.connections {
        c.rtt_micros = None;
    }
    s
}

/// A change that only moves `observedGeneration` (the status's and its conditions': the spec
/// moved, nothing this node reports did) waits this long after the last write, or rides along
/// with the next other change. During the 30-node lab's start-up the operator wrote each spec
/// four or five times in 10 s, and each new generation was a status write of its own (about a
/// third of them); the status still says which generation it reflects within this bound.
pub const GENERATION_ONLY_WAIT: Duration = Duration::from_secs(5);

/// The status without observed generations, for comparison.
fn without_generation(mut s: WireKubePeerStatus) -> WireKubePeerStatus {
    s.observed_generation = None;
    for c in &mut s.conditions {
        c.observed_generation = None;
    }
    s
}

/// Whether `new` is to be written, given the status last written and when: always the first,
/// then on a significant change at once, on a change of observed generations only after
/// [`GENERATION_ONLY_WAIT`], of round-trip times only after [`RTT_ONLY_EVERY`], and otherwise
/// once `heartbeat` has passed.
pub fn write_due(
    last: Option<(&WireKubePeerStatus, Instant)>,
    new: &WireKubePeerStatus,
    now: Instant,
    heartbeat: Duration,
) -> bool {
    let Some((old, at)) = last else {
        return true;
    };
    let (old, new) = (stable_view(old), stable_view(new));
    let since = now.duration_since(at);
    if old == new {
        return since >= heartbeat;
    }
    let (old, new) = (without_rtt(old), without_rtt(new));
    if old == new {
        since >= RTT_ONLY_EVERY.min(heartbeat)
    } else if without_generation(old) == without_generation(new) {
        since >= GENERATION_ONLY_WAIT.min(heartbeat)
    } else {
        true
    }
}

/// Whether `new` replaces the write of `in_flight` still waiting on the API server: when it
/// moves a connection's path or reason (one already in the write changed, or one the write
/// lacks is already up). New peers still `Connecting` or `Down`, round-trip times, counters
/// and conditions wait for the write in flight, as any other change does.
///
/// Why: on a loaded API server a status write waits seconds in its queue, and a handshake
/// that completes just after it was sent was reported only by the next write, seconds
/// later again (50-node lab). Dropping the waiting request takes it out of the API server's
/// queue unexecuted (docs/agent.md, "Status writes").
pub fn replaces_in_flight(in_flight: &WireKubePeerStatus, new: &WireKubePeerStatus) -> bool {
    let before: BTreeMap<&str, &PeerConnection> = in_flight
        .connections
        .iter()
        .map(|c| (c.name.as_str(), c))
        .collect();
    new.connections
        .iter()
        .any(|c| match before.get(c.name.as_str()) {
            Some(o) => (o.path, o.reason) != (c.path, c.reason),
            None => matches!(c.path, ActualPath::Direct | ActualPath::Relay),
        })
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

    fn ready_at_generation(generation: i64) -> Condition {
        Condition {
            type_: ct::READY.into(),
            status: "True".into(),
            reason: "Up".into(),
            message: String::new(),
            observed_generation: Some(generation),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }
    }

    /// Written at once (no heartbeat, no RTT wait).
    fn significant_change(old: Option<&WireKubePeerStatus>, new: &WireKubePeerStatus) -> bool {
        let t = Instant::now();
        write_due(old.map(|o| (o, t)), new, t, Duration::from_secs(60))
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
    fn write_due_first_on_change_and_on_heartbeat() {
        let beat = Duration::from_secs(60);
        let t0 = Instant::now();
        let a = WireKubePeerStatus {
            observed_generation: Some(1),
            conditions: vec![ready_at_generation(1)],
            connections: vec![conn("x", ActualPath::Direct)],
            ..Default::default()
        };
        let mut counters = a.clone();
        counters.connections[0].rx_bytes = 7;
        let mut moved = a.clone();
        moved.connections[0].path = ActualPath::Relay;
        let mut rtt = a.clone();
        rtt.connections[0].rtt_micros = Some(900);
        let mut rtt_and_moved = rtt.clone();
        rtt_and_moved.connections[0].path = ActualPath::Relay;
        let next_gen = WireKubePeerStatus {
            observed_generation: Some(2),
            conditions: vec![ready_at_generation(2)],
            ..a.clone()
        };
        let mut next_gen_and_rtt = next_gen.clone();
        next_gen_and_rtt.connections[0].rtt_micros = Some(900);
        let mut next_gen_and_moved = next_gen.clone();
        next_gen_and_moved.connections[0].path = ActualPath::Relay;
        let cases = [
            ("never written", None, &a, Duration::ZERO, true),
            ("same, at once", Some((&a, t0)), &a, Duration::ZERO, false),
            (
                "counters only",
                Some((&a, t0)),
                &counters,
                Duration::from_secs(59),
                false,
            ),
            (
                "counters, heartbeat due",
                Some((&a, t0)),
                &counters,
                beat,
                true,
            ),
            ("same, heartbeat due", Some((&a, t0)), &a, beat, true),
            (
                "path changed, at once",
                Some((&a, t0)),
                &moved,
                Duration::ZERO,
                true,
            ),
            (
                "rtt only, at once",
                Some((&a, t0)),
                &rtt,
                Duration::ZERO,
                false,
            ),
            (
                "rtt only, just before",
                Some((&a, t0)),
                &rtt,
                RTT_ONLY_EVERY - Duration::from_millis(1),
                false,
            ),
            (
                "rtt only, when due",
                Some((&a, t0)),
                &rtt,
                RTT_ONLY_EVERY,
                true,
            ),
            (
                "rtt and path, at once",
                Some((&a, t0)),
                &rtt_and_moved,
                Duration::ZERO,
                true,
            ),
            (
                "rtt gone with the path",
                Some((&rtt, t0)),
                &moved,
                Duration::ZERO,
                true,
            ),
            (
                "generation only, at once",
                Some((&a, t0)),
                &next_gen,
                Duration::ZERO,
                false,
            ),
            (
                "generation only, just before",
                Some((&a, t0)),
                &next_gen,
                GENERATION_ONLY_WAIT - Duration::from_millis(1),
                false,
            ),
            (
                "generation only, when due",
                Some((&a, t0)),
                &next_gen,
                GENERATION_ONLY_WAIT,
                true,
            ),
            (
                "generation and rtt, when the generation is due",
                Some((&a, t0)),
                &next_gen_and_rtt,
                GENERATION_ONLY_WAIT,
                true,
            ),
            (
                "generation and path, at once",
                Some((&a, t0)),
                &next_gen_and_moved,
                Duration::ZERO,
                true,
            ),
        ];
        for (name, last, new, after, want) in cases {
            assert_eq!(write_due(last, new, t0 + after, beat), want, "{name}");
        }
    }

    #[test]
    fn changed_fields_names_what_moved() {
        let a = WireKubePeerStatus {
            connections: vec![conn("x", ActualPath::Direct), conn("y", ActualPath::Direct)],
            ..Default::default()
        };
        let mut b = a.clone();
        b.nat_type = NatType::Symmetric;
        b.connections[0].rtt_micros = Some(900);
        b.connections[1].rtt_micros = Some(800);
        b.connections[1].path = ActualPath::Relay;
        b.connections.push(conn("z", ActualPath::Relay));
        assert_eq!(changed_fields(None, &a), "first");
        assert_eq!(changed_fields(Some(&a), &a), "");
        assert_eq!(
            changed_fields(Some(&a), &b),
            "natType connections.added×1 connections.path×1 connections.rttMicros×2"
        );
        assert_eq!(
            changed_fields(Some(&b), &a),
            "natType connections.path×1 connections.removed×1 connections.rttMicros×2"
        );
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
    fn only_a_path_or_reason_replaces_the_write_in_flight() {
        use ActualPath::{Connecting, Direct, Down, Relay};
        let with = |conns: Vec<PeerConnection>| WireKubePeerStatus {
            connections: conns,
            ..Default::default()
        };
        let flying = with(vec![conn("a", Connecting), conn("b", Direct)]);
        let reason = |mut c: PeerConnection, r| {
            c.reason = Some(r);
            c
        };
        let rtt = |mut c: PeerConnection| {
            c.rtt_micros = Some(900);
            c.rx_bytes = 5;
            c
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<PeerConnection>, bool)> = vec![
            ("the same",                      vec![conn("a", Connecting), conn("b", Direct)], false),
            ("a handshake",                   vec![conn("a", Direct), conn("b", Direct)], true),
            ("a fallback",                    vec![conn("a", Connecting), conn("b", Relay)], true),
            ("a peer down",                   vec![conn("a", Connecting), conn("b", Down)], true),
            ("a reason",                      vec![conn("a", Connecting), reason(conn("b", Direct), PathReason::SameSite)], true),
            ("rtt and counters",              vec![conn("a", Connecting), rtt(conn("b", Direct))], false),
            ("a new peer connecting",         vec![conn("a", Connecting), conn("b", Direct), conn("c", Connecting)], false),
            ("a new peer without a key",      vec![conn("a", Connecting), conn("b", Direct), conn("c", Down)], false),
            ("a new peer already up",         vec![conn("a", Connecting), conn("b", Direct), conn("c", Relay)], true),
            ("a peer removed",                vec![conn("b", Direct)], false),
            ("reordered",                     vec![conn("b", Direct), conn("a", Connecting)], false),
        ];
        for (name, conns, want) in cases {
            assert_eq!(replaces_in_flight(&flying, &with(conns)), want, "{name}");
        }
        let mut conditions_only = flying.clone();
        conditions_only.conditions = vec![ready_at_generation(2)];
        conditions_only.nat_type = NatType::Symmetric;
        assert!(!replaces_in_flight(&flying, &conditions_only));
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
