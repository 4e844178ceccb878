//! The planner itself: full plans, one-node re-plans, the diff against stored specs, the
//! summary, and materialising specs.
//!
//! Layout for speed: nodes are kept sorted by name in a `Vec`, so node `i`'s spec lists peer
//! `j` at position `j` (or `j - 1` when `j > i`), and pair `(i, j)` lives at a triangular
//! index of `Core::decisions`. A decision is a few bytes pointing into the two nodes' facts;
//! spec entries are compared as borrowed views ([`EntryView`]) and only turned into owned
//! `PeerEntry` values when a spec is asked for. A one-node re-plan therefore touches exactly
//! `n - 1` decisions and allocates nothing.

use std::collections::{BTreeSet, HashMap};

use wirekube_crds::{
    PathReason, PathSummary, PeerEntry, PlannedPath, WireKubePeerSpec, WireKubePeerStatus,
};

use super::alloc::{Pool, allocate};
use super::facts::NodeFacts;
use super::keys::quarantine;
use super::routes::{NodePrefixes, carried_routes};
use super::rules::{Decision, Rules, Side};
use super::select::selected;
use super::types::{NodeAddressKind, NodeInfo, PairPlan, Plan, PlanError, PlannerInput};

/// The compact plan: every node's facts and every pair's decision.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Core {
    /// Every spec minus `meshIP` and `peers`.
    template: WireKubePeerSpec,
    /// Nodes in the mesh, sorted by name.
    pub facts: Vec<NodeFacts>,
    /// Pair `(i, j)`, `i < j`, at `tri(n, i, j)`; `Decision::a` is node `i`'s side.
    pub decisions: Vec<Decision>,
    /// Node `i` is quarantined for its key (`super::keys`): no spec lists it, its own lists
    /// nobody. Its pairs are still decided, so that lifting the quarantine is a plain re-plan.
    pub quarantined: Vec<bool>,
}

/// Relay and STUN addresses (IP literals; names are resolved by the agents and cannot be
/// checked here).
fn underlay_ips(input: &PlannerInput) -> Vec<std::net::IpAddr> {
    let stun = if input.mesh.stun_servers.is_empty() {
        &input.relay_stun_servers
    } else {
        &input.mesh.stun_servers
    };
    input
        .relay_endpoints
        .iter()
        .chain(stun)
        .filter_map(|a| a.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.ip())
        .collect()
}

impl Core {
    pub fn index_of(&self, node: &str) -> Option<usize> {
        self.facts.binary_search_by(|f| (*f.name).cmp(node)).ok()
    }

    /// Decision of pair `(i, j)` in either order, and `i`'s and `j`'s sides of it.
    fn sides(&self, i: usize, j: usize) -> (&Decision, &Side, &Side) {
        let n = self.facts.len();
        if i < j {
            let d = &self.decisions[tri(n, i, j)];
            (d, &d.a, &d.b)
        } else {
            let d = &self.decisions[tri(n, j, i)];
            (d, &d.b, &d.a)
        }
    }

    /// Node `i`'s entry for node `j`.
    fn view(&self, i: usize, j: usize) -> EntryView<'_> {
        let (d, side, _) = self.sides(i, j);
        EntryView::new(&self.facts[i], &self.facts[j], side, d)
    }

    pub fn pair(&self, i: usize, j: usize) -> PairPlan<'_> {
        let (a, b) = (&self.facts[i], &self.facts[j]);
        let d = &self.decisions[tri(self.facts.len(), i, j)];
        PairPlan {
            a: &a.name,
            b: &b.name,
            path: d.path,
            reason: d.reason,
            a_initiates: d.a.initiate,
            b_initiates: d.b.initiate,
            fallback_reported: a.reports_fallback_to(&b.name) || b.reports_fallback_to(&a.name),
        }
    }

    /// The nodes node `i`'s spec lists, in order: none when `i` is quarantined, else every
    /// other node that is not.
    fn listed(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        let q = &self.quarantined;
        let me_ok = !q.get(i).copied().unwrap_or(false);
        (0..self.facts.len())
            .filter(move |&j| me_ok && j != i && !q.get(j).copied().unwrap_or(false))
    }

    /// The path pair `(i, j)` counts as in the summary: `Down` when either side is quarantined.
    fn effective_path(&self, i: usize, j: usize, d: &Decision) -> PlannedPath {
        if self.quarantined[i] || self.quarantined[j] {
            PlannedPath::Down
        } else {
            d.path
        }
    }

    pub fn spec(&self, i: usize) -> WireKubePeerSpec {
        let peers = self.listed(i).map(|j| self.view(i, j).to_entry()).collect();
        WireKubePeerSpec {
            mesh_ip: self.facts[i].mesh_ip_text.clone(),
            external_ips: self.facts[i].external_ips.clone(),
            pod_cidrs: self.facts[i].pod_cidrs.clone(),
            peers,
            ..self.template.clone()
        }
    }

    /// The stored spec equals what [`Core::spec`] would build, compared without building it.
    fn matches(&self, i: usize, stored: &WireKubePeerSpec) -> bool {
        header_eq(&self.template, stored)
            && stored.mesh_ip == self.facts[i].mesh_ip_text
            && stored.pod_cidrs == self.facts[i].pod_cidrs
            && stored.external_ips == self.facts[i].external_ips
            && stored.peers.len() == self.listed(i).count()
            && self
                .listed(i)
                .zip(&stored.peers)
                .all(|(j, e)| self.view(i, j).matches(e))
    }

    /// Pair counts by effective path, from scratch.
    fn summary(&self) -> PathSummary {
        let n = self.facts.len();
        let mut s = PathSummary::default();
        for i in 0..n {
            for j in i + 1..n {
                let d = &self.decisions[tri(n, i, j)];
                *path_count(&mut s, self.effective_path(i, j, d)) += 1;
            }
        }
        s
    }
}

/// One spec entry, borrowed from the facts it is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EntryView<'a> {
    name: &'a str,
    public_key: &'a str,
    allowed_ips: &'a [String],
    endpoint: Option<&'a str>,
    path: PlannedPath,
    reason: PathReason,
    initiate: bool,
    punch_toward: Option<&'a str>,
    persistent_keepalive: u32,
}

impl<'a> EntryView<'a> {
    /// The entry by which `me` reaches `peer`, given its `side` of decision `d`.
    fn new(me: &'a NodeFacts, peer: &'a NodeFacts, side: &Side, d: &Decision) -> EntryView<'a> {
        EntryView {
            name: &peer.name,
            public_key: peer.key.as_deref().unwrap_or(""),
            allowed_ips: peer.allowed_ips_for(me),
            endpoint: side.endpoint.resolve(me, peer),
            path: d.path,
            reason: d.reason,
            initiate: side.initiate,
            punch_toward: if side.punch {
                peer.punch_target.as_deref()
            } else {
                None
            },
            persistent_keepalive: d.keepalive,
        }
    }

    fn to_entry(self) -> PeerEntry {
        PeerEntry {
            name: self.name.to_owned(),
            public_key: self.public_key.to_owned(),
            allowed_ips: self.allowed_ips.to_vec(),
            endpoint: self.endpoint.map(str::to_owned),
            path: self.path,
            reason: self.reason,
            initiate: self.initiate,
            punch_toward: self.punch_toward.map(str::to_owned),
            persistent_keepalive: self.persistent_keepalive,
        }
    }

    fn matches(&self, e: &PeerEntry) -> bool {
        // Destructured without `..`: a field added to PeerEntry must be handled here.
        let PeerEntry {
            name,
            public_key,
            allowed_ips,
            endpoint,
            path,
            reason,
            initiate,
            punch_toward,
            persistent_keepalive,
        } = e;
        self.name == name
            && self.public_key == public_key
            && self.allowed_ips == allowed_ips.as_slice()
            && self.endpoint == endpoint.as_deref()
            && self.path == *path
            && self.reason == *reason
            && self.initiate == *initiate
            && self.punch_toward == punch_toward.as_deref()
            && self.persistent_keepalive == *persistent_keepalive
    }
}

/// Everything but `meshIP` and `peers` is equal.
fn header_eq(a: &WireKubePeerSpec, b: &WireKubePeerSpec) -> bool {
    // Destructured without `..`: a field added to the spec must be handled here.
    let WireKubePeerSpec {
        mesh,
        mesh_ip: _,
        mesh_cidr,
        interface_name,
        listen_port,
        mtu,
        relay_mode,
        relay_endpoints,
        relay_token_secret,
        stun_servers,
        direct_timeout,
        external_ips: _,
        pod_cidrs: _,
        pod_network,
        peers: _,
    } = a;
    *mesh == b.mesh
        && *mesh_cidr == b.mesh_cidr
        && *interface_name == b.interface_name
        && *listen_port == b.listen_port
        && *mtu == b.mtu
        && *relay_mode == b.relay_mode
        && *relay_endpoints == b.relay_endpoints
        && *relay_token_secret == b.relay_token_secret
        && *stun_servers == b.stun_servers
        && *direct_timeout == b.direct_timeout
        && *pod_network == b.pod_network
}

/// A planner that keeps what it derived, so that a status change re-plans one node's pairs
/// only. [`super::plan`] is the one-shot form.
#[derive(Clone, Debug)]
pub struct PathPlanner {
    rules: Rules,
    listen_port: u16,
    /// The nodes of the mesh, at the same index as their facts.
    infos: Vec<NodeInfo>,
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
        let prefixes: Vec<NodePrefixes> = infos
            .iter()
            .map(|n| NodePrefixes {
                name: n.name.clone(),
                pod_cidrs: n.pod_cidrs.clone(),
                internal_ip: n.address(NodeAddressKind::InternalIp),
            })
            .collect();
        let underlay = underlay_ips(input);
        let mut routes = carried_routes(&mesh.routing, Some(pool.net()), &underlay, &prefixes);
        let facts: Vec<NodeFacts> = infos
            .iter()
            .map(|n| {
                NodeFacts::build(
                    n,
                    input.statuses.get(&n.name),
                    alloc.ips.get(&n.name).copied(),
                    mesh.listen_port,
                    routes.everywhere.remove(&n.name).unwrap_or_default(),
                    routes.internal.get(&n.name).copied(),
                )
            })
            .collect();
        let carried = facts
            .iter()
            .map(|f| f.routed.len() + usize::from(f.internal_route.is_some()))
            .sum();
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
            external_ips: Vec::new(),
            pod_cidrs: Vec::new(),
            pod_network: mesh.pod_network.enabled,
            peers: Vec::new(),
        };

        let n = facts.len();
        let mut plan = Plan::default();
        let mut decisions = Vec::with_capacity(n * n.saturating_sub(1) / 2);
        for i in 0..n {
            for j in i + 1..n {
                decisions.push(rules.decide(&facts[i], &facts[j]));
            }
        }
        let (quarantined, key_problems) = quarantine(&facts);
        plan.core = Core {
            template,
            facts,
            decisions,
            quarantined,
        };
        plan.summary = plan.core.summary();
        plan.key_problems = key_problems;

        let core = &plan.core;
        plan.changed = (0..n)
            .filter(|&i| {
                let name = &*core.facts[i].name;
                input
                    .previous
                    .get(name)
                    .is_none_or(|stored| !core.matches(i, stored))
            })
            .map(|i| core.facts[i].name.to_string())
            .collect();
        plan.removed = input
            .previous
            .keys()
            .filter(|k| core.index_of(k).is_none())
            .cloned()
            .collect();
        plan.pending_nodes = pending(&core.facts);
        plan.issues = alloc.issues;
        plan.dropped_routes = routes.dropped;
        plan.carried_routes = carried;

        Ok(PathPlanner {
            rules,
            listen_port: mesh.listen_port,
            infos,
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
    /// those, e.g. from `plan().changed_specs()`. Membership, mesh spec and relay changes
    /// need a new [`PathPlanner::new`]; a node not in the mesh is ignored. A status change
    /// that alters none of the facts the planner uses (byte counters, handshake times,
    /// conditions) costs one comparison. A key change that moves a node into or out of
    /// quarantine also re-counts the summary (O(n²), rare).
    pub fn update_status(
        &mut self,
        node: &str,
        status: Option<&WireKubePeerStatus>,
    ) -> &BTreeSet<String> {
        self.plan.changed.clear();
        let Some(&k) = self.index.get(node) else {
            return &self.plan.changed;
        };
        let core = &mut self.plan.core;
        let facts = NodeFacts::build(
            &self.infos[k],
            status,
            core.facts[k].mesh_ip,
            self.listen_port,
            core.facts[k].routed.clone(),
            core.facts[k].internal_route,
        );
        if facts == core.facts[k] {
            return &self.plan.changed;
        }
        let key_moved = facts.key != core.facts[k].key || facts.bad_key != core.facts[k].bad_key;
        let old = std::mem::replace(&mut core.facts[k], facts);
        let before = core.quarantined.clone();
        if key_moved {
            let (q, problems) = quarantine(&core.facts);
            core.quarantined = q;
            self.plan.key_problems = problems;
            self.plan.pending_nodes = pending(&core.facts);
        }
        let changed = if core.quarantined == before {
            self.replan_pairs(k, &old, true)
        } else {
            self.replan_pairs(k, &old, false);
            let core = &self.plan.core;
            self.plan.summary = core.summary();
            quarantine_changes(&before, &core.quarantined)
                .map(|i| core.facts[i].name.to_string())
                .collect()
        };
        self.plan.changed = changed;
        &self.plan.changed
    }

    /// Re-decides node `k`'s pairs after its facts changed from `old`. With `track`, also
    /// moves the summary and returns the names whose spec changed (quarantine unchanged).
    fn replan_pairs(&mut self, k: usize, old: &NodeFacts, track: bool) -> BTreeSet<String> {
        let core = &mut self.plan.core;
        let n = core.facts.len();
        let mut changed = BTreeSet::new();
        let mut own_changed = false;
        let mut delta = [0i64; 3];
        for j in (0..n).filter(|&j| j != k) {
            let (lo, hi) = if k < j { (k, j) } else { (j, k) };
            let t = tri(n, lo, hi);
            let before = core.decisions[t];
            let after = self.rules.decide(&core.facts[lo], &core.facts[hi]);
            core.decisions[t] = after;
            if !track || core.quarantined[k] || core.quarantined[j] {
                // Neither spec lists the other, and the pair counts as Down either way.
                continue;
            }
            delta[path_index(before.path)] -= 1;
            delta[path_index(after.path)] += 1;
            // Sides (k's, j's) of the decision before and after.
            let side = |d: &Decision| if k == lo { (d.a, d.b) } else { (d.b, d.a) };
            let ((k_before, j_before), (k_after, j_after)) = (side(&before), side(&after));
            // j's entry for k: k's facts and j's side.
            let fj = &core.facts[j];
            if EntryView::new(fj, old, &j_before, &before)
                != EntryView::new(fj, &core.facts[k], &j_after, &after)
            {
                changed.insert(fj.name.to_string());
            }
            // k's entry for j: j's facts (unchanged), k's side, k's own observation of j (a
            // peer-reflexive endpoint) and whether k shares j's LAN (which decides whether
            // j's InternalIP is carried).
            own_changed |= EntryView::new(old, fj, &k_before, &before)
                != EntryView::new(&core.facts[k], fj, &k_after, &after);
        }
        if own_changed {
            changed.insert(core.facts[k].name.to_string());
        }
        let s = &mut self.plan.summary;
        for (path, d) in [PlannedPath::Direct, PlannedPath::Relay, PlannedPath::Down]
            .into_iter()
            .zip(delta)
        {
            let c = path_count(s, path);
            *c = u32::try_from(i64::from(*c) + d).unwrap_or(0);
        }
        changed
    }
}

/// Nodes whose spec changes when the quarantine goes from `before` to `after` (which differ).
/// A node that stays listed loses or gains whoever flipped; one that stays quarantined lists
/// nobody either way; one that flips changes iff it lists somebody while it is not
/// quarantined.
fn quarantine_changes<'a>(
    before: &'a [bool],
    after: &'a [bool],
) -> impl Iterator<Item = usize> + 'a {
    let listed = |q: &[bool]| q.iter().filter(|x| !**x).count();
    let (ok_before, ok_after) = (listed(before), listed(after));
    (0..after.len()).filter(move |&i| match (before[i], after[i]) {
        (true, true) => false,
        (false, false) => true,
        (false, true) => ok_before > 1,
        (true, false) => ok_after > 1,
    })
}

fn path_index(p: PlannedPath) -> usize {
    match p {
        PlannedPath::Direct => 0,
        PlannedPath::Relay => 1,
        PlannedPath::Down => 2,
    }
}

/// Index of pair `(i, j)`, `i < j`, in the row-major upper triangle of an `n × n` matrix.
fn tri(n: usize, i: usize, j: usize) -> usize {
    i * (2 * n - i - 1) / 2 + (j - i - 1)
}

fn path_count(s: &mut PathSummary, path: PlannedPath) -> &mut u32 {
    match path {
        PlannedPath::Direct => &mut s.direct,
        PlannedPath::Relay => &mut s.relay,
        PlannedPath::Down => &mut s.down,
    }
}

/// Nodes whose agent has reported no key at all (a malformed one is a key problem instead).
fn pending(facts: &[NodeFacts]) -> Vec<String> {
    facts
        .iter()
        .filter(|f| f.key.is_none() && f.bad_key.is_none())
        .map(|f| f.name.to_string())
        .collect()
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
    }
}
