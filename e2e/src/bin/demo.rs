//! `wirekube-demo` (`make demo`): builds a seed topology in network namespaces, runs the real API
//! server, operator, relay and agents in it, applies the mesh and shows what happened as a user
//! sees it, `kubectl wirekube status` against the lab's API server, then what the demo checked
//! itself (every direction against the seed, ping RTT and TCP throughput over the mesh) and
//! `kubectl get wkmesh,wkpeer`. Tears everything down on exit
//! (Ctrl-C included) unless `--keep`. Needs root.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use wirekube_e2e::scenario::{Options, Scenario, Topology, bins, report, topology};
use wirekube_lab::Lab;

#[derive(Debug, Parser)]
#[command(
    name = "wirekube-demo",
    about = "WireKube across simulated NATs, in network namespaces on this machine (root)"
)]
struct Args {
    /// Seed topology to build (1-5); default 4, the richest (cone, symmetric, public, same LAN,
    /// relay via a managed NodePort relay).
    #[arg(long, short = 't', value_parser = clap::value_parser!(u8).range(1..=5))]
    topology: Option<u8>,
    /// Run all five seed topologies one after another.
    #[arg(long, conflicts_with = "topology")]
    all: bool,
    /// Leave the lab running on exit (processes, namespaces) and print how to reach it.
    #[arg(long)]
    keep: bool,
    /// Tear down a lab left by `--keep` (its prefix) and exit.
    #[arg(long, value_name = "PREFIX")]
    down: Option<String>,
    /// Bytes of the TCP transfer per direction (throughput column).
    #[arg(long, default_value_t = 16 << 20)]
    transfer_bytes: u64,
    /// Seconds the agents get to converge.
    #[arg(long, default_value_t = 90)]
    timeout: u64,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = real_main(args) {
        eprintln!("wirekube-demo: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(args: Args) -> Result<()> {
    if let Some(prefix) = &args.down {
        Lab::purge(prefix).with_context(|| format!("tearing down lab {prefix}"))?;
        println!("lab {prefix} removed");
        return Ok(());
    }
    if !wirekube_lab::is_root() {
        bail!("the demo builds network namespaces: run it as root (e.g. `sudo make demo`)");
    }
    bins::check_all()?;
    let topos: Vec<Topology> = if args.all {
        (1..=5).filter_map(topology::seed).collect()
    } else {
        vec![topology::seed(args.topology.unwrap_or(4)).expect("range-checked")]
    };
    install_signal_teardown();
    let n = topos.len();
    for (i, topo) in topos.into_iter().enumerate() {
        let last = i + 1 == n;
        run_one(topo, &args, args.keep && last)?;
    }
    Ok(())
}

/// The lab a signal must tear down.
static CURRENT_LAB: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// On SIGINT/SIGTERM: purges the current lab and exits 130.
fn install_signal_teardown() {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("signal runtime");
        rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        let prefix = CURRENT_LAB
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(prefix) = prefix {
            eprintln!("\ninterrupted: tearing down lab {prefix} ...");
            match Lab::purge(&prefix) {
                Ok(()) => eprintln!("lab {prefix} removed"),
                Err(e) => eprintln!("teardown of {prefix}: {e}"),
            }
        }
        std::process::exit(130);
    });
}

fn set_current_lab(prefix: Option<String>) {
    *CURRENT_LAB.lock().unwrap_or_else(|e| e.into_inner()) = prefix;
}

fn run_one(topo: Topology, args: &Args, keep: bool) -> Result<()> {
    let start = Instant::now();
    let prefix = Lab::unique_prefix("demo");
    set_current_lab(Some(prefix.clone()));
    println!("\n=== {topo} — lab {prefix}");
    for s in &topo.sites {
        println!(
            "    site {:<9} {:<24} {:<15} {}",
            s.name,
            format!("{:?}", s.nat),
            s.cidr,
            s.nodes.join(", ")
        );
    }
    for p in &topo.public_nodes {
        println!("    public node {p}");
    }
    println!(
        "    relay: {}, mode {:?}\n",
        topo.relay.describe(),
        topo.mode
    );
    let t0 = start;
    let opts = Options {
        prefix: Some(prefix.clone()),
        converge_timeout: Duration::from_secs(args.timeout),
        transfer_bytes: args.transfer_bytes,
        progress: Box::new(move |m| println!("[{:>6.2} s] {m}", t0.elapsed().as_secs_f64())),
        ..Options::default()
    };
    let mut sc = Scenario::build(topo, opts)?;
    let res = sc.converge().and_then(|()| sc.verify());
    let pairs = match res {
        Ok(p) => p,
        Err(e) => {
            eprintln!("\n{e:#}\n---- process logs ----\n{}", sc.logs(30));
            if let Ok(y) = sc.kubectl(&["get", "wkpeer", "-o", "wide"]) {
                eprintln!("{y}");
            }
            finish(sc, keep)?;
            bail!("the mesh did not converge as the seed expects");
        }
    };
    // What a user sees: the plugin's matrix and directions, against the lab's API server.
    println!("\n$ kubectl wirekube status");
    match sc.kube.kubectl_wirekube(&["status"]) {
        Ok(o) => print!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => println!("(kubectl wirekube failed: {e:#})"),
    }
    println!("\n{}", verified(&pairs));
    println!(
        "timings: {}\n",
        report::timings(&sc.timings)
            .split("; total")
            .next()
            .unwrap_or_default()
    );
    println!("$ kubectl get wkmesh,wkpeer");
    match sc.kubectl(&["get", "wkmesh,wkpeer"]) {
        Ok(out) => println!("{out}"),
        Err(e) => println!("(kubectl failed: {e:#})"),
    }
    let failed = pairs.iter().filter(|p| !p.ok()).count();
    finish(sc, keep)?;
    println!("done in {:.1} s", start.elapsed().as_secs_f64());
    if failed > 0 {
        bail!("{failed} pair directions did not match the seed");
    }
    Ok(())
}

/// What the demo checked beyond what the agents report: every direction against the seed, the
/// ping RTT and TCP transfer over the mesh; the failed directions in full.
fn verified(pairs: &[report::PairReport]) -> String {
    let ok = pairs.iter().filter(|p| p.ok()).count();
    let mut rtts: Vec<Duration> = pairs.iter().filter_map(|p| p.rtt).collect();
    rtts.sort();
    let mut rates: Vec<f64> = pairs.iter().filter_map(|p| p.throughput).collect();
    rates.sort_by(f64::total_cmp);
    let mut out = format!(
        "checked by the demo: {ok}/{} directions as the seed expects (path and reason), \
         ping over the mesh {} .. {}, TCP {} .. {}",
        pairs.len(),
        report::fmt_dur(rtts.first().copied()),
        report::fmt_dur(rtts.last().copied()),
        report::fmt_rate(rates.first().copied()),
        report::fmt_rate(rates.last().copied()),
    );
    for p in pairs.iter().filter(|p| !p.ok()) {
        out += &format!("\n  FAIL {} -> {}: {}", p.from, p.to, p.problems.join("; "));
    }
    out
}

fn finish(mut sc: Scenario, keep: bool) -> Result<()> {
    let prefix = sc.lab.prefix().to_owned();
    let kc = sc.kube.cp.admin_kubeconfig();
    if keep {
        println!("\nThe lab stays up (--keep). Its API server listens inside the DMZ namespace:");
        println!(
            "  ip netns exec {} kubectl --kubeconfig {} get wkmesh,wkpeer -o wide",
            sc.dmz.ns,
            kc.display()
        );
        println!(
            "  (or: export KUBECONFIG={} and run kubectl via `ip netns exec {}`)",
            kc.display(),
            sc.dmz.ns
        );
        if let Some(h) = sc.hosts.values().next() {
            println!(
                "  wg on a node (each host has a private /var/run/wireguard):\n  \
                 ip netns exec {} sh -c 'mount --bind {}/run-wireguard /var/run/wireguard && wg show'",
                h.ns,
                sc.lab.host_dir(&h.name).display()
            );
        }
        println!("Tear it down with: wirekube-demo --down {prefix}");
        // Leave processes and namespaces running: skip the lab's teardown.
        set_current_lab(None);
        std::mem::forget(sc);
        return Ok(());
    }
    println!("tearing down lab {prefix} ...");
    sc.shutdown()?;
    set_current_lab(None);
    println!(
        "lab removed. Run with --keep to leave it up and point kubectl at it:\n  \
         ip netns exec {prefix}-dmz kubectl --kubeconfig <lab>/k8s/admin.kubeconfig get wkpeer"
    );
    Ok(())
}
