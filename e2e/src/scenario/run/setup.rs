//! How each binary of a scenario is started and what it is given: the images the lab kubelets
//! run, the external relay's flags and the mesh a topology applies (flags documented in
//! docs/{apiserver,operator,agent,relay}.md).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use wirekube_crds::{
    ExternalRelay, ManagedRelay, RelayProvider, RelaySpec, ServiceType, WireKubeMesh,
    WireKubeMeshSpec,
};
use wirekube_kubelab::node::{ImageMap, LabNode, NodeSpec};
use wirekube_lab::{Host, Lab, Proc, wait_for};
use wirekube_relay_proto::flags::RelayFlags;

use super::super::bins::binary;
use super::super::topology::{RELAY_HOST_LABEL, RelaySetup, Topology};
use super::{MESH_NAME, RELAY_PORT};
use crate::kube_lab::KubeLab;

/// Image → binary under test, for every kubelet: the images `config/` and the operator name.
/// Workload tests also get two plain images: `lab/sleep` (`sleep`) and `lab/nc` (`nc`).
fn image_map() -> Result<ImageMap> {
    let mut images: ImageMap = ["operator", "agent", "relay"]
        .into_iter()
        .map(|c| {
            let bin = binary(&format!("wirekube-{c}"))?;
            Ok((format!("ghcr.io/wirekube/wirekube-{c}:*"), bin))
        })
        .collect::<Result<_>>()?;
    for (image, bin) in [
        ("lab/sleep:*", "/usr/bin/sleep"),
        ("lab/nc:*", "/usr/bin/nc"),
    ] {
        images.push((image.into(), PathBuf::from(bin)));
    }
    Ok(images)
}

/// Waits until the cluster has `count` Nodes, each Ready and with its pod CIDR allocated: a
/// running cluster, for a scenario that installs WireKube after its nodes
/// (`Options::install_after_nodes`).
pub(crate) fn wait_nodes_settled(kube: &KubeLab, count: usize, timeout: Duration) -> Result<()> {
    let what = format!("{count} Nodes Ready with a pod CIDR");
    wait_for(timeout, &what, || {
        let nodes = kube.admin.nodes().ok()?;
        let settled = nodes.iter().filter(|n| {
            let ready = (n.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let cidr = n.spec.as_ref().is_some_and(|s| s.pod_cidr.is_some());
            ready && cidr
        });
        (settled.count() == count).then_some(())
    })?;
    Ok(())
}

/// Starts the lab kubelet and kube-proxy of every node (registering the Nodes with their site
/// label; public nodes also get their address as ExternalIP), a few nodes at a time: one after
/// the other, 30 nodes took the lab most of the start-up figure (each waits for its Node to
/// register before its kube-proxy starts).
pub(crate) fn start_nodes(
    lab: &Lab,
    kube: &KubeLab,
    topo: &Topology,
    hosts: &BTreeMap<String, Host>,
    pod_network: bool,
    node_env: &BTreeMap<String, Vec<(String, String)>>,
) -> Result<BTreeMap<String, LabNode>> {
    const AT_ONCE: usize = 6;
    let images = image_map()?;
    let kubelet = binary("wirekube-lab-kubelet")?;
    let queue = Mutex::new(hosts.iter());
    let started = Mutex::new(BTreeMap::new());
    let first_error = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..AT_ONCE.min(hosts.len()) {
            s.spawn(|| {
                loop {
                    let next = queue.lock().expect("queue lock").next();
                    let Some((name, h)) = next else { break };
                    if first_error.lock().expect("error lock").is_some() {
                        break;
                    }
                    let spec = node_spec(lab, topo, name, h, pod_network, node_env);
                    let res = spec.and_then(|spec| {
                        kube.cp
                            .start_node(lab, h, spec, &kubelet, &images)
                            .map_err(Into::into)
                    });
                    match res.with_context(|| format!("node {name}")) {
                        Ok(node) => {
                            started
                                .lock()
                                .expect("nodes lock")
                                .insert(name.clone(), node);
                        }
                        Err(e) => {
                            first_error.lock().expect("error lock").get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    match first_error.into_inner().expect("error lock") {
        Some(e) => Err(e),
        None => Ok(started.into_inner().expect("nodes lock")),
    }
}

fn node_spec(
    lab: &Lab,
    topo: &Topology,
    name: &str,
    h: &Host,
    pod_network: bool,
    node_env: &BTreeMap<String, Vec<(String, String)>>,
) -> Result<NodeSpec> {
    let site = h.site.clone().unwrap_or_else(|| "public".into());
    // As a cloud reports them: a public NIC's address, or the elastic IP mapped to the VM.
    let external_ip = if topo.public_nodes.iter().any(|p| p == name) || topo.is_elastic(name) {
        Some(lab.public_ip(h)?)
    } else {
        None
    };
    Ok(NodeSpec {
        name: name.to_owned(),
        internal_ip: h.ip(),
        external_ip,
        labels: std::iter::once(("topology.wirekube.io/site".into(), site))
            .chain(
                topo.relay_hosts()
                    .contains(&name)
                    .then(|| (RELAY_HOST_LABEL.into(), "true".into())),
            )
            .collect(),
        cni_from_conf_dir: pod_network,
        container_env: node_env.get(name).cloned().unwrap_or_default(),
    })
}

/// The last `lines` lines of each container log under a kubelet's pods directory.
pub(super) fn container_logs(pods: &Path, node: &str, lines: usize) -> String {
    let mut out = String::new();
    let Ok(dirs) = std::fs::read_dir(pods) else {
        return out;
    };
    for d in dirs.flatten() {
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(f.path()).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let tail = all[all.len().saturating_sub(lines)..].join("\n");
            out += &format!("==== {node} container {}\n{tail}\n", f.path().display());
        }
    }
    out
}

/// Starts `wirekube-relay` in the DMZ (relay and STUN on both DMZ addresses) with the token in
/// `token_file`; the scenarios and the agent lab start it this way.
pub fn start_relay(lab: &Lab, dmz: &Host, token_file: &Path) -> Result<Proc> {
    let mut cmd = Command::new(binary("wirekube-relay")?);
    let flags = RelayFlags {
        listen: Some((Ipv4Addr::UNSPECIFIED, RELAY_PORT).into()),
        stun_ip: Some(dmz.ips[0].into()),
        stun_port: Some(RELAY_PORT),
        stun_alt_port: Some(RELAY_PORT + 1),
        stun_alt_ip: Some(dmz.ips[1].into()),
        metrics_listen: Some((Ipv4Addr::LOCALHOST, 9090).into()),
        token_file: Some(token_file.to_path_buf()),
        ..RelayFlags::default()
    };
    cmd.args(flags.to_args()).env("RUST_LOG", "info");
    Ok(lab.spawn(dmz, cmd)?)
}

/// The mesh a topology applies: the sample's defaults plus the relay the topology asks for.
pub fn mesh_for(topo: &Topology, dmz: &Host) -> WireKubeMesh {
    let dmz_stun = vec![
        format!("{}:{RELAY_PORT}", dmz.ips[0]),
        format!("{}:{RELAY_PORT}", dmz.ips[1]),
    ];
    let mut relay = RelaySpec {
        mode: topo.mode,
        ..RelaySpec::default()
    };
    // A managed relay is pinned to its public node(s); the operator publishes its STUN addresses.
    let pinned =
        |node: &str| BTreeMap::from([("kubernetes.io/hostname".to_string(), node.to_string())]);
    let stun_servers = match &topo.relay {
        RelaySetup::None => dmz_stun,
        RelaySetup::External => {
            relay.provider = RelayProvider::External;
            relay.external = Some(ExternalRelay {
                endpoint: format!("{}:{RELAY_PORT}", dmz.ips[0]),
            });
            dmz_stun
        }
        RelaySetup::ManagedLoadBalancer { node } => {
            relay.provider = RelayProvider::Managed;
            relay.managed = ManagedRelay {
                service_type: ServiceType::LoadBalancer,
                port: RELAY_PORT,
                node_selector: pinned(node),
                ..ManagedRelay::default()
            };
            Vec::new()
        }
        RelaySetup::ManagedNodePort { node_port, .. } => {
            relay.provider = RelayProvider::Managed;
            relay.managed = ManagedRelay {
                service_type: ServiceType::NodePort,
                port: RELAY_PORT,
                node_port: Some(*node_port),
                // By label, which start_nodes puts on the relay's node and its spare.
                node_selector: BTreeMap::from([(RELAY_HOST_LABEL.to_string(), "true".to_string())]),
                ..ManagedRelay::default()
            };
            Vec::new()
        }
    };
    let spec = WireKubeMeshSpec {
        mesh_cidr: wirekube_crds::mesh::default_mesh_cidr(),
        listen_port: wirekube_crds::mesh::default_listen_port(),
        interface_name: wirekube_crds::mesh::default_interface_name(),
        mtu: wirekube_crds::mesh::default_mtu(),
        persistent_keepalive: wirekube_crds::mesh::default_keepalive(),
        node_selector: BTreeMap::new(),
        stun_servers,
        relay,
        routing: Default::default(),
        pod_network: Default::default(),
    };
    WireKubeMesh::new(MESH_NAME, spec)
}

pub(super) fn random_token() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
