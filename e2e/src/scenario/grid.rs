//! The NAT grid: one node per kind of network attachment, every ordered pair checked with
//! traffic (`e2e/tests/nat_grid.rs`). [`GRID`] is the one expected table; the test asserts it
//! and `docs/topologies.md` shows it ([`markdown`], checked by a unit test below).

use std::fmt::Write as _;

use wirekube_crds::{ActualPath, NatType, PathReason};
use wirekube_lab::NatKind;

use super::report::PairReport;
use super::topology::{RelaySetup, Topology};

/// How a node is attached to the internet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GridKind {
    /// Public IP on its NIC.
    Public,
    /// Private address only; the gateway maps an elastic IP onto it (1:1 NAT).
    Elastic,
    FullCone,
    AddressRestrictedCone,
    PortRestrictedCone,
    Symmetric,
    /// A firewall that lets only outbound TCP out (and NATs it).
    TcpOnly,
    /// A home full cone behind a carrier-grade NAT in 100.64.0.0/10 (address-restricted).
    DoubleNat,
    /// Two nodes on one LAN (a VPC behind a symmetric NAT gateway).
    SameLan,
}

use GridKind::*;

impl GridKind {
    pub const ALL: [GridKind; 9] = [
        Public,
        Elastic,
        FullCone,
        AddressRestrictedCone,
        PortRestrictedCone,
        Symmetric,
        TcpOnly,
        DoubleNat,
        SameLan,
    ];

    /// The Kubernetes node of this kind (for `SameLan` the first of its two).
    pub fn node(self) -> &'static str {
        match self {
            Public => "public",
            Elastic => "elastic",
            FullCone => "full-cone",
            AddressRestrictedCone => "addr-cone",
            PortRestrictedCone => "port-cone",
            Symmetric => "symmetric",
            TcpOnly => "tcp-only",
            DoubleNat => "double-nat",
            SameLan => "lan-a",
        }
    }

    /// What people call it, for the matrix headings.
    pub fn label(self) -> &'static str {
        match self {
            Public => "public IP",
            Elastic => "1:1 NAT",
            FullCone => "full cone",
            AddressRestrictedCone => "addr-restr. cone",
            PortRestrictedCone => "port-restr. cone",
            Symmetric => "symmetric",
            TcpOnly => "TCP-only fw",
            DoubleNat => "CGNAT + cone",
            SameLan => "same LAN",
        }
    }

    /// The NAT type the node's agent must report. The double NAT measures as its stricter
    /// layer (the CGNAT's address-dependent filter in front of a full cone).
    pub fn nat_type(self) -> NatType {
        match self {
            Public => NatType::Open,
            Elastic => NatType::OneToOne,
            FullCone => NatType::FullCone,
            AddressRestrictedCone | DoubleNat => NatType::AddressRestricted,
            PortRestrictedCone => NatType::PortRestricted,
            Symmetric | SameLan => NatType::Symmetric,
            TcpOnly => NatType::UdpBlocked,
        }
    }

    fn of_node(node: &str) -> Option<GridKind> {
        if node == SECOND_LAN_NODE {
            return Some(SameLan);
        }
        GridKind::ALL.into_iter().find(|k| k.node() == node)
    }
}

/// The second node of the shared LAN.
pub const SECOND_LAN_NODE: &str = "lan-b";

use ActualPath::{Direct as D, Relay as R};
use PathReason as W;

/// Every unordered pair of kinds on different sites, plus the shared LAN with itself: the
/// path and reason both directions must report (`mode: auto`, relay available). The double
/// NAT plans as its stricter layer, the CGNAT's address-restricted cone.
#[rustfmt::skip]
pub const GRID: [(GridKind, GridKind, ActualPath, PathReason); 37] = [
    (Public,                Elastic,               D, W::PublicPeer),
    (Public,                FullCone,              D, W::PublicPeer),
    (Public,                AddressRestrictedCone, D, W::PublicPeer),
    (Public,                PortRestrictedCone,    D, W::PublicPeer),
    (Public,                Symmetric,             D, W::PublicPeer),
    (Public,                TcpOnly,               R, W::UdpBlocked),
    (Public,                DoubleNat,             D, W::PublicPeer),
    (Public,                SameLan,               D, W::PublicPeer),
    (Elastic,               FullCone,              D, W::PublicPeer),
    (Elastic,               AddressRestrictedCone, D, W::PublicPeer),
    (Elastic,               PortRestrictedCone,    D, W::PublicPeer),
    (Elastic,               Symmetric,             D, W::PublicPeer),
    (Elastic,               TcpOnly,               R, W::UdpBlocked),
    (Elastic,               DoubleNat,             D, W::PublicPeer),
    (Elastic,               SameLan,               D, W::PublicPeer),
    (FullCone,              AddressRestrictedCone, D, W::ConeCone),
    (FullCone,              PortRestrictedCone,    D, W::ConeCone),
    (FullCone,              Symmetric,             D, W::ConeSymmetric),
    (FullCone,              TcpOnly,               R, W::UdpBlocked),
    (FullCone,              DoubleNat,             D, W::ConeCone),
    (FullCone,              SameLan,               D, W::ConeSymmetric),
    (AddressRestrictedCone, PortRestrictedCone,    D, W::ConeCone),
    (AddressRestrictedCone, Symmetric,             D, W::ConeSymmetric),
    (AddressRestrictedCone, TcpOnly,               R, W::UdpBlocked),
    (AddressRestrictedCone, DoubleNat,             D, W::ConeCone),
    (AddressRestrictedCone, SameLan,               D, W::ConeSymmetric),
    (PortRestrictedCone,    Symmetric,             R, W::PortRestrictedSymmetric),
    (PortRestrictedCone,    TcpOnly,               R, W::UdpBlocked),
    (PortRestrictedCone,    DoubleNat,             D, W::ConeCone),
    (PortRestrictedCone,    SameLan,               R, W::PortRestrictedSymmetric),
    (Symmetric,             TcpOnly,               R, W::UdpBlocked),
    (Symmetric,             DoubleNat,             D, W::ConeSymmetric),
    (Symmetric,             SameLan,               R, W::BothSymmetric),
    (TcpOnly,               DoubleNat,             R, W::UdpBlocked),
    (TcpOnly,               SameLan,               R, W::UdpBlocked),
    (DoubleNat,             SameLan,               D, W::ConeSymmetric),
    (SameLan,               SameLan,               D, W::SameSite),
];

/// The expected row for two kinds, in either order.
pub fn expected(a: GridKind, b: GridKind) -> Option<(ActualPath, PathReason)> {
    GRID.iter()
        .find(|r| (r.0, r.1) == (a, b) || (r.1, r.0) == (a, b))
        .map(|r| (r.2, r.3))
}

/// The lab topology of the grid: one site per kind (the double NAT is two), an external
/// relay in the DMZ, and one expectation per node pair taken from [`GRID`].
pub fn topology() -> Topology {
    topology_scaled(1)
}

/// The grid with `copies` nodes of every kind (copy `i` > 1 of node `n` is `n-i`, on the same
/// site): the start-up benchmark at more than ten nodes. Nodes of one site pair as
/// [`PathReason::SameSite`] (the public nodes share the lab's `public` site label, the elastic
/// nodes their VPC); every other pair as [`GRID`] says for its kinds.
pub fn topology_scaled(copies: usize) -> Topology {
    let n = |kind: GridKind| copies_of(kind.node(), copies);
    let mut t = Topology::new("nat-grid", "Every pair of NAT kinds");
    for p in n(Public) {
        t = t.public(&p);
    }
    t = t.site("eip", NatKind::Symmetric, "10.20.0.0/24", &[]);
    for e in n(Elastic) {
        t = t.elastic(&e);
    }
    let lan: Vec<String> = n(SameLan)
        .into_iter()
        .chain(copies_of(SECOND_LAN_NODE, copies))
        .collect();
    // (site, its NAT, LAN, nodes); the CGNAT is in front of "home".
    let sites = [
        (
            "fullcone",
            NatKind::FullCone,
            "192.168.21.0/24",
            n(FullCone),
        ),
        (
            "addrcone",
            NatKind::AddressRestrictedCone,
            "192.168.22.0/24",
            n(AddressRestrictedCone),
        ),
        (
            "portcone",
            NatKind::PortRestrictedCone,
            "192.168.23.0/24",
            n(PortRestrictedCone),
        ),
        ("sym", NatKind::Symmetric, "10.24.0.0/24", n(Symmetric)),
        (
            "tcponly",
            NatKind::TcpOnlyFirewall,
            "10.25.0.0/24",
            n(TcpOnly),
        ),
        (
            "cgnat",
            NatKind::AddressRestrictedCone,
            "100.64.0.0/24",
            vec![],
        ),
        ("home", NatKind::FullCone, "192.168.26.0/24", n(DoubleNat)),
        ("vpc", NatKind::Symmetric, "10.27.0.0/24", lan),
    ];
    for (name, nat, cidr, nodes) in &sites {
        let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
        t = t.site(name, *nat, cidr, &nodes);
        if *name == "home" {
            t = t.behind("cgnat");
        }
    }
    t = t.relay(RelaySetup::External);
    for (a, b) in t.pairs() {
        let (ka, kb) = (kind_of(&a), kind_of(&b));
        let same_site = ka == kb;
        let (path, reason) = if same_site {
            (D, W::SameSite)
        } else {
            expected(ka, kb).unwrap_or((R, W::NatUnknown))
        };
        let why = format!("{} <-> {}", ka.label(), kb.label());
        t = match path {
            D => t.direct(&a, &b, reason, &why),
            _ => t.relayed(&a, &b, reason, &why),
        };
    }
    t
}

/// `node` and its copies `node-2` .. `node-<copies>`.
fn copies_of(node: &str, copies: usize) -> Vec<String> {
    std::iter::once(node.to_string())
        .chain((2..=copies).map(|i| format!("{node}-{i}")))
        .collect()
}

/// The kind a grid node stands for (a copy `n-i` of [`topology_scaled`] stands for `n`'s).
pub fn kind_of(node: &str) -> GridKind {
    GridKind::of_node(node)
        .or_else(|| {
            let (base, i) = node.rsplit_once('-')?;
            i.parse::<usize>().ok()?;
            GridKind::of_node(base)
        })
        .unwrap_or(SameLan)
}

/// A matrix: one row and one column per kind, `cell(row, col)` in between; the diagonal is
/// left empty except for the shared LAN (its two nodes).
fn matrix(cell: impl Fn(GridKind, GridKind) -> String) -> Vec<Vec<String>> {
    let mut rows = vec![
        std::iter::once("from \\ to".to_string())
            .chain(GridKind::ALL.iter().map(|k| k.label().to_string()))
            .collect(),
    ];
    for a in GridKind::ALL {
        let mut row = vec![a.label().to_string()];
        for b in GridKind::ALL {
            row.push(if a == b && a != SameLan {
                "·".into()
            } else {
                cell(a, b)
            });
        }
        rows.push(row);
    }
    rows
}

fn short(path: ActualPath) -> &'static str {
    match path {
        D => "Direct",
        R => "Relay",
        ActualPath::Connecting => "connecting",
        ActualPath::Down => "Down",
    }
}

/// The expected grid as a Markdown table (what `docs/topologies.md` shows).
pub fn markdown() -> String {
    let rows = matrix(|a, b| match expected(a, b) {
        Some((p, r)) => format!("{} `{r}`", short(p)),
        None => "?".into(),
    });
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(out, "| {} |", r.join(" | "));
        if i == 0 {
            let _ = writeln!(out, "|{}", "---|".repeat(r.len()));
        }
    }
    out
}

/// What the run saw, as a plain-text matrix: each cell is the direction row → column (for the
/// shared LAN's diagonal, lan-a → lan-b): the reported path and reason, and `ok` when status,
/// `wg show`, ping and the TCP transfer all passed.
pub fn observed(pairs: &[PairReport]) -> String {
    let rows = matrix(|a, b| {
        let to = if a == b { SECOND_LAN_NODE } else { b.node() };
        match pairs.iter().find(|p| p.from == a.node() && p.to == to) {
            Some(p) => format!(
                "{} {} {}",
                p.actual_path.map(short).unwrap_or("-"),
                p.actual_reason.map(|r| r.to_string()).unwrap_or("-".into()),
                if p.ok() { "ok" } else { "FAIL" }
            ),
            None => "-".into(),
        }
    });
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        for (c, cell) in r.iter().enumerate() {
            let _ = write!(out, "{cell:<w$} | ", w = widths[c]);
        }
        out.truncate(out.trim_end().trim_end_matches('|').trim_end().len());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_of_kinds_has_one_row() {
        for (i, a) in GridKind::ALL.iter().enumerate() {
            for b in &GridKind::ALL[i..] {
                let n = GRID
                    .iter()
                    .filter(|r| (r.0, r.1) == (*a, *b) || (r.1, r.0) == (*a, *b))
                    .count();
                // Only the shared LAN has a pair of its own kind.
                let want = usize::from(a != b || *a == SameLan);
                assert_eq!(n, want, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn the_topology_covers_every_node_pair() {
        let t = topology();
        t.validate().unwrap();
        assert_eq!(t.nodes().len(), 10);
        assert_eq!(t.expect.len(), 45);
        for e in &t.expect {
            assert_eq!(
                Some((e.path, e.reason)),
                expected(kind_of(&e.a), kind_of(&e.b)),
                "{} {}",
                e.a,
                e.b
            );
        }
    }

    #[test]
    fn the_scaled_topology_pairs_each_site_as_same_site_and_the_rest_as_the_grid() {
        let t = topology_scaled(2);
        t.validate().unwrap();
        assert_eq!(t.nodes().len(), 20);
        assert_eq!(t.expect.len(), 190);
        let site_of = |n: &str| {
            t.sites
                .iter()
                .find(|s| s.nodes.iter().chain(&s.elastic).any(|x| x == n))
                .map(|s| s.name.clone())
        };
        for e in &t.expect {
            let (ka, kb) = (kind_of(&e.a), kind_of(&e.b));
            if ka == kb {
                assert_eq!((e.path, e.reason), (D, W::SameSite), "{} {}", e.a, e.b);
                assert_eq!(site_of(&e.a), site_of(&e.b), "{} {}", e.a, e.b);
            } else {
                assert_eq!(
                    Some((e.path, e.reason)),
                    expected(ka, kb),
                    "{} {}",
                    e.a,
                    e.b
                );
            }
        }
        for (node, kind) in [
            ("full-cone-2", FullCone),
            ("lan-b-2", SameLan),
            ("public-2", Public),
            ("elastic", Elastic),
        ] {
            assert_eq!(kind_of(node), kind, "{node}");
        }
    }

    /// The doc shows the code's table, not a copy that can drift.
    #[test]
    fn docs_topologies_shows_this_grid() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/topologies.md"),
        )
        .unwrap();
        let want = markdown();
        assert!(
            doc.contains(&want),
            "docs/topologies.md does not contain the grid; paste:\n{want}"
        );
    }
}
