//! The scenario harness's control plane: the real control plane in the DMZ, WireKube installed
//! with `kubectl apply -k`, the nodes' kubelets (operator and agents as pods), the mesh applied.
//! The operator must give every node a WireKubePeer with a mesh IP and publish the relay
//! endpoint, and kubectl must see it all.

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
        let m = sc.cluster().mesh("default").ok()??;
        let eps = m.status.as_ref()?.relay_endpoints.clone();
        eps.contains(&relay).then_some(eps)
    });
    assert!(mesh.is_ok(), "{}", sc.logs(40));
    let out = sc.kubectl(&["get", "wkmesh,wkpeer"]).expect("kubectl");
    assert!(out.contains("node-1") && out.contains("default"), "{out}");
    sc.shutdown().expect("clean teardown");
}

/// `provider: managed`: the operator's relay Deployment is scheduled onto the public node it is
/// pinned to, run by that node's lab kubelet, and its endpoint (the lab cloud's LoadBalancer
/// address, or the node's address and nodePort) is published and reachable.
fn managed_relay_runs_where_the_service_exposes_it(topo: wirekube_e2e::scenario::Topology) {
    use wirekube_e2e::scenario::RelaySetup;
    assert!(wirekube_lab::is_root(), "needs root (network namespaces)");
    let setup = topo.relay.clone();
    let mut sc = Scenario::build(topo, Options::default()).expect("build");
    let (host, endpoint) = match &setup {
        RelaySetup::ManagedLoadBalancer { node } => (
            sc.hosts[node].clone(),
            format!("{}:3478", wirekube_e2e::scenario::run::LB_ADDRESS),
        ),
        RelaySetup::ManagedNodePort {
            node, node_port, ..
        } => {
            let h = sc.hosts[node].clone();
            (h.clone(), format!("{}:{node_port}", h.ip()))
        }
        other => panic!("not a managed relay: {other:?}"),
    };
    let published = wait_for(Duration::from_secs(30), "relay endpoint published", || {
        let m = sc.cluster().mesh("default").ok()??;
        let eps = m.status.as_ref()?.relay_endpoints.clone();
        eps.contains(&endpoint).then_some(eps)
    });
    // The relay pod runs in its own pod network namespace: reach it as an agent would, from
    // outside, through the published endpoint (kube-proxy on the relay's node forwards it).
    let (ip, port_s) = endpoint.rsplit_once(':').expect("host:port");
    let listening = wirekube_lab::wait_until(Duration::from_secs(60), "relay reachable", || {
        sc.lab
            .exec(&sc.dmz, &["nc", "-z", "-w", "2", ip, port_s])
            .is_ok_and(|o| o.status.success())
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
        "relay not reachable at {endpoint} (pinned to {})\n{}",
        host.name,
        ctx()
    );
    sc.shutdown().expect("clean teardown");
}

#[test]
fn managed_relay_load_balancer_runs_on_its_pinned_node() {
    managed_relay_runs_where_the_service_exposes_it(topology::seed_2_mixed());
}

#[test]
fn managed_relay_node_port_runs_on_the_public_node() {
    managed_relay_runs_where_the_service_exposes_it(topology::seed_4_home_lab_cloud());
}
