//! Pods across sites, on the real control plane: in every seed topology a probe pod runs on
//! every node (the lab kubelet wires it with the CNI `bridge` + `host-local` plugins on the
//! node's podCIDR), and the mesh carries the pod CIDRs (`spec.routing.podCIDRs`, the default).
//! For every ordered pair of nodes, over direct and relayed pairs alike: pod → pod ping and a
//! verified TCP transfer, pod → the other node's mesh IP, node → the other node's pod; and a
//! ClusterIP Service whose one backend runs at another site answers from every node and every
//! pod (kube-proxy DNAT, then the mesh). Needs root.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::Value;
use wirekube_e2e::scenario::{Options, Scenario, Topology, topology};
use wirekube_lab::{Host, wait_for};

const NS: &str = "default";
/// Traffic may take a moment after a path change; this checks that it flows, not how fast.
const FLOWS: Duration = Duration::from_secs(30);
const TRANSFER: u64 = 1 << 20;

fn probe_daemonset() -> String {
    format!(
        r#"apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: probe, namespace: {NS}}}
spec:
  selector: {{matchLabels: {{app: probe}}}}
  template:
    metadata: {{labels: {{app: probe}}}}
    spec:
      containers:
        - {{name: main, image: "lab/sleep:1", args: ["infinity"]}}
"#
    )
}

/// One backend, pinned to `node`, behind a ClusterIP Service `echo` (port 80 → 8080).
fn echo_service(node: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo, namespace: {NS}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: echo}}}}
  template:
    metadata: {{labels: {{app: echo}}}}
    spec:
      nodeSelector: {{kubernetes.io/hostname: {node}}}
      containers:
        - name: main
          image: "lab/nc:1"
          args: ["-lk", "8080"]
          readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: {NS}}}
spec:
  selector: {{app: echo}}
  ports: [{{port: 80, targetPort: 8080}}]
"#
    )
}

fn apply(sc: &Scenario, name: &str, yaml: &str) {
    let file = sc.lab.dir().join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    sc.kubectl(&["apply", "-f", &file.to_string_lossy()])
        .unwrap_or_else(|e| panic!("apply {name}: {e}"));
}

fn json(sc: &Scenario, args: &[&str]) -> Option<Value> {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&sc.kubectl(&a).ok()?).ok()
}

/// Every node's Ready probe pod as a lab host (its network namespace, its IP).
fn probe_pods(sc: &Scenario) -> Option<BTreeMap<String, Host>> {
    let list = json(sc, &["-n", NS, "get", "pods", "-l", "app=probe"])?;
    let mut out = BTreeMap::new();
    for p in list["items"].as_array()? {
        let ready = p["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let ip: Ipv4Addr = p["status"]["podIP"].as_str()?.parse().ok()?;
        if !ready {
            continue;
        }
        let node = p["spec"]["nodeName"].as_str()?.to_owned();
        // The lab kubelet's containerID is `lab://<pid>`; the pod's namespace is made in the
        // node's private mount view, so reach it through the container process.
        let pid = p["status"]["containerStatuses"][0]["containerID"]
            .as_str()?
            .strip_prefix("lab://")?;
        let ns = format!("/proc/{pid}/ns/net");
        let site = sc.hosts.get(&node)?.site.clone();
        out.insert(node.clone(), Host::pod(&format!("pod@{node}"), &ns, ip, site));
    }
    (out.len() == sc.hosts.len()).then_some(out)
}

fn pod_traffic(topo: Topology) {
    assert!(wirekube_lab::is_root(), "needs root (network namespaces)");
    let backend_node = topo.sites[0].nodes[0].clone();
    let mut sc = Scenario::build(topo, Options::default()).expect("build");
    if let Err(e) = sc.converge() {
        panic!("{e}\n{}", sc.logs(40));
    }
    apply(&sc, "probe", &probe_daemonset());
    apply(&sc, "echo", &echo_service(&backend_node));
    let (pods, _) = wait_for(Duration::from_secs(90), "a Ready probe pod per node", || {
        probe_pods(&sc)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sc.logs(40)));
    let peers = sc.peers().unwrap();
    let mesh_ips = sc.mesh_ips(&peers);
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for (a, pa) in &pods {
        for (b, pb) in &pods {
            if a == b {
                continue;
            }
            let path = sc
                .topo
                .expectation(a, b)
                .map(|e| format!("{:?}", e.path))
                .unwrap_or_default();
            let pod_ip = pb.ip();
            let checks: [(&str, &Host, Ipv4Addr); 3] = [
                ("pod → pod", pa, pod_ip),
                ("pod → node mesh IP", pa, mesh_ips[b]),
                ("node → pod", &sc.hosts[a], pod_ip),
            ];
            for (what, from, ip) in checks {
                if let Err(e) = sc.lab.ping_until(from, ip, FLOWS) {
                    failures.push(format!("{a} → {b} ({path}): {what} {ip}: {e}"));
                }
            }
            match sc.lab.tcp_transfer(pa, pb, pod_ip, TRANSFER) {
                Ok(x) => report.push(format!(
                    "{a} → {b} ({path}): pod → pod {} bytes, {:.0} Mbit/s",
                    x.bytes,
                    x.bits_per_second() / 1e6
                )),
                Err(e) => failures.push(format!("{a} → {b} ({path}): pod → pod TCP: {e}")),
            }
        }
    }
    let svc: Ipv4Addr = wait_for(Duration::from_secs(30), "echo Service IP", || {
        json(&sc, &["-n", NS, "get", "svc", "echo"])?["spec"]["clusterIP"]
            .as_str()?
            .parse()
            .ok()
    })
    .unwrap()
    .0;
    let svc_s = svc.to_string();
    for (n, pod) in &pods {
        for (who, from) in [("node", &sc.hosts[n]), ("pod", pod)] {
            let ok = wirekube_lab::wait_until(FLOWS, "ClusterIP answers", || {
                sc.lab
                    .exec(from, &["nc", "-z", "-w", "3", &svc_s, "80"])
                    .is_ok_and(|o| o.status.success())
            });
            if ok.is_err() {
                failures.push(format!(
                    "{who} on {n}: Service echo ({svc}:80, backend on {backend_node}) does not answer"
                ));
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    let ctx = if failures.is_empty() {
        String::new()
    } else {
        format!(
            "{}\n{}",
            sc.kubectl(&["get", "pods,svc", "-A", "-o", "wide"])
                .unwrap_or_default(),
            sc.logs(30)
        )
    };
    sc.shutdown().expect("clean teardown");
    assert!(failures.is_empty(), "{}\n{ctx}", failures.join("\n"));
}

#[test]
fn pod_traffic_seed_1_all_private() {
    pod_traffic(topology::seed_1_all_private());
}

#[test]
fn pod_traffic_seed_2_mixed() {
    pod_traffic(topology::seed_2_mixed());
}

#[test]
fn pod_traffic_seed_3_multi_cloud() {
    pod_traffic(topology::seed_3_multi_cloud());
}

#[test]
fn pod_traffic_seed_4_home_lab_cloud() {
    pod_traffic(topology::seed_4_home_lab_cloud());
}

#[test]
fn pod_traffic_seed_5_outbound_tcp_only() {
    pod_traffic(topology::seed_5_outbound_tcp_only());
}
