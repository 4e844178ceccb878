//! Plain data types shared by the public API.

use std::net::SocketAddr;

/// What every `Debug` output shows instead of a private key (logs at any level, errors,
/// panics).
pub const REDACTED: &str = "<redacted>";

/// Desired state of this node's WireGuard interface and the routing around it.
#[derive(Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    /// Interface name, at most 15 bytes. For userspace engines it also names the UAPI
    /// socket `/var/run/wireguard/<name>.sock`, which is global across network namespaces.
    pub name: String,
    /// This node's WireGuard private key (raw bytes, never logged).
    pub private_key: [u8; 32],
    /// UDP listen port of WireGuard.
    pub listen_port: u16,
    /// Interface MTU (1420 fits IPv4 and IPv6 outer headers on a 1500-byte underlay).
    pub mtu: u32,
    /// This node's mesh IP with the mesh prefix length, e.g. `100.96.0.5/16`.
    pub address: ipnet::IpNet,
    /// The whole mesh range (the interface address must lie in it).
    pub mesh_cidr: ipnet::IpNet,
    /// fwmark that WireGuard puts on its own UDP packets (and the relay socket should use);
    /// marked packets bypass the mesh table so they can never loop into the tunnel.
    pub fwmark: u32,
    /// Routing table holding one route per peer AllowedIP ([`crate::DEFAULT_TABLE`] unless
    /// configured). It must be WireKube's alone: the `lookup` rule sends to whatever routes
    /// the table holds. WireKube only ever changes its own routes in it (protocol
    /// [`crate::ROUTE_PROTOCOL`]) and reports foreign ones at prefixes it needs.
    pub table: u32,
    /// Priority of the ip rule `lookup <table>` (no destination: the table holds only the
    /// peers' AllowedIPs, and a miss falls through). The fwmark bypass rule uses
    /// `rule_priority - 1`.
    pub rule_priority: u32,
}

impl std::fmt::Debug for InterfaceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured without `..`: a field added here must be shown or redacted on purpose.
        let InterfaceConfig {
            name,
            private_key: _,
            listen_port,
            mtu,
            address,
            mesh_cidr,
            fwmark,
            table,
            rule_priority,
        } = self;
        f.debug_struct("InterfaceConfig")
            .field("name", name)
            .field("private_key", &REDACTED)
            .field("listen_port", listen_port)
            .field("mtu", mtu)
            .field("address", address)
            .field("mesh_cidr", mesh_cidr)
            .field("fwmark", fwmark)
            .field("table", table)
            .field("rule_priority", rule_priority)
            .finish()
    }
}

/// A route WireKube did not create, found in its table at a prefix it needs
/// ([`crate::DataplaneError::RouteConflict`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignRoute {
    /// The contested prefix.
    pub prefix: ipnet::IpNet,
    /// The table it is in.
    pub table: u32,
    /// Its routing protocol number (`rtm_protocol`): who made it (3 `boot` is `ip route add`
    /// without `proto`, as wg-quick does).
    pub protocol: u8,
    /// Its output interface, when it has one that still exists.
    pub device: Option<String>,
}

impl std::fmt::Display for ForeignRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use rtnetlink::packet_route::route::RouteProtocol;
        write!(
            f,
            "{} table {} proto {}",
            self.prefix, self.table, self.protocol
        )?;
        match RouteProtocol::from(self.protocol) {
            RouteProtocol::Other(_) => {}
            known => write!(f, " ({})", known.to_string().to_lowercase())?,
        }
        match &self.device {
            Some(d) => write!(f, " dev {d}"),
            None => Ok(()),
        }
    }
}

/// Desired state of one WireGuard peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's public key.
    pub public_key: [u8; 32],
    /// Where to send to. For a relayed peer this is the address returned by
    /// [`crate::RelayBridge::endpoint_for`]. `None` leaves WireGuard to learn it (roaming).
    pub endpoint: Option<SocketAddr>,
    /// Prefixes routed to and accepted from this peer (its mesh IP /32 at least).
    pub allowed_ips: Vec<ipnet::IpNet>,
    /// Persistent keepalive in seconds; `None` or `Some(0)` disables it.
    pub persistent_keepalive: Option<u16>,
}

/// What one [`crate::Dataplane::reconcile`] call had to change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Individual WireGuard writes: interface settings, peers added, updated or removed.
    pub wireguard_changes: usize,
    /// Individual netlink writes: link attributes, addresses, routes and rules.
    pub netlink_changes: usize,
    /// The peers whose endpoint this call wrote (new peers, changed desired endpoints). A peer
    /// without a completed handshake was re-created for it, which lets its next datagram
    /// start a handshake at once (see `wg_changes`).
    pub endpoints_written: Vec<[u8; 32]>,
}

impl ReconcileReport {
    /// True when the call found nothing to do.
    pub fn is_noop(&self) -> bool {
        self.wireguard_changes == 0 && self.netlink_changes == 0
    }
}

/// Default fwmark for WireGuard's and the relay client's own packets when the caller has no
/// preference. It must not share a bit with the marks other node components test with a mask:
/// kube-proxy masquerades packets carrying 0x4000 (`masquerade fully-random`, which re-maps
/// WireGuard's source port and breaks the relay bridge and NAT traversal) and its iptables mode
/// drops 0x8000; Cilium uses 0x0f00 and the upper 16 bits, Calico 0xffff0000, Tailscale
/// 0xff0000. wg-quick's 51820 (0xca6c) has both kube-proxy bits set, which the real kube-proxy
/// in the lab showed. 0x206c is clear of all of them (docs/agent.md).
pub const DEFAULT_FWMARK: u32 = 0x206c;

/// The mark the agent should set (`SO_MARK`) on its relay TCP socket so that relay traffic
/// bypasses the mesh table, the same way WireGuard's UDP does. Returns `iface.fwmark`, or
/// [`DEFAULT_FWMARK`] when that is 0.
pub fn relay_socket_mark(iface: &InterfaceConfig) -> u32 {
    if iface.fwmark == 0 {
        DEFAULT_FWMARK
    } else {
        iface.fwmark
    }
}
