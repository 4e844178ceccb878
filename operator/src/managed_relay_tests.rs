use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};
use serde_json::json;
use wirekube_crds::RelayMode;

use super::*;
use crate::test_objects::{mesh, node};

fn managed(extra: serde_json::Value) -> WireKubeMesh {
    let mut spec = json!({"relay": {"managed": {"port": 3478, "replicas": 2, "image": "relay:1"}}});
    if let (Some(r), Some(e)) = (spec["relay"]["managed"].as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    mesh("default", spec)
}

fn facts() -> Vec<ClusterNode> {
    vec![
        ClusterNode::from_node(&node(
            "a",
            &[("InternalIP", "10.0.0.1"), ("ExternalIP", "198.51.100.1")],
            &[],
        )),
        ClusterNode::from_node(&node("b", &[("InternalIP", "10.0.0.2")], &[])),
        ClusterNode::from_node(&node("c", &[("Hostname", "c")], &[])),
    ]
}

#[test]
fn deployment_has_image_replicas_args_secret_and_owner() {
    let m = managed(json!({}));
    let d = desired_deployment(&m, "wk", None).unwrap();
    assert_eq!(d.metadata.name.as_deref(), Some("wirekube-relay-default"));
    assert_eq!(d.metadata.namespace.as_deref(), Some("wk"));
    let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("WireKubeMesh", "uid-default")
    );
    assert_eq!(owner.controller, Some(true));
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("relay:1"));
    assert_eq!(
        c.args.as_ref().unwrap(),
        &[
            "--listen=0.0.0.0:3478",
            "--stun-port=3478",
            "--stun-alt-port=3479",
            "--metrics-listen=0.0.0.0:9090",
            "--token-file=/etc/wirekube/token/token",
            "--total-queue-bytes=268435456",
        ]
    );
    // The relay's own parser reads them back as meant.
    use clap::Parser as _;
    let argv = std::iter::once("wirekube-relay".to_string()).chain(c.args.clone().unwrap());
    let parsed = wirekube_relay::cli::Args::try_parse_from(argv).unwrap();
    assert_eq!(parsed.listen, "0.0.0.0:3478".parse().unwrap());
    assert_eq!((parsed.stun_port, parsed.stun_alt_port), (3478, 3479));
    assert_eq!(parsed.metrics_listen.port(), METRICS_PORT);
    assert_eq!(
        parsed.token_file,
        std::path::Path::new(TOKEN_DIR).join(TOKEN_KEY)
    );
    assert_eq!(
        parsed.total_queue_bytes as u64,
        RELAY_QUEUE_BUDGET_MIB << 20
    );
    let res = c.resources.as_ref().unwrap();
    let get = |m: &Option<BTreeMap<String, Quantity>>, k: &str| {
        m.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone())
    };
    assert_eq!(get(&res.requests, "memory").as_deref(), Some("128Mi"));
    assert_eq!(get(&res.requests, "cpu").as_deref(), Some("100m"));
    assert_eq!(get(&res.limits, "memory").as_deref(), Some("1Gi"));
    assert_eq!(
        get(&res.limits, "cpu"),
        None,
        "no CPU throttling of the relay"
    );
    assert_eq!(c.env.as_ref().unwrap()[0].name, "WIREKUBE_RELAY_STUN_IP");
    let probe_of = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let p = p.as_ref().unwrap();
        let path = p.http_get.as_ref().unwrap().path.clone().unwrap();
        (path, p.period_seconds)
    };
    // Readiness is checked every second: it decides when a moved relay is published.
    assert_eq!(
        probe_of(&c.readiness_probe),
        ("/readyz".to_string(), Some(READINESS_PERIOD_SECONDS))
    );
    assert_eq!(probe_of(&c.liveness_probe), ("/healthz".to_string(), None));
    let vol = &pod.volumes.as_ref().unwrap()[0];
    assert_eq!(
        vol.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("wirekube-relay-default")
    );
    assert_eq!(c.volume_mounts.as_ref().unwrap()[0].mount_path, TOKEN_DIR);
    assert_eq!(
        spec.selector.match_labels,
        spec.template.metadata.as_ref().unwrap().labels
    );
    let d2 = desired_deployment(&m, "wk", Some("local/relay:dev")).unwrap();
    assert_eq!(
        d2.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .as_deref(),
        Some("local/relay:dev")
    );
}

/// The memory limit must hold the queue budget the relay is started with, plus the
/// connections' own memory (docs/relay.md): at least 2.5× the budget.
#[test]
fn relay_memory_limit_covers_the_queue_budget() {
    let limit_mib = match RELAY_MEMORY_LIMIT.strip_suffix("Gi") {
        Some(g) => g.parse::<u64>().unwrap() * 1024,
        None => RELAY_MEMORY_LIMIT
            .strip_suffix("Mi")
            .unwrap()
            .parse::<u64>()
            .unwrap(),
    };
    assert!(
        limit_mib * 2 >= RELAY_QUEUE_BUDGET_MIB * 5,
        "{limit_mib} MiB"
    );
}

#[test]
fn hash_is_stable_and_tracks_changes() {
    let m = managed(json!({}));
    let a = desired_deployment(&m, "wk", None).unwrap();
    let b = desired_deployment(&m, "wk", None).unwrap();
    assert!(up_to_date(&a.metadata, &b.metadata));
    let c = desired_deployment(&managed(json!({"replicas": 3})), "wk", None).unwrap();
    assert!(!up_to_date(&a.metadata, &c.metadata));
    // An object without the annotation (created by someone else) is rewritten.
    assert!(!up_to_date(&ObjectMeta::default(), &a.metadata));
    assert_eq!(
        hash_json(&json!({"a": 1})).unwrap(),
        hash_json(&json!({"a": 1})).unwrap()
    );
    assert_ne!(
        hash_json(&json!({"a": 1})).unwrap(),
        hash_json(&json!({"a": 2})).unwrap()
    );
}

#[test]
fn service_ports_and_types() {
    let s = desired_service(&managed(json!({"annotations": {"x": "y"}})), "wk").unwrap();
    let spec = s.spec.as_ref().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
    let ports: Vec<_> = spec
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p.name.clone().unwrap(),
                p.port,
                p.protocol.clone().unwrap(),
                p.node_port,
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("relay".into(), 3478, "TCP".into(), None),
            ("stun".into(), 3478, "UDP".into(), None),
            ("stun-alt".into(), 3479, "UDP".into(), None),
        ]
    );
    assert_eq!(s.metadata.annotations.as_ref().unwrap()["x"], "y");
    let np = desired_service(
        &managed(json!({"serviceType": "NodePort", "nodePort": 31000})),
        "wk",
    )
    .unwrap();
    let spec = np.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("NodePort"));
    assert_eq!(spec.ports.unwrap()[0].node_port, Some(31000));
}

#[test]
fn both_service_types_keep_client_addresses() {
    // Cluster would SNAT NodePort traffic to the node's address and break STUN.
    for ty in ["LoadBalancer", "NodePort"] {
        let s = desired_service(&managed(json!({"serviceType": ty})), "wk").unwrap();
        let spec = s.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some(ty));
        assert_eq!(
            spec.external_traffic_policy.as_deref(),
            Some("Local"),
            "{ty}"
        );
    }
}

#[test]
fn deployment_placement() {
    type Want = (Option<Vec<(&'static str, &'static str)>>, Option<usize>);
    let cases: [(&str, serde_json::Value, Want); 4] = [
        ("none", json!({}), (None, None)),
        (
            "empty",
            json!({"nodeSelector": {}, "tolerations": []}),
            (None, None),
        ),
        (
            "selector",
            json!({"nodeSelector": {"kubernetes.io/hostname": "gw-1", "wirekube.io/relay": ""}}),
            (
                Some(vec![
                    ("kubernetes.io/hostname", "gw-1"),
                    ("wirekube.io/relay", ""),
                ]),
                None,
            ),
        ),
        (
            "selector and tolerations",
            json!({
                "nodeSelector": {"topology.kubernetes.io/zone": "cloud-a"},
                "tolerations": [
                    {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
                    {"key": "dedicated", "value": "relay", "effect": "NoExecute", "tolerationSeconds": 30}
                ]
            }),
            (
                Some(vec![("topology.kubernetes.io/zone", "cloud-a")]),
                Some(2),
            ),
        ),
    ];
    for (name, extra, (selector, tolerations)) in cases {
        let m = managed(extra);
        let d = desired_deployment(&m, "wk", None).unwrap();
        let pod = d.spec.unwrap().template.spec.unwrap();
        let want = selector.map(|s| crate::test_objects::labels(&s));
        assert_eq!(pod.node_selector, want, "{name}");
        assert_eq!(
            pod.tolerations.as_ref().map(Vec::len),
            tolerations,
            "{name}"
        );
        if let Some(t) = pod.tolerations {
            assert_eq!(
                t, m.spec.relay.managed.tolerations,
                "{name}: copied as given"
            );
        }
    }
}

#[test]
fn placement_changes_the_hash_and_no_placement_keeps_it() {
    let plain = desired_deployment(&managed(json!({})), "wk", None).unwrap();
    let empty = desired_deployment(
        &managed(json!({"nodeSelector": {}, "tolerations": []})),
        "wk",
        None,
    )
    .unwrap();
    assert!(up_to_date(&plain.metadata, &empty.metadata));
    let pinned = desired_deployment(
        &managed(json!({"nodeSelector": {"kubernetes.io/hostname": "gw-1"}})),
        "wk",
        None,
    )
    .unwrap();
    assert!(!up_to_date(&plain.metadata, &pinned.metadata));
}

#[test]
fn secret_and_token() {
    let t1 = generate_token();
    let t2 = generate_token();
    assert_ne!(t1, t2);
    assert_eq!(t1.len(), 44); // 32 bytes in base64
    let m = managed(json!({}));
    let s = desired_secret(&m, "wk", t1.as_bytes()).unwrap();
    assert_eq!(existing_token(&s), Some(t1.as_bytes()));
    let empty = desired_secret(&m, "wk", b" \n").unwrap();
    assert_eq!(existing_token(&empty), None);
    assert_eq!(existing_token(&Secret::default()), None);
    assert!(owned_by(&s.metadata, &m));
    assert!(!owned_by(&ObjectMeta::default(), &m));
}

fn lb(ingress: Vec<LoadBalancerIngress>) -> Service {
    let mut s = desired_service(&managed(json!({})), "wk").unwrap();
    s.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(ingress),
        }),
        ..ServiceStatus::default()
    });
    s
}

#[test]
fn load_balancer_exposure() {
    assert!(matches!(
        exposure(None, 3478, &[]),
        Exposure::Waiting("WaitingForService", _)
    ));
    assert!(matches!(
        exposure(Some(&lb(vec![])), 3478, &[]),
        Exposure::Waiting("WaitingForLoadBalancer", _)
    ));
    let s = lb(vec![
        LoadBalancerIngress {
            ip: Some("203.0.113.7".into()),
            ..Default::default()
        },
        LoadBalancerIngress {
            hostname: Some("lb.example.com".into()),
            ..Default::default()
        },
    ]);
    assert_eq!(
        exposure(Some(&s), 3478, &[]),
        Exposure::Endpoints(vec![
            "203.0.113.7:3478".into(),
            "lb.example.com:3478".into()
        ])
    );
    assert_eq!(
        managed_stun(Some(&s), 3478, &[]),
        ["203.0.113.7:3478", "203.0.113.7:3479"]
    );
}

#[test]
fn node_port_exposure() {
    let mut s = desired_service(&managed(json!({"serviceType": "NodePort"})), "wk").unwrap();
    assert!(matches!(
        exposure(Some(&s), 3478, &facts()),
        Exposure::Waiting("WaitingForNodePort", _)
    ));
    for (p, np) in s
        .spec
        .as_mut()
        .unwrap()
        .ports
        .as_mut()
        .unwrap()
        .iter_mut()
        .zip([31000, 31001, 31002])
    {
        p.node_port = Some(np);
    }
    // `facts()` stand for the nodes running relay pods, in publishing order.
    assert_eq!(
        exposure(Some(&s), 3478, &facts()),
        Exposure::Endpoints(vec!["198.51.100.1:31000".into(), "10.0.0.2:31000".into()])
    );
    assert!(matches!(
        exposure(Some(&s), 3478, &[]),
        Exposure::Waiting("WaitingForRelayPod", _)
    ));
    assert!(matches!(
        exposure(Some(&s), 3478, &facts()[2..]),
        Exposure::Waiting("NoNodeAddresses", m) if m.contains("(c)")
    ));
    assert_eq!(
        managed_stun(Some(&s), 3478, &facts()),
        ["198.51.100.1:31001", "198.51.100.1:31002"]
    );
    assert!(managed_stun(Some(&s), 3478, &[]).is_empty());
}

#[test]
fn node_port_endpoints_are_the_nodes_running_the_relay() {
    use crate::placement::RelayPlacement;
    let mut s = desired_service(&managed(json!({"serviceType": "NodePort"})), "wk").unwrap();
    for (p, np) in s
        .spec
        .as_mut()
        .unwrap()
        .ports
        .as_mut()
        .unwrap()
        .iter_mut()
        .zip([31000, 31001, 31002])
    {
        p.node_port = Some(np);
    }
    let nodes = [
        node("behind-nat", &[("InternalIP", "10.0.0.1")], &[]),
        node(
            "gw",
            &[("InternalIP", "10.1.0.1"), ("ExternalIP", "198.51.100.9")],
            &[],
        ),
        node("site-b", &[("InternalIP", "10.2.0.1")], &[]),
    ];
    let set = |n: &[&str]| n.iter().map(|s| s.to_string()).collect();
    type Case = (
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
        &'static [&'static str],
        Result<&'static [&'static str], &'static str>,
        &'static [&'static str],
    );
    let cases: [Case; 9] = [
        ("no pod", &[], &[], &[], Err("WaitingForRelayPod"), &[]),
        (
            "pinned, starting",
            &[],
            &["gw"],
            &[],
            Ok(&["198.51.100.9:31000"]),
            &["198.51.100.9:31001", "198.51.100.9:31002"],
        ),
        (
            "pinned, ready",
            &["gw"],
            &["gw"],
            &[],
            Ok(&["198.51.100.9:31000"]),
            &["198.51.100.9:31001", "198.51.100.9:31002"],
        ),
        (
            "ready beats starting",
            &["site-b"],
            &["gw", "site-b"],
            &[],
            Ok(&["10.2.0.1:31000"]),
            &["10.2.0.1:31001", "10.2.0.1:31002"],
        ),
        (
            "two ready, external first",
            &["behind-nat", "gw"],
            &["behind-nat", "gw"],
            &[],
            Ok(&["198.51.100.9:31000", "10.0.0.1:31000"]),
            &["198.51.100.9:31001", "198.51.100.9:31002"],
        ),
        (
            "moving: the new node's pod starts, the published node is held",
            &[],
            &["site-b"],
            &["198.51.100.9:31000"],
            Ok(&["198.51.100.9:31000"]),
            &["198.51.100.9:31001", "198.51.100.9:31002"],
        ),
        (
            "moving: no pod bound yet, the published node is held",
            &[],
            &[],
            &["198.51.100.9:31000"],
            Ok(&["198.51.100.9:31000"]),
            &["198.51.100.9:31001", "198.51.100.9:31002"],
        ),
        (
            "moved: the new node's pod is ready",
            &["site-b"],
            &["site-b"],
            &["198.51.100.9:31000"],
            Ok(&["10.2.0.1:31000"]),
            &["10.2.0.1:31001", "10.2.0.1:31002"],
        ),
        (
            "the published address is no node's (node deleted): the starting pod's node",
            &[],
            &["site-b"],
            &["203.0.113.7:31000", "relay.example.com:3478"],
            Ok(&["10.2.0.1:31000"]),
            &["10.2.0.1:31001", "10.2.0.1:31002"],
        ),
    ];
    for (name, ready, scheduled, published, want, stun) in cases {
        let published: Vec<String> = published.iter().map(|e| e.to_string()).collect();
        let hosts = RelayPlacement {
            ready: set(ready),
            scheduled: set(scheduled),
        }
        .hosts(&nodes, &published);
        let got = exposure(Some(&s), 3478, &hosts);
        match want {
            Ok(eps) => assert_eq!(
                got,
                Exposure::Endpoints(eps.iter().map(|e| e.to_string()).collect()),
                "{name}"
            ),
            Err(reason) => assert!(
                matches!(got, Exposure::Waiting(r, _) if r == reason),
                "{name}: {got:?}"
            ),
        }
        assert_eq!(managed_stun(Some(&s), 3478, &hosts), stun, "{name}");
    }
}

#[test]
fn relay_kinds() {
    let mut m = managed(json!({}));
    assert_eq!(relay_kind(&m.spec), RelayKind::Managed);
    m.spec.relay.provider = wirekube_crds::RelayProvider::External;
    m.spec.relay.external = Some(wirekube_crds::ExternalRelay {
        endpoint: "relay.example.com:443".into(),
    });
    assert_eq!(
        relay_kind(&m.spec),
        RelayKind::External("relay.example.com:443".into())
    );
    m.spec.relay.mode = RelayMode::Never;
    assert_eq!(relay_kind(&m.spec), RelayKind::Disabled);
    assert_eq!(
        external_stun("relay.example.com:443"),
        ["relay.example.com:443", "relay.example.com:444"]
    );
    assert_eq!(
        external_stun("[fd00::1]:3478"),
        ["[fd00::1]:3478", "[fd00::1]:3479"]
    );
    assert!(external_stun("nonsense").is_empty());
}

#[test]
fn managed_outcome_conditions() {
    let (e, c) = managed_outcome(
        Exposure::Waiting("WaitingForLoadBalancer", "m".into()),
        0,
        1,
    );
    assert!(e.is_empty() && !c.ok && c.reason == "WaitingForLoadBalancer");
    let (e, c) = managed_outcome(Exposure::Endpoints(vec!["1.2.3.4:3478".into()]), 0, 2);
    assert_eq!(e, ["1.2.3.4:3478"]);
    assert!(!c.ok && c.reason == "RelayUnavailable" && c.message.contains("0/2"));
    let (_, c) = managed_outcome(Exposure::Endpoints(vec!["1.2.3.4:3478".into()]), 2, 2);
    assert!(c.ok && c.reason == "EndpointsPublished");
    assert_eq!(c.type_, wirekube_crds::conditions::RELAY_READY);
}
