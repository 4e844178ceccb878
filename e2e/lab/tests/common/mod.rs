//! Shared helpers of the lab tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::time::Instant;

use wirekube_lab::{Lab, NatKind, SiteSpec};

/// Fails the test unless it runs as root, in CI or not: a test that cannot run must never pass.
pub fn require_root() {
    assert!(
        wirekube_lab::is_root(),
        "the lab tests need root (network namespaces)"
    );
}

/// A fresh lab (root required).
pub fn lab(tag: &str) -> Lab {
    require_root();
    Lab::new_unique(tag).expect("create lab")
}

/// One site per NAT kind, a public node and a DMZ with two addresses:
///
/// | site | kind | LAN | nodes |
/// |---|---|---|---|
/// | sym  | Symmetric | 10.1.0.0/24 | sym-a, sym-b |
/// | prc  | PortRestrictedCone | 10.2.0.0/24 | prc-a |
/// | arc  | AddressRestrictedCone | 192.168.1.0/24 | arc-a |
/// | full | FullCone | 192.168.2.0/24 | full-a, full-b |
/// | fw   | TcpOnlyFirewall | 10.6.0.0/24 | fw-a |
/// | rtd  | None (routed public LAN) | 198.19.1.0/24 | rtd-a |
pub fn full_topology(lab: &Lab) {
    let t = Instant::now();
    let sites = [
        (
            "sym",
            NatKind::Symmetric,
            "10.1.0.0/24",
            &["sym-a", "sym-b"][..],
        ),
        (
            "prc",
            NatKind::PortRestrictedCone,
            "10.2.0.0/24",
            &["prc-a"][..],
        ),
        (
            "arc",
            NatKind::AddressRestrictedCone,
            "192.168.1.0/24",
            &["arc-a"][..],
        ),
        (
            "full",
            NatKind::FullCone,
            "192.168.2.0/24",
            &["full-a", "full-b"][..],
        ),
        ("fw", NatKind::TcpOnlyFirewall, "10.6.0.0/24", &["fw-a"][..]),
        ("rtd", NatKind::None, "198.19.1.0/24", &["rtd-a"][..]),
    ];
    for (name, kind, lan, nodes) in sites {
        lab.add_site(SiteSpec::new(name, kind, lan)).expect("site");
        for n in nodes {
            lab.add_node(name, n).expect("node");
        }
    }
    lab.add_public_node("pub").expect("public node");
    lab.add_dmz("dmz", &[]).expect("dmz");
    eprintln!("{}: topology built in {:?}", lab.prefix(), t.elapsed());
}
