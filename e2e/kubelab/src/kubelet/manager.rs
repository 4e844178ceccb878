//! The pod manager: watches the pods bound to this node and runs one worker per pod.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Ctx;
use super::pod::Msg;
use super::worker;

struct Worker {
    tx: mpsc::UnboundedSender<Msg>,
    handle: JoinHandle<()>,
}

/// Workers by pod uid, and uids whose worker already finished (never started again).
#[derive(Default)]
struct Pods {
    workers: HashMap<String, Worker>,
    done: HashSet<String>,
    listing: Option<HashSet<String>>,
}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

impl Pods {
    fn handle(&mut self, ctx: &Arc<Ctx>, ev: Event<Pod>) {
        match ev {
            Event::Init => self.listing = Some(HashSet::new()),
            Event::InitApply(p) => {
                if let Some(l) = &mut self.listing {
                    l.insert(uid_of(&p));
                }
                self.apply(ctx, p);
            }
            Event::Apply(p) => self.apply(ctx, p),
            Event::Delete(p) => self.gone(&uid_of(&p)),
            Event::InitDone => {
                let Some(seen) = self.listing.take() else {
                    return;
                };
                let missing: Vec<String> = self
                    .workers
                    .keys()
                    .filter(|u| !seen.contains(*u))
                    .cloned()
                    .collect();
                for uid in missing {
                    self.gone(&uid);
                }
                self.done.retain(|u| seen.contains(u));
            }
        }
    }

    fn apply(&mut self, ctx: &Arc<Ctx>, pod: Pod) {
        let uid = uid_of(&pod);
        if uid.is_empty() || self.done.contains(&uid) {
            return;
        }
        if let Some(w) = self.workers.get(&uid) {
            let _ = w.tx.send(Msg::Update(Box::new(pod)));
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(worker::run(ctx.clone(), pod, rx));
        self.workers.insert(uid, Worker { tx, handle });
    }

    fn gone(&mut self, uid: &str) {
        if let Some(w) = self.workers.get(uid) {
            let _ = w.tx.send(Msg::Gone);
        }
    }

    fn reap(&mut self) {
        let finished: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| w.handle.is_finished())
            .map(|(u, _)| u.clone())
            .collect();
        for uid in finished {
            self.workers.remove(&uid);
            self.done.insert(uid);
        }
    }

    async fn shutdown(self) {
        for w in self.workers.values() {
            let _ = w.tx.send(Msg::Shutdown);
        }
        for (_, w) in self.workers {
            let _ = w.handle.await;
        }
    }
}

/// Watches this node's pods until `shutdown`, then stops every pod and returns.
pub async fn run(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node));
    let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
    let mut pods = Pods::default();
    let mut reap = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = reap.tick() => pods.reap(),
            ev = stream.next() => match ev {
                Some(Ok(ev)) => pods.handle(&ctx, ev),
                Some(Err(e)) => warn!(error = %e, "pod watch failed; retrying"),
                None => break,
            },
        }
        pods.reap();
    }
    info!(pods = pods.workers.len(), "stopping all pods");
    pods.shutdown().await;
}
