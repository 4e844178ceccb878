//! Start-up, accept loop and shutdown of the relay.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wirekube_relay_proto::{ErrorCode, Frame, FrameCodec, PublicKey};

use crate::admission::{Admission, Refused};
use crate::config::RelayConfig;
use crate::metrics::Metrics;
use crate::shared::Shared;
use crate::stun::{StunLimits, StunSockets};
use crate::token::{TokenError, TokenStore};

/// Errors starting the relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A listener could not be bound.
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Requested address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The token could not be loaded.
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// A running relay. Dropping it does not stop it; call [`Relay::shutdown`].
pub struct Relay {
    /// Bound TCP relay address.
    pub tcp_addr: SocketAddr,
    /// Bound STUN addresses: `[ip0:port0, ip0:port1, ip1:port0, ip1:port1]`.
    pub stun_addrs: Vec<SocketAddr>,
    /// Bound HTTP address.
    pub http_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    /// Stops STUN and HTTP after connections have drained.
    stop: CancellationToken,
    conns: TaskTracker,
    background: JoinSet<()>,
}

fn bind_err(what: &'static str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> RelayError {
    move |source| RelayError::Bind { what, addr, source }
}

impl Relay {
    /// Binds every listener and starts serving.
    pub async fn start(cfg: RelayConfig) -> Result<Relay, RelayError> {
        let metrics = Arc::new(Metrics::new());
        let tokens = TokenStore::load(&cfg.token)?;
        let shutdown = CancellationToken::new();
        let stop = CancellationToken::new();
        tokens.spawn_watch(&cfg.token, cfg.token_poll_interval, stop.clone());

        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(bind_err("relay", cfg.listen))?;
        let tcp_addr = listener
            .local_addr()
            .map_err(bind_err("relay", cfg.listen))?;

        let mut background = JoinSet::new();
        let mut stun_addrs = Vec::new();
        if let Some(s) = &cfg.stun {
            let mut ips = vec![s.ip];
            ips.extend(s.alt_ip);
            let sockets = StunSockets::bind(&ips, [s.port, s.alt_port])
                .await
                .map_err(bind_err("stun", SocketAddr::new(s.ip, s.port)))?;
            stun_addrs = sockets.addrs();
            let limits = StunLimits::new(cfg.stun_rate, cfg.stun_burst, cfg.stun_total_rate);
            let mut set = sockets.spawn(metrics.clone(), limits, stop.clone());
            background.spawn(async move { while set.join_next().await.is_some() {} });
        }

        let mut http_addr = None;
        if let Some(addr) = cfg.metrics_listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(bind_err("metrics", addr))?;
            http_addr = Some(l.local_addr().map_err(bind_err("metrics", addr))?);
            background.spawn(crate::http::serve(
                l,
                metrics.clone(),
                tokens.clone(),
                shutdown.clone(),
                stop.clone(),
            ));
        }

        let shared = Arc::new(Shared::new(cfg, metrics, tokens, shutdown));
        let conns = TaskTracker::new();
        background.spawn(accept_loop(listener, shared.clone(), conns.clone()));
        tracing::info!(%tcp_addr, ?stun_addrs, ?http_addr, "relay started");
        Ok(Relay {
            tcp_addr,
            stun_addrs,
            http_addr,
            shared,
            stop,
            conns,
            background,
        })
    }

    /// Metrics of this relay.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Number of registered (authenticated) keys.
    pub fn registered(&self) -> usize {
        self.shared.registered()
    }

    /// Whether `key` is registered.
    pub fn is_registered(&self, key: &PublicKey) -> bool {
        self.shared.is_registered(key)
    }

    /// Stops accepting, tells every client the relay is shutting down (after flushing
    /// what is already queued for it), waits up to the drain timeout, then stops STUN and
    /// HTTP. /readyz turns unready as soon as this is called.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        self.conns.close();
        if tokio::time::timeout(self.shared.cfg.drain_timeout, self.conns.wait())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout; closing remaining connections");
        }
        self.stop.cancel();
        self.background.abort_all();
        while self.background.join_next().await.is_some() {}
        tracing::info!("relay stopped");
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, conns: TaskTracker) {
    let admission = Admission::new(&shared.cfg);
    loop {
        let (stream, addr) = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        shared.metrics.accepted.inc();
        match admission.admit(addr.ip()) {
            Ok(ticket) => {
                let shared = shared.clone();
                conns.spawn(crate::conn::serve(stream, addr, shared, ticket));
            }
            Err(why) => refuse(stream, why, &admission, &shared, &conns),
        }
    }
}

/// Refuses a connection that was not admitted: with an Error frame and a linger while
/// few refusals are under way, otherwise (and always for a source over its own limit)
/// with one non-blocking write and an immediate close, so refusing costs no lasting
/// resources however fast connections arrive.
fn refuse(
    stream: TcpStream,
    why: Refused,
    admission: &Admission,
    shared: &Shared,
    conns: &TaskTracker,
) {
    shared.metrics.auth_failure(why.reason());
    let (code, message) = match why {
        Refused::Source => (
            ErrorCode::RateLimited,
            "too many unauthenticated connections from this source",
        ),
        Refused::Full => (ErrorCode::ServerFull, "relay connection limit reached"),
    };
    tracing::debug!(reason = why.reason(), "connection refused");
    let polite = match why {
        Refused::Source => None,
        _ => admission.polite_refusal(),
    };
    match polite {
        Some(permit) => {
            conns.spawn(async move {
                crate::conn::refuse(Framed::new(stream, FrameCodec), code, message.into()).await;
                drop(permit);
            });
        }
        None => {
            if let Ok(b) = Frame::error(code, message).to_bytes() {
                let _ = stream.try_write(&b);
            }
        }
    }
}
