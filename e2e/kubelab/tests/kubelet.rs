//! The lab kubelet against the real control plane: it registers a Ready node that gets a
//! podCIDR, runs a hostNetwork pod and a pod-network pod (CNI bridge) from Deployments, mounts
//! a bound service account token that authenticates with the node recorded in it, restarts a
//! killed container, tears a deleted pod down completely, and removes everything when it is
//! stopped. Needs root, the binaries from `scripts/build-k8s.sh`, kubectl and the CNI plugins.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use wirekube_kubelab::controlplane::ControlPlane;
use wirekube_kubelab::kubelet::netns_name;
use wirekube_lab::{Host, Lab, wait_for, wait_until};

const NS: &str = "klt";

struct Cluster {
    lab: Lab,
    cp: ControlPlane,
    node: Host,
}

impl Cluster {
    /// `kubectl` as cluster admin, run in the node (which reaches the API server through its NAT).
    fn kubectl(&self, args: &[&str]) -> (bool, String) {
        self.kubectl_with(&self.cp.admin_kubeconfig(), args)
    }

    fn kubectl_with(&self, kc: &Path, args: &[&str]) -> (bool, String) {
        let kc = kc.to_string_lossy();
        let mut argv = vec!["kubectl", "--kubeconfig", &kc, "--request-timeout=10s"];
        argv.extend_from_slice(args);
        let out = self.lab.exec(&self.node, &argv).expect("run kubectl");
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

    fn json(&self, args: &[&str]) -> Option<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let (ok, out) = self.kubectl(&a);
        serde_json::from_str(&out).ok().filter(|_| ok)
    }

    fn apply(&self, name: &str, yaml: &str) {
        let f = self.lab.dir().join(format!("{name}.yaml"));
        std::fs::write(&f, yaml).unwrap();
        let (ok, out) = self.kubectl(&["apply", "-f", &f.to_string_lossy()]);
        assert!(ok, "apply {name}: {out}");
    }

    /// The one pod with label `app=<app>` that is Running and Ready (and not being deleted).
    fn ready_pod(&self, app: &str) -> Option<Value> {
        let list = self.json(&["-n", NS, "get", "pods", "-l", &format!("app={app}")])?;
        list["items"]
            .as_array()?
            .iter()
            .find(|p| {
                p["metadata"]["deletionTimestamp"].is_null()
                    && p["status"]["phase"] == "Running"
                    && p["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
            })
            .cloned()
    }

    fn wait_ready_pod(&self, app: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(Duration::from_secs(120), what, || {
            self.ready_pod(app).filter(|p| pred(p))
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}\npods: {}\n{}",
                self.kubectl(&["-n", NS, "get", "pods", "-o", "yaml"]).1,
                self.lab.logs_tail(40)
            )
        })
        .0
    }
}

fn pid_of(pod: &Value) -> u32 {
    let id = pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap();
    id.strip_prefix("lab://").unwrap().parse().unwrap()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn deployment(app: &str, host_network: bool, image: &str, args: &[&str], extra: &str) -> String {
    let args = serde_json::to_string(args).unwrap();
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {app}, namespace: {NS}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {app}}}}}
  template:
    metadata: {{labels: {{app: {app}}}}}
    spec:
      serviceAccountName: tester
      hostNetwork: {host_network}
      terminationGracePeriodSeconds: 2
      containers:
        - name: main
          image: {image}
          args: {args}
          env:
            - {{name: NODE, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}
{extra}"#
    )
}

/// The JWT claims of a token.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn start() -> (Cluster, wirekube_lab::Proc, PathBuf) {
    let (lab, node, _dmz, cp) = common::lab_with_node("klt", "s1", "n1");
    let kc = cp.node_kubeconfig("n1").unwrap();
    let root = lab.host_dir("n1").join("kubelet");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wirekube-lab-kubelet"));
    cmd.args(["--kubeconfig", &kc.to_string_lossy(), "--node-name", "n1"])
        .args([
            "--node-ip",
            &node.ip().to_string(),
            "--label",
            "wirekube.io/site=s1",
        ])
        .args([
            "--image",
            "lab/sleep:*=/bin/sleep",
            "--image",
            "lab/nc:*=/bin/nc",
        ])
        .args([
            "--root-dir",
            &root.to_string_lossy(),
            "--netns-prefix",
            lab.prefix(),
        ])
        .args(["--heartbeat", "2"])
        .env("RUST_LOG", "info");
    let kubelet = lab.spawn(&node, cmd).unwrap();
    (Cluster { lab, cp, node }, kubelet, root)
}

#[test]
fn lab_kubelet_runs_pods_like_a_kubelet() {
    let (c, kubelet, root) = start();

    // The node registers, is Ready, carries the labels and gets a podCIDR from node IPAM.
    let (node, _) = wait_for(
        Duration::from_secs(60),
        "node n1 Ready with a podCIDR",
        || {
            let n = c.json(&["get", "node", "n1"])?;
            let ready = n["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|x| x["type"] == "Ready" && x["status"] == "True");
            (ready && n["spec"]["podCIDR"].is_string()).then_some(n)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.lab.logs_tail(40)));
    let cidr: ipnet::Ipv4Net = node["spec"]["podCIDR"].as_str().unwrap().parse().unwrap();
    assert_eq!(node["metadata"]["labels"]["wirekube.io/site"], "s1");
    assert_eq!(node["status"]["nodeInfo"]["kubeletVersion"], "v1.34.4");
    assert_eq!(node["status"]["allocatable"]["pods"], "110");
    let (ok, out) = c.kubectl(&[
        "-n",
        "kube-node-lease",
        "get",
        "lease",
        "n1",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert!(ok && out == "n1", "node lease: {out}");

    // A namespace, a service account, a hostNetwork pod and a pod-network pod.
    c.apply("ns", &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: tester, namespace: {NS}}}\n"));
    c.apply(
        "host",
        &deployment("host", true, "lab/sleep:1", &["3600"], ""),
    );
    let probe = "          readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}\n          livenessProbe: {tcpSocket: {port: 8080}, periodSeconds: 2}\n";
    c.apply(
        "web",
        &deployment("web", false, "lab/nc:1", &["-lk", "8080"], probe),
    );

    // An image with no local binary: the container waits with a pull error, naming the image;
    // the other pods are not affected.
    c.apply(
        "bad",
        &deployment("bad", false, "example.com/unmapped:1", &[], ""),
    );
    let host = c.wait_ready_pod("host", "hostNetwork pod Ready", |_| true);
    assert_eq!(host["status"]["podIP"], c.node.ip().to_string());
    let web = c.wait_ready_pod("web", "pod-network pod Ready", |_| true);
    let ip: std::net::Ipv4Addr = web["status"]["podIP"].as_str().unwrap().parse().unwrap();
    assert!(cidr.contains(&ip), "pod IP {ip} outside the podCIDR {cidr}");
    wait_until(Duration::from_secs(60), "unmapped image reported", || {
        let Some(l) = c.json(&["-n", NS, "get", "pods", "-l", "app=bad"]) else {
            return false;
        };
        let w = &l["items"][0]["status"]["containerStatuses"][0]["state"]["waiting"];
        let reason = w["reason"].as_str().unwrap_or_default();
        matches!(reason, "ErrImagePull" | "ImagePullBackOff")
            && w["message"]
                .as_str()
                .is_some_and(|m| m.contains("example.com/unmapped:1"))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            c.kubectl(&["-n", NS, "get", "pods", "-l", "app=bad", "-o", "yaml"])
                .1
        )
    });
    let uid = web["metadata"]["uid"].as_str().unwrap().to_owned();
    let netns = PathBuf::from("/run/netns").join(netns_name(c.lab.prefix(), &uid));
    assert!(netns.exists(), "{} missing", netns.display());
    let pid = pid_of(&web);
    assert!(alive(pid));
    let log = root.join(format!(
        "pods/{NS}_{}/main.log",
        web["metadata"]["name"].as_str().unwrap()
    ));
    assert!(log.exists(), "{} missing", log.display());

    // The projected token, seen in the container's own mount view, is bound to the pod and the
    // node, and authenticates as the service account with the node-name extra.
    // (`/var/run` is a symlink to `/run`, and an absolute symlink under /proc/<pid>/root would
    // resolve in the test's own view: go through `/run` directly.)
    let sa_dir = format!("/proc/{pid}/root/run/secrets/kubernetes.io/serviceaccount");
    let token_path = format!("{sa_dir}/token");
    let token = std::fs::read_to_string(&token_path).unwrap();
    let ns_file = std::fs::read_to_string(format!("{sa_dir}/namespace")).unwrap();
    assert_eq!(ns_file, NS);
    let k = &claims(&token)["kubernetes.io"];
    assert_eq!(k["pod"]["uid"], uid.as_str());
    assert_eq!(k["node"]["name"], "n1");
    let ca = c.lab.dir().join("ca.crt");
    std::fs::write(&ca, &c.cp.pki.ca.cert_pem).unwrap();
    let empty = c.lab.dir().join("empty.kubeconfig");
    std::fs::write(&empty, "apiVersion: v1\nkind: Config\n").unwrap();
    let (ok, out) = c.kubectl_with(
        &empty,
        &[
            "--server",
            &c.cp.url,
            "--certificate-authority",
            &ca.to_string_lossy(),
            "--token",
            token.trim(),
            "auth",
            "whoami",
            "-o",
            "json",
        ],
    );
    assert!(ok, "whoami with the pod token: {out}");
    let who: Value = serde_json::from_str(&out).unwrap();
    let user = &who["status"]["userInfo"];
    assert_eq!(
        user["username"],
        format!("system:serviceaccount:{NS}:tester")
    );
    assert_eq!(
        user["extra"]["authentication.kubernetes.io/node-name"][0],
        "n1"
    );

    // A killed container is restarted and becomes Ready again.
    // A pid the test read from the pod status.
    wirekube_lab::signal(i32::try_from(pid).unwrap(), libc::SIGKILL);
    let web = c.wait_ready_pod("web", "restarted container Ready", |p| {
        p["status"]["containerStatuses"][0]["restartCount"] == 1
    });
    let pid2 = pid_of(&web);
    assert_ne!(pid2, pid);
    assert_eq!(web["metadata"]["uid"], uid.as_str());

    // Deleting the Deployment deletes the pod: its process, namespace and object go away.
    let (ok, out) = c.kubectl(&["-n", NS, "delete", "deployment", "web", "--wait=false"]);
    assert!(ok, "{out}");
    wait_until(Duration::from_secs(60), "web pod gone from the API", || {
        c.json(&["-n", NS, "get", "pods", "-l", "app=web"])
            .is_some_and(|l| l["items"].as_array().is_some_and(Vec::is_empty))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.lab.logs_tail(40)));
    assert!(!alive(pid2), "container process {pid2} still running");
    assert!(!netns.exists(), "{} left behind", netns.display());

    // Stopping the kubelet stops the remaining pods and leaves no pod namespace.
    let host_pid = pid_of(&host);
    assert!(alive(host_pid));
    c.lab.stop(&kubelet).unwrap();
    assert!(
        !alive(host_pid),
        "hostNetwork container survived the kubelet's shutdown"
    );
    let log = c.lab.log(&kubelet);
    assert!(
        log.contains("kubelet stopped"),
        "kubelet did not shut down cleanly:\n{log}"
    );

    // Without its kubelet's heartbeats the real node lifecycle controller marks the node
    // NotReady (Ready=Unknown) and taints it unreachable once the grace period (default
    // 50 s) has passed; a lab test stops a kubelet exactly to get that.
    wait_until(
        Duration::from_secs(150),
        "node n1 NotReady and tainted",
        || {
            let Some(n) = c.json(&["get", "node", "n1"]) else {
                return false;
            };
            let unknown = n["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|x| x["type"] == "Ready" && x["status"] == "Unknown")
            });
            let tainted = n["spec"]["taints"].as_array().is_some_and(|ts| {
                ts.iter()
                    .any(|t| t["key"] == "node.kubernetes.io/unreachable")
            });
            unknown && tainted
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.kubectl(&["get", "node", "n1", "-o", "yaml"]).1));
    assert!(c.cp.dead(&c.lab).is_empty(), "{:?}", c.cp.dead(&c.lab));
    c.lab.shutdown().unwrap();
}
