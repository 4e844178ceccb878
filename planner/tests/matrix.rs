//! The full NAT matrix: every NAT type against every NAT type, in both orders, on the same
//! site or not, under the three relay modes, with and without a published relay.
//!
//! The expectations come from the explicit table below (one row per unordered NAT pair for
//! two nodes on different sites under `mode: auto`) plus three short rules for the other
//! cases; they are written out here, not derived from the planner's code.

use wirekube_crds::{NatType, PathReason, PlannedPath, RelayMode};
use wirekube_planner::fixtures::{Host, input, mesh};
use wirekube_planner::plan;

use NatType::*;
use PathReason as R;
use PlannedPath::{Direct, Down, Relay};

const NATS: [NatType; 8] = [
    Open,
    OneToOne,
    FullCone,
    AddressRestricted,
    PortRestricted,
    Symmetric,
    UdpBlocked,
    Unknown,
];

/// Who sends first, relative to the row's column order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Init {
    Both,
    First,
    Second,
}
use Init::*;

/// Two nodes on different sites, `mode: auto`, relay published.
#[rustfmt::skip]
const CROSS_SITE_AUTO: [(NatType, NatType, PlannedPath, PathReason, Init); 36] = [
    (Open,              Open,              Direct, R::PublicPeer,              Both),
    (Open,              OneToOne,          Direct, R::PublicPeer,              Both),
    (OneToOne,          OneToOne,          Direct, R::PublicPeer,              Both),
    (OneToOne,          FullCone,          Direct, R::PublicPeer,              Second),
    (OneToOne,          AddressRestricted, Direct, R::PublicPeer,              Second),
    (OneToOne,          PortRestricted,    Direct, R::PublicPeer,              Second),
    (OneToOne,          Symmetric,         Direct, R::PublicPeer,              Second),
    (OneToOne,          UdpBlocked,        Relay,  R::UdpBlocked,              Both),
    (OneToOne,          Unknown,           Relay,  R::NatUnknown,              Both),
    (Open,              FullCone,          Direct, R::PublicPeer,              Second),
    (Open,              AddressRestricted, Direct, R::PublicPeer,              Second),
    (Open,              PortRestricted,    Direct, R::PublicPeer,              Second),
    (Open,              Symmetric,         Direct, R::PublicPeer,              Second),
    (Open,              UdpBlocked,        Relay,  R::UdpBlocked,              Both),
    (Open,              Unknown,           Relay,  R::NatUnknown,              Both),
    (FullCone,          FullCone,          Direct, R::ConeCone,                Both),
    (FullCone,          AddressRestricted, Direct, R::ConeCone,                Both),
    (FullCone,          PortRestricted,    Direct, R::ConeCone,                Both),
    (FullCone,          Symmetric,         Direct, R::ConeSymmetric,           Second),
    (FullCone,          UdpBlocked,        Relay,  R::UdpBlocked,              Both),
    (FullCone,          Unknown,           Relay,  R::NatUnknown,              Both),
    (AddressRestricted, AddressRestricted, Direct, R::ConeCone,                Both),
    (AddressRestricted, PortRestricted,    Direct, R::ConeCone,                Both),
    (AddressRestricted, Symmetric,         Direct, R::ConeSymmetric,           Second),
    (AddressRestricted, UdpBlocked,        Relay,  R::UdpBlocked,              Both),
    (AddressRestricted, Unknown,           Relay,  R::NatUnknown,              Both),
    (PortRestricted,    PortRestricted,    Direct, R::ConeCone,                Both),
    (PortRestricted,    Symmetric,         Relay,  R::PortRestrictedSymmetric, Both),
    (PortRestricted,    UdpBlocked,        Relay,  R::UdpBlocked,              Both),
    (PortRestricted,    Unknown,           Relay,  R::NatUnknown,              Both),
    (Symmetric,         Symmetric,         Relay,  R::BothSymmetric,           Both),
    (Symmetric,         UdpBlocked,        Relay,  R::UdpBlocked,              Both),
    (Symmetric,         Unknown,           Relay,  R::NatUnknown,              Both),
    (UdpBlocked,        UdpBlocked,        Relay,  R::UdpBlocked,              Both),
    (UdpBlocked,        Unknown,           Relay,  R::UdpBlocked,              Both),
    (Unknown,           Unknown,           Relay,  R::NatUnknown,              Both),
];

/// Expected `(path, reason, who initiates)` for `a` (first) and `b` (second). `None` for the
/// initiator when it depends on which addresses are known (forced `mode: never` pairs).
fn expected(
    a: NatType,
    b: NatType,
    same_site: bool,
    mode: RelayMode,
    relay: bool,
) -> (PlannedPath, PathReason, Option<Init>) {
    let (path, reason, init) = if same_site {
        // A LAN path needs no NAT traversal, whatever the NATs at the edge are.
        (Direct, R::SameSite, Both)
    } else {
        CROSS_SITE_AUTO
            .iter()
            .find_map(|&(x, y, p, r, i)| {
                if (x, y) == (a, b) {
                    Some((p, r, i))
                } else if (y, x) == (a, b) {
                    let flipped = match i {
                        First => Second,
                        Second => First,
                        Both => Both,
                    };
                    Some((p, r, flipped))
                } else {
                    None
                }
            })
            .expect("every NAT pair has a row")
    };
    let relay_or_down = |reason| {
        if relay {
            (Relay, reason, Some(Both))
        } else {
            (Down, R::NoRelay, None)
        }
    };
    match mode {
        RelayMode::Always => relay_or_down(R::ModeAlways),
        RelayMode::Auto if path == Relay => relay_or_down(reason),
        RelayMode::Auto => (path, reason, Some(init)),
        // Always `mode-never`; the rule's initiators where it found a path.
        RelayMode::Never if path == Direct => (Direct, R::ModeNever, Some(init)),
        RelayMode::Never => (Direct, R::ModeNever, None),
    }
}

/// Node `name` with NAT `nat`; on the shared LAN 10.0.0.0/24 when `same_site`, else on its
/// own site. Unknown NATs have no STUN result yet; udp-blocked ones never get one.
fn host(name: &str, nat: NatType, site: u8, same_site: bool) -> Host {
    let h = if same_site {
        Host::new(name, nat).lan(&format!("10.0.0.{}", 10 + site), 24)
    } else {
        Host::new(name, nat).lan(&format!("10.{site}.0.10"), 24)
    };
    match nat {
        Unknown => h,
        _ if same_site => h.public("198.18.0.1"),
        _ => h.public(&format!("198.18.0.{site}")),
    }
}

fn run_matrix(mode: RelayMode, relay: bool) -> usize {
    let mut failures = Vec::new();
    let mut cases = 0;
    for a in NATS {
        for b in NATS {
            for same_site in [false, true] {
                cases += 1;
                // "a" sorts first: the planner sees both orders as (a, b) ranges over all
                // ordered pairs.
                let hosts = [host("a", a, 1, same_site), host("b", b, 2, same_site)];
                let p = plan(&input(mesh("10.99.0.0/24", mode), &hosts, relay)).unwrap();
                let (path, reason, init) = expected(a, b, same_site, mode, relay);
                let pair = p.pair("a", "b").unwrap();
                let (sa, sb) = (p.spec("a").unwrap(), p.spec("b").unwrap());
                let ea = &sa.peers[0];
                let eb = &sb.peers[0];
                let got_init = match (pair.a_initiates, pair.b_initiates) {
                    (true, true) => Some(Both),
                    (true, false) => Some(First),
                    (false, true) => Some(Second),
                    (false, false) => None,
                };
                let ok = (pair.path, pair.reason) == (path, reason)
                    && (ea.path, ea.reason) == (path, reason)
                    && (eb.path, eb.reason) == (path, reason)
                    && (ea.initiate, eb.initiate) == (pair.a_initiates, pair.b_initiates)
                    && (init.is_none() || init == got_init);
                if !ok {
                    failures.push(format!(
                        "{a:?} <-> {b:?} same_site={same_site} mode={mode:?} relay={relay}: \
                         expected {path:?}/{reason} init {init:?}, got {:?}/{} init {got_init:?}",
                        pair.path, pair.reason
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    cases
}

#[test]
fn nat_matrix_mode_auto_with_relay() {
    assert_eq!(run_matrix(RelayMode::Auto, true), 128);
}

#[test]
fn nat_matrix_mode_auto_without_relay() {
    run_matrix(RelayMode::Auto, false);
}

#[test]
fn nat_matrix_mode_never() {
    run_matrix(RelayMode::Never, true);
    run_matrix(RelayMode::Never, false);
}

#[test]
fn nat_matrix_mode_always() {
    run_matrix(RelayMode::Always, true);
    run_matrix(RelayMode::Always, false);
}

/// Direct pairs across a NAT get the short NAT keepalive on both sides; pairs without a NAT
/// between them (same site, public to public) keep the mesh value.
#[test]
fn nat_matrix_keepalive() {
    for a in NATS {
        for b in NATS {
            for same_site in [false, true] {
                let hosts = [host("a", a, 1, same_site), host("b", b, 2, same_site)];
                let p = plan(&input(mesh("10.99.0.0/24", RelayMode::Auto), &hosts, true)).unwrap();
                let (sa, sb) = (p.spec("a").unwrap(), p.spec("b").unwrap());
                let (ea, eb) = (&sa.peers[0], &sb.peers[0]);
                assert_eq!(ea.persistent_keepalive, eb.persistent_keepalive);
                // A 1:1 NAT is static: nothing between two reachable nodes expires.
                let nat_between =
                    ea.path == Direct && !same_site && !(a.is_reachable() && b.is_reachable());
                let want = if nat_between { 10 } else { 25 };
                assert_eq!(ea.persistent_keepalive, want, "{a:?} {b:?} {same_site}");
            }
        }
    }
}

#[test]
fn the_table_covers_every_unordered_pair_once() {
    for (i, a) in NATS.iter().enumerate() {
        for b in &NATS[i..] {
            let n = CROSS_SITE_AUTO
                .iter()
                .filter(|r| (r.0, r.1) == (*a, *b) || (r.1, r.0) == (*a, *b))
                .count();
            assert_eq!(n, 1, "{a:?} {b:?}");
        }
    }
}
