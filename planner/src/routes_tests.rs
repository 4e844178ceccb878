use super::*;
use wirekube_crds::NodeRoutes;

fn node(name: &str, pods: &[&str], internal: Option<&str>) -> NodePrefixes {
    NodePrefixes {
        name: name.into(),
        pod_cidrs: pods.iter().map(|p| p.parse().unwrap()).collect(),
        internal_ip: internal.map(|i| i.parse().unwrap()),
    }
}

fn spec(pods: bool, internal: bool) -> RoutingSpec {
    RoutingSpec {
        pod_cidrs: pods,
        node_internal_ips: internal,
        ..RoutingSpec::default()
    }
}

fn mesh() -> Option<IpNet> {
    Some("10.99.0.0/16".parse().unwrap())
}

fn nets(v: &[&str]) -> Vec<IpNet> {
    v.iter().map(|p| p.parse().unwrap()).collect()
}

#[test]
fn pod_cidrs_are_carried_by_default_and_internal_ips_only_when_asked() {
    let nodes = [
        node("a", &["10.244.0.0/24"], Some("10.1.0.10")),
        node("b", &["10.244.1.0/24"], Some("10.2.0.10")),
    ];
    let r = carried_routes(&RoutingSpec::default(), mesh(), &[], &nodes);
    assert_eq!(r.everywhere["a"], nets(&["10.244.0.0/24"]));
    assert_eq!(r.everywhere["b"], nets(&["10.244.1.0/24"]));
    assert!(r.internal.is_empty() && r.dropped.is_empty());

    let r = carried_routes(&spec(false, true), mesh(), &[], &nodes);
    assert!(r.everywhere.is_empty());
    assert_eq!(r.internal["a"], "10.1.0.10/32".parse::<IpNet>().unwrap());
    assert_eq!(r.internal["b"], "10.2.0.10/32".parse::<IpNet>().unwrap());

    let r = carried_routes(&spec(false, false), mesh(), &[], &nodes);
    assert_eq!(r, CarriedRoutes::default());
}

#[test]
fn colliding_prefixes_are_carried_for_neither_and_named() {
    // Two sites reuse 10.0.0.0/24: both nodes have InternalIP 10.0.0.5; c is unaffected.
    let nodes = [
        node("a", &[], Some("10.0.0.5")),
        node("b", &[], Some("10.0.0.5")),
        node("c", &[], Some("10.0.1.5")),
    ];
    let r = carried_routes(&spec(true, true), mesh(), &[], &nodes);
    assert_eq!(r.internal.keys().collect::<Vec<_>>(), ["c"]);
    assert_eq!(r.dropped.len(), 2);
    assert_eq!(r.dropped[0].node, "a");
    assert_eq!(
        r.dropped[0].reason,
        DropReason::Collides {
            node: "b".into(),
            prefix: "10.0.0.5/32".parse().unwrap()
        }
    );
    let msg = r.dropped[0].to_string();
    assert!(
        msg.contains("InternalIP 10.0.0.5/32 of node a") && msg.contains("of node b"),
        "{msg}"
    );
}

/// (what, routing spec, nodes, expected drops as (node, prefix, reason))
type Case = (
    &'static str,
    RoutingSpec,
    Vec<NodePrefixes>,
    Vec<(&'static str, &'static str, DropReason)>,
);

#[test]
fn table_of_what_is_left_out() {
    let cases: Vec<Case> = vec![
        (
            "pod CIDR inside the mesh CIDR",
            spec(true, false),
            vec![node("a", &["10.99.4.0/24"], None)],
            vec![("a", "10.99.4.0/24", DropReason::OverlapsMesh)],
        ),
        (
            "IPv6 pod CIDR of a dual-stack node",
            spec(true, false),
            vec![node("a", &["10.244.0.0/24", "fd00:10:244::/64"], None)],
            vec![("a", "fd00:10:244::/64", DropReason::NotIpv4)],
        ),
        (
            "excluded range",
            RoutingSpec {
                exclude_cidrs: vec!["192.168.0.0/16".into()],
                ..spec(true, true)
            },
            vec![node("a", &["10.244.0.0/24"], Some("192.168.1.4"))],
            vec![(
                "a",
                "192.168.1.4/32",
                DropReason::Excluded("192.168.0.0/16".parse().unwrap()),
            )],
        ),
        (
            "node route for a node outside the mesh",
            RoutingSpec {
                node_routes: vec![NodeRoutes {
                    node: "ghost".into(),
                    cidrs: vec!["172.20.0.0/16".into()],
                }],
                ..spec(true, false)
            },
            vec![node("a", &[], None)],
            vec![("ghost", "172.20.0.0/16", DropReason::UnknownNode)],
        ),
        (
            "a node route that contains another node's pod CIDR",
            RoutingSpec {
                node_routes: vec![NodeRoutes {
                    node: "a".into(),
                    cidrs: vec!["10.244.0.0/16".into()],
                }],
                ..spec(true, false)
            },
            vec![node("a", &[], None), node("b", &["10.244.1.0/24"], None)],
            vec![
                (
                    "a",
                    "10.244.0.0/16",
                    DropReason::Collides {
                        node: "b".into(),
                        prefix: "10.244.1.0/24".parse().unwrap(),
                    },
                ),
                (
                    "b",
                    "10.244.1.0/24",
                    DropReason::Collides {
                        node: "a".into(),
                        prefix: "10.244.0.0/16".parse().unwrap(),
                    },
                ),
            ],
        ),
        (
            "overlaps within one node are fine (one peer)",
            RoutingSpec {
                node_routes: vec![NodeRoutes {
                    node: "a".into(),
                    cidrs: vec!["10.244.0.0/16".into()],
                }],
                ..spec(true, false)
            },
            vec![node("a", &["10.244.0.0/24"], None)],
            vec![],
        ),
    ];
    for (what, spec, nodes, want) in cases {
        let r = carried_routes(&spec, mesh(), &[], &nodes);
        let got: Vec<(&str, String, DropReason)> = r
            .dropped
            .iter()
            .map(|d| (d.node.as_str(), d.prefix.to_string(), d.reason.clone()))
            .collect();
        let want: Vec<(&str, String, DropReason)> = want
            .into_iter()
            .map(|(n, p, r)| (n, p.to_string(), r))
            .collect();
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn node_routes_are_carried_with_the_pod_cidrs_sorted() {
    let s = RoutingSpec {
        node_routes: vec![NodeRoutes {
            node: "gw".into(),
            cidrs: vec!["192.168.10.0/24".into(), "172.16.0.0/16".into()],
        }],
        ..spec(true, false)
    };
    let r = carried_routes(&s, mesh(), &[], &[node("gw", &["10.244.3.0/24"], None)]);
    assert_eq!(
        r.everywhere["gw"],
        nets(&["10.244.3.0/24", "172.16.0.0/16", "192.168.10.0/24"])
    );
}

#[test]
fn the_sweep_finds_every_collision_among_many_nodes() {
    // 300 nodes with distinct /24s, plus one node whose /20 covers sixteen of them.
    let mut nodes: Vec<NodePrefixes> = (0..300)
        .map(|i| {
            let p = format!("10.{}.{}.0/24", 100 + i / 256, i % 256);
            node(&format!("n{i:03}"), &[p.as_str()], None)
        })
        .collect();
    nodes.push(node("wide", &["10.100.16.0/20"], None));
    let r = carried_routes(&spec(true, false), mesh(), &[], &nodes);
    assert_eq!(r.dropped.len(), 17, "{:#?}", r.dropped);
    assert_eq!(r.everywhere.len(), 300 - 16);
    assert!(!r.everywhere.contains_key("wide"));
}

#[test]
fn relay_and_stun_addresses_stay_outside_the_tunnel() {
    // node-2's InternalIP is where the relay and its STUN responder listen.
    let nodes = [
        node("node-1", &[], Some("10.1.0.10")),
        node("node-2", &[], Some("198.18.0.20")),
    ];
    let underlay = ["198.18.0.20".parse().unwrap()];
    let r = carried_routes(&spec(false, true), mesh(), &underlay, &nodes);
    assert_eq!(r.internal.keys().collect::<Vec<_>>(), ["node-1"]);
    assert_eq!(
        r.dropped[0].reason,
        DropReason::Underlay("198.18.0.20".parse().unwrap())
    );
}
