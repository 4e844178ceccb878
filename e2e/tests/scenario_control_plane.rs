//! The scenario harness's control plane without agents: the API server in the DMZ, the external
//! relay, the operator; nodes registered; the mesh applied. The operator must give every node a
//! WireKubePeer with a mesh IP and publish the relay endpoint, and kubectl must see it all.

use std::time::Duration;

use wirekube_e2e::scenario::{Options, Scenario, topology};
use wirekube_lab::wait_for;

#[test]
fn operator_plans_every_node_of_a_lab_topology() {
    assert!(wirekube_lab::is_root(), "needs root (network namespaces)");
    let topo = topology::seed_1_all_private();
    let mut sc = Scenario::build(topo, Options::default()).expect("build");
    let res = wait_for(
        Duration::from_secs(20),
        "a peer with a mesh IP per node",
        || {
            let peers = sc.peers().ok()?;
            let ips = sc.mesh_ips(&peers);
            (ips.len() == 3).then_some(ips)
        },
    );
    let ips = match res {
        Ok((ips, _)) => ips,
        Err(e) => panic!("{e}\n{}", sc.logs(40)),
    };
    let mut seen: Vec<_> = ips.values().collect();
    seen.dedup();
    assert_eq!(seen.len(), 3, "mesh IPs must be distinct: {ips:?}");
    let relay = format!("{}:3478", sc.dmz.ips[0]);
    let mesh = wait_for(Duration::from_secs(10), "relay endpoint published", || {
        let m = sc.cluster.mesh("default").ok()??;
        let eps = m.status.as_ref()?.relay_endpoints.clone();
        eps.contains(&relay).then_some(eps)
    });
    assert!(mesh.is_ok(), "{}", sc.logs(40));
    let out = sc.kubectl(&["get", "wkmesh,wkpeer"]).expect("kubectl");
    assert!(out.contains("node-1") && out.contains("default"), "{out}");
    sc.shutdown().expect("clean teardown");
}

/// `provider: managed`: the operator's Deployment is run by the API server's kubelet (in the DMZ
/// for a LoadBalancer, on the public node for a NodePort) and its endpoint is published.
fn managed_relay_runs_where_the_service_exposes_it(topo: wirekube_e2e::scenario::Topology) {
    use wirekube_e2e::scenario::RelaySetup;
    assert!(wirekube_lab::is_root(), "needs root (network namespaces)");
    let setup = topo.relay.clone();
    let mut sc = Scenario::build(topo, Options::default()).expect("build");
    let (host, endpoint, port) = match &setup {
        RelaySetup::ManagedLoadBalancer => {
            (sc.dmz.clone(), format!("{}:3478", sc.dmz.ips[1]), 3478)
        }
        RelaySetup::ManagedNodePort { node, node_port } => {
            let h = sc.hosts[node].clone();
            (h.clone(), format!("{}:{node_port}", h.ip()), *node_port)
        }
        other => panic!("not a managed relay: {other:?}"),
    };
    let published = wait_for(Duration::from_secs(30), "relay endpoint published", || {
        let m = sc.cluster.mesh("default").ok()??;
        let eps = m.status.as_ref()?.relay_endpoints.clone();
        eps.contains(&endpoint).then_some(eps)
    });
    let listening =
        wirekube_lab::wait_until(Duration::from_secs(30), "relay pod listening", || {
            sc.lab.tcp_listening(&host, port)
        });
    let ctx = || {
        format!(
            "{}\n{}",
            sc.kubectl(&["get", "wkmesh,deploy,svc,pods", "-A", "-o", "wide"])
                .unwrap_or_else(|e| e.to_string()),
            sc.logs(40)
        )
    };
    assert!(published.is_ok(), "{endpoint} not published\n{}", ctx());
    assert!(
        listening.is_ok(),
        "relay not listening in {}\n{}",
        host.name,
        ctx()
    );
    sc.shutdown().expect("clean teardown");
}

#[test]
fn managed_relay_load_balancer_runs_in_the_dmz() {
    managed_relay_runs_where_the_service_exposes_it(topology::seed_2_mixed());
}

#[test]
fn managed_relay_node_port_runs_on_the_public_node() {
    managed_relay_runs_where_the_service_exposes_it(topology::seed_4_home_lab_cloud());
}
