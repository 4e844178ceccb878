//! The real control plane, run as lab processes in one lab host (the DMZ): etcd and
//! kube-apiserver with real TLS, RBAC + Node authorization, NodeRestriction and the default
//! admission plugins (ValidatingAdmissionPolicy among them), service-account token signing, a
//! service CIDR and a NodePort range; kube-controller-manager with every default controller and
//! node IPAM (`--allocate-node-cidrs`, so each Node gets a `podCIDR`); kube-scheduler.
//!
//! The binaries come from `scripts/build-k8s.sh` (a cache outside the checkout, keyed by
//! version). Flags and the reasons for them: `docs/lab.md`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ipnet::Ipv4Net;
use wirekube_lab::{Host, Lab, LabError, Proc, wait_until};

use crate::kubeconfig;
use crate::pki::{CertFiles, Pki, PkiError, Subject};

/// Errors while starting or using the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("Kubernetes binaries: {0}")]
    Binaries(String),
    #[error("{component} exited during start-up ({status}); its log ends with:\n{log}")]
    Exited {
        component: String,
        status: String,
        log: String,
    },
    #[error("write {0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("{what}: {detail}")]
    NotReady { what: String, detail: String },
    #[error("{0} is not running: start it before stopping it")]
    NotRunning(String),
    #[error("{0} is already running: stop it before starting it again")]
    AlreadyRunning(String),
}

/// The control-plane processes a test may stop and start again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Etcd,
    ApiServer,
}

impl Component {
    /// The process name (as [`ControlPlane::dead`] reports it).
    pub fn name(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::ApiServer => "kube-apiserver",
        }
    }
}

type Result<T> = std::result::Result<T, ControlPlaneError>;

/// Environment variable naming a directory with the Kubernetes binaries; without it,
/// `scripts/build-k8s.sh` is asked (it builds once and then only prints the cached directory).
pub const K8S_BIN_ENV: &str = "WIREKUBE_K8S_BIN";

/// Records what WireKube's own service accounts do (the RBAC test reads it) and nothing else,
/// so the log stays small even in the 1,000-node benchmark.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: [\"system:serviceaccounts:wirekube-system\"]
  - level: None
";

/// `WIREKUBE_LAB_PROFILING=1` serves the API server's `/debug/pprof/` (CPU profiles of a lab
/// run, docs/lab.md); off otherwise, as on a hardened cluster.
fn profiling_enabled() -> bool {
    std::env::var("WIREKUBE_LAB_PROFILING").is_ok_and(|v| v == "1")
}

/// Shape of the lab cluster.
#[derive(Clone, Debug)]
pub struct ControlPlaneConfig {
    /// Directory with etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy.
    pub bin_dir: PathBuf,
    /// ClusterIP range; its first address is the `kubernetes` Service.
    pub service_cidr: Ipv4Net,
    /// Pod range, split into one `podCIDR` per node by node IPAM.
    pub cluster_cidr: Ipv4Net,
    pub node_cidr_mask: u8,
    pub node_port_range: (u16, u16),
    /// The API server's port on the host's first address.
    pub port: u16,
}

impl ControlPlaneConfig {
    /// The defaults, with the binaries from [`k8s_bin_dir`].
    pub fn new() -> Result<ControlPlaneConfig> {
        Ok(ControlPlaneConfig {
            bin_dir: k8s_bin_dir()?,
            service_cidr: SERVICE_CIDR,
            cluster_cidr: CLUSTER_CIDR,
            node_cidr_mask: 24,
            node_port_range: (30000, 32767),
            port: 6443,
        })
    }
}

/// The default ClusterIP range.
pub const SERVICE_CIDR: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 96, 0, 0), 16);
/// The default pod range (node IPAM hands out /24s).
pub const CLUSTER_CIDR: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 244, 0, 0), 16);

/// The directory with the Kubernetes binaries: `$WIREKUBE_K8S_BIN`, else what
/// `scripts/build-k8s.sh` prints (building them on first use; `K8S_VERSION` selects a release).
pub fn k8s_bin_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os(K8S_BIN_ENV) {
        return Ok(PathBuf::from(d));
    }
    let script = repo_root().join("scripts/build-k8s.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("BUILD_K8S_QUIET", "1")
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| ControlPlaneError::Binaries(format!("run {}: {e}", script.display())))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().last() {
        Some(dir) if out.status.success() => Ok(PathBuf::from(dir.trim())),
        _ => Err(ControlPlaneError::Binaries(format!(
            "{} failed ({}); run it by hand to see why",
            script.display(),
            out.status
        ))),
    }
}

/// The repository root.
pub use wirekube_lab::bins::repo_root;

/// A running control plane.
pub struct ControlPlane {
    pub cfg: ControlPlaneConfig,
    /// The lab host it runs in.
    pub host: Host,
    /// `https://<host ip>:<port>`.
    pub url: String,
    /// State: PKI, kubeconfigs, etcd data.
    pub dir: PathBuf,
    pub pki: Pki,
    procs: Vec<(&'static str, Proc)>,
}

impl ControlPlane {
    /// The API server's audit log (JSON lines): `ResponseComplete` (and for watches
    /// `ResponseStarted`) events of the requests made
    /// by a service account of the `wirekube-system` namespace, at `Metadata` level.
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// Starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler in `host` and
    /// waits until the API server is ready and the controllers work (the `default`
    /// ServiceAccount and the `kube-root-ca.crt` ConfigMap exist). Everything stops with the lab.
    pub fn start(lab: &Lab, host: &Host, cfg: ControlPlaneConfig) -> Result<ControlPlane> {
        for bin in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ] {
            if !cfg.bin_dir.join(bin).is_file() {
                return Err(ControlPlaneError::Binaries(format!(
                    "{bin} missing in {}; run scripts/build-k8s.sh",
                    cfg.bin_dir.display()
                )));
            }
        }
        let dir = lab.dir().join("k8s");
        let pki = Pki::create(&dir.join("pki"))?;
        let ip = host.ip();
        let mut cp = ControlPlane {
            url: format!("https://{ip}:{}", cfg.port),
            cfg,
            host: host.clone(),
            dir,
            pki,
            procs: Vec::new(),
        };
        cp.start_etcd(lab)?;
        cp.start_apiserver(lab)?;
        cp.start_controllers(lab)?;
        Ok(cp)
    }

    fn start_etcd(&mut self, lab: &Lab) -> Result<()> {
        let tls = self.pki.issue(
            "etcd-server",
            &Subject {
                common_name: "etcd".into(),
                dns: vec!["localhost".into()],
                ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
                server: true,
                client: true,
                ..Subject::default()
            },
        )?;
        let data = self.dir.join("etcd");
        let mut cmd = Command::new(self.cfg.bin_dir.join("etcd"));
        cmd.arg("--name=lab")
            .arg(format!("--data-dir={}", data.display()))
            .arg("--listen-client-urls=https://127.0.0.1:2379")
            .arg("--advertise-client-urls=https://127.0.0.1:2379")
            .arg("--listen-peer-urls=http://127.0.0.1:2380")
            .arg("--initial-advertise-peer-urls=http://127.0.0.1:2380")
            .arg("--initial-cluster=lab=http://127.0.0.1:2380")
            .arg("--listen-metrics-urls=http://127.0.0.1:2381")
            .arg(format!("--cert-file={}", tls.cert.display()))
            .arg(format!("--key-file={}", tls.key.display()))
            .arg(format!("--trusted-ca-file={}", self.pki.ca.cert.display()))
            .arg("--client-cert-auth")
            // A lab cluster lives for minutes: durability is not worth the fsync cost on 2 cores.
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        let p = lab.spawn(&self.host, cmd)?;
        self.wait_started(lab, "etcd", &p, Duration::from_secs(30), |lab, h| {
            lab.tcp_listening(h, 2379)
        })?;
        self.procs.push(("etcd", p));
        Ok(())
    }

    fn start_apiserver(&mut self, lab: &Lab) -> Result<()> {
        let ip = self.host.ip();
        let service_ip = first_host(self.cfg.service_cidr);
        let serving = self.pki.issue(
            "apiserver",
            &Subject {
                common_name: "kube-apiserver".into(),
                dns: [
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                    "localhost",
                ]
                .map(String::from)
                .to_vec(),
                ips: vec![ip.into(), service_ip.into(), Ipv4Addr::LOCALHOST.into()],
                server: true,
                ..Subject::default()
            },
        )?;
        let etcd_client = self.pki.issue(
            "apiserver-etcd-client",
            &Subject::client("kube-apiserver-etcd-client", &[]),
        )?;
        let (lo, hi) = self.cfg.node_port_range;
        let policy = self.dir.join("audit-policy.yaml");
        std::fs::write(&policy, AUDIT_POLICY)
            .map_err(|e| ControlPlaneError::Io(policy.display().to_string(), e))?;
        let ca = &self.pki.ca.cert;
        let mut cmd = Command::new(self.cfg.bin_dir.join("kube-apiserver"));
        cmd.arg(format!("--advertise-address={ip}"))
            .arg(format!("--bind-address={ip}"))
            .arg(format!("--secure-port={}", self.cfg.port))
            .arg("--etcd-servers=https://127.0.0.1:2379")
            .arg(format!("--etcd-cafile={}", ca.display()))
            .arg(format!("--etcd-certfile={}", etcd_client.cert.display()))
            .arg(format!("--etcd-keyfile={}", etcd_client.key.display()))
            .arg(format!("--tls-cert-file={}", serving.cert.display()))
            .arg(format!("--tls-private-key-file={}", serving.key.display()))
            .arg(format!("--client-ca-file={}", ca.display()))
            .arg("--authorization-mode=Node,RBAC")
            // On top of the defaults (ServiceAccount, ValidatingAdmissionPolicy, webhooks, ...).
            .arg("--enable-admission-plugins=NodeRestriction")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!(
                "--service-account-key-file={}",
                self.pki.sa_pub.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                self.pki.sa_key.display()
            ))
            .arg(format!(
                "--service-cluster-ip-range={}",
                self.cfg.service_cidr
            ))
            .arg(format!("--service-node-port-range={lo}-{hi}"))
            .arg("--allow-privileged=true")
            .arg(format!("--audit-policy-file={}", policy.display()))
            .arg(format!("--audit-log-path={}", self.audit_log().display()))
            .arg("--audit-log-format=json")
            .arg("--audit-log-mode=blocking")
            .arg(format!("--profiling={}", profiling_enabled()))
            .arg("--v=1");
        let p = lab.spawn(&self.host, cmd)?;
        self.write_kubeconfig("admin", "kubernetes-admin", &["system:masters"])?;
        let admin = self.admin_kubeconfig();
        self.wait_started(
            lab,
            "kube-apiserver",
            &p,
            Duration::from_secs(90),
            |lab, h| kubectl_ok(lab, h, &admin, &["get", "--raw", "/readyz"]),
        )?;
        self.procs.push(("kube-apiserver", p));
        Ok(())
    }

    fn start_controllers(&mut self, lab: &Lab) -> Result<()> {
        let cm_kc =
            self.write_kubeconfig("controller-manager", "system:kube-controller-manager", &[])?;
        let ca = &self.pki.ca;
        let mut cmd = Command::new(self.cfg.bin_dir.join("kube-controller-manager"));
        cmd.arg(format!("--kubeconfig={}", cm_kc.display()))
            .arg("--bind-address=127.0.0.1")
            .arg("--leader-elect=false")
            .arg("--use-service-account-credentials=true")
            .arg(format!(
                "--service-account-private-key-file={}",
                self.pki.sa_key.display()
            ))
            .arg(format!("--root-ca-file={}", ca.cert.display()))
            .arg(format!("--cluster-signing-cert-file={}", ca.cert.display()))
            .arg(format!("--cluster-signing-key-file={}", ca.key.display()))
            .arg("--allocate-node-cidrs=true")
            .arg(format!("--cluster-cidr={}", self.cfg.cluster_cidr))
            .arg(format!("--node-cidr-mask-size={}", self.cfg.node_cidr_mask))
            .arg(format!(
                "--service-cluster-ip-range={}",
                self.cfg.service_cidr
            ))
            .arg("--v=1");
        let cm = lab.spawn(&self.host, cmd)?;

        let sched_kc = self.write_kubeconfig("scheduler", "system:kube-scheduler", &[])?;
        let mut cmd = Command::new(self.cfg.bin_dir.join("kube-scheduler"));
        cmd.arg(format!("--kubeconfig={}", sched_kc.display()))
            .arg("--bind-address=127.0.0.1")
            .arg("--leader-elect=false")
            .arg("--v=1");
        let sched = lab.spawn(&self.host, cmd)?;

        let admin = self.admin_kubeconfig();
        self.wait_started(
            lab,
            "kube-controller-manager",
            &cm,
            Duration::from_secs(60),
            |lab, h| {
                kubectl_ok(lab, h, &admin, &["get", "serviceaccount", "default"])
                    && kubectl_ok(lab, h, &admin, &["get", "configmap", "kube-root-ca.crt"])
            },
        )?;
        self.procs.push(("kube-controller-manager", cm));
        if !lab.is_running(&sched) {
            return Err(ControlPlaneError::Exited {
                component: "kube-scheduler".into(),
                status: exit_status(lab, &sched),
                log: tail(&lab.log(&sched), 30),
            });
        }
        self.procs.push(("kube-scheduler", sched));
        Ok(())
    }

    /// Waits for `ready` (up to `timeout` times [`slowdown`]), failing early (with its log)
    /// when the process exits.
    pub(crate) fn wait_started(
        &self,
        lab: &Lab,
        component: &str,
        p: &Proc,
        timeout: Duration,
        mut ready: impl FnMut(&Lab, &Host) -> bool,
    ) -> Result<()> {
        let timeout = timeout * slowdown();
        let mut exited = false;
        let res = wait_until(timeout, &format!("{component} ready"), || {
            exited = !lab.is_running(p);
            exited || ready(lab, &self.host)
        });
        if exited {
            return Err(ControlPlaneError::Exited {
                component: component.into(),
                status: exit_status(lab, p),
                log: tail(&lab.log(p), 30),
            });
        }
        res.map(|_| ()).map_err(|e| ControlPlaneError::NotReady {
            what: component.into(),
            detail: format!("{e}; log:\n{}", tail(&lab.log(p), 30)),
        })
    }

    /// Writes `<dir>/<file>.kubeconfig` for user `user` in `groups` (a client certificate
    /// signed by the lab CA) and returns its path.
    pub fn write_kubeconfig(&self, file: &str, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let cert: CertFiles = self.pki.issue(file, &Subject::client(user, groups))?;
        let path = self.dir.join(format!("{file}.kubeconfig"));
        kubeconfig::write(&path, &self.url, &self.pki.ca.cert_pem, user, &cert)?;
        Ok(path)
    }

    /// The cluster-admin kubeconfig (`system:masters`).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// A kubeconfig for the kubelet of `node` (`system:node:<node>` in `system:nodes`), so the
    /// Node authorizer and NodeRestriction apply to it.
    pub fn node_kubeconfig(&self, node: &str) -> Result<PathBuf> {
        self.write_kubeconfig(
            &format!("kubelet-{node}"),
            &format!("system:node:{node}"),
            &["system:nodes"],
        )
    }

    /// A kubeconfig for the kube-proxy of `node` (`system:kube-proxy`, bound by the default
    /// RBAC). One file per node: a shared file rewritten for the next node raced with the
    /// previous kube-proxy reading it at start-up ("no configuration has been provided").
    pub fn kube_proxy_kubeconfig(&self, node: &str) -> Result<PathBuf> {
        self.write_kubeconfig(&format!("kube-proxy-{node}"), "system:kube-proxy", &[])
    }

    /// Stops `component` (TERM, then KILL after 3 s): the API server's clients and etcd's see
    /// connections refused until [`ControlPlane::start_component`]. For the fault suite.
    pub fn stop_component(&mut self, lab: &Lab, component: Component) -> Result<()> {
        let name = component.name();
        let i = self
            .procs
            .iter()
            .position(|(n, _)| *n == name)
            .ok_or_else(|| ControlPlaneError::NotRunning(name.into()))?;
        let (_, p) = self.procs.remove(i);
        lab.stop(&p)?;
        Ok(())
    }

    /// Starts a component stopped by [`ControlPlane::stop_component`] again, on the same data
    /// and addresses, and waits until it serves (etcd: its port; the API server: `/readyz`).
    pub fn start_component(&mut self, lab: &Lab, component: Component) -> Result<()> {
        let name = component.name();
        if self.procs.iter().any(|(n, _)| *n == name) {
            return Err(ControlPlaneError::AlreadyRunning(name.into()));
        }
        match component {
            Component::Etcd => self.start_etcd(lab),
            Component::ApiServer => self.start_apiserver(lab),
        }
    }

    /// The PID of a running component (to pause it with SIGSTOP, say), or `None`.
    pub fn pid(&self, component: Component) -> Option<u32> {
        let name = component.name();
        self.procs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p.pid)
    }

    /// Components that are no longer running.
    pub fn dead(&self, lab: &Lab) -> Vec<String> {
        self.procs
            .iter()
            .filter(|(_, p)| !lab.is_running(p))
            .map(|(name, p)| format!("{name} (pid {})", p.pid))
            .collect()
    }

    /// The `kubernetes` Service's ClusterIP (first address of the service range).
    pub fn kubernetes_service_ip(&self) -> Ipv4Addr {
        first_host(self.cfg.service_cidr)
    }
}

/// The lab's slowdown factor also scales the control plane's start-up deadlines (the VM of
/// `make test-kernel` sets 4: there the API server needs about two minutes).
pub use wirekube_lab::netns::{SLOWDOWN_ENV, slowdown};

/// How `p` ended, for [`ControlPlaneError::Exited`].
fn exit_status(lab: &Lab, p: &Proc) -> String {
    lab.exit_status(p).unwrap_or_else(|| "still running".into())
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn first_host(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).saturating_add(1))
}

/// Whether `kubectl <args>` with `kubeconfig`, run in `host`, succeeds.
pub fn kubectl_ok(lab: &Lab, host: &Host, kubeconfig: &Path, args: &[&str]) -> bool {
    let kc = kubeconfig.to_string_lossy();
    let mut argv = vec!["kubectl", "--kubeconfig", &kc, "--request-timeout=5s"];
    argv.extend_from_slice(args);
    lab.exec(host, &argv).is_ok_and(|o| o.status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubernetes_service_is_the_first_address_of_the_service_range() {
        let cfg = ControlPlaneConfig {
            bin_dir: PathBuf::new(),
            service_cidr: SERVICE_CIDR,
            cluster_cidr: CLUSTER_CIDR,
            node_cidr_mask: 24,
            node_port_range: (30000, 32767),
            port: 6443,
        };
        assert_eq!(first_host(cfg.service_cidr), Ipv4Addr::new(10, 96, 0, 1));
    }
}
