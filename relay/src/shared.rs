//! State shared by all connections: the key → connection table and forwarding.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;
use wirekube_relay_proto::PublicKey;

use crate::config::RelayConfig;
use crate::metrics::Metrics;
use crate::outbox::{Budget, Caps, Outbox};
use crate::ratelimit::RateLimiter;
use crate::replay::ReplayCache;
use crate::token::TokenStore;

/// Successful logins whose proofs are remembered to recognise replays.
const REPLAY_MEMORY: usize = 4096;

/// A registered, authenticated connection.
pub(crate) struct Peer {
    pub id: u64,
    pub outbox: Arc<Outbox>,
    pub kick: CancellationToken,
}

pub(crate) struct Shared {
    pub cfg: RelayConfig,
    pub metrics: Arc<Metrics>,
    pub tokens: TokenStore,
    pub limiter: RateLimiter,
    pub replays: ReplayCache,
    pub shutdown: CancellationToken,
    /// Bytes all outboxes together may hold.
    pub budget: Arc<Budget>,
    peers: RwLock<HashMap<PublicKey, Peer>>,
    next_id: AtomicU64,
}

impl Shared {
    pub fn new(
        cfg: RelayConfig,
        metrics: Arc<Metrics>,
        tokens: TokenStore,
        shutdown: CancellationToken,
    ) -> Self {
        let limiter = RateLimiter::new(cfg.registration_rate, cfg.registration_burst);
        let budget = Arc::new(Budget::new(
            cfg.total_queue_bytes,
            metrics.queued_bytes.clone(),
        ));
        Self {
            budget,
            cfg,
            metrics,
            tokens,
            limiter,
            replays: ReplayCache::new(REPLAY_MEMORY),
            shutdown,
            peers: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// A new send queue for an authenticated connection.
    pub fn outbox(&self) -> Arc<Outbox> {
        let caps = Caps {
            frames: self.cfg.queue_depth,
            bytes: self.cfg.queue_bytes,
        };
        Arc::new(Outbox::new(caps, self.budget.clone()))
    }

    /// Registers an authenticated connection, kicking any older one with the same key.
    /// Returns the id to deregister with.
    pub fn register(&self, key: PublicKey, mut peer: Peer) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        peer.id = id;
        let old = self
            .peers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, peer);
        self.metrics.connections.inc();
        if let Some(old) = old {
            old.kick.cancel();
        }
        id
    }

    /// Removes the entry for `key` if it still belongs to connection `id` (a newer
    /// connection may have replaced it).
    pub fn deregister(&self, key: &PublicKey, id: u64) {
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        if peers.get(key).is_some_and(|p| p.id == id) {
            peers.remove(key);
        }
        self.metrics.connections.dec();
    }

    /// Number of registered keys.
    pub fn registered(&self) -> usize {
        self.peers.read().map(|p| p.len()).unwrap_or(0)
    }

    /// Whether `key` has a registered connection.
    pub fn is_registered(&self, key: &PublicKey) -> bool {
        self.peers
            .read()
            .map(|p| p.contains_key(key))
            .unwrap_or(false)
    }

    /// The outbox of the connection registered for `dest`.
    pub fn lookup(&self, dest: &PublicKey) -> Option<Arc<Outbox>> {
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        peers.get(dest).map(|p| p.outbox.clone())
    }
}
