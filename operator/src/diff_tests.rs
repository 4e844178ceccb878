use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use wirekube_crds::PeerEntry;

use super::*;
use crate::fixtures::labels;

fn spec(peers: &[(&str, PlannedPath, PathReason)]) -> WireKubePeerSpec {
    WireKubePeerSpec {
        mesh: "m".into(),
        peers: peers
            .iter()
            .map(|(n, p, r)| PeerEntry {
                name: n.to_string(),
                path: *p,
                reason: *r,
                ..PeerEntry::default()
            })
            .collect(),
        ..WireKubePeerSpec::default()
    }
}

fn stored(name: &str, mesh: &str, uid: &str, s: WireKubePeerSpec) -> WireKubePeer {
    let mut p = WireKubePeer::new(name, s);
    p.metadata.labels = Some(labels(&[(MESH_LABEL, mesh)]));
    p.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: name.into(),
        uid: uid.into(),
        ..OwnerReference::default()
    }]);
    p
}

#[test]
fn write_only_what_differs() {
    let s = spec(&[("b", PlannedPath::Direct, PathReason::ConeCone)]);
    assert!(needs_write(None, &s, "m", "u1"));
    let p = stored("a", "m", "u1", s.clone());
    assert!(!needs_write(Some(&p), &s, "m", "u1"));
    assert!(
        needs_write(Some(&p), &s, "m", "u2"),
        "node re-created with a new uid"
    );
    assert!(needs_write(Some(&p), &s, "other", "u1"));
    let s2 = spec(&[("b", PlannedPath::Relay, PathReason::BothSymmetric)]);
    assert!(needs_write(Some(&p), &s2, "m", "u1"));
}

#[test]
fn delete_only_own_deselected_peers() {
    let s = WireKubePeerSpec::default();
    let peers = [
        stored("a", "m", "u", s.clone()),
        stored("b", "m", "u", s.clone()),
        stored("c", "other", "u", s.clone()),
    ];
    let selected = BTreeSet::from(["a"]);
    assert_eq!(peers_to_delete("m", &peers, &selected), ["b"]);
    assert_eq!(
        peers_to_delete("m", &peers, &BTreeSet::from(["a", "b"])),
        Vec::<String>::new()
    );
}

#[test]
fn decisions_report_joins_leaves_moves_and_endpoints() {
    let prev = BTreeMap::from([
        (
            "a".to_string(),
            spec(&[("b", PlannedPath::Direct, PathReason::ConeCone)]),
        ),
        (
            "b".to_string(),
            spec(&[("a", PlannedPath::Direct, PathReason::ConeCone)]),
        ),
    ]);
    let desired = BTreeMap::from([
        (
            "a".to_string(),
            spec(&[
                ("b", PlannedPath::Relay, PathReason::BothSymmetric),
                ("c", PlannedPath::Relay, PathReason::NatUnknown),
            ]),
        ),
        (
            "b".to_string(),
            spec(&[("a", PlannedPath::Relay, PathReason::BothSymmetric)]),
        ),
        (
            "c".to_string(),
            spec(&[("a", PlannedPath::Relay, PathReason::NatUnknown)]),
        ),
    ]);
    let eps = vec!["1.2.3.4:3478".to_string()];
    let d = decisions(&prev, &desired, &["z".to_string()], &[], &eps);
    assert_eq!(
        d,
        [
            Decision::RelayEndpointsPublished(eps.clone()),
            Decision::NodeJoined("c".into()),
            Decision::NodeLeft("z".into()),
            Decision::PairToRelay {
                a: "a".into(),
                b: "b".into(),
                reason: PathReason::BothSymmetric
            },
        ]
    );
    let (reason, note) = d[3].reason_note();
    assert_eq!(reason, "PairRelayed");
    assert!(note.contains("both-symmetric"));
    // Nothing changed: nothing to announce.
    assert!(decisions(&desired, &desired, &[], &eps, &eps).is_empty());
}

#[test]
fn many_moves_are_summarised() {
    let n = MAX_PAIR_EVENTS + 5;
    let names: Vec<String> = (0..=n).map(|i| format!("n{i:03}")).collect();
    let mk = |path| {
        let entries: Vec<(&str, PlannedPath, PathReason)> = names[1..]
            .iter()
            .map(|b| (b.as_str(), path, PathReason::BothSymmetric))
            .collect();
        BTreeMap::from([(names[0].clone(), spec(&entries))])
    };
    let d = decisions(
        &mk(PlannedPath::Direct),
        &mk(PlannedPath::Relay),
        &[],
        &[],
        &[],
    );
    assert_eq!(d.len(), MAX_PAIR_EVENTS + 1);
    assert_eq!(d.last(), Some(&Decision::PairsToRelay(5)));
}

#[test]
fn mass_joins_are_summarised() {
    let desired: BTreeMap<String, WireKubePeerSpec> = (0..=MAX_NODE_EVENTS)
        .map(|i| (format!("n{i}"), WireKubePeerSpec::default()))
        .collect();
    let left: Vec<String> = (0..=MAX_NODE_EVENTS).map(|i| format!("x{i}")).collect();
    let d = decisions(&BTreeMap::new(), &desired, &left, &[], &[]);
    assert_eq!(
        d,
        [
            Decision::NodesJoined(MAX_NODE_EVENTS + 1),
            Decision::NodesLeft(MAX_NODE_EVENTS + 1)
        ]
    );
    assert_eq!(d[0].reason_note().0, "NodeJoined");
}
