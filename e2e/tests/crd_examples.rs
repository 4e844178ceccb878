//! Our generated CRDs, enforced as an API server enforces them: every sample is admitted,
//! and every bad example is rejected by the OpenAPI schema or a CEL rule with the field
//! named. (The Rust `validate_mesh()` has its own table in `crds/src/validate/tests.rs`.)

use std::path::PathBuf;

use serde_json::{Value, json};
use wirekube_e2e::apiserver::schema::CompiledSchema;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn mesh_schema() -> CompiledSchema {
    let text = std::fs::read_to_string(root().join("config/crd/wirekube.io_wirekubemeshes.yaml"))
        .expect("generated CRD present");
    let crd: Value = serde_yaml::from_str(&text).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    CompiledSchema::from_openapi_v3(schema).expect("our CRD schema compiles")
}

fn mesh(spec: Value) -> Value {
    json!({"apiVersion": "wirekube.io/v1alpha1", "kind": "WireKubeMesh",
           "metadata": {"name": "default"}, "spec": spec})
}

#[test]
fn samples_are_admitted_and_defaulted() {
    let schema = mesh_schema();
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("config/samples")).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("mesh-")
        {
            continue;
        }
        let mut obj: Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        if let Err(errs) = schema.admit(&mut obj, None) {
            panic!("{} rejected: {errs:?}", path.display());
        }
        // Defaults are applied as an API server would.
        assert_eq!(obj["spec"]["listenPort"], 51820, "{}", path.display());
        assert_eq!(obj["spec"]["mtu"], 1420);
        assert!(obj["spec"]["relay"]["directTimeout"].as_str().is_some());
        n += 1;
    }
    assert_eq!(n, 4);
}

#[test]
fn empty_spec_gets_every_default() {
    let mut obj = mesh(json!({}));
    mesh_schema()
        .admit(&mut obj, None)
        .expect("spec: {} is a valid mesh");
    let s = &obj["spec"];
    assert_eq!(s["meshCIDR"], "10.99.0.0/16");
    assert_eq!(s["interfaceName"], "wirekube0");
    assert_eq!(s["relay"]["mode"], "auto");
    assert_eq!(s["relay"]["provider"], "managed");
    assert_eq!(s["relay"]["managed"]["port"], 3478);
    assert_eq!(s["relay"]["managed"]["serviceType"], "LoadBalancer");
    assert_eq!(s["relay"]["managed"]["replicas"], 1);
}

#[test]
fn bad_examples_are_rejected_with_the_field_named() {
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "external without endpoint",
            json!({"relay": {"provider": "external"}}),
            "spec.relay.external.endpoint",
        ),
        (
            "cidr not a cidr",
            json!({"meshCIDR": "10.99.0.0"}),
            "spec.meshCIDR",
        ),
        (
            "cidr too large",
            json!({"meshCIDR": "10.0.0.0/7"}),
            "spec.meshCIDR",
        ),
        (
            "cidr too small",
            json!({"meshCIDR": "10.0.0.0/29"}),
            "spec.meshCIDR",
        ),
        (
            "cidr ipv6",
            json!({"meshCIDR": "fd00::/64"}),
            "spec.meshCIDR",
        ),
        (
            "one stun server",
            json!({"stunServers": ["1.2.3.4:3478"]}),
            "spec.stunServers",
        ),
        (
            "stun server without port",
            json!({"stunServers": ["1.2.3.4:3478", "nope"]}),
            "spec.stunServers[1]",
        ),
        ("mtu too small", json!({"mtu": 1000}), "spec.mtu"),
        ("mtu too large", json!({"mtu": 9001}), "spec.mtu"),
        ("port zero", json!({"listenPort": 0}), "spec.listenPort"),
        (
            "port too large",
            json!({"listenPort": 70000}),
            "spec.listenPort",
        ),
        (
            "bad mode",
            json!({"relay": {"mode": "sometimes"}}),
            "spec.relay.mode",
        ),
        (
            "bad provider",
            json!({"relay": {"provider": "cloud"}}),
            "spec.relay.provider",
        ),
        (
            "bad service type",
            json!({"relay": {"managed": {"serviceType": "ClusterIP"}}}),
            "spec.relay.managed.serviceType",
        ),
        (
            "nodePort out of range",
            json!({"relay": {"managed": {"nodePort": 8080}}}),
            "spec.relay.managed.nodePort",
        ),
        (
            "zero replicas",
            json!({"relay": {"managed": {"replicas": 0}}}),
            "spec.relay.managed.replicas",
        ),
        (
            "bad duration",
            json!({"relay": {"directTimeout": "ten seconds"}}),
            "spec.relay.directTimeout",
        ),
        (
            "interface name too long",
            json!({"interfaceName": "this-name-is-too-long"}),
            "spec.interfaceName",
        ),
        ("mtu wrong type", json!({"mtu": "big"}), "spec.mtu"),
    ];
    let schema = mesh_schema();
    for (what, spec, field) in cases {
        let mut obj = mesh(spec);
        match schema.admit(&mut obj, None) {
            Ok(()) => panic!("{what}: admitted, but must be rejected at {field}"),
            Err(errs) => assert!(
                errs.iter().any(|e| e.path == field),
                "{what}: expected an error at {field}, got {errs:?}"
            ),
        }
    }
}

#[test]
fn unknown_fields_are_pruned_not_kept() {
    let mut obj =
        mesh(json!({"meshCIDR": "10.99.0.0/16", "typo": true, "relay": {"mdoe": "always"}}));
    mesh_schema().admit(&mut obj, None).unwrap();
    assert!(obj["spec"].get("typo").is_none());
    assert!(obj["spec"]["relay"].get("mdoe").is_none());
    assert_eq!(obj["spec"]["relay"]["mode"], "auto");
}
