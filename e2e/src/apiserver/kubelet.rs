//! A minimal kubelet + deployment controller: runs Deployment pod templates as local processes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::server::Shared;

/// Where and how one pod runs.
#[derive(Debug, Clone, Default)]
pub struct PodPlacement {
    /// `spec.nodeName` of the Pod object.
    pub node_name: Option<String>,
    /// Prepended to the container's argv, e.g. `["ip", "netns", "exec", "dmz"]`.
    pub command_prefix: Vec<String>,
    /// `status.podIP` of the Pod object (and `status.podIP` fieldRef env).
    pub pod_ip: Option<String>,
}

/// What the placement callback sees.
#[derive(Debug, Clone)]
pub struct PodContext {
    pub namespace: String,
    pub deployment: String,
    pub pod: String,
    /// The pod template (`spec.template`).
    pub template: serde_json::Value,
}

pub type PlacementFn = Arc<dyn Fn(&PodContext) -> PodPlacement + Send + Sync>;

/// Kubelet configuration.
#[derive(Clone)]
pub struct KubeletConfig {
    /// Image → local binary. A pattern ending in `*` matches by prefix (`ghcr.io/wirekube/relay:*`),
    /// otherwise the image must match exactly.
    pub images: Vec<(String, PathBuf)>,
    pub placement: PlacementFn,
    /// Where Secret/ConfigMap volumes and emptyDirs are materialised (a temp dir if `None`).
    pub work_dir: Option<PathBuf>,
    /// Delay before restarting an exited container (doubles up to 8x).
    pub restart_backoff: Duration,
}

impl std::fmt::Debug for KubeletConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletConfig")
            .field("images", &self.images)
            .field("work_dir", &self.work_dir)
            .finish()
    }
}

impl Default for KubeletConfig {
    fn default() -> Self {
        KubeletConfig {
            images: Vec::new(),
            placement: Arc::new(|_| PodPlacement::default()),
            work_dir: None,
            restart_backoff: Duration::from_millis(500),
        }
    }
}

pub async fn run(_shared: Arc<Shared>, _cfg: KubeletConfig) {}
