//! The NAT grid (issue 17): one node per kind of network attachment (public IP, 1:1 NAT, full
//! / address-restricted / port-restricted cone, symmetric, TCP-only firewall, CGNAT in front
//! of a cone, two nodes on one LAN) in one lab, every ordered pair checked against the one
//! table (`wirekube_e2e::scenario::grid::GRID`): the planned path and reason (the operator's
//! spec), the path and reason the agent reports, `wg show`, a ping and a verified TCP
//! transfer; and every node's reported NAT type. Needs root and
//! `cargo build --workspace --bins`.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use wirekube_crds::{ActualPath, PlannedPath};
use wirekube_e2e::scenario::{Options, PairReport, Scenario, grid, report};

#[test]
fn nat_grid_every_pair_of_nat_kinds() {
    run_grid(grid::topology(), Duration::from_secs(180), false);
}

/// The start-up benchmark above ten nodes (issue 16; docs/benchmarks.md): the grid with
/// `WIREKUBE_GRID_COPIES` (default 2, at most 9) nodes of every kind, checked like the grid.
/// Not in `make test`: 20 nodes take about as long as the rest of the scenario suite. Name the
/// test when running ignored ones: each is a whole lab, and two at once share the two cores.
#[test]
#[ignore = "benchmark: cargo test -p wirekube-e2e --test nat_grid -- --ignored --nocapture nat_grid_scaled_startup"]
fn nat_grid_scaled_startup() {
    let copies = grid_copies();
    run_grid(
        grid::topology_scaled(copies),
        Duration::from_secs(120 + 60 * copies as u64),
        false,
    );
}

/// The same grid, but WireKube installed on a running cluster: the nodes (lab kubelets,
/// kube-proxies) start first and settle (Ready, pod CIDRs), then `kubectl apply -k` and the
/// mesh; the agents start together. The boot above measures WireKube while 30 nodes register.
#[test]
#[ignore = "benchmark: cargo test -p wirekube-e2e --test nat_grid -- --ignored --nocapture nat_grid_scaled_install"]
fn nat_grid_scaled_install_on_running_cluster() {
    let copies = grid_copies();
    run_grid(
        grid::topology_scaled(copies),
        Duration::from_secs(120 + 60 * copies as u64),
        true,
    );
}

/// `WIREKUBE_GRID_COPIES` (default 2, 1 to 9).
fn grid_copies() -> usize {
    match std::env::var("WIREKUBE_GRID_COPIES") {
        Err(_) => 2,
        Ok(v) => match v.parse::<usize>() {
            Ok(n @ 1..=9) => n,
            _ => panic!("WIREKUBE_GRID_COPIES={v}: give a number of copies from 1 to 9"),
        },
    }
}

fn run_grid(
    topo: wirekube_e2e::scenario::Topology,
    converge_timeout: Duration,
    install_after_nodes: bool,
) {
    assert!(
        wirekube_lab::is_root(),
        "the NAT grid needs root (network namespaces)"
    );
    let t0 = Instant::now();
    let opts = Options {
        tag: "grid".into(),
        // Ten nodes with a kubelet, kube-proxy and agent each start on two cores.
        converge_timeout,
        transfer_bytes: 256 << 10,
        progress: Box::new(|m| eprintln!("[nat-grid] {m}")),
        install_after_nodes,
        ..Options::default()
    };
    let mut sc = Scenario::build(topo, opts).unwrap_or_else(|e| panic!("{e:#}"));
    let res = check(&mut sc);
    let logs = res.as_ref().err().map(|_| sc.logs(40));
    sc.shutdown().expect("teardown");
    sc.timings.total = t0.elapsed();
    match (res, logs) {
        (Ok(pairs), _) => {
            eprintln!("{}", report::table(&pairs));
            eprintln!("NAT grid (row -> column):\n{}", grid::observed(&pairs));
            eprintln!("timings: {}", report::timings(&sc.timings));
        }
        (Err(e), logs) => panic!("{e:#}\n---- logs ----\n{}", logs.unwrap_or_default()),
    }
}

/// Converges, checks every direction and every node's NAT type.
fn check(sc: &mut Scenario) -> Result<Vec<PairReport>> {
    sc.converge()?;
    let pairs = sc.verify()?;
    let mut problems: Vec<String> = Vec::new();
    let others = sc.topo.nodes().len() - 1;
    for (name, peer) in sc.peers()? {
        // The plan: the operator's spec entry for every peer.
        if peer.spec.peers.len() != others {
            problems.push(format!(
                "{name}: spec lists {} peers, expected {others}",
                peer.spec.peers.len()
            ));
        }
        for e in &peer.spec.peers {
            let Some(x) = sc.topo.expectation(&name, &e.name) else {
                problems.push(format!("{name}: spec lists unknown peer {}", e.name));
                continue;
            };
            let want = match x.path {
                ActualPath::Direct => PlannedPath::Direct,
                _ => PlannedPath::Relay,
            };
            if (e.path, e.reason) != (want, x.reason) {
                problems.push(format!(
                    "{name} -> {}: planned {:?} ({}), expected {want:?} ({})",
                    e.name, e.path, e.reason, x.reason
                ));
            }
        }
        let got = peer.status.map(|s| s.nat_type);
        let want = grid::kind_of(&name).nat_type();
        if got != Some(want) {
            problems.push(format!("{name}: NAT type {got:?}, expected {want:?}"));
        }
    }
    if !pairs.iter().all(PairReport::ok) {
        problems.push(format!("pairs failed\n{}", report::table(&pairs)));
    }
    if !problems.is_empty() {
        bail!(
            "{}\nNAT grid (row -> column):\n{}",
            problems.join("\n"),
            grid::observed(&pairs)
        );
    }
    Ok(pairs)
}
