//! Building a topology in the lab, running the real binaries in it, waiting for convergence and
//! checking every pair.

mod options;
mod setup;
mod verify;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use wirekube_crds::{ActualPath, PathReason, WireKubePeer};
use wirekube_kubelab::cloud::LabCloud;
use wirekube_kubelab::node::LabNode;
use wirekube_lab::{Host, Lab, Proc, SiteSpec, wait_for, wait_until};

use crate::kube_lab::KubeLab;

pub use super::cloud::LB_ADDRESS;
use super::cloud::start_cloud;
use super::cluster::{Cluster, PeerWatch};
use super::hosts::{LabNodes, NodeAccess};
use super::report::{PairReport, Timings};
use super::startup;
use super::topology::{RelaySetup, Topology};
pub use options::{Installer, Options};
pub(crate) use setup::start_nodes;
use setup::{container_logs, random_token};
pub use setup::{mesh_for, start_relay};

/// How long a pair may take to pass its first ping once both agents report the path. Seen twice
/// in about 100 runs of `seed_decision_mode_never` (once in CI, once locally with the CPUs
/// saturated): one direction of a fresh direct pair passed no ping for ~14 s and then recovered
/// by itself, while `wg show` had a handshake. That matches WireGuard's own repair time for a
/// session only one side kept (keepalive 10 s + rekey 5 s) after both wireguard-go peers
/// initiated at the same moment, but is not proven; the failure diagnostics (`diagnose.rs`) now
/// record both ends' `wg show` and the recovery time should it happen again.
const PING_DEADLINE: Duration = Duration::from_secs(20);

/// The relay's TCP port and STUN port (the seed's "TCP 3478").
pub const RELAY_PORT: u16 = 3478;
/// The API server's port in the DMZ.
pub const APISERVER_PORT: u16 = 6443;
/// Namespace of the operator, the managed relay and the token Secret.
pub const SYSTEM_NAMESPACE: &str = "wirekube-system";
/// Name of the mesh every scenario applies.
pub const MESH_NAME: &str = "default";
/// Secret holding the external relay's token (key `token`): the operator tells agents to read
/// `wirekube-relay-<mesh>` in its namespace (`spec.relayTokenSecret`), for external relays too.
pub const TOKEN_SECRET: &str = "wirekube-relay-default";

/// A topology built in a lab with the control plane and agents running.
pub struct Scenario {
    pub topo: Topology,
    pub lab: Arc<Lab>,
    pub dmz: Host,
    /// Node name → lab host.
    pub hosts: BTreeMap<String, Host>,
    pub nodes: Arc<LabNodes>,
    /// The real control plane in the DMZ and the admin's client.
    pub kube: KubeLab,
    /// Each node's lab kubelet and kube-proxy.
    pub kube_nodes: BTreeMap<String, LabNode>,
    /// The lab cloud (LoadBalancer addresses), for a managed LoadBalancer relay.
    pub cloud: Option<LabCloud>,
    /// The external relay process (`provider: external`).
    pub relay: Option<Proc>,
    pub timings: Timings,
    agents_started: Option<Instant>,
    /// `agents_started` on the wall clock, and when each direction last became as expected.
    agents_started_wall: jiff::Timestamp,
    reached: startup::Reached,
    opts: Options,
    first_pings: Arc<Mutex<BTreeMap<(String, String), Duration>>>,
    probers: Vec<JoinHandle<()>>,
    stop_probers: Arc<AtomicBool>,
}

impl Scenario {
    /// Builds the lab, starts the real control plane in the DMZ, installs WireKube as a user
    /// does (`kubectl apply -k config/default`), starts every node's lab kubelet and kube-proxy
    /// (so the operator and the agents run as the pods the real Deployment and DaemonSet
    /// controllers create), the external relay when the topology has one, and applies the mesh.
    pub fn build(topo: Topology, opts: Options) -> Result<Scenario> {
        topo.validate().map_err(|e| anyhow!(e))?;
        let t0 = Instant::now();
        (opts.progress)(&format!("building lab for {topo}"));
        let lab = Arc::new(match &opts.prefix {
            Some(p) => Lab::new(p)?,
            None => Lab::new_unique(&opts.tag)?,
        });
        let mut hosts = BTreeMap::new();
        for s in &topo.sites {
            let mut spec = SiteSpec::new(&s.name, s.nat, &s.cidr);
            if let Some(up) = &s.behind {
                spec = spec.behind(up);
            }
            lab.add_site(spec)?;
            for n in &s.nodes {
                hosts.insert(n.clone(), lab.add_node(&s.name, n)?);
            }
            for n in &s.elastic {
                hosts.insert(n.clone(), lab.add_elastic_node(&s.name, n, None)?.0);
            }
        }
        for n in &topo.public_nodes {
            hosts.insert(n.clone(), lab.add_public_node(n)?);
        }
        let dmz = lab.add_dmz("dmz", &[])?;
        let lab_build = t0.elapsed();
        let nodes = Arc::new(LabNodes::new(lab.clone(), hosts.clone()));

        let t1 = Instant::now();
        (opts.progress)(
            "starting the control plane in the DMZ (etcd, kube-apiserver, controllers, scheduler)",
        );
        let kube = KubeLab::start_in(lab.clone(), dmz.clone())?;
        let running_nodes = if opts.install_after_nodes {
            if opts.pod_network {
                bail!("install_after_nodes: the nodes' pod network comes from the agents");
            }
            (opts.progress)(&format!(
                "starting {} lab kubelets and kube-proxies; WireKube is installed once they run",
                hosts.len()
            ));
            let n = start_nodes(&lab, &kube, &topo, &hosts, false, &opts.node_env)?;
            setup::wait_nodes_settled(&kube, hosts.len(), Duration::from_secs(180))?;
            Some(n)
        } else {
            None
        };
        // The agents start once WireKube is installed on running nodes, or with the nodes.
        let install_started = (Instant::now(), jiff::Timestamp::now());
        let install = if opts.pod_network {
            "config/pod-network"
        } else {
            "config/default"
        };
        if let Some(install) = &opts.install {
            (opts.progress)("installing WireKube with the test's installer");
            install(&kube)?;
        } else if opts.chart && !opts.pod_network {
            (opts.progress)("installing WireKube: helm install wirekube charts/wirekube");
            kube.install_chart(&[])?;
        } else {
            (opts.progress)(&format!("installing WireKube: kubectl apply -k {install}"));
            kube.install_from(install)?;
        }
        let fail = |lab: &Lab, e: anyhow::Error| e.context(lab.logs_tail(30));

        let mut relay = None;
        if matches!(topo.relay, RelaySetup::External | RelaySetup::None) {
            (opts.progress)("starting wirekube-relay in the DMZ");
            let token = random_token();
            let token_file = lab.dir().join("relay-token");
            std::fs::write(&token_file, &token)?;
            kube.admin.put_secret(
                SYSTEM_NAMESPACE,
                TOKEN_SECRET,
                &[("token", token.as_bytes())],
            )?;
            let p = start_relay(&lab, &dmz, &token_file)?;
            wait_until(Duration::from_secs(10), "relay listening", || {
                lab.tcp_listening(&dmz, RELAY_PORT) || !lab.is_running(&p)
            })
            .map_err(|e| fail(&lab, e.into()))?;
            if !lab.is_running(&p) {
                return Err(fail(&lab, anyhow!("wirekube-relay exited")));
            }
            relay = Some(p);
        }
        let cloud = match &topo.relay {
            RelaySetup::ManagedLoadBalancer { .. } => Some(start_cloud(&lab, &kube, &hosts)?),
            _ => None,
        };

        // The mesh first, as on a cluster where WireKube is installed and nodes come up: the
        // operator (itself a pod on one of the first nodes) finds it at its start. Applied
        // after the nodes, the 30-node start-up's first peers waited up to 8 s for it.
        (opts.progress)(&format!(
            "applying WireKubeMesh {MESH_NAME} (mode {:?}, {})",
            topo.mode,
            topo.relay.describe()
        ));
        let mut mesh = mesh_for(&topo, &dmz);
        mesh.spec.pod_network.enabled = opts.pod_network;
        kube.admin.apply_mesh(&mesh)?;
        let ((agents_started, agents_started_wall), kube_nodes) = match running_nodes {
            Some(n) => (install_started, n),
            None => {
                (opts.progress)(&format!(
                    "starting {} lab kubelets and kube-proxies; the operator and agents run as their pods",
                    hosts.len()
                ));
                let started = (Instant::now(), jiff::Timestamp::now());
                let pod_network = opts.pod_network;
                (
                    started,
                    start_nodes(&lab, &kube, &topo, &hosts, pod_network, &opts.node_env)?,
                )
            }
        };

        let timings = Timings {
            lab_build,
            control_plane: t1.elapsed(),
            ..Timings::default()
        };
        Ok(Scenario {
            topo,
            lab,
            dmz,
            hosts,
            nodes,
            kube,
            kube_nodes,
            cloud,
            relay,
            timings,
            agents_started: Some(agents_started),
            agents_started_wall,
            reached: startup::Reached::default(),
            opts,
            first_pings: Arc::default(),
            probers: Vec::new(),
            stop_probers: Arc::default(),
        })
    }

    /// Whether WireKube is the pod network in this run.
    pub(crate) fn pod_network(&self) -> bool {
        self.opts.pod_network
    }

    /// The admin's client.
    pub fn cluster(&self) -> &Cluster {
        &self.kube.admin
    }

    fn since_agents(&self) -> Duration {
        self.agents_started.map(|t| t.elapsed()).unwrap_or_default()
    }

    /// The peers, by name.
    pub fn peers(&self) -> Result<BTreeMap<String, WireKubePeer>> {
        Ok(self
            .kube
            .admin
            .peers()?
            .into_iter()
            .map(|p| (p.metadata.name.clone().unwrap_or_default(), p))
            .collect())
    }

    /// Mesh IP of each node (from the operator's peer specs).
    pub fn mesh_ips(&self, peers: &BTreeMap<String, WireKubePeer>) -> BTreeMap<String, Ipv4Addr> {
        peers
            .iter()
            .filter_map(|(n, p)| {
                let ip = p.spec.mesh_ip.split('/').next()?.parse().ok()?;
                Some((n.clone(), ip))
            })
            .collect()
    }

    /// Waits for the operator to give every node a mesh IP, then starts one ping prober per pair
    /// (records the first reply after the agents started).
    fn start_probers(
        &mut self,
        deadline: Instant,
        watch: &PeerWatch,
    ) -> Result<BTreeMap<String, Ipv4Addr>> {
        let want: BTreeSet<String> = self.hosts.keys().cloned().collect();
        let left = deadline.saturating_duration_since(Instant::now());
        let (ips, _) = wait_for(left, "a mesh IP for every node in the peer specs", || {
            if !self.dead_processes().is_empty() {
                return Some(BTreeMap::new());
            }
            let ips = self.mesh_ips(&watch.peers()?);
            want.iter().all(|n| ips.contains_key(n)).then_some(ips)
        })?;
        let dead = self.dead_processes();
        if !dead.is_empty() {
            bail!("exited: {}", dead.join(", "));
        }
        let started = self.agents_started.unwrap_or_else(Instant::now);
        // One prober per source node (one socket, every peer it pings), not one per pair: at
        // 20-30 nodes a process per ping loaded the two cores more than the mesh did.
        let mut by_source: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (a, b) in self.topo.pairs() {
            by_source.entry(a).or_default().push(b);
        }
        for (a, bs) in by_source {
            let (nodes, stop, firsts) = (
                self.nodes.clone(),
                self.stop_probers.clone(),
                self.first_pings.clone(),
            );
            let targets: Vec<Ipv4Addr> = bs.iter().map(|b| ips[b]).collect();
            let name_of: BTreeMap<Ipv4Addr, String> =
                bs.into_iter().map(|b| (ips[&b], b)).collect();
            self.probers.push(std::thread::spawn(move || {
                let left = deadline.saturating_duration_since(Instant::now());
                let res = nodes.ping_until_answered(
                    &a,
                    &targets,
                    left,
                    &|| stop.load(Ordering::Relaxed),
                    &mut |ip| {
                        let mut firsts = firsts.lock().expect("pings lock");
                        firsts.insert((a.clone(), name_of[&ip].clone()), started.elapsed());
                    },
                );
                if let Err(e) = res {
                    tracing::warn!(node = %a, error = %format!("{e:#}"), "prober failed");
                }
            }));
        }
        Ok(ips)
    }

    /// The (path, reason) node `a`'s agent reports for peer `b`.
    pub(crate) fn reported(
        peers: &BTreeMap<String, WireKubePeer>,
        a: &str,
        b: &str,
    ) -> Option<(ActualPath, Option<PathReason>)> {
        let c = peers
            .get(a)?
            .status
            .as_ref()?
            .connections
            .iter()
            .find(|c| c.name == b)?;
        Some((c.path, c.reason))
    }

    /// Lab processes that are no longer running: control plane, kubelets, kube-proxies, the
    /// external relay. (Containers are the kubelets' business: they restart them.)
    pub fn dead_processes(&self) -> Vec<String> {
        let mut all: Vec<&Proc> = self.relay.iter().collect();
        for n in self.kube_nodes.values() {
            all.extend([&n.kubelet, &n.kube_proxy]);
        }
        let mut dead: Vec<String> = all
            .into_iter()
            .filter(|p| !self.lab.is_running(p))
            .map(|p| format!("{} on {} (pid {})", p.label, p.host, p.pid))
            .collect();
        dead.extend(self.kube.cp.dead(&self.lab));
        dead
    }

    /// Waits until every agent reports every peer on the expected path with the expected reason.
    pub fn converge(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.opts.converge_timeout;
        // Read from a watch, not by listing every 100 ms (`Cluster::watch_peers`).
        let watch = self.kube.admin.watch_peers();
        (self.opts.progress)("waiting for the operator to allocate mesh IPs");
        self.start_probers(deadline, &watch)?;
        (self.opts.progress)("waiting for every agent to report every peer as the seed expects");
        let pairs = self.topo.pairs();
        let direct_pairs: Vec<&(String, String)> = pairs
            .iter()
            .filter(|(a, b)| {
                self.topo
                    .expectation(a, b)
                    .is_some_and(|e| e.path == ActualPath::Direct)
            })
            .collect();
        let mut last = String::new();
        let mut all_direct = None;
        let mut reported_before = 0usize;
        let mut reached = startup::Reached::default();
        // The same, stamped when this loop's poll saw each report (up to 2 s later on a
        // saturated machine): printed beside, so the two instruments can be compared.
        let mut polled = startup::Reached::default();
        let res = wait_until(
            deadline.saturating_duration_since(Instant::now()),
            "every pair reported as expected",
            || {
                let dead = self.dead_processes();
                if !dead.is_empty() {
                    last = format!("exited: {}", dead.join(", "));
                    return true;
                }
                let Some(peers) = watch.peers() else {
                    return false;
                };
                let dir_ok = |a: &str, b: &str| {
                    Scenario::reported(&peers, a, b).map(|r| r.0) == Some(ActualPath::Direct)
                };
                if all_direct.is_none()
                    && direct_pairs
                        .iter()
                        .all(|(a, b)| dir_ok(a, b) && dir_ok(b, a))
                {
                    all_direct = Some(self.since_agents());
                }
                let mut wrong = Vec::new();
                let mut reported = 0;
                let now = jiff::Timestamp::now();
                // A report counts from when the watch received it, not from this poll.
                let received: BTreeMap<&str, jiff::Timestamp> = (peers.iter())
                    .map(|(n, p)| (n.as_str(), watch.received_at(p).unwrap_or(now)))
                    .collect();
                for (a, b) in &pairs {
                    let e = self.topo.expectation(a, b).expect("validated");
                    for (x, y) in [(a, b), (b, a)] {
                        let r = Scenario::reported(&peers, x, y);
                        if matches!(r, Some((ActualPath::Direct | ActualPath::Relay, _))) {
                            reported += 1;
                        }
                        let ok = r == Some((e.path, Some(e.reason)));
                        let at = received.get(x.as_str()).copied().unwrap_or(now);
                        reached.observe(x, y, ok, at);
                        reached.report(x, y, reported_text(r), at);
                        polled.observe(x, y, ok, now);
                        if !ok {
                            wrong.push(format!("{x}->{y}: {r:?}"));
                        }
                    }
                }
                if reported > reported_before {
                    reported_before = reported;
                    (self.opts.progress)(&format!(
                        "{reported}/{} directions report a path ({:.1} s)",
                        pairs.len() * 2,
                        self.since_agents().as_secs_f64()
                    ));
                }
                last = wrong.join(", ");
                wrong.is_empty()
            },
        );
        self.timings.all_direct = all_direct;
        match res {
            Ok(_) if last.starts_with("exited: ") => Err(anyhow!("{last}")),
            Ok(_) => {
                self.timings.converged = Some(self.since_agents());
                self.record_agent_startup(&pairs, &reached, &polled);
                self.reached = reached;
                (self.opts.progress)(&format!(
                    "converged {:.1} s after the agents started",
                    self.since_agents().as_secs_f64()
                ));
                Ok(())
            }
            Err(e) => Err(anyhow!(e).context(format!("still not as expected: {last}"))),
        }
    }

    /// The agents' own start-up per pair (`scenario::startup`), from their logs.
    fn record_agent_startup(
        &mut self,
        pairs: &[(String, String)],
        reached: &startup::Reached,
        polled: &startup::Reached,
    ) {
        let starts: BTreeMap<String, jiff::Timestamp> = self
            .hosts
            .keys()
            .filter_map(|n| {
                let pods = self.lab.host_dir(n).join("kubelet/pods");
                Some((n.clone(), startup::agent_start(&pods)?))
            })
            .collect();
        self.timings.agents_spread = startup::spread(&starts)
            .and_then(|(first, last)| Duration::try_from(last.duration_since(first)).ok());
        self.timings.slowest_pair = startup::slowest_pair(pairs, &starts, reached);
        if let Ok(out) = std::env::var("WIREKUBE_STARTUP_HISTORY") {
            let text = startup::history(pairs, &starts, reached);
            if let Err(e) = std::fs::write(&out, text) {
                (self.opts.progress)(&format!("WIREKUBE_STARTUP_HISTORY: writing {out}: {e}"));
            }
        }
        if let Some(p) = &self.timings.slowest_pair {
            (self.opts.progress)(&format!(
                "agents started over {:.1} s; slowest pair {} <-> {}: {:.1} s after the later \
                 of its agents started",
                self.timings.agents_spread.unwrap_or_default().as_secs_f64(),
                p.a,
                p.b,
                p.took.as_secs_f64()
            ));
            if let Some(q) = startup::slowest_pair(pairs, &starts, polled) {
                (self.opts.progress)(&format!(
                    "  as the 100 ms poll saw the reports: {} <-> {}, {:.1} s",
                    q.a,
                    q.b,
                    q.took.as_secs_f64()
                ));
            }
            let later = starts.get(&p.a).max(starts.get(&p.b));
            if let Some(&since) = later {
                for (x, y) in [(&p.a, &p.b), (&p.b, &p.a)] {
                    let seen = reached.reports_after(x, y, since);
                    (self.opts.progress)(&format!("  {x} -> {y} reported: {seen}"));
                }
            }
        }
    }

    /// Address `a` must see as `b`'s WireGuard endpoint on a direct path: the LAN address on the
    /// same site, else the address the internet sees for `b` (its own when public, its elastic
    /// IP, else the WAN address of the outermost NAT in front of it).
    pub fn direct_endpoint_ip(&self, a: &str, b: &str) -> Option<Ipv4Addr> {
        let (ha, hb) = (self.hosts.get(a)?, self.hosts.get(b)?);
        if hb.site.is_some() && ha.site == hb.site {
            return Some(hb.ip());
        }
        self.lab.public_ip(hb).ok()
    }

    pub fn logs(&self, lines: usize) -> String {
        let mut out = self.lab.logs_tail(lines);
        for name in self.hosts.keys() {
            out += &container_logs(&self.lab.host_dir(name).join("kubelet/pods"), name, lines);
        }
        out
    }

    /// `kubectl <args>` with the admin kubeconfig, run in the DMZ (where the API server is).
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kube.kubectl(args)
    }

    /// Tears the lab down (also on drop) and reports leftovers.
    pub fn shutdown(&mut self) -> Result<()> {
        self.stop_probers.store(true, Ordering::Relaxed);
        for p in self.probers.drain(..) {
            let _ = p.join();
        }
        Ok(self.lab.shutdown()?)
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        self.stop_probers.store(true, Ordering::Relaxed);
    }
}

/// The outcome of [`run`].
pub struct Outcome {
    pub pairs: Vec<PairReport>,
    pub timings: Timings,
}

/// Builds, converges and verifies `topo`, then tears down. Errors carry a table of every pair and
/// the tail of every process log.
pub fn run(topo: Topology, opts: Options) -> Result<Outcome> {
    let t0 = Instant::now();
    let mut sc = Scenario::build(topo, opts)?;
    let res = sc.converge().and_then(|()| sc.verify());
    let pairs = match res {
        Ok(p) if p.iter().all(PairReport::ok) => p,
        Ok(p) => {
            let msg = format!(
                "{}: pairs failed\n{}\n---- process logs ----\n{}",
                sc.topo,
                super::report::table(&p),
                sc.logs(40)
            );
            sc.shutdown()?;
            bail!(msg);
        }
        Err(e) => {
            let peers = sc
                .kubectl(&["get", "wirekubepeers", "-o", "yaml"])
                .unwrap_or_else(|e| e.to_string());
            let msg = format!(
                "{}: {e:#}\n---- peers ----\n{peers}\n---- process logs ----\n{}",
                sc.topo,
                sc.logs(40)
            );
            sc.shutdown()?;
            bail!(msg);
        }
    };
    sc.shutdown()?;
    let mut timings = sc.timings.clone();
    timings.total = t0.elapsed();
    Ok(Outcome { pairs, timings })
}

/// A direction's report as the start-up history prints it: `Direct same-site`.
fn reported_text(r: Option<(ActualPath, Option<PathReason>)>) -> String {
    match r {
        None => "no entry".into(),
        Some((path, None)) => format!("{path:?}"),
        Some((path, Some(reason))) => format!("{path:?} {reason}"),
    }
}
