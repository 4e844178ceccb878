//! The install manifests render with kustomize and every object passes the Kubernetes
//! schemas offline (`kubernetes-validate`, PyPI). Both tools are installed by
//! `scripts/install-deps.sh`; a missing tool fails the test rather than skipping it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run ({e}); run scripts/install-deps.sh"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{stderr}");
    stdout
}

fn kustomize(dir: &Path) -> String {
    run(
        Command::new("kubectl").arg("kustomize").arg(dir),
        &format!("kubectl kustomize {}", dir.display()),
    )
}

/// Kinds the rendered install must contain, so that a kustomization that silently drops a
/// resource fails here.
const EXPECTED: &[&str] = &[
    "Namespace/wirekube-system",
    "CustomResourceDefinition/wirekubemeshes.wirekube.io",
    "CustomResourceDefinition/wirekubepeers.wirekube.io",
    "ServiceAccount/wirekube-operator",
    "ServiceAccount/wirekube-agent",
    "ClusterRole/wirekube-operator",
    "ClusterRole/wirekube-agent",
    "ClusterRoleBinding/wirekube-operator",
    "ClusterRoleBinding/wirekube-agent",
    "Role/wirekube-operator",
    "Role/wirekube-agent",
    "RoleBinding/wirekube-operator",
    "RoleBinding/wirekube-agent",
    "ValidatingAdmissionPolicy/wirekube-agent-own-peer",
    "ValidatingAdmissionPolicyBinding/wirekube-agent-own-peer",
    "Deployment/wirekube-operator",
    "DaemonSet/wirekube-agent",
    "FlowSchema/wirekube-peer-writes",
    "PriorityLevelConfiguration/wirekube-peer-writes",
];

#[test]
fn default_install_renders_and_validates_offline() {
    let rendered = kustomize(&root().join("config/default"));
    let mut found = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&rendered) {
        let v = <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap();
        let kind = v["kind"].as_str().unwrap_or_default();
        let name = v["metadata"]["name"].as_str().unwrap_or_default();
        found.push(format!("{kind}/{name}"));
    }
    for want in EXPECTED {
        assert!(
            found.iter().any(|f| f == want),
            "{want} missing from config/default: {found:?}"
        );
    }

    let dir = tempfile_dir();
    let file = dir.join("default.yaml");
    std::fs::write(&file, &rendered).unwrap();
    // 1.34 matches the k8s-openapi feature the Rust code is built against.
    let report = run(
        Command::new("kubernetes-validate")
            .args(["--strict", "-k", "1.34.0"])
            .arg(&file),
        "kubernetes-validate",
    );
    let passed = report
        .lines()
        .filter(|l| l.contains(" passed for resource "))
        .count();
    assert_eq!(
        passed,
        EXPECTED.len(),
        "every object must be validated:\n{report}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn every_kustomization_renders() {
    for sub in ["crd", "rbac", "operator", "agent", "flowcontrol", "samples"] {
        let out = kustomize(&root().join("config").join(sub));
        assert!(!out.trim().is_empty(), "config/{sub} rendered nothing");
    }
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wirekube-manifests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
