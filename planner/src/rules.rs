//! The pair rules, as measured in the lab (docs/lab-findings.md §4: which NAT pairs can talk
//! directly). docs/topologies.md ("Path planning rules") is the user-facing copy of this.

use wirekube_crds::{NatType, PathReason, PlannedPath, RelayMode};

use super::endpoints::{Ep, across, best_effort, prflx, same_site};
use super::facts::NodeFacts;

/// Keepalive for pairs with a NAT between them. Linux conntrack drops an unreplied UDP flow
/// after 30 s (`nf_conntrack_udp_timeout`, docs/lab-findings.md §0) and many home routers use 30-60 s;
/// WireGuard's usual 25 s leaves one lost keepalive from a dead mapping. 10 s survives two.
/// The cost is one 32-byte packet per peer every 10 s.
pub const NAT_KEEPALIVE_SECS: u32 = 10;

/// What one side does toward the other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Side {
    /// The other node's address this side sends to.
    pub endpoint: Ep,
    pub initiate: bool,
    /// Send a few packets toward the other node's public IP so that this side's
    /// address-restricted filter admits it (docs/lab-findings.md §4).
    pub punch: bool,
}

/// The decision for `(a, b)`; `a` and `b` are the two nodes in the order given to `decide`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    pub path: PlannedPath,
    pub reason: PathReason,
    pub a: Side,
    pub b: Side,
    pub keepalive: u32,
}

/// A direct path found by the NAT rules.
struct Direct {
    reason: PathReason,
    a: Side,
    b: Side,
    /// A NAT sits between the two, so its mapping must be kept alive.
    through_nat: bool,
}

/// Mesh-wide settings the rules need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rules {
    pub mode: RelayMode,
    pub relay_available: bool,
    pub keepalive: u32,
    pub nat_keepalive: u32,
}

impl Rules {
    pub fn new(mode: RelayMode, relay_available: bool, keepalive: u32) -> Rules {
        let nat_keepalive = match keepalive {
            0 => NAT_KEEPALIVE_SECS,
            k => k.min(NAT_KEEPALIVE_SECS),
        };
        Rules {
            mode,
            relay_available,
            keepalive,
            nat_keepalive,
        }
    }

    pub fn decide(&self, a: &NodeFacts, b: &NodeFacts) -> Decision {
        // Nothing can carry traffic without an address or a key: say so instead of planning
        // a path (the pair is still listed, never dropped).
        if a.mesh_ip.is_none() || b.mesh_ip.is_none() {
            return self.down(PathReason::CidrFull);
        }
        if a.key.is_none() || b.key.is_none() {
            return self.down(PathReason::KeyMissing);
        }
        match self.mode {
            RelayMode::Always => self.relay(PathReason::ModeAlways),
            RelayMode::Auto => match natural(a, b) {
                Ok(d) => self.direct(d),
                Err(reason) => self.relay(reason),
            },
            // The reason is always `mode-never` (the design table's first row): the user ruled
            // the relay out. Where a rule finds a path, its endpoints and initiators are the
            // best candidates; elsewhere each side sends to its best guess.
            RelayMode::Never => match natural(a, b) {
                Ok(d) => self.direct(Direct {
                    reason: PathReason::ModeNever,
                    ..d
                }),
                Err(_) => self.direct(forced(a, b)),
            },
        }
    }

    fn direct(&self, d: Direct) -> Decision {
        Decision {
            path: PlannedPath::Direct,
            reason: d.reason,
            a: d.a,
            b: d.b,
            keepalive: if d.through_nat {
                self.nat_keepalive
            } else {
                self.keepalive
            },
        }
    }

    fn relay(&self, reason: PathReason) -> Decision {
        if !self.relay_available {
            return self.down(PathReason::NoRelay);
        }
        // Either side may start: the relay carries both directions over the agents' outbound
        // TCP connections, so no NAT is in the way.
        let side = Side {
            endpoint: Ep::None,
            initiate: true,
            punch: false,
        };
        Decision {
            path: PlannedPath::Relay,
            reason,
            a: side,
            b: side,
            keepalive: self.keepalive,
        }
    }

    fn down(&self, reason: PathReason) -> Decision {
        Decision {
            path: PlannedPath::Down,
            reason,
            a: Side::default(),
            b: Side::default(),
            keepalive: self.keepalive,
        }
    }
}

fn sender(endpoint: Ep) -> Side {
    Side {
        endpoint,
        initiate: endpoint != Ep::None,
        punch: false,
    }
}

/// Waits for the other side's packets; sends only if it has evidence where to.
fn listener(endpoint: Ep) -> Side {
    Side {
        endpoint,
        initiate: false,
        punch: false,
    }
}

/// The rules for `mode: auto`, in order of precedence: `Ok` for a direct path, `Err(reason)`
/// when the pair needs the relay.
fn natural(a: &NodeFacts, b: &NodeFacts) -> Result<Direct, PathReason> {
    use NatType::*;
    // A LAN path bypasses every NAT and firewall at the edge, even a TCP-only one.
    if let Some((ab, ba)) = same_site(a, b) {
        return Ok(Direct {
            reason: PathReason::SameSite,
            a: sender(ab),
            b: sender(ba),
            through_nat: false,
        });
    }
    if a.nat == UdpBlocked || b.nat == UdpBlocked {
        return Err(PathReason::UdpBlocked);
    }
    if a.nat == Unknown || b.nat == Unknown {
        return Err(PathReason::NatUnknown);
    }
    match (a.nat, b.nat) {
        // A 1:1 NAT forwards every port of its public address (an elastic IP) both ways, with
        // no per-flow state to keep alive: reachable like a public NIC.
        (x, y) if x.is_reachable() && y.is_reachable() => Ok(Direct {
            reason: PathReason::PublicPeer,
            a: sender(Ep::Public),
            b: sender(Ep::Public),
            through_nat: false,
        }),
        // The NATed side initiates to the reachable side; its packets create the mapping
        // through which the reachable side answers.
        (x, _) if x.is_reachable() => Ok(Direct {
            reason: PathReason::PublicPeer,
            a: listener(across(a, b)),
            b: sender(Ep::Public),
            through_nat: true,
        }),
        (_, y) if y.is_reachable() => natural(b, a).map(Direct::swapped),
        (x, y) if x.is_cone() && y.is_cone() => Ok(Direct {
            reason: PathReason::ConeCone,
            a: sender(Ep::Srflx),
            b: sender(Ep::Srflx),
            through_nat: true,
        }),
        // The symmetric side's port toward the cone is unpredictable, so it initiates to the
        // cone's stable mapping. A full cone admits it as is; an address-restricted cone only
        // after the cone sent something toward the symmetric side's IP (any port).
        (FullCone | AddressRestricted, Symmetric) => Ok(Direct {
            reason: PathReason::ConeSymmetric,
            a: Side {
                endpoint: prflx(a, b),
                initiate: false,
                punch: true,
            },
            b: sender(Ep::Srflx),
            through_nat: true,
        }),
        (Symmetric, FullCone | AddressRestricted) => natural(b, a).map(Direct::swapped),
        // A port-restricted cone drops the symmetric side's packets even when both send
        // (docs/lab-findings.md §4): the port they come from was never contacted.
        (PortRestricted, Symmetric) | (Symmetric, PortRestricted) => {
            Err(PathReason::PortRestrictedSymmetric)
        }
        (Symmetric, Symmetric) => Err(PathReason::BothSymmetric),
        // Every combination is listed above; an added NAT type lands here until it is.
        _ => Err(PathReason::NatUnknown),
    }
}

impl Direct {
    fn swapped(self) -> Direct {
        Direct {
            a: self.b,
            b: self.a,
            ..self
        }
    }
}

/// `mode: never` and no rule finds a path: Direct anyway (the user ruled the relay out), each
/// side sending to its best guess.
fn forced(a: &NodeFacts, b: &NodeFacts) -> Direct {
    Direct {
        reason: PathReason::ModeNever,
        a: sender(best_effort(a, b)),
        b: sender(best_effort(b, a)),
        through_nat: !(a.nat.is_reachable() && b.nat.is_reachable()),
    }
}
