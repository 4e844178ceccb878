//! Which routes and rules belong to WireKube, and what reconcile must do to them.
//!
//! The routing table and the rule priorities are shared with whatever else runs on the host
//! (wg-quick uses table 51820 by default and scans upwards from it), so "in our table" is
//! not ownership. Everything WireKube creates carries [`ROUTE_PROTOCOL`] (`rtm_protocol` on
//! routes, `FRA_PROTOCOL` on rules) and only marked objects are ever changed or deleted.
//! Objects made by agents from before the mark are recognised by their exact shape (see
//! [`route_is_ours`] and [`rule_is_ours`]) and re-created with the mark. Pure functions: the
//! netlink module reads the state, asks here, and writes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};

/// Routing protocol number on every route (`rtm_protocol`) and rule (`FRA_PROTOCOL`, Linux
/// 4.17+) WireKube creates: 87, ASCII `W`. Values above `RTPROT_STATIC` are not interpreted
/// by the kernel; 87 is not in the kernel's list nor used by the routing daemons we know of
/// (BIRD 12, Calico 80, BGP 186...). `ip route show proto 87` lists WireKube's routes.
pub const ROUTE_PROTOCOL: u8 = 87;

/// Default routing table, 0x574b (ASCII `WK`). Not wg-quick's 51820: wg-quick takes the
/// first empty table from 51820 upwards, and a table shared with another tunnel cannot work
/// even if neither deletes the other's routes (our `lookup` rule would route into its
/// interface, including a full-tunnel `default` route).
pub const DEFAULT_TABLE: u32 = 0x574b;

/// Default priority of the `lookup <table>` rule (the fwmark bypass is one lower).
pub const DEFAULT_RULE_PRIORITY: u32 = 5200;

/// Table of agents from before the mark (their default); only for recognising their state.
pub(crate) const LEGACY_TABLE: u32 = 51820;

/// Id of the main routing table; the fwmark bypass rule points there.
pub(crate) const RT_TABLE_MAIN: u32 = 254;

const RTPROT_UNSPEC: u8 = 0;
/// What rtnetlink's route builder used when the agent did not set a protocol yet.
const RTPROT_STATIC: u8 = 4;

/// What reconcile and cleanup may consider theirs: the configured table and priority, and
/// the WireGuard link if it (still) exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scope {
    pub table: u32,
    pub priority: u32,
    pub link: Option<u32>,
}

/// A route reduced to the fields ownership and correctness depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteView {
    pub table: u32,
    pub dst: Option<IpNet>,
    pub oif: Option<u32>,
    pub prefsrc: Option<IpAddr>,
    pub protocol: u8,
}

impl RouteView {
    pub fn of(r: &RouteMessage) -> RouteView {
        let mut v = RouteView {
            table: u32::from(r.header.table),
            dst: None,
            oif: None,
            prefsrc: None,
            protocol: u8::from(r.header.protocol),
        };
        let mut dst_ip = None;
        for a in &r.attributes {
            match a {
                // Tables above 255 exist only as the attribute.
                RouteAttribute::Table(t) => v.table = *t,
                RouteAttribute::Oif(i) => v.oif = Some(*i),
                RouteAttribute::Destination(a) => dst_ip = ip_of(a),
                RouteAttribute::PrefSource(a) => v.prefsrc = ip_of(a),
                _ => {}
            }
        }
        let len = r.header.destination_prefix_length;
        // A default route carries no destination attribute.
        let dst_ip = dst_ip.or(match r.header.address_family {
            AddressFamily::Inet if len == 0 => Some(IpAddr::from([0u8; 4])),
            AddressFamily::Inet6 if len == 0 => Some(IpAddr::from([0u8; 16])),
            _ => None,
        });
        v.dst = dst_ip.and_then(|ip| IpNet::new(ip, len).ok());
        v
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Marked routes in any table (so a changed `--table` leaves nothing behind), and routes an
/// unmarked agent made: `proto static` through our own link in our table or the old default
/// table. Another tunnel's routes go through its own interface, so they never match.
pub(crate) fn route_is_ours(v: &RouteView, scope: &Scope) -> bool {
    v.protocol == ROUTE_PROTOCOL
        || (v.protocol == RTPROT_STATIC
            && scope.link.is_some()
            && v.oif == scope.link
            && (v.table == scope.table || v.table == LEGACY_TABLE))
}

/// The writes that bring the routes to one per desired prefix in `scope.table`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct RoutePlan {
    /// Indices into the current routes: ours and not wanted (stale, other table). Deleted
    /// last, after the rules, so that a move to another table never leaves a gap.
    pub delete: Vec<usize>,
    /// Indices of extra routes of ours at desired prefixes: deleted first, so that a replace
    /// cannot hit one of them.
    pub duplicates: Vec<usize>,
    /// Ours at a desired prefix but not exactly as desired (unmarked, other source):
    /// rewritten in place (`NLM_F_REPLACE`), so the prefix is never unrouted.
    pub replace: Vec<IpNet>,
    /// Desired prefixes with no route at all.
    pub add: Vec<IpNet>,
    /// Foreign routes at desired prefixes in our table: left alone and reported.
    pub conflicts: Vec<RouteView>,
}

pub(crate) fn plan_routes(
    cur: &[RouteView],
    desired: &BTreeSet<IpNet>,
    scope: &Scope,
    src: IpAddr,
) -> RoutePlan {
    let in_table = |v: &RouteView| {
        v.dst
            .filter(|d| v.table == scope.table && desired.contains(d))
    };
    let mut foreign: BTreeMap<IpNet, &RouteView> = BTreeMap::new();
    for v in cur.iter().filter(|v| !route_is_ours(v, scope)) {
        if let Some(d) = in_table(v) {
            foreign.entry(d).or_insert(v);
        }
    }
    let exact = |v: &RouteView| {
        v.protocol == ROUTE_PROTOCOL
            && v.oif == scope.link
            && v.dst
                .is_some_and(|d| d.addr().is_ipv4() != src.is_ipv4() || v.prefsrc == Some(src))
    };
    // Exact routes first, so that of two owned routes for one prefix the correct one stays.
    let mut owned: Vec<usize> = (0..cur.len())
        .filter(|&i| route_is_ours(&cur[i], scope))
        .collect();
    owned.sort_by_key(|&i| !exact(&cur[i]));
    let mut plan = RoutePlan::default();
    let mut settled = BTreeSet::new();
    for i in owned {
        let v = &cur[i];
        match in_table(v).filter(|d| !settled.contains(d)) {
            // Ours is kept as it is: the foreign route decides the lookup anyway.
            Some(d) if foreign.contains_key(&d) => {}
            Some(d) if !exact(v) => plan.replace.push(d),
            Some(_) => {}
            None if in_table(v).is_some() => {
                plan.duplicates.push(i);
                continue;
            }
            None => {
                plan.delete.push(i);
                continue;
            }
        }
        settled.extend(v.dst);
    }
    plan.add = desired
        .iter()
        .filter(|d| !settled.contains(d) && !foreign.contains_key(d))
        .copied()
        .collect();
    plan.conflicts = foreign.into_values().cloned().collect();
    plan
}

/// One ip rule, reduced to the fields WireKube sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuleKey {
    pub family_v6: bool,
    pub priority: u32,
    pub table: u32,
    pub dst: Option<IpNet>,
    pub fwmark: Option<u32>,
    pub invert: bool,
}

/// A rule as dumped: its key, its protocol, and whether it has any selector or action
/// beyond the key (then it is not one an unmarked agent could have made).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuleView {
    pub key: RuleKey,
    /// `None`: the kernel (before 4.17) has no rule protocols and dropped our mark.
    pub protocol: Option<u8>,
    pub plain: bool,
}

impl RuleView {
    pub fn of(m: &RuleMessage) -> RuleView {
        let mut k = RuleKey {
            family_v6: m.header.family == AddressFamily::Inet6,
            priority: 0,
            table: u32::from(m.header.table),
            dst: None,
            fwmark: None,
            invert: m.header.flags.contains(RuleFlags::Invert),
        };
        let mut protocol = None;
        let mut plain =
            m.header.src_len == 0 && m.header.tos == 0 && m.header.action == RuleAction::ToTable;
        for a in &m.attributes {
            match a {
                RuleAttribute::Priority(p) => k.priority = *p,
                RuleAttribute::Table(t) => k.table = *t,
                RuleAttribute::Destination(ip) => k.dst = IpNet::new(*ip, m.header.dst_len).ok(),
                RuleAttribute::FwMark(f) => k.fwmark = Some(*f),
                RuleAttribute::FwMask(mask) => plain &= *mask == u32::MAX,
                // The kernel dumps these as -1 when unset.
                RuleAttribute::SuppressPrefixLen(n) | RuleAttribute::SuppressIfGroup(n) => {
                    plain &= *n == u32::MAX
                }
                RuleAttribute::Protocol(p) => protocol = Some(u8::from(*p)),
                _ => plain = false,
            }
        }
        RuleView {
            key: k,
            protocol,
            plain,
        }
    }
}

/// Marked rules, and the two shapes an unmarked agent created at our priorities: `lookup
/// <table>` (any destination: older agents had `to <mesh CIDR>`) at `priority`, in our
/// table or the old default one, and `fwmark <m> lookup main` at `priority - 1`. wg-quick's
/// rules (`not fwmark ... lookup <table>`, `lookup main suppress_prefixlength 0`) match
/// neither shape.
pub(crate) fn rule_is_ours(v: &RuleView, scope: &Scope) -> bool {
    if v.protocol == Some(ROUTE_PROTOCOL) {
        return true;
    }
    let k = &v.key;
    let legacy_select = k.priority == scope.priority
        && k.fwmark.is_none()
        && (k.table == scope.table || k.table == LEGACY_TABLE);
    let legacy_bypass = k.priority == scope.priority.saturating_sub(1)
        && k.table == RT_TABLE_MAIN
        && k.fwmark.is_some()
        && k.dst.is_none();
    v.protocol.is_none_or(|p| p == RTPROT_UNSPEC)
        && v.plain
        && !k.invert
        && (legacy_select || legacy_bypass)
}

/// Indices of our rules to delete (not desired, duplicates, unmarked) and the desired
/// rules to add. The caller adds first, so traffic always meets a rule. That holds for an
/// unmarked rule and its marked twin too: the kernel tells them apart when adding (its
/// duplicate check compares the protocol), and a delete without protocol removes the first
/// match in list order, the older rule (a new rule goes after those of equal priority).
pub(crate) fn plan_rules(
    cur: &[RuleView],
    desired: &[RuleKey],
    scope: &Scope,
) -> (Vec<usize>, Vec<RuleKey>) {
    let mut found = vec![false; desired.len()];
    let mut delete = Vec::new();
    for (i, v) in cur.iter().enumerate() {
        if !rule_is_ours(v, scope) {
            continue;
        }
        // Without rule protocols (kernel < 4.17) a rule of the right shape is the best
        // evidence there is; re-creating it on every reconcile would not mark it either.
        let marked = v.protocol.is_none_or(|p| p == ROUTE_PROTOCOL);
        let wanted = (marked && v.plain)
            .then(|| desired.iter().position(|d| *d == v.key))
            .flatten();
        match wanted {
            Some(j) if !found[j] => found[j] = true,
            _ => delete.push(i),
        }
    }
    let add = desired
        .iter()
        .zip(found)
        .filter(|(_, f)| !f)
        .map(|(d, _)| d.clone())
        .collect();
    (delete, add)
}

#[cfg(test)]
#[path = "owner_tests.rs"]
mod tests;
