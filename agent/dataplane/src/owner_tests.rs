use super::*;

use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::route::RouteProtocol;

const T: u32 = 51820;
const P: u32 = 5200;
const LINK: u32 = 7;
const WG0: u32 = 9;

fn scope() -> Scope {
    Scope {
        table: T,
        priority: P,
        link: Some(LINK),
    }
}

fn src() -> IpAddr {
    "100.96.0.1".parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn route(dst: &str, table: u32, oif: u32, protocol: u8) -> RouteView {
    RouteView {
        table,
        dst: Some(net(dst)),
        oif: Some(oif),
        prefsrc: Some(src()),
        protocol,
    }
}

fn ours(dst: &str) -> RouteView {
    route(dst, T, LINK, ROUTE_PROTOCOL)
}

fn desired(list: &[&str]) -> BTreeSet<IpNet> {
    list.iter().map(|s| net(s)).collect()
}

#[test]
fn converged_routes_need_no_writes() {
    let cur = [ours("100.96.0.2/32"), ours("10.244.1.0/24")];
    let plan = plan_routes(
        &cur,
        &desired(&["100.96.0.2/32", "10.244.1.0/24"]),
        &scope(),
        src(),
    );
    assert_eq!(plan, RoutePlan::default());
}

#[test]
fn foreign_routes_in_our_table_are_never_touched() {
    // wg-quick: `ip route add 10.9.0.0/24 dev wg0 table 51820` (proto boot), and its
    // full-tunnel default route.
    let cur = [
        route("10.9.0.0/24", T, WG0, 3),
        route("0.0.0.0/0", T, WG0, 3),
        ours("100.96.0.9/32"),
    ];
    let plan = plan_routes(&cur, &desired(&["100.96.0.2/32"]), &scope(), src());
    assert_eq!(plan.delete, vec![2], "only our stale route goes");
    assert_eq!(plan.add, vec![net("100.96.0.2/32")]);
    assert!(plan.replace.is_empty() && plan.conflicts.is_empty());
}

#[test]
fn foreign_route_at_a_needed_prefix_is_a_conflict_not_a_delete() {
    let foreign = route("100.96.0.2/32", T, WG0, 3);
    let cur = [foreign.clone(), ours("100.96.0.3/32")];
    let plan = plan_routes(
        &cur,
        &desired(&["100.96.0.2/32", "100.96.0.3/32", "100.96.0.4/32"]),
        &scope(),
        src(),
    );
    assert_eq!(plan.conflicts, vec![foreign]);
    assert!(plan.delete.is_empty() && plan.replace.is_empty());
    // The other prefixes are still served.
    assert_eq!(plan.add, vec![net("100.96.0.4/32")]);
    // The same prefix in another table is no conflict.
    let cur = [route("100.96.0.2/32", 100, WG0, 3)];
    let plan = plan_routes(&cur, &desired(&["100.96.0.2/32"]), &scope(), src());
    assert!(plan.conflicts.is_empty());
    assert_eq!(plan.add, vec![net("100.96.0.2/32")]);
}

#[test]
fn unmarked_routes_of_older_agents_are_adopted_by_shape() {
    let cur = [
        // Older agent, our table: re-marked in place.
        route("100.96.0.2/32", T, LINK, RTPROT_STATIC),
        // Older agent, its default table while we now use another one: removed.
        route("100.96.0.3/32", LEGACY_TABLE, LINK, RTPROT_STATIC),
        // Static through another interface: someone else's.
        route("100.96.0.4/32", T, WG0, RTPROT_STATIC),
    ];
    let mut s = scope();
    let plan = plan_routes(&cur, &desired(&["100.96.0.2/32"]), &s, src());
    assert_eq!(plan.replace, vec![net("100.96.0.2/32")]);
    // Ours and stale (T is the legacy table here); the one via wg0 stays.
    assert_eq!(plan.delete, vec![1]);
    s.table = DEFAULT_TABLE;
    let plan = plan_routes(&cur, &desired(&["100.96.0.2/32"]), &s, src());
    assert_eq!(plan.delete, vec![0, 1]);
    assert_eq!(plan.add, vec![net("100.96.0.2/32")]);
    // Without the link (cleanup after the link is gone) nothing unmarked is ours.
    s.link = None;
    assert!(cur.iter().all(|v| !route_is_ours(v, &s)));
}

#[test]
fn marked_routes_elsewhere_or_wrong_are_fixed() {
    let mut wrong_src = ours("100.96.0.2/32");
    wrong_src.prefsrc = Some("100.96.0.99".parse().unwrap());
    let cur = [
        wrong_src,
        route("100.96.0.3/32", 4242, LINK, ROUTE_PROTOCOL), // after a --table change
        ours("100.96.0.5/32"),
        ours("100.96.0.5/32"), // duplicate
    ];
    let plan = plan_routes(
        &cur,
        &desired(&["100.96.0.2/32", "100.96.0.5/32"]),
        &scope(),
        src(),
    );
    assert_eq!(plan.replace, vec![net("100.96.0.2/32")]);
    assert_eq!(plan.delete, vec![1]);
    assert_eq!(plan.duplicates, vec![3]);
    assert!(plan.add.is_empty());
}

#[test]
fn of_two_owned_routes_the_exact_one_stays() {
    // The legacy one is listed first; replacing it would rewrite whichever the kernel
    // matches first, so the exact one is kept and the legacy one deleted.
    let cur = [
        route("100.96.0.2/32", T, LINK, RTPROT_STATIC),
        ours("100.96.0.2/32"),
    ];
    let plan = plan_routes(&cur, &desired(&["100.96.0.2/32"]), &scope(), src());
    assert_eq!(plan.duplicates, vec![0]);
    assert!(plan.delete.is_empty() && plan.replace.is_empty() && plan.add.is_empty());
}

#[test]
fn other_family_routes_need_no_source() {
    let mut v6 = ours("fd00::2/128");
    v6.prefsrc = None;
    let plan = plan_routes(&[v6], &desired(&["fd00::2/128"]), &scope(), src());
    assert_eq!(plan, RoutePlan::default());
}

#[test]
fn route_view_reads_table_protocol_and_default_routes() {
    let mut m = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
        .output_interface(LINK)
        .table_id(70000)
        .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
        .build();
    m.header.destination_prefix_length = 0;
    let v = RouteView::of(&m);
    assert_eq!(v.table, 70000);
    assert_eq!(v.protocol, ROUTE_PROTOCOL);
    assert_eq!(v.dst, Some(net("0.0.0.0/0")));
    assert_eq!(v.oif, Some(LINK));
}

fn rule(priority: u32, table: u32, fwmark: Option<u32>, protocol: u8) -> RuleView {
    rule_p(priority, table, fwmark, Some(protocol))
}

fn rule_p(priority: u32, table: u32, fwmark: Option<u32>, protocol: Option<u8>) -> RuleView {
    RuleView {
        key: RuleKey {
            family_v6: false,
            priority,
            table,
            dst: None,
            fwmark,
            invert: false,
        },
        protocol,
        plain: true,
    }
}

fn wanted() -> Vec<RuleKey> {
    vec![
        rule(P, T, None, ROUTE_PROTOCOL).key,
        rule(P - 1, RT_TABLE_MAIN, Some(0x206c), ROUTE_PROTOCOL).key,
    ]
}

#[test]
fn wg_quick_rules_are_not_ours() {
    // `ip rule add not fwmark 51820 table 51820` and `... table main suppress_prefixlength 0`.
    let mut not_fwmark = rule(32765, T, Some(51820), RTPROT_UNSPEC);
    not_fwmark.key.invert = true;
    let mut suppress = rule(32764, RT_TABLE_MAIN, None, RTPROT_UNSPEC);
    suppress.plain = false;
    // Someone's `lookup 51820` at another priority, and ours at the priority but with a
    // source selector.
    let elsewhere = rule(100, T, None, RTPROT_UNSPEC);
    let mut with_src = rule(P, T, None, RTPROT_UNSPEC);
    with_src.plain = false;
    for v in [&not_fwmark, &suppress, &elsewhere, &with_src] {
        assert!(!rule_is_ours(v, &scope()), "{v:?}");
    }
    let cur = [
        not_fwmark,
        suppress,
        elsewhere,
        with_src,
        rule(P, T, None, ROUTE_PROTOCOL),
    ];
    let (delete, add) = plan_rules(&cur, &wanted(), &scope());
    assert!(delete.is_empty());
    assert_eq!(add, vec![wanted()[1].clone()]);
    // Cleanup: only ours.
    let (delete, add) = plan_rules(&cur, &[], &scope());
    assert_eq!((delete, add), (vec![4], vec![]));
}

#[test]
fn unmarked_rules_of_older_agents_are_replaced_by_marked_ones() {
    let cur = [
        rule(P, T, None, RTPROT_UNSPEC),
        rule(P - 1, RT_TABLE_MAIN, Some(0x206c), RTPROT_UNSPEC),
    ];
    let (delete, add) = plan_rules(&cur, &wanted(), &scope());
    assert_eq!(delete, vec![0, 1]);
    assert_eq!(add, wanted());
    // The old default table's rule goes too when we use another table.
    let s = Scope {
        table: DEFAULT_TABLE,
        ..scope()
    };
    let cur = [rule(P, LEGACY_TABLE, None, RTPROT_UNSPEC)];
    assert_eq!(plan_rules(&cur, &[], &s).0, vec![0]);
}

#[test]
fn marked_rules_are_ours_anywhere() {
    let cur = [
        rule(P, T, None, ROUTE_PROTOCOL),
        rule(P - 1, RT_TABLE_MAIN, Some(0x206c), ROUTE_PROTOCOL),
        rule(4000, 77, None, ROUTE_PROTOCOL), // after a priority/table change
        rule(P, T, None, ROUTE_PROTOCOL),     // duplicate
    ];
    let (delete, add) = plan_rules(&cur, &wanted(), &scope());
    assert_eq!(delete, vec![2, 3]);
    assert!(add.is_empty());
}

#[test]
fn rule_view_reads_protocol_and_extra_selectors() {
    let mut m = RuleMessage::default();
    m.header.action = RuleAction::ToTable;
    m.attributes = vec![
        RuleAttribute::Priority(P),
        RuleAttribute::Table(T),
        RuleAttribute::Protocol(RouteProtocol::from(ROUTE_PROTOCOL)),
    ];
    let v = RuleView::of(&m);
    assert_eq!(v.protocol, Some(ROUTE_PROTOCOL));
    assert!(v.plain);
    assert_eq!((v.key.priority, v.key.table), (P, T));

    let mut masked = m.clone();
    masked.attributes.push(RuleAttribute::FwMark(1));
    masked.attributes.push(RuleAttribute::FwMask(u32::MAX));
    assert!(RuleView::of(&masked).plain);
    masked.attributes.push(RuleAttribute::FwMask(0xff));
    assert!(!RuleView::of(&masked).plain);

    // As the kernel dumps every rule: suppressors at -1 mean unset.
    let mut dumped = m.clone();
    dumped
        .attributes
        .push(RuleAttribute::SuppressPrefixLen(u32::MAX));
    dumped
        .attributes
        .push(RuleAttribute::SuppressIfGroup(u32::MAX));
    assert!(RuleView::of(&dumped).plain);

    let mut suppress = m.clone();
    suppress
        .attributes
        .push(RuleAttribute::SuppressPrefixLen(0));
    assert!(!RuleView::of(&suppress).plain);
    let mut from = m;
    from.header.src_len = 8;
    assert!(!RuleView::of(&from).plain);
}

#[test]
fn kernels_without_rule_protocols_do_not_churn() {
    // Before Linux 4.17 the kernel drops FRA_PROTOCOL: our rules come back without one.
    let cur = [
        rule_p(P, T, None, None),
        rule_p(P - 1, RT_TABLE_MAIN, Some(0x206c), None),
        rule_p(100, T, None, None), // someone else's
    ];
    let (delete, add) = plan_rules(&cur, &wanted(), &scope());
    assert!(delete.is_empty() && add.is_empty(), "{delete:?} {add:?}");
    assert_eq!(plan_rules(&cur, &[], &scope()).0, vec![0, 1]);
}
