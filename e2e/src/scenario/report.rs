//! What a scenario measured, and how it is shown to people.

use std::fmt::Write as _;
use std::time::Duration;

use wirekube_crds::{ActualPath, PathReason};

/// One direction of one pair.
#[derive(Clone, Debug)]
pub struct PairReport {
    pub from: String,
    pub to: String,
    pub expected_path: ActualPath,
    pub expected_reason: PathReason,
    /// The seed's row.
    pub why: String,
    pub actual_path: Option<ActualPath>,
    pub actual_reason: Option<PathReason>,
    /// Endpoint of the peer in `wg show`.
    pub wg_endpoint: Option<String>,
    pub handshake: bool,
    pub rtt: Option<Duration>,
    /// Bits per second of the verified TCP transfer.
    pub throughput: Option<f64>,
    pub transfer_bytes: u64,
    pub problems: Vec<String>,
}

impl PairReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Durations of one scenario run. Times after the agents start are measured from their spawn.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    /// Namespaces, links, NAT rulesets.
    pub lab_build: Duration,
    /// API server, relay, operator up; nodes registered; mesh applied.
    pub control_plane: Duration,
    /// Agents started → first successful ping over the mesh (any pair).
    pub first_ping: Option<Duration>,
    /// Agents started → every pair answered a ping at least once.
    pub all_pinged: Option<Duration>,
    /// Agents started → every pair the seed plans Direct is reported direct both ways.
    pub all_direct: Option<Duration>,
    /// Agents started → every pair reported as expected both ways.
    pub converged: Option<Duration>,
    /// The slowest pair counted from the later of its two agents' start (`scenario::startup`):
    /// the agents' own start-up, without the lab's pod start.
    pub slowest_pair: Option<crate::scenario::startup::SlowestPair>,
    /// First to last agent start (the lab starting the pods).
    pub agents_spread: Option<Duration>,
    /// Checking every pair (status, `wg show`, ping, TCP transfer).
    pub verify: Duration,
    /// Whole run including teardown when measured by the caller.
    pub total: Duration,
}

pub fn fmt_dur(d: Option<Duration>) -> String {
    match d {
        Some(d) if d < Duration::from_millis(1) => format!("{} µs", d.as_micros()),
        Some(d) if d < Duration::from_secs(1) => format!("{:.2} ms", d.as_secs_f64() * 1e3),
        Some(d) => format!("{:.2} s", d.as_secs_f64()),
        None => "-".into(),
    }
}

pub fn fmt_rate(bps: Option<f64>) -> String {
    match bps {
        Some(b) if b >= 1e9 => format!("{:.2} Gbit/s", b / 1e9),
        Some(b) => format!("{:.0} Mbit/s", b / 1e6),
        None => "-".into(),
    }
}

fn path_str(p: Option<ActualPath>) -> &'static str {
    match p {
        Some(ActualPath::Direct) => "Direct",
        Some(ActualPath::Relay) => "Relay",
        Some(ActualPath::Connecting) => "connecting",
        Some(ActualPath::Down) => "down",
        None => "(none)",
    }
}

/// A plain-text table of pairs.
pub fn table(pairs: &[PairReport]) -> String {
    let rows: Vec<[String; 8]> = pairs
        .iter()
        .map(|p| {
            [
                format!("{} -> {}", p.from, p.to),
                format!(
                    "{} ({})",
                    path_str(Some(p.expected_path)),
                    p.expected_reason
                ),
                path_str(p.actual_path).to_string(),
                p.actual_reason.map(|r| r.to_string()).unwrap_or("-".into()),
                p.wg_endpoint.clone().unwrap_or("-".into()),
                fmt_dur(p.rtt),
                fmt_rate(p.throughput),
                if p.ok() { "ok".into() } else { "FAIL".into() },
            ]
        })
        .collect();
    let head = [
        "pair",
        "seed expects",
        "actual",
        "reason",
        "wg endpoint",
        "ping RTT",
        "TCP",
        "",
    ];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<&str>| {
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i] - c.chars().count();
            let _ = write!(out, "{c}{}  ", " ".repeat(pad));
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    };
    line(&mut out, head.to_vec());
    line(
        &mut out,
        w.iter()
            .map(|n| "-".repeat(*n))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    );
    for r in &rows {
        line(&mut out, r.iter().map(String::as_str).collect());
    }
    for p in pairs.iter().filter(|p| !p.ok()) {
        let _ = writeln!(out, "{} -> {}: {}", p.from, p.to, p.problems.join("; "));
    }
    out
}

/// Timings as text.
pub fn timings(t: &Timings) -> String {
    format!(
        "lab build {}, control plane {}, after agents start: first ping {}, all pairs pinged {}, \
         all direct pairs direct {}, converged {}; agents started over {}, slowest pair from \
         its later agent's start {}; verification {}; total {}",
        fmt_dur(Some(t.lab_build)),
        fmt_dur(Some(t.control_plane)),
        fmt_dur(t.first_ping),
        fmt_dur(t.all_pinged),
        fmt_dur(t.all_direct),
        fmt_dur(t.converged),
        fmt_dur(t.agents_spread),
        t.slowest_pair.as_ref().map_or("-".into(), |p| format!(
            "{} ({} <-> {})",
            fmt_dur(Some(p.took)),
            p.a,
            p.b
        )),
        fmt_dur(Some(t.verify)),
        fmt_dur(Some(t.total)),
    )
}
