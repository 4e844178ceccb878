use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::DeploymentStatus;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::json;
use wirekube_crds::conditions::{PUBLIC_KEYS_VALID, READY, RELAY_READY};
use wirekube_crds::{MESH_LABEL, NatType, QUARANTINE_ANNOTATION};
use wirekube_planner::fixtures::test_key;

use super::*;
use crate::diff::Decision;
use crate::test_objects::{labels, mesh as mesh_fixture, node, peer_status, time};

const NS: &str = "wk";

fn managed() -> WireKubeMesh {
    mesh_fixture(
        "m",
        json!({"relay": {"managed": {"port": 3478, "replicas": 1, "image": "relay:1"}}}),
    )
}

fn owned<K: Resource>(mut obj: K, mesh: &WireKubeMesh) -> K {
    obj.meta_mut().owner_references = Some(vec![managed_relay::mesh_owner(mesh).unwrap()]);
    obj
}

fn secret(token: &str) -> Secret {
    Secret {
        data: Some(BTreeMap::from([(
            managed_relay::TOKEN_KEY.to_string(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// The three managed objects as this mesh (or another one) created them.
fn all_objects(owner: &WireKubeMesh) -> RelayObserved {
    RelayObserved {
        secret: Some(owned(secret("t"), owner)),
        deployment: Some(owned(Deployment::default(), owner)),
        service: Some(owned(Service::default(), owner)),
    }
}

#[test]
fn relay_objects_removed_only_when_owned_and_alive() {
    let never = mesh_fixture("m", json!({"relay": {"mode": "never"}}));
    let external = mesh_fixture(
        "m",
        json!({"relay": {"provider": "external", "external": {"endpoint": "relay.example:3478"}}}),
    );
    let stranger = mesh_fixture("other", json!({}));
    let mut dying = all_objects(&never);
    if let Some(d) = dying.deployment.as_mut() {
        d.metadata.deletion_timestamp = Some(time(1));
    }
    use RelayObject::*;
    let cases: [(&str, &WireKubeMesh, RelayObserved, &[RelayObject], &str); 5] = [
        (
            "never, nothing there",
            &never,
            RelayObserved::default(),
            &[],
            "RelayDisabled",
        ),
        (
            "never, all owned",
            &never,
            all_objects(&never),
            &[Deployment, Service, Secret],
            "RelayDisabled",
        ),
        (
            "never, another mesh's",
            &never,
            all_objects(&stranger),
            &[],
            "RelayDisabled",
        ),
        (
            "never, one being deleted",
            &never,
            dying,
            &[Service, Secret],
            "RelayDisabled",
        ),
        (
            "external, all owned",
            &external,
            all_objects(&external),
            &[Deployment, Service, Secret],
            "ExternalEndpoint",
        ),
    ];
    for (name, m, observed, want, reason) in cases {
        let RelayChanges::Remove { delete, outcome } = relay(m, &observed, NS, None).unwrap()
        else {
            panic!("{name}: not a removal");
        };
        assert_eq!(delete, want, "{name}");
        assert_eq!(outcome.cond.reason, reason, "{name}");
        assert_eq!(outcome.cond.type_, RELAY_READY, "{name}");
    }
}

#[test]
fn external_relay_publishes_its_endpoint_and_stun() {
    let m = mesh_fixture(
        "m",
        json!({"relay": {"provider": "external", "external": {"endpoint": "198.51.100.7:3478"}}}),
    );
    let RelayChanges::Remove { outcome, .. } =
        relay(&m, &RelayObserved::default(), NS, None).unwrap()
    else {
        panic!("external relay is not run by the operator");
    };
    assert_eq!(outcome.endpoints, ["198.51.100.7:3478"]);
    assert_eq!(outcome.stun, ["198.51.100.7:3478", "198.51.100.7:3479"]);
    assert_eq!(outcome.token_secret.as_deref(), Some("wirekube-relay-m"));
    assert!(outcome.cond.ok);
    assert!(
        outcome.cond.message.contains("Secret wk/wirekube-relay-m"),
        "{}",
        outcome.cond.message
    );
}

#[test]
fn managed_relay_creates_the_secret_only_when_missing() {
    let m = managed();
    let cases = [
        ("no secret yet", None, Some(true)),
        ("secret with a token", Some(secret("tok")), Some(false)),
        ("secret without a token", Some(secret("  ")), None),
        ("secret without data", Some(Secret::default()), None),
    ];
    for (name, s, want_create) in cases {
        let observed = RelayObserved {
            secret: s,
            ..RelayObserved::default()
        };
        match (
            relay(&m, &observed, NS, Some("img:2")).unwrap(),
            want_create,
        ) {
            (
                RelayChanges::Run {
                    create_secret,
                    deployment,
                    service,
                },
                Some(want),
            ) => {
                assert_eq!(create_secret, want, "{name}");
                assert_eq!(deployment.metadata.namespace.as_deref(), Some(NS));
                let pod = deployment.spec.unwrap().template.spec.unwrap();
                assert_eq!(pod.containers[0].image.as_deref(), Some("img:2"), "{name}");
                assert_eq!(service.metadata.name.as_deref(), Some("wirekube-relay-m"));
            }
            (RelayChanges::Blocked(outcome), None) => {
                assert_eq!(outcome.cond.reason, "TokenSecretInvalid", "{name}");
                assert!(outcome.cond.message.contains("'token' key"), "{name}");
                assert!(outcome.endpoints.is_empty(), "{name}");
            }
            (other, _) => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn managed_relay_publishes_from_the_applied_objects() {
    let m = managed();
    let dep = |available| Deployment {
        status: Some(DeploymentStatus {
            available_replicas: Some(available),
            ..DeploymentStatus::default()
        }),
        ..Deployment::default()
    };
    let lb = |ip: Option<&str>| Service {
        status: Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: ip.map(|ip| {
                    vec![LoadBalancerIngress {
                        ip: Some(ip.into()),
                        ..LoadBalancerIngress::default()
                    }]
                }),
            }),
            ..ServiceStatus::default()
        }),
        ..Service::default()
    };
    let cases = [
        (
            "no ingress yet",
            dep(1),
            lb(None),
            false,
            "WaitingForLoadBalancer",
            0,
        ),
        (
            "no replica yet",
            dep(0),
            lb(Some("203.0.113.5")),
            false,
            "RelayUnavailable",
            1,
        ),
        (
            "ready",
            dep(1),
            lb(Some("203.0.113.5")),
            true,
            "EndpointsPublished",
            1,
        ),
    ];
    for (name, d, s, ready, reason, endpoints) in cases {
        let o = relay_outcome(&m, &d, &s, &[]);
        assert_eq!(
            (o.cond.ok, o.cond.reason.as_str()),
            (ready, reason),
            "{name}"
        );
        assert_eq!(o.endpoints.len(), endpoints, "{name}");
        assert_eq!(
            o.token_secret.as_deref(),
            Some("wirekube-relay-m"),
            "{name}"
        );
    }
    let o = relay_outcome(&m, &dep(1), &lb(Some("203.0.113.5")), &[]);
    assert_eq!(o.stun, ["203.0.113.5:3478", "203.0.113.5:3479"]);
}

fn published() -> RelayOutcome {
    RelayOutcome {
        endpoints: vec!["203.0.113.5:3478".into()],
        cond: status::relay_cond(true, "EndpointsPublished", "ok"),
        token_secret: Some("wirekube-relay-m".into()),
        stun: Vec::new(),
    }
}

fn cluster_node(name: &str, ip: &str) -> ClusterNode {
    ClusterNode::from_node(&node(name, &[("InternalIP", ip)], &[]))
}

fn stored_peer(
    name: &str,
    mesh: &str,
    spec: WireKubePeerSpec,
    key: Option<&str>,
) -> Arc<WireKubePeer> {
    let mut p = WireKubePeer::new(name, spec);
    p.metadata.labels = Some(labels(&[(MESH_LABEL, mesh)]));
    p.metadata.resource_version = Some(format!("rv-{name}"));
    p.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        ..OwnerReference::default()
    }]);
    p.status = key.map(|k| {
        peer_status(
            k,
            NatType::FullCone,
            "10.0.0.1:51820",
            Some("198.51.100.1:51820"),
        )
    });
    Arc::new(p)
}

fn peers(list: Vec<Arc<WireKubePeer>>) -> BTreeMap<String, Arc<WireKubePeer>> {
    list.into_iter().map(|p| (p.name_any(), p)).collect()
}

fn decide_once(
    m: &WireKubeMesh,
    nodes: &[ClusterNode],
    stored: &BTreeMap<String, Arc<WireKubePeer>>,
) -> std::result::Result<MeshChanges, Box<Rejected>> {
    let relay = published();
    mesh(
        &MeshObserved {
            mesh: m,
            nodes,
            peers: stored,
            relay: &relay,
        },
        &time(10),
    )
}

#[test]
fn first_pass_writes_every_peer_and_announces_joins() {
    let m = mesh_fixture("m", json!({"meshCIDR": "10.1.0.0/24"}));
    let nodes = [cluster_node("a", "10.0.0.1"), cluster_node("b", "10.0.0.2")];
    let c = decide_once(&m, &nodes, &BTreeMap::new()).unwrap();
    let written: Vec<(&str, &str, Option<&str>)> = (c.writes.iter())
        .map(|w| {
            (
                w.node.as_str(),
                w.node_uid.as_str(),
                w.observed_rv.as_deref(),
            )
        })
        .collect();
    assert_eq!(written, [("a", "uid-a", None), ("b", "uid-b", None)]);
    assert_eq!(c.writes[0].spec.mesh_ip, "10.1.0.1");
    assert_eq!(c.writes[0].spec.relay_endpoints, ["203.0.113.5:3478"]);
    assert!(c.deletes.is_empty());
    assert_eq!(
        c.events,
        [
            Decision::RelayEndpointsPublished(vec!["203.0.113.5:3478".into()]),
            Decision::NodeJoined("a".into()),
            Decision::NodeJoined("b".into()),
        ]
    );
    assert_eq!((c.counts.total, c.counts.pending), (2, 2));
    assert_eq!(c.status.pending_nodes, ["a", "b"]);
    assert_eq!(c.status.observed_generation, Some(1));
    assert_eq!(c.status.relay_endpoints, ["203.0.113.5:3478"]);
    let ready = c
        .status
        .conditions
        .iter()
        .find(|x| x.type_ == READY)
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Reconciled")
    );
    assert_eq!(ready.last_transition_time, time(10));
}

#[test]
fn steady_state_writes_nothing_and_deletes_leavers() {
    let m = mesh_fixture("m", json!({"meshCIDR": "10.1.0.0/24"}));
    let nodes = [cluster_node("a", "10.0.0.1"), cluster_node("b", "10.0.0.2")];
    let first = decide_once(&m, &nodes, &BTreeMap::new()).unwrap();
    let mut stored: Vec<Arc<WireKubePeer>> = (first.writes.iter())
        .map(|w| stored_peer(&w.node, "m", w.spec.clone(), None))
        .collect();
    stored.push(stored_peer("gone", "m", WireKubePeerSpec::default(), None));
    stored.push(stored_peer(
        "theirs",
        "other",
        WireKubePeerSpec::default(),
        None,
    ));
    let stored = peers(stored);
    let mut m2 = m.clone();
    m2.status = Some(first.status.clone());
    let c = decide_once(&m2, &nodes, &stored).unwrap();
    assert!(c.writes.is_empty(), "{:?}", c.writes);
    assert_eq!(
        c.deletes,
        ["gone"],
        "only this mesh's peers of nodes that left"
    );
    assert_eq!(c.events, [Decision::NodeLeft("gone".into())]);
    assert_eq!(c.status, first.status, "nothing to report twice");
}

#[test]
fn node_of_another_mesh_is_an_issue_not_a_write() {
    let m = mesh_fixture("m", json!({"meshCIDR": "10.1.0.0/24"}));
    let nodes = [cluster_node("a", "10.0.0.1"), cluster_node("b", "10.0.0.2")];
    let stored = peers(vec![stored_peer(
        "b",
        "other",
        WireKubePeerSpec::default(),
        None,
    )]);
    let c = decide_once(&m, &nodes, &stored).unwrap();
    let names: Vec<&str> = c.writes.iter().map(|w| w.node.as_str()).collect();
    assert_eq!(names, ["a"]);
    assert!(c.deletes.is_empty(), "another mesh's peer is never deleted");
    let ready = c
        .status
        .conditions
        .iter()
        .find(|x| x.type_ == READY)
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "NodeInOtherMesh")
    );
    assert!(
        ready
            .message
            .contains("node b already belongs to mesh other"),
        "{}",
        ready.message
    );
}

#[test]
fn duplicate_keys_quarantine_with_note_and_event() {
    let m = mesh_fixture("m", json!({"meshCIDR": "10.1.0.0/24"}));
    let nodes = [
        cluster_node("a", "10.0.0.1"),
        cluster_node("b", "10.0.0.2"),
        cluster_node("c", "10.0.0.3"),
    ];
    let key = test_key("shared");
    let stored = peers(vec![
        stored_peer("a", "m", WireKubePeerSpec::default(), Some(&key)),
        stored_peer("b", "m", WireKubePeerSpec::default(), Some(&key)),
        stored_peer("c", "m", WireKubePeerSpec::default(), Some(&test_key("c"))),
    ]);
    let c = decide_once(&m, &nodes, &stored).unwrap();
    assert_eq!(c.quarantined, 2);
    let notes: Vec<(&str, bool, Option<&str>)> = (c.writes.iter())
        .map(|w| {
            (
                w.node.as_str(),
                w.quarantine.is_some(),
                w.observed_rv.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        notes,
        [
            ("a", true, Some("rv-a")),
            ("b", true, Some("rv-b")),
            ("c", false, Some("rv-c"))
        ]
    );
    let quarantined: Vec<&Decision> = (c.events.iter())
        .filter(|d| matches!(d, Decision::KeyQuarantined { .. }))
        .collect();
    assert_eq!(quarantined.len(), 1, "{:?}", c.events);
    assert_eq!(quarantined[0].node(), Some("a"));
    let keys = c
        .status
        .conditions
        .iter()
        .find(|x| x.type_ == PUBLIC_KEYS_VALID)
        .unwrap();
    assert_eq!(keys.status, "False");

    // Next pass: the notes are stored, so the quarantine is not announced again.
    let stored = peers(
        (c.writes.iter())
            .map(|w| {
                let mut p = (*stored_peer(
                    &w.node,
                    "m",
                    w.spec.clone(),
                    stored[&w.node]
                        .status
                        .as_ref()
                        .and_then(|s| s.public_key.as_deref()),
                ))
                .clone();
                if let Some(n) = &w.quarantine {
                    p.metadata.annotations = Some(labels(&[(QUARANTINE_ANNOTATION, n)]));
                }
                Arc::new(p)
            })
            .collect(),
    );
    let again = decide_once(&m, &nodes, &stored).unwrap();
    assert!(again.writes.is_empty(), "{:?}", again.writes);
    assert!(
        !again
            .events
            .iter()
            .any(|d| matches!(d, Decision::KeyQuarantined { .. })),
        "{:?}",
        again.events
    );
}

#[test]
fn invalid_cidr_rejects_and_keeps_the_stored_state() {
    let mut m = mesh_fixture("m", json!({}));
    m.spec.mesh_cidr = "nonsense".into();
    let prev = WireKubeMeshStatus {
        relay_endpoints: vec!["203.0.113.5:3478".into()],
        ..WireKubeMeshStatus::default()
    };
    m.status = Some(prev.clone());
    let nodes = [cluster_node("a", "10.0.0.1")];
    let r = decide_once(&m, &nodes, &BTreeMap::new()).unwrap_err();
    assert_eq!(r.reason, "PlanningFailed");
    assert!(r.message.contains("nonsense"), "{}", r.message);
    assert_eq!(r.status.relay_endpoints, prev.relay_endpoints);
    let ready = r
        .status
        .conditions
        .iter()
        .find(|x| x.type_ == READY)
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "PlanningFailed")
    );
}

#[test]
fn invalid_spec_names_the_field() {
    let good = mesh_fixture("m", json!({}));
    assert_eq!(invalid_spec(&good, &time(1)), None);
    let bad = mesh_fixture("m", json!({"listenPort": 0}));
    let r = invalid_spec(&bad, &time(1)).expect("port 0 is rejected");
    assert_eq!(r.reason, "InvalidSpec");
    assert!(r.message.contains("listenPort"), "{}", r.message);
    let ready = r
        .status
        .conditions
        .iter()
        .find(|x| x.type_ == READY)
        .unwrap();
    assert_eq!(ready.reason, "InvalidSpec");
}
