//! Admission of accepted TCP connections, before anyone knows who is on the other end.
//!
//! Any host that can reach the relay port can open connections, so connections that have
//! not authenticated yet are limited three ways: per source (IPv4 address or IPv6 /64,
//! see [`crate::ratelimit::source_key`]), all sources together (the unauthenticated
//! budget, at most half of `max_connections`, so the other half can only be taken by
//! connections that proved their key), and by `max_connections` for everything. A
//! connection gives back its unauthenticated permits as soon as it authenticates.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::RelayConfig;
use crate::ratelimit::source_key;

/// Concurrent refusals that get an Error frame and a linger; beyond this a refused
/// connection is closed at once (a flood of refusals must not pin sockets).
const POLITE_REFUSALS: usize = 64;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The source already has its maximum of unauthenticated connections.
    Source,
    /// The unauthenticated budget of the whole relay is used up.
    Unauthenticated,
    /// `max_connections` reached.
    Full,
}

impl Refused {
    /// Metric label (listed in `AUTH_FAILURE_REASONS`).
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Source => "source_limit",
            Refused::Unauthenticated => "unauthenticated_full",
            Refused::Full => "server_full",
        }
    }
}

pub(crate) struct Admission {
    total: Arc<Semaphore>,
    unauthenticated: Arc<Semaphore>,
    per_source_cap: usize,
    per_source: Mutex<HashMap<IpAddr, usize>>,
    polite: Arc<Semaphore>,
}

/// What an admitted connection holds until it ends.
pub(crate) struct Ticket {
    _total: OwnedSemaphorePermit,
    pending: Option<Pending>,
}

/// The unauthenticated part of a ticket.
struct Pending {
    _permit: OwnedSemaphorePermit,
    source: IpAddr,
    admission: Arc<Admission>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut map = self.admission.lock();
        if let Some(n) = map.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.source);
            }
        }
    }
}

impl Ticket {
    /// The connection authenticated: it no longer counts as unauthenticated.
    pub fn authenticated(&mut self) {
        self.pending = None;
    }
}

impl Admission {
    pub fn new(cfg: &RelayConfig) -> Arc<Self> {
        let total = cfg.max_connections.max(1);
        let unauthenticated = cfg.max_unauthenticated.min(total / 2).max(1);
        Arc::new(Self {
            total: Arc::new(Semaphore::new(total)),
            unauthenticated: Arc::new(Semaphore::new(unauthenticated)),
            per_source_cap: cfg.max_unauthenticated_per_source.max(1),
            per_source: Mutex::new(HashMap::new()),
            polite: Arc::new(Semaphore::new(POLITE_REFUSALS)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_source.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new connection from `ip` as unauthenticated, or says why not. The map
    /// holds only sources with live unauthenticated connections, so it is bounded by the
    /// unauthenticated budget.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refused> {
        let source = source_key(ip);
        let mut map = self.lock();
        let n = map.get(&source).copied().unwrap_or(0);
        if n >= self.per_source_cap {
            return Err(Refused::Source);
        }
        let permit = self
            .unauthenticated
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Unauthenticated)?;
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Full)?;
        map.insert(source, n + 1);
        drop(map);
        Ok(Ticket {
            _total: total,
            pending: Some(Pending {
                _permit: permit,
                source,
                admission: self.clone(),
            }),
        })
    }

    /// A permit to refuse politely (Error frame, then linger), if not too many refusals
    /// are already under way.
    pub fn polite_refusal(&self) -> Option<OwnedSemaphorePermit> {
        self.polite.clone().try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::TokenSource;

    fn admission(max: usize, unauth: usize, per_source: usize) -> Arc<Admission> {
        let mut c = RelayConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            TokenSource::Static(b"t".to_vec()),
        );
        c.max_connections = max;
        c.max_unauthenticated = unauth;
        c.max_unauthenticated_per_source = per_source;
        Admission::new(&c)
    }

    #[test]
    fn limits_per_source_budget_and_total() {
        let a = admission(10, 100, 2);
        let x: IpAddr = "10.0.0.1".parse().unwrap();
        let y: IpAddr = "10.0.0.2".parse().unwrap();
        let mut x1 = a.admit(x).unwrap();
        let _x2 = a.admit(x).unwrap();
        assert_eq!(a.admit(x).err(), Some(Refused::Source));
        // Authenticating frees the source's slot but keeps the connection slot.
        x1.authenticated();
        let _x3 = a.admit(x).unwrap();
        // The unauthenticated budget is capped at half of max_connections (5).
        let _ys: Vec<_> = (0..2).map(|_| a.admit(y).unwrap()).collect();
        let z: IpAddr = "10.0.0.3".parse().unwrap();
        let _z1 = a.admit(z).unwrap();
        assert_eq!(a.admit(z).err(), Some(Refused::Unauthenticated));
        drop(_ys);
        assert!(a.lock().get(&y).is_none(), "finished sources are forgotten");
    }

    #[test]
    fn authenticated_connections_fill_the_rest() {
        let a = admission(4, 100, 8);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut t = a.admit(ip).unwrap();
            t.authenticated();
            held.push(t);
        }
        assert_eq!(a.admit(ip).err(), Some(Refused::Full));
        assert!(a.lock().is_empty());
    }
}
