//! Spec updates held for a moment while a mass start's keys are still arriving.
//!
//! Every key a node publishes adds an entry to every other node's spec, and a pass writes
//! each spec once (at 60 nodes: 60 writes, 3-4 s on a loaded API server). When a mesh is
//! applied to a running cluster, every agent publishes its key within a second or two of
//! its WireKubePeer's creation. A pass that started while they were still arriving wrote
//! most specs without the last keys, and the next pass rewrote nearly all of them: in the
//! 60-node start-up, 50 of 60 specs again, 3.4 s of writes before the last pairs could
//! connect (docs/benchmarks.md). So in a mass start (some node still without a key, and
//! within the last [`BURST_WINDOW`] new keys from at least half of the selected nodes and
//! from at least three quarters of those with a key), updates of existing peers wait
//! until no new key has arrived for [`KEY_QUIET`], for at most [`MAX_HOLD`] in a row. A new
//! peer is created at once (its agent publishes its key only once its WireKubePeer exists),
//! and a peer is deleted at once.
//!
//! Only a mass start on nodes the mesh already had: while nodes are still joining (a
//! cluster booting), more keys follow with every node, and a wait delayed the pairs of the
//! nodes that had reported early for no pass saved (the 50-node boot, docs/benchmarks.md).
//! So no run of waits begins within [`HoldTimes::window`] of a node joining the selection,
//! nor when the new keys are few or most known keys are older.
//!
//! Pure: [`hold_until`] decides; [`KeyArrivals`] keeps, per mesh, the keys seen and when
//! new ones arrived; [`split`] applies the decision to a pass's writes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::decide::PeerWrite;

/// How long after a node's new key the operator waits for more, while other nodes have none.
/// The lab's agents that start together publish theirs about 50 ms apart.
pub const KEY_QUIET: Duration = Duration::from_millis(500);

/// The longest the updates wait in a row, however steadily keys keep arriving: about half a
/// 60-node pass.
pub const MAX_HOLD: Duration = Duration::from_secs(2);

/// The window in which the new keys of a mass start arrive (the lab's 60 agents started
/// together: 49 keys within 1.5 s).
pub const BURST_WINDOW: Duration = Duration::from_secs(2);

/// How long the updates wait, and the mass start's window: [`KEY_QUIET`], [`MAX_HOLD`] and
/// [`BURST_WINDOW`] unless a test sets others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldTimes {
    pub quiet: Duration,
    pub max: Duration,
    pub window: Duration,
}

impl Default for HoldTimes {
    fn default() -> Self {
        HoldTimes {
            quiet: KEY_QUIET,
            max: MAX_HOLD,
            window: BURST_WINDOW,
        }
    }
}

/// What one pass knows about a mesh's keys.
#[derive(Clone, Copy, Debug)]
pub struct KeysSeen {
    pub now: Instant,
    /// When the newest key arrived (a node's first, or a changed one).
    pub last_new_key: Option<Instant>,
    /// New keys that arrived within the last [`HoldTimes::window`].
    pub recent_new_keys: usize,
    /// Selected nodes, and those of them without a key.
    pub selected: usize,
    pub keyless: usize,
    /// When the current run of held passes began.
    pub hold_since: Option<Instant>,
    /// When a node last joined the mesh's selection.
    pub last_join: Option<Instant>,
}

/// When the held updates may go out, or `None` when they go out now.
pub fn hold_until(times: HoldTimes, k: &KeysSeen) -> Option<Instant> {
    let last = k.last_new_key?;
    if k.keyless == 0 {
        return None;
    }
    let keyed = k.selected.saturating_sub(k.keyless);
    let recent = k.recent_new_keys;
    let mass_start = recent >= 2 && recent * 2 >= k.selected && recent * 4 >= keyed * 3;
    let joining = (k.last_join).is_some_and(|j| k.now.duration_since(j) <= times.window);
    if k.hold_since.is_none() && (!mass_start || joining) {
        return None;
    }
    let quiet_at = last + times.quiet;
    let limit = k.hold_since.unwrap_or(k.now) + times.max;
    let until = quiet_at.min(limit);
    (until > k.now).then_some(until)
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

/// One mesh's keys as last seen, when new ones arrived, and when the current run of held
/// passes began.
#[derive(Debug, Default)]
struct MeshKeys {
    nodes: BTreeSet<String>,
    last_join: Option<Instant>,
    keys: BTreeMap<String, String>,
    /// Arrival times of new keys within the last [`HoldTimes::window`], oldest first.
    arrivals: VecDeque<Instant>,
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
        let mut selected = BTreeSet::new();
        let mut keyless = 0;
        for (node, key) in nodes {
            if !first && !m.nodes.contains(node) {
                m.last_join = Some(now);
            }
            selected.insert(node.to_owned());
            let Some(k) = key else {
                keyless += 1;
                continue;
            };
            if !first && m.keys.get(node).map(String::as_str) != Some(k) {
                m.last_new_key = Some(now);
                m.arrivals.push_back(now);
            }
            keys.insert(node.to_owned(), k.to_owned());
        }
        m.keys = keys;
        let selected_count = selected.len();
        m.nodes = selected;
        while (m.arrivals.front()).is_some_and(|t| now.duration_since(*t) > self.times.window) {
            m.arrivals.pop_front();
        }
        let seen = KeysSeen {
            now,
            last_new_key: m.last_new_key,
            recent_new_keys: m.arrivals.len(),
            selected: selected_count,
            keyless,
            hold_since: m.hold_since,
            last_join: m.last_join,
        };
        let until = hold_until(self.times, &seen);
        m.hold_since = until.map(|_| m.hold_since.unwrap_or(now));
        until
    }
}

#[cfg(test)]
#[path = "joining_tests.rs"]
mod tests;
