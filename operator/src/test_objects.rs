//! Kubernetes object builders for the unit tests (no I/O; not in release builds).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use wirekube_crds::{
    Candidate, CandidateKind, NatType, WireKubeMesh, WireKubeMeshSpec, WireKubePeerSpec,
    WireKubePeerStatus,
};

use crate::decide::PeerWrite;

/// A Node with addresses `(type, address)` and labels; uid is `uid-<name>`.
pub fn node(name: &str, addresses: &[(&str, &str)], labels: &[(&str, &str)]) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        status: Some(NodeStatus {
            addresses: Some(
                addresses
                    .iter()
                    .map(|(t, a)| NodeAddress {
                        type_: t.to_string(),
                        address: a.to_string(),
                    })
                    .collect(),
            ),
            ..NodeStatus::default()
        }),
        ..Node::default()
    }
}

/// A mesh named `name` with uid `uid-<name>`, generation 1 and the given spec JSON merged over
/// the defaults.
pub fn mesh(name: &str, spec: serde_json::Value) -> WireKubeMesh {
    let spec: WireKubeMeshSpec = serde_json::from_value(spec).expect("fixture mesh spec");
    let mut m = WireKubeMesh::new(name, spec);
    m.metadata.uid = Some(format!("uid-{name}"));
    m.metadata.generation = Some(1);
    m
}

/// A status as an agent would report it: a key, NAT type, a host and (unless open) a
/// server-reflexive candidate.
pub fn peer_status(key: &str, nat: NatType, host: &str, srflx: Option<&str>) -> WireKubePeerStatus {
    let mut candidates = vec![Candidate {
        kind: CandidateKind::Host,
        address: host.into(),
        prefix_length: Some(24),
        observed_by: None,
    }];
    if let Some(s) = srflx {
        candidates.push(Candidate {
            kind: CandidateKind::Srflx,
            address: s.into(),
            prefix_length: None,
            observed_by: None,
        });
    }
    WireKubePeerStatus {
        public_key: Some(key.into()),
        nat_type: nat,
        public_ip: srflx.map(|s| s.split(':').next().unwrap_or_default().to_string()),
        candidates,
        ..WireKubePeerStatus::default()
    }
}

/// A fixed timestamp `secs` after the epoch.
pub fn time(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).expect("valid timestamp"))
}

/// Labels map from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A write of `node`'s peer (uid `uid-<node>`, default spec) that changes `change`: a new peer
/// (no stored resourceVersion), not a records-only write. Tests adjust the rest.
pub fn peer_write(node: &str, change: &'static str) -> PeerWrite {
    PeerWrite {
        node: node.into(),
        node_uid: format!("uid-{node}"),
        spec: WireKubePeerSpec::default(),
        quarantine: None,
        observed_rv: None,
        changes: vec![change],
        records_only: false,
    }
}

/// The nodes of `writes`, in order.
pub fn write_nodes(writes: &[PeerWrite]) -> Vec<&str> {
    writes.iter().map(|w| w.node.as_str()).collect()
}
