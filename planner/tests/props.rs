//! Property tests: plans are symmetric, consistent with what the agents reported,
//! deterministic, and mesh IPs never collide and never move for nodes that stay.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use proptest::prelude::*;
use wirekube_crds::{NatType, PathReason, PlannedPath, RelayMode, WireKubePeerSpec};
use wirekube_planner::fixtures::{Host, LISTEN_PORT, input, mesh};
use wirekube_planner::{PathPlanner, Plan, PlannerInput, plan};

const NATS: [NatType; 7] = [
    NatType::Open,
    NatType::FullCone,
    NatType::AddressRestricted,
    NatType::PortRestricted,
    NatType::Symmetric,
    NatType::UdpBlocked,
    NatType::Unknown,
];
const MODES: [RelayMode; 3] = [RelayMode::Never, RelayMode::Auto, RelayMode::Always];

/// A node: NAT type, site (LAN and public IP shared per site), mapped port, key published,
/// whether its WireGuard observed some other node (a prflx candidate of that node's address,
/// as the agent reports it) and whether it reports a fallback.
fn arb_host(i: usize) -> impl Strategy<Value = Host> {
    (
        0..NATS.len(),
        0u8..4,
        prop_oneof![Just(None), (1024u16..65535).prop_map(Some)],
        prop::bool::weighted(0.9),
        prop::option::of(0usize..12),
        prop::option::of(0usize..12),
    )
        .prop_map(move |(nat, site, port, key, saw, fallback)| {
            let nat = NATS[nat];
            let name = format!("n{i:02}");
            let mut h = Host::new(&name, nat).lan(&format!("10.{site}.0.{}", 10 + i), 24);
            if nat != NatType::Unknown {
                // Open nodes have their own public address; the others share the site's NAT.
                h = if nat == NatType::Open {
                    h.public(&format!("198.19.0.{}", 1 + i))
                } else {
                    h.public(&format!("198.18.0.{}", 1 + site))
                };
            }
            if let Some(p) = port {
                h = h.mapped_port(p);
            }
            if !key {
                h = h.no_key();
            }
            if let Some(peer) = saw.filter(|p| *p != i) {
                // The peer's address (its IP), at a port its NAT picked toward this node.
                h = h.saw(
                    &format!("n{peer:02}"),
                    &format!("198.18.9.{}:{}", 1 + peer, 40000 + i),
                );
            }
            if let Some(to) = fallback.filter(|t| *t != i) {
                h = h.fallback_to(&format!("n{to:02}"));
            }
            h
        })
}

fn arb_hosts() -> impl Strategy<Value = Vec<Host>> {
    (2usize..12).prop_flat_map(|n| (0..n).map(arb_host).collect::<Vec<_>>())
}

fn arb_input() -> impl Strategy<Value = (Vec<Host>, PlannerInput)> {
    (arb_hosts(), 0..MODES.len(), any::<bool>()).prop_map(|(hosts, mode, relay)| {
        let inp = input(mesh("10.99.0.0/24", MODES[mode]), &hosts, relay);
        (hosts, inp)
    })
}

/// Every address `from` can legitimately reach `h` at: what `h` reported of itself, and where
/// `from`'s own WireGuard saw `h`'s packets come from. Never `from`'s own address, nor what a
/// third node observed.
fn known_endpoints(from: &Host, h: &Host) -> HashSet<String> {
    let mut v: HashSet<String> = from
        .saw
        .iter()
        .filter(|(peer, _)| *peer == h.name)
        .map(|(_, a)| a.clone())
        .collect();
    v.extend(h.host_endpoint());
    v.extend(h.srflx());
    v.extend(h.public_ip.map(|ip| format!("{ip}:{LISTEN_PORT}")));
    v
}

fn entry_of<'p>(
    specs: &'p BTreeMap<String, WireKubePeerSpec>,
    from: &str,
    to: &str,
) -> &'p wirekube_crds::PeerEntry {
    specs[from].peers.iter().find(|e| e.name == to).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn plans_are_symmetric_and_consistent_with_candidates((hosts, inp) in arb_input()) {
        let p = plan(&inp).unwrap();
        let by_name: BTreeMap<&str, &Host> = hosts.iter().map(|h| (h.name.as_str(), h)).collect();
        let specs = p.to_specs();
        prop_assert_eq!(p.pairs().len(), hosts.len() * (hosts.len() - 1) / 2);
        for pair in p.pairs() {
            let ab = entry_of(&specs, pair.a, pair.b);
            let ba = entry_of(&specs, pair.b, pair.a);
            // A→B Direct iff B→A Direct, with one reason for both.
            prop_assert_eq!((ab.path, ab.reason), (ba.path, ba.reason));
            prop_assert_eq!((ab.path, ab.reason), (pair.path, pair.reason));
            prop_assert_eq!(ab.persistent_keepalive, ba.persistent_keepalive);
            prop_assert_eq!((ab.initiate, ba.initiate), (pair.a_initiates, pair.b_initiates));
            for (e, from, to) in [(ab, pair.a, pair.b), (ba, pair.b, pair.a)] {
                let known = known_endpoints(by_name[from], by_name[to]);
                if let Some(ep) = &e.endpoint {
                    prop_assert!(known.contains(ep), "{} -> {}: {} not among {:?}", from, to, ep, known);
                    prop_assert_eq!(e.path, PlannedPath::Direct);
                }
                if let Some(t) = &e.punch_toward {
                    let ip: IpAddr = t.rsplit_once(':').unwrap().0.parse().unwrap();
                    prop_assert_eq!(Some(ip), by_name[to].public_ip);
                }
                // Whoever is told to initiate a direct path knows where to send.
                if e.path == PlannedPath::Direct && e.initiate {
                    prop_assert!(e.endpoint.is_some());
                }
                prop_assert_eq!(&e.public_key, &if by_name[to].has_key { by_name[to].key() } else { String::new() });
            }
            // A direct pair that is not forced by `mode: never` can come up: somebody sends.
            if pair.path == PlannedPath::Direct && pair.reason != PathReason::ModeNever {
                prop_assert!(pair.a_initiates || pair.b_initiates, "{:?}", pair);
            }
            if pair.path == PlannedPath::Relay {
                prop_assert!(!inp.relay_endpoints.is_empty());
            }
            // A node without a key is never silently dropped: its pairs are listed, Down.
            if !by_name[pair.a].has_key || !by_name[pair.b].has_key {
                prop_assert_eq!((pair.path, pair.reason), (PlannedPath::Down, PathReason::KeyMissing));
            }
        }
        let pending: Vec<String> = hosts.iter().filter(|h| !h.has_key).map(|h| h.name.clone()).collect();
        prop_assert_eq!(&p.pending_nodes, &pending);
        let s = &p.summary;
        prop_assert_eq!((s.direct + s.relay + s.down) as usize, p.pairs().len());
    }

    #[test]
    fn plans_are_deterministic_and_idempotent((hosts, inp) in arb_input(), seed in any::<u64>()) {
        let p1 = plan(&inp).unwrap();
        // Input order does not matter.
        let mut shuffled = inp.clone();
        let n = shuffled.nodes.len();
        shuffled.nodes.rotate_left((seed as usize) % n);
        shuffled.nodes.reverse();
        let p2 = plan(&shuffled).unwrap();
        prop_assert_eq!(&p1, &p2);
        prop_assert_eq!(p1.changed.len(), hosts.len());
        // Applying the plan and planning again changes nothing.
        let mut again = inp.clone();
        again.previous = p1.to_specs();
        let p3 = plan(&again).unwrap();
        prop_assert!(p3.changed.is_empty(), "{:?}", p3.changed);
        prop_assert_eq!(p3.to_specs(), p1.to_specs());
    }

    #[test]
    fn mesh_ips_never_collide_and_never_move(
        (hosts, inp) in arb_input(),
        leave in prop::collection::vec(any::<bool>(), 12),
        join in 0usize..6,
    ) {
        let p1 = plan(&inp).unwrap();
        let ips = |p: &Plan| -> BTreeMap<String, String> {
            p.specs().map(|(k, s)| (k.to_string(), s.mesh_ip)).collect()
        };
        let before = ips(&p1);
        let unique: BTreeSet<&String> = before.values().collect();
        prop_assert_eq!(unique.len(), before.len());

        // Some nodes leave (the operator deletes their specs), newcomers join.
        let mut next = inp.clone();
        next.previous = p1.to_specs();
        let stay: Vec<Host> = hosts.iter().enumerate().filter(|(i, _)| !leave[*i]).map(|(_, h)| h.clone()).collect();
        let mut all = stay.clone();
        for j in 0..join {
            all.push(Host::new(&format!("new{j}"), NatType::FullCone).public("198.18.5.5"));
        }
        let joined = input(inp.mesh.clone(), &all, !inp.relay_endpoints.is_empty());
        next.nodes = joined.nodes;
        next.statuses = joined.statuses;
        let p2 = plan(&next).unwrap();
        let after = ips(&p2);
        for h in &stay {
            prop_assert_eq!(&before[&h.name], &after[&h.name], "{} moved", h.name);
        }
        let unique: BTreeSet<&String> = after.values().collect();
        prop_assert_eq!(unique.len(), after.len());
        // Leavers' specs are reported removed; their IPs are not handed out this round.
        for (name, ip) in &before {
            if !after.contains_key(name) {
                prop_assert!(p2.removed.contains(name));
                prop_assert!(!after.values().any(|v| v == ip), "{} reused at once", ip);
            }
        }
    }

    /// The incremental re-plan gives exactly what a full plan gives, and reports exactly the
    /// specs that differ.
    #[test]
    fn one_node_update_equals_full_replan(
        (hosts, inp) in arb_input(),
        who in any::<prop::sample::Index>(),
        change in arb_host(99),
    ) {
        let mut planner = PathPlanner::new(&inp).unwrap();
        let before = planner.plan().to_specs();
        let k = who.index(hosts.len());
        let mut changed_host = change;
        changed_host.name = hosts[k].name.clone();
        changed_host.lan = hosts[k].lan;
        let status = changed_host.status();
        let changed = planner.update_status(&hosts[k].name, Some(&status)).clone();

        let mut full_in = inp.clone();
        full_in.statuses.insert(hosts[k].name.clone(), status);
        let full = plan(&full_in).unwrap();
        let full_specs = full.to_specs();
        prop_assert_eq!(&planner.plan().to_specs(), &full_specs);
        prop_assert_eq!(planner.plan().pairs().collect::<Vec<_>>(), full.pairs().collect::<Vec<_>>());
        prop_assert_eq!(&planner.plan().summary, &full.summary);
        prop_assert_eq!(&planner.plan().pending_nodes, &full.pending_nodes);
        let really: BTreeSet<String> = full_specs.iter().filter(|(k, s)| before[*k] != **s).map(|(k, _)| k.clone()).collect();
        prop_assert_eq!(changed, really);
    }
}

/// Pod CIDRs drawn from a small pool (so that nodes collide), sometimes a wide /16.
fn arb_pod_cidrs(n: usize) -> impl Strategy<Value = Vec<Vec<String>>> {
    prop::collection::vec(
        prop::collection::vec(
            prop_oneof![
                6 => (0u8..8).prop_map(|k| format!("10.244.{k}.0/24")),
                1 => Just("10.244.0.0/16".to_string()),
            ],
            0..2,
        ),
        n,
    )
}

fn overlaps(a: ipnet::IpNet, b: ipnet::IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the pod CIDRs, InternalIPs and node routes: in every node's spec no two peers'
    /// AllowedIPs overlap (WireGuard would route the overlap to one of them), every entry
    /// starts with the peer's mesh IP, and every other prefix is one the peer owns.
    #[test]
    fn allowed_ips_never_overlap_between_peers(
        (hosts, mut inp) in arb_input(),
        pods in arb_pod_cidrs(12),
        internal in any::<bool>(),
        route_to in prop::option::of(0usize..12),
    ) {
        inp.mesh.routing.node_internal_ips = internal;
        for (n, cidrs) in inp.nodes.iter_mut().zip(&pods) {
            n.pod_cidrs = cidrs.iter().map(|c| c.parse().unwrap()).collect();
        }
        if let Some(i) = route_to.filter(|i| *i < hosts.len()) {
            inp.mesh.routing.node_routes = vec![wirekube_crds::NodeRoutes {
                node: hosts[i].name.clone(),
                cidrs: vec!["192.168.0.0/16".into(), "10.244.3.0/24".into()],
            }];
        }
        let owned: BTreeMap<&str, Vec<ipnet::IpNet>> = inp
            .nodes
            .iter()
            .map(|n| {
                let mut v = n.pod_cidrs.clone();
                v.extend(n.addresses.iter().map(|a| ipnet::IpNet::from(a.ip)));
                v.extend(
                    inp.mesh.routing.node_routes.iter()
                        .filter(|r| r.node == n.name)
                        .flat_map(|r| r.cidrs.iter().map(|c| c.parse::<ipnet::IpNet>().unwrap())),
                );
                (n.name.as_str(), v)
            })
            .collect();
        let p = plan(&inp).unwrap();
        for (node, spec) in p.to_specs() {
            let mut seen: Vec<(ipnet::IpNet, String)> = Vec::new();
            for e in &spec.peers {
                let nets: Vec<ipnet::IpNet> =
                    e.allowed_ips.iter().map(|a| a.parse().unwrap()).collect();
                if let Some(first) = nets.first() {
                    prop_assert_eq!(first.prefix_len(), 32, "{} → {}: {:?}", node, e.name, nets);
                }
                for net in nets.iter().skip(1) {
                    prop_assert!(
                        owned[e.name.as_str()].iter().any(|o| o == net),
                        "{} → {}: {} is not the peer's", node, e.name, net
                    );
                }
                for net in nets {
                    // Overlaps within one peer are fine (one peer gets the traffic anyway).
                    for (other, who) in seen.iter().filter(|(_, w)| *w != e.name) {
                        prop_assert!(
                            !overlaps(net, *other),
                            "{}'s spec: {} of {} overlaps {} of {}", node, net, e.name, other, who
                        );
                    }
                    seen.push((net, e.name.clone()));
                }
            }
        }
    }
}
