use wirekube_crds::{PathSummary, Problem};

use super::*;
use crate::plan::MeshIssue;
use crate::test_objects::time;

fn ready(c: &[Condition]) -> &Condition {
    c.iter().find(|c| c.type_ == READY).unwrap()
}

#[test]
fn transition_time_moves_only_on_status_flip() {
    let mut cs = Vec::new();
    merge_condition(&mut cs, &Cond::new(READY, true, "A", "m1"), 1, &time(10));
    merge_condition(&mut cs, &Cond::new(READY, true, "B", "m2"), 2, &time(20));
    assert_eq!(cs.len(), 1);
    assert_eq!(cs[0].last_transition_time, time(10));
    assert_eq!((cs[0].reason.as_str(), cs[0].message.as_str()), ("B", "m2"));
    assert_eq!(cs[0].observed_generation, Some(2));
    merge_condition(&mut cs, &Cond::new(READY, false, "C", "m3"), 2, &time(30));
    assert_eq!(cs[0].last_transition_time, time(30));
    assert_eq!(cs[0].status, "False");
    merge_condition(&mut cs, &relay_cond(true, "X", ""), 2, &time(40));
    assert_eq!(
        cs.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(),
        ["Ready", "RelayReady"]
    );
}

#[test]
fn invalid_keeps_previous_good_state() {
    let prev = WireKubeMeshStatus {
        observed_generation: Some(1),
        relay_endpoints: vec!["1.2.3.4:3478".into()],
        nodes: NodeCounts {
            total: 3,
            ready: 3,
            pending: 0,
        },
        ..Default::default()
    };
    let problems = vec![Problem {
        field: "spec.meshCIDR".into(),
        message: "not a CIDR".into(),
        fix: "use e.g. 10.99.0.0/16".into(),
    }];
    let s = invalid_status(Some(&prev), &problems, 2, &time(5));
    assert_eq!(s.relay_endpoints, prev.relay_endpoints);
    assert_eq!(s.nodes, prev.nodes);
    assert_eq!(s.observed_generation, Some(2));
    let r = ready(&s.conditions);
    assert_eq!(
        (r.status.as_str(), r.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(r.message.contains("spec.meshCIDR") && r.message.contains("10.99.0.0/16"));
    // Same problems again: the same status, so nothing would be written.
    assert_eq!(invalid_status(Some(&s), &problems, 2, &time(99)), s);
}

#[test]
fn counts_ready_nodes() {
    let mut ok = WireKubePeerStatus::default();
    ok.conditions.push(Condition {
        type_: READY.into(),
        status: "True".into(),
        reason: "Up".into(),
        message: String::new(),
        observed_generation: None,
        last_transition_time: time(1),
    });
    let c = node_counts(3, [&ok, &WireKubePeerStatus::default()], 1);
    assert_eq!(
        c,
        NodeCounts {
            total: 3,
            ready: 1,
            pending: 1
        }
    );
}

#[test]
fn computed_status_is_stable_and_reports_issues() {
    let outcome = PlanOutcome {
        summary: PathSummary {
            direct: 2,
            relay: 1,
            down: 0,
        },
        pending: vec!["c".into()],
        ..Default::default()
    };
    let counts = NodeCounts {
        total: 3,
        ready: 2,
        pending: 1,
    };
    let rc = relay_cond(true, "EndpointsPublished", "ok");
    let s1 = computed_status(
        None,
        1,
        &outcome,
        counts.clone(),
        vec!["e:1".into()],
        &rc,
        &time(1),
    );
    assert_eq!(s1.paths.relay, 1);
    assert_eq!(s1.pending_nodes, ["c"]);
    let r = ready(&s1.conditions);
    assert_eq!(r.reason, "Reconciled");
    assert!(r.message.contains("1 node(s) waiting"));
    let s2 = computed_status(
        Some(&s1),
        1,
        &outcome,
        counts.clone(),
        vec!["e:1".into()],
        &rc,
        &time(50),
    );
    assert_eq!(s1, s2, "an unchanged reconcile yields an identical status");
    let mut bad = outcome.clone();
    bad.issues.push(MeshIssue {
        reason: "MeshCIDRFull".into(),
        message: "full".into(),
    });
    let s3 = computed_status(Some(&s2), 1, &bad, counts, vec![], &rc, &time(60));
    let r = ready(&s3.conditions);
    assert_eq!(
        (r.status.as_str(), r.reason.as_str()),
        ("False", "MeshCIDRFull")
    );
    assert_eq!(r.last_transition_time, time(60));
}

#[test]
fn key_and_write_conditions() {
    use crate::plan::KeyProblem;
    let ok = keys_condition(&PlanOutcome::default());
    assert_eq!((ok.ok, ok.reason.as_str()), (true, "AllValid"));
    let outcome = PlanOutcome {
        key_problems: vec![KeyProblem::Duplicate {
            nodes: vec!["node-1".into(), "node-2".into()],
        }],
        ..Default::default()
    };
    let c = keys_condition(&outcome);
    assert_eq!(c.type_, "PublicKeysValid");
    assert_eq!((c.ok, c.reason.as_str()), (false, "DuplicatePublicKey"));
    assert!(c.message.contains("node-1, node-2"), "{}", c.message);
    let counts = NodeCounts {
        total: 3,
        ready: 3,
        pending: 0,
    };
    let r = ready_condition(&outcome, &counts);
    assert!(r.ok && r.message.contains("2 node(s) quarantined"), "{r:?}");

    assert!(written_condition(&[]).ok);
    let w = written_condition(&[("b".into(), "denied".into())]);
    assert_eq!((w.ok, w.reason.as_str()), (false, "WriteFailed"));
    assert_eq!(w.message, "b: denied");
}
