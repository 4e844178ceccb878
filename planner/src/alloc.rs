//! Mesh IP allocation.
//!
//! The stored specs are the source of truth: a node keeps the IP its stored spec holds for as
//! long as the CIDR is unchanged, across operator restarts and other nodes joining or leaving.
//! Everything else is derived deterministically from that history:
//! - two stored specs claiming one IP: the lexicographically first node keeps it (specs carry
//!   no creation time, and names are what every replica of the operator sees the same way);
//! - a stored IP that is unparseable, outside the CIDR, or the network/broadcast address is
//!   replaced and reported;
//! - IPs of stored specs whose node left (or is being deleted) stay reserved for this round,
//!   so that a newcomer never gets an address the old interface may still hold; the next
//!   round, once the operator deleted that spec, they are free again;
//! - nodes needing an IP get the lowest free ones, in name order;
//! - when the mesh CIDR changes, every node is re-allocated in name order (the spec's
//!   `meshCIDR` changes for everybody anyway, so every interface is reconfigured; packing
//!   from the bottom keeps the result independent of the old layout).
//!
//! Offsets are `u128` so that IPv6 works the same way (no broadcast address there, only the
//! subnet-router anycast address at offset 0 is skipped).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use wirekube_crds::WireKubePeerSpec;

use super::types::{PlanError, PlanIssue};

/// The usable addresses of a CIDR, as offsets from its network address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pool {
    net: IpNet,
    base: u128,
    first: u128,
    last: u128,
}

impl Pool {
    pub fn parse(cidr: &str) -> Result<Pool, PlanError> {
        let net: IpNet = cidr
            .trim()
            .parse()
            .map_err(|source| PlanError::InvalidCidr {
                cidr: cidr.to_string(),
                source,
            })?;
        Pool::new(net.trunc()).ok_or_else(|| PlanError::EmptyCidr {
            cidr: cidr.to_string(),
        })
    }

    fn new(net: IpNet) -> Option<Pool> {
        let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
        let span = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        let (base, first, last) = match net {
            // /31 and /32 have no network or broadcast address (RFC 3021).
            IpNet::V4(n) if host_bits <= 1 => (u128::from(u32::from(n.network())), 0, span),
            IpNet::V4(n) => (u128::from(u32::from(n.network())), 1, span - 1),
            IpNet::V6(n) if host_bits == 0 => (u128::from(n.network()), 0, 0),
            IpNet::V6(n) => (u128::from(n.network()), 1, span),
        };
        (first <= last).then_some(Pool {
            net,
            base,
            first,
            last,
        })
    }

    pub fn net(&self) -> IpNet {
        self.net
    }

    pub fn capacity(&self) -> u128 {
        self.last - self.first + 1
    }

    /// The offset of `ip` if it is a usable address of this pool.
    fn offset(&self, ip: IpAddr) -> Option<u128> {
        if !self.net.contains(&ip) {
            return None;
        }
        let raw = match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        };
        let off = raw - self.base;
        (self.first..=self.last).contains(&off).then_some(off)
    }

    fn ip(&self, off: u128) -> IpAddr {
        match self.net {
            // The offset is within a /0..=/32 span, so the sum fits in 32 bits.
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from((self.base + off) as u32)),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(self.base + off)),
        }
    }
}

/// Whether a stored spec was planned in this pool's CIDR.
fn same_cidr(pool: &Pool, stored: &str) -> bool {
    stored
        .trim()
        .parse::<IpNet>()
        .is_ok_and(|n| n.trunc() == pool.net)
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Allocation {
    pub ips: HashMap<String, IpAddr>,
    pub issues: Vec<PlanIssue>,
}

/// Allocates a mesh IP to every node in `active` (sorted, unique names).
pub(crate) fn allocate(
    pool: &Pool,
    active: &[&str],
    previous: &BTreeMap<String, WireKubePeerSpec>,
) -> Allocation {
    let mut used: HashMap<u128, &str> = HashMap::with_capacity(previous.len() + active.len());
    let mut ips = HashMap::with_capacity(active.len());
    let mut issues = Vec::new();
    let mut need: Vec<&str> = Vec::new();
    let mut cidr_change: Option<(&str, usize)> = None;
    let cidr = pool.net.to_string();

    // Claims of nodes in the mesh first (sorted, so the first name wins a conflict), then the
    // quarantined IPs of nodes that are leaving.
    for &name in active {
        let Some(spec) = previous.get(name).filter(|s| !s.mesh_ip.is_empty()) else {
            need.push(name);
            continue;
        };
        if !same_cidr(pool, &spec.mesh_cidr) {
            let entry = cidr_change.get_or_insert((spec.mesh_cidr.as_str(), 0));
            entry.1 += 1;
            need.push(name);
            continue;
        }
        match spec.mesh_ip.parse().ok().and_then(|ip| pool.offset(ip)) {
            Some(off) => match used.get(&off) {
                Some(owner) => {
                    issues.push(PlanIssue::IpConflict {
                        ip: spec.mesh_ip.clone(),
                        kept: owner.to_string(),
                        reassigned: name.to_string(),
                    });
                    need.push(name);
                }
                None => {
                    used.insert(off, name);
                    ips.insert(name.to_string(), pool.ip(off));
                }
            },
            None => {
                issues.push(PlanIssue::InvalidStoredIp {
                    node: name.to_string(),
                    ip: spec.mesh_ip.clone(),
                    cidr: cidr.clone(),
                });
                need.push(name);
            }
        }
    }
    for (name, spec) in previous {
        if active.binary_search(&name.as_str()).is_ok() || !same_cidr(pool, &spec.mesh_cidr) {
            continue;
        }
        if let Some(off) = spec.mesh_ip.parse().ok().and_then(|ip| pool.offset(ip)) {
            used.entry(off).or_insert(name.as_str());
        }
    }

    let mut cursor = pool.first;
    let mut unallocated = Vec::new();
    for name in need {
        while cursor <= pool.last && used.contains_key(&cursor) {
            cursor += 1;
        }
        if cursor > pool.last {
            unallocated.push(name.to_string());
            continue;
        }
        used.insert(cursor, name);
        ips.insert(name.to_string(), pool.ip(cursor));
        cursor += 1;
    }

    if let Some((from, nodes)) = cidr_change {
        issues.insert(
            0,
            PlanIssue::CidrChanged {
                from: from.to_string(),
                to: cidr.clone(),
                nodes,
            },
        );
    }
    if !unallocated.is_empty() {
        issues.push(PlanIssue::CidrFull {
            cidr,
            capacity: pool.capacity(),
            unallocated,
        });
    }
    Allocation { ips, issues }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_skips_network_and_broadcast() {
        let p = Pool::parse("10.0.0.0/30").unwrap();
        assert_eq!(p.capacity(), 2);
        assert_eq!(p.offset("10.0.0.0".parse().unwrap()), None);
        assert_eq!(p.offset("10.0.0.3".parse().unwrap()), None);
        assert_eq!(p.offset("10.0.0.2".parse().unwrap()), Some(2));
        assert_eq!(p.ip(1), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn pool_normalises_host_bits_and_handles_edges() {
        assert_eq!(
            Pool::parse("10.0.0.7/24").unwrap().net().to_string(),
            "10.0.0.0/24"
        );
        assert_eq!(Pool::parse("10.0.0.0/31").unwrap().capacity(), 2);
        assert_eq!(Pool::parse("10.0.0.1/32").unwrap().capacity(), 1);
        assert_eq!(Pool::parse("fd00::/120").unwrap().capacity(), 255);
        assert_eq!(Pool::parse("::/0").unwrap().capacity(), u128::MAX);
        assert!(matches!(
            Pool::parse("10.0.0.0/33"),
            Err(PlanError::InvalidCidr { .. })
        ));
    }
}
