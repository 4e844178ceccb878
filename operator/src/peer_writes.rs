//! Writing one pass's peers. Every write stands alone: one the API server refuses (an
//! admission policy, a quota, an object grown too large, a conflict) never keeps the others
//! from being written. Failures are collected for the caller to report (log, metric, the
//! mesh's `PeersWritten` condition) and retry.
//!
//! A pass's writes take seconds on a loaded API server (50 nodes: 2-3 s), and a status that
//! arrives meanwhile used to wait for the next pass, which then rewrote every spec once more.
//! So the pass decides again from the caches while it writes ([`WriteQueue::refresh`], at
//! most every [`REFRESH_EVERY`]): a node not yet written this pass is written with the newest
//! plan; one already written keeps its write until the next pass (one write per node per
//! pass, so the writes do not multiply).

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tracing::{Instrument, info_span, warn};

use crate::apply::Writer;
use crate::decide::{MeshChanges, PeerWrite};
use crate::diff::DesiredPeer;
use crate::error::Error;

/// Peer writes in flight at once during one reconcile.
const PARALLEL_WRITES: usize = 16;

/// Least time between two decisions within one pass; also at least four times the last
/// decision's own duration, so that a large mesh's planning (O(N²)) stays a small share of
/// a pass.
pub const REFRESH_EVERY: Duration = Duration::from_millis(250);

/// The writes of one pass still to be handed out, and the nodes already handed out.
#[derive(Debug, Default)]
pub struct WriteQueue {
    pending: VecDeque<PeerWrite>,
    handed_out: BTreeSet<String>,
    /// The spec fields of every write handed out, for the reconcile's log line.
    changes: Vec<Vec<&'static str>>,
}

impl WriteQueue {
    pub fn new(writes: Vec<PeerWrite>) -> Self {
        WriteQueue {
            pending: writes.into(),
            ..WriteQueue::default()
        }
    }

    /// The next write, if any; its node is not handed out again in this pass.
    pub fn next_write(&mut self) -> Option<PeerWrite> {
        let w = self.pending.pop_front()?;
        self.handed_out.insert(w.node.clone());
        self.changes.push(w.changes.clone());
        Some(w)
    }

    /// Replaces what is still to be written with a newer decision's writes: in its order,
    /// except the nodes already handed out in this pass (their stored peer may not be in
    /// the cache yet, and the next pass writes them if they still differ). A node the newer
    /// decision no longer writes drops out; one it newly writes joins.
    pub fn refresh(&mut self, newer: Vec<PeerWrite>) {
        self.pending = (newer.into_iter())
            .filter(|w| !self.handed_out.contains(&w.node))
            .collect();
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The spec fields of the writes handed out so far.
    pub fn changes(&self) -> impl Iterator<Item = &[&'static str]> {
        self.changes.iter().map(Vec::as_slice)
    }
}

/// Whether to decide again now, given when the last decision was made and how long it took.
pub fn refresh_due(now: Instant, last: Instant, last_took: Duration) -> bool {
    now.duration_since(last) >= REFRESH_EVERY.max(last_took * 4)
}

/// One write that failed.
#[derive(Debug)]
pub struct PeerFailure {
    pub node: String,
    pub error: Error,
}

/// What one pass wrote.
#[derive(Debug, Default)]
pub struct PassWrites {
    /// How often the pass decided again while writing, and the spec fields written.
    pub refreshes: usize,
    pub changes: String,
    /// The events of the decisions made while writing, in order (with repeats).
    pub later_events: Vec<crate::diff::Decision>,
    /// Peers applied (attempted), including failed ones.
    pub applied: usize,
    /// Peers deleted (attempted): their node left the mesh.
    pub removed: Vec<String>,
    /// Failed writes, sorted by node.
    pub failures: Vec<PeerFailure>,
}

impl PassWrites {
    /// `(node, error)` texts for the `PeersWritten` condition.
    pub fn failure_texts(&self) -> Vec<(String, String)> {
        self.failures
            .iter()
            .map(|f| (f.node.clone(), f.error.to_string()))
            .collect()
    }

    /// The pass's outcome as one error, if any write failed; a lost leadership comes first,
    /// as is (nothing more may be written).
    pub fn into_error(mut self) -> Option<Error> {
        if let Some(i) = (self.failures.iter()).position(|f| matches!(f.error, Error::NotLeader(_)))
        {
            return Some(self.failures.swap_remove(i).error);
        }
        let nodes = (self.failures.iter().map(|f| f.node.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let failed = self.failures.len();
        let attempted = self.applied + self.removed.len();
        let first = self.failures.into_iter().next()?;
        Some(Error::PeerWrites {
            failed,
            attempted,
            nodes,
            first: Box::new(first.error),
        })
    }
}

/// Applies `writes` and deletes `deletes` (the decisions of [`crate::decide::mesh`]).
/// `redecide` decides again from the caches (None: it could not); the newest decision it
/// returned, if any, is returned with the writes for the mesh status (its writes and events
/// moved out: they are in the queue and in [`PassWrites::later_events`]).
pub async fn write_peers(
    w: &Writer,
    mesh: &str,
    writes: Vec<PeerWrite>,
    deletes: &[String],
    mut redecide: impl FnMut() -> Option<MeshChanges> + Send,
) -> (PassWrites, Option<MeshChanges>) {
    let mut out = PassWrites {
        removed: deletes.to_vec(),
        ..PassWrites::default()
    };
    let mut queue = WriteQueue::new(writes);
    let mut newest = None;
    let (mut decided_at, mut decide_took) = (Instant::now(), Duration::ZERO);
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < PARALLEL_WRITES {
            let now = Instant::now();
            if !in_flight.is_empty() && refresh_due(now, decided_at, decide_took) {
                if let Some(mut newer) = redecide() {
                    // Moved, not cloned: at N nodes the writes hold N specs of N-1 entries.
                    queue.refresh(std::mem::take(&mut newer.writes));
                    out.later_events.append(&mut newer.events);
                    newest = Some(newer);
                    out.refreshes += 1;
                }
                (decided_at, decide_took) = (Instant::now(), now.elapsed());
            }
            let Some(p) = queue.next_write() else { break };
            out.applied += 1;
            in_flight.push(apply_owned(w, mesh, p));
        }
        match in_flight.next().await {
            Some(failure) => out.failures.extend(failure),
            None if queue.is_empty() => break,
            None => {}
        }
    }
    out.changes = crate::spec_changes::summary(queue.changes());
    for name in deletes {
        if let Err(error) = w.delete_peer(name).await {
            out.failures.push(PeerFailure {
                node: name.clone(),
                error,
            });
        }
    }
    out.failures.sort_by(|a, b| a.node.cmp(&b.node));
    for f in &out.failures {
        w.metrics
            .write_failure("WireKubePeer", f.error.metric_reason());
        warn!(node = %f.node, error = %f.error, "peer write failed; the other peers are written");
    }
    (out, newest)
}

async fn apply_owned(w: &Writer, mesh: &str, p: PeerWrite) -> Option<PeerFailure> {
    apply_one(w, p.desired(mesh), p.observed_rv.as_deref()).await
}

async fn apply_one(w: &Writer, d: DesiredPeer<'_>, rv: Option<&str>) -> Option<PeerFailure> {
    let span = info_span!("apply_peer", node = %d.node);
    let error = w.apply_peer(&d, rv).instrument(span).await.err()?;
    Some(PeerFailure {
        node: d.node.to_owned(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wirekube_crds::WireKubePeerSpec;

    /// A write of `node` whose spec is told apart by its MTU.
    fn write(node: &str, mtu: u32) -> PeerWrite {
        PeerWrite {
            node: node.into(),
            node_uid: format!("uid-{node}"),
            spec: WireKubePeerSpec {
                mtu,
                ..WireKubePeerSpec::default()
            },
            quarantine: None,
            observed_rv: None,
            changes: vec!["peers.publicKey"],
            records_only: false,
        }
    }

    fn drain(q: &mut WriteQueue) -> Vec<(String, u32)> {
        std::iter::from_fn(|| q.next_write())
            .map(|w| (w.node, w.spec.mtu))
            .collect()
    }

    fn pairs(v: &[(&str, u32)]) -> Vec<(String, u32)> {
        v.iter().map(|(n, m)| ((*n).to_owned(), *m)).collect()
    }

    /// (first decision, handed out before the refresh, newer decision, what follows)
    type Case<'a> = (
        &'a [(&'a str, u32)],
        usize,
        &'a [(&'a str, u32)],
        &'a [(&'a str, u32)],
    );

    #[test]
    fn refresh_rewrites_only_what_is_not_handed_out() {
        let cases: &[Case] = &[
            // Nothing newer: the rest as decided.
            (
                &[("a", 1), ("b", 1), ("c", 1)],
                1,
                &[("a", 1), ("b", 1), ("c", 1)],
                &[("b", 1), ("c", 1)],
            ),
            // The newer plan for the nodes not yet written; `a` was written, not again.
            (
                &[("a", 1), ("b", 1), ("c", 1)],
                1,
                &[("a", 2), ("b", 2), ("c", 2)],
                &[("b", 2), ("c", 2)],
            ),
            // A node the newer decision does not write drops out (its stored peer caught up).
            (&[("a", 1), ("b", 1), ("c", 1)], 1, &[("c", 2)], &[("c", 2)]),
            // A node only the newer decision writes joins, in the newer decision's order.
            (
                &[("b", 1), ("d", 1)],
                0,
                &[("a", 2), ("b", 2), ("c", 2), ("d", 2)],
                &[("a", 2), ("b", 2), ("c", 2), ("d", 2)],
            ),
            // Everything handed out: the newer decision waits for the next pass.
            (&[("a", 1), ("b", 1)], 2, &[("a", 2), ("b", 2)], &[]),
            // An empty first decision.
            (&[], 0, &[("a", 2)], &[("a", 2)]),
        ];
        for (i, (first, before, newer, want)) in cases.iter().enumerate() {
            let mut q = WriteQueue::new(first.iter().map(|(n, m)| write(n, *m)).collect());
            let handed: Vec<_> = (0..*before).filter_map(|_| q.next_write()).collect();
            assert_eq!(handed.len(), *before, "case {i}");
            q.refresh(newer.iter().map(|(n, m)| write(n, *m)).collect());
            assert_eq!(drain(&mut q), pairs(want), "case {i}");
            assert!(q.is_empty(), "case {i}");
            let written = before + want.len();
            assert_eq!(
                q.changes().count(),
                written,
                "case {i}: one change list per write"
            );
        }
    }

    #[test]
    fn a_node_is_handed_out_once_per_pass_over_any_refreshes() {
        let mut q = WriteQueue::new(vec![write("a", 1), write("b", 1)]);
        let mut seen = Vec::new();
        for mtu in 2..6 {
            seen.extend(q.next_write().map(|w| w.node));
            q.refresh(vec![write("a", mtu), write("b", mtu), write("c", mtu)]);
        }
        assert_eq!(seen, ["a", "b", "c"]);
        assert!(q.next_write().is_none());
    }

    #[test]
    fn refresh_due_waits_the_interval_and_four_times_the_last_decision() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        // (since the last decision, its duration, due)
        let cases = [
            (ms(0), ms(0), false),
            (ms(249), ms(1), false),
            (ms(250), ms(1), true),
            (ms(250), ms(62), true),
            (ms(250), ms(63), false),
            (ms(399), ms(100), false),
            (ms(400), ms(100), true),
            (ms(5_000), ms(2_000), false),
            (ms(8_000), ms(2_000), true),
        ];
        for (since, took, due) in cases {
            assert_eq!(refresh_due(t + since, t, took), due, "{since:?} {took:?}");
        }
    }
}
