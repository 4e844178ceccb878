//! `e2e/kind/check.sh`, the kind path's install and checks, run against the lab's real control
//! plane: the script talks to the cluster only through a kubeconfig and to nodes only through
//! its `--node-exec` command (`docker exec {node}` on kind, `ip netns exec <netns>` here), so
//! what it asserts on kind is proven by a lab scenario; only kind's cluster creation and image
//! loading stay unrun here (e2e/kind/README.md).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::kube_lab::{KubeLab, helm_bin};
use crate::scenario::{Scenario, bins};

/// How long check.sh may take in all (its own waits are `--timeout` each).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(900);

/// The script's path in the checkout.
pub fn script() -> PathBuf {
    bins::repo_root().join("e2e/kind/check.sh")
}

/// Runs check.sh with `args` in the DMZ (where the API server is) with the admin kubeconfig,
/// helm (built by scripts/build-go-tool.sh) with its state under the lab directory, and the
/// built `kubectl-wirekube` on PATH, as a user's `kubectl wirekube` finds it. Returns the
/// script's output; an error with the output when it exits non-zero.
pub fn run(kube: &KubeLab, args: &[&str]) -> Result<String> {
    let plugin = bins::binary("kubectl-wirekube")
        .context("build it first: cargo build --workspace --bins")?;
    let plugin_dir = plugin.parent().context("plugin directory")?;
    let home = kube.lab.dir().join("helm");
    let mut env = vec![
        format!(
            "PATH={}:{}",
            plugin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
        format!("HELM={}", helm_bin()?.display()),
    ];
    for k in ["HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"] {
        env.push(format!("{k}={}", home.join(k).display()));
    }
    let (script, kc) = (
        script().to_string_lossy().into_owned(),
        kube.cp.admin_kubeconfig().to_string_lossy().into_owned(),
    );
    let mut argv: Vec<&str> = vec!["env"];
    argv.extend(env.iter().map(String::as_str));
    argv.extend(["bash", &script, "--kubeconfig", &kc]);
    argv.extend_from_slice(args);
    let out = kube.lab.exec_timeout(&kube.dmz, &argv, SCRIPT_TIMEOUT)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "check.sh {} exited {:?}:\n{text}",
            args.join(" "),
            out.status.code()
        );
    }
    Ok(text)
}

/// `check.sh --phase install -- <helm args>`: the version check, `helm upgrade --install`
/// and the wait for the CRDs (for [`crate::scenario::Options::install`]).
pub fn install(kube: &KubeLab, helm_args: &[&str]) -> Result<String> {
    let mut args = vec!["--phase", "install", "--"];
    args.extend_from_slice(helm_args);
    run(kube, &args)
}

/// What check.sh's `--expect` takes: every direction of every pair of the scenario's topology
/// with the path and reason its table expects.
pub fn expectation(sc: &Scenario) -> Result<Value> {
    let mut dirs = Vec::new();
    for (a, b) in sc.topo.pairs() {
        let want = sc
            .topo
            .expectation(&a, &b)
            .with_context(|| format!("no expectation for {a} - {b}"))?;
        let (path, reason) = (
            serde_json::to_value(want.path)?,
            serde_json::to_value(want.reason)?,
        );
        for (from, to) in [(&a, &b), (&b, &a)] {
            dirs.push(json!({"from": from, "to": to, "actual": path, "reason": reason}));
        }
    }
    Ok(Value::Array(dirs))
}

/// The `--node-exec` command for the scenario's nodes: `ip netns exec <prefix>-{node}` (every
/// node's network namespace is its name under the lab's prefix).
pub fn node_exec(sc: &Scenario) -> Result<String> {
    let (name, host) = sc.hosts.iter().next().context("a node")?;
    let prefix = host
        .ns
        .strip_suffix(name.as_str())
        .with_context(|| format!("netns {} does not end in {name}", host.ns))?;
    if let Some((n, h)) = sc
        .hosts
        .iter()
        .find(|(n, h)| h.ns != format!("{prefix}{n}"))
    {
        bail!("node {n}'s netns {} is not {prefix}{n}", h.ns);
    }
    Ok(format!("ip netns exec {prefix}{{node}}"))
}

/// `check.sh --phase check` on the scenario: the rollouts, every direction as the topology
/// expects, doctor, HTTP over the mesh between every pair of nodes.
pub fn check(sc: &Scenario, timeout: Duration) -> Result<String> {
    let expect = sc.lab.dir().join("kind-check-expect.json");
    std::fs::write(&expect, expectation(sc)?.to_string())?;
    check_with(sc, &["--expect", &expect.to_string_lossy()], timeout)
}

/// `check.sh --phase check --expect-all ACTUAL/REASON` (kind's form: every direction alike).
pub fn check_all_alike(sc: &Scenario, actual_reason: &str, timeout: Duration) -> Result<String> {
    check_with(sc, &["--expect-all", actual_reason], timeout)
}

/// `check.sh --phase check` with `expect` (`--expect-planned`, `--expect FILE`, ...).
pub fn check_with(sc: &Scenario, expect: &[&str], timeout: Duration) -> Result<String> {
    let (exec, secs) = (node_exec(sc)?, timeout.as_secs().to_string());
    let mut args = vec!["--phase", "check", "--node-exec", &exec, "--timeout", &secs];
    args.extend_from_slice(expect);
    run(&sc.kube, &args)
}
