//! Restart in a pod: the lab kubelet restarts only the agent container of a node (SIGKILL of its
//! process, as an OOM kill or a crash would) while a 10/s ping stream runs over a direct pair.
//!
//! The lab kubelet kills every process left in a container when its main process ends (what a
//! container runtime does), daemons that left the session included. So:
//! - with the shipped DaemonSet (`config/agent/daemonset.yaml`: the userspace engine in its own
//!   `wireguard` container, the agent on `--engine sidecar`), no ping is lost;
//! - with the earlier layout (the agent starts wireguard-go itself, as its child), the same
//!   restart takes the tunnel down until the new agent has a new engine configured: pings are
//!   lost, which also shows that the kubelet's container emulation is real.
//!
//! Kernel WireGuard is covered by the same restart (`Scenario::restart_agent_container`) in the
//! all-kernel seed run of `e2e/tests/kernel_topologies.rs`, in the VM of `make test-kernel` (no
//! module on these machines). The gaps are recorded in docs/benchmarks.md. Needs root and
//! `cargo build --workspace --bins`.

use std::time::Duration;

use wirekube_e2e::scenario::faults::table;
use wirekube_e2e::scenario::restart::AGENT_NS;
use wirekube_e2e::scenario::{Options, Scenario, topology};
use wirekube_lab::wait_until;

/// A direct pair of seed 1 (same VPC).
const PAIR: (&str, &str) = ("node-1", "node-2");
/// Deadline for the restarted agent to report the pair direct again.
const RECOVERY: Duration = Duration::from_secs(90);

/// Every agent pod runs exactly `n` ready containers.
fn agent_pods_with(sc: &Scenario, n: usize) -> bool {
    let Ok(v) = sc.agent_pods(None) else {
        return false;
    };
    let pods = v["items"].as_array().cloned().unwrap_or_default();
    pods.len() == sc.hosts.len()
        && pods.iter().all(|p| {
            let cs = p["status"]["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            p["metadata"]["deletionTimestamp"].is_null()
                && p["spec"]["containers"].as_array().map(Vec::len) == Some(n)
                && cs.len() == n
                && cs.iter().all(|c| c["ready"] == true)
        })
}

#[test]
fn agent_container_restart_keeps_the_tunnel() {
    assert!(
        wirekube_lab::is_root(),
        "scenario tests need root (network namespaces)"
    );
    let opts = Options {
        tag: "prs".into(),
        progress: Box::new(|m| eprintln!("[pod-restart] {m}")),
        ..Options::default()
    };
    let mut sc = Scenario::build(topology::seed_1_all_private(), opts).expect("lab");
    sc.converge().expect("converged");
    let (a, _) = PAIR;

    // The shipped DaemonSet: agent + wireguard containers.
    let shipped = sc
        .restart_agent_container(
            "agent container restart, userspace engine in the wireguard container (shipped)",
            PAIR,
            RECOVERY,
        )
        .unwrap();
    let counts = sc.agent_container_restarts(a).unwrap();
    assert!(
        sc.only_agent_container_restarted(a).unwrap()
            && counts.iter().any(|(n, _)| n == "wireguard"),
        "only the agent container must have restarted: {counts:?}"
    );
    assert_eq!(
        shipped.pings.lost(),
        0,
        "the tunnel did not survive the agent container's restart: {}",
        shipped.markdown()
    );

    // The earlier layout, for comparison: the agent starts wireguard-go as its child.
    let patch = r#"[
      {"op":"test","path":"/spec/template/spec/containers/1/name","value":"wireguard"},
      {"op":"remove","path":"/spec/template/spec/containers/1"},
      {"op":"test","path":"/spec/template/spec/containers/0/args/3","value":"--engine=sidecar"},
      {"op":"replace","path":"/spec/template/spec/containers/0/args/3","value":"--engine=wireguard-go"}
    ]"#;
    sc.kubectl(&[
        "-n",
        AGENT_NS,
        "patch",
        "daemonset",
        "wirekube-agent",
        "--type=json",
        "-p",
        patch,
    ])
    .unwrap();
    wait_until(
        Duration::from_secs(180),
        "agent pods rolled to one container",
        || agent_pods_with(&sc, 1),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", sc.logs(30)));
    sc.converge().expect("converged after the rollout");
    let child = sc
        .restart_agent_container(
            "agent container restart, wireguard-go started by the agent (earlier layout)",
            PAIR,
            RECOVERY,
        )
        .unwrap();
    eprintln!(
        "agent container restarts:\n{}",
        table(&[shipped, child.clone()])
    );
    assert!(
        child.pings.lost() > 0,
        "the agent's own wireguard-go survived its container: the lab kubelet no longer kills \
         what a container leaves behind"
    );
}
