//! Snapshots for the table tests, built from JSON as the API server would return them.

use jiff::Timestamp;
use serde_json::{Value, json};
use wirekube_crds::{WireKubeMesh, WireKubePeer};

use crate::snapshot::Snapshot;

pub const NOW: &str = "2026-12-05T12:00:00Z";

pub fn now() -> Timestamp {
    NOW.parse().unwrap()
}

/// `secs` before [`NOW`], as an RFC 3339 string.
pub fn ago(secs: i64) -> String {
    (now() - jiff::SignedDuration::from_secs(secs)).to_string()
}

pub fn entry(name: &str, path: &str, reason: &str) -> Value {
    json!({"name": name, "publicKey": "", "allowedIPs": [], "path": path, "reason": reason})
}

pub fn conn(name: &str, path: &str, reason: &str, handshake_ago: Option<i64>) -> Value {
    let mut c = json!({"name": name, "path": path, "reason": reason});
    if let Some(s) = handshake_ago {
        c["lastHandshake"] = json!(ago(s));
    }
    c
}

pub fn cond(type_: &str, ok: bool, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": if ok { "True" } else { "False" }, "reason": reason,
           "message": message, "lastTransitionTime": ago(600)})
}

/// A peer whose agent reported `status` (None: the agent never wrote).
pub fn peer(name: &str, ip: &str, entries: Vec<Value>, status: Option<Value>) -> WireKubePeer {
    let mut v = json!({
        "apiVersion": "wirekube.io/v1alpha1", "kind": "WireKubePeer",
        "metadata": {"name": name, "labels": {"wirekube.io/mesh": "default"}},
        "spec": {"mesh": "default", "meshIP": ip, "meshCIDR": "10.99.0.0/16",
                 "interfaceName": "wirekube0", "listenPort": 51820, "mtu": 1420,
                 "relayMode": "auto", "directTimeout": "10s", "peers": entries},
    });
    if let Some(s) = status {
        v["status"] = s;
    }
    serde_json::from_value(v).unwrap()
}

/// A healthy agent's status: every condition True.
pub fn status(nat: &str, public_ip: &str, conns: Vec<Value>) -> Value {
    json!({
        "publicKey": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "natType": nat, "publicIP": public_ip, "engine": "kernel",
        "candidates": [
            {"kind": "host", "address": "192.168.1.10:51820", "prefixLength": 24},
            {"kind": "srflx", "address": format!("{public_ip}:40000")}
        ],
        "conditions": [
            cond("Ready", true, "Ready", "agent reconciled the dataplane"),
            cond("DataplaneReady", true, "Reconciled", "converged"),
            cond("StunReachable", true, "Answered", "2 of 2 STUN server address(es) answered: symmetric"),
            cond("RelayConnected", true, "Connected", "connected to 198.18.0.2:3478"),
        ],
        "connections": conns,
    })
}

pub fn mesh(conditions: Vec<Value>) -> WireKubeMesh {
    serde_json::from_value(json!({
        "apiVersion": "wirekube.io/v1alpha1", "kind": "WireKubeMesh",
        "metadata": {"name": "default"},
        "spec": {"meshCIDR": "10.99.0.0/16", "relay": {"mode": "auto", "provider": "external",
                 "external": {"endpoint": "198.18.0.2:3478"}}},
        "status": {"conditions": conditions, "relayEndpoints": ["198.18.0.2:3478"],
                   "nodes": {"total": 3, "ready": 3, "pending": 0}},
    }))
    .unwrap()
}

/// Topology 1 with a twist: node-1 and node-2 share a LAN (direct, same-site); node-3 is
/// behind its own symmetric NAT (relay, both-symmetric), except that node-2 → node-3 is
/// planned direct (cone-symmetric) and its agent fell back to the relay.
pub fn three_nodes() -> Snapshot {
    let n1 = peer(
        "node-1",
        "10.99.0.1",
        vec![
            entry("node-2", "Direct", "same-site"),
            entry("node-3", "Relay", "both-symmetric"),
        ],
        Some(status(
            "symmetric",
            "198.18.0.10",
            vec![
                {
                    let mut c = conn("node-2", "direct", "same-site", Some(5));
                    c["rttMicros"] = json!(420);
                    c
                },
                {
                    let mut c = conn("node-3", "relay", "both-symmetric", Some(70));
                    c["rttMicros"] = json!(23_456);
                    c
                },
            ],
        )),
    );
    let n2 = peer(
        "node-2",
        "10.99.0.2",
        vec![
            entry("node-1", "Direct", "same-site"),
            entry("node-3", "Direct", "cone-symmetric"),
        ],
        Some(status(
            "full-cone",
            "198.18.0.10",
            vec![conn("node-1", "direct", "same-site", Some(7)), {
                let mut c = conn("node-3", "relay", "direct-failed", Some(20));
                c["fallback"] = json!(true);
                c
            }],
        )),
    );
    let n3 = peer(
        "node-3",
        "10.99.0.3",
        vec![
            entry("node-1", "Relay", "both-symmetric"),
            entry("node-2", "Direct", "cone-symmetric"),
        ],
        Some(status(
            "symmetric",
            "198.18.0.20",
            vec![
                conn("node-1", "relay", "both-symmetric", Some(70)),
                conn("node-2", "connecting", "cone-symmetric", None),
            ],
        )),
    );
    Snapshot {
        namespace: "wirekube-system".into(),
        mesh: Some(mesh(vec![
            cond("Ready", true, "Reconciled", "3 nodes planned"),
            cond("PublicKeysValid", true, "AllValid", "every key is unique"),
        ])),
        peers: vec![n1, n2, n3],
        crds_readable: true,
        taken_at: now(),
        ..Snapshot::default()
    }
}
