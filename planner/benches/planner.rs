//! PathPlanner benchmark: `cargo bench -p wirekube-planner --bench planner`.
//!
//! Meshes of 100 / 1,000 / 5,000 synthetic nodes (sites of 8 behind rotating NAT types, see
//! `planner::fixtures::synthetic_hosts`). For each size it prints: the full plan from
//! scratch; a full re-plan with the stored specs equal to the plan (the operator's steady
//! state, nothing to write); and one node's status changing, re-planned with
//! `PathPlanner::update_status`, for three kinds of change, with the number of peer specs
//! that really changed (cross-checked against a full re-plan at the smaller sizes) and the
//! time to build those specs. "build all specs" is the cost of materialising every spec
//! (n² `PeerEntry` values), which the plan itself avoids.
//! Times are medians; `PLANNER_BENCH_SIZES=100,1000` limits the sizes.

use std::time::{Duration, Instant};

use wirekube_crds::{NatType, RelayMode, WireKubePeerStatus};
use wirekube_planner::fixtures::{Host, input, mesh, synthetic_hosts};
use wirekube_planner::{PathPlanner, PlannerInput, plan};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Times `update_status` switching `node` to `changed` and back, `rounds` times each way;
/// then the time to build the changed specs (what the operator writes).
fn one_node(
    planner: &mut PathPlanner,
    node: &str,
    original: &WireKubePeerStatus,
    changed: &WireKubePeerStatus,
    rounds: usize,
) -> (Duration, usize, Duration) {
    let mut times = Vec::new();
    let mut count = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        count = planner.update_status(node, Some(changed)).len();
        times.push(t.elapsed());
        let t = Instant::now();
        planner.update_status(node, Some(original));
        times.push(t.elapsed());
    }
    planner.update_status(node, Some(changed));
    let t = Instant::now();
    let built = planner.plan().changed_specs().count();
    let build = t.elapsed();
    assert_eq!(built, count);
    planner.update_status(node, Some(original));
    (median(times), count, build)
}

/// The same change through a full plan against the stored specs: what really changed.
fn full_changed(inp: &PlannerInput, node: &str, status: &WireKubePeerStatus) -> usize {
    let mut next = inp.clone();
    next.previous = plan(inp).unwrap().to_specs();
    next.statuses.insert(node.into(), status.clone());
    plan(&next).unwrap().changed.len()
}

fn main() {
    let sizes: Vec<usize> = std::env::var("PLANNER_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 1_000, 5_000]);
    println!(
        "| nodes | pairs | full plan | build all specs | full re-plan, nothing changed | 1 node: counters only | 1 node: new STUN mapping | 1 node: NAT reclassified |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        let hosts = synthetic_hosts(n);
        let inp = input(mesh("10.99.0.0/16", RelayMode::Auto), &hosts, true);
        let reps = if n >= 5_000 { 1 } else { 5 };

        let mut times = Vec::new();
        for _ in 0..reps {
            let t = Instant::now();
            let p = plan(&inp).unwrap();
            times.push(t.elapsed());
            assert_eq!(p.changed.len(), n);
            drop(p);
        }
        let full = median(times);

        // Building every spec object (what a first-ever apply writes): n² owned entries.
        let p = plan(&inp).unwrap();
        let t = Instant::now();
        let entries: usize = p.specs().map(|(_, s)| s.peers.len()).sum();
        let materialise = t.elapsed();
        assert_eq!(entries, n * (n - 1));
        drop(p);

        // Steady state needs the stored specs as input: n² owned entries, ~7 GB at 5,000
        // nodes, so only the smaller sizes run it.
        let steady = if n < 5_000 {
            let mut again = inp.clone();
            again.previous = plan(&inp).unwrap().to_specs();
            let mut times = Vec::new();
            let mut changed = 0;
            for _ in 0..reps {
                let t = Instant::now();
                let p = plan(&again).unwrap();
                times.push(t.elapsed());
                changed = p.changed.len();
            }
            format!("{} ({changed} changed)", ms(median(times)))
        } else {
            "not run (memory)".into()
        };

        // A port-restricted home node (site 1 of the rotation): its agent reports new facts.
        let h: &Host = &hosts[8 + 3];
        assert_eq!(h.nat, NatType::PortRestricted);
        let original = h.status();
        let mut counters = original.clone();
        counters.summary.direct = 123;
        counters.observed_generation = Some(42);
        let remapped = h.clone().mapped_port(40_001).status();
        let mut reclassified = original.clone();
        reclassified.nat_type = NatType::AddressRestricted;

        let mut planner = PathPlanner::new(&inp).unwrap();
        let rounds = if n >= 5_000 { 3 } else { 10 };
        let mut cells = Vec::new();
        for status in [&counters, &remapped, &reclassified] {
            let (t, changed, build) = one_node(&mut planner, &h.name, &original, status, rounds);
            if n <= 1_000 {
                assert_eq!(
                    changed,
                    full_changed(&inp, &h.name, status),
                    "incremental == full"
                );
            }
            cells.push(format!(
                "{} → {changed} specs (built in {})",
                ms(t),
                ms(build)
            ));
        }
        drop(planner);
        println!(
            "| {n} | {} | {} | {} | {steady} | {} | {} | {} |",
            n * (n - 1) / 2,
            ms(full),
            ms(materialise),
            cells[0],
            cells[1],
            cells[2]
        );
    }
}
