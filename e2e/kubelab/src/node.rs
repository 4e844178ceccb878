//! A lab node's Kubernetes processes, started in the node's lab host: the lab kubelet
//! ([`crate::kubelet`], binary `wirekube-lab-kubelet`) and the real kube-proxy (nftables mode),
//! so ClusterIP, NodePort and LoadBalancer Services work on the node as on a cluster's.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use wirekube_lab::{Host, Lab, Proc};

use crate::controlplane::{ControlPlane, ControlPlaneError};

/// What the kubelet of one node is told.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub internal_ip: Ipv4Addr,
    pub external_ip: Option<Ipv4Addr>,
    pub labels: Vec<(String, String)>,
    /// The pod network comes from the CNI configuration the node's `/etc/cni/net.d` holds
    /// (written there by WireKube in pod-network mode), as with a real runtime; `false`: the
    /// lab kubelet's built-in bridge (the "cluster has a CNI" case).
    pub cni_from_conf_dir: bool,
    /// NAME=VALUE added to every container's environment on this node (test-only knobs such
    /// as the agent's `WIREKUBE_TEST_CLOCK_OFFSET_SECS`).
    pub container_env: Vec<(String, String)>,
}

/// The processes of one node.
pub struct LabNode {
    pub spec: NodeSpec,
    pub host: Host,
    pub kubelet: Proc,
    pub kube_proxy: Proc,
}

/// Image reference pattern → local binary, given to every kubelet.
pub type ImageMap = Vec<(String, PathBuf)>;

impl ControlPlane {
    /// Starts the lab kubelet and kube-proxy of `spec` in `host`.
    pub fn start_node(
        &self,
        lab: &Lab,
        host: &Host,
        spec: NodeSpec,
        kubelet_bin: &Path,
        images: &ImageMap,
    ) -> Result<LabNode, ControlPlaneError> {
        // What a node's OS is set up with before Kubernetes runs on it (kubeadm checks both):
        // forwarding, and bridged pod traffic through netfilter, without which a pod reaching
        // a Service whose backend sits on the same bridge gets its reply from the wrong address.
        for key in ["net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables"] {
            wirekube_lab::netns::sysctl(&host.ns, key, "1")?;
        }
        let kubelet = self.start_kubelet(lab, host, &spec, kubelet_bin, images)?;
        // kube-proxy takes its node's addresses from the Node object; started before the
        // kubelet registered it, it guesses and waits about 30 s before programming rules.
        let admin = self.admin_kubeconfig();
        let jsonpath = "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}";
        let registered = |lab: &Lab, h: &Host| {
            let kc = admin.to_string_lossy();
            let argv = [
                "kubectl",
                "--kubeconfig",
                &kc,
                "get",
                "node",
                &spec.name,
                "-o",
                jsonpath,
            ];
            lab.exec(h, &argv)
                .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
        };
        self.wait_started(
            lab,
            "lab kubelet",
            &kubelet,
            Duration::from_secs(30),
            registered,
        )?;
        let kube_proxy = self.start_kube_proxy(lab, host, &spec.name)?;
        Ok(LabNode {
            spec,
            host: host.clone(),
            kubelet,
            kube_proxy,
        })
    }

    fn start_kubelet(
        &self,
        lab: &Lab,
        host: &Host,
        spec: &NodeSpec,
        bin: &Path,
        images: &ImageMap,
    ) -> Result<Proc, ControlPlaneError> {
        let kc = self.node_kubeconfig(&spec.name)?;
        let root = lab.host_dir(&host.name).join("kubelet");
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--kubeconfig={}", kc.display()))
            .arg(format!("--node-name={}", spec.name))
            .arg(format!("--node-ip={}", spec.internal_ip))
            .arg(format!("--root-dir={}", root.display()))
            .arg(format!("--netns-prefix={}", lab.prefix()))
            .env("RUST_LOG", "info");
        if let Some(e) = spec.external_ip {
            cmd.arg(format!("--external-ip={e}"));
        }
        for (k, v) in &spec.labels {
            cmd.arg(format!("--label={k}={v}"));
        }
        for (pattern, b) in images {
            cmd.arg(format!("--image={pattern}={}", b.display()));
        }
        for (k, v) in &spec.container_env {
            cmd.arg(format!("--container-env={k}={v}"));
        }
        if spec.cni_from_conf_dir {
            cmd.arg(format!("--cni-conf-dir={}", wirekube_lab::PRIVATE_PATHS[2]));
        }
        Ok(lab.spawn(host, cmd)?)
    }

    /// kube-proxy in nftables mode for node `name`. Conntrack limits are left alone
    /// (`--conntrack-max-per-core=0`): they are global, not per lab namespace.
    pub fn start_kube_proxy(
        &self,
        lab: &Lab,
        host: &Host,
        name: &str,
    ) -> Result<Proc, ControlPlaneError> {
        let kc = self.kube_proxy_kubeconfig(name)?;
        let mut cmd = Command::new(self.cfg.bin_dir.join("kube-proxy"));
        cmd.arg(format!("--kubeconfig={}", kc.display()))
            .arg(format!("--hostname-override={name}"))
            .arg("--proxy-mode=nftables")
            .arg(format!("--cluster-cidr={}", self.cfg.cluster_cidr))
            .arg("--metrics-bind-address=127.0.0.1:10249")
            .arg("--healthz-bind-address=127.0.0.1:10256")
            .arg("--conntrack-max-per-core=0")
            .arg("--v=1");
        Ok(lab.spawn(host, cmd)?)
    }
}
