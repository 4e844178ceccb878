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

/// `example/prometheus-operator-crd` of the module's zip, downloaded once into the cache
/// (`$XDG_CACHE_HOME/wirekube/gomod`, else `~/.cache/wirekube/gomod`).
fn crd_dir() -> PathBuf {
    // The same cache root as scripts/build-*.sh: $XDG_CACHE_HOME, else ~/.cache.
    let root = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache"));
    let cache = root.join("wirekube/gomod");
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
    rendered_all()
        .into_iter()
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

/// The chart rendered with [`VALUES`], every object.
fn rendered_all() -> Vec<Value> {
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
        .filter(|o| !o.is_null())
        .collect()
}

fn object<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} rendered"))
}

/// Whether `selector`'s matchLabels are all among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector["matchLabels"]
        .as_object()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels[k] == *v))
}

fn container_ports(pod_spec: &Value) -> Vec<String> {
    pod_spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect()
}

/// The monitors point at what the chart runs: the agents' PodMonitor selects the DaemonSet's
/// pods and scrapes a port they name; the operator's ServiceMonitor selects its metrics Service,
/// whose selector takes the operator's pods and whose target port the operator names. (The relay
/// PodMonitor selects the operator-made relay pods, `app.kubernetes.io/name: wirekube-relay`
/// with a `metrics` port in operator/src/managed_relay.rs; not rendered by the chart.)
#[test]
fn monitors_select_the_charts_pods_and_ports() {
    let objs = rendered_all();
    let agent = &object(&objs, "DaemonSet", "wirekube-agent")["spec"]["template"];
    let pm = &object(&objs, "PodMonitor", "wirekube-agent")["spec"];
    assert!(
        selects(&pm["selector"], &agent["metadata"]["labels"]),
        "{pm}"
    );
    let port = pm["podMetricsEndpoints"][0]["port"].as_str().expect("port");
    assert!(
        container_ports(&agent["spec"]).contains(&port.to_owned()),
        "{port}"
    );
    let sm = &object(&objs, "ServiceMonitor", "wirekube-operator")["spec"];
    let svc = object(&objs, "Service", "wirekube-operator-metrics");
    assert!(selects(&sm["selector"], &svc["metadata"]["labels"]), "{sm}");
    let sm_port = sm["endpoints"][0]["port"].as_str().expect("port");
    let svc_port = svc["spec"]["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == sm_port))
        .unwrap_or_else(|| panic!("the Service has no port {sm_port}"));
    let op = &object(&objs, "Deployment", "wirekube-operator")["spec"]["template"];
    let svc_sel = serde_json::json!({"matchLabels": svc["spec"]["selector"]});
    assert!(selects(&svc_sel, &op["metadata"]["labels"]), "{svc}");
    let target = svc_port["targetPort"]
        .as_str()
        .expect("a named target port");
    assert!(
        container_ports(&op["spec"]).contains(&target.to_owned()),
        "{target}"
    );
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
