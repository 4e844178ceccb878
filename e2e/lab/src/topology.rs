//! Building the topology: the internet bridge, sites with NAT gateways, nodes, public hosts, DMZ.
//! Elastic IPs (1:1 NAT) and sites behind other sites (double NAT) are in [`layered`].

mod layered;
mod reboot;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::error::{LabError, Result};
use crate::nat::{self, LAN_IF, NatKind, WAN_IF};
use crate::netns;
use crate::{INTERNET_GW, Ipv4Net, Lab};

/// Bridge inside the internet namespace.
pub const INTERNET_BRIDGE: &str = "br0";
/// A host's only NIC (nodes, public nodes, DMZ).
pub const HOST_IF: &str = "eth0";
/// Longest site name (the gateway namespace is `<prefix>-<site>-gw`, its bridge port `s-<site>`).
pub const MAX_SITE_NAME: usize = 9;
/// Longest host name (bridge ports are `h-<name>` / `n-<name>`, at most 15 characters).
pub const MAX_HOST_NAME: usize = 12;

/// What a namespace plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The internet bridge (198.18.0.1).
    Internet,
    /// A site's NAT gateway.
    Gateway,
    /// A node on a site LAN.
    Node,
    /// A node with a public address on its NIC.
    PublicNode,
    /// The DMZ (API test server, relay, STUN).
    Dmz,
    /// A pod's network namespace, made by a kubelet (not by the lab): a [`Host`] value to
    /// run commands and traffic in it, see [`Host::pod`].
    Pod,
}

impl Role {
    /// Simulated machines get private `/var/run/wireguard` and `/var/lib/wirekube`; network
    /// plumbing (internet, gateways) does not need them.
    pub fn has_private_view(self) -> bool {
        matches!(self, Role::Node | Role::PublicNode | Role::Dmz)
    }
}

/// One namespace of the lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Short name, unique in the lab (`a`, `home-gw`, `dmz`).
    pub name: String,
    /// Network namespace name (`<prefix>-<name>`).
    pub ns: String,
    /// What it is.
    pub role: Role,
    /// Its addresses; the first is the primary one. Gateways: WAN first, LAN second.
    pub ips: Vec<Ipv4Addr>,
    /// The site of a node or gateway.
    pub site: Option<String>,
}

impl Host {
    /// A pod's network namespace as a host to run commands and traffic in: `ns` is a name
    /// under `/run/netns` or a path such as `/proc/<container pid>/ns/net` (the lab kubelet
    /// makes pod namespaces inside the node's private mount view); `ip` is the pod IP, `site`
    /// the site of its node.
    pub fn pod(name: &str, ns: &str, ip: Ipv4Addr, site: Option<String>) -> Host {
        Host {
            name: name.into(),
            ns: ns.into(),
            role: Role::Pod,
            ips: vec![ip],
            site,
        }
    }

    /// The primary address (LAN address of a node, WAN address of a gateway).
    pub fn ip(&self) -> Ipv4Addr {
        self.ips[0]
    }
}

/// What to build with [`Lab::add_site`].
#[derive(Clone, Debug)]
pub struct SiteSpec {
    /// Site name, 1–9 characters `[a-z0-9]`.
    pub name: String,
    /// Gateway behaviour.
    pub nat: NatKind,
    /// LAN prefix; the gateway takes the first address, nodes get `.11`, `.12`, ...
    pub lan_cidr: Ipv4Net,
    /// WAN (public) address; allocated from `198.18.0.0/24` when `None`.
    pub wan_ip: Option<Ipv4Addr>,
    /// The site whose LAN this gateway's WAN is on (a carrier-grade NAT in front of a home
    /// router: double NAT); `None` puts the WAN on the internet.
    pub upstream: Option<String>,
}

impl SiteSpec {
    /// A site with an automatically allocated WAN address. Panics if `lan_cidr` is not a valid
    /// IPv4 prefix (it is a literal in tests).
    pub fn new(name: &str, nat: NatKind, lan_cidr: &str) -> SiteSpec {
        SiteSpec {
            name: name.to_owned(),
            nat,
            lan_cidr: lan_cidr
                .parse::<Ipv4Net>()
                .unwrap_or_else(|e| panic!("bad LAN prefix {lan_cidr:?}: {e}"))
                .trunc(),
            wan_ip: None,
            upstream: None,
        }
    }

    /// Puts the gateway's WAN on `site`'s LAN instead of the internet (double NAT).
    pub fn behind(mut self, site: &str) -> SiteSpec {
        self.upstream = Some(site.to_owned());
        self
    }

    /// Sets the WAN address.
    pub fn wan_ip(mut self, ip: Ipv4Addr) -> SiteSpec {
        self.wan_ip = Some(ip);
        self
    }
}

/// A site: a gateway and the nodes on its LAN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    pub name: String,
    /// Current gateway behaviour (changed by [`Lab::set_nat`]).
    pub nat: NatKind,
    pub lan: Ipv4Net,
    /// The gateway's WAN address: public, or on the upstream site's LAN.
    pub wan_ip: Ipv4Addr,
    pub gateway: Host,
    /// Node names in creation order.
    pub nodes: Vec<String>,
    /// The site whose LAN the WAN is on (double NAT).
    pub upstream: Option<String>,
    /// Gateways of sites whose WAN is on this LAN, in creation order.
    pub downstream: Vec<String>,
    /// Nodes with an elastic IP (1:1 NAT on this gateway): node name → public address.
    pub elastic: BTreeMap<String, Ipv4Addr>,
}

impl Site {
    /// The gateway's LAN address (default route of the nodes).
    pub fn lan_gw(&self) -> Ipv4Addr {
        self.lan.hosts().next().expect("LAN has hosts")
    }
}

impl Lab {
    pub(crate) fn build_internet(&self) -> Result<()> {
        let host = self.new_host("inet", Role::Internet, vec![INTERNET_GW], None)?;
        let ns = host.ns.as_str();
        netns::ip_batch(
            ns,
            &[
                format!("link add {INTERNET_BRIDGE} type bridge"),
                format!("addr add {INTERNET_GW}/24 dev {INTERNET_BRIDGE}"),
                format!("link set {INTERNET_BRIDGE} up"),
            ],
        )?;
        // Forwarding only matters for sites with NatKind::None (their LAN is routed here).
        // There is no default route, so nothing leaves 198.18.0.0/15 space.
        netns::sysctl(ns, "net.ipv4.ip_forward", "1")?;
        let mut st = self.lock();
        st.used_public.insert(INTERNET_GW);
        st.hosts.insert(host.name.clone(), host);
        Ok(())
    }

    /// The internet namespace (bridge `br0`, 198.18.0.1).
    pub fn internet(&self) -> Host {
        self.lock().hosts["inet"].clone()
    }

    /// A host by name.
    pub fn host(&self, name: &str) -> Result<Host> {
        self.lock()
            .hosts
            .get(name)
            .cloned()
            .ok_or_else(|| LabError::Unknown {
                kind: "host",
                name: name.to_owned(),
            })
    }

    /// A site by name.
    pub fn site(&self, name: &str) -> Result<Site> {
        self.lock()
            .sites
            .get(name)
            .cloned()
            .ok_or_else(|| LabError::Unknown {
                kind: "site",
                name: name.to_owned(),
            })
    }

    /// Every host, by name.
    pub fn hosts(&self) -> Vec<Host> {
        self.lock().hosts.values().cloned().collect()
    }

    /// Adds a site: gateway namespace `<site>-gw` with `wan0` on the internet bridge and a LAN
    /// bridge `lan0`, loaded with the ruleset of `spec.nat`.
    pub fn add_site(&self, spec: SiteSpec) -> Result<Site> {
        check_name(&spec.name, MAX_SITE_NAME)?;
        if self.lock().sites.contains_key(&spec.name) {
            return Err(LabError::Topology(format!("site {} exists", spec.name)));
        }
        if spec.lan_cidr.prefix_len() > 28 {
            return Err(LabError::Topology(format!(
                "LAN {} is too small (need /28 or larger)",
                spec.lan_cidr
            )));
        }
        let parent = spec.upstream.as_deref().map(|u| self.site(u)).transpose()?;
        let wan_ip = match &parent {
            Some(p) => next_lan_ip(p)?,
            None => self.take_public(spec.wan_ip)?,
        };
        let lan_gw = spec.lan_cidr.hosts().next().expect("LAN has hosts");
        let gw = self.new_host(
            &format!("{}-gw", spec.name),
            Role::Gateway,
            vec![wan_ip, lan_gw],
            Some(spec.name.clone()),
        )?;
        let default_via = match &parent {
            Some(p) => {
                self.plug_into_lan(&gw, WAN_IF, p, &format!("d-{}", spec.name), wan_ip)?;
                p.lan_gw()
            }
            None => {
                self.attach_to_internet(&gw, WAN_IF, &format!("s-{}", spec.name), &[wan_ip])?;
                INTERNET_GW
            }
        };
        netns::ip_batch(
            &gw.ns,
            &[
                format!("link add {LAN_IF} type bridge"),
                format!(
                    "addr add {lan_gw}/{} dev {LAN_IF}",
                    spec.lan_cidr.prefix_len()
                ),
                format!("link set {LAN_IF} up"),
                format!("route add default via {default_via}"),
            ],
        )?;
        netns::sysctl(&gw.ns, "net.ipv4.ip_forward", "1")?;
        let site = Site {
            name: spec.name.clone(),
            nat: spec.nat,
            lan: spec.lan_cidr,
            wan_ip,
            gateway: gw,
            nodes: Vec::new(),
            upstream: spec.upstream.clone(),
            downstream: Vec::new(),
            elastic: BTreeMap::new(),
        };
        {
            let mut st = self.lock();
            if let Some(u) = &spec.upstream {
                st.sites
                    .get_mut(u)
                    .ok_or_else(|| LabError::Unknown {
                        kind: "upstream site",
                        name: u.clone(),
                    })?
                    .downstream
                    .push(spec.name.clone());
            }
            st.sites.insert(site.name.clone(), site.clone());
        }
        self.set_nat(&site.name, spec.nat)?;
        self.site(&site.name)
    }

    /// Adds node `name` on `site`'s LAN (`eth0`, next free address from `.11`, default route via
    /// the gateway).
    pub fn add_node(&self, site: &str, name: &str) -> Result<Host> {
        check_name(name, MAX_HOST_NAME)?;
        let s = self.site(site)?;
        let ip = next_lan_ip(&s)?;
        let host = self.new_host(name, Role::Node, vec![ip], Some(site.to_owned()))?;
        self.plug_into_lan(&host, HOST_IF, &s, &format!("n-{name}"), ip)?;
        netns::ip(
            &host.ns,
            &["route", "add", "default", "via", &s.lan_gw().to_string()],
        )?;
        self.lock()
            .sites
            .get_mut(site)
            .expect("site exists")
            .nodes
            .push(name.to_owned());
        Ok(host)
    }

    /// veth `inner` (in `host`, address `ip` on the LAN's prefix) <-> `port` on `site`'s LAN
    /// bridge.
    fn plug_into_lan(
        &self,
        host: &Host,
        inner: &str,
        site: &Site,
        port: &str,
        ip: Ipv4Addr,
    ) -> Result<()> {
        netns::ip(
            &host.ns,
            &[
                "link",
                "add",
                inner,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                &site.gateway.ns,
            ],
        )?;
        let alias = self.link_alias();
        netns::ip_batch(
            &site.gateway.ns,
            &[
                format!("link set {port} alias {alias}"),
                format!("link set {port} master {LAN_IF} up"),
            ],
        )?;
        netns::ip_batch(
            &host.ns,
            &[
                format!("link set {inner} alias {alias}"),
                format!("addr add {ip}/{} dev {inner}", site.lan.prefix_len()),
                format!("link set {inner} up"),
            ],
        )?;
        Ok(())
    }

    /// Adds a node whose NIC carries a public address (allocated) directly on the internet bridge.
    pub fn add_public_node(&self, name: &str) -> Result<Host> {
        self.add_public_host(name, Role::PublicNode, &[])
    }

    /// Adds a DMZ host with the given public addresses (two are needed for [`Lab::probe_nat`]);
    /// when `ips` is empty, two are allocated.
    pub fn add_dmz(&self, name: &str, ips: &[Ipv4Addr]) -> Result<Host> {
        self.add_public_host(name, Role::Dmz, ips)
    }

    fn add_public_host(&self, name: &str, role: Role, ips: &[Ipv4Addr]) -> Result<Host> {
        check_name(name, MAX_HOST_NAME)?;
        let want = match (role, ips.len()) {
            (Role::Dmz, 0) => vec![None, None],
            (_, 0) => vec![None],
            _ => ips.iter().copied().map(Some).collect(),
        };
        let mut got = Vec::new();
        for w in want {
            got.push(self.take_public(w)?);
        }
        let host = self.new_host(name, role, got.clone(), None)?;
        self.attach_to_internet(&host, HOST_IF, &format!("h-{name}"), &got)?;
        netns::ip(
            &host.ns,
            &["route", "add", "default", "via", &INTERNET_GW.to_string()],
        )?;
        Ok(host)
    }

    /// Creates a namespace for a new host and registers it.
    fn new_host(
        &self,
        name: &str,
        role: Role,
        ips: Vec<Ipv4Addr>,
        site: Option<String>,
    ) -> Result<Host> {
        let ns = self.ns_name(name);
        {
            let mut st = self.lock();
            if st.down {
                return Err(LabError::Topology("lab is shut down".into()));
            }
            if st.hosts.contains_key(name) {
                return Err(LabError::Topology(format!("host {name} exists")));
            }
            // Registered before creation so that teardown removes a half-built namespace too.
            st.namespaces.push(ns.clone());
        }
        netns::create(&ns)?;
        for key in [
            "net.ipv4.conf.all.rp_filter",
            "net.ipv4.conf.default.rp_filter",
        ] {
            netns::sysctl(&ns, key, "0")?;
        }
        for key in [
            "net.bridge.bridge-nf-call-iptables",
            "net.bridge.bridge-nf-call-ip6tables",
            "net.bridge.bridge-nf-call-arptables",
        ] {
            // Present only when br_netfilter is loaded; absent means "off" anyway.
            if let Err(e) = netns::sysctl(&ns, key, "0")
                && netns::sysctl_get(&ns, key).is_ok()
            {
                return Err(e);
            }
        }
        if role.has_private_view() {
            let hd = self.host_dir(name);
            for sub in ["run-wireguard", "lib-wirekube", "cni-net.d"] {
                std::fs::create_dir_all(hd.join(sub)).map_err(|source| LabError::Io {
                    context: format!("create {}", hd.join(sub).display()),
                    source,
                })?;
            }
        }
        let host = Host {
            name: name.to_owned(),
            ns,
            role,
            ips,
            site,
        };
        self.lock().hosts.insert(name.to_owned(), host.clone());
        Ok(host)
    }

    /// veth `inner` (in `host`) <-> `port` (in the internet, on the bridge), addresses on `inner`.
    fn attach_to_internet(
        &self,
        host: &Host,
        inner: &str,
        port: &str,
        ips: &[Ipv4Addr],
    ) -> Result<()> {
        let inet = self.ns_name("inet");
        netns::ip(
            &host.ns,
            &[
                "link", "add", inner, "type", "veth", "peer", "name", port, "netns", &inet,
            ],
        )?;
        let alias = self.link_alias();
        netns::ip_batch(
            &inet,
            &[
                format!("link set {port} alias {alias}"),
                format!("link set {port} master {INTERNET_BRIDGE} up"),
            ],
        )?;
        let mut lines = vec![format!("link set {inner} alias {alias}")];
        lines.extend(ips.iter().map(|ip| format!("addr add {ip}/24 dev {inner}")));
        lines.push(format!("link set {inner} up"));
        netns::ip_batch(&host.ns, &lines)?;
        Ok(())
    }

    /// Alias set on every veth end, so that a link that ever showed up in the root namespace
    /// would be recognised by [`Lab::leftovers`].
    pub(crate) fn link_alias(&self) -> String {
        format!("wirekube-lab:{}", self.prefix)
    }

    /// Reserves a public address: `want`, or the next free one from 198.18.0.10.
    pub(crate) fn take_public(&self, want: Option<Ipv4Addr>) -> Result<Ipv4Addr> {
        let net: Ipv4Net = crate::INTERNET_NET.parse().expect("constant");
        let mut st = self.lock();
        let ip = match want {
            Some(ip) => {
                if !net.contains(&ip) || ip == net.network() || ip == net.broadcast() {
                    return Err(LabError::Topology(format!("{ip} is not a host in {net}")));
                }
                if st.used_public.contains(&ip) {
                    return Err(LabError::Topology(format!("{ip} is already used")));
                }
                ip
            }
            None => net
                .hosts()
                .skip(9)
                .find(|ip| !st.used_public.contains(ip))
                .ok_or_else(|| LabError::Topology("no public address left".into()))?,
        };
        st.used_public.insert(ip);
        Ok(ip)
    }

    /// Replaces the gateway ruleset of `site` by the one of `kind`, then flushes the gateway's
    /// conntrack table so that no old mapping survives (docs/lab-findings.md §7.5).
    pub fn set_nat(&self, site: &str, kind: NatKind) -> Result<()> {
        let s = self.site(site)?;
        self.run_input(&s.gateway, &["nft", "-f", "-"], &nat::ruleset(kind))?;
        self.flush_conntrack(site)?;
        let inet = self.internet();
        let (lan, via) = (s.lan.to_string(), s.wan_ip.to_string());
        if kind == NatKind::None {
            netns::ip(&inet.ns, &["route", "replace", &lan, "via", &via])?;
        } else if s.nat == NatKind::None {
            netns::ip(&inet.ns, &["route", "del", &lan, "via", &via])?;
        }
        self.lock().sites.get_mut(site).expect("site exists").nat = kind;
        tracing::debug!(site, %kind, "nat set");
        Ok(())
    }

    /// Empties the conntrack table of `site`'s gateway (every NAT mapping is forgotten).
    pub fn flush_conntrack(&self, site: &str) -> Result<()> {
        let s = self.site(site)?;
        let out = self.exec(&s.gateway, &["conntrack", "-F"])?;
        // conntrack -F fails harmlessly on an empty table in some versions.
        if !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("flushed") {
            tracing::debug!(site, stderr = %String::from_utf8_lossy(&out.stderr), "conntrack -F");
        }
        Ok(())
    }
}

/// The next free LAN address of `site` for a node or a downstream gateway (`.11`, `.12`, ...).
fn next_lan_ip(site: &Site) -> Result<Ipv4Addr> {
    site.lan
        .hosts()
        .nth(10 + site.nodes.len() + site.downstream.len())
        .ok_or_else(|| LabError::Topology(format!("LAN of {} is full", site.name)))
}

fn check_name(name: &str, max: usize) -> Result<()> {
    let bad = |reason| {
        Err(LabError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > max {
        return bad("length out of range (sites 1-9, hosts 1-12 characters)");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return bad("must start with a lowercase letter");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return bad("only a-z, 0-9 and '-'");
    }
    if name == "inet" || name.ends_with("-gw") {
        return bad("reserved (inet, *-gw)");
    }
    Ok(())
}
