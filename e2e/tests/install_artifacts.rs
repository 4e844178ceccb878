//! What a user installs, checked without a cluster (needs `cargo build --workspace --bins`, Go
//! for helm (built once by scripts/build-go-tool.sh into ~/.cache/wirekube/tools) and kubectl):
//! - one version: the workspace version in Cargo.toml is every binary's `--version`, the image
//!   tags in config/, the relay image the CRD defaults to, and the chart's version/appVersion;
//! - the Helm chart (charts/wirekube) lints, its CRDs are config/crd's files (one source), and
//!   with default values it renders the objects `kubectl kustomize config/default` gives, equal
//!   field for field but for helm's own labels (and the Namespace, which `helm install
//!   --create-namespace` makes);
//! - values do what values.yaml says (namespace, images, the mesh, monitoring).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use wirekube_lab::bins::repo_root;

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Labels the chart adds to every object (config/ carries only app.kubernetes.io/part-of).
const HELM_LABELS: [&str; 4] = [
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "helm.sh/chart",
];

fn output(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&common::run_ok(cmd).stdout).into_owned()
}

fn helm() -> Command {
    let path = wirekube_e2e::kube_lab::helm_bin().expect("helm (scripts/build-go-tool.sh helm)");
    let mut c = Command::new(path);
    c.current_dir(repo_root());
    c
}

/// `helm template` of the chart with `args` (e.g. `--set x=y`), CRDs included.
fn render(args: &[&str]) -> Vec<Value> {
    let out = output(
        helm()
            .args(["template", "wirekube", "charts/wirekube", "--include-crds"])
            .args(["--namespace", "wirekube-system"])
            .args(args),
    );
    docs(&out)
}

fn docs(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|d| {
            let v = Value::deserialize(d).expect("yaml document");
            (!v.is_null()).then_some(v)
        })
        .collect()
}

fn key(o: &Value) -> (String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    (
        s(&o["kind"]),
        s(&o["metadata"]["namespace"]),
        s(&o["metadata"]["name"]),
    )
}

fn by_key(objs: Vec<Value>) -> BTreeMap<(String, String, String), Value> {
    objs.into_iter().map(|o| (key(&o), o)).collect()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} rendered"))
}

fn container<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    &find(objs, kind, name)["spec"]["template"]["spec"]["containers"][0]
}

fn env_of(c: &Value, name: &str) -> Option<String> {
    c["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_owned))
}

#[test]
fn chart_lints() {
    let out = output(helm().args(["lint", "--strict", "charts/wirekube"]));
    assert!(out.contains("0 chart(s) failed"), "{out}");
    // Every optional part switched on lints too.
    let out = output(helm().args([
        "lint",
        "--strict",
        "charts/wirekube",
        "--set",
        "mesh.create=true,metrics.serviceMonitor.enabled=true,metrics.podMonitor.enabled=true",
        "--set",
        "metrics.prometheusRule.enabled=true,metrics.grafanaDashboard.enabled=true",
    ]));
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn default_chart_renders_what_config_default_installs() {
    assert_renders_like("config/default", "wirekube-system", &[]);
}

#[test]
fn release_namespace_renders_what_config_examples_custom_namespace_installs() {
    assert_renders_like(
        "config/examples/custom-namespace",
        "network-system",
        &["--namespace", "network-system"],
    );
}

#[test]
fn pod_network_values_render_what_config_pod_network_installs() {
    assert_renders_like(
        "config/pod-network",
        "wirekube-system",
        &["-f", "charts/wirekube/examples/pod-network.yaml"],
    );
}

/// The chart rendered with `args` describes the objects `kubectl kustomize <kustomization>` does,
/// field for field, but for the Namespace (`helm install --create-namespace` makes it) and
/// helm's labels.
fn assert_renders_like(kustomization: &str, namespace: &str, args: &[&str]) {
    let root = repo_root();
    let kustomized = output(
        Command::new("kubectl")
            .args(["kustomize"])
            .arg(root.join(kustomization)),
    );
    // kustomize's `namespace:` also stamps kinds it does not know as cluster-scoped (the
    // admission policy and its binding, the API priority objects); kubectl drops it on
    // apply, so compare without it.
    let mut want = by_key(
        docs(&kustomized)
            .into_iter()
            .map(|mut o| {
                if o["kind"].as_str().is_some_and(|k| {
                    k.starts_with("ValidatingAdmissionPolicy")
                        || k == "FlowSchema"
                        || k == "PriorityLevelConfiguration"
                }) && let Some(m) = o["metadata"].as_object_mut()
                {
                    m.remove("namespace");
                }
                o
            })
            .collect(),
    );
    let mut got = by_key(render(args));
    // helm install --create-namespace makes it; a chart does not own its release namespace.
    let ns = want
        .remove(&("Namespace".into(), String::new(), namespace.into()))
        .expect("the kustomization has the Namespace");
    assert_eq!(ns["metadata"]["name"], namespace);
    // CRDs come from crds/ untemplated; every templated object carries helm's labels.
    for o in got
        .values_mut()
        .filter(|o| o["kind"] != "CustomResourceDefinition")
    {
        let labels = o["metadata"]["labels"]
            .as_object_mut()
            .expect("chart labels");
        for l in HELM_LABELS {
            assert!(labels.remove(l).is_some(), "{:?} lacks {l}", key(o));
        }
    }
    let (wk, gk): (Vec<_>, Vec<_>) = (want.keys().collect(), got.keys().collect());
    assert_eq!(gk, wk, "objects differ from {kustomization}");
    for (k, w) in &mut want {
        let g = got.get_mut(k).expect("same keys");
        // The chart labels every object part-of wirekube (config/ labels only some): its labels
        // must include config/'s; the rest of the object must be equal.
        let (gl, wl) = (take_labels(g), take_labels(w));
        for (name, value) in &wl {
            assert_eq!(gl.get(name), Some(value), "{k:?} label {name}");
        }
        assert!(
            gl.keys()
                .all(|l| wl.contains_key(l) || l == "app.kubernetes.io/part-of"),
            "{k:?} {gl:?}"
        );
        normalize(g);
        normalize(w);
        if let Some(d) = first_difference(g, w, String::new()) {
            panic!("{k:?} differs from {kustomization} at {d}");
        }
    }
}

/// Integral floats (`1.0`, how one YAML printer writes a schema bound) as integers.
fn normalize(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < 1e15
            {
                *v = Value::from(f as i64);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        Value::Object(o) => o.values_mut().for_each(normalize),
        _ => {}
    }
}

/// The path of the first difference between `got` and `want`, with both values there.
fn first_difference(got: &Value, want: &Value, path: String) -> Option<String> {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            let keys: std::collections::BTreeSet<&String> = g.keys().chain(w.keys()).collect();
            keys.into_iter().find_map(|k| {
                first_difference(
                    g.get(k).unwrap_or(&Value::Null),
                    w.get(k).unwrap_or(&Value::Null),
                    format!("{path}.{k}"),
                )
            })
        }
        (Value::Array(g), Value::Array(w)) if g.len() == w.len() => g
            .iter()
            .zip(w)
            .enumerate()
            .find_map(|(i, (g, w))| first_difference(g, w, format!("{path}[{i}]"))),
        _ if got == want => None,
        _ => Some(format!("{path}: chart {got}, kustomize {want}")),
    }
}

/// Removes and returns an object's metadata.labels.
fn take_labels(o: &mut Value) -> serde_json::Map<String, Value> {
    match o["metadata"]
        .as_object_mut()
        .and_then(|m| m.remove("labels"))
    {
        Some(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}

#[test]
fn chart_crds_are_config_crd_files() {
    let root = repo_root();
    let dir = root.join("charts/wirekube/crds");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("charts/wirekube/crds")
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    for p in names {
        let target = std::fs::read_link(&p)
            .unwrap_or_else(|e| panic!("{} must be a symlink into config/crd: {e}", p.display()));
        let resolved = dir.join(&target).canonicalize().expect("resolve");
        assert_eq!(
            resolved.parent(),
            Some(
                root.join("config/crd")
                    .canonicalize()
                    .expect("config/crd")
                    .as_path()
            ),
            "{} -> {}",
            p.display(),
            target.display()
        );
    }
}

#[test]
fn values_move_namespace_images_and_mesh() {
    let objs = render(&[
        "--namespace",
        "net",
        "--set",
        "image.registry=registry.example/wk,image.tag=v9.9.9,mesh.create=true,mesh.name=edge",
        "--set",
        "agent.engine=wireguard-go,agent.podNetwork=true,operator.replicas=1",
        "--set",
        "agent.appArmorProfile=Unconfined",
    ]);
    for o in &objs {
        let ns = o["metadata"]["namespace"].as_str();
        assert!(ns.is_none() || ns == Some("net"), "{:?} in {ns:?}", key(o));
    }
    let op = container(&objs, "Deployment", "wirekube-operator");
    assert_eq!(op["image"], "registry.example/wk/wirekube-operator:v9.9.9");
    assert_eq!(
        env_of(op, "WIREKUBE_RELAY_IMAGE_OVERRIDE").as_deref(),
        Some("registry.example/wk/wirekube-relay:v9.9.9")
    );
    assert_eq!(
        find(&objs, "Deployment", "wirekube-operator")["spec"]["replicas"],
        1
    );
    let agent = container(&objs, "DaemonSet", "wirekube-agent");
    assert_eq!(agent["image"], "registry.example/wk/wirekube-agent:v9.9.9");
    assert!(
        agent["args"]
            .as_array()
            .expect("args")
            .contains(&Value::from("--engine=wireguard-go"))
    );
    assert!(
        agent["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .any(|m| m["mountPath"] == "/etc/cni/net.d"),
        "{agent}"
    );
    assert_eq!(
        agent["securityContext"]["appArmorProfile"]["type"],
        "Unconfined"
    );
    let mesh = find(&objs, "WireKubeMesh", "edge");
    assert_eq!(mesh["spec"]["relay"]["managed"]["nodePort"], 30478);
    let role = find(&objs, "Role", "wirekube-agent");
    assert_eq!(role["rules"][0]["resourceNames"][0], "wirekube-relay-edge");
    // Defaults: no override (the CRD's default relay image is this release's).
    let objs = render(&[]);
    assert_eq!(
        env_of(
            container(&objs, "Deployment", "wirekube-operator"),
            "WIREKUBE_RELAY_IMAGE_OVERRIDE"
        ),
        None
    );
}

/// The tag of `image` (after the last ':').
fn tag(image: &str) -> &str {
    image.rsplit_once(':').map(|(_, t)| t).unwrap_or("")
}

#[test]
fn one_version_everywhere() {
    let root = repo_root();
    let v = format!("v{VERSION}");
    // The binaries.
    for bin in [
        "wirekube-operator",
        "wirekube-agent",
        "wirekube-relay",
        "kubectl-wirekube",
    ] {
        let path: PathBuf = root.join("target/debug").join(bin);
        let out = output(Command::new(&path).arg("--version"));
        assert_eq!(out.trim(), format!("{bin} {VERSION}"), "{}", path.display());
    }
    // config/: every image in the kustomize install.
    let kustomized = output(
        Command::new("kubectl")
            .args(["kustomize"])
            .arg(root.join("config/default")),
    );
    let images: Vec<&str> = kustomized
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: "))
        .collect();
    for image in &images {
        assert_eq!(tag(image), v, "config/ image {image}");
    }
    for b in ["operator", "agent"] {
        let want = format!("ghcr.io/wirekube/wirekube-{b}:{v}");
        assert!(images.contains(&want.as_str()), "{want} not in {images:?}");
    }
    assert!(kustomized.contains(&format!("default: ghcr.io/wirekube/wirekube-relay:{v}")));
    assert_eq!(
        wirekube_crds::mesh::default_relay_image(),
        format!("ghcr.io/wirekube/wirekube-relay:{v}")
    );
    // The chart.
    let chart: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("charts/wirekube/Chart.yaml")).expect("Chart.yaml"),
    )
    .expect("Chart.yaml yaml");
    assert_eq!(chart["version"], VERSION);
    assert_eq!(chart["appVersion"], VERSION);
    let objs = render(&[]);
    for (kind, name) in [
        ("Deployment", "wirekube-operator"),
        ("DaemonSet", "wirekube-agent"),
    ] {
        let image = container(&objs, kind, name)["image"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert_eq!(tag(&image), v, "{kind}/{name}");
    }
    // The image build script tags with the same version.
    let tags = output(
        Command::new("bash")
            .arg(root.join("scripts/build-images.sh"))
            .arg("tags"),
    );
    for t in tags.lines() {
        assert_eq!(tag(t), v, "scripts/build-images.sh {t}");
    }
}

fn promtool(args: &[&str]) -> String {
    output(Command::new("promtool").current_dir(repo_root()).args(args))
}

#[test]
fn alert_rules_check_and_pass_their_unit_tests() {
    let out = promtool(&["check", "rules", "config/monitoring/alerts.yaml"]);
    assert!(out.contains("SUCCESS: 8 rules found"), "{out}");
    // Each alert fires on the series that should fire it, and only then.
    let out = promtool(&["test", "rules", "config/monitoring/alerts_test.yaml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    // The chart's PrometheusRule carries the same groups.
    let objs = render(&["--set", "metrics.prometheusRule.enabled=true"]);
    let rule = find(&objs, "PrometheusRule", "wirekube");
    let file: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join("config/monitoring/alerts.yaml"))
            .expect("alerts"),
    )
    .expect("alerts yaml");
    assert_eq!(rule["spec"]["groups"], file["groups"]);
}

#[test]
fn dashboard_covers_the_issue_and_the_chart_ships_it() {
    let root = repo_root();
    let text =
        std::fs::read_to_string(root.join("config/monitoring/dashboard.json")).expect("dashboard");
    let dash: Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let titles: Vec<&str> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    for want in [
        "Mesh overview",
        "Pairs by path",
        "Fallbacks",
        "Relay",
        "Handshakes",
    ] {
        assert!(titles.contains(&want), "no {want:?} row in {titles:?}");
    }
    for p in dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] != "row")
    {
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            assert!(
                !wirekube_e2e::monitoring::metric_names(expr).is_empty(),
                "panel {} queries no WireKube metric: {expr}",
                p["title"]
            );
        }
    }
    let objs = render(&["--set", "metrics.grafanaDashboard.enabled=true"]);
    let cm = find(&objs, "ConfigMap", "wirekube-dashboard");
    let shipped: Value = serde_json::from_str(cm["data"]["wirekube.json"].as_str().expect("data"))
        .expect("shipped dashboard is JSON");
    assert_eq!(shipped, dash);
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
}

/// promtool parses every dashboard query (as recording rules in a scratch rules file); a
/// broken query is refused, so this check can fail.
#[test]
fn dashboard_queries_are_valid_promql() {
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("config/monitoring/dashboard.json"))
            .expect("dashboard"),
    )
    .expect("dashboard is JSON");
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let dir = tempfile::tempdir().expect("temp dir");
    let check = |exprs: &[String]| {
        let rules: Vec<Value> = exprs
            .iter()
            .enumerate()
            .map(|(i, e)| serde_json::json!({"record": format!("wirekube:panel_{i}"), "expr": e}))
            .collect();
        let file = dir.path().join("panels.yaml");
        let doc = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
        std::fs::write(&file, doc.to_string()).expect("write rules");
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(&file)
            .output()
            .expect("run promtool")
    };
    let out = check(&exprs);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !check(&["sum(wirekube_agent_peers".to_owned()])
            .status
            .success()
    );
}

fn go_tool(name: &str) -> PathBuf {
    let out = output(
        Command::new("bash")
            .arg(repo_root().join("scripts/build-go-tool.sh"))
            .arg(name)
            .env("BUILD_TOOL_QUIET", "1"),
    );
    PathBuf::from(out.lines().last().expect("tool path").trim())
}

#[test]
fn release_workflow_lints() {
    // actionlint also runs shellcheck on every `run:` script (shellcheck is in install-deps).
    let out = output(
        Command::new(go_tool("actionlint"))
            .current_dir(repo_root())
            .arg(".github/workflows/release.yml"),
    );
    assert_eq!(out.trim(), "", "{out}");
    let wf: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join(".github/workflows/release.yml"))
            .expect("release.yml"),
    )
    .expect("release.yml yaml");
    let jobs = wf["jobs"].as_object().expect("jobs");
    for job in ["version", "images", "manifest", "release"] {
        assert!(jobs.contains_key(job), "no {job} job");
    }
    // The images are built by the script CI tests, for both architectures.
    let text = serde_json::to_string(&wf["jobs"]["images"]).expect("json");
    assert!(text.contains("scripts/build-images.sh"), "{text}");
    assert!(text.contains("arm64") && text.contains("amd64"), "{text}");
}

#[test]
fn scripts_are_shellcheck_clean() {
    let out = output(Command::new("shellcheck").current_dir(repo_root()).args([
        "scripts/build-images.sh",
        "scripts/build-go-tool.sh",
        "e2e/kind/run.sh",
        "e2e/kind/check.sh",
    ]));
    assert_eq!(out.trim(), "", "{out}");
}
