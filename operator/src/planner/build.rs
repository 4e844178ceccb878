//! The planner itself: full plans, one-node re-plans, specs, the diff against stored specs and
//! the summary.
//!
//! Layout for speed: nodes are kept sorted by name in a `Vec`, so node `i`'s spec lists peer
//! `j` at position `j` (or `j - 1` when `j > i`), and pair `(i, j)` lives at a triangular
//! index of `Plan::pairs`. A one-node re-plan therefore touches exactly `n - 1` pairs and
//! `2(n - 1)` spec entries, with no searching.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use wirekube_crds::{PeerEntry, PlannedPath, WireKubePeerSpec, WireKubePeerStatus};

use super::alloc::{Pool, allocate};
use super::facts::NodeFacts;
use super::rules::{Decision, Rules, Side};
use super::select::selected;
use super::types::{NodeInfo, PairPlan, Plan, PlanError, PlannerInput};

/// Below this many nodes the spec build stays on one thread (spawning costs more).
const PARALLEL_MIN_NODES: usize = 256;

/// A planner that keeps what it derived, so that a status change re-plans one node's pairs
/// only. [`super::plan`] is the one-shot form.
#[derive(Clone, Debug)]
pub struct PathPlanner {
    rules: Rules,
    listen_port: u16,
    /// Nodes in the mesh, sorted by name, with their facts at the same index.
    infos: Vec<NodeInfo>,
    facts: Vec<NodeFacts>,
    index: HashMap<String, usize>,
    plan: Plan,
}

impl PathPlanner {
    /// Plans the whole mesh.
    pub fn new(input: &PlannerInput) -> Result<PathPlanner, PlanError> {
        let pool = Pool::parse(&input.mesh.mesh_cidr)?;
        let mesh = &input.mesh;
        let rules = Rules::new(
            mesh.relay.mode,
            !input.relay_endpoints.is_empty(),
            mesh.persistent_keepalive,
        );

        let mut infos: Vec<NodeInfo> = input
            .nodes
            .iter()
            .filter(|n| !n.deleting && selected(&mesh.node_selector, n))
            .cloned()
            .collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        // Node names are unique in Kubernetes; a duplicate in the input is a caller bug, and the
        // first one wins rather than two specs fighting over one name.
        infos.dedup_by(|later, first| later.name == first.name);

        let names: Vec<&str> = infos.iter().map(|n| n.name.as_str()).collect();
        let alloc = allocate(&pool, &names, &input.previous);
        let facts: Vec<NodeFacts> = infos
            .iter()
            .map(|n| {
                NodeFacts::build(
                    n,
                    input.statuses.get(&n.name),
                    alloc.ips.get(&n.name).copied(),
                    mesh.listen_port,
                )
            })
            .collect();
        let index = infos
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();

        let template = WireKubePeerSpec {
            mesh: input.mesh_name.clone(),
            mesh_ip: String::new(),
            mesh_cidr: pool.net().to_string(),
            interface_name: mesh.interface_name.clone(),
            listen_port: mesh.listen_port,
            mtu: mesh.mtu,
            relay_mode: mesh.relay.mode,
            relay_endpoints: input.relay_endpoints.clone(),
            relay_token_secret: input.relay_token_secret.clone(),
            stun_servers: if mesh.stun_servers.is_empty() {
                input.relay_stun_servers.clone()
            } else {
                mesh.stun_servers.clone()
            },
            direct_timeout: mesh.relay.direct_timeout.clone(),
            peers: Vec::new(),
        };

        let n = facts.len();
        let mut decisions = Vec::with_capacity(n * n.saturating_sub(1) / 2);
        let mut pairs = Vec::with_capacity(decisions.capacity());
        let mut plan = Plan::default();
        for i in 0..n {
            for j in i + 1..n {
                let d = rules.decide(&facts[i], &facts[j]);
                pairs.push(pair_plan(&facts[i], &facts[j], &d));
                count(&mut plan, d.path, 1);
                decisions.push(d);
            }
        }
        plan.pairs = pairs;

        let specs = build_specs(&template, &facts, &decisions);
        for (f, spec) in facts.iter().zip(specs) {
            if input.previous.get(&*f.name) != Some(&spec) {
                plan.changed.insert(f.name.to_string());
            }
            plan.specs.insert(f.name.to_string(), spec);
        }
        plan.removed = input
            .previous
            .keys()
            .filter(|k| !plan.specs.contains_key(*k))
            .cloned()
            .collect();
        plan.pending_nodes = pending(&facts);
        plan.issues = alloc.issues;

        Ok(PathPlanner {
            rules,
            listen_port: mesh.listen_port,
            infos,
            facts,
            index,
            plan,
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn into_plan(self) -> Plan {
        self.plan
    }

    /// Re-plans after `node`'s agent reported a new status (`None`: the status is gone).
    ///
    /// Returns the names whose spec changed (also left in `plan().changed`): write exactly
    /// those. Membership, mesh spec and relay changes need a new [`PathPlanner::new`]; a
    /// node not in the mesh is ignored. A status change that alters none of the facts the
    /// planner uses (byte counters, handshake times, conditions) costs one comparison.
    pub fn update_status(
        &mut self,
        node: &str,
        status: Option<&WireKubePeerStatus>,
    ) -> &BTreeSet<String> {
        self.plan.changed.clear();
        let Some(&k) = self.index.get(node) else {
            return &self.plan.changed;
        };
        let facts = NodeFacts::build(
            &self.infos[k],
            status,
            self.facts[k].mesh_ip,
            self.listen_port,
        );
        if facts == self.facts[k] {
            return &self.plan.changed;
        }
        let key_changed = facts.key.is_some() != self.facts[k].key.is_some();
        self.facts[k] = facts;
        if key_changed {
            self.plan.pending_nodes = pending(&self.facts);
        }

        let n = self.facts.len();
        let mut own = Vec::with_capacity(n.saturating_sub(1));
        let mut changed = BTreeSet::new();
        for j in 0..n {
            if j == k {
                continue;
            }
            let (lo, hi) = if k < j { (k, j) } else { (j, k) };
            let d = self.rules.decide(&self.facts[lo], &self.facts[hi]);
            let slot = &mut self.plan.pairs[tri(n, lo, hi)];
            let old_path = slot.path;
            *slot = pair_plan(&self.facts[lo], &self.facts[hi], &d);
            count(&mut self.plan, old_path, -1);
            count(&mut self.plan, d.path, 1);

            let (toward_j, toward_k) = if k == lo { (d.a, d.b) } else { (d.b, d.a) };
            own.push(entry(&self.facts[j], &toward_j, &d));
            let theirs = entry(&self.facts[k], &toward_k, &d);
            let fj = &self.facts[j];
            if let Some(spec) = self.plan.specs.get_mut(&*fj.name) {
                let slot = &mut spec.peers[position(j, k)];
                if *slot != theirs {
                    *slot = theirs;
                    changed.insert(fj.name.to_string());
                }
            }
        }
        let fk = &self.facts[k];
        if let Some(spec) = self.plan.specs.get_mut(&*fk.name)
            && spec.peers != own
        {
            spec.peers = own;
            changed.insert(fk.name.to_string());
        }
        self.plan.changed = changed;
        &self.plan.changed
    }
}

/// Index of pair `(i, j)`, `i < j`, in the row-major upper triangle of an `n × n` matrix.
fn tri(n: usize, i: usize, j: usize) -> usize {
    i * (2 * n - i - 1) / 2 + (j - i - 1)
}

/// Position of peer `j` in node `i`'s (sorted, self-excluding) peer list.
fn position(i: usize, j: usize) -> usize {
    if j < i { j } else { j - 1 }
}

fn count(plan: &mut Plan, path: PlannedPath, delta: i32) {
    let c = match path {
        PlannedPath::Direct => &mut plan.summary.direct,
        PlannedPath::Relay => &mut plan.summary.relay,
        PlannedPath::Down => &mut plan.summary.down,
    };
    *c = c.saturating_add_signed(delta);
}

fn pending(facts: &[NodeFacts]) -> Vec<String> {
    facts
        .iter()
        .filter(|f| f.key.is_none())
        .map(|f| f.name.to_string())
        .collect()
}

fn pair_plan(a: &NodeFacts, b: &NodeFacts, d: &Decision) -> PairPlan {
    PairPlan {
        a: a.name.clone(),
        b: b.name.clone(),
        path: d.path,
        reason: d.reason,
        a_initiates: d.a.initiate,
        b_initiates: d.b.initiate,
        fallback_reported: a.reports_fallback_to(&b.name) || b.reports_fallback_to(&a.name),
    }
}

/// The spec entry by which one node reaches `peer`, given its side of decision `d`.
fn entry(peer: &NodeFacts, side: &Side, d: &Decision) -> PeerEntry {
    PeerEntry {
        name: peer.name.to_string(),
        public_key: peer.key.clone().unwrap_or_default(),
        allowed_ips: peer.allowed_ips.clone(),
        endpoint: side.endpoint.resolve(peer),
        path: d.path,
        reason: d.reason,
        initiate: side.initiate,
        punch_toward: if side.punch {
            peer.punch_target.clone()
        } else {
            None
        },
        persistent_keepalive: d.keepalive,
    }
}

fn spec_for(
    template: &WireKubePeerSpec,
    facts: &[NodeFacts],
    decisions: &[Decision],
    i: usize,
) -> WireKubePeerSpec {
    let n = facts.len();
    let mut peers = Vec::with_capacity(n.saturating_sub(1));
    for (j, peer) in facts.iter().enumerate() {
        if j == i {
            continue;
        }
        let (lo, hi) = if i < j { (i, j) } else { (j, i) };
        let d = &decisions[tri(n, lo, hi)];
        let side = if i == lo { &d.a } else { &d.b };
        peers.push(entry(peer, side, d));
    }
    WireKubePeerSpec {
        mesh_ip: facts[i]
            .mesh_ip
            .map(|ip: IpAddr| ip.to_string())
            .unwrap_or_default(),
        peers,
        ..template.clone()
    }
}

/// Every node's spec, in node order. Materialising ~n² entries dominates a full plan, so
/// large meshes split the nodes across the machine's cores; the output does not depend on it.
fn build_specs(
    template: &WireKubePeerSpec,
    facts: &[NodeFacts],
    decisions: &[Decision],
) -> Vec<WireKubePeerSpec> {
    let n = facts.len();
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    if n < PARALLEL_MIN_NODES || threads < 2 {
        return (0..n)
            .map(|i| spec_for(template, facts, decisions, i))
            .collect();
    }
    let chunk = n.div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                s.spawn(move || {
                    (start..(start + chunk).min(n))
                        .map(|i| spec_for(template, facts, decisions, i))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("spec builder thread panicked"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triangular_index_is_dense_and_ordered() {
        let n = 7;
        let mut k = 0;
        for i in 0..n {
            for j in i + 1..n {
                assert_eq!(tri(n, i, j), k);
                k += 1;
            }
        }
        assert_eq!(position(3, 1), 1);
        assert_eq!(position(3, 5), 4);
    }
}
