//! Kubernetes I/O: watches (never polls) the node's own WireKubePeer and the relay token
//! Secret, and server-side-applies the status subresource.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use wirekube_crds::{AGENT_MANAGER, WireKubePeer, WireKubePeerStatus};
use wirekube_kubeclient::WatchRetry;

use crate::status::apply_body;

/// Key of the token inside the relay Secret (the operator writes it, the relay reads it).
pub const TOKEN_KEY: &str = "token";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("patch status of WireKubePeer {name}: {source}")]
    Patch { name: String, source: kube::Error },
}

/// Watches one object by name and publishes its latest version (`None` when it is absent or
/// deleted) into a watch channel. Errors are retried by the watcher's default backoff, so
/// the API server going away only pauses updates: the dataplane keeps running.
/// How long the API server keeps one watch open (`timeoutSeconds`); 5 s after that the client
/// gives up on a silent one and watches again. A watch whose TCP connection died silently (this
/// node's NAT came back on a new public address) stayed blind to spec changes for kube's
/// default 295 s otherwise; the client's TCP keepalive (`wirekube_kubeclient`) now notices such
/// a connection within 5 s, and this bound stays for a proxy in front of the API server that
/// keeps its own leg alive. Cost: one watch request per watched object per 30 s when nothing
/// changes.
const WATCH_TIMEOUT_SECS: u32 = 30;

fn watch_named<K>(
    api: Api<K>,
    name: String,
    tx: watch::Sender<Option<Arc<K>>>,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    tokio::spawn(async move {
        let cfg = watcher::Config::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(WATCH_TIMEOUT_SECS);
        let mut stream = watcher::watcher(api, cfg)
            .backoff(WATCH_RETRY.backoff())
            .boxed();
        // Objects seen during a (re)list; absent after InitDone means deleted meanwhile.
        let mut init_seen = false;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(Event::Apply(o)) => {
                    tx.send_replace(Some(Arc::new(o)));
                }
                Ok(Event::Delete(_)) => {
                    tx.send_replace(None);
                }
                Ok(Event::Init) => init_seen = false,
                Ok(Event::InitApply(o)) => {
                    init_seen = true;
                    tx.send_replace(Some(Arc::new(o)));
                }
                Ok(Event::InitDone) => {
                    // Start-up timing: on a fresh node the first list waits for the API
                    // server's Service to be routed (docs/benchmarks.md, issue 16).
                    tracing::info!(object = %name, found = init_seen, "watch listed");
                    if !init_seen {
                        tx.send_replace(None);
                    }
                }
                Err(e) => tracing::warn!(object = %name, error = %e, "watch error (retrying)"),
            }
        }
    })
}

/// How a failed watch retries: from 200 ms (kube's default 800 ms cost a fresh agent 3-5 s
/// before it saw its WireKubePeer), doubling to 30 s as kube's default, since a large cluster
/// whose API server comes back must not be hammered by every agent; +0-50 % jitter per agent,
/// reset after 120 s without an error.
pub const WATCH_RETRY: WatchRetry = WatchRetry {
    first: Duration::from_millis(200),
    max: Duration::from_secs(30),
    reset: Duration::from_secs(120),
};

/// Starts the watch on this node's WireKubePeer.
pub fn watch_peer(
    client: kube::Client,
    node: &str,
) -> (
    watch::Receiver<Option<Arc<WireKubePeer>>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = watch::channel(None);
    let h = watch_named(Api::<WireKubePeer>::all(client), node.to_string(), tx);
    (rx, h)
}

/// Watches the relay token Secret `name` in `namespace`; publishes the trimmed token.
pub struct TokenWatch {
    pub name: Option<String>,
    task: Option<tokio::task::JoinHandle<()>>,
    secret_rx: watch::Receiver<Option<Arc<Secret>>>,
    secret_tx: watch::Sender<Option<Arc<Secret>>>,
}

impl TokenWatch {
    pub fn new() -> Self {
        let (secret_tx, secret_rx) = watch::channel(None);
        Self {
            name: None,
            task: None,
            secret_rx,
            secret_tx,
        }
    }

    /// (Re)targets the watch when the spec names another Secret.
    pub fn set(&mut self, client: &kube::Client, namespace: &str, name: Option<&str>) {
        if self.name.as_deref() == name {
            return;
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
        self.secret_tx.send_replace(None);
        self.name = name.map(str::to_string);
        if let Some(n) = name {
            let api = Api::<Secret>::namespaced(client.clone(), namespace);
            self.task = Some(watch_named(api, n.to_string(), self.secret_tx.clone()));
        }
    }

    pub fn changed(&mut self) -> &mut watch::Receiver<Option<Arc<Secret>>> {
        &mut self.secret_rx
    }

    /// The current token, if the Secret exists and has a non-empty `token` key.
    pub fn token(&self) -> Option<Vec<u8>> {
        token_of(self.secret_rx.borrow().as_deref()?)
    }
}

impl Default for TokenWatch {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TokenWatch {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// The token bytes of a Secret, whitespace-trimmed like the relay does.
pub fn token_of(s: &Secret) -> Option<Vec<u8>> {
    let raw = s.data.as_ref()?.get(TOKEN_KEY)?;
    let t = raw.0.trim_ascii();
    (!t.is_empty()).then(|| t.to_vec())
}

/// Server-side apply of the status subresource with the agent's field manager. `force`
/// because the agent is the only writer of this status by contract.
pub async fn patch_status(
    client: &kube::Client,
    name: &str,
    status: &WireKubePeerStatus,
) -> Result<(), KubeError> {
    let api = Api::<WireKubePeer>::all(client.clone());
    let pp = PatchParams::apply(AGENT_MANAGER).force();
    api.patch_status(name, &pp, &Patch::Apply(apply_body(name, status)))
        .await
        .map(|_| ())
        .map_err(|source| KubeError::Patch {
            name: name.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn token_is_trimmed_and_empty_is_none() {
        let mut s = Secret::default();
        assert_eq!(token_of(&s), None);
        s.data = Some([(TOKEN_KEY.to_string(), ByteString(b" abc\n".to_vec()))].into());
        assert_eq!(token_of(&s), Some(b"abc".to_vec()));
        s.data = Some([(TOKEN_KEY.to_string(), ByteString(b"\n".to_vec()))].into());
        assert_eq!(token_of(&s), None);
    }
}
