//! rtnetlink: the link's MTU/state/address, peer routes in the mesh table and the two ip
//! rules. Every function reads first and writes only what differs, returning the number of
//! writes so that reconcile can prove idempotency by counting. Routes and rules are created
//! with WireKube's protocol mark and only WireKube's are touched (`owner` decides which).

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo};
use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol, RouteScope};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, LinkUnspec, LinkWireguard, RouteMessageBuilder};

use crate::error::DataplaneError;
use crate::owner::{
    ROUTE_PROTOCOL, RT_TABLE_MAIN, RouteView, RuleKey, RuleView, Scope, plan_routes, plan_rules,
    route_is_ours,
};
use crate::types::{ForeignRoute, InterfaceConfig};

/// A link as netlink reports it.
#[derive(Debug, Clone)]
pub(crate) struct LinkState {
    pub index: u32,
    pub mtu: u32,
    pub up: bool,
    /// `wireguard` for kernel links, `tun` for userspace engines.
    pub kind: Option<String>,
}

/// What `reconcile_routes` did and left to do.
#[derive(Debug, Default)]
pub(crate) struct RouteSync {
    /// Writes made.
    pub changes: usize,
    /// Foreign routes at prefixes we need.
    pub foreign: Vec<ForeignRoute>,
    /// Our routes to delete once the rules are in place.
    pub stale: Vec<RouteMessage>,
}

pub(crate) struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a route netlink socket in the calling thread's network namespace and drives it
    /// on the current tokio runtime.
    pub fn connect() -> Result<Self, DataplaneError> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| DataplaneError::io("open rtnetlink socket", e))?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    pub async fn link(&self, name: &str) -> Result<Option<LinkState>, DataplaneError> {
        let mut req = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        let msg = match req.try_next().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            // ENODEV comes back as an error, not an empty dump.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
                return Ok(None);
            }
            Err(e) => return Err(DataplaneError::netlink(format!("get link {name}"), e)),
        };
        let mut st = LinkState {
            index: msg.header.index,
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            kind: None,
        };
        for a in &msg.attributes {
            match a {
                LinkAttribute::Mtu(m) => st.mtu = *m,
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            st.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Some(st))
    }

    /// Creates a kernel WireGuard link (fails with EOPNOTSUPP without the module).
    pub async fn create_kernel_wg(&self, name: &str) -> Result<(), DataplaneError> {
        self.handle
            .link()
            .add(LinkWireguard::new(name).build())
            .execute()
            .await
            .map_err(|e| DataplaneError::netlink(format!("add link {name} type wireguard"), e))
    }

    pub async fn delete_link(&self, index: u32) -> Result<(), DataplaneError> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| DataplaneError::netlink(format!("delete link #{index}"), e))
    }

    /// MTU, up, and exactly one address (the mesh IP) on the link.
    pub async fn reconcile_link(
        &self,
        link: &LinkState,
        iface: &InterfaceConfig,
    ) -> Result<usize, DataplaneError> {
        let mut changes = 0;
        if link.mtu != iface.mtu {
            self.handle
                .link()
                .set(
                    LinkUnspec::new_with_index(link.index)
                        .mtu(iface.mtu)
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| DataplaneError::netlink(format!("set mtu {}", iface.mtu), e))?;
            changes += 1;
        }
        let addrs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| DataplaneError::netlink("list addresses", e))?;
        let mut have_desired = false;
        for a in addrs {
            let Some(ip) = address_of(&a) else { continue };
            if ip == iface.address.addr() && a.header.prefix_len == iface.address.prefix_len() {
                have_desired = true;
                continue;
            }
            // Link-local IPv6 is the kernel's, not ours.
            if let IpAddr::V6(v6) = ip
                && v6.segments()[0] & 0xffc0 == 0xfe80
            {
                continue;
            }
            self.handle
                .address()
                .del(a)
                .execute()
                .await
                .map_err(|e| DataplaneError::netlink(format!("delete stale address {ip}"), e))?;
            changes += 1;
        }
        if !have_desired {
            let mut req = self.handle.address().add(
                link.index,
                iface.address.addr(),
                iface.address.prefix_len(),
            );
            // No connected route for the mesh prefix in the main table: mesh routing lives
            // only in the dedicated table, so the main table stays exactly as CNI left it.
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Noprefixroute));
            req.execute().await.map_err(|e| {
                DataplaneError::netlink(format!("add address {}", iface.address), e)
            })?;
            changes += 1;
        }
        if !link.up {
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(link.index).up().build())
                .execute()
                .await
                .map_err(|e| DataplaneError::netlink("set link up", e))?;
            changes += 1;
        }
        Ok(changes)
    }

    /// Name of the link with `index`, for error messages (None if it is gone).
    async fn link_name(&self, index: u32) -> Option<String> {
        let mut req = self.handle.link().get().match_index(index).execute();
        let msg = req.try_next().await.ok()??;
        msg.attributes.into_iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n),
            _ => None,
        })
    }

    /// Every route of both families in every table: without strict checking the kernel
    /// ignores a table filter in dump requests, so the caller filters.
    async fn routes(&self) -> Result<Vec<RouteMessage>, DataplaneError> {
        let mut out = Vec::new();
        for v in [IpVersion::V4, IpVersion::V6] {
            let query = match v {
                IpVersion::V4 => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
                IpVersion::V6 => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
            };
            let all: Vec<RouteMessage> = self
                .handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(|e| DataplaneError::netlink("list routes", e))?;
            out.extend(all);
        }
        Ok(out)
    }

    async fn delete_route(&self, r: RouteMessage) -> Result<(), DataplaneError> {
        let v = RouteView::of(&r);
        let op = format!("delete route {:?} table {}", v.dst, v.table);
        self.handle
            .route()
            .del(r)
            .execute()
            .await
            .map_err(|e| DataplaneError::netlink(op, e))
    }

    /// Exactly one route per distinct prefix in `prefixes`, via the link, in `iface.table`,
    /// with the mesh IP as the preferred source: traffic the node itself sends to a pod CIDR
    /// or node address behind a peer leaves from the mesh IP, so the reply comes back through
    /// the mesh. Only WireKube's routes are written (see `owner`); foreign routes at needed
    /// prefixes are left alone and returned. Stale routes are returned too, for
    /// [`Netlink::delete_routes`] after the rules.
    pub async fn reconcile_routes(
        &self,
        link_index: u32,
        iface: &InterfaceConfig,
        prefixes: &BTreeSet<IpNet>,
    ) -> Result<RouteSync, DataplaneError> {
        let scope = Scope {
            table: iface.table,
            priority: iface.rule_priority,
            link: Some(link_index),
        };
        let src = iface.address.addr();
        let msgs = self.routes().await?;
        let views: Vec<RouteView> = msgs.iter().map(RouteView::of).collect();
        let plan = plan_routes(&views, prefixes, &scope, src);
        let mut sync = RouteSync::default();
        for (i, r) in msgs.into_iter().enumerate() {
            if plan.duplicates.contains(&i) {
                self.delete_route(r).await?;
                sync.changes += 1;
            } else if plan.delete.contains(&i) {
                sync.stale.push(r);
            }
        }
        for (p, replace) in plan
            .replace
            .iter()
            .map(|p| (p, true))
            .chain(plan.add.iter().map(|p| (p, false)))
        {
            let src = (p.addr().is_ipv4() == src.is_ipv4()).then_some(src);
            let mut req = self
                .handle
                .route()
                .add(route_message(*p, link_index, iface.table, src));
            if replace {
                req = req.replace();
            }
            req.execute().await.map_err(|e| {
                DataplaneError::netlink(format!("add route {p} table {}", iface.table), e)
            })?;
            sync.changes += 1;
        }
        for v in plan.conflicts {
            let device = match v.oif {
                Some(i) => self.link_name(i).await,
                None => None,
            };
            sync.foreign.push(ForeignRoute {
                prefix: v
                    .dst
                    .unwrap_or_else(|| unreachable!("conflicts have a prefix")),
                table: v.table,
                protocol: v.protocol,
                device,
            });
        }
        Ok(sync)
    }

    /// Deletes routes `reconcile_routes` found stale; returns the number of writes.
    pub async fn delete_routes(&self, stale: Vec<RouteMessage>) -> Result<usize, DataplaneError> {
        let n = stale.len();
        for r in stale {
            self.delete_route(r).await?;
        }
        Ok(n)
    }

    async fn rules(&self) -> Result<Vec<RuleMessage>, DataplaneError> {
        let mut out = Vec::new();
        for v in [IpVersion::V4, IpVersion::V6] {
            let r: Vec<RuleMessage> = self
                .handle
                .rule()
                .get(v)
                .execute()
                .try_collect()
                .await
                .map_err(|e| DataplaneError::netlink("list rules", e))?;
            out.extend(r);
        }
        Ok(out)
    }

    /// The select rule (`lookup table`, priority P) and, with a fwmark, the bypass rule
    /// (`fwmark F lookup main`, priority P-1). The select rule has no destination: the table
    /// holds exactly the peers' AllowedIPs (mesh IPs, pod CIDRs, node routes, InternalIPs), a
    /// lookup that finds nothing there falls through to the next rule, and one rule serves
    /// any number of carried prefixes.
    pub async fn reconcile_rules(&self, iface: &InterfaceConfig) -> Result<usize, DataplaneError> {
        let v6 = iface.mesh_cidr.addr().is_ipv6();
        let mut desired = vec![RuleKey {
            family_v6: v6,
            priority: iface.rule_priority,
            table: iface.table,
            dst: None,
            fwmark: None,
            invert: false,
        }];
        if iface.fwmark != 0 {
            desired.push(RuleKey {
                family_v6: v6,
                priority: iface.rule_priority.saturating_sub(1),
                table: RT_TABLE_MAIN,
                dst: None,
                fwmark: Some(iface.fwmark),
                invert: false,
            });
        }
        let scope = Scope {
            table: iface.table,
            priority: iface.rule_priority,
            link: None,
        };
        self.sync_rules(&desired, &scope).await
    }

    /// Deletes our rules that are not desired, adds the missing ones (see `owner`).
    async fn sync_rules(
        &self,
        desired: &[RuleKey],
        scope: &Scope,
    ) -> Result<usize, DataplaneError> {
        let msgs = self.rules().await?;
        let views: Vec<RuleView> = msgs.iter().map(RuleView::of).collect();
        let (delete, add) = plan_rules(&views, desired, scope);
        let mut changes = 0;
        for d in &add {
            self.add_rule(d).await?;
            changes += 1;
        }
        for (i, msg) in msgs.into_iter().enumerate() {
            if delete.contains(&i) {
                let op = format!("delete rule {:?}", views[i].key);
                self.handle
                    .rule()
                    .del(msg)
                    .execute()
                    .await
                    .map_err(|e| DataplaneError::netlink(op, e))?;
                changes += 1;
            }
        }
        Ok(changes)
    }

    async fn add_rule(&self, d: &RuleKey) -> Result<(), DataplaneError> {
        let op = format!("add rule {d:?}");
        let mut req = self
            .handle
            .rule()
            .add()
            .priority(d.priority)
            .table_id(d.table)
            .action(RuleAction::ToTable);
        req.message_mut()
            .attributes
            .push(RuleAttribute::Protocol(RouteProtocol::from(ROUTE_PROTOCOL)));
        if let Some(m) = d.fwmark {
            req = req.fw_mark(m);
            req.message_mut()
                .attributes
                .push(RuleAttribute::FwMask(u32::MAX));
        }
        let res = match d.dst {
            Some(IpNet::V4(n)) => {
                req.v4()
                    .destination_prefix(n.addr(), n.prefix_len())
                    .execute()
                    .await
            }
            Some(IpNet::V6(n)) => {
                req.v6()
                    .destination_prefix(n.addr(), n.prefix_len())
                    .execute()
                    .await
            }
            None if d.family_v6 => req.v6().execute().await,
            None => req.v4().execute().await,
        };
        res.map_err(|e| DataplaneError::netlink(op, e))
    }

    /// Removes every route and rule WireKube created (marked ones in any table, unmarked
    /// ones of the shapes older agents made at `table`/`priority`), nothing else.
    pub async fn cleanup(&self, table: u32, priority: u32) -> Result<usize, DataplaneError> {
        let scope = Scope {
            table,
            priority,
            link: None,
        };
        let mut n = self.sync_rules(&[], &scope).await?;
        for r in self.routes().await? {
            if route_is_ours(&RouteView::of(&r), &scope) {
                self.delete_route(r).await?;
                n += 1;
            }
        }
        Ok(n)
    }
}

fn address_of(a: &AddressMessage) -> Option<IpAddr> {
    // For point-to-point links IFA_ADDRESS is the peer and IFA_LOCAL our address; prefer local.
    let mut addr = None;
    for at in &a.attributes {
        match at {
            AddressAttribute::Local(ip) => return Some(*ip),
            AddressAttribute::Address(ip) => addr = Some(*ip),
            _ => {}
        }
    }
    addr
}

fn route_message(p: IpNet, oif: u32, table: u32, src: Option<IpAddr>) -> RouteMessage {
    let proto = RouteProtocol::from(ROUTE_PROTOCOL);
    match p {
        IpNet::V4(n) => {
            let mut b = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(n.addr(), n.prefix_len())
                .output_interface(oif)
                .table_id(table)
                .protocol(proto)
                .scope(RouteScope::Link);
            if let Some(IpAddr::V4(s)) = src {
                b = b.pref_source(s);
            }
            b.build()
        }
        IpNet::V6(n) => {
            let mut b = RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(n.addr(), n.prefix_len())
                .output_interface(oif)
                .table_id(table)
                .protocol(proto);
            if let Some(IpAddr::V6(s)) = src {
                b = b.pref_source(s);
            }
            b.build()
        }
    }
}

/// TEST ONLY: set to `1` in a process's environment, it makes the kernel probe fail as on a
/// kernel without WireGuard, so that a lab whose kernel has the module (the VM of
/// `make test-kernel`) can run userspace nodes next to kernel ones. Never set it in production.
pub const TEST_NO_KERNEL_WIREGUARD_ENV: &str = "WIREKUBE_TEST_NO_KERNEL_WIREGUARD";

/// True when this kernel can create WireGuard links; the probe link is deleted at once.
pub(crate) async fn kernel_wireguard_available(nl: &Netlink) -> Result<(), String> {
    if std::env::var_os(TEST_NO_KERNEL_WIREGUARD_ENV).is_some_and(|v| v == "1") {
        return Err(format!(
            "disabled by {TEST_NO_KERNEL_WIREGUARD_ENV}=1 (test only)"
        ));
    }
    let probe = format!("wkprobe{}", std::process::id() % 100_000);
    match nl.create_kernel_wg(&probe).await {
        Ok(()) => {
            if let Ok(Some(l)) = nl.link(&probe).await {
                let _ = nl.delete_link(l.index).await;
            }
            Ok(())
        }
        Err(DataplaneError::Netlink { reason, .. }) => Err(reason),
        Err(e) => Err(e.to_string()),
    }
}

pub(crate) fn is_kernel_wg(kind: &Option<String>) -> bool {
    kind.as_deref() == Some(InfoKind::Wireguard.to_string().as_str())
}
