//! Admission of accepted TCP connections, before anyone knows who is on the other end.
//!
//! Any host that can reach the relay port can open connections, so connections that have
//! not authenticated yet are limited three ways: per source (IPv4 address or IPv6 /64,
//! see [`crate::ratelimit::source_key`]), all sources together (the unauthenticated
//! budget, at most half of `max_connections`, so the other half can only be taken by
//! connections that proved their key), and by `max_connections` for everything. A
//! connection gives back its unauthenticated share as soon as it authenticates.
//!
//! When the unauthenticated budget is full, the oldest unauthenticated connection is
//! evicted to make room instead of refusing the newcomer. An honest handshake takes a
//! round trip or two, so to keep an agent out a flood from many hosts must now open the
//! whole budget's worth of connections within that time, not merely within the
//! first-frame deadline.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

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
    /// `max_connections` reached.
    Full,
}

impl Refused {
    /// Metric label (listed in `AUTH_FAILURE_REASONS`).
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Source => "source_limit",
            Refused::Full => "server_full",
        }
    }
}

/// One unauthenticated connection.
struct Slot {
    source: IpAddr,
    /// Fired when the connection is evicted.
    evict: CancellationToken,
    /// Already subtracted from the counts (authenticated, ended or evicted).
    gone: AtomicBool,
}

#[derive(Default)]
struct State {
    per_source: HashMap<IpAddr, usize>,
    unauthenticated: usize,
    /// Unauthenticated connections, oldest first; entries that are `gone` are skipped
    /// (and pruned when the queue grows past twice the budget).
    order: VecDeque<Arc<Slot>>,
}

pub(crate) struct Admission {
    total: Arc<Semaphore>,
    budget: usize,
    per_source_cap: usize,
    state: Mutex<State>,
    polite: Arc<Semaphore>,
}

/// What an admitted connection holds until it ends.
pub(crate) struct Ticket {
    _total: OwnedSemaphorePermit,
    pending: Option<Pending>,
    evict: CancellationToken,
}

/// The unauthenticated part of a ticket.
struct Pending {
    slot: Arc<Slot>,
    admission: Arc<Admission>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut s = self.admission.lock();
        forget(&mut s, &self.slot);
    }
}

/// Subtracts `slot` from the counts once.
fn forget(s: &mut State, slot: &Slot) {
    if slot.gone.swap(true, Ordering::AcqRel) {
        return;
    }
    s.unauthenticated -= 1;
    if let Some(n) = s.per_source.get_mut(&slot.source) {
        *n -= 1;
        if *n == 0 {
            s.per_source.remove(&slot.source);
        }
    }
}

impl Ticket {
    /// The connection authenticated: it no longer counts as unauthenticated (and can no
    /// longer be evicted).
    pub fn authenticated(&mut self) {
        self.pending = None;
    }

    /// Fires if the connection is evicted before it authenticates.
    pub fn evicted(&self) -> &CancellationToken {
        &self.evict
    }
}

impl Admission {
    pub fn new(cfg: &RelayConfig) -> Arc<Self> {
        let total = cfg.max_connections.max(1);
        Arc::new(Self {
            total: Arc::new(Semaphore::new(total)),
            budget: cfg.max_unauthenticated.min(total / 2).max(1),
            per_source_cap: cfg.max_unauthenticated_per_source.max(1),
            state: Mutex::new(State::default()),
            polite: Arc::new(Semaphore::new(POLITE_REFUSALS)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new connection from `ip` as unauthenticated (evicting the oldest
    /// unauthenticated connection if the budget is full), or says why not. The maps hold
    /// only live unauthenticated connections (plus at most a budget's worth of stale
    /// queue entries), so they are bounded by the budget.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refused> {
        let source = source_key(ip);
        let mut s = self.lock();
        let n = s.per_source.get(&source).copied().unwrap_or(0);
        if n >= self.per_source_cap {
            return Err(Refused::Source);
        }
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Full)?;
        if s.unauthenticated >= self.budget {
            evict_oldest(&mut s);
        }
        if s.order.len() >= 2 * self.budget {
            s.order.retain(|x| !x.gone.load(Ordering::Acquire));
        }
        let slot = Arc::new(Slot {
            source,
            evict: CancellationToken::new(),
            gone: AtomicBool::new(false),
        });
        *s.per_source.entry(source).or_insert(0) += 1;
        s.unauthenticated += 1;
        s.order.push_back(slot.clone());
        drop(s);
        Ok(Ticket {
            _total: total,
            evict: slot.evict.clone(),
            pending: Some(Pending {
                slot,
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

fn evict_oldest(s: &mut State) {
    while let Some(victim) = s.order.pop_front() {
        if !victim.gone.load(Ordering::Acquire) {
            forget(s, &victim);
            victim.evict.cancel();
            return;
        }
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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_source_limit_frees_on_authentication() {
        let a = admission(10, 100, 2);
        let x = ip("10.0.0.1");
        let mut x1 = a.admit(x).unwrap();
        let _x2 = a.admit(x).unwrap();
        assert_eq!(a.admit(x).err(), Some(Refused::Source));
        // Authenticating frees the source's slot but keeps the connection slot.
        x1.authenticated();
        let _x3 = a.admit(x).unwrap();
        assert_eq!(a.lock().unauthenticated, 2);
    }

    #[test]
    fn a_full_budget_evicts_the_oldest_unauthenticated() {
        // Budget: half of max_connections = 3.
        let a = admission(6, 100, 8);
        let mut t: Vec<Ticket> = (1..=3)
            .map(|i| a.admit(ip(&format!("10.0.0.{i}"))).unwrap())
            .collect();
        t[0].authenticated();
        let fourth = a.admit(ip("10.0.0.4")).unwrap();
        assert!(
            t.iter().all(|x| !x.evicted().is_cancelled()),
            "room was freed"
        );
        let fifth = a.admit(ip("10.0.0.5")).unwrap();
        assert!(
            t[1].evicted().is_cancelled(),
            "oldest unauthenticated evicted"
        );
        assert!(
            !t[0].evicted().is_cancelled(),
            "authenticated never evicted"
        );
        assert!(!t[2].evicted().is_cancelled() && !fourth.evicted().is_cancelled());
        assert_eq!(a.lock().unauthenticated, 3);
        // The evicted connection ending later does not count twice.
        drop(t.remove(1));
        assert_eq!(a.lock().unauthenticated, 3);
        drop((t, fourth, fifth));
        let s = a.lock();
        assert_eq!((s.unauthenticated, s.per_source.len()), (0, 0));
    }

    #[test]
    fn authenticated_connections_fill_the_rest() {
        let a = admission(4, 100, 8);
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut t = a.admit(ip("10.0.0.1")).unwrap();
            t.authenticated();
            held.push(t);
        }
        assert_eq!(a.admit(ip("10.0.0.1")).err(), Some(Refused::Full));
        assert!(a.lock().per_source.is_empty());
    }

    #[test]
    fn stale_queue_entries_are_pruned() {
        let a = admission(100, 100, 1000);
        for _ in 0..1000 {
            let mut t = a.admit(ip("10.0.0.1")).unwrap();
            t.authenticated();
        }
        assert!(a.lock().order.len() <= 100);
    }
}
