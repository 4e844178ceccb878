//! The release workflow's steps that need no registry and no GitHub, run here as GitHub would
//! run them (`bash -eo pipefail`, the step's env), on a copy of the checkout (the release step
//! edits values.yaml in place): the `version` job (the tag must be the workspace version; the
//! registry is the lower-cased owner's ghcr.io) and the `release` job's "Chart and install
//! manifests" step (helm lint, the registry written into the chart, helm package, the
//! kustomize install manifest with the registry, the alert rules and dashboard). The packaged
//! chart and the manifest must name every image under the release's registry. The image build
//! and push jobs are not run here (no registry; scripts/build-images.sh itself is tested by
//! e2e/tests/images.rs). Needs kubectl and Go (helm: scripts/build-go-tool.sh).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use wirekube_e2e::kube_lab::helm_bin;
use wirekube_e2e::scenario::bins::repo_root;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const REGISTRY: &str = "ghcr.io/wirekube-fork";

/// The `run:` script of the step of `job` named or with id `step`.
fn step_script(job: &str, step: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join(".github/workflows/release.yml"))
        .expect("release.yml");
    let wf: Value = serde_yaml::from_str(&text).expect("release.yml is YAML");
    let steps = wf["jobs"][job]["steps"].as_array().expect("steps");
    let s = steps
        .iter()
        .find(|s| s["name"] == step || s["id"] == step)
        .unwrap_or_else(|| panic!("no step {step} in job {job}"));
    let run = s["run"].as_str().expect("a run: step").to_owned();
    // Expressions are GitHub's; these steps take everything through env.
    assert!(
        !run.contains("${{"),
        "{job}/{step} has an expression in its script:\n{run}"
    );
    run
}

/// Runs `script` as a GitHub step (`bash --noprofile --norc -eo pipefail`) in `dir`.
fn run_step(dir: &Path, script: &str, env: &[(&str, &str)]) -> Output {
    let file = dir.join(".step.sh");
    std::fs::write(&file, script).expect("write the step");
    let mut cmd = Command::new("bash");
    cmd.args(["--noprofile", "--norc", "-eo", "pipefail"])
        .arg(&file)
        .current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run bash")
}

/// The files the steps read, copied (links kept: the chart's crds/ and files/ link into config/).
fn checkout_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = repo_root();
    for p in ["Cargo.toml", "charts", "config", "scripts"] {
        common::run_ok(
            Command::new("cp")
                .arg("-a")
                .arg(root.join(p))
                .arg(dir.path()),
        );
    }
    dir
}

#[test]
fn version_job_takes_the_workspace_version_and_the_owners_registry() {
    let dir = checkout_copy();
    let script = step_script("version", "v");
    let out_file = dir.path().join("github-output");
    let tag = format!("v{VERSION}");
    let env = [
        ("GITHUB_REF_NAME", tag.as_str()),
        ("GITHUB_REPOSITORY_OWNER", "WireKube-Fork"),
        ("GITHUB_OUTPUT", &out_file.to_string_lossy()),
    ];
    let out = run_step(dir.path(), &script, &env);
    assert!(out.status.success(), "{out:?}");
    let outputs = std::fs::read_to_string(&out_file).expect("outputs");
    assert_eq!(outputs, format!("version={VERSION}\nregistry={REGISTRY}\n"));
    // A tag that is not the workspace version stops the release.
    let out = run_step(
        dir.path(),
        &script,
        &[("GITHUB_REF_NAME", "v9.9.9"), env[1], env[2]],
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("tag v9.9.9 is not v{VERSION}")),
        "{out:?}"
    );
}

#[test]
fn release_step_packages_the_chart_and_manifests_for_the_releases_registry() {
    let dir = checkout_copy();
    let script = step_script("release", "Chart and install manifests");
    let out = run_step(
        dir.path(),
        &script,
        &[("VERSION", VERSION), ("REGISTRY", REGISTRY)],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dist = dir.path().join("dist");
    let chart = dist.join(format!("wirekube-{VERSION}.tgz"));
    // The package holds the linked CRDs and monitoring files as files, with their content.
    let listing = common::run_ok(Command::new("tar").arg("-tvzf").arg(&chart));
    let listing = String::from_utf8_lossy(&listing.stdout);
    for f in [
        "wirekube/crds/wirekube.io_wirekubemeshes.yaml",
        "wirekube/crds/wirekube.io_wirekubepeers.yaml",
        "wirekube/files/alerts.yaml",
        "wirekube/files/dashboard.json",
    ] {
        let line = listing.lines().find(|l| l.ends_with(f));
        assert!(
            line.is_some_and(|l| l.starts_with('-')),
            "{f} not a file in:\n{listing}"
        );
    }
    // Installed from the package, every image is the release's.
    let rendered = common::run_ok(
        Command::new(helm_bin().expect("helm"))
            .args(["template", "wirekube"])
            .arg(&chart)
            .args(["-n", "wirekube-system", "--set", "mesh.create=true"]),
    );
    let rendered = String::from_utf8_lossy(&rendered.stdout);
    let images = image_refs(&rendered);
    assert_eq!(
        images.len(),
        3,
        "operator, agent (2 containers), relay override: {images:?}"
    );
    for want in ["operator", "agent", "relay"] {
        let r = format!("{REGISTRY}/wirekube-{want}:v{VERSION}");
        assert!(images.contains(&r), "{r} not in {images:?}");
    }
    let manifest = std::fs::read_to_string(dist.join(format!("wirekube-v{VERSION}-install.yaml")))
        .expect("install manifest");
    assert!(
        !manifest.contains("ghcr.io/wirekube/"),
        "an upstream image left in the manifest"
    );
    assert_eq!(
        image_refs(&manifest).len(),
        3,
        "{:?}",
        image_refs(&manifest)
    );
    for (name, src) in [
        (
            format!("wirekube-v{VERSION}-alerts.yaml"),
            "config/monitoring/alerts.yaml",
        ),
        (
            format!("wirekube-v{VERSION}-dashboard.json"),
            "config/monitoring/dashboard.json",
        ),
    ] {
        let got = std::fs::read(dist.join(&name)).expect("release file");
        assert_eq!(
            got,
            std::fs::read(repo_root().join(src)).expect("source"),
            "{name}"
        );
    }
}

/// Distinct `ghcr.io/...` image references (after `image: ` or in a quoted env value).
fn image_refs(yaml: &str) -> std::collections::BTreeSet<String> {
    yaml.lines()
        .filter_map(|l| {
            let i = l.find("ghcr.io/")?;
            let r = l[i..].trim_end_matches(['"', '\'']).trim();
            (l.trim_start().starts_with("image:") || l.trim_start().starts_with("value:"))
                .then(|| r.to_owned())
        })
        .collect()
}
