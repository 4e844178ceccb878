//! Spec writes that only record what a node already does, written later.
//!
//! After a handshake with a peer behind a symmetric NAT, the node reports the address its
//! WireGuard saw the peer's packets come from (a `prflx` candidate), and the plan then names
//! that address as the node's endpoint for the peer. WireGuard has already roamed to it: the
//! write changes nothing on the node, it only keeps the address for a restart. In the 50-node
//! start-up these were a quarter of the spec writes (the passes 6-9 s after the agents
//! started wrote 43 specs whose only change was such an endpoint), and they queued in the API
//! server beside the agents' reports of the paths the start-up waits for
//! (docs/benchmarks.md). So such a write waits [`RECORD_DELAY`] from when a pass first
//! found it, or goes out at once with the next change of that node that does matter.
//!
//! Pure: [`records_only`] decides what a write is, [`split`] which writes wait, given when
//! each waiting node was first seen; [`Deferrals`] keeps those times between passes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use wirekube_crds::{ActualPath, PeerEntry, WireKubePeer, WireKubePeerSpec};

use crate::decide::PeerWrite;

/// How long a write that only records endpoints in use waits. Long enough to stay out of a
/// large start-up's burst of writes (about 10-15 s at 50 nodes on two cores), short enough
/// that a restarted agent rarely misses the address.
pub const RECORD_DELAY: Duration = Duration::from_secs(15);

/// Whether writing `spec` over the stored peer changes only endpoints of peer entries, each
/// to the address the node itself reports as the endpoint of its `Direct` connection to
/// that peer. `changes` are the write's [`crate::spec_changes::spec_changes`], computed once
/// by the caller: anything but `peers.endpoint` (other fields, entries added or removed)
/// makes it a write that matters, and so do entries reordered, an endpoint removed, or one
/// the node does not report using.
pub fn records_only(stored: &WireKubePeer, spec: &WireKubePeerSpec, changes: &[&str]) -> bool {
    let old = &stored.spec;
    // Given `changes`, an entry that differs from the stored one of the same name differs in
    // its endpoint only; comparing in order also refuses a reordering.
    changes == ["peers.endpoint"]
        && old.peers.len() == spec.peers.len()
        && (old.peers.iter().zip(&spec.peers))
            .all(|(o, n)| o == n || (o.name == n.name && endpoint_in_use(stored, n)))
}

/// The node reports `n`'s endpoint as the one of its `Direct` connection to that peer.
fn endpoint_in_use(stored: &WireKubePeer, n: &PeerEntry) -> bool {
    let Some(new_ep) = n.endpoint.as_deref() else {
        return false;
    };
    stored.status.as_ref().is_some_and(|st| {
        st.connections.iter().any(|c| {
            c.name == n.name
                && c.path == ActualPath::Direct
                && c.endpoint.as_deref() == Some(new_ep)
        })
    })
}

/// What [`split`] held back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub count: usize,
    /// When the first held write falls due.
    pub wake: Option<Instant>,
}

/// The writes to make now; the records-only ones wait `delay` ([`RECORD_DELAY`]) from when
/// `since` first saw them. `since` is updated: a node enters on its first records-only write and
/// leaves when its write is no longer records-only or no longer needed.
pub fn split(
    writes: Vec<PeerWrite>,
    since: &mut BTreeMap<String, Instant>,
    now: Instant,
    delay: Duration,
) -> (Vec<PeerWrite>, Held) {
    let waiting: BTreeSet<&str> = (writes.iter())
        .filter(|w| w.records_only)
        .map(|w| w.node.as_str())
        .collect();
    since.retain(|node, _| waiting.contains(node.as_str()));
    let mut held = Held::default();
    let mut now_writes = Vec::with_capacity(writes.len());
    for w in writes {
        if w.records_only {
            let due = *since.entry(w.node.clone()).or_insert(now) + delay;
            if due > now {
                held.count += 1;
                held.wake = Some(held.wake.map_or(due, |t| t.min(due)));
                continue;
            }
        }
        now_writes.push(w);
    }
    (now_writes, held)
}

/// The first-seen times of the waiting writes per mesh, kept across passes (an operator that
/// restarts or takes over the lease starts afresh: its first pass holds them again).
#[derive(Debug)]
pub struct Deferrals {
    delay: Duration,
    since: Mutex<BTreeMap<String, BTreeMap<String, Instant>>>,
}

impl Deferrals {
    pub fn new(delay: Duration) -> Self {
        Deferrals {
            delay,
            since: Mutex::default(),
        }
    }

    /// [`split`] against the times kept for `mesh`.
    pub fn split(
        &self,
        mesh: &str,
        writes: Vec<PeerWrite>,
        now: Instant,
    ) -> (Vec<PeerWrite>, Held) {
        let mut meshes = self.since.lock().unwrap_or_else(|p| p.into_inner());
        let since = meshes.entry(mesh.to_owned()).or_default();
        let out = split(writes, since, now, self.delay);
        if since.is_empty() {
            meshes.remove(mesh);
        }
        out
    }

    /// The writes of `mesh` still waiting at `now` (those due by then were handed out).
    pub fn held(&self, mesh: &str, now: Instant) -> Held {
        let meshes = self.since.lock().unwrap_or_else(|p| p.into_inner());
        let dues = (meshes.get(mesh).into_iter())
            .flat_map(|m| m.values())
            .map(|t| *t + self.delay)
            .filter(|due| *due > now);
        dues.fold(Held::default(), |h, due| Held {
            count: h.count + 1,
            wake: Some(h.wake.map_or(due, |t| t.min(due))),
        })
    }
}

#[cfg(test)]
#[path = "deferral_tests.rs"]
mod tests;
