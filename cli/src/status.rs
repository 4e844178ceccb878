//! `kubectl wirekube status`: every pair as a matrix of the paths the agents report, then
//! each direction with its plan, its actual path and its last handshake.

use serde::Serialize;
use wirekube_crds::{ActualPath, Engine, NatType, PathReason, PlannedPath, RelayMode, conditions};

use crate::snapshot::{
    Snapshot, age_seconds, human_age, is_true, mesh_condition, peer_condition, peer_name,
};
use crate::text::{or_dash, table};

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub mesh: MeshLine,
    pub nodes: Vec<NodeLine>,
    /// `matrix[i][j]`: what node i's agent reports toward node j (`nodes` order).
    pub matrix: Vec<Vec<Cell>>,
    /// Every ordered pair, both directions of a pair next to each other.
    pub pairs: Vec<Direction>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshLine {
    pub name: String,
    /// The mesh's `Ready` condition (None: no status yet).
    pub ready: Option<bool>,
    pub message: Option<String>,
    pub relay_mode: Option<RelayMode>,
    pub relay_endpoints: Vec<String>,
    pub nodes: usize,
    pub ready_nodes: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeLine {
    pub name: String,
    #[serde(rename = "meshIP")]
    pub mesh_ip: String,
    pub nat_type: Option<NatType>,
    pub engine: Option<Engine>,
    /// The agent's `Ready` condition (None: the agent has not reported).
    pub ready: Option<bool>,
    /// The operator quarantined this node's public key.
    pub quarantined: bool,
}

/// One matrix cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cell {
    pub path: CellPath,
    /// The planned direct path did not come up and the agent uses the relay.
    pub fallback: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CellPath {
    Direct,
    Relay,
    Connecting,
    Down,
    /// The row's agent has no entry for the column node (not reported yet).
    Unreported,
    #[serde(rename = "self")]
    Itself,
}

/// One direction of a pair: `from`'s plan and `from`'s agent's report toward `to`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Direction {
    pub from: String,
    pub to: String,
    pub planned: Option<PlannedPath>,
    pub reason: Option<PathReason>,
    pub actual: Option<ActualPath>,
    /// The reason the agent reports (differs from `reason` after a fallback).
    pub actual_reason: Option<PathReason>,
    pub fallback: bool,
    pub endpoint: Option<String>,
    /// Seconds since the last WireGuard handshake, by this machine's clock.
    pub handshake_age_seconds: Option<i64>,
    /// Smoothed round trip over the path in use, microseconds, as `from`'s agent measured it.
    pub rtt_micros: Option<u32>,
}

/// Builds the report. Pure: the snapshot's `taken_at` is the clock.
pub fn render(s: &Snapshot) -> StatusReport {
    let names = s.node_names();
    let matrix = names
        .iter()
        .map(|from| names.iter().map(|to| cell(s, from, to)).collect())
        .collect();
    let mut pairs = Vec::new();
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            pairs.push(direction(s, a, b));
            pairs.push(direction(s, b, a));
        }
    }
    let nodes: Vec<NodeLine> = s.peers.iter().map(|p| node_line(s, p)).collect();
    StatusReport {
        mesh: mesh_line(s, &nodes),
        nodes,
        matrix,
        pairs,
    }
}

fn mesh_line(s: &Snapshot, nodes: &[NodeLine]) -> MeshLine {
    let ready = s
        .mesh
        .as_ref()
        .and_then(|m| mesh_condition(m, conditions::READY));
    MeshLine {
        name: s.mesh_name(),
        ready: is_true(ready),
        message: ready.and_then(|c| (!c.message.is_empty()).then(|| c.message.clone())),
        relay_mode: s.mesh.as_ref().map(|m| m.spec.relay.mode),
        relay_endpoints: s
            .mesh
            .as_ref()
            .and_then(|m| m.status.as_ref())
            .map(|st| st.relay_endpoints.clone())
            .unwrap_or_default(),
        nodes: nodes.len(),
        ready_nodes: nodes.iter().filter(|n| n.ready == Some(true)).count(),
    }
}

fn node_line(s: &Snapshot, p: &wirekube_crds::WireKubePeer) -> NodeLine {
    let name = peer_name(p);
    NodeLine {
        mesh_ip: p.spec.mesh_ip.clone(),
        nat_type: p.status.as_ref().map(|st| st.nat_type),
        engine: p.status.as_ref().and_then(|st| st.engine),
        ready: is_true(peer_condition(p, conditions::READY)),
        quarantined: s.quarantine(&name).is_some(),
        name,
    }
}

fn cell(s: &Snapshot, from: &str, to: &str) -> Cell {
    if from == to {
        return Cell {
            path: CellPath::Itself,
            fallback: false,
        };
    }
    match s.connection(from, to) {
        None => Cell {
            path: CellPath::Unreported,
            fallback: false,
        },
        Some(c) => Cell {
            path: match c.path {
                ActualPath::Direct => CellPath::Direct,
                ActualPath::Relay => CellPath::Relay,
                ActualPath::Connecting => CellPath::Connecting,
                ActualPath::Down => CellPath::Down,
            },
            fallback: c.fallback,
        },
    }
}

fn direction(s: &Snapshot, from: &str, to: &str) -> Direction {
    let plan = s.planned(from, to);
    let conn = s.connection(from, to);
    Direction {
        from: from.to_owned(),
        to: to.to_owned(),
        planned: plan.map(|e| e.path),
        reason: plan.map(|e| e.reason),
        actual: conn.map(|c| c.path),
        actual_reason: conn.and_then(|c| c.reason),
        fallback: conn.is_some_and(|c| c.fallback),
        endpoint: conn.and_then(|c| c.endpoint.clone()),
        handshake_age_seconds: conn
            .and_then(|c| c.last_handshake.as_ref())
            .map(|t| age_seconds(s.taken_at, t.0)),
        rtt_micros: conn.and_then(|c| c.rtt_micros),
    }
}

impl Cell {
    /// Two characters: the path letter and `*` for a fallback.
    pub fn symbol(self) -> String {
        let c = match self.path {
            CellPath::Direct => "D",
            CellPath::Relay => "R",
            CellPath::Connecting => "~",
            CellPath::Down => "x",
            CellPath::Unreported => "?",
            CellPath::Itself => "·",
        };
        format!("{c}{}", if self.fallback { "*" } else { "" })
    }
}

pub const LEGEND: &str =
    "D direct  R relay  ~ connecting  x down  ? not reported  * fell back to the relay  · self";

impl StatusReport {
    /// The terminal rendering: header, matrix with numbered columns (names would make it too
    /// wide at 10+ nodes), legend, nodes, then every direction (or, with `problems_only`,
    /// the directions that need a look: at 10+ nodes the full list runs to hundreds of lines).
    pub fn to_text(&self, problems_only: bool) -> String {
        let mut out = self.header();
        out.push('\n');
        out.push_str(&self.matrix_text());
        out.push_str(&format!("legend: {LEGEND}\n\n"));
        out.push_str(&self.nodes_text());
        out.push('\n');
        out.push_str(&self.pairs_text(problems_only));
        out
    }

    fn header(&self) -> String {
        let m = &self.mesh;
        let ready = match m.ready {
            Some(true) => "Ready".to_string(),
            Some(false) => format!("NOT READY: {}", or_dash(m.message.as_deref())),
            None => "no status yet".to_string(),
        };
        let relay = match (m.relay_mode, m.relay_endpoints.first()) {
            (Some(RelayMode::Never), _) => "relay: never".to_string(),
            (_, Some(ep)) => format!("relay: {ep}"),
            (_, None) => "relay: none published".to_string(),
        };
        format!(
            "mesh {}: {ready}; {}/{} agents ready; {relay}\n",
            m.name, m.ready_nodes, m.nodes
        )
    }

    fn matrix_text(&self) -> String {
        let n = self.nodes.len();
        let idx_w = n.to_string().len();
        let name_w = self
            .nodes
            .iter()
            .map(|x| x.name.chars().count())
            .max()
            .unwrap_or(0);
        let label = "from \\ to";
        let label_w = (idx_w + 1 + name_w).max(label.len());
        let mut out = format!("{label:label_w$}");
        for j in 1..=n {
            out.push_str(&format!(" {j:>2} "));
        }
        out = out.trim_end().to_string();
        out.push('\n');
        for (i, row) in self.matrix.iter().enumerate() {
            let name = self.nodes.get(i).map(|x| x.name.as_str()).unwrap_or("");
            let label = format!("{:>idx_w$} {name}", i + 1);
            let mut line = format!("{label:<label_w$}");
            for c in row {
                line.push_str(&format!("  {:<2}", c.symbol()));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    fn nodes_text(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                vec![
                    (i + 1).to_string(),
                    n.name.clone(),
                    n.mesh_ip.clone(),
                    or_dash(n.nat_type.map(nat_str)),
                    or_dash(n.engine.map(engine_str)),
                    match n.ready {
                        Some(true) => "yes".into(),
                        Some(false) => "NO".into(),
                        None => "not reported".into(),
                    },
                    if n.quarantined { "QUARANTINED" } else { "" }.into(),
                ]
            })
            .collect();
        table(
            &["#", "NODE", "MESH IP", "NAT", "ENGINE", "READY", "KEY"],
            &rows,
        )
    }

    fn pairs_text(&self, problems_only: bool) -> String {
        let shown = self
            .pairs
            .iter()
            .filter(|d| !problems_only || d.is_problem());
        let rows: Vec<Vec<String>> = shown.map(direction_row).collect();
        if rows.is_empty() && problems_only {
            return format!(
                "every one of the {} directions is up as planned\n",
                self.pairs.len()
            );
        }
        table(
            &[
                "FROM",
                "TO",
                "PLANNED",
                "REASON",
                "ACTUAL",
                "HANDSHAKE",
                "RTT",
                "NOTE",
            ],
            &rows,
        )
    }
}

impl Direction {
    /// Not up as planned: fell back, down, still connecting, unreported, or off the plan.
    pub fn is_problem(&self) -> bool {
        !matches!(self.actual, Some(ActualPath::Direct | ActualPath::Relay))
            || !note(self).is_empty()
    }
}

fn direction_row(d: &Direction) -> Vec<String> {
    vec![
        d.from.clone(),
        d.to.clone(),
        or_dash(d.planned.map(planned_str)),
        or_dash(d.reason),
        match d.actual {
            Some(a) => format!("{}{}", actual_str(a), if d.fallback { "*" } else { "" }),
            None => "not reported".into(),
        },
        or_dash(
            d.handshake_age_seconds
                .map(|s| format!("{} ago", human_age(s))),
        ),
        or_dash(d.rtt_micros.map(rtt_str)),
        note(d),
    ]
}

/// What a reader should notice about a direction, or nothing.
fn note(d: &Direction) -> String {
    if d.fallback {
        return format!(
            "direct did not come up ({}); relayed while probing",
            or_dash(d.actual_reason)
        );
    }
    match (d.planned, d.actual) {
        (Some(PlannedPath::Direct), Some(ActualPath::Relay | ActualPath::Down))
        | (Some(PlannedPath::Relay), Some(ActualPath::Direct | ActualPath::Down)) => {
            "differs from the plan".into()
        }
        (Some(PlannedPath::Down), _) => "planned down: see explain".into(),
        _ => String::new(),
    }
}

/// A round trip for a table: two significant digits below 10 ms, whole milliseconds above.
pub fn rtt_str(micros: u32) -> String {
    if micros < 10_000 {
        format!("{:.2} ms", f64::from(micros) / 1000.0)
    } else {
        format!("{} ms", (micros + 500) / 1000)
    }
}

pub fn planned_str(p: PlannedPath) -> &'static str {
    match p {
        PlannedPath::Direct => "Direct",
        PlannedPath::Relay => "Relay",
        PlannedPath::Down => "Down",
    }
}

pub fn actual_str(a: ActualPath) -> &'static str {
    match a {
        ActualPath::Direct => "direct",
        ActualPath::Relay => "relay",
        ActualPath::Connecting => "connecting",
        ActualPath::Down => "down",
    }
}

pub fn nat_str(n: NatType) -> &'static str {
    match n {
        NatType::Open => "open",
        NatType::OneToOne => "one-to-one",
        NatType::FullCone => "full-cone",
        NatType::AddressRestricted => "address-restricted",
        NatType::PortRestricted => "port-restricted",
        NatType::Symmetric => "symmetric",
        NatType::UdpBlocked => "udp-blocked",
        NatType::Unknown => "unknown",
    }
}

pub fn mode_str(m: RelayMode) -> &'static str {
    match m {
        RelayMode::Never => "never",
        RelayMode::Auto => "auto",
        RelayMode::Always => "always",
    }
}

pub fn engine_str(e: Engine) -> &'static str {
    match e {
        Engine::Kernel => "kernel",
        Engine::UserspaceExternal => "userspace-external",
        Engine::UserspaceEmbedded => "userspace-embedded",
    }
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
