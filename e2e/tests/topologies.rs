//! The seed topologies (the seed tables in `docs/topologies.md`) as end-to-end tests: each builds its
//! topology in the network lab, runs the real API server, operator, relay and agents, and checks
//! every pair in both directions (reported path and reason, `wg show`, ping, TCP transfer).
//! Needs root and the binaries: `cargo build --workspace --bins` first (`make test` does).
//! See docs/topologies.md.

use wirekube_e2e::scenario::{self, Options, Topology, report, topology};

fn check(topo: Topology) {
    assert!(
        wirekube_lab::is_root(),
        "scenario tests need root (network namespaces)"
    );
    let id = topo.to_string();
    let opts = Options {
        tag: "sc".into(),
        progress: Box::new(move |m| eprintln!("[{id}] {m}")),
        ..Options::default()
    };
    let title = topo.to_string();
    match scenario::run(topo, opts) {
        Ok(out) => {
            eprintln!("{title}\n{}", report::table(&out.pairs));
            eprintln!("{title} timings: {}", report::timings(&out.timings));
        }
        Err(e) => panic!("{e:#}"),
    }
}

#[test]
fn seed_topology_1_all_private() {
    check(topology::seed_1_all_private());
}

#[test]
fn seed_topology_2_mixed() {
    check(topology::seed_2_mixed());
}

#[test]
fn seed_topology_3_multi_cloud() {
    check(topology::seed_3_multi_cloud());
}

/// The seed's "Cone ↔ Symmetric: Direct" with Linux's default (port-restricted) cone: relayed.
#[test]
fn seed_topology_3_port_restricted_cone_variant() {
    check(topology::seed_3_port_restricted());
}

#[test]
fn seed_topology_4_home_lab_cloud() {
    check(topology::seed_4_home_lab_cloud());
}

#[test]
fn seed_topology_5_outbound_tcp_only() {
    check(topology::seed_5_outbound_tcp_only());
}

/// Decision tree: all nodes public → `mode: never`, no relay.
#[test]
fn seed_decision_mode_never_all_public() {
    check(topology::mode_never_all_public());
}

/// `mode: always`: every pair through the relay, even on one LAN.
#[test]
fn seed_decision_mode_always() {
    check(topology::mode_always());
}
