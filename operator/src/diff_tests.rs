use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use wirekube_crds::PeerEntry;

use super::*;
use crate::test_objects::labels;

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

fn desired<'a>(s: &'a WireKubePeerSpec, mesh: &'a str, uid: &'a str) -> DesiredPeer<'a> {
    DesiredPeer {
        mesh,
        node: "a",
        node_uid: uid,
        spec: s,
        quarantine: None,
    }
}

#[test]
fn write_only_what_differs() {
    let s = spec(&[("b", PlannedPath::Direct, PathReason::ConeCone)]);
    assert!(needs_write(None, &desired(&s, "m", "u1")));
    let p = stored("a", "m", "u1", s.clone());
    assert!(!needs_write(Some(&p), &desired(&s, "m", "u1")));
    assert!(
        needs_write(Some(&p), &desired(&s, "m", "u2")),
        "node re-created with a new uid"
    );
    assert!(needs_write(Some(&p), &desired(&s, "other", "u1")));
    let s2 = spec(&[("b", PlannedPath::Relay, PathReason::BothSymmetric)]);
    assert!(needs_write(Some(&p), &desired(&s2, "m", "u1")));
}

#[test]
fn quarantine_note_is_written_and_removed() {
    let s = WireKubePeerSpec::default();
    let mut p = stored("a", "m", "u1", s.clone());
    let q = DesiredPeer {
        quarantine: Some("nodes a, b report the same public key"),
        ..desired(&s, "m", "u1")
    };
    assert!(needs_write(Some(&p), &q));
    p.metadata.annotations = Some(labels(&[(
        QUARANTINE_ANNOTATION,
        "nodes a, b report the same public key",
    )]));
    assert!(!needs_write(Some(&p), &q));
    assert_eq!(quarantine_note(&p), q.quarantine);
    assert!(needs_write(Some(&p), &desired(&s, "m", "u1")), "lifted");
}

/// Stored notes and this pass's problems → events (each change once).
#[test]
fn key_events_only_on_change() {
    let dup = KeyProblem::Duplicate {
        nodes: vec!["a".into(), "b".into()],
    };
    let note = dup.to_string();
    let bad = KeyProblem::Malformed {
        node: "c".into(),
        detail: "publicKey \"x\" (1 bytes) is bad".into(),
    };
    let bad_note = bad.to_string();
    let quarantined = |reason: &'static str, note: &str| Decision::KeyQuarantined {
        reason,
        note: note.to_string(),
        first: if reason == "MalformedPublicKey" {
            "c"
        } else {
            "a"
        }
        .into(),
    };
    // (stored notes, problems, events)
    type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<KeyProblem>, Vec<Decision>);
    let cases: Vec<Case> = vec![
        (vec![], vec![], vec![]),
        // New collision: one event naming both.
        (
            vec![],
            vec![dup.clone()],
            vec![quarantined("DuplicatePublicKey", &note)],
        ),
        // Half-written (one note stored): announced again until both carry it.
        (
            vec![("a", &note)],
            vec![dup.clone()],
            vec![quarantined("DuplicatePublicKey", &note)],
        ),
        // Already announced and stored: nothing.
        (vec![("a", &note), ("b", &note)], vec![dup.clone()], vec![]),
        // b regenerated: both lifted.
        (
            vec![("a", &note), ("b", &note)],
            vec![],
            vec![
                Decision::KeyQuarantineLifted("a".into()),
                Decision::KeyQuarantineLifted("b".into()),
            ],
        ),
        (
            vec![("a", &note), ("b", &note)],
            vec![dup.clone(), bad.clone()],
            vec![quarantined("MalformedPublicKey", &bad_note)],
        ),
    ];
    for (stored, problems, want) in cases {
        let stored: BTreeMap<&str, &str> = stored.into_iter().collect();
        assert_eq!(
            key_decisions(&stored, &problems),
            want,
            "{stored:?} {problems:?}"
        );
    }
    let (reason, text) = quarantined("DuplicatePublicKey", &note).reason_note();
    assert_eq!(reason, "DuplicatePublicKey");
    assert!(text.contains("a, b"), "{text}");
    assert!(quarantined("DuplicatePublicKey", &note).is_warning());
    assert_eq!(quarantined("DuplicatePublicKey", &note).node(), Some("a"));
    assert!(!Decision::KeyQuarantineLifted("a".into()).is_warning());
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
