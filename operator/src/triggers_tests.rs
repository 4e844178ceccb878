use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::watcher::Event;
use wirekube_crds::{
    ActualPath, NatType, PathReason, PeerConnection, WireKubePeer, WireKubePeerSpec,
};

use super::*;
use crate::test_objects::{node, peer_status, time};

fn base_node() -> Node {
    node("a", &[("InternalIP", "10.0.0.1")], &[("site", "x")])
}

fn base_peer() -> WireKubePeer {
    let mut p = WireKubePeer::new("a", WireKubePeerSpec::default());
    p.metadata.uid = Some("uid-a".into());
    p.metadata.generation = Some(1);
    let mut st = peer_status(
        "key-a",
        NatType::FullCone,
        "10.0.0.1:51820",
        Some("1.2.3.4:51820"),
    );
    st.connections = vec![PeerConnection {
        name: "b".into(),
        path: ActualPath::Direct,
        reason: Some(PathReason::ConeCone),
        ..PeerConnection::default()
    }];
    st.conditions = vec![Condition {
        type_: "Ready".into(),
        status: "True".into(),
        reason: "Reconciled".into(),
        message: String::new(),
        last_transition_time: time(1),
        observed_generation: Some(1),
    }];
    p.status = Some(st);
    p
}

/// One table row: what changes, the change, whether it triggers.
type Row<'a, K> = (&'a str, fn(&mut K), bool);

/// For each row `(what, edit, want)`: feeds `base` as an update, then `base` with `edit`
/// applied as an update, and checks whether the second triggers.
fn check_table<K: kube::Resource + Clone>(key: fn(&K) -> u64, base: &K, table: &[Row<'_, K>]) {
    for (what, edit, want) in table {
        let mut changed = base.clone();
        edit(&mut changed);
        let mut f = TriggerFilter::new(key);
        assert!(f.admit(Event::Apply(base.clone())).is_some(), "first sight");
        let got = f.admit(Event::Apply(changed)).is_some();
        assert_eq!(got, *want, "{what}");
    }
}

#[test]
fn node_updates_trigger_only_when_the_operator_reads_the_change() {
    type Edit = fn(&mut Node);
    let table: [(&str, Edit, bool); 6] = [
        ("nothing", |_| {}, false),
        (
            "a kubelet heartbeat",
            |n| {
                let st = n.status.get_or_insert_default();
                st.conditions = Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_heartbeat_time: Some(time(99)),
                    ..NodeCondition::default()
                }]);
            },
            false,
        ),
        (
            "an address",
            |n| {
                let st = n.status.get_or_insert_default();
                st.addresses.get_or_insert_default()[0].address = "10.0.0.2".into();
            },
            true,
        ),
        (
            "a label",
            |n| {
                n.metadata
                    .labels
                    .get_or_insert_default()
                    .insert("site".into(), "y".into());
            },
            true,
        ),
        (
            "a pod CIDR",
            |n| {
                n.spec = Some(NodeSpec {
                    pod_cidrs: Some(vec!["10.244.1.0/24".into()]),
                    ..NodeSpec::default()
                });
            },
            true,
        ),
        (
            "deletion started",
            |n| n.metadata.deletion_timestamp = Some(time(5)),
            true,
        ),
    ];
    check_table(node_key, &base_node(), &table);
}

#[test]
fn peer_updates_trigger_only_when_the_plan_or_the_mesh_status_reads_the_change() {
    type Edit = fn(&mut WireKubePeer);
    fn st(p: &mut WireKubePeer) -> &mut wirekube_crds::WireKubePeerStatus {
        p.status.get_or_insert_default()
    }
    let table: [(&str, Edit, bool); 12] = [
        ("nothing", |_| {}, false),
        (
            "transfer counters",
            |p| st(p).connections[0].rx_bytes = 9,
            false,
        ),
        (
            "round-trip time",
            |p| st(p).connections[0].rtt_micros = Some(7),
            false,
        ),
        (
            "the actual path",
            |p| st(p).connections[0].path = ActualPath::Relay,
            false,
        ),
        (
            "a handshake time",
            |p| st(p).connections[0].last_handshake = Some(time(3)),
            false,
        ),
        ("a fallback", |p| st(p).connections[0].fallback = true, true),
        (
            "a reason",
            |p| st(p).connections[0].reason = Some(PathReason::DirectFailed),
            true,
        ),
        (
            "the NAT type",
            |p| st(p).nat_type = NatType::Symmetric,
            true,
        ),
        (
            "a candidate",
            |p| st(p).candidates[0].address = "10.0.0.9:51820".into(),
            true,
        ),
        ("the key", |p| st(p).public_key = Some("key-b".into()), true),
        (
            "readiness",
            |p| st(p).conditions[0].status = "False".into(),
            true,
        ),
        ("a spec write", |p| p.metadata.generation = Some(2), true),
    ];
    check_table(peer_key, &base_peer(), &table);
}

#[test]
fn lists_and_deletions_always_trigger_and_reset_what_was_seen() {
    let mut f = TriggerFilter::new(node_key);
    let n = base_node();
    assert!(f.admit(Event::Init).is_none());
    assert!(f.admit(Event::InitApply(n.clone())).is_some());
    assert!(f.admit(Event::InitDone).is_none());
    // Seen in the list: an identical update is nothing new.
    assert!(f.admit(Event::Apply(n.clone())).is_none());
    // A re-list passes every object again, changed or not.
    assert!(f.admit(Event::InitApply(n.clone())).is_some());
    assert!(f.admit(Event::Delete(n.clone())).is_some());
    // A node of the same name and uid that comes back is new again.
    assert!(f.admit(Event::Apply(n.clone())).is_some());
    // Objects are told apart by uid.
    let mut other = n.clone();
    other.metadata.uid = Some("uid-other".into());
    assert!(f.admit(Event::Apply(other)).is_some());
}
