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
