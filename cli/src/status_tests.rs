use super::*;
use crate::fixtures::{self, entry, peer};

#[test]
fn matrix_cells_are_what_the_row_agent_reports() {
    let r = render(&fixtures::three_nodes());
    let sym: Vec<Vec<String>> = r
        .matrix
        .iter()
        .map(|row| row.iter().map(|c| c.symbol()).collect())
        .collect();
    assert_eq!(
        sym,
        vec![
            vec!["·", "D", "R"],
            vec!["D", "·", "R*"],
            vec!["R", "~", "·"],
        ]
    );
}

#[test]
fn pairs_list_both_directions_with_plan_and_handshake_age() {
    let r = render(&fixtures::three_nodes());
    let got: Vec<(&str, &str)> = r
        .pairs
        .iter()
        .map(|d| (d.from.as_str(), d.to.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("node-1", "node-2"),
            ("node-2", "node-1"),
            ("node-1", "node-3"),
            ("node-3", "node-1"),
            ("node-2", "node-3"),
            ("node-3", "node-2"),
        ]
    );
    let d = &r.pairs[4];
    assert_eq!(d.planned, Some(PlannedPath::Direct));
    assert_eq!(d.reason, Some(PathReason::ConeSymmetric));
    assert_eq!(d.actual, Some(ActualPath::Relay));
    assert_eq!(d.actual_reason, Some(PathReason::DirectFailed));
    assert!(d.fallback);
    assert_eq!(d.handshake_age_seconds, Some(20));
    assert_eq!(r.pairs[5].handshake_age_seconds, None);
    assert_eq!(r.pairs[0].rtt_micros, Some(420));
    assert_eq!(r.pairs[2].rtt_micros, Some(23_456));
    assert_eq!(r.pairs[1].rtt_micros, None, "not measured: absent");
}

#[test]
fn rtt_column_formats_milliseconds() {
    for (micros, want) in [
        (1, "0.00 ms"),
        (420, "0.42 ms"),
        (9_994, "9.99 ms"),
        (23_456, "23 ms"),
        (23_500, "24 ms"),
    ] {
        assert_eq!(rtt_str(micros), want, "{micros}");
    }
    let t = render(&fixtures::three_nodes()).to_text(false);
    assert!(t.contains("RTT"), "{t}");
    assert!(t.contains("0.42 ms"), "{t}");
    assert!(t.contains("23 ms"), "{t}");
}

#[test]
fn mesh_line_counts_ready_agents_and_names_the_relay() {
    let mut s = fixtures::three_nodes();
    s.peers[2].status = None;
    let r = render(&s);
    assert_eq!(r.mesh.ready, Some(true));
    assert_eq!((r.mesh.ready_nodes, r.mesh.nodes), (2, 3));
    assert_eq!(r.mesh.relay_endpoints, vec!["198.18.0.2:3478"]);
    assert_eq!(r.nodes[2].ready, None);
    // No status: every cell of its row is unreported.
    assert_eq!(r.matrix[2][0].path, CellPath::Unreported);
    assert_eq!(r.pairs[3].actual, None);
}

#[test]
fn text_has_matrix_legend_nodes_and_notes() {
    let t = render(&fixtures::three_nodes()).to_text(false);
    assert!(
        t.starts_with("mesh default: Ready; 3/3 agents ready; relay: 198.18.0.2:3478\n"),
        "{t}"
    );
    assert!(t.contains("1 node-1   ·   D   R"), "{t}");
    assert!(t.contains("2 node-2   D   ·   R*"), "{t}");
    assert!(t.contains("legend: D direct"), "{t}");
    assert!(
        t.contains("direct did not come up (direct-failed); relayed while probing"),
        "{t}"
    );
    assert!(t.contains("node-1  node-3  Relay    both-symmetric"), "{t}");
}

#[test]
fn json_uses_api_spellings() {
    let v = serde_json::to_value(render(&fixtures::three_nodes())).unwrap();
    assert_eq!(
        v["matrix"][1][2],
        serde_json::json!({"path": "relay", "fallback": true})
    );
    assert_eq!(v["matrix"][0][0]["path"], "self");
    assert_eq!(v["pairs"][0]["planned"], "Direct");
    assert_eq!(v["pairs"][0]["reason"], "same-site");
    assert_eq!(v["pairs"][0]["actual"], "direct");
    assert_eq!(v["pairs"][0]["rttMicros"], 420);
    assert_eq!(v["pairs"][1]["rttMicros"], serde_json::Value::Null);
    assert_eq!(v["nodes"][0]["meshIP"], "10.99.0.1");
    assert_eq!(v["nodes"][0]["natType"], "symmetric");
}

#[test]
fn matrix_stays_narrow_at_twelve_nodes() {
    let names: Vec<String> = (1..=12).map(|i| format!("worker-{i:02}")).collect();
    let peers = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let entries = names
                .iter()
                .filter(|o| *o != n)
                .map(|o| entry(o, "Direct", "cone-cone"))
                .collect();
            peer(n, &format!("10.99.0.{}", i + 1), entries, None)
        })
        .collect();
    let s = crate::Snapshot {
        peers,
        taken_at: fixtures::now(),
        ..Default::default()
    };
    let t = render(&s).to_text(false);
    let matrix_width = t.lines().nth(2).map(|l| l.chars().count()).unwrap_or(0);
    // 12 columns of 4 characters after "12 worker-12".
    assert!(matrix_width <= 12 + 12 * 4, "{matrix_width}\n{t}");
    assert!(t.lines().nth(2).unwrap().ends_with("12"), "{t}");
    assert_eq!(render(&s).pairs.len(), 12 * 11);
}

#[test]
fn problems_only_keeps_the_directions_that_need_a_look() {
    let r = render(&fixtures::three_nodes());
    let t = r.to_text(true);
    let listed: Vec<&str> = t
        .lines()
        .skip_while(|l| !l.starts_with("FROM"))
        .skip(1)
        .collect();
    assert_eq!(listed.len(), 2, "{t}");
    assert!(
        listed[0].starts_with("node-2  node-3") && listed[0].contains("relay*"),
        "{t}"
    );
    assert!(
        listed[1].starts_with("node-3  node-2") && listed[1].contains("connecting"),
        "{t}"
    );
    let mut healthy = fixtures::three_nodes();
    healthy.peers.truncate(2);
    for p in &mut healthy.peers {
        p.spec.peers.truncate(1);
        p.status.as_mut().unwrap().connections.truncate(1);
    }
    let t = render(&healthy).to_text(true);
    assert!(
        t.ends_with("every one of the 2 directions is up as planned\n"),
        "{t}"
    );
}
