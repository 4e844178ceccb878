//! Recently accepted Auth proofs, so a replayed Auth frame can be told apart from a
//! wrong key.
//!
//! Every proof binds the relay's fresh per-connection challenge, so a replay never
//! verifies. Without this memory it would only be reported as a bad proof; remembering
//! the MACs of the last successful logins lets the relay say "replayed" when a failing
//! proof is byte-identical to one it accepted before. An honest client cannot produce a
//! colliding MAC (it is a 256-bit keyed hash of a fresh challenge).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// The remembered MACs, and their insertion order for eviction.
type Seen = (HashSet<[u8; 32]>, VecDeque<[u8; 32]>);

pub(crate) struct ReplayCache {
    inner: Mutex<Seen>,
    cap: usize,
}

impl ReplayCache {
    /// Remembers up to `cap` proofs (oldest forgotten first).
    pub fn new(cap: usize) -> Self {
        Self {
            inner: Mutex::new((HashSet::new(), VecDeque::new())),
            cap: cap.max(1),
        }
    }

    /// Records the MAC of a successful login.
    pub fn remember(&self, mac: [u8; 32]) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (set, order) = &mut *g;
        if !set.insert(mac) {
            return;
        }
        order.push_back(mac);
        if order.len() > self.cap
            && let Some(old) = order.pop_front()
        {
            set.remove(&old);
        }
    }

    /// Whether `mac` is the proof of a recent successful login.
    pub fn seen(&self, mac: &[u8; 32]) -> bool {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.0.contains(mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_recent_and_forgets_oldest() {
        let c = ReplayCache::new(2);
        c.remember([1; 32]);
        c.remember([2; 32]);
        c.remember([2; 32]);
        assert!(c.seen(&[1; 32]) && c.seen(&[2; 32]));
        c.remember([3; 32]);
        assert!(!c.seen(&[1; 32]));
        assert!(c.seen(&[2; 32]) && c.seen(&[3; 32]));
    }
}
