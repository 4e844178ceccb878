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
