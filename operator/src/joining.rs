//! Spec updates held for a moment while nodes are still publishing their first keys.
//!
//! Every key a node publishes adds an entry to every other node's spec, and a pass writes
//! each spec once (at 60 nodes: 60 writes, 3-4 s on a loaded API server). When many agents
//! start together (a new cluster, a mesh applied to a running one) their keys reach the
//! operator over one to three seconds. A pass that started while they were still arriving
//! wrote most specs without the last keys, and the next pass rewrote nearly all of them: in
//! the 60-node start-up, 50 of 60 specs again, 3.4 s of writes before the last pairs could
//! connect (docs/benchmarks.md). So while some selected node has not published a key and
//! another node's key arrived less than [`KEY_QUIET`] ago, updates of existing peers wait,
//! for at most [`MAX_HOLD`] in a row. A new peer is created at once (its agent publishes its
//! key only once its WireKubePeer exists), and a peer is deleted at once.
//!
//! Pure: [`hold_until`] decides; [`KeyArrivals`] keeps, per mesh, the keys seen and when
//! the last new one arrived; [`split`] applies the decision to a pass's writes.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::decide::PeerWrite;

/// How long after a node's new key the operator waits for more, while other nodes have none.
/// The lab's agents that start together publish theirs about 50 ms apart; a node that joins
/// alone ends its wait after this much.
pub const KEY_QUIET: Duration = Duration::from_millis(500);

/// The longest the updates wait in a row, however steadily keys keep arriving (a cluster
/// whose nodes boot over many seconds): about half a 60-node pass.
pub const MAX_HOLD: Duration = Duration::from_secs(2);

/// How long the updates wait: [`KEY_QUIET`] and [`MAX_HOLD`] unless a test sets others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldTimes {
    pub quiet: Duration,
    pub max: Duration,
}

impl Default for HoldTimes {
    fn default() -> Self {
        HoldTimes {
            quiet: KEY_QUIET,
            max: MAX_HOLD,
        }
    }
}

/// When the held updates may go out, or `None` when they go out now. `last_new_key` is when
/// the newest key arrived, `keyless` how many selected nodes have none, `hold_since` when the
/// current run of held passes began.
pub fn hold_until(
    times: HoldTimes,
    now: Instant,
    last_new_key: Option<Instant>,
    keyless: usize,
    hold_since: Option<Instant>,
) -> Option<Instant> {
    let last = last_new_key?;
    if keyless == 0 {
        return None;
    }
    let quiet_at = last + times.quiet;
    let limit = hold_since.unwrap_or(now) + times.max;
    let until = quiet_at.min(limit);
    (until > now).then_some(until)
}

/// The writes to make now and when the held ones fall due (`None`: nothing held). New peers
/// (no stored peer) are never held.
pub fn split(writes: Vec<PeerWrite>, until: Option<Instant>) -> (Vec<PeerWrite>, Held) {
    let Some(until) = until else {
        return (writes, Held::default());
    };
    let (now, held): (Vec<_>, Vec<_>) = (writes.into_iter()).partition(|w| w.observed_rv.is_none());
    let wake = (!held.is_empty()).then_some(until);
    (
        now,
        Held {
            count: held.len(),
            wake,
        },
    )
}

/// What [`split`] held back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub count: usize,
    pub wake: Option<Instant>,
}

/// One mesh's keys as last seen, when a new one last arrived, and when the current run of
/// held passes began.
#[derive(Debug, Default)]
struct MeshKeys {
    keys: BTreeMap<String, String>,
    last_new_key: Option<Instant>,
    hold_since: Option<Instant>,
}

/// The keys seen per mesh, kept across passes. An operator that starts (or takes over the
/// lease) takes the keys of its first pass as known: they did not just arrive.
#[derive(Debug, Default)]
pub struct KeyArrivals {
    times: HoldTimes,
    meshes: Mutex<BTreeMap<String, MeshKeys>>,
}

impl KeyArrivals {
    pub fn new(times: HoldTimes) -> Self {
        KeyArrivals {
            times,
            meshes: Mutex::default(),
        }
    }

    /// Records the keys of `mesh`'s selected nodes (`None`: no key yet) and decides whether
    /// its spec updates wait, and until when.
    pub fn observe<'a>(
        &self,
        mesh: &str,
        nodes: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
        now: Instant,
    ) -> Option<Instant> {
        let mut meshes = self.meshes.lock().unwrap_or_else(|p| p.into_inner());
        let first = !meshes.contains_key(mesh);
        let m = meshes.entry(mesh.to_owned()).or_default();
        let mut keys = BTreeMap::new();
        let mut keyless = 0;
        for (node, key) in nodes {
            match key {
                Some(k) => {
                    if !first && m.keys.get(node).map(String::as_str) != Some(k) {
                        m.last_new_key = Some(now);
                    }
                    keys.insert(node.to_owned(), k.to_owned());
                }
                None => keyless += 1,
            }
        }
        m.keys = keys;
        let until = hold_until(self.times, now, m.last_new_key, keyless, m.hold_since);
        m.hold_since = until.map(|_| m.hold_since.unwrap_or(now));
        until
    }
}

#[cfg(test)]
#[path = "joining_tests.rs"]
mod tests;
