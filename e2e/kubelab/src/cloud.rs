//! The lab's cloud: what a cloud controller and its load balancer do for `type: LoadBalancer`
//! Services. Each one gets an address from a pool in `status.loadBalancer.ingress` with
//! `ipMode: Proxy`, and the address is announced on the lab host of one node that runs a ready
//! endpoint, which forwards it straight to the endpoints' pod addresses (an "IP target" load
//! balancer, as AWS NLB IP mode or GCP NEGs do), keeping the client's source address.
//!
//! `ipMode: Proxy` matters: with the default (`VIP`), kube-proxy on *every* node captures
//! traffic to the address and sends it to a relay pod IP directly; across sites whose pod
//! networks are not routed to each other that address is unreachable (docs/operator.md).
//!
//! Decisions are pure ([`plan`]); the controller thread only lists, patches and announces.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

/// Errors of the lab cloud.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("lab cloud: {0}")]
    Start(String),
}

/// Where one load-balancer address goes: the announcing node and, per Service port,
/// (protocol, port) → pod address and target port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    pub node: String,
    pub ip: Ipv4Addr,
    pub forwards: Vec<Forward>,
}

/// One forwarding rule of a load-balancer address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Forward {
    /// `tcp` or `udp`.
    pub protocol: String,
    pub port: u16,
    pub pod_ip: Ipv4Addr,
    pub target_port: u16,
}

/// Installs (`true`) or removes (`false`) an announcement on the lab host of its node.
pub type Announcer = Arc<dyn Fn(&Announcement, bool) + Send + Sync>;

/// One LoadBalancer Service as the cloud sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LbService {
    /// `namespace/name`.
    pub key: String,
    /// `status.loadBalancer.ingress[0].ip`.
    pub assigned: Option<Ipv4Addr>,
    /// Nodes running a ready endpoint.
    pub ready_nodes: BTreeSet<String>,
    /// Forwarding rules per node with a ready endpoint (that node's pods only).
    pub forwards: BTreeMap<String, Vec<Forward>>,
}

/// What to do next.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Services to give an address.
    pub assign: Vec<(String, Ipv4Addr)>,
    /// Services that need an address but the pool is empty.
    pub exhausted: Vec<String>,
    /// Address → node that should announce it.
    pub announce: BTreeMap<Ipv4Addr, String>,
}

impl Plan {
    /// The full announcements (forwarding rules included) of this plan.
    pub fn announcements(&self, services: &[LbService]) -> BTreeMap<Ipv4Addr, Announcement> {
        let mut out = BTreeMap::new();
        for (ip, node) in &self.announce {
            let svc = services.iter().find(|s| {
                s.assigned == Some(*ip) || self.assign.iter().any(|(k, a)| a == ip && *k == s.key)
            });
            let forwards = svc
                .and_then(|s| s.forwards.get(node))
                .cloned()
                .unwrap_or_default();
            out.insert(
                *ip,
                Announcement {
                    node: node.clone(),
                    ip: *ip,
                    forwards,
                },
            );
        }
        out
    }
}

/// Assigns free pool addresses to services without one (in key order, lowest address first) and
/// picks an announcing node per address: the current one while it still has a ready endpoint,
/// else the first ready node by name.
pub fn plan(
    services: &[LbService],
    pool: &[Ipv4Addr],
    announced: &BTreeMap<Ipv4Addr, String>,
) -> Plan {
    let mut used: BTreeSet<Ipv4Addr> = services.iter().filter_map(|s| s.assigned).collect();
    let mut out = Plan::default();
    let mut sorted: Vec<&LbService> = services.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    for s in sorted {
        let ip = match s.assigned {
            Some(ip) => ip,
            None => match pool.iter().find(|ip| !used.contains(ip)) {
                Some(&ip) => {
                    used.insert(ip);
                    out.assign.push((s.key.clone(), ip));
                    ip
                }
                None => {
                    out.exhausted.push(s.key.clone());
                    continue;
                }
            },
        };
        let keep = announced.get(&ip).filter(|n| s.ready_nodes.contains(*n));
        if let Some(node) = keep.or_else(|| s.ready_nodes.iter().next()) {
            out.announce.insert(ip, node.clone());
        }
    }
    out
}

/// The running controller; stops on drop.
pub struct LabCloud {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LabCloud {
    /// Starts the controller with the admin `kubeconfig`. With `netns` (a `/run/netns/...` path)
    /// its thread joins that network namespace first (where the API server is reachable).
    /// Without an `announcer`, addresses are only assigned.
    pub fn start(
        kubeconfig: &Path,
        netns: Option<&Path>,
        pool: Vec<Ipv4Addr>,
        announcer: Option<Announcer>,
    ) -> Result<LabCloud, CloudError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (kc, ns) = (kubeconfig.to_owned(), netns.map(Path::to_owned));
        let (tx, rx) = std::sync::mpsc::channel();
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("lab-cloud".into())
            .spawn(move || run(kc, ns, pool, announcer, s, tx))
            .map_err(|e| CloudError::Start(format!("thread: {e}")))?;
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(LabCloud {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(CloudError::Start(e)),
            Err(_) => Err(CloudError::Start("no client within 10 s".into())),
        }
    }
}

impl Drop for LabCloud {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Ready = std::sync::mpsc::Sender<Result<(), String>>;

fn run(
    kubeconfig: PathBuf,
    netns: Option<PathBuf>,
    pool: Vec<Ipv4Addr>,
    announcer: Option<Announcer>,
    stop: Arc<AtomicBool>,
    ready: Ready,
) {
    if let Some(ns) = &netns
        && let Err(e) = enter_netns(ns)
    {
        let _ = ready.send(Err(e));
        return;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("runtime: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        let client = match client(&kubeconfig).await {
            Ok(c) => c,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let mut announced = BTreeMap::new();
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = pass(&client, &pool, announcer.as_ref(), &mut announced).await {
                tracing::warn!("lab cloud pass: {e}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if let Some(a) = &announcer {
            for ann in announced.values() {
                a(ann, false);
            }
        }
    });
}

fn enter_netns(ns: &Path) -> Result<(), String> {
    let f = std::fs::File::open(ns).map_err(|e| format!("open {}: {e}", ns.display()))?;
    wirekube_lab::netns::join(&f).map_err(|e| format!("setns {}: {e}", ns.display()))
}

async fn client(kubeconfig: &Path) -> Result<kube::Client, String> {
    let yaml = std::fs::read_to_string(kubeconfig)
        .map_err(|e| format!("read {}: {e}", kubeconfig.display()))?;
    let kc = kube::config::Kubeconfig::from_yaml(&yaml).map_err(|e| e.to_string())?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    kube::Client::try_from(cfg).map_err(|e| e.to_string())
}

/// One observe → plan → act pass.
async fn pass(
    client: &kube::Client,
    pool: &[Ipv4Addr],
    announcer: Option<&Announcer>,
    announced: &mut BTreeMap<Ipv4Addr, Announcement>,
) -> Result<(), kube::Error> {
    let services = observe(client).await?;
    let nodes: BTreeMap<Ipv4Addr, String> = announced
        .iter()
        .map(|(ip, a)| (*ip, a.node.clone()))
        .collect();
    let p = plan(&services, pool, &nodes);
    for key in &p.exhausted {
        tracing::warn!("lab cloud: no free address for LoadBalancer Service {key}");
    }
    for (key, ip) in &p.assign {
        let (ns, name) = key.split_once('/').unwrap_or(("default", key));
        let status = json!({"status": {"loadBalancer": {"ingress": [
            {"ip": ip.to_string(), "ipMode": "Proxy"}]}}});
        Api::<Service>::namespaced(client.clone(), ns)
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
    }
    let now = p.announcements(&services);
    if let Some(a) = announcer {
        for (ip, old) in announced.iter() {
            if now.get(ip) != Some(old) {
                a(old, false);
            }
        }
        for (ip, new) in &now {
            if announced.get(ip) != Some(new) {
                a(new, true);
            }
        }
    }
    *announced = now;
    Ok(())
}

async fn observe(client: &kube::Client) -> Result<Vec<LbService>, kube::Error> {
    let services = Api::<Service>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let slices = Api::<EndpointSlice>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    // Service key → node → ready endpoint ports there.
    let mut ready: BTreeMap<String, BTreeMap<String, Vec<EndpointPort>>> = BTreeMap::new();
    for s in &slices.items {
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        let labels = s.metadata.labels.clone().unwrap_or_default();
        let Some(svc) = labels.get("kubernetes.io/service-name") else {
            continue;
        };
        let by_node = ready.entry(format!("{ns}/{svc}")).or_default();
        for e in &s.endpoints {
            let is_ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false);
            let (true, Some(n)) = (is_ready, &e.node_name) else {
                continue;
            };
            let targets = by_node.entry(n.clone()).or_default();
            for ip in e
                .addresses
                .iter()
                .filter_map(|a| a.parse::<Ipv4Addr>().ok())
            {
                for p in s.ports.iter().flatten() {
                    if let Some(port16) = p.port.and_then(|x| u16::try_from(x).ok()) {
                        targets.push((
                            p.name.clone().unwrap_or_default(),
                            p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                            ip,
                            port16,
                        ));
                    }
                }
            }
        }
    }
    Ok(services
        .items
        .iter()
        .filter(|s| s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer"))
        .map(|s| {
            let key = format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap_or_default(),
                s.metadata.name.as_deref().unwrap_or_default()
            );
            let assigned = s
                .status
                .as_ref()
                .and_then(|st| st.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .and_then(|i| i.first())
                .and_then(|i| i.ip.as_deref())
                .and_then(|ip| ip.parse().ok());
            let ports = s
                .spec
                .as_ref()
                .and_then(|sp| sp.ports.clone())
                .unwrap_or_default();
            let targets = ready.get(&key).cloned().unwrap_or_default();
            let forwards = targets
                .iter()
                .map(|(node, eps)| (node.clone(), forwards_for(&ports, eps)))
                .collect();
            LbService {
                ready_nodes: targets.keys().cloned().collect(),
                forwards,
                key,
                assigned,
            }
        })
        .collect())
}

/// One ready endpoint port: (port name, protocol, pod IP, pod port).
type EndpointPort = (String, String, Ipv4Addr, u16);

/// Matches Service ports to endpoint ports by name and protocol.
fn forwards_for(
    ports: &[k8s_openapi::api::core::v1::ServicePort],
    eps: &[EndpointPort],
) -> Vec<Forward> {
    let mut out: Vec<Forward> = ports
        .iter()
        .flat_map(|sp| {
            let name = sp.name.clone().unwrap_or_default();
            let proto = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
            eps.iter()
                .filter(move |(n, p, _, _)| *n == name && *p == proto)
                .filter_map(move |(_, p, ip, target)| {
                    Some(Forward {
                        protocol: p.to_ascii_lowercase(),
                        port: u16::try_from(sp.port).ok()?,
                        pod_ip: *ip,
                        target_port: *target,
                    })
                })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, last)
    }

    fn svc(key: &str, assigned: Option<u8>, ready: &[&str]) -> LbService {
        LbService {
            key: key.into(),
            assigned: assigned.map(ip),
            ready_nodes: ready.iter().map(|s| s.to_string()).collect(),
            forwards: BTreeMap::new(),
        }
    }

    #[test]
    fn plans() {
        let pool = [ip(200), ip(201)];
        let none = BTreeMap::new();
        // (what, services, announced before, assign, exhausted, announce)
        type Case<'a> = (
            &'a str,
            Vec<LbService>,
            Vec<(u8, &'a str)>,
            Vec<(&'a str, u8)>,
            Vec<&'a str>,
            Vec<(u8, &'a str)>,
        );
        let cases: Vec<Case> = vec![
            ("nothing", vec![], vec![], vec![], vec![], vec![]),
            (
                "new service, no endpoint yet: address, no announcement",
                vec![svc("ns/a", None, &[])],
                vec![],
                vec![("ns/a", 200)],
                vec![],
                vec![],
            ),
            (
                "assigned addresses are kept and skipped",
                vec![svc("ns/a", Some(200), &[]), svc("ns/b", None, &["n1"])],
                vec![],
                vec![("ns/b", 201)],
                vec![],
                vec![(201, "n1")],
            ),
            (
                "pool exhausted",
                vec![
                    svc("ns/a", Some(200), &[]),
                    svc("ns/b", Some(201), &[]),
                    svc("ns/c", None, &["n1"]),
                ],
                vec![],
                vec![],
                vec!["ns/c"],
                vec![],
            ),
            (
                "announcer stays while it has a ready endpoint",
                vec![svc("ns/a", Some(200), &["n1", "n2"])],
                vec![(200, "n2")],
                vec![],
                vec![],
                vec![(200, "n2")],
            ),
            (
                "announcer moves when its endpoint goes",
                vec![svc("ns/a", Some(200), &["n1"])],
                vec![(200, "n2")],
                vec![],
                vec![],
                vec![(200, "n1")],
            ),
            (
                "address outside the pool (set by someone else) is still announced",
                vec![svc("ns/a", Some(9), &["n1"])],
                vec![],
                vec![],
                vec![],
                vec![(9, "n1")],
            ),
        ];
        for (what, services, before, assign, exhausted, announce) in cases {
            let before: BTreeMap<_, _> = before
                .into_iter()
                .map(|(i, n)| (ip(i), n.to_string()))
                .collect();
            let p = plan(
                &services,
                &pool,
                if before.is_empty() { &none } else { &before },
            );
            let want_assign: Vec<_> = assign
                .into_iter()
                .map(|(k, i)| (k.to_string(), ip(i)))
                .collect();
            assert_eq!(p.assign, want_assign, "{what}");
            assert_eq!(p.exhausted, exhausted, "{what}");
            let want: BTreeMap<_, _> = announce
                .into_iter()
                .map(|(i, n)| (ip(i), n.to_string()))
                .collect();
            assert_eq!(p.announce, want, "{what}");
        }
    }
}
