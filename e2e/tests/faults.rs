//! The fault suite (first part, not yet in `make test`: see the `ignore` reason below): seed topology 3 (two symmetric clouds, a full-cone and an
//! address-restricted on-prem site, external relay) on the real control plane, with the operator
//! and the agents as pods. Each fault runs under a 10/s ping stream on the pair it hits; the
//! suite asserts recovery within a deadline and prints the recovery time, the longest traffic
//! gap and the pings lost per fault as a Markdown table (recorded in docs/benchmarks.md).
//! Needs root and the binaries (`cargo build --workspace --bins`).

use std::time::Duration;

use wirekube_crds::ActualPath;
use wirekube_e2e::scenario::faults::{FaultRow, table};
use wirekube_e2e::scenario::{Options, Scenario, topology};

/// The cone ↔ cone pair (direct) and the symmetric ↔ symmetric pair (relayed).
const DIRECT: (&str, &str) = ("onprem-1", "onprem-2");
const RELAYED: (&str, &str) = ("cloud-a-1", "cloud-b-1");
/// Other direct pairs (cone ↔ symmetric), so that each fault meets a pair whose probe backoff
/// was not raised by the fault before (a path that fails again soon after coming back waits
/// twice as long for its next probe, by design: docs/agent.md).
const DIRECT_2: (&str, &str) = ("onprem-2", "cloud-b-1");
const DIRECT_3: (&str, &str) = ("onprem-1", "cloud-b-1");
/// Longest wait for a healed pair to be direct again: the next probe slot (30 s, doubled to
/// 60 s after a quick re-failure) plus the probe.
const HEAL_DEADLINE: Duration = Duration::from_secs(100);

fn scenario() -> Scenario {
    assert!(
        wirekube_lab::is_root(),
        "scenario tests need root (network namespaces)"
    );
    let opts = Options {
        tag: "flt".into(),
        progress: Box::new(|m| eprintln!("[faults] {m}")),
        ..Options::default()
    };
    let mut sc = Scenario::build(topology::seed_3_multi_cloud(), opts).expect("lab");
    sc.converge().expect("converged before the faults");
    sc
}

/// Two-way loss on one direct pair and one-way loss on another: on the relay within 3 s (at
/// most 30 of the 10/s pings lost), back to direct after the heal, and staying there.
fn udp_loss(sc: &mut Scenario, rows: &mut Vec<FaultRow>) {
    for (pair, one_way) in [(DIRECT, false), (DIRECT_2, true)] {
        let (a, b) = pair;
        let (wa, wb) = (sc.wan_ip(a).unwrap(), sc.wan_ip(b).unwrap());
        // A direct path gets fast failover once it has settled (5 s, docs/agent.md).
        sc.holds_for("direct before the fault", Duration::from_secs(6), |sc| {
            sc.pair_reports(a, b, ActualPath::Direct)
        })
        .unwrap();
        let fault = if one_way {
            "UDP dropped one way".to_string()
        } else {
            "UDP dropped both ways".to_string()
        };
        let row = sc
            .measure_fault(
                &fault,
                pair,
                |sc| {
                    if one_way {
                        sc.lab.block_udp_one_way(wa, wb)?;
                    } else {
                        sc.lab.block_udp(wa, wb, None)?;
                    }
                    Ok(())
                },
                |sc| sc.pair_reports(a, b, ActualPath::Relay),
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(
            row.pings.lost() <= 30,
            "{fault}: {} pings lost (gap {:?}), target at most 30\n{}",
            row.pings.lost(),
            row.pings.longest_gap_time(),
            sc.logs(400)
        );
        rows.push(row);
        let healed = sc
            .measure_fault(
                &format!("healed after: {fault}"),
                pair,
                |sc| Ok(sc.lab.heal_udp(wa, wb)?),
                |sc| sc.pair_reports(a, b, ActualPath::Direct),
                HEAL_DEADLINE,
            )
            .unwrap();
        rows.push(healed);
        // Back for good: no flapping once the new direct path settled (5 s, docs/agent.md).
        sc.holds_for("direct after the heal", Duration::from_secs(8), |sc| {
            sc.pair_reports(a, b, ActualPath::Direct)
        })
        .unwrap();
    }
}

/// 30 % of all packets between the direct pair's gateways dropped for 15 s, then lifted: the
/// pair ends direct again with traffic flowing.
fn lossy_link(sc: &mut Scenario, rows: &mut Vec<FaultRow>) {
    let (a, b) = DIRECT_3;
    let (wa, wb) = (sc.wan_ip(a).unwrap(), sc.wan_ip(b).unwrap());
    let row = sc
        .measure_fault(
            "30 % loss for 15 s",
            DIRECT_3,
            |sc| {
                sc.lab.set_loss(wa, wb, 30)?;
                // The stream measures what the loss costs; the wait is the fault's duration,
                // checked against the clock rather than slept.
                let until = std::time::Instant::now() + Duration::from_secs(15);
                wirekube_lab::wait_until(Duration::from_secs(20), "15 s of loss", || {
                    std::time::Instant::now() >= until
                })?;
                Ok(sc.lab.set_loss(wa, wb, 0)?)
            },
            |sc| sc.pair_reports(a, b, ActualPath::Direct),
            HEAL_DEADLINE,
        )
        .unwrap();
    rows.push(row);
}

/// Every NAT mapping of the direct pair's gateways and of a cloud gateway forgotten at once.
fn conntrack_flush(sc: &mut Scenario, rows: &mut Vec<FaultRow>) {
    let (a, b) = DIRECT;
    let sites: Vec<String> = [a, b, RELAYED.0]
        .iter()
        .map(|n| sc.site_of(n).unwrap())
        .collect();
    for (pair, want) in [(DIRECT, ActualPath::Direct), (RELAYED, ActualPath::Relay)] {
        let row = sc
            .measure_fault(
                "NAT mappings flushed (conntrack -F)",
                pair,
                |sc| {
                    for s in &sites {
                        sc.lab.flush_conntrack(s)?;
                    }
                    Ok(())
                },
                |sc| sc.pair_reports(pair.0, pair.1, want),
                HEAL_DEADLINE,
            )
            .unwrap();
        rows.push(row);
    }
}

/// The external relay process restarted: the relayed pair is carried again.
fn relay_restart(sc: &mut Scenario, rows: &mut Vec<FaultRow>) {
    let (a, b) = RELAYED;
    let row = sc
        .measure_fault(
            "relay process restarted",
            RELAYED,
            |sc| sc.restart_relay(),
            |sc| sc.pair_reports(a, b, ActualPath::Relay),
            Duration::from_secs(60),
        )
        .unwrap();
    rows.push(row);
}

/// An agent SIGKILLed (the kubelet restarts its container), then a node whose key file was
/// deleted before its agent died: it comes back with a new key and every pair recovers.
fn agent_faults(sc: &mut Scenario, rows: &mut Vec<FaultRow>) {
    let (a, b) = DIRECT;
    let row = sc
        .measure_fault(
            "agent SIGKILL (userspace engine)",
            DIRECT,
            |sc| sc.kill_agent(a).map(drop),
            |sc| sc.agent_pid(a) != 0 && sc.pair_reports(a, b, ActualPath::Direct),
            Duration::from_secs(90),
        )
        .unwrap();
    rows.push(row);
    let old = sc.reported_key(b).expect("key reported");
    let row = sc
        .measure_fault(
            "key deleted on disk, agent killed",
            DIRECT,
            |sc| {
                sc.delete_key(b)?;
                sc.kill_agent(b).map(drop)
            },
            |sc| {
                sc.reported_key(b).is_some_and(|k| k != old)
                    && sc.pair_reports(a, b, ActualPath::Direct)
            },
            Duration::from_secs(120),
        )
        .unwrap();
    rows.push(row);
}

#[test]
#[ignore = "work in progress (issue 16): after 'key deleted on disk, agent killed' the node's pairs \
            flap between direct and relay for minutes; run with --ignored"]
fn fault_suite_seed_3() {
    let mut sc = scenario();
    let mut rows = Vec::new();
    udp_loss(&mut sc, &mut rows);
    lossy_link(&mut sc, &mut rows);
    conntrack_flush(&mut sc, &mut rows);
    relay_restart(&mut sc, &mut rows);
    agent_faults(&mut sc, &mut rows);
    eprintln!("fault suite, seed topology 3:\n{}", table(&rows));
    // After every fault the whole mesh is as the seed expects again.
    sc.converge().expect("every pair back on its planned path");
    sc.verify().expect("every pair verified after the faults");
    sc.shutdown().unwrap();
}
