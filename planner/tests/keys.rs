//! Key quarantine in the planner: nodes sharing a public key, or reporting a malformed one,
//! are listed by no spec and list nobody; the quarantine lifts as soon as the keys differ.
//! Table tests for the decision and properties over random key assignments.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use wirekube_crds::{NatType, PlannedPath, RelayMode, WireKubePeerSpec};
use wirekube_planner::fixtures::{Host, input, mesh, test_key};
use wirekube_planner::{KeyProblem, PathPlanner, Plan, plan};

fn host(name: &str, i: u8) -> Host {
    Host::new(name, NatType::FullCone)
        .lan(&format!("10.0.{i}.10"), 24)
        .public(&format!("198.18.0.{i}"))
}

fn planned(hosts: &[Host]) -> Plan {
    plan(&input(mesh("10.99.0.0/24", RelayMode::Auto), hosts, true)).unwrap()
}

fn listed(specs: &BTreeMap<String, WireKubePeerSpec>, node: &str) -> Vec<String> {
    specs[node].peers.iter().map(|e| e.name.clone()).collect()
}

const CLONED: &str = "YNqHbfBQKaGvzefgLJGJVgUoJfT2ECuTYwRYeKiM8ig=";

/// Keys of a, b, c (`None`: none reported) → nodes quarantined, problem reasons.
type Case<'a> = ([Option<&'a str>; 3], &'a [&'a str], &'a [&'a str]);

#[test]
fn quarantine_decision_table() {
    let bad = "key-of-b";
    let huge = "A".repeat(100_000);
    let cases: &[Case] = &[
        ([None, None, None], &[], &[]),
        (
            [Some(CLONED), Some(CLONED), None],
            &["a", "b"],
            &["DuplicatePublicKey"],
        ),
        (
            [Some(CLONED), None, Some(CLONED)],
            &["a", "c"],
            &["DuplicatePublicKey"],
        ),
        (
            [Some(CLONED), Some(CLONED), Some(CLONED)],
            &["a", "b", "c"],
            &["DuplicatePublicKey"],
        ),
        ([None, Some(bad), None], &["b"], &["MalformedPublicKey"]),
        ([Some(&huge), None, None], &["a"], &["MalformedPublicKey"]),
        // Two equal malformed keys: each is malformed, neither is a "duplicate".
        (
            [Some(bad), Some(bad), None],
            &["a", "b"],
            &["MalformedPublicKey"; 2],
        ),
        (
            [Some(bad), Some(CLONED), Some(CLONED)],
            &["a", "b", "c"],
            &["MalformedPublicKey", "DuplicatePublicKey"],
        ),
    ];
    for (keys, want_q, want_reasons) in cases {
        let hosts: Vec<Host> = ["a", "b", "c"]
            .iter()
            .zip(keys)
            .enumerate()
            .map(|(i, (n, k))| {
                let h = host(n, i as u8 + 1);
                match k {
                    Some(k) => h.with_key(k),
                    None => h,
                }
            })
            .collect();
        let p = planned(&hosts);
        let specs = p.to_specs();
        let q: Vec<&str> = ["a", "b", "c"]
            .into_iter()
            .filter(|n| p.quarantine(n).is_some())
            .collect();
        assert_eq!(&q, want_q, "{keys:?}");
        let reasons: Vec<&str> = p.key_problems.iter().map(KeyProblem::reason).collect();
        assert_eq!(&reasons, want_reasons, "{keys:?}");
        for n in ["a", "b", "c"] {
            let quarantined = want_q.contains(&n);
            let want: Vec<String> = ["a", "b", "c"]
                .iter()
                .filter(|o| **o != n && !quarantined && !want_q.contains(o))
                .map(|o| o.to_string())
                .collect();
            assert_eq!(listed(&specs, n), want, "{n} of {keys:?}");
        }
        // A quarantined node is not "waiting for its key".
        assert!(
            p.pending_nodes
                .iter()
                .all(|n| !want_q.contains(&n.as_str()))
        );
        let s = &p.summary;
        assert_eq!(s.direct + s.relay + s.down, 3);
        let live = 3 - want_q.len() as u32;
        assert_eq!(s.direct, live * live.saturating_sub(1) / 2, "{keys:?}");
    }
}

#[test]
fn messages_name_both_nodes_and_never_quote_a_huge_key() {
    let hosts = [
        host("node-1", 1).with_key(CLONED),
        host("node-2", 2).with_key(CLONED),
        host("node-3", 3).with_key(&"x".repeat(1 << 20)),
    ];
    let p = planned(&hosts);
    let dup = p.quarantine("node-1").unwrap().to_string();
    assert!(dup.contains("node-1, node-2"), "{dup}");
    assert_eq!(p.quarantine("node-2"), p.quarantine("node-1"));
    let bad = p.quarantine("node-3").unwrap().to_string();
    assert!(bad.len() < 300 && bad.contains("node-3"), "{bad}");
    // No spec carries the huge key (or any other malformed one).
    assert!(p.specs().all(|(_, s)| s.peers.is_empty()));
}

/// One node regenerates: the next plan lists everybody again, incrementally as fully.
#[test]
fn quarantine_lifts_as_soon_as_one_node_regenerates() {
    let hosts = vec![
        host("a", 1).with_key(CLONED),
        host("b", 2).with_key(CLONED),
        host("c", 3),
    ];
    let inp = input(mesh("10.99.0.0/24", RelayMode::Auto), &hosts, true);
    let mut planner = PathPlanner::new(&inp).unwrap();
    assert_eq!(
        listed(&planner.plan().to_specs(), "c"),
        Vec::<String>::new()
    );

    let fresh = host("b", 2).with_key(&test_key("regenerated"));
    let changed = planner.update_status("b", Some(&fresh.status())).clone();
    assert_eq!(
        changed,
        BTreeSet::from(["a".into(), "b".into(), "c".into()])
    );
    let specs = planner.plan().to_specs();
    for (n, others) in [("a", ["b", "c"]), ("b", ["a", "c"]), ("c", ["a", "b"])] {
        assert_eq!(listed(&specs, n), others, "{n}");
    }
    assert!(planner.plan().key_problems.is_empty());
    assert_eq!(planner.plan().summary.direct, 3);
    let mut full_in = inp.clone();
    full_in.statuses.insert("b".into(), fresh.status());
    assert_eq!(specs, plan(&full_in).unwrap().to_specs());
}

/// A key from a small pool (so that nodes collide), a malformed one, or none.
fn arb_key() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        6 => (0u8..3).prop_map(|k| Some(test_key(&format!("pool-{k}")))),
        1 => Just(Some("not-a-key".to_string())),
        1 => Just(None),
    ]
}

fn arb_hosts() -> impl Strategy<Value = Vec<Host>> {
    (2usize..9).prop_flat_map(|n| {
        prop::collection::vec(arb_key(), n).prop_map(|keys| {
            keys.into_iter()
                .enumerate()
                .map(|(i, k)| {
                    let h = host(&format!("n{i}"), i as u8 + 1);
                    match k {
                        Some(k) => h.with_key(&k),
                        None => h.no_key(),
                    }
                })
                .collect()
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// No emitted spec ever lists one key twice, or a malformed key, or lists a quarantined
    /// node; quarantined nodes list nobody; everybody else lists everybody else.
    #[test]
    fn no_spec_lists_a_key_twice(hosts in arb_hosts()) {
        let p = planned(&hosts);
        for (name, spec) in p.specs() {
            let keys: Vec<&str> = spec.peers.iter().map(|e| e.public_key.as_str()).filter(|k| !k.is_empty()).collect();
            let unique: BTreeSet<&str> = keys.iter().copied().collect();
            prop_assert_eq!(unique.len(), keys.len(), "{} lists a key twice", name);
            prop_assert!(keys.iter().all(|k| wirekube_crds::is_public_key(k)));
            if p.quarantine(name).is_some() {
                prop_assert!(spec.peers.is_empty());
            } else {
                let want = hosts.iter().filter(|h| h.name != name && p.quarantine(&h.name).is_none()).count();
                prop_assert_eq!(spec.peers.len(), want);
            }
            prop_assert!(spec.peers.iter().all(|e| p.quarantine(&e.name).is_none()));
        }
        let s = &p.summary;
        prop_assert_eq!((s.direct + s.relay + s.down) as usize, p.pairs().len());
    }

    /// Changing one node's key incrementally gives what a full plan gives, and reports
    /// exactly the specs that differ.
    #[test]
    fn key_change_update_equals_full_replan(
        hosts in arb_hosts(),
        who in any::<prop::sample::Index>(),
        key in arb_key(),
    ) {
        let inp = input(mesh("10.99.0.0/24", RelayMode::Auto), &hosts, true);
        let mut planner = PathPlanner::new(&inp).unwrap();
        let before = planner.plan().to_specs();
        let k = who.index(hosts.len());
        let h = host(&hosts[k].name, k as u8 + 1);
        let h = match &key { Some(key) => h.with_key(key), None => h.no_key() };
        let changed = planner.update_status(&h.name, Some(&h.status())).clone();

        let mut full_in = inp.clone();
        full_in.statuses.insert(h.name.clone(), h.status());
        let full = plan(&full_in).unwrap();
        let full_specs = full.to_specs();
        prop_assert_eq!(&planner.plan().to_specs(), &full_specs);
        prop_assert_eq!(&planner.plan().summary, &full.summary);
        prop_assert_eq!(&planner.plan().key_problems, &full.key_problems);
        prop_assert_eq!(&planner.plan().pending_nodes, &full.pending_nodes);
        let really: BTreeSet<String> = full_specs.iter().filter(|(n, s)| before[*n] != **s).map(|(n, _)| n.clone()).collect();
        prop_assert_eq!(changed, really);
        prop_assert!(full.pairs().all(|pp| pp.path != PlannedPath::Relay || !full_in.relay_endpoints.is_empty()));
    }
}
