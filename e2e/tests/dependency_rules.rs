//! The crate dependency rules of docs/architecture.md ("Crates and what they may depend on"),
//! checked on the resolved graph `cargo metadata` reports. Build- and dev-dependencies are not
//! counted: a test may use anything, the shipped code may not.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Package name → names of its normal (non-dev, non-build) dependencies, resolved.
struct Graph {
    direct: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    fn load() -> Graph {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // Only this platform's graph: the full one wants crates for every target downloaded.
        let version = Command::new(&cargo).arg("-vV").output().expect("cargo -vV");
        let version = String::from_utf8_lossy(&version.stdout).into_owned();
        let host = (version.lines())
            .find_map(|l| l.strip_prefix("host: "))
            .expect("cargo -vV names the host triple");
        let out = Command::new(&cargo)
            .args(["metadata", "--format-version", "1", "--offline"])
            .args(["--filter-platform", host])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run cargo metadata");
        assert!(
            out.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
        let names: BTreeMap<&str, &str> = (meta["packages"].as_array().expect("packages"))
            .iter()
            .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
            .collect();
        let mut direct = BTreeMap::new();
        for node in meta["resolve"]["nodes"].as_array().expect("resolve.nodes") {
            let name = names[node["id"].as_str().unwrap()].to_string();
            let deps: BTreeSet<String> = (node["deps"].as_array().unwrap().iter())
                .filter(|d| {
                    (d["dep_kinds"].as_array().unwrap().iter()).any(|k| k["kind"].is_null())
                })
                .map(|d| names[d["pkg"].as_str().unwrap()].to_string())
                .collect();
            direct.insert(name, deps);
        }
        Graph { direct }
    }

    fn deps(&self, pkg: &str) -> &BTreeSet<String> {
        self.direct
            .get(pkg)
            .unwrap_or_else(|| panic!("{pkg} is not in the workspace"))
    }

    /// Everything `pkg` links, transitively.
    fn closure(&self, pkg: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![pkg.to_string()];
        while let Some(p) = todo.pop() {
            for d in self.direct.get(&p).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        seen
    }
}

fn ours(deps: &BTreeSet<String>) -> BTreeSet<&str> {
    (deps.iter())
        .map(String::as_str)
        .filter(|d| d.starts_with("wirekube-"))
        .collect()
}

#[test]
fn crate_dependency_rules_hold() {
    let g = Graph::load();
    let mut broken = Vec::new();
    let mut check = |ok: bool, rule: String| {
        if !ok {
            broken.push(rule);
        }
    };

    // The API types depend on nothing of ours, and on kube only for its derive.
    check(
        ours(g.deps("wirekube-crds")).is_empty(),
        format!(
            "wirekube-crds depends on {:?}",
            ours(g.deps("wirekube-crds"))
        ),
    );
    // The planner: API types, ipnet, errors; the fixtures' base64 behind test-support.
    let allowed: BTreeSet<&str> = ["wirekube-crds", "ipnet", "thiserror", "base64"].into();
    let planner: BTreeSet<&str> = g
        .deps("wirekube-planner")
        .iter()
        .map(String::as_str)
        .collect();
    check(
        planner.is_subset(&allowed),
        format!(
            "wirekube-planner depends on {:?}",
            planner.difference(&allowed).collect::<Vec<_>>()
        ),
    );
    // The relay protocol has no I/O: no runtime, sockets or retries, nothing of ours.
    let proto = g.deps("wirekube-relay-proto");
    for io in ["tokio", "socket2", "futures", "backon", "tracing"] {
        check(
            !proto.contains(io),
            format!("wirekube-relay-proto depends on {io}"),
        );
    }
    check(
        ours(proto).is_empty(),
        format!("wirekube-relay-proto depends on {:?}", ours(proto)),
    );
    // The relay (server and client) knows no Kubernetes types.
    for relay in [
        "wirekube-relay",
        "wirekube-relay-client",
        "wirekube-relay-proto",
    ] {
        let all = g.closure(relay);
        for k in ["kube", "k8s-openapi", "wirekube-crds"] {
            check(!all.contains(k), format!("{relay} links {k}"));
        }
    }
    // Operator and agent never link each other.
    let operator = g.closure("wirekube-operator");
    for a in [
        "wirekube-agent",
        "wirekube-dataplane",
        "wirekube-relay-client",
    ] {
        check(
            !operator.contains(a),
            format!("wirekube-operator links {a}"),
        );
    }
    let agent = g.closure("wirekube-agent");
    for o in ["wirekube-operator", "wirekube-planner"] {
        check(!agent.contains(o), format!("wirekube-agent links {o}"));
    }
    // Nothing shipped links the test labs.
    for shipped in [
        "wirekube-operator",
        "wirekube-agent",
        "wirekube-relay",
        "kubectl-wirekube",
    ] {
        let all = g.closure(shipped);
        for lab in ["wirekube-lab", "wirekube-kubelab", "wirekube-e2e"] {
            check(!all.contains(lab), format!("{shipped} links {lab}"));
        }
    }
    assert!(
        broken.is_empty(),
        "dependency rules broken:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_rules_see_real_dependencies() {
    // The rules above are only worth something if the graph is read right: these edges exist.
    let g = Graph::load();
    assert!(g.deps("wirekube-planner").contains("wirekube-crds"));
    assert!(g.deps("wirekube-operator").contains("wirekube-planner"));
    assert!(g.closure("wirekube-agent").contains("wirekube-relay-proto"));
    assert!(g.closure("wirekube-relay-client").contains("tokio"));
    assert!(
        !g.deps("wirekube-operator").contains("proptest"),
        "dev-dependencies are not counted"
    );
}
