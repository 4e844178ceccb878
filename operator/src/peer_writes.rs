//! Writing one pass's peers. Every write stands alone: one the API server refuses (an
//! admission policy, a quota, an object grown too large, a conflict) never keeps the others
//! from being written. Failures are collected for the caller to report (log, metric, the
//! mesh's `PeersWritten` condition) and retry.

use futures::StreamExt;
use tracing::{Instrument, info_span, warn};

use crate::apply::Writer;
use crate::decide::PeerWrite;
use crate::diff::DesiredPeer;
use crate::error::Error;

/// Peer writes in flight at once during one reconcile.
const PARALLEL_WRITES: usize = 16;

/// One write that failed.
#[derive(Debug)]
pub struct PeerFailure {
    pub node: String,
    pub error: Error,
}

/// What one pass wrote.
#[derive(Debug, Default)]
pub struct PassWrites {
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
pub async fn write_peers(
    w: &Writer,
    mesh: &str,
    writes: &[PeerWrite],
    deletes: &[String],
) -> PassWrites {
    let mut out = PassWrites {
        applied: writes.len(),
        removed: deletes.to_vec(),
        ..PassWrites::default()
    };
    out.failures = apply_all(w, mesh, writes).await;
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
    out
}

/// Applies concurrently (bounded): independent objects, one round trip each otherwise.
async fn apply_all(w: &Writer, mesh: &str, writes: &[PeerWrite]) -> Vec<PeerFailure> {
    // A Vec of `async fn` futures rather than an async closure: the controller's future must
    // stay `Send` for every lifetime, which closures over borrowed specs do not prove.
    let mut pending = Vec::with_capacity(writes.len());
    for p in writes {
        pending.push(apply_one(w, p.desired(mesh), p.observed_rv.as_deref()));
    }
    let mut results = futures::stream::iter(pending).buffer_unordered(PARALLEL_WRITES);
    let mut failures = Vec::new();
    while let Some(r) = results.next().await {
        failures.extend(r);
    }
    failures
}

async fn apply_one(w: &Writer, d: DesiredPeer<'_>, rv: Option<&str>) -> Option<PeerFailure> {
    let span = info_span!("apply_peer", node = %d.node);
    let error = w.apply_peer(&d, rv).instrument(span).await.err()?;
    Some(PeerFailure {
        node: d.node.to_owned(),
        error,
    })
}
