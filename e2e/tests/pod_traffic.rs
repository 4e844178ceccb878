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
const TRANSFER: u64 = 4 << 20;

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
        out.insert(
            node.clone(),
            Host::pod(&format!("pod@{node}"), &ns, ip, site),
        );
    }
    (out.len() == sc.hosts.len()).then_some(out)
}

/// `ip route get ip` on `node` leaves through the WireGuard interface.
fn via_mesh(sc: &Scenario, node: &str, ip: Ipv4Addr) -> bool {
    let ip = ip.to_string();
    sc.lab
        .run(&sc.hosts[node], &["ip", "route", "get", &ip])
        .is_ok_and(|r| r.contains("dev wirekube0"))
}

fn pod_traffic(topo: Topology) {
    pod_traffic_with(topo, Options::default(), |_, _, _| {});
}

/// The whole check; `more` adds checks of its own (scenario, pods, failures) before teardown.
fn pod_traffic_with(
    topo: Topology,
    opts: Options,
    more: impl FnOnce(&Scenario, &BTreeMap<String, Host>, &mut Vec<String>),
) {
    assert!(wirekube_lab::is_root(), "needs root (network namespaces)");
    let backend_node = topo.sites[0].nodes[0].clone();
    let mut sc = Scenario::build(topo, opts).expect("build");
    if let Err(e) = sc.converge() {
        panic!("{e}\n{}", sc.logs(40));
    }
    apply(&sc, "probe", &probe_daemonset());
    apply(&sc, "echo", &echo_service(&backend_node));
    let (pods, _) = wait_for(
        Duration::from_secs(90),
        "a Ready probe pod per node",
        || probe_pods(&sc),
    )
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
            // The other node's pods are reached through the mesh, not the underlay.
            if !via_mesh(&sc, a, pod_ip) {
                failures.push(format!("{a} → {b}: {pod_ip} is not routed into the mesh"));
            }
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
            // The same transfer between the nodes' mesh IPs, right after, for the benchmark
            // figures in docs/benchmarks.md (run with --nocapture).
            let (ha, hb) = (&sc.hosts[a], &sc.hosts[b]);
            match (
                sc.lab.tcp_transfer(pa, pb, pod_ip, TRANSFER),
                sc.lab.tcp_transfer(ha, hb, mesh_ips[b], TRANSFER),
            ) {
                (Ok(x), Ok(y)) => report.push(format!(
                    "| {} | {a} → {b} | {path} | {:.0} | {:.0} |",
                    sc.topo.id,
                    x.bits_per_second() / 1e6,
                    y.bits_per_second() / 1e6
                )),
                (Err(e), _) => failures.push(format!("{a} → {b} ({path}): pod → pod TCP: {e}")),
                (_, Err(e)) => failures.push(format!("{a} → {b} ({path}): node → node TCP: {e}")),
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
    // Forwarded TCP through the mesh gets its MSS clamped to the tunnel on every node.
    for (n, h) in &sc.hosts {
        let rules = sc
            .lab
            .run(h, &["nft", "list", "table", "inet", "wirekube_mss"])
            .unwrap_or_default();
        if !rules.contains("oifname \"wirekube0\"") || !rules.contains("maxseg size set rt mtu") {
            failures.push(format!("{n}: no MSS clamp on wirekube0: {rules}"));
        }
    }
    more(&sc, &pods, &mut failures);
    eprintln!(
        "| topology | pair | path | pod → pod Mbit/s | node → node (mesh IP) Mbit/s |\n|---|---|---|---|---|\n{}",
        report.join("\n")
    );
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

/// Two sites reuse one private range (a-1 and b-1 are both 10.1.0.11); a third site has two
/// nodes. With `routing.nodeInternalIPs` the colliding InternalIPs are carried for neither
/// and named in the mesh's `RoutesCarried` condition; c-1's InternalIP crosses the mesh to
/// the other sites; c-1 and c-2, on one LAN, keep reaching each other's InternalIP directly.
fn colliding_sites() -> Topology {
    use wirekube_crds::PathReason::{BothSymmetric, SameSite};
    use wirekube_e2e::scenario::RelaySetup;
    use wirekube_lab::NatKind::Symmetric;
    let mut t = Topology::new("internal", "Two sites reuse 10.1.0.0/24")
        .site("site-a", Symmetric, "10.1.0.0/24", &["a-1"])
        .site("site-b", Symmetric, "10.1.0.0/24", &["b-1"])
        .site("site-c", Symmetric, "10.3.0.0/24", &["c-1", "c-2"])
        .relay(RelaySetup::External)
        .direct("c-1", "c-2", SameSite, "one LAN");
    for (a, b) in [
        ("a-1", "b-1"),
        ("a-1", "c-1"),
        ("a-1", "c-2"),
        ("b-1", "c-1"),
        ("b-1", "c-2"),
    ] {
        t = t.relayed(a, b, BothSymmetric, "both behind symmetric NAT");
    }
    t
}

#[test]
fn pod_traffic_internal_ips_with_a_colliding_address_plan() {
    assert!(wirekube_lab::is_root(), "needs root (network namespaces)");
    let mut sc = Scenario::build(colliding_sites(), Options::default()).expect("build");
    if let Err(e) = sc.converge() {
        panic!("{e}\n{}", sc.logs(40));
    }
    let (a1, b1, c1, c2) = ["a-1", "b-1", "c-1", "c-2"]
        .map(|n| sc.hosts[n].ip())
        .into();
    assert_eq!(a1, b1, "the lab must give both sites the same address");
    sc.kubectl(&[
        "patch",
        "wkmesh",
        "default",
        "--type=merge",
        "-p",
        r#"{"spec":{"routing":{"nodeInternalIPs":true}}}"#,
    ])
    .unwrap();
    let (cond, _) = wait_for(Duration::from_secs(30), "RoutesCarried=False", || {
        let m = sc.cluster().mesh("default").ok()??;
        m.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "RoutesCarried" && c.status == "False")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sc.logs(40)));
    for want in [
        format!("InternalIP {a1}/32 of node a-1 is not carried: it overlaps {a1}/32 of node b-1"),
        format!("InternalIP {b1}/32 of node b-1 is not carried: it overlaps {a1}/32 of node a-1"),
    ] {
        assert!(cond.message.contains(&want), "{}", cond.message);
    }
    // c-1's InternalIP crosses the mesh from both other sites (nothing else reaches it: it is
    // behind a NAT).
    for n in ["a-1", "b-1"] {
        wirekube_lab::wait_until(FLOWS, "c-1's InternalIP routed into the mesh", || {
            via_mesh(&sc, n, c1)
        })
        .unwrap_or_else(|e| panic!("{n}: {e}\n{}", sc.logs(30)));
        sc.lab
            .ping_until(&sc.hosts[n], c1, FLOWS)
            .unwrap_or_else(|e| panic!("{n} → c-1 InternalIP: {e}"));
    }
    // Nothing misrouted: the colliding address is in no node's mesh table, and one LAN's
    // nodes reach each other directly.
    for n in ["a-1", "b-1", "c-1", "c-2"] {
        let table = sc
            .lab
            .run(&sc.hosts[n], &["ip", "route", "show", "table", "all"])
            .unwrap();
        let leaked = table
            .lines()
            .any(|l| l.contains("wirekube0") && l.starts_with(&format!("{a1} ")));
        assert!(!leaked, "{n} routes {a1} into the mesh:\n{table}");
    }
    assert!(!via_mesh(&sc, "c-1", c2), "c-1 → c-2 must stay on the LAN");
    sc.lab.ping_until(&sc.hosts["c-1"], c2, FLOWS).unwrap();
    sc.shutdown().expect("clean teardown");
}

/// The address `to` (a pod) sees a TCP connection from `from` (a pod) come from.
fn source_seen(sc: &Scenario, from: &Host, to: &Host) -> Result<Ipv4Addr, String> {
    use std::net::{SocketAddr, TcpListener, TcpStream};
    let listener = sc
        .lab
        .in_host(to, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let server = std::thread::spawn(move || listener.accept().map(|(_, peer)| peer));
    let target = SocketAddr::from((to.ip(), port));
    let _conn = sc
        .lab
        .in_host(from, move || {
            TcpStream::connect_timeout(&target, Duration::from_secs(10))
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("connect {target}: {e}"))?;
    match server.join() {
        Ok(Ok(SocketAddr::V4(peer))) => Ok(*peer.ip()),
        Ok(Ok(other)) => Err(format!("unexpected peer {other}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("accept thread panicked".into()),
    }
}

/// WireKube as the pod network (seed 1: all private, relayed and direct pairs): the kubelets
/// have no CNI of their own and take the configuration each agent writes; every pod pair,
/// node and Service check passes, a pod at another node sees the client pod's own address
/// (no masquerade inside the cluster), and a pod reaches the internet (masqueraded).
#[test]
fn pod_traffic_in_pod_network_mode_seed_1_all_private() {
    let opts = Options {
        pod_network: true,
        ..Options::default()
    };
    pod_traffic_with(
        topology::seed_1_all_private(),
        opts,
        |sc, pods, failures| {
            for (node, host) in &sc.hosts {
                let conf = sc.lab.host_dir(node).join("cni-net.d/10-wirekube.conflist");
                if !conf.is_file() {
                    failures.push(format!("{node}: {} not written", conf.display()));
                }
                if sc.lab.run(host, &["ip", "link", "show", "wkpod0"]).is_err() {
                    failures.push(format!("{node}: pods are not on the wkpod0 bridge"));
                }
                let ready = sc.peers().ok().and_then(|p| {
                    p.get(node)?
                        .status
                        .as_ref()?
                        .conditions
                        .iter()
                        .find(|c| c.type_ == "PodNetworkReady")
                        .map(|c| (c.status.clone(), c.message.clone()))
                });
                if ready.as_ref().is_none_or(|(s, _)| s != "True") {
                    failures.push(format!("{node}: PodNetworkReady is {ready:?}"));
                }
            }
            for (a, pa) in pods {
                for (b, pb) in pods {
                    if a == b {
                        continue;
                    }
                    match source_seen(sc, pa, pb) {
                        Ok(ip) if ip == pa.ip() => {}
                        Ok(ip) => failures.push(format!(
                            "{a} → {b}: the pod at {b} sees {ip}, not the client pod's {}",
                            pa.ip()
                        )),
                        Err(e) => failures.push(format!("{a} → {b}: {e}")),
                    }
                }
                if let Err(e) = sc.lab.ping_until(pa, sc.dmz.ip(), FLOWS) {
                    failures.push(format!("pod on {a} → internet host {}: {e}", sc.dmz.ip()));
                }
            }
        },
    );
}
