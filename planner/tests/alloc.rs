//! Mesh IP allocation and plan bookkeeping: stability, conflicts, a full CIDR, a changed
//! CIDR, leavers, pending nodes, `changed` and `removed`.

use std::collections::BTreeMap;

use wirekube_crds::{NatType, PathReason, PlannedPath, RelayMode, WireKubePeerSpec};
use wirekube_planner::fixtures::{Host, input, mesh};
use wirekube_planner::{NodeInfo, PathPlanner, PlanError, PlanIssue, plan};

fn hosts(names: &[&str]) -> Vec<Host> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| Host::new(n, NatType::FullCone).public(&format!("198.18.0.{}", i + 1)))
        .collect()
}

fn ips(specs: &BTreeMap<String, WireKubePeerSpec>) -> Vec<(&str, &str)> {
    specs
        .iter()
        .map(|(k, s)| (k.as_str(), s.mesh_ip.as_str()))
        .collect()
}

#[test]
fn fresh_nodes_fill_the_cidr_from_the_bottom_in_name_order() {
    let p = plan(&input(
        mesh("10.99.0.0/24", RelayMode::Auto),
        &hosts(&["c", "a", "b"]),
        true,
    ))
    .unwrap();
    assert_eq!(
        ips(&p.to_specs()),
        [("a", "10.99.0.1"), ("b", "10.99.0.2"), ("c", "10.99.0.3")]
    );
    assert_eq!(p.spec("a").unwrap().peers[0].allowed_ips, ["10.99.0.2/32"]);
    assert_eq!(p.spec("a").unwrap().mesh_cidr, "10.99.0.0/24");
}

#[test]
fn stored_ips_survive_restarts_and_others_joining_or_leaving() {
    let spec = mesh("10.99.0.0/24", RelayMode::Auto);
    let p1 = plan(&input(spec.clone(), &hosts(&["b", "c", "d"]), true)).unwrap();
    // An operator restart: same nodes, stored specs as truth. Nothing changes.
    let mut again = input(spec.clone(), &hosts(&["b", "c", "d"]), true);
    again.previous = p1.to_specs();
    let p2 = plan(&again).unwrap();
    assert!(p2.changed.is_empty());
    // "a" joins (sorts first), "c" leaves: b and d keep their IPs, a gets the lowest free
    // one, and c's address stays reserved while its spec still exists.
    let mut next = input(spec, &hosts(&["a", "b", "d"]), true);
    next.previous = p1.to_specs();
    let p3 = plan(&next).unwrap();
    assert_eq!(
        ips(&p3.to_specs()),
        [("a", "10.99.0.4"), ("b", "10.99.0.1"), ("d", "10.99.0.3")]
    );
    assert_eq!(p3.removed.iter().collect::<Vec<_>>(), ["c"]);
}

#[test]
fn a_full_cidr_is_reported_and_nobody_is_dropped() {
    // /29: 6 usable addresses for 8 nodes.
    let names = ["n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8"];
    let p = plan(&input(
        mesh("10.99.0.0/29", RelayMode::Auto),
        &hosts(&names),
        true,
    ))
    .unwrap();
    assert_eq!(p.nodes().len(), 8, "every node still gets a spec");
    assert_eq!(p.spec("n6").unwrap().mesh_ip, "10.99.0.6");
    assert_eq!(p.spec("n7").unwrap().mesh_ip, "");
    assert_eq!(p.unallocated(), ["n7", "n8"]);
    let issue = p
        .issues
        .iter()
        .find(|i| i.reason() == "MeshCIDRFull")
        .unwrap();
    assert_eq!(
        issue,
        &PlanIssue::CidrFull {
            cidr: "10.99.0.0/29".into(),
            capacity: 6,
            unallocated: vec!["n7".into(), "n8".into()],
        }
    );
    assert!(issue.to_string().contains("n7, n8"));
    let pair = p.pair("n1", "n7").unwrap();
    assert_eq!(
        (pair.path, pair.reason),
        (PlannedPath::Down, PathReason::CidrFull)
    );
    let s1 = p.spec("n1").unwrap();
    let e = s1.peers.iter().find(|e| e.name == "n7").unwrap();
    assert!(e.allowed_ips.is_empty());
    assert_eq!(p.pair("n1", "n2").unwrap().path, PlannedPath::Direct);
}

#[test]
fn a_conflict_keeps_the_first_name_and_reassigns_the_other() {
    let spec = mesh("10.99.0.0/24", RelayMode::Auto);
    let p1 = plan(&input(spec.clone(), &hosts(&["a", "b", "c"]), true)).unwrap();
    let mut prev = p1.to_specs();
    prev.get_mut("c").unwrap().mesh_ip = "10.99.0.1".into(); // same as a
    prev.get_mut("b").unwrap().mesh_ip = "10.99.0.255".into(); // broadcast
    let mut inp = input(spec, &hosts(&["a", "b", "c"]), true);
    inp.previous = prev;
    let p = plan(&inp).unwrap();
    assert_eq!(
        ips(&p.to_specs()),
        [("a", "10.99.0.1"), ("b", "10.99.0.2"), ("c", "10.99.0.3")]
    );
    assert!(p.issues.contains(&PlanIssue::IpConflict {
        ip: "10.99.0.1".into(),
        kept: "a".into(),
        reassigned: "c".into()
    }));
    assert!(
        p.issues
            .iter()
            .any(|i| matches!(i, PlanIssue::InvalidStoredIp { node, .. } if node == "b"))
    );
    // a's stored spec already listed b and c at the addresses they get back.
    assert_eq!(p.changed.iter().collect::<Vec<_>>(), ["b", "c"]);
}

#[test]
fn a_changed_cidr_reallocates_everybody() {
    let p1 = plan(&input(
        mesh("10.99.0.0/24", RelayMode::Auto),
        &hosts(&["a", "b"]),
        true,
    ))
    .unwrap();
    let mut inp = input(
        mesh("10.77.0.0/16", RelayMode::Auto),
        &hosts(&["a", "b"]),
        true,
    );
    inp.previous = p1.to_specs();
    let p = plan(&inp).unwrap();
    assert_eq!(ips(&p.to_specs()), [("a", "10.77.0.1"), ("b", "10.77.0.2")]);
    assert_eq!(
        p.issues,
        [PlanIssue::CidrChanged {
            from: "10.99.0.0/24".into(),
            to: "10.77.0.0/16".into(),
            nodes: 2
        }]
    );
}

#[test]
fn deleting_and_deselected_nodes_leave_the_mesh_but_hold_their_ip_for_a_round() {
    let mut spec = mesh("10.99.0.0/24", RelayMode::Auto);
    let p1 = plan(&input(spec.clone(), &hosts(&["a", "b", "c"]), true)).unwrap();
    spec.node_selector
        .insert("wirekube.io/member".into(), "yes".into());
    let mut inp = input(spec, &hosts(&["a", "b", "c", "d"]), true);
    for n in &mut inp.nodes {
        if n.name != "b" {
            n.labels.insert("wirekube.io/member".into(), "yes".into());
        }
        n.deleting = n.name == "c";
    }
    inp.previous = p1.to_specs();
    let p = plan(&inp).unwrap();
    assert_eq!(ips(&p.to_specs()), [("a", "10.99.0.1"), ("d", "10.99.0.4")]);
    assert_eq!(p.removed.iter().collect::<Vec<_>>(), ["b", "c"]);
}

#[test]
fn nodes_without_a_key_are_pending_and_listed_down() {
    let mut hs = hosts(&["a", "b", "c"]);
    hs[1] = hs[1].clone().no_key();
    let mut inp = input(mesh("10.99.0.0/24", RelayMode::Auto), &hs, true);
    inp.nodes.push(NodeInfo::new("d")); // no agent status at all yet
    let p = plan(&inp).unwrap();
    assert_eq!(p.pending_nodes, ["b", "d"]);
    let sa = p.spec("a").unwrap();
    let e = sa.peers.iter().find(|e| e.name == "b").unwrap();
    assert_eq!(e.public_key, "");
    assert_eq!(
        (e.path, e.reason),
        (PlannedPath::Down, PathReason::KeyMissing)
    );
    assert_eq!(sa.peers.len(), 3);
    assert_eq!((p.summary.direct, p.summary.down), (1, 5));
}

#[test]
fn invalid_cidr_is_an_error_not_an_empty_plan() {
    let err = plan(&input(
        mesh("10.99.0.0/33", RelayMode::Auto),
        &hosts(&["a"]),
        true,
    ))
    .unwrap_err();
    assert!(matches!(err, PlanError::InvalidCidr { .. }), "{err}");
}

#[test]
fn mesh_settings_are_copied_into_every_spec() {
    let mut spec = mesh("10.99.0.0/24", RelayMode::Auto);
    spec.relay.direct_timeout = "15s".into();
    let mut inp = input(spec.clone(), &hosts(&["a", "b"]), true);
    inp.relay_stun_servers = vec!["198.18.0.51:3478".into(), "198.18.0.51:3479".into()];
    let p = plan(&inp).unwrap();
    let s = &p.spec("a").unwrap();
    assert_eq!(s.mesh, "default");
    assert_eq!(
        (s.listen_port, s.mtu, s.interface_name.as_str()),
        (51820, 1420, "wirekube0")
    );
    assert_eq!(s.relay_endpoints, ["198.18.0.51:3478"]);
    assert_eq!(
        s.relay_token_secret.as_deref(),
        Some("wirekube-relay-token")
    );
    assert_eq!(
        s.stun_servers, inp.relay_stun_servers,
        "relay's STUN when the mesh lists none"
    );
    assert_eq!(s.direct_timeout, "15s");
    spec.stun_servers = vec!["stun1:3478".into(), "stun2:3478".into()];
    inp.mesh = spec;
    assert_eq!(
        plan(&inp).unwrap().spec("a").unwrap().stun_servers,
        ["stun1:3478", "stun2:3478"]
    );
}

#[test]
fn counters_only_status_changes_rewrite_nothing() {
    let inp = input(
        mesh("10.99.0.0/24", RelayMode::Auto),
        &hosts(&["a", "b", "c"]),
        true,
    );
    let mut planner = PathPlanner::new(&inp).unwrap();
    let mut status = inp.statuses["b"].clone();
    status.summary.direct = 2;
    status.observed_generation = Some(7);
    assert!(planner.update_status("b", Some(&status)).is_empty());
    // A NAT reclassification does rewrite the affected specs.
    status.nat_type = NatType::Symmetric;
    let changed = planner.update_status("b", Some(&status)).clone();
    assert_eq!(changed.iter().collect::<Vec<_>>(), ["a", "b", "c"]);
    assert!(planner.update_status("zz", Some(&status)).is_empty());
}

#[test]
fn fallback_evidence_is_reported_but_does_not_flip_the_plan() {
    let hs = vec![
        Host::new("a", NatType::FullCone)
            .public("198.18.0.1")
            .fallback_to("b"),
        Host::new("b", NatType::PortRestricted).public("198.18.0.2"),
    ];
    let p = plan(&input(mesh("10.99.0.0/24", RelayMode::Auto), &hs, true)).unwrap();
    let pair = p.pair("a", "b").unwrap();
    assert!(pair.fallback_reported);
    assert_eq!(
        (pair.path, pair.reason),
        (PlannedPath::Direct, PathReason::ConeCone)
    );
}
