//! The chart's Prometheus Operator objects against the real schema (needs root, Go and the Go
//! module proxy): the prometheus-operator CRDs come from its Go module's zip
//! (`example/prometheus-operator-crd/`, fetched with `go mod download` into
//! ~/.cache/wirekube/gomod, outside the checkout), are applied to the lab's real API server,
//! and then the chart is `helm install`ed with every metrics integration and the mesh on. The
//! API server validates the ServiceMonitor, the PodMonitors and the PrometheusRule against the
//! CRDs' OpenAPI schemas; what it stores must hold every field the chart rendered (a field the
//! schema does not know would be pruned silently); and a ServiceMonitor that breaks the schema
//! is rejected (the schema is enforced, not merely installed).

mod common;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use wirekube_e2e::kube_lab::{KubeLab, helm_bin};
use wirekube_e2e::scenario::bins::repo_root;

/// The prometheus-operator release whose CRDs the chart is checked against.
const PROMETHEUS_OPERATOR: &str = "github.com/prometheus-operator/prometheus-operator@v0.85.0";
const CRDS: [&str; 3] = [
    "monitoring.coreos.com_servicemonitors.yaml",
    "monitoring.coreos.com_podmonitors.yaml",
    "monitoring.coreos.com_prometheusrules.yaml",
];
const NS: &str = "wirekube-system";
const VALUES: [&str; 5] = [
    "metrics.serviceMonitor.enabled=true",
    "metrics.podMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "metrics.grafanaDashboard.enabled=true",
    "mesh.create=true",
];

/// `example/prometheus-operator-crd` of the module's zip, downloaded once into the cache.
fn crd_dir() -> PathBuf {
    let home = std::env::var("HOME").expect("HOME");
    let cache = PathBuf::from(home).join(".cache/wirekube/gomod");
    std::fs::create_dir_all(&cache).expect("cache directory");
    // Outside any module (the cache directory has no go.mod), so nothing in the checkout changes.
    let out = common::run_ok(
        Command::new("go")
            .args(["mod", "download", "-json", PROMETHEUS_OPERATOR])
            .current_dir(&cache)
            .env("GOMODCACHE", &cache)
            .env("GOFLAGS", "-mod=mod"),
    );
    let info: Value = serde_json::from_slice(&out.stdout).expect("go mod download -json");
    let dir = PathBuf::from(info["Dir"].as_str().expect("Dir"));
    dir.join("example/prometheus-operator-crd")
}

/// The chart's monitoring.coreos.com objects, rendered with [`VALUES`].
fn rendered_monitors() -> Vec<Value> {
    use serde::Deserialize;
    let mut cmd = Command::new(helm_bin().expect("helm (scripts/build-go-tool.sh helm)"));
    cmd.current_dir(repo_root()).args([
        "template",
        "wirekube",
        "charts/wirekube",
        "--namespace",
        NS,
    ]);
    for v in VALUES {
        cmd.args(["--set", v]);
    }
    let yaml = String::from_utf8_lossy(&common::run_ok(&mut cmd).stdout).into_owned();
    serde_yaml::Deserializer::from_str(&yaml)
        .filter_map(|d| Value::deserialize(d).ok())
        .filter(|o| {
            o["apiVersion"]
                .as_str()
                .is_some_and(|a| a.starts_with("monitoring.coreos.com/"))
        })
        .collect()
}

/// Whether every field of `want` is in `got` with the same value (`got` may hold more: the
/// API server's defaults).
fn holds(got: &Value, want: &Value, path: &str) -> Result<(), String> {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => w.iter().try_for_each(|(k, wv)| match g.get(k) {
            Some(gv) => holds(gv, wv, &format!("{path}.{k}")),
            None => Err(format!(
                "{path}.{k} was dropped (pruned: not in the schema)"
            )),
        }),
        (Value::Array(g), Value::Array(w)) if g.len() == w.len() => g
            .iter()
            .zip(w)
            .enumerate()
            .try_for_each(|(i, (gv, wv))| holds(gv, wv, &format!("{path}[{i}]"))),
        _ if got == want => Ok(()),
        _ => Err(format!("{path}: stored {got}, rendered {want}")),
    }
}

#[test]
fn holds_finds_pruned_and_changed_fields() {
    use serde_json::json;
    let want = json!({"a": [{"b": 1, "c": "x"}]});
    assert_eq!(
        holds(&json!({"a": [{"b": 1, "c": "x", "d": 2}]}), &want, ""),
        Ok(())
    );
    assert!(holds(&json!({"a": [{"b": 1}]}), &want, "").is_err_and(|e| e.contains(".a[0].c")));
    assert!(holds(&json!({"a": [{"b": 2, "c": "x"}]}), &want, "").is_err());
    assert!(holds(&json!({"a": []}), &want, "").is_err());
}

#[test]
fn chart_monitors_install_against_the_prometheus_operator_crds() {
    assert!(wirekube_lab::is_root(), "needs root (network namespaces)");
    let dir = crd_dir();
    let want = rendered_monitors();
    let kinds: Vec<String> = want
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or(""),
                o["metadata"]["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    let mut sorted = kinds.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "PodMonitor/wirekube-agent",
            "PodMonitor/wirekube-relay",
            "PrometheusRule/wirekube",
            "ServiceMonitor/wirekube-operator",
        ],
        "the chart's monitors with every integration on"
    );
    let k = KubeLab::start("pmo").expect("lab control plane");
    for crd in CRDS {
        let path = dir.join(crd).to_string_lossy().into_owned();
        // Server-side: the CRDs are too big for client-side apply's last-applied annotation.
        k.kubectl(&["apply", "--server-side", "-f", &path])
            .expect("apply the CRD");
    }
    k.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/podmonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
    ])
    .expect("the CRDs established");
    let out = k
        .install_chart(&VALUES)
        .expect("helm install with every metrics integration");
    eprintln!(
        "$ helm install wirekube charts/wirekube --set {}\n{out}",
        VALUES.join(" --set ")
    );
    for w in &want {
        let (kind, name) = (
            w["kind"].as_str().unwrap_or(""),
            w["metadata"]["name"].as_str().unwrap_or(""),
        );
        let got: Value = serde_json::from_str(
            &k.kubectl(&["get", &kind.to_lowercase(), name, "-n", NS, "-o", "json"])
                .expect("get the stored object"),
        )
        .expect("json");
        if let Err(e) = holds(&got["spec"], &w["spec"], &format!("{kind}/{name} spec")) {
            panic!("{e}\nstored: {:#}", got["spec"]);
        }
    }
    let dashboard = k
        .kubectl(&[
            "get",
            "configmap",
            "wirekube-dashboard",
            "-n",
            NS,
            "-o",
            "name",
        ])
        .expect("the dashboard ConfigMap");
    assert_eq!(dashboard.trim(), "configmap/wirekube-dashboard");
    // The schema is enforced: a scrape interval that is not a duration is refused.
    let bad = k.lab.dir().join("bad-servicemonitor.json");
    let mut obj = want
        .iter()
        .find(|o| o["kind"] == "ServiceMonitor")
        .expect("the ServiceMonitor")
        .clone();
    obj["metadata"]["name"] = "bad".into();
    obj["spec"]["endpoints"][0]["interval"] = "thirty seconds".into();
    std::fs::write(&bad, obj.to_string()).expect("write");
    let err = k
        .kubectl(&["create", "-f", &bad.to_string_lossy()])
        .expect_err("an invalid interval must be refused");
    assert!(
        format!("{err:#}").contains("spec.endpoints[0].interval"),
        "{err:#}"
    );
    k.shutdown().expect("clean teardown");
}
