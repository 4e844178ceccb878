//! Restart of the agent container of a node's agent pod, as an OOM kill or a crash would do it:
//! SIGKILL of the agent container's process; the lab kubelet restarts that container only (and
//! kills whatever the container left behind, as a runtime does). Measured under the 10/s ping
//! stream of [`Scenario::measure_fault`]. Used by `e2e/tests/pod_restart.rs` (userspace engine,
//! on the host) and `e2e/tests/kernel_topologies.rs` (kernel engine, in the VM of
//! `make test-kernel`).

use std::time::Duration;

use anyhow::{Result, anyhow};
use wirekube_crds::ActualPath;

use super::faults::FaultRow;
use super::run::Scenario;

/// Namespace of the shipped agent DaemonSet.
pub const AGENT_NS: &str = "wirekube-system";
/// Label of the agent pods.
pub const AGENT_SELECTOR: &str = "app.kubernetes.io/name=wirekube-agent";

/// Whether a process's argv is the agent container's process of `node`: `wirekube-agent` with
/// `--node-name=<node>`, not the `userspace-engine` subcommand of the `wireguard` container.
pub fn is_agent_of(argv: &[String], node: &str) -> bool {
    let flag = format!("--node-name={node}");
    argv.first().is_some_and(|a| a.ends_with("wirekube-agent"))
        && argv.contains(&flag)
        && !argv.iter().any(|a| a == "userspace-engine")
}

/// `(container, restartCount)` of every container in a `kubectl get pods -o json` answer's
/// first pod.
pub fn restart_counts(pods: &serde_json::Value) -> Vec<(String, u64)> {
    pods["items"][0]["status"]["containerStatuses"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap_or_default().to_owned(),
                        c["restartCount"].as_u64().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Scenario {
    /// The pid of `node`'s agent container process (in the node's network namespace), 0 when
    /// there is none.
    pub fn agent_pid(&self, node: &str) -> u32 {
        let Some(h) = self.hosts.get(node) else {
            return 0;
        };
        let out = std::process::Command::new("ip")
            .args(["netns", "pids", &h.ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .find(|p| {
                let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                let argv: Vec<String> = cmd
                    .split(|b| *b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                is_agent_of(&argv, node)
            })
            .unwrap_or(0)
    }

    /// SIGKILLs the agent container process of `pair.0` and measures the pair under a 10/s ping
    /// stream until a new agent process runs and reports the pair direct again (a path change
    /// written after the kill), within `deadline`.
    pub fn restart_agent_container(
        &mut self,
        what: &str,
        pair: (&str, &str),
        deadline: Duration,
    ) -> Result<FaultRow> {
        let (a, b) = pair;
        let old = self.agent_pid(a);
        if old == 0 {
            return Err(anyhow!("no agent process on {a}"));
        }
        let killed_at = jiff::Timestamp::now();
        self.measure_fault(
            what,
            pair,
            |_| {
                let pid = libc::pid_t::try_from(old)?;
                if !wirekube_lab::signal(pid, libc::SIGKILL) {
                    return Err(anyhow!("kill {old}: {}", std::io::Error::last_os_error()));
                }
                Ok(())
            },
            |sc| {
                let pid = sc.agent_pid(a);
                pid != 0 && pid != old && sc.reports_since(a, b, ActualPath::Direct, killed_at)
            },
            deadline,
        )
    }

    /// The agent pods (a `PodList` as JSON), only `node`'s when given.
    pub fn agent_pods(&self, node: Option<&str>) -> Result<serde_json::Value> {
        let on_node = node.map(|n| format!("spec.nodeName={n}"));
        let mut args = vec!["-n", AGENT_NS, "get", "pods", "-l", AGENT_SELECTOR];
        if let Some(f) = &on_node {
            args.extend(["--field-selector", f.as_str()]);
        }
        args.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.kubectl(&args)?)?)
    }

    /// `(container, restartCount)` of the agent pod on `node`.
    pub fn agent_container_restarts(&self, node: &str) -> Result<Vec<(String, u64)>> {
        Ok(restart_counts(&self.agent_pods(Some(node))?))
    }

    /// Whether only the `agent` container of `node`'s agent pod has restarted (at least once)
    /// and every other container of the pod never did.
    pub fn only_agent_container_restarted(&self, node: &str) -> Result<bool> {
        let counts = self.agent_container_restarts(node)?;
        Ok(counts.iter().any(|(n, c)| n == "agent" && *c >= 1)
            && counts.iter().all(|(n, c)| n == "agent" || *c == 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_agent_process_is_told_from_the_engine_container_and_other_nodes() {
        let bin = "/work/target/debug/wirekube-agent";
        let cases = [
            (
                vec![bin, "--node-name=node-1", "--engine=sidecar"],
                "node-1",
                true,
            ),
            (vec![bin, "--node-name=node-2"], "node-1", false),
            (
                vec![bin, "userspace-engine", "--node-name=node-1"],
                "node-1",
                false,
            ),
            (
                vec!["/usr/bin/wireguard-go", "--node-name=node-1"],
                "node-1",
                false,
            ),
            (vec![], "node-1", false),
        ];
        for (a, node, want) in cases {
            assert_eq!(is_agent_of(&argv(&a), node), want, "{a:?} on {node}");
        }
    }

    #[test]
    fn restart_counts_read_every_container_of_the_first_pod() {
        let pods = serde_json::json!({"items": [{"status": {"containerStatuses": [
            {"name": "agent", "restartCount": 2},
            {"name": "wireguard", "restartCount": 0}
        ]}}]});
        assert_eq!(
            restart_counts(&pods),
            vec![("agent".to_owned(), 2), ("wireguard".to_owned(), 0)]
        );
        assert!(restart_counts(&serde_json::json!({"items": []})).is_empty());
    }
}
