//! The per-pair checks after convergence: the reported path and reason, `wg show`, ping and a
//! verified TCP transfer over the mesh IPs.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use wirekube_crds::{ActualPath, WireKubePeer};
use wirekube_lab::{wait_for, wait_until};

use super::super::hosts::{NodeAccess, WgPeer, wg_dump};
use super::super::report::PairReport;
use super::super::topology::Expect;
use super::{PING_DEADLINE, Scenario};

impl Scenario {
    /// Checks every pair in both directions: reported path and reason, `wg show`, ping and a
    /// verified TCP transfer over the mesh IPs.
    pub fn verify(&mut self) -> Result<Vec<PairReport>> {
        let t = Instant::now();
        (self.opts.progress)("checking every pair: status, wg show, ping, TCP");
        let peers = self.peers()?;
        let ips = self.mesh_ips(&peers);
        let mut out = Vec::new();
        for (a, b) in self.topo.pairs() {
            for (x, y) in [(&a, &b), (&b, &a)] {
                let r = self.verify_one(&peers, &ips, x, y);
                (self.opts.progress)(&format!(
                    "{x} -> {y}: {:?} ({}) {}",
                    r.actual_path.unwrap_or_default(),
                    r.actual_reason.map(|r| r.to_string()).unwrap_or_default(),
                    if r.ok() { "ok" } else { "FAIL" }
                ));
                out.push(r);
            }
        }
        // Pings that never answered during convergence count from now on.
        self.stop_probers.store(true, Ordering::Relaxed);
        for p in self.probers.drain(..) {
            let _ = p.join();
        }
        let firsts = self.first_pings.lock().expect("pings lock").clone();
        self.timings.first_ping = firsts.values().min().copied();
        if firsts.len() == self.topo.pairs().len() {
            self.timings.all_pinged = firsts.values().max().copied();
        }
        if let Some(((a, b), at)) = firsts.iter().max_by_key(|(_, at)| **at) {
            let reported = |x: &str, y: &str| {
                self.reached.get(x, y).map_or("-".to_string(), |t| {
                    let d = t.duration_since(self.agents_started_wall);
                    format!("{:.1} s", d.as_secs_f64())
                })
            };
            (self.opts.progress)(&format!(
                "last pair to answer a ping: {a} -> {b}, {:.1} s after the agents started \
                 (its directions were as expected from {} and {})",
                at.as_secs_f64(),
                reported(a, b),
                reported(b, a)
            ));
        }
        self.timings.verify = t.elapsed();
        Ok(out)
    }

    fn verify_one(
        &self,
        peers: &BTreeMap<String, WireKubePeer>,
        ips: &BTreeMap<String, Ipv4Addr>,
        a: &str,
        b: &str,
    ) -> PairReport {
        let e = self.topo.expectation(a, b).expect("validated");
        let mut r = PairReport {
            from: a.into(),
            to: b.into(),
            expected_path: e.path,
            expected_reason: e.reason,
            why: e.why.clone(),
            actual_path: None,
            actual_reason: None,
            wg_endpoint: None,
            handshake: false,
            rtt: None,
            throughput: None,
            transfer_bytes: self.opts.transfer_bytes,
            problems: Vec::new(),
        };
        Self::check_status(&mut r, peers, e, a, b);
        self.check_wireguard(&mut r, peers, e, a, b);
        self.check_traffic(&mut r, peers, ips, a, b);
        r
    }

    /// The path and reason `a`'s status reports for `b`, against the seed's expectation.
    fn check_status(
        r: &mut PairReport,
        peers: &BTreeMap<String, WireKubePeer>,
        e: &Expect,
        a: &str,
        b: &str,
    ) {
        match Scenario::reported(peers, a, b) {
            Some((p, reason)) => {
                r.actual_path = Some(p);
                r.actual_reason = reason;
                if p != e.path || reason != Some(e.reason) {
                    r.problems.push(format!(
                        "status says {p:?} ({}), seed expects {:?} ({})",
                        reason.map(|x| x.to_string()).unwrap_or("no reason".into()),
                        e.path,
                        e.reason
                    ));
                }
            }
            None => r
                .problems
                .push(format!("{a}'s status has no connection to {b}")),
        }
    }

    /// `wg show` on `a`: `b`'s key, an endpoint of the expected kind and a handshake.
    fn check_wireguard(
        &self,
        r: &mut PairReport,
        peers: &BTreeMap<String, WireKubePeer>,
        e: &Expect,
        a: &str,
        b: &str,
    ) {
        let key = peers
            .get(b)
            .and_then(|p| p.status.as_ref())
            .and_then(|s| s.public_key.clone());
        let iface = interface_of(peers, a);
        let Some(key) = key else {
            r.problems.push(format!("{b} has published no public key"));
            return;
        };
        let want_direct = self.direct_endpoint_ip(a, b);
        let check = |ep: &str| endpoint_problem(e.path, want_direct, b, ep);
        let mut last: Option<WgPeer> = None;
        let res = wait_until(Duration::from_secs(12), "wg handshake", || {
            let peer = wg_dump(self.nodes.as_ref(), a, &iface)
                .ok()
                .and_then(|ps| ps.into_iter().find(|p| p.public_key == key));
            let ok = peer
                .as_ref()
                .is_some_and(|p| p.latest_handshake > 0 && check(&p.endpoint).is_none());
            last = peer;
            ok
        });
        let Some(p) = last else {
            r.problems
                .push(format!("wg show {iface} on {a} has no peer {key}"));
            return;
        };
        r.wg_endpoint = Some(p.endpoint.clone());
        r.handshake = p.latest_handshake > 0;
        if !r.handshake {
            r.problems.push(format!("no WireGuard handshake with {b}"));
        }
        if let Some(m) = check(&p.endpoint) {
            r.problems.push(m);
        }
        if res.is_err() && r.problems.is_empty() {
            r.problems.push("wg show did not settle".into());
        }
    }

    /// A ping and a verified TCP transfer from `a` to `b`'s mesh IP.
    fn check_traffic(
        &self,
        r: &mut PairReport,
        peers: &BTreeMap<String, WireKubePeer>,
        ips: &BTreeMap<String, Ipv4Addr>,
        a: &str,
        b: &str,
    ) {
        let Some(&ip) = ips.get(b) else {
            r.problems.push(format!("{b} has no mesh IP"));
            return;
        };
        match wait_for(PING_DEADLINE, "ping", || self.nodes.ping(a, ip).ok()) {
            Ok((rtt, _)) => r.rtt = Some(rtt),
            Err(_) => {
                r.problems.push(format!("no ping reply from {ip}"));
                r.problems.push(super::super::diagnose::ping_failure(
                    self.nodes.as_ref(),
                    a,
                    b,
                    &interface_of(peers, a),
                    ip,
                ));
            }
        }
        match self.nodes.transfer(a, b, ip, self.opts.transfer_bytes) {
            Ok(d) => {
                r.throughput =
                    Some(self.opts.transfer_bytes as f64 * 8.0 / d.as_secs_f64().max(1e-9));
            }
            Err(e) => r.problems.push(format!("TCP transfer: {e:#}")),
        }
    }
}

/// The WireGuard interface on node `a` (the mesh default until its peer object says otherwise).
fn interface_of(peers: &BTreeMap<String, WireKubePeer>, a: &str) -> String {
    peers
        .get(a)
        .map(|p| p.spec.interface_name.clone())
        .unwrap_or_else(|| "wirekube0".into())
}

/// What is wrong with `ep` as `b`'s WireGuard endpoint on a pair expected on `path`: a relayed
/// pair talks to the local relay bridge socket, a direct one to `want_direct`.
fn endpoint_problem(
    path: ActualPath,
    want_direct: Option<Ipv4Addr>,
    b: &str,
    ep: &str,
) -> Option<String> {
    let ip = ep.rsplit_once(':').map_or(ep, |(h, _)| h);
    let want = want_direct.map(|w| w.to_string());
    match path {
        ActualPath::Relay if ip != "127.0.0.1" => Some(format!(
            "wg endpoint {ep} is not a relay bridge socket (127.0.0.1)"
        )),
        ActualPath::Direct if want.as_deref() != Some(ip) => Some(format!(
            "wg endpoint {ep}, expected {b}'s address {}",
            want.unwrap_or_default()
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_problem_by_path() {
        let lan = Some(Ipv4Addr::new(10, 1, 0, 2));
        let cases: &[(ActualPath, Option<Ipv4Addr>, &str, bool)] = &[
            (ActualPath::Relay, lan, "127.0.0.1:40000", false),
            (ActualPath::Relay, lan, "10.1.0.2:51820", true),
            (ActualPath::Direct, lan, "10.1.0.2:51820", false),
            (ActualPath::Direct, lan, "203.0.113.5:51820", true),
            (ActualPath::Direct, lan, "127.0.0.1:40000", true),
            (ActualPath::Direct, None, "10.1.0.2:51820", true),
        ];
        for (path, want, ep, bad) in cases {
            assert_eq!(
                endpoint_problem(*path, *want, "b", ep).is_some(),
                *bad,
                "{path:?} {ep}"
            );
        }
    }
}
