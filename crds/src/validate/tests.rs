use super::*;
use crate::mesh::{ExternalRelay, WireKubeMeshSpec};

fn base() -> WireKubeMeshSpec {
    serde_json::from_value(serde_json::json!({})).expect("empty spec gets defaults")
}

fn fields(spec: &WireKubeMeshSpec) -> Vec<String> {
    match validate_mesh(spec) {
        Ok(()) => vec![],
        Err(ps) => ps.into_iter().map(|p| p.field).collect(),
    }
}

#[test]
fn defaults_are_valid() {
    let spec = base();
    assert_eq!(spec.mesh_cidr, "10.99.0.0/16");
    assert_eq!(spec.listen_port, 51820);
    assert_eq!(spec.mtu, 1420);
    assert_eq!(spec.relay.managed.port, 3478);
    assert_eq!(spec.relay.direct_timeout, "10s");
    assert_eq!(validate_mesh(&spec), Ok(()));
}

#[test]
fn good_examples_pass() {
    let mut s = base();
    s.mesh_cidr = "172.30.0.0/28".into();
    s.stun_servers = vec!["198.18.0.51:3478".into(), "stun.example.com:3479".into()];
    s.relay.provider = RelayProvider::External;
    s.relay.external = Some(ExternalRelay {
        endpoint: "relay.example.com:3478".into(),
    });
    s.relay.managed.node_port = Some(30478);
    assert_eq!(validate_mesh(&s), Ok(()));
}

#[test]
fn each_bad_example_names_its_field() {
    type Mutate = fn(&mut WireKubeMeshSpec);
    let cases: &[(&str, Mutate)] = &[
        ("spec.meshCIDR", |s| s.mesh_cidr = "10.99.0.0".into()),
        ("spec.meshCIDR", |s| s.mesh_cidr = "10.0.0.0/7".into()),
        ("spec.meshCIDR", |s| s.mesh_cidr = "10.0.0.0/29".into()),
        ("spec.meshCIDR", |s| s.mesh_cidr = "10.99.1.0/16".into()),
        ("spec.meshCIDR", |s| s.mesh_cidr = "fd00::/64".into()),
        ("spec.listenPort", |s| s.listen_port = 0),
        ("spec.interfaceName", |s| {
            s.interface_name = "this-name-is-too-long".into()
        }),
        ("spec.interfaceName", |s| s.interface_name = "wg 0".into()),
        ("spec.mtu", |s| s.mtu = 1000),
        ("spec.mtu", |s| s.mtu = 9001),
        ("spec.persistentKeepalive", |s| {
            s.persistent_keepalive = 70000
        }),
        ("spec.stunServers", |s| {
            s.stun_servers = vec!["1.2.3.4:3478".into()]
        }),
        ("spec.stunServers[1]", |s| {
            s.stun_servers = vec!["1.2.3.4:3478".into(), "nope".into()]
        }),
        ("spec.stunServers[0]", |s| {
            s.stun_servers = vec!["1.2.3.4:0".into(), "1.2.3.4:3479".into()]
        }),
        ("spec.relay.external.endpoint", |s| {
            s.relay.provider = RelayProvider::External
        }),
        ("spec.relay.external.endpoint", |s| {
            s.relay.provider = RelayProvider::External;
            s.relay.external = Some(ExternalRelay {
                endpoint: "relay.example.com".into(),
            });
        }),
        ("spec.relay.directTimeout", |s| {
            s.relay.direct_timeout = "ten".into()
        }),
        ("spec.relay.directTimeout", |s| {
            s.relay.direct_timeout = "100ms".into()
        }),
        ("spec.relay.directTimeout", |s| {
            s.relay.direct_timeout = "1h".into()
        }),
        ("spec.relay.managed.port", |s| s.relay.managed.port = 0),
        ("spec.relay.managed.nodePort", |s| {
            s.relay.managed.node_port = Some(8080)
        }),
        ("spec.relay.managed.replicas", |s| {
            s.relay.managed.replicas = 0
        }),
        ("spec.relay.managed.replicas", |s| {
            s.relay.managed.replicas = 2
        }),
        ("spec.relay.managed.image", |s| {
            s.relay.managed.image = " ".into()
        }),
    ];
    for (field, mutate) in cases {
        let mut s = base();
        mutate(&mut s);
        let got = fields(&s);
        assert_eq!(got, vec![field.to_string()], "case for {field}");
        let msg = validate_mesh(&s).unwrap_err()[0].to_string();
        assert!(msg.contains("fix:"), "{msg} must say how to fix it");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut s = base();
    s.mesh_cidr = "nope".into();
    s.mtu = 10;
    s.relay.provider = RelayProvider::External;
    assert_eq!(
        fields(&s),
        vec!["spec.meshCIDR", "spec.mtu", "spec.relay.external.endpoint"]
    );
}

#[test]
fn host_port_forms() {
    for ok in [
        "1.2.3.4:1",
        "[2001:db8::1]:3478",
        "relay-1.example.com:3478",
        "relay:80",
    ] {
        assert_eq!(check_host_port(ok), Ok(()), "{ok}");
    }
    for bad in [
        "",
        ":3478",
        "host:",
        "host:99999",
        "-bad-.com:1",
        "a b:1",
        "1.2.3.4",
        "::1:80",
    ] {
        assert!(check_host_port(bad).is_err(), "{bad}");
    }
}

fn with_placement(placement: serde_json::Value) -> WireKubeMeshSpec {
    serde_json::from_value(serde_json::json!({"relay": {"managed": placement}}))
        .expect("placement fixture parses")
}

#[test]
fn relay_placement_good_examples_pass() {
    let good = [
        serde_json::json!({"nodeSelector": {"kubernetes.io/hostname": "gw-1"}}),
        serde_json::json!({"nodeSelector": {"wirekube.io/relay": "", "zone": "eu-1.a_b"}}),
        serde_json::json!({"tolerations": [
            {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "dedicated", "value": "gateway", "effect": "NoExecute", "tolerationSeconds": 60},
            {"operator": "Exists"}
        ]}),
    ];
    for p in good {
        assert_eq!(validate_mesh(&with_placement(p.clone())), Ok(()), "{p}");
    }
}

#[test]
fn relay_placement_bad_examples_name_their_field() {
    let long = "a".repeat(64);
    let cases = [
        (
            serde_json::json!({"nodeSelector": {"bad key": "x"}}),
            r#"spec.relay.managed.nodeSelector["bad key"]"#,
        ),
        (
            serde_json::json!({"nodeSelector": {"": "x"}}),
            r#"spec.relay.managed.nodeSelector[""]"#,
        ),
        (
            serde_json::json!({"nodeSelector": {"Example.COM/x": "y"}}),
            r#"spec.relay.managed.nodeSelector["Example.COM/x"]"#,
        ),
        (
            serde_json::json!({"nodeSelector": {"example.com/": "y"}}),
            r#"spec.relay.managed.nodeSelector["example.com/"]"#,
        ),
        (
            serde_json::json!({"nodeSelector": {"a/b/c": "y"}}),
            r#"spec.relay.managed.nodeSelector["a/b/c"]"#,
        ),
        (
            serde_json::json!({"nodeSelector": {long.clone(): "y"}}),
            "spec.relay.managed.nodeSelector[\"aaaa",
        ),
        (
            serde_json::json!({"nodeSelector": {"zone": "-eu"}}),
            r#"spec.relay.managed.nodeSelector["zone"]"#,
        ),
        (
            serde_json::json!({"nodeSelector": {"zone": long}}),
            r#"spec.relay.managed.nodeSelector["zone"]"#,
        ),
        (
            serde_json::json!({"tolerations": [{"key": "bad key", "operator": "Exists"}]}),
            "spec.relay.managed.tolerations[0].key",
        ),
        (
            serde_json::json!({"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}),
            "spec.relay.managed.tolerations[0].value",
        ),
        (
            serde_json::json!({"tolerations": [{"value": "v"}]}),
            "spec.relay.managed.tolerations[0].operator",
        ),
        (
            serde_json::json!({"tolerations": [{"key": "k", "operator": "In"}]}),
            "spec.relay.managed.tolerations[0].operator",
        ),
        (
            serde_json::json!({"tolerations": [{"key": "k", "value": "a b"}]}),
            "spec.relay.managed.tolerations[0].value",
        ),
        (
            serde_json::json!({"tolerations": [{"operator": "Exists"}, {"key": "k", "effect": "NoRun"}]}),
            "spec.relay.managed.tolerations[1].effect",
        ),
        (
            serde_json::json!({"tolerations": [{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}]}),
            "spec.relay.managed.tolerations[0].tolerationSeconds",
        ),
    ];
    for (placement, field) in cases {
        let spec = with_placement(placement.clone());
        let problems = validate_mesh(&spec).expect_err(field);
        assert_eq!(problems.len(), 1, "{placement}: {problems:?}");
        assert!(
            problems[0].field.starts_with(field),
            "{placement}: {problems:?}"
        );
        assert!(!problems[0].fix.is_empty());
    }
}
