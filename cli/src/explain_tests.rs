use super::*;
use crate::fixtures;
use serde_json::json;

/// node-1 and node-2 with LAN addresses in one /24.
fn lan_pair() -> Snapshot {
    let mut s = fixtures::three_nodes();
    let st = s.peers[1].status.as_mut().unwrap();
    st.candidates[0].address = "192.168.1.11:51820".into();
    s
}

#[test]
fn same_site_pair_names_the_shared_subnet_and_rule_5() {
    let e = explain(&lan_pair(), "node-1", "node-2").unwrap();
    assert_eq!(e.reason, Some(PathReason::SameSite));
    assert!(e.rule.starts_with("rule 5 (same-site)"), "{}", e.rule);
    assert!(
        e.facts
            .iter()
            .any(|f| f == "both have a LAN address in 192.168.1.0/24"),
        "{:?}",
        e.facts
    );
    assert!(
        e.facts
            .iter()
            .any(|f| f == "both leave through the same public IP 198.18.0.10"),
        "{:?}",
        e.facts
    );
    assert!(
        e.facts[0].starts_with("node-1: NAT symmetric"),
        "{}",
        e.facts[0]
    );
    assert_eq!(e.plan[0], "node-1 → node-2: Direct (same-site)");
    assert_eq!(
        e.actual[0],
        "node-1 → node-2: direct, last handshake 5s ago"
    );
}

#[test]
fn identical_addresses_prove_no_shared_subnet() {
    // Every fixture node reports 192.168.1.10/24 (like docker0 on every host).
    let e = explain(&fixtures::three_nodes(), "node-1", "node-3").unwrap();
    assert!(
        !e.facts.iter().any(|f| f.contains("LAN address in")),
        "{:?}",
        e.facts
    );
    assert_eq!(e.reason, Some(PathReason::BothSymmetric));
}

#[test]
fn fallback_is_explained_with_the_direct_failed_rule() {
    let e = explain(&fixtures::three_nodes(), "node-2", "node-3").unwrap();
    assert!(e.rule.starts_with("rule 10 (cone-symmetric)"), "{}", e.rule);
    assert!(
        e.actual[0].contains("FELL BACK: direct-failed"),
        "{}",
        e.actual[0]
    );
    assert_eq!(e.actual[1], "node-3 → node-2: connecting, no handshake yet");
}

#[test]
fn every_reason_has_a_rule() {
    for r in PathReason::ALL {
        assert!(rule_text(r).contains(r.as_str()), "{r}");
    }
}

#[test]
fn a_plan_that_differs_from_the_report_is_flagged() {
    let mut s = fixtures::three_nodes();
    s.peers[0].status.as_mut().unwrap().connections[1].path = wirekube_crds::ActualPath::Down;
    let e = explain(&s, "node-1", "node-3").unwrap();
    assert!(
        e.actual[0].ends_with("differs from the plan (Relay)"),
        "{}",
        e.actual[0]
    );
}

#[test]
fn a_node_without_status_or_plan_is_said_so() {
    let mut s = fixtures::three_nodes();
    s.peers[2] = fixtures::peer("node-3", "10.99.0.3", vec![], None);
    let e = explain(&s, "node-3", "node-1").unwrap();
    assert!(
        e.facts[0].contains("its agent has not reported"),
        "{}",
        e.facts[0]
    );
    assert_eq!(e.plan[0], "node-3 → node-1: not in node-3's spec yet");
    // node-1's spec still plans the pair, so the rule comes from there.
    assert_eq!(e.reason, Some(PathReason::BothSymmetric));
}

#[test]
fn a_node_with_itself_is_a_usage_error() {
    let err = explain(&fixtures::three_nodes(), "node-1", "node-1").unwrap_err();
    assert_eq!(
        err.to_string(),
        "explain needs two different nodes (got node-1 twice)"
    );
}

#[test]
fn unknown_node_lists_the_known_ones() {
    let err = explain(&fixtures::three_nodes(), "node-1", "nope").unwrap_err();
    assert_eq!(
        err.to_string(),
        "node nope is not in mesh default (its nodes: node-1, node-2, node-3)"
    );
}

#[test]
fn text_has_the_four_sections() {
    let t = explain(&lan_pair(), "node-1", "node-2").unwrap().to_text();
    for want in [
        "node-1 ↔ node-2",
        "Facts:",
        "Plan (from each node's spec):",
        "Why: rule 5",
        "Actual (from each agent):",
    ] {
        assert!(t.contains(want), "{want}\n{t}");
    }
    let v = serde_json::to_value(explain(&lan_pair(), "node-1", "node-2").unwrap()).unwrap();
    assert_eq!(v["reason"], json!("same-site"));
}
