//! NAT gateway behaviours as nftables rulesets (docs/lab-findings.md §2.1, extended for several inner hosts).

use std::fmt;

/// Interface names inside a gateway namespace.
pub const WAN_IF: &str = "wan0";
/// The LAN bridge inside a gateway namespace.
pub const LAN_IF: &str = "lan0";
/// The nftables table every gateway ruleset lives in (`table ip wklab`).
pub const TABLE: &str = "wklab";

/// How a site gateway treats traffic (RFC 4787 terms: mapping / filtering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// `masquerade random`: address-and-port-dependent mapping and filtering ("symmetric").
    Symmetric,
    /// Plain `masquerade`: endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestrictedCone,
    /// EIM plus address-dependent filtering: an inbound packet passes if the inner host has sent
    /// to that remote IP (any port) from this mapping (dynamic set `ip daddr . udp sport`).
    AddressRestrictedCone,
    /// EIM plus endpoint-independent filtering: any inbound UDP to an existing mapping is
    /// forwarded to its inner host (dynamic map `mapped port -> inner ip . port`).
    FullCone,
    /// NAT like `PortRestrictedCone`, but only outbound TCP may leave (no UDP, no ICMP).
    TcpOnlyFirewall,
    /// No NAT and no filtering of forwarded traffic: the LAN prefix is routed on the internet
    /// (give the site a public LAN, e.g. `198.19.1.0/24`).
    None,
}

impl NatKind {
    /// Every kind, for table-driven tests.
    pub const ALL: [NatKind; 6] = [
        NatKind::Symmetric,
        NatKind::PortRestrictedCone,
        NatKind::AddressRestrictedCone,
        NatKind::FullCone,
        NatKind::TcpOnlyFirewall,
        NatKind::None,
    ];

    /// Whether the mapping of one inner socket is the same towards every destination.
    pub fn endpoint_independent_mapping(self) -> bool {
        !matches!(self, NatKind::Symmetric)
    }

    /// Whether outbound UDP can leave the site at all.
    pub fn allows_udp(self) -> bool {
        !matches!(self, NatKind::TcpOnlyFirewall)
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NatKind::Symmetric => "symmetric",
            NatKind::PortRestrictedCone => "port-restricted-cone",
            NatKind::AddressRestrictedCone => "address-restricted-cone",
            NatKind::FullCone => "full-cone",
            NatKind::TcpOnlyFirewall => "tcp-only-firewall",
            NatKind::None => "none",
        })
    }
}

/// Seconds a cone mapping (map entry / filter set entry) lives without outbound traffic.
/// Matches `nf_conntrack_udp_timeout_stream` (120 s).
const CONE_TIMEOUT_S: u32 = 120;

/// Cone mappings admit only packets addressed to the gateway itself. Without it, a gateway
/// rebooted onto a new public address still translated packets for its old one (the
/// internet router's ARP entry outlives the address by up to ~30 s): the peer's packets to the
/// old address created a conntrack entry whose reply direction then sent the node's own
/// packets out from the old address, long after the reboot (found by the NAT-reboot fault).
const TO_GATEWAY: &str = "fib daddr type local";

/// The complete ruleset of a gateway for `kind`. Loading it replaces the previous one atomically
/// (the table is declared, deleted and recreated in one transaction), which also empties the
/// dynamic sets; the caller flushes conntrack afterwards.
pub fn ruleset(kind: NatKind) -> String {
    let (w, t) = (WAN_IF, TABLE);
    let masq = match kind {
        NatKind::Symmetric => format!("oifname \"{w}\" masquerade random"),
        NatKind::None => String::new(),
        _ => format!("oifname \"{w}\" masquerade"),
    };
    let mut sets = String::new();
    let mut pre = String::new();
    let mut track = String::new();
    let cone_map = format!(
        "map fc {{ type inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout {CONE_TIMEOUT_S}s; }}\n"
    );
    // After SNAT (priority srcnat + 10) `udp sport` is the mapped port; the conntrack original
    // tuple still holds the inner address and port. Only original-direction packets (the inner
    // host initiating) create or refresh a mapping.
    let track_map = format!(
        "oifname \"{w}\" meta l4proto udp ct direction original update @fc {{ udp sport : ct original ip saddr . ct original proto-src }}\n"
    );
    // Endpoint-independent mapping across inner hosts: masquerade keeps the inner port
    // whenever the 5-tuple is free, so two inner hosts with the same port (every node's
    // WireGuard port is 51820) both got the public port toward different destinations, and
    // the cone map flipped between them (a node joining a site behind a full cone took its
    // neighbour's traffic). A real cone NAT keeps one public port per inner endpoint: `rev`
    // reuses the inner endpoint's mapping for every new flow, and an inner port that is some
    // other endpoint's public port gets a random one.
    let eim_sets = format!(
        "map rev {{ type ipv4_addr . inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout {CONE_TIMEOUT_S}s; }}\n\
         set taken {{ type inet_service; flags dynamic,timeout; timeout {CONE_TIMEOUT_S}s; }}\n"
    );
    // A mapping is in use as long as packets leave through it in either direction: a cone
    // node whose flows were all started from outside (peers initiating to its srflx) sends
    // only replies, and its port must stay its own meanwhile.
    let eim_track = format!(
        "oifname \"{w}\" meta l4proto udp ct direction original update @rev {{ ct original ip saddr . ct original proto-src : ip saddr . udp sport }}\n\
         oifname \"{w}\" meta l4proto udp ct direction reply update @rev {{ ct reply ip saddr . ct reply proto-src : ip saddr . udp sport }}\n\
         oifname \"{w}\" meta l4proto udp update @taken {{ udp sport }}\n"
    );
    let track_map_reply = format!(
        "oifname \"{w}\" meta l4proto udp ct direction reply update @fc {{ udp sport : ct reply ip saddr . ct reply proto-src }}\n"
    );
    let eim_masq = format!(
        "oifname \"{w}\" meta l4proto udp snat ip to ip saddr . udp sport map @rev\n\
         oifname \"{w}\" meta l4proto udp udp sport @taken masquerade random\n"
    );
    let masq = match kind {
        NatKind::FullCone | NatKind::AddressRestrictedCone => format!("{eim_masq}{masq}"),
        _ => masq,
    };
    match kind {
        NatKind::FullCone => {
            sets += &cone_map;
            sets += &eim_sets;
            track += &track_map;
            track += &track_map_reply;
            track += &eim_track;
            pre += &format!(
                "iifname \"{w}\" {TO_GATEWAY} meta l4proto udp dnat ip to udp dport map @fc\n"
            );
        }
        NatKind::AddressRestrictedCone => {
            sets += &cone_map;
            sets += &eim_sets;
            track += &eim_track;
            sets += &format!(
                "set peers {{ type ipv4_addr . inet_service; flags dynamic,timeout; timeout {CONE_TIMEOUT_S}s; }}\n"
            );
            track += &track_map;
            track += &track_map_reply;
            track += &format!(
                "oifname \"{w}\" meta l4proto udp update @peers {{ ip daddr . udp sport }}\n"
            );
            pre += &format!(
                "iifname \"{w}\" {TO_GATEWAY} meta l4proto udp ip saddr . udp dport @peers dnat ip to udp dport map @fc\n"
            );
        }
        _ => {}
    }
    let fwd_lan = match kind {
        NatKind::TcpOnlyFirewall => {
            format!("iifname != \"{w}\" meta l4proto tcp ct state new accept")
        }
        NatKind::None => "accept".to_owned(),
        _ => format!("iifname != \"{w}\" accept"),
    };
    // INPUT policy drop matters (docs/lab-findings.md §7.4): an accepted unsolicited inbound packet would
    // leave a conntrack entry that makes a later outbound mapping pick another port.
    format!(
        "table ip {t}
delete table ip {t}
table ip {t} {{
{sets}  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;
{pre}  }}
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;
{masq}
  }}
  chain track {{ type filter hook postrouting priority srcnat + 10; policy accept;
{track}  }}
  chain input {{ type filter hook input priority filter; policy drop;
    iifname \"lo\" accept
    ct state established,related accept
    iifname != \"{w}\" accept
    icmp type echo-request accept
  }}
  chain forward {{ type filter hook forward priority filter; policy drop;
    ct state established,related accept
    ct status dnat accept
    {fwd_lan}
  }}
}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rulesets_mention_their_mechanism() {
        assert!(ruleset(NatKind::Symmetric).contains("masquerade random"));
        assert!(ruleset(NatKind::FullCone).contains("dnat ip to udp dport map @fc"));
        for cone in [NatKind::FullCone, NatKind::AddressRestrictedCone] {
            assert!(ruleset(cone).contains("snat ip to ip saddr . udp sport map @rev"));
            assert!(ruleset(cone).contains("udp sport @taken masquerade random"));
        }
        assert!(ruleset(NatKind::AddressRestrictedCone).contains("@peers"));
        for cone in [NatKind::FullCone, NatKind::AddressRestrictedCone] {
            let text = ruleset(cone);
            let dnat: Vec<&str> = text.lines().filter(|l| l.contains("dnat ip to")).collect();
            assert!(!dnat.is_empty(), "{cone}: no cone mapping");
            for line in dnat {
                assert!(
                    line.contains(TO_GATEWAY),
                    "{cone}: maps any address: {line}"
                );
            }
        }
        assert!(!ruleset(NatKind::None).contains("masquerade"));
        assert!(ruleset(NatKind::TcpOnlyFirewall).contains("meta l4proto tcp ct state new"));
    }
}
