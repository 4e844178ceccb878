//! A lab with the real Kubernetes control plane in its DMZ, and the admin's view of it: what
//! the API conformance tests and the scenarios start from.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use wirekube_kubelab::controlplane::{ControlPlane, ControlPlaneConfig};
use wirekube_lab::{Host, Lab};

use crate::scenario::Cluster;

/// A lab, its DMZ host and the control plane running there.
pub struct KubeLab {
    pub lab: Arc<Lab>,
    pub dmz: Host,
    pub cp: ControlPlane,
    /// Admin client (its threads live in the DMZ namespace).
    pub admin: Cluster,
}

impl KubeLab {
    /// Runs `f` with the admin client; panics with the tail of the lab's process logs when it
    /// fails (tests want the logs beside the error).
    pub fn run_admin<T, F>(&self, f: impl FnOnce(kube::Client) -> F) -> T
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        match self.admin.run(f) {
            Ok(v) => v,
            Err(e) => panic!("{e:#}\n{}", self.lab.logs_tail(30)),
        }
    }
    /// Builds a lab with only a DMZ and starts the control plane in it.
    pub fn start(tag: &str) -> Result<KubeLab> {
        let lab = Arc::new(Lab::new_unique(tag).context("lab (needs root)")?);
        let dmz = lab.add_dmz("dmz", &[])?;
        Self::start_in(lab, dmz)
    }

    /// Starts the control plane in `dmz` of an existing lab.
    pub fn start_in(lab: Arc<Lab>, dmz: Host) -> Result<KubeLab> {
        let cp = ControlPlane::start(&lab, &dmz, ControlPlaneConfig::new()?)
            .with_context(|| format!("control plane; process logs:\n{}", lab.logs_tail(20)))?;
        let admin = Cluster::connect(&cp.admin_kubeconfig(), Some(&netns_path(&dmz)))?;
        Ok(KubeLab {
            lab,
            dmz,
            cp,
            admin,
        })
    }

    /// `kubectl <args>` as the admin, run in the DMZ; stdout, or an error with stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_as(&self.cp.admin_kubeconfig(), args)
    }

    /// `kubectl <args>` with another kubeconfig.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Result<String> {
        let kc = kubeconfig.to_string_lossy();
        let mut argv = vec!["kubectl", "--kubeconfig", &kc];
        argv.extend_from_slice(args);
        let out = self.lab.exec(&self.dmz, &argv)?;
        if !out.status.success() {
            bail!(
                "kubectl {} ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl wirekube <args>` (the built plugin binary) as the admin, run in the DMZ: its exit
    /// status and output, whatever the status (doctor and status exit non-zero on problems).
    pub fn kubectl_wirekube(&self, args: &[&str]) -> Result<std::process::Output> {
        let bin = crate::scenario::bins::binary("kubectl-wirekube")?;
        let kc = self.cp.admin_kubeconfig();
        let (bin, kc) = (bin.to_string_lossy(), kc.to_string_lossy());
        let mut argv = vec![bin.as_ref(), "--kubeconfig", kc.as_ref()];
        argv.extend_from_slice(args);
        Ok(self.lab.exec(&self.dmz, &argv)?)
    }

    /// Installs WireKube as a user does (`kubectl apply -k config/default`) and waits until its
    /// CRDs are established.
    pub fn install(&self) -> Result<String> {
        self.install_from("config/default")
    }

    /// Installs from another kustomization of the repository (e.g. `config/pod-network`).
    pub fn install_from(&self, kustomization: &str) -> Result<String> {
        let out = self.apply(&[("-k", kustomization)])?;
        self.wait_crds()?;
        Ok(out)
    }

    /// Installs WireKube with the Helm chart as a user does (`helm install wirekube
    /// charts/wirekube -n wirekube-system --create-namespace`, default values plus `set`, e.g.
    /// `metrics.serviceMonitor.enabled=false`) and waits until its CRDs are established.
    /// Returns helm's output.
    pub fn install_chart(&self, set: &[&str]) -> Result<String> {
        let helm = helm_bin()?;
        let root = crate::scenario::bins::repo_root();
        let home = self.lab.dir().join("helm");
        let env = |k: &str| format!("{k}={}", home.join(k).display());
        let (cache, config, data) = (
            env("HELM_CACHE_HOME"),
            env("HELM_CONFIG_HOME"),
            env("HELM_DATA_HOME"),
        );
        let (helm, chart, kc) = (
            helm.to_string_lossy().into_owned(),
            root.join("charts/wirekube").to_string_lossy().into_owned(),
            self.cp.admin_kubeconfig().to_string_lossy().into_owned(),
        );
        let mut argv = vec![
            "env", &cache, &config, &data, &helm, "install", "wirekube", &chart,
        ];
        argv.extend([
            "--kubeconfig",
            &kc,
            "-n",
            "wirekube-system",
            "--create-namespace",
        ]);
        for s in set {
            argv.extend(["--set", s]);
        }
        let out = self
            .lab
            .exec_timeout(&self.dmz, &argv, std::time::Duration::from_secs(120))?;
        if !out.status.success() {
            bail!(
                "helm install: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        self.wait_crds()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Installs WireKube's namespace, CRDs and RBAC but no workloads (for tests that run the
    /// operator or the agents themselves) and waits until the CRDs are established.
    pub fn install_api(&self) -> Result<()> {
        self.apply(&[
            ("-f", "config/operator/namespace.yaml"),
            ("-k", "config/crd"),
            ("-k", "config/rbac"),
        ])?;
        self.wait_crds()
    }

    /// `kubectl apply --server-side <flag> <repo path>` for each pair; the outputs joined.
    fn apply(&self, what: &[(&str, &str)]) -> Result<String> {
        let root = crate::scenario::bins::repo_root();
        let mut out = String::new();
        for (flag, path) in what {
            let path = root.join(path);
            out += &self.kubectl(&["apply", "--server-side", flag, &path.to_string_lossy()])?;
        }
        Ok(out)
    }

    fn wait_crds(&self) -> Result<()> {
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/wirekubemeshes.wirekube.io",
            "crd/wirekubepeers.wirekube.io",
        ])?;
        Ok(())
    }

    /// A kubeconfig that authenticates with a bearer `token` (a service-account token).
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> Result<PathBuf> {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.cp.pki.ca.cert_pem);
        let doc = serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "lab", "cluster": {
                "server": self.cp.url, "certificate-authority-data": ca}}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": name, "context": {"cluster": "lab", "user": name}}],
            "current-context": name,
        });
        let path = self.cp.dir.join(format!("{name}.kubeconfig"));
        std::fs::write(&path, doc.to_string())?;
        Ok(path)
    }

    /// A kubeconfig with a token of service account `ns/sa`, made with TokenRequest as a kubelet
    /// does. With `node`, the token is bound to a Pod on that node (a placeholder Pod object
    /// `<sa>-<node>` is created when no kubelet runs the workload), so it carries the
    /// `authentication.kubernetes.io/node-name` extra that the agent's admission policy reads;
    /// the Node must exist. Tokens live one hour.
    pub fn service_account_kubeconfig(
        &self,
        ns: &str,
        sa: &str,
        node: Option<&str>,
    ) -> Result<PathBuf> {
        use k8s_openapi::api::authentication::v1::TokenRequest;
        use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
        use kube::api::{Api, PostParams};
        use serde_json::json;
        let (ns_, sa_, node_) = (ns.to_owned(), sa.to_owned(), node.map(str::to_owned));
        let token = self.admin.run(move |c| async move {
            let mut spec = json!({"audiences": [], "expirationSeconds": 3600});
            if let Some(node) = node_ {
                let pod: Pod = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("{sa_}-{node}"), "namespace": ns_},
                    "spec": {"nodeName": node, "serviceAccountName": sa_,
                             "containers": [{"name": "main", "image": "wirekube.test/placeholder"}]}
                }))?;
                let pod = Api::<Pod>::namespaced(c.clone(), &ns_)
                    .create(&PostParams::default(), &pod)
                    .await
                    .context("placeholder pod for a bound token")?;
                spec["boundObjectRef"] = json!({"apiVersion": "v1", "kind": "Pod",
                    "name": pod.metadata.name, "uid": pod.metadata.uid});
            }
            let req: TokenRequest = serde_json::from_value(json!({ "spec": spec }))?;
            let tr = Api::<ServiceAccount>::namespaced(c, &ns_)
                .create_token_request(&sa_, &PostParams::default(), &req)
                .await
                .with_context(|| format!("TokenRequest for {ns_}/{sa_}"))?;
            tr.status
                .map(|s| s.token)
                .ok_or_else(|| anyhow::anyhow!("TokenRequest for {ns_}/{sa_}: no token"))
        })?;
        let name = match node {
            Some(n) => format!("{sa}-{n}"),
            None => sa.to_owned(),
        };
        self.token_kubeconfig(&name, &token)
    }

    /// A client for `kubeconfig`, in the DMZ namespace.
    pub fn client(&self, kubeconfig: &Path) -> Result<Cluster> {
        Cluster::connect(kubeconfig, Some(&netns_path(&self.dmz)))
    }

    /// Stops every process and removes the lab (also done on drop of the lab).
    pub fn shutdown(&self) -> Result<()> {
        Ok(self.lab.shutdown()?)
    }
}

/// The helm binary: `$WIREKUBE_HELM`, else what `scripts/build-go-tool.sh helm` prints (building
/// it from its Go module on first use, cached in ~/.cache/wirekube/tools).
pub fn helm_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("WIREKUBE_HELM") {
        return Ok(PathBuf::from(p));
    }
    let script = crate::scenario::bins::repo_root().join("scripts/build-go-tool.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("helm")
        .env("BUILD_TOOL_QUIET", "1")
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().last() {
        Some(p) if out.status.success() => Ok(PathBuf::from(p.trim())),
        _ => bail!(
            "{} helm failed ({}); run it by hand to see why",
            script.display(),
            out.status
        ),
    }
}

fn netns_path(h: &Host) -> PathBuf {
    wirekube_lab::netns::ns_path(&h.ns)
}
