//! The control plane starts in a lab host and behaves like a cluster's: TLS with the lab CA,
//! RBAC, the Node authorizer and NodeRestriction, node IPAM. Needs root and the binaries from
//! `scripts/build-k8s.sh`.

mod common;

use std::time::Duration;

use serde_json::Value;
use wirekube_kubelab::controlplane::{ControlPlane, ControlPlaneConfig};
use wirekube_lab::{Lab, wait_for};

fn kubectl(
    lab: &Lab,
    host: &wirekube_lab::Host,
    kc: &std::path::Path,
    args: &[&str],
) -> (bool, String) {
    let kc = kc.to_string_lossy();
    let mut argv = vec!["kubectl", "--kubeconfig", &kc];
    argv.extend_from_slice(args);
    let out = lab.exec(host, &argv).expect("run kubectl");
    let text = if out.status.success() {
        out.stdout
    } else {
        out.stderr
    };
    (
        out.status.success(),
        String::from_utf8_lossy(&text).into_owned(),
    )
}

#[test]
fn control_plane_authorizes_nodes_and_allocates_pod_cidrs() {
    let lab = Lab::new_unique("kcp").expect("lab (needs root)");
    let dmz = lab.add_dmz("dmz", &[]).unwrap();
    let cp = ControlPlane::start(&lab, &dmz, ControlPlaneConfig::new().unwrap())
        .unwrap_or_else(|e| panic!("control plane: {e}\n{}", lab.logs_tail(20)));
    let admin = cp.admin_kubeconfig();

    // A kubelet identity may register its own Node, and NodeRestriction refuses another's.
    let kc = cp.node_kubeconfig("a").unwrap();
    let node = |name: &str| {
        let f = lab.dir().join(format!("node-{name}.json"));
        std::fs::write(
            &f,
            format!(r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}"}}}}"#),
        )
        .unwrap();
        f
    };
    let own = node("a");
    let (ok, out) = kubectl(&lab, &dmz, &kc, &["create", "-f", &own.to_string_lossy()]);
    assert!(ok, "node a registers itself: {out}");
    let other = node("b");
    let (ok, out) = kubectl(&lab, &dmz, &kc, &["create", "-f", &other.to_string_lossy()]);
    assert!(!ok, "node a must not create node b");
    assert!(
        out.contains("forbidden") || out.contains("Forbidden"),
        "{out}"
    );

    // Node IPAM gives the node a podCIDR from the cluster CIDR.
    let (cidr, _) = wait_for(Duration::from_secs(30), "podCIDR of node a", || {
        let (ok, out) = kubectl(&lab, &dmz, &admin, &["get", "node", "a", "-o", "json"]);
        let v: Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
        v["spec"]["podCIDR"].as_str().map(String::from)
    })
    .unwrap();
    let cidr: ipnet::Ipv4Net = cidr.parse().unwrap();
    assert!(cp.cfg.cluster_cidr.contains(&cidr), "{cidr}");
    assert_eq!(cidr.prefix_len(), 24);

    // The kubernetes Service has the first address of the service range.
    let (ok, out) = kubectl(
        &lab,
        &dmz,
        &admin,
        &[
            "get",
            "svc",
            "kubernetes",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(out, cp.kubernetes_service_ip().to_string());
    assert!(cp.dead(&lab).is_empty(), "{:?}", cp.dead(&lab));
    lab.shutdown().unwrap();
}

#[test]
fn kube_proxy_takes_a_node_to_the_api_server_through_the_kubernetes_service() {
    use wirekube_lab::wait_until;
    let (lab, node, dmz, cp) = common::lab_with_node("kpx", "s", "a");
    // kube-proxy reads its node's addresses from the Node object (the kubelet registers it).
    let f = lab.dir().join("node-a.json");
    std::fs::write(
        &f,
        r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"a"}}"#,
    )
    .unwrap();
    let (ok, out) = kubectl(
        &lab,
        &dmz,
        &cp.admin_kubeconfig(),
        &["create", "-f", &f.to_string_lossy()],
    );
    assert!(ok, "{out}");
    let addr = format!(
        r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"{}"}}]}}}}"#,
        node.ip()
    );
    let (ok, out) = kubectl(
        &lab,
        &dmz,
        &cp.admin_kubeconfig(),
        &[
            "patch",
            "node",
            "a",
            "--subresource=status",
            "--type=merge",
            "-p",
            &addr,
        ],
    );
    assert!(ok, "{out}");
    let proxy = cp.start_kube_proxy(&lab, &node, "a").unwrap();
    // From the node (behind its NAT), the kubernetes Service's ClusterIP reaches the API server.
    let server = format!("https://{}:443", cp.kubernetes_service_ip());
    let admin = cp.admin_kubeconfig();
    let admin = admin.to_string_lossy();
    let argv = [
        "kubectl",
        "--kubeconfig",
        &admin,
        "--server",
        &server,
        "--request-timeout=3s",
        "get",
        "--raw",
        "/readyz",
    ];
    let res = wait_until(
        Duration::from_secs(20),
        "readyz through the ClusterIP",
        || {
            // A SYN sent before the rules exist is retransmitted for seconds: bound each try.
            lab.exec_timeout(&node, &argv, Duration::from_secs(3))
                .is_ok_and(|o| o.status.success())
        },
    );
    assert!(res.is_ok(), "{res:?}\nkube-proxy log:\n{}", lab.log(&proxy));
    assert!(lab.is_running(&proxy), "{}", lab.log(&proxy));
    lab.shutdown().unwrap();
}
