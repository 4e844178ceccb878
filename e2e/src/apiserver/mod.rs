//! A test-only Kubernetes API server: the API semantics WireKube's binaries use, faithful enough
//! for unmodified kubectl and kube-rs. See `docs/apiserver.md`.

pub mod admission;
pub mod cel;
pub mod rbac;
pub mod schema;

mod auth;
mod cloud;
mod discovery;
mod error;
mod fieldset;
mod gc;
mod http;
mod kubelet;
mod manifests;
mod mutate;
mod ops;
mod patch;
mod resources;
mod selectors;
mod server;
mod ssa;
mod store;
mod table;
mod util;
mod watch;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use auth::Identity;
pub use error::{ApiError, ApiServerError};
pub use kubelet::{KubeletConfig, PlacementFn, PodContext, PodPlacement};

use server::{Listener, Shared};
use store::Store;

/// Server configuration.
#[derive(Debug, Clone)]
pub struct ApiServerConfig {
    /// Listen address; port 0 picks a free port (kept across restarts).
    pub listen: SocketAddr,
    /// Authorize non-`system:masters` identities with the stored RBAC objects (403 otherwise).
    /// When false every authenticated request is allowed.
    pub rbac: bool,
    /// Events kept for watches resuming from a resourceVersion; older ones get 410 Gone.
    pub watch_history: usize,
    /// How often watches with `allowWatchBookmarks` get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Addresses handed to LoadBalancer Services.
    pub lb_pool: Vec<IpAddr>,
    /// Run Deployments as local processes.
    pub kubelet: Option<KubeletConfig>,
    /// Manifest files or directories (YAML/JSON) applied as admin at start.
    pub preload: Vec<PathBuf>,
}

impl Default for ApiServerConfig {
    fn default() -> Self {
        ApiServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            rbac: true,
            watch_history: 10_000,
            bookmark_interval: Duration::from_secs(10),
            lb_pool: Vec::new(),
            kubelet: None,
            preload: Vec::new(),
        }
    }
}

/// Installs rustls' ring crypto provider as the process default if none is (kube's
/// `rustls-tls` feature selects none, and kube-rs clients panic without one).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Entry point.
pub struct ApiServer;

impl ApiServer {
    /// Starts the server (HTTP listener and controllers) on the current tokio runtime.
    pub async fn start(config: ApiServerConfig) -> Result<ApiServerHandle, ApiServerError> {
        let shared = Arc::new(Shared::new(
            Store::new(config.watch_history),
            config.rbac,
            config.bookmark_interval,
        ));
        for p in &config.preload {
            manifests::load(&shared, p)?;
        }
        let listener = Listener::bind(shared.clone(), config.listen)
            .await
            .map_err(|source| ApiServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.addr;
        *shared.server_url.lock().expect("url lock") = format!("http://{addr}");
        let mut tasks = vec![
            tokio::spawn(gc::run(shared.clone())),
            tokio::spawn(cloud::run(shared.clone(), config.lb_pool.clone())),
        ];
        if let Some(k) = config.kubelet.clone() {
            tasks.push(tokio::spawn(kubelet::run(shared.clone(), k)));
        }
        Ok(ApiServerHandle {
            shared,
            addr,
            listener: tokio::sync::Mutex::new(Some(listener)),
            tasks,
        })
    }
}

/// A running server. Dropping it stops the listener, the controllers and the kubelet's processes.
pub struct ApiServerHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    listener: tokio::sync::Mutex<Option<Listener>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ApiServerHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bearer token of an identity (issued on first use, kept across restarts).
    pub fn token(&self, id: &Identity) -> String {
        self.shared
            .tokens
            .lock()
            .expect("tokens lock")
            .token_for(id)
    }

    /// A kubeconfig (YAML) for an identity.
    pub fn kubeconfig(&self, id: &Identity) -> String {
        auth::kubeconfig_yaml(&self.url(), id, &self.token(id))
    }

    /// Writes [`Self::kubeconfig`] to a file.
    pub fn write_kubeconfig(&self, id: &Identity, path: &Path) -> Result<(), ApiServerError> {
        std::fs::write(path, self.kubeconfig(id)).map_err(|source| ApiServerError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// A kube-rs client for an identity.
    pub async fn client(&self, id: &Identity) -> Result<kube::Client, ApiServerError> {
        install_crypto_provider();
        let kc = kube::config::Kubeconfig::from_yaml(&self.kubeconfig(id))
            .map_err(|e| ApiServerError::Client(e.to_string()))?;
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| ApiServerError::Client(e.to_string()))?;
        kube::Client::try_from(cfg).map_err(|e| ApiServerError::Client(e.to_string()))
    }

    /// Applies manifests (a file or a directory of `.yaml`/`.yml`/`.json`) as admin with
    /// server-side apply (field manager `wirekube-apiserver-preload`, forced). Returns the count.
    pub fn load_manifests(&self, path: &Path) -> Result<usize, ApiServerError> {
        manifests::load(&self.shared, path)
    }

    /// Stops serving HTTP: the listener and every open connection (watches included) close.
    /// State, controllers and kubelet processes stay.
    pub async fn stop(&self) {
        if let Some(l) = self.listener.lock().await.take() {
            l.stop().await;
        }
    }

    /// Serves again on the same address, with the same state.
    pub async fn restart(&self) -> Result<(), ApiServerError> {
        let mut guard = self.listener.lock().await;
        if let Some(l) = guard.take() {
            l.stop().await;
        }
        let l = Listener::bind(self.shared.clone(), self.addr)
            .await
            .map_err(|source| ApiServerError::Bind {
                addr: self.addr,
                source,
            })?;
        *guard = Some(l);
        Ok(())
    }

    /// Whether the listener is up.
    pub async fn is_serving(&self) -> bool {
        self.listener.lock().await.is_some()
    }

    /// Ends every open watch (cleanly: the response stream ends).
    pub fn drop_watches(&self) {
        self.shared.drop_watches();
    }

    /// Answers every request with 503 for a while.
    pub fn fail_requests_for(&self, d: Duration) {
        *self.shared.fail_until.lock().expect("fault lock") = Some(Instant::now() + d);
    }

    /// Forgets the watch history, so resuming a watch from any earlier resourceVersion gets
    /// 410 Gone.
    pub fn compact_history(&self) {
        self.shared.store.lock().expect("store lock").compact();
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.lock().expect("store lock").rv
    }

    /// A stored object (as stored), if present. `group` is "" for core.
    pub fn object(
        &self,
        group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Option<serde_json::Value> {
        let st = self.shared.store.lock().expect("store lock");
        st.get(&format!("{group}/{resource}"), namespace, name)
            .cloned()
    }

    /// Stops everything (listener, controllers, kubelet processes).
    pub async fn shutdown(mut self) {
        self.stop().await;
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for ApiServerHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Ok(mut g) = self.listener.try_lock()
            && let Some(l) = g.take()
        {
            l.abort();
        }
    }
}
