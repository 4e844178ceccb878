//! Shared server state and the HTTP listener (stoppable and restartable, state kept).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::auth::Tokens;
use super::store::Store;

/// State shared by the HTTP handlers and the controllers.
pub struct Shared {
    pub store: Mutex<Store>,
    pub tokens: Mutex<Tokens>,
    pub rbac: bool,
    pub fail_until: Mutex<Option<Instant>>,
    pub watch_epoch: tokio::sync::watch::Sender<u64>,
    pub bookmark_interval: Duration,
    pub server_url: Mutex<String>,
}

impl Shared {
    pub fn new(store: Store, rbac: bool, bookmark_interval: Duration) -> Self {
        Shared {
            store: Mutex::new(store),
            tokens: Mutex::new(Tokens::default()),
            rbac,
            fail_until: Mutex::new(None),
            watch_epoch: tokio::sync::watch::channel(0).0,
            bookmark_interval,
            server_url: Mutex::new(String::new()),
        }
    }

    /// Ends every open watch stream cleanly.
    pub fn drop_watches(&self) {
        self.watch_epoch.send_modify(|e| *e += 1);
    }
}

/// A running listener.
pub struct Listener {
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    pub async fn bind(shared: Arc<Shared>, addr: SocketAddr) -> std::io::Result<Listener> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, mut stop_rx) = tokio::sync::oneshot::channel();
        let app = super::http::router(shared);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    r = listener.accept() => {
                        let Ok((sock, _)) = r else { continue };
                        let _ = sock.set_nodelay(true);
                        let svc = TowerToHyperService::new(app.clone());
                        conns.spawn(async move {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(sock), svc)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    _ = &mut stop_rx => break,
                }
            }
            conns.abort_all();
            while conns.join_next().await.is_some() {}
        });
        Ok(Listener { addr, stop, task })
    }

    /// Aborts the listener task (its connections are dropped with it).
    pub fn abort(self) {
        self.task.abort();
    }

    /// Closes the listener and every open connection.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
