//! Which address one side sends to. Decisions hold a small [`Ep`] that points into the
//! precomputed facts (the peer's, or for a peer-reflexive endpoint the sending side's own
//! observations); the string is borrowed for comparisons and cloned only when a spec is
//! materialised.

use super::facts::{NodeFacts, share_subnet};
use wirekube_crds::NatType;

/// A reference to one of the peer's addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Ep {
    /// No endpoint: this side waits until the peer's packets arrive (WireGuard roams to
    /// their source), or the path is Relay/Down.
    #[default]
    None,
    /// The peer's `hosts[i]`.
    Host(u8),
    /// The peer's `InternalIP:listenPort`.
    Internal,
    /// The peer's STUN mapping.
    Srflx,
    /// The peer's public endpoint (it is `open`).
    Public,
    /// The peer's address where this side's WireGuard saw the peer's packets come from:
    /// `prflx[i]` of this side's **own** facts (the agent reports what it observed of its
    /// peers, never its own address as others see it).
    Prflx(u8),
}

impl Ep {
    /// The address `me` sends to in order to reach `peer`.
    pub fn resolve<'a>(self, me: &'a NodeFacts, peer: &'a NodeFacts) -> Option<&'a str> {
        match self {
            Ep::None => None,
            Ep::Host(i) => peer.hosts.get(usize::from(i)).map(|h| h.addr.as_str()),
            Ep::Internal => peer.internal.as_deref(),
            Ep::Srflx => peer.srflx.as_deref(),
            Ep::Public => peer.public_ep.as_deref(),
            Ep::Prflx(i) => me
                .prflx
                .get(usize::from(i))
                .filter(|(of, _)| **of == *peer.name)
                .map(|(_, addr)| addr.as_str()),
        }
    }
}

/// Same site: `(a's endpoint for b, b's endpoint for a)` over LAN addresses, or `None`.
///
/// Proof is either a shared subnet (host candidates with prefix lengths, each address inside
/// the other's subnet), or one public IP (both behind the same NAT, which need not hairpin,
/// so LAN addresses are used). Without a LAN endpoint in both directions it is not treated as
/// same-site: the other rules then decide.
pub(crate) fn same_site(a: &NodeFacts, b: &NodeFacts) -> Option<(Ep, Ep)> {
    for (i, ha) in a.hosts.iter().enumerate() {
        if ha.net.is_none() {
            continue;
        }
        for (j, hb) in b.hosts.iter().enumerate() {
            if share_subnet(ha, hb) {
                return Some((host_ep(j), host_ep(i)));
            }
        }
    }
    if a.public_ip.is_some() && a.public_ip == b.public_ip {
        return Some((lan_ep(b)?, lan_ep(a)?));
    }
    None
}

fn host_ep(i: usize) -> Ep {
    // More than 255 host candidates never happens; saturate rather than index wrongly.
    u8::try_from(i).map(Ep::Host).unwrap_or(Ep::None)
}

/// The peer's first LAN address.
fn lan_ep(peer: &NodeFacts) -> Option<Ep> {
    if !peer.hosts.is_empty() {
        Some(Ep::Host(0))
    } else if peer.internal.is_some() {
        Some(Ep::Internal)
    } else {
        None
    }
}

/// How `from` reaches `to` across the internet, if `to`'s NAT type lets an unsolicited
/// packet in at an address we know: open or 1:1 NAT → its public endpoint; cone → its STUN mapping;
/// symmetric → only the peer-reflexive endpoint `from` itself observed (the STUN mapping is
/// toward the STUN server only, docs/lab-findings.md §7.7).
pub(crate) fn across(from: &NodeFacts, to: &NodeFacts) -> Ep {
    match to.nat {
        n if n.is_reachable() => Ep::Public,
        n if n.is_cone() => Ep::Srflx,
        _ => prflx(from, to),
    }
}

/// `to`'s endpoint as `from` observed it (`from`'s own peer-reflexive candidate for `to`),
/// when there is such evidence.
pub(crate) fn prflx(from: &NodeFacts, to: &NodeFacts) -> Ep {
    from.observed_address_of(&to.name)
        .map(Ep::Prflx)
        .unwrap_or(Ep::None)
}

/// `mode: never` when no rule finds a direct path: the best guess, in order peer-reflexive
/// (proven to work once), public, STUN mapping (useless behind a symmetric NAT), LAN address.
pub(crate) fn best_effort(from: &NodeFacts, to: &NodeFacts) -> Ep {
    let observed = prflx(from, to);
    if observed != Ep::None {
        return observed;
    }
    if to.nat.is_reachable() && to.public_ep.is_some() {
        return Ep::Public;
    }
    if to.nat != NatType::Symmetric && to.srflx.is_some() {
        return Ep::Srflx;
    }
    lan_ep(to).unwrap_or(Ep::None)
}
