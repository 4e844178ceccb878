//! Harness for the agent lab tests: a lab whose DMZ runs the real Kubernetes control plane
//! (etcd, kube-apiserver, controller-manager, scheduler, started by
//! [`wirekube_e2e::kube_lab::KubeLab`]) and `wirekube-relay`, two public nodes, and helpers to
//! write WireKubePeer specs the way the operator would, run `wirekube-agent` processes and read
//! what they report.
//!
//! WireKube is installed as a user would, with only what the agents need (no kubelets run here,
//! so the Deployments and DaemonSets of `config/default` would only leave pending pods):
//! `kubectl apply --server-side` of `config/operator/namespace.yaml`, `-k config/crd` and
//! `-k config/rbac`, unchanged. Each node is registered as a Node object (as its kubelet would)
//! and each agent runs as a process on its lab node with a kubeconfig holding a
//! `wirekube-agent` service-account token bound to a placeholder Pod on that node, so the
//! token carries the node-name claim that `config/rbac/agent-policy.yaml` checks. The agent
//! talks to the API server at its DMZ address.
//!
//! No kubelet renews the Nodes' heartbeats: about 50 s after registration the node lifecycle
//! controller taints them unreachable, and 300 s later (the default toleration) the placeholder
//! Pods are evicted, which invalidates the bound tokens. A test that runs agents for longer than
//! about five minutes needs fresh tokens.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use wirekube_crds::{
    PathReason, PeerEntry, PlannedPath, RelayMode, WireKubePeer, WireKubePeerSpec,
    WireKubePeerStatus,
};
use wirekube_e2e::kube_lab::KubeLab;
pub use wirekube_e2e::scenario::run::RELAY_PORT;
use wirekube_e2e::scenario::run::start_relay;
use wirekube_e2e::scenario::{WgPeer, parse_wg_dump};
use wirekube_lab::bins::binary;
use wirekube_lab::{Host, Lab, Proc, wait_until};
pub const NS: &str = "wirekube-system";
/// The Secret name the shipped agent RBAC (`config/rbac/agent.yaml`) lets agents read.
pub const TOKEN_SECRET: &str = "wirekube-relay-default"; // the name config/rbac allows
pub const IFACE: &str = "wirekube0";
pub const LISTEN_PORT: u16 = 51820;
pub const METRICS_PORT: u16 = 9473;
pub const MESH_CIDR: &str = "10.77.0.0/24";
/// Above two WireGuard handshake retries (REKEY_TIMEOUT 5 s, docs/lab-findings.md §4.1): with 5 s a first
/// initiation that reaches a not-yet-configured peer made a healthy pair fall back under load.
pub const DIRECT_TIMEOUT: &str = "12s";
/// `--probe-interval` of the lab agents: the first probe after a fallback waits 4-12 s
/// (30-90 s by default), so the return to direct fits in a test.
pub const PROBE_INTERVAL_SECS: u64 = 4;

/// The lab tests need root; without it they fail (a test that cannot run must not pass).
pub fn root() -> bool {
    assert!(
        wirekube_lab::is_root(),
        "needs root (network namespaces): run the lab tests as root"
    );
    true
}

/// Prints a step with the time since the test started.
pub struct Steps(Instant);
impl Steps {
    pub fn new() -> Steps {
        Steps(Instant::now())
    }
    pub fn log(&self, what: &str) {
        eprintln!("[{:>6.1}s] {what}", self.0.elapsed().as_secs_f64());
    }
}

pub struct Env {
    pub lab: Arc<Lab>,
    pub dmz: Host,
    pub nodes: BTreeMap<String, Host>,
    /// The control plane and its admin client (`kube.admin`, what the test writes and reads with).
    pub kube: KubeLab,
    /// Each node's agent kubeconfig (bound service-account token).
    pub agent_kubeconfigs: BTreeMap<String, PathBuf>,
    pub agents: BTreeMap<String, Proc>,
    /// Every agent process started, in order (a restarted agent appears twice), for log checks.
    pub agent_runs: Vec<(String, Proc)>,
    /// The agents' `--engine` (`wireguard-go` unless a test sets another).
    pub engine: &'static str,
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl Env {
    /// Lab with the DMZ (control plane + relay, token Secret) and one public node per name.
    pub fn build(tag: &str, names: &[&str]) -> Result<Env> {
        let lab = Arc::new(Lab::new_unique(tag)?);
        let mut nodes = BTreeMap::new();
        for n in names {
            nodes.insert(n.to_string(), lab.add_public_node(n)?);
        }
        let dmz = lab.add_dmz("dmz", &[])?;
        let kube = KubeLab::start_in(lab.clone(), dmz.clone())?;
        kube.install_api()?;
        let mut agent_kubeconfigs = BTreeMap::new();
        for (n, h) in &nodes {
            kube.admin
                .register_node(n, &h.ip().to_string(), None, &[])?;
            let kc = kube.service_account_kubeconfig(NS, "wirekube-agent", Some(n))?;
            agent_kubeconfigs.insert(n.clone(), kc);
        }
        let token = format!("agent-lab-{}", std::process::id());
        let token_file = lab.dir().join("relay-token");
        std::fs::write(&token_file, &token)?;
        kube.admin
            .put_secret(NS, TOKEN_SECRET, &[("token", token.as_bytes())])?;
        // The relay exactly as the scenarios start it (DMZ, both STUN addresses).
        let relay = start_relay(&lab, &dmz, &token_file)?;
        wait_until(Duration::from_secs(10), "relay listening", || {
            !lab.is_running(&relay) || lab.tcp_listening(&dmz, RELAY_PORT)
        })?;
        anyhow::ensure!(lab.is_running(&relay), "relay exited: {}", lab.log(&relay));
        Ok(Env {
            lab,
            dmz,
            nodes,
            kube,
            agent_kubeconfigs,
            agents: BTreeMap::new(),
            agent_runs: Vec::new(),
            engine: "wireguard-go",
        })
    }

    pub fn host(&self, n: &str) -> &Host {
        &self.nodes[n]
    }

    pub fn mesh_ip(&self, n: &str) -> Ipv4Addr {
        let i = self.nodes.keys().position(|k| k == n).expect("node") as u8;
        Ipv4Addr::new(10, 77, 0, 1 + i)
    }

    /// The spec the operator would write for `node`, given `(peer, publicKey, path)` entries.
    /// Direct peers get the other node's public address as endpoint.
    pub fn spec(&self, node: &str, peers: &[(&str, &str, PlannedPath)]) -> WireKubePeerSpec {
        let peers = peers
            .iter()
            .map(|&(p, key, path)| PeerEntry {
                name: p.into(),
                public_key: key.into(),
                allowed_ips: vec![format!("{}/32", self.mesh_ip(p))],
                endpoint: (path == PlannedPath::Direct)
                    .then(|| format!("{}:{LISTEN_PORT}", self.host(p).ip())),
                path,
                reason: match path {
                    PlannedPath::Direct => PathReason::PublicPeer,
                    _ => PathReason::UdpBlocked,
                },
                initiate: node < p,
                punch_toward: None,
                persistent_keepalive: 0,
            })
            .collect();
        WireKubePeerSpec {
            mesh: "default".into(),
            mesh_ip: self.mesh_ip(node).to_string(),
            mesh_cidr: MESH_CIDR.into(),
            interface_name: IFACE.into(),
            listen_port: LISTEN_PORT,
            mtu: 1380,
            relay_mode: RelayMode::Auto,
            relay_endpoints: vec![format!("{}:{RELAY_PORT}", self.dmz.ips[0])],
            relay_token_secret: Some(TOKEN_SECRET.into()),
            stun_servers: Vec::new(),
            direct_timeout: DIRECT_TIMEOUT.into(),
            external_ips: Vec::new(),
            pod_cidrs: Vec::new(),
            pod_network: false,
            peers,
        }
    }

    /// Server-side applies the spec of `node`'s WireKubePeer as the operator would.
    pub fn apply_spec(&self, node: &str, spec: WireKubePeerSpec) -> Result<()> {
        let obj = json!({
            "apiVersion": "wirekube.io/v1alpha1", "kind": "WireKubePeer",
            "metadata": {"name": node}, "spec": spec,
        });
        let node = node.to_owned();
        self.kube.admin.run(move |c| async move {
            Api::<WireKubePeer>::all(c)
                .patch(
                    &node,
                    &PatchParams::apply("wirekube-operator").force(),
                    &Patch::Apply(&obj),
                )
                .await
                .with_context(|| format!("apply peer {node}"))?;
            Ok(())
        })
    }

    pub fn status(&self, node: &str) -> Option<WireKubePeerStatus> {
        let node = node.to_owned();
        self.kube
            .admin
            .run(move |c| async move { Ok(Api::<WireKubePeer>::all(c).get_opt(&node).await?) })
            .ok()
            .flatten()
            .and_then(|p| p.status)
    }

    pub fn start_agent(&mut self, node: &str) -> Result<()> {
        let kc = self
            .agent_kubeconfigs
            .get(node)
            .ok_or_else(|| anyhow!("no kubeconfig for node {node}"))?
            .clone();
        let mut cmd = Command::new(binary("wirekube-agent")?);
        cmd.arg(format!("--node-name={node}"))
            .arg(format!("--engine={}", self.engine))
            .arg(format!("--metrics-listen=127.0.0.1:{METRICS_PORT}"))
            .arg(format!("--namespace={NS}"))
            .arg(format!("--probe-interval={PROBE_INTERVAL_SECS}"))
            .env("KUBECONFIG", &kc)
            // Every level of our crates, so the private-key check sees every log line.
            .env(
                "RUST_LOG",
                "info,wirekube_agent=trace,wirekube_dataplane=trace,wirekube_relay_proto=trace",
            );
        let p = self.lab.spawn(self.host(node), cmd)?;
        self.agent_runs.push((node.to_owned(), p.clone()));
        self.agents.insert(node.to_owned(), p);
        Ok(())
    }

    pub fn stop_agent(&mut self, node: &str) -> Result<()> {
        if let Some(p) = self.agents.remove(node) {
            self.lab.stop(&p)?;
        }
        Ok(())
    }

    /// Runs `wirekube-agent cleanup` on `node` (its CNI directory in the lab dir, never the
    /// machine's).
    pub fn cleanup(&self, node: &str) -> Result<()> {
        let bin = binary("wirekube-agent")?;
        let cni = self.lab.dir().join(format!("cni-{node}"));
        self.lab
            .run(
                self.host(node),
                &[
                    &s(&bin),
                    "cleanup",
                    &format!("--interface={IFACE}"),
                    &format!("--cni-conf-dir={}", s(&cni)),
                ],
            )
            .map_err(|e| self.fail(&format!("cleanup on {node}: {e}")))?;
        Ok(())
    }

    /// What WireKube left on `node`: the interface, routes and rules carrying its protocol
    /// number, and WireGuard daemons in the node's namespace (empty when nothing is left).
    pub fn leftovers(&self, node: &str) -> Result<String> {
        let h = self.host(node);
        let mut out = String::new();
        if let Ok(l) = self.lab.run(h, &["ip", "-o", "link", "show", IFACE]) {
            out += &l;
        }
        let p = wirekube_dataplane::ROUTE_PROTOCOL.to_string();
        out += &self.lab.run(
            h,
            &["ip", "-4", "route", "show", "table", "all", "proto", &p],
        )?;
        let rules = self.lab.run(h, &["ip", "-4", "-d", "rule", "show"])?;
        for l in rules.lines().filter(|l| l.ends_with(&format!("proto {p}"))) {
            out += l;
            out += "\n";
        }
        // Processes of the node's namespace (the PID namespace is the machine's, and other
        // labs run their own wireguard-go for an interface of the same name).
        let pids = Command::new("ip").args(["netns", "pids", &h.ns]).output()?;
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("wireguard-go") || cmd.contains("boringtun") {
                out += &format!("process {pid}: {cmd}\n");
            }
        }
        Ok(out)
    }

    /// `wg show <iface> dump` on `node`.
    pub fn wg(&self, node: &str) -> Vec<WgPeer> {
        self.lab
            .run(self.host(node), &["wg", "show", IFACE, "dump"])
            .map(|t| parse_wg_dump(&t))
            .unwrap_or_default()
    }

    pub fn routes(&self, node: &str) -> String {
        self.lab
            .run(
                self.host(node),
                &["ip", "-4", "route", "show", "table", "all"],
            )
            .unwrap_or_default()
    }

    /// The agent's `/metrics` text.
    pub fn metrics(&self, node: &str) -> Result<String> {
        self.lab
            .in_host(self.host(node), || -> Result<String> {
                let mut c = TcpStream::connect(("127.0.0.1", METRICS_PORT))?;
                c.set_read_timeout(Some(Duration::from_secs(5)))?;
                c.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
                let mut out = String::new();
                c.read_to_string(&mut out)?;
                Ok(out)
            })?
            .map_err(|e| anyhow!("metrics of {node}: {e}"))
    }

    /// Sum of the samples of metric `name` whose label set contains `label` (e.g. `kind="netlink"`).
    pub fn metric(&self, node: &str, name: &str, label: &str) -> f64 {
        let text = self.metrics(node).unwrap_or_default();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.split(['{', ' ']).next() == Some(name) && (label.is_empty() || l.contains(label))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn fail(&self, what: &str) -> anyhow::Error {
        anyhow!("{what}\n--- logs ---\n{}", self.lab.logs_tail(40))
    }

    /// Waits until `f` holds, failing with the recent logs. The deadline is `secs` times the
    /// lab's slowdown factor (4 in the emulated VM of `make test-kernel`, else 1): it bounds
    /// the wait for a condition; the targets are asserted on measured times.
    pub fn wait(&self, secs: u64, what: &str, f: impl FnMut() -> bool) -> Result<Duration> {
        let deadline = Duration::from_secs(secs) * wirekube_lab::netns::slowdown();
        wait_until(deadline, what, f).map_err(|e| self.fail(&e.to_string()))
    }
}

/// The connection `peer` in `st`.
pub fn conn<'a>(
    st: &'a WireKubePeerStatus,
    peer: &str,
) -> Option<&'a wirekube_crds::PeerConnection> {
    st.connections.iter().find(|c| c.name == peer)
}

/// Pings `ip` from `from` back to back on a thread until stopped; records every result.
pub struct Pinger {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<(Instant, bool)>>>,
}

impl Pinger {
    pub fn start(lab: Arc<Lab>, from: Host, ip: Ipv4Addr) -> Pinger {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut out = Vec::new();
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                out.push((Instant::now(), lab.ping(&from, ip).is_ok()));
            }
            out
        });
        Pinger {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns (replies, losses).
    pub fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let r = self.thread.take().map(|t| t.join().unwrap_or_default());
        let r = r.unwrap_or_default();
        let ok = r.iter().filter(|x| x.1).count();
        (ok, r.len() - ok)
    }
}
