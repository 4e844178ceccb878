use super::*;
use crate::fixtures::{self, ago, cond, now};
use serde_json::json;

fn crd(name: &str) -> serde_json::Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": name},
           "spec": {"group": "wirekube.io", "scope": "Cluster",
                    "names": {"plural": "x", "kind": "X"},
                    "versions": [{"name": "v1alpha1", "served": true, "storage": true}]},
           "status": {"conditions": [{"type": "Established", "status": "True"}]}})
}

fn node(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
}

/// The fixture mesh with everything a healthy install has around it.
fn healthy() -> Snapshot {
    let mut s = fixtures::three_nodes();
    s.crds = CRD_NAMES
        .iter()
        .map(|n| serde_json::from_value(crd(n)).unwrap())
        .collect();
    s.lease = Some(
        serde_json::from_value(json!({"metadata": {"name": "wirekube-operator"},
            "spec": {"holderIdentity": "wirekube-operator-abc", "leaseDurationSeconds": 15,
                     "renewTime": ago(3)}}))
        .unwrap(),
    );
    s.operator = Some(
        serde_json::from_value(json!({"metadata": {"name": "wirekube-operator"},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"availableReplicas": 2}}))
        .unwrap(),
    );
    s.agents = Some(
        serde_json::from_value(json!({"metadata": {"name": "wirekube-agent"},
            "spec": {"selector": {}, "template": {}},
            "status": {"desiredNumberScheduled": 3, "numberReady": 3,
                       "currentNumberScheduled": 3, "numberMisscheduled": 0}}))
        .unwrap(),
    );
    s.nodes = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|n| serde_json::from_value(node(n)).unwrap())
        .collect();
    for p in &mut s.peers {
        p.metadata.managed_fields = Some(vec![
            serde_json::from_value(json!({"manager": "wirekube-agent", "operation": "Apply",
                "subresource": "status", "time": ago(2)}))
            .unwrap(),
        ]);
    }
    s
}

fn get<'a>(cs: &'a [Check], name: &str) -> &'a Check {
    cs.iter().find(|c| c.name == name).unwrap()
}

#[test]
fn a_healthy_install_passes_every_check() {
    let cs = checks(&healthy(), now());
    for c in &cs {
        assert_eq!(c.level, Level::Ok, "{c:?}");
    }
    assert!(!failed(&cs));
    assert_eq!(get(&cs, "engines").detail, "kernel: node-1, node-2, node-3");
    assert_eq!(
        get(&cs, "operator").detail,
        "leader wirekube-operator-abc (renewed 3s ago); 2/2 replicas available"
    );
    assert_eq!(
        get(&cs, "stun").detail,
        "every agent got STUN answers; NAT types: 1 full-cone, 2 symmetric"
    );
}

/// Each row: what breaks, the check, its level, a piece of its detail and of its fix.
#[test]
fn each_failure_names_its_cause_and_fix() {
    type Breaker = fn(&mut Snapshot);
    let rows: Vec<(&str, Breaker, &str, Level, &str, &str)> = vec![
        (
            "no CRDs",
            |s| s.crds.clear(),
            "crds",
            Level::Fail,
            "wirekubemeshes.wirekube.io is not installed",
            "-k config/crd",
        ),
        (
            "no mesh",
            |s| s.mesh = None,
            "mesh",
            Level::Fail,
            "no WireKubeMesh",
            "config/samples",
        ),
        (
            "no lease",
            |s| s.lease = None,
            "operator",
            Level::Fail,
            "Lease wirekube-system/wirekube-operator not found",
            "logs deploy/wirekube-operator",
        ),
        (
            "stale lease",
            |s| {
                s.lease.as_mut().unwrap().spec.as_mut().unwrap().renew_time =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                        now() - jiff::SignedDuration::from_secs(60),
                    ));
            },
            "operator",
            Level::Fail,
            "last renewed 60s ago",
            "logs",
        ),
        (
            "fewer replicas available",
            |s| {
                s.operator
                    .as_mut()
                    .unwrap()
                    .status
                    .as_mut()
                    .unwrap()
                    .available_replicas = Some(1)
            },
            "operator",
            Level::Warn,
            "1/2 replicas",
            "get pods",
        ),
        (
            "agent never reported",
            |s| s.peers[2].status = None,
            "agents",
            Level::Fail,
            "node-3: agent has not reported",
            "--field-selector spec.nodeName=<node>",
        ),
        (
            "agent not ready",
            |s| {
                let st = s.peers[1].status.as_mut().unwrap();
                st.conditions = serde_json::from_value(json!([
                    cond("Ready", false, "DataplaneNotReady", "see DataplaneReady"),
                    cond("DataplaneReady", false, "Error", "wireguard module missing")
                ]))
                .unwrap();
            },
            "agents",
            Level::Fail,
            "node-2: not Ready (wireguard module missing)",
            "logs <pod>",
        ),
        (
            "agent silent",
            |s| {
                s.peers[0].metadata.managed_fields.as_mut().unwrap()[0].time =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        now() - jiff::SignedDuration::from_secs(900),
                    ));
            },
            "agents",
            Level::Warn,
            "node-1: status unchanged for 15m",
            "logs",
        ),
        (
            "no relay endpoint",
            |s| {
                s.mesh
                    .as_mut()
                    .unwrap()
                    .status
                    .as_mut()
                    .unwrap()
                    .relay_endpoints
                    .clear()
            },
            "relay",
            Level::Fail,
            "no relay endpoint published",
            "relay.external.endpoint",
        ),
        (
            "relay not connected",
            |s| {
                let st = s.peers[2].status.as_mut().unwrap();
                st.conditions[3] = serde_json::from_value(cond(
                    "RelayConnected",
                    false,
                    "NotConnected",
                    "Connecting to 198.18.0.2:3478: refused",
                ))
                .unwrap();
            },
            "relay",
            Level::Fail,
            "not connected from node-3: Connecting to 198.18.0.2:3478: refused",
            "over TCP",
        ),
        (
            "udp blocked",
            |s| {
                let st = s.peers[0].status.as_mut().unwrap();
                st.nat_type = wirekube_crds::NatType::UdpBlocked;
                st.conditions[2] = serde_json::from_value(cond(
                    "StunReachable",
                    false,
                    "NoAnswer",
                    "no answer from STUN server(s) 198.18.0.2:3478",
                ))
                .unwrap();
            },
            "stun",
            Level::Fail,
            "node-1: no answer from STUN server(s) 198.18.0.2:3478",
            "outbound UDP",
        ),
        (
            "nat unknown",
            |s| s.peers[1].status.as_mut().unwrap().nat_type = wirekube_crds::NatType::Unknown,
            "stun",
            Level::Warn,
            "node-2: NAT type not classified yet",
            "wait",
        ),
        (
            "duplicate key",
            |s| {
                let msg = "nodes node-1, node-3 report the same public key";
                s.mesh = Some(fixtures::mesh(vec![
                    cond("Ready", true, "Reconciled", "ok"),
                    cond("PublicKeysValid", false, "DuplicatePublicKey", msg),
                ]));
                for i in [0, 2] {
                    s.peers[i].metadata.annotations = Some(
                        [(
                            wirekube_crds::QUARANTINE_ANNOTATION.to_string(),
                            msg.to_string(),
                        )]
                        .into(),
                    );
                }
            },
            "keys",
            Level::Fail,
            "DuplicatePublicKey: nodes node-1, node-3 report the same public key; quarantined: node-1, node-3",
            "delete the key under /var/lib/wirekube",
        ),
        (
            "annotated before the mesh says so",
            |s| {
                s.peers[1].metadata.annotations = Some(
                    [(
                        wirekube_crds::QUARANTINE_ANNOTATION.to_string(),
                        "malformed public key".to_string(),
                    )]
                    .into(),
                );
            },
            "keys",
            Level::Fail,
            "quarantined: node-2 (malformed public key)",
            "/var/lib/wirekube",
        ),
        (
            "peers skipped",
            |s| {
                s.peers[1].status.as_mut().unwrap().conditions.push(
                    serde_json::from_value(cond(
                        "PeersAccepted",
                        false,
                        "PeersSkipped",
                        "node-3: key listed twice",
                    ))
                    .unwrap(),
                );
            },
            "keys",
            Level::Fail,
            "node-2: node-3: key listed twice",
            "malformed or listed twice",
        ),
        (
            "clock ahead",
            |s| {
                let st = s.peers[1].status.as_mut().unwrap();
                st.connections[0].last_handshake =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        now() + jiff::SignedDuration::from_secs(60),
                    ));
            },
            "clock",
            Level::Warn,
            "node-2: at least 62s ahead of the API server",
            "NTP",
        ),
        (
            "jumbo mtu",
            |s| {
                s.mesh.as_mut().unwrap().spec.mtu = 8920;
                for p in &mut s.peers {
                    p.spec.mtu = 8920;
                }
            },
            "mtu",
            Level::Warn,
            "underlay MTU of at least 9000",
            "keep 1420",
        ),
        (
            "mtu not rolled out",
            |s| s.mesh.as_mut().unwrap().spec.mtu = 1380,
            "mtu",
            Level::Warn,
            "mesh mtu 1380, but node-1 has 1420",
            "not rewritten",
        ),
        (
            "engine unknown",
            |s| s.peers[2].status.as_mut().unwrap().engine = None,
            "engines",
            Level::Warn,
            "not reported: node-3",
            "agents check",
        ),
    ];
    for (what, breaker, name, level, detail, fix) in rows {
        let mut s = healthy();
        breaker(&mut s);
        let cs = checks(&s, now());
        let c = get(&cs, name);
        assert_eq!(c.level, level, "{what}: {c:?}");
        assert!(c.detail.contains(detail), "{what}: {:?}", c.detail);
        assert!(
            c.fix.as_deref().unwrap_or("").contains(fix),
            "{what}: {:?}",
            c.fix
        );
        assert_eq!(failed(&cs), level == Level::Fail, "{what}");
    }
}

#[test]
fn this_machine_behind_the_server_is_reported() {
    let s = healthy();
    let cs = checks(&s, now() - jiff::SignedDuration::from_secs(120));
    let c = get(&cs, "clock");
    assert_eq!(c.level, Level::Warn);
    assert!(
        c.detail.contains("this machine is at least 118s behind"),
        "{}",
        c.detail
    );
}

#[test]
fn a_selected_node_without_a_peer_is_named() {
    let mut s = healthy();
    s.nodes
        .push(serde_json::from_value(node("node-4")).unwrap());
    let c = get(&checks(&s, now()), "nodes").clone();
    assert_eq!(c.level, Level::Warn);
    assert_eq!(
        c.detail,
        "selected by the mesh but without a WireKubePeer: node-4"
    );
    // A node the mesh's nodeSelector leaves out is not expected to have one.
    s.mesh.as_mut().unwrap().spec.node_selector =
        [("wirekube.io/mesh".to_string(), "yes".to_string())].into();
    assert_eq!(get(&checks(&s, now()), "nodes").level, Level::Ok);
}

#[test]
fn relay_mode_never_needs_no_relay() {
    let mut s = healthy();
    let m = s.mesh.as_mut().unwrap();
    m.spec.relay.mode = wirekube_crds::RelayMode::Never;
    m.status.as_mut().unwrap().relay_endpoints.clear();
    assert_eq!(get(&checks(&s, now()), "relay").level, Level::Ok);
}

#[test]
fn text_puts_the_fix_under_the_failure_and_a_summary_last() {
    let mut s = healthy();
    s.peers[2].status = None;
    let t = to_text(&checks(&s, now()));
    assert!(
        t.contains("[FAIL] agents    node-3: agent has not reported"),
        "{t}"
    );
    assert!(
        t.contains("                 fix: kubectl -n wirekube-system get pods"),
        "{t}"
    );
    assert!(t.ends_with("failures\n"), "{t}");
    let v = serde_json::to_value(checks(&s, now())).unwrap();
    assert_eq!(v[4]["name"], "agents");
    assert_eq!(v[4]["level"], "fail");
    assert_eq!(v[0]["level"], "ok");
    assert!(v[0].get("fix").is_none());
}
