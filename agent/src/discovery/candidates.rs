//! Candidate addresses: host (local interfaces), server-reflexive (STUN), peer-reflexive
//! (what WireGuard observed).

use std::net::{IpAddr, SocketAddr};

use wirekube_crds::{Candidate, CandidateKind};

/// One address on a local interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalAddr {
    pub ifname: String,
    pub ip: IpAddr,
    pub prefix_len: u8,
    pub loopback: bool,
    pub up: bool,
}

/// Interface name prefixes of container networking: their addresses are not reachable from
/// other nodes, and two nodes sharing e.g. `cni0 10.244.0.1/24` must not look like one LAN.
const SKIP_PREFIXES: &[&str] = &[
    "cni", "docker", "flannel", "cali", "veth", "cilium", "lxc", "kube-", "vxlan", "tunl", "weave",
    "virbr",
];

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Whether `ip` is this node's own address or inside one of its container-network subnets
/// (a pod on this node): a STUN answer from there comes back through the node itself
/// (kube-proxy, the CNI bridge) and says nothing about the NAT in front of the node.
pub fn is_hairpin(ip: IpAddr, addrs: &[LocalAddr]) -> bool {
    addrs.iter().any(|a| {
        a.ip == ip || (SKIP_PREFIXES.iter().any(|p| a.ifname.starts_with(p)) && same_subnet(a, ip))
    })
}

fn same_subnet(a: &LocalAddr, ip: IpAddr) -> bool {
    match (a.ip, ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) if a.prefix_len <= 32 => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(a.prefix_len))
                .unwrap_or(0);
            u32::from(net) & mask == u32::from(ip) & mask
        }
        _ => false,
    }
}

/// Whether an address may be published as a host candidate.
pub fn usable(a: &LocalAddr, wg_interface: &str) -> bool {
    a.up && !a.loopback
        && !a.ip.is_loopback()
        && !a.ip.is_unspecified()
        && !a.ip.is_multicast()
        && !is_link_local(a.ip)
        && a.ifname != wg_interface
        && !SKIP_PREFIXES.iter().any(|p| a.ifname.starts_with(p))
}

/// Host candidates: usable local addresses with the WireGuard port, sorted.
pub fn host_candidates(addrs: &[LocalAddr], wg_interface: &str, port: u16) -> Vec<Candidate> {
    let mut v: Vec<Candidate> = addrs
        .iter()
        .filter(|a| usable(a, wg_interface))
        .map(|a| Candidate {
            kind: CandidateKind::Host,
            address: SocketAddr::new(a.ip, port).to_string(),
            prefix_length: Some(a.prefix_len),
            observed_by: None,
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Peer-reflexive candidates: for every peer whose WireGuard endpoint is a real (not relay)
/// address, that address with `observedBy` naming the peer it belongs to. Behind a
/// port-changing NAT this is the only endpoint that works (docs/lab-findings.md §7.7), so the planner
/// can prefer it over the STUN-derived one.
pub fn prflx_candidates<'a>(
    observed: impl IntoIterator<Item = (&'a str, SocketAddr)>,
) -> Vec<Candidate> {
    let mut v: Vec<Candidate> = observed
        .into_iter()
        .filter(|(_, a)| !a.ip().is_loopback() && !a.ip().is_unspecified())
        .map(|(peer, a)| Candidate {
            kind: CandidateKind::Prflx,
            address: a.to_string(),
            prefix_length: None,
            observed_by: Some(peer.to_string()),
        })
        .collect();
    v.sort();
    v
}

/// Reads the local interface addresses with `getifaddrs(3)`.
#[allow(unsafe_code)]
pub fn local_addrs() -> std::io::Result<Vec<LocalAddr>> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free with freeifaddrs below; every pointer
    // read is checked for null and only dereferenced while the list is alive.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
                continue;
            }
            let Some(ip) = sockaddr_ip(ifa.ifa_addr) else {
                continue;
            };
            let prefix_len = if ifa.ifa_netmask.is_null() {
                if ip.is_ipv4() { 32 } else { 128 }
            } else {
                match sockaddr_ip(ifa.ifa_netmask) {
                    Some(IpAddr::V4(m)) => u32::from(m).count_ones() as u8,
                    Some(IpAddr::V6(m)) => u128::from(m).count_ones() as u8,
                    None => continue,
                }
            };
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name)
                .to_string_lossy()
                .into_owned();
            out.push(LocalAddr {
                ifname: name,
                ip,
                prefix_len,
                loopback: ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0,
                up: ifa.ifa_flags & libc::IFF_UP as u32 != 0,
            });
        }
        libc::freeifaddrs(head);
    }
    Ok(out)
}

/// # Safety
/// `sa` must point to a valid sockaddr.
#[allow(unsafe_code)]
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    // SAFETY: the family field is valid for every sockaddr; the cast matches the family.
    unsafe {
        match (*sa).sa_family as i32 {
            libc::AF_INET => {
                let sin = &*(sa as *const libc::sockaddr_in);
                Some(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ))
            }
            libc::AF_INET6 => {
                let sin6 = &*(sa as *const libc::sockaddr_in6);
                Some(IpAddr::from(sin6.sin6_addr.s6_addr))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn la(ifname: &str, ip: &str, prefix: u8) -> LocalAddr {
        LocalAddr {
            ifname: ifname.into(),
            ip: ip.parse().unwrap(),
            prefix_len: prefix,
            loopback: ifname == "lo",
            up: true,
        }
    }

    #[test]
    fn hairpin_is_own_addresses_and_local_pod_subnets() {
        let addrs = [
            la("eth0", "198.18.0.12", 24),
            la("eth0", "198.18.0.240", 32),
            la("cni0", "10.244.1.1", 24),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for (what, addr, want) in [
            ("own address", "198.18.0.12", true),
            ("load-balancer address announced here", "198.18.0.240", true),
            ("pod on this node", "10.244.1.2", true),
            ("pod on another node", "10.244.2.2", false),
            (
                "server on the same LAN is a real answer",
                "198.18.0.20",
                false,
            ),
        ] {
            assert_eq!(is_hairpin(ip(addr), &addrs), want, "{what}");
        }
    }

    #[test]
    fn host_candidates_skip_loopback_wg_linklocal_and_cni() {
        let addrs = vec![
            la("lo", "127.0.0.1", 8),
            la("eth0", "10.1.0.11", 24),
            la("eth0", "fe80::1", 64),
            la("eth1", "169.254.3.4", 16),
            la("wirekube0", "100.64.0.1", 10),
            la("cni0", "10.244.0.1", 24),
            la("eth1", "2001:db8::5", 64),
            LocalAddr {
                up: false,
                ..la("eth2", "192.168.9.9", 24)
            },
        ];
        let c = host_candidates(&addrs, "wirekube0", 51820);
        let got: Vec<(&str, Option<u8>)> = c
            .iter()
            .map(|c| (c.address.as_str(), c.prefix_length))
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.1.0.11:51820", Some(24)),
                ("[2001:db8::5]:51820", Some(64))
            ]
        );
        assert!(c.iter().all(|c| c.kind == CandidateKind::Host));
    }

    #[test]
    fn prflx_names_the_peer_and_skips_relay_sockets() {
        let c = prflx_candidates([
            ("b", "198.18.0.11:59977".parse().unwrap()),
            ("c", "127.0.0.1:40001".parse().unwrap()),
        ]);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].kind, CandidateKind::Prflx);
        assert_eq!(c[0].observed_by.as_deref(), Some("b"));
    }

    #[test]
    fn reads_real_interfaces() {
        let addrs = local_addrs().unwrap();
        assert!(addrs.iter().any(|a| a.ip.is_loopback() && a.loopback));
    }
}
