//! Fault injection on a running [`Scenario`] and the measurement around it: a 10/s ping stream
//! on the affected pair runs from before the fault until traffic flows again, so the report
//! gives the traffic gap and the pings lost, next to the time the agents took to report the
//! expected state. Used by `e2e/tests/faults.rs`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use wirekube_crds::ActualPath;
use wirekube_lab::{Host, PingReport, wait_until};

use super::run::{RELAY_PORT, Scenario, start_relay};
use super::tcpflow::{TcpFlow, TcpReport};

/// Interval of the measuring ping stream.
pub const PING_EVERY: Duration = Duration::from_millis(100);
/// How long the TCP stream may take to move again once the pair has recovered (TCP's
/// retransmission timer doubles while the path is down: up to ~2x the outage).
pub const TCP_RESUME: Duration = Duration::from_secs(30);

/// One fault's outcome.
#[derive(Clone, Debug)]
pub struct FaultRow {
    pub fault: String,
    pub pair: (String, String),
    /// From the injection until the agents reported the expected state and a ping passed.
    pub recovered_after: Duration,
    pub pings: PingReport,
    /// The TCP stream on the same pair (None where the fault's harness runs none).
    pub tcp: Option<TcpReport>,
}

impl FaultRow {
    /// A Markdown table row: fault, pair, recovery, longest gap, lost/sent, TCP stall.
    pub fn markdown(&self) -> String {
        format!(
            "| {} | {} ↔ {} | {:.1} s | {:.1} s | {} / {} | {} |",
            self.fault,
            self.pair.0,
            self.pair.1,
            self.recovered_after.as_secs_f64(),
            self.pings.longest_gap_time().as_secs_f64(),
            self.pings.lost(),
            self.pings.sent,
            self.tcp.as_ref().map_or("-".to_string(), TcpReport::cell)
        )
    }
}

/// The Markdown table of a fault run.
pub fn table(rows: &[FaultRow]) -> String {
    let mut out = String::from(
        "| fault | pair | recovered after | longest ping gap | pings lost / sent | TCP stall (bytes) |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out += &r.markdown();
        out.push('\n');
    }
    out
}

impl Scenario {
    fn host_of(&self, node: &str) -> Result<&Host> {
        self.hosts
            .get(node)
            .ok_or_else(|| anyhow!("no node {node} in this scenario"))
    }

    /// The address the internet sees for `node` (its own, its elastic IP or its NAT's WAN).
    pub fn wan_ip(&self, node: &str) -> Result<Ipv4Addr> {
        Ok(self.lab.public_ip(self.host_of(node)?)?)
    }

    /// The site (gateway) `node` sits behind.
    pub fn site_of(&self, node: &str) -> Result<String> {
        self.host_of(node)?
            .site
            .clone()
            .ok_or_else(|| anyhow!("{node} is not behind a gateway"))
    }

    /// Whether both agents of the pair report `path` toward each other.
    pub fn pair_reports(&self, a: &str, b: &str, path: ActualPath) -> bool {
        let Ok(peers) = self.peers() else {
            return false;
        };
        let says = |x: &str, y: &str| Scenario::reported(&peers, x, y).is_some_and(|r| r.0 == path);
        says(a, b) && says(b, a)
    }

    /// Whether `a`'s agent reports `path` toward `b` with a path change at or after `since`
    /// (a status written by an agent that started after `since`, not one left from before).
    pub fn reports_since(
        &self,
        a: &str,
        b: &str,
        path: ActualPath,
        since: jiff::Timestamp,
    ) -> bool {
        let Ok(peers) = self.peers() else {
            return false;
        };
        peers
            .get(a)
            .and_then(|p| p.status.as_ref())
            .and_then(|s| s.connections.iter().find(|c| c.name == b))
            .is_some_and(|c| {
                c.path == path && c.last_transition.as_ref().is_some_and(|t| t.0 >= since)
            })
    }

    /// Runs `inject` on the pair (a, b) under a 10/s ping stream and a paced TCP stream from
    /// a to b, then waits up to `deadline` for `recovered` and a passing ping; then the TCP
    /// stream must move again within [`TCP_RESUME`] and end intact (every byte, in order, on
    /// the connection it started on). Returns what the streams saw.
    pub fn measure_fault(
        &mut self,
        fault: &str,
        (a, b): (&str, &str),
        inject: impl FnOnce(&mut Scenario) -> Result<()>,
        recovered: impl Fn(&Scenario) -> bool,
        deadline: Duration,
    ) -> Result<FaultRow> {
        let ip = *self
            .mesh_ips(&self.peers()?)
            .get(b)
            .ok_or_else(|| anyhow!("no mesh IP for {b}"))?;
        let from = self.host_of(a)?.clone();
        let to = self.host_of(b)?.clone();
        self.lab
            .ping_until(&from, ip, Duration::from_secs(30))
            .with_context(|| format!("{a} -> {b} before {fault}"))?;
        let flow = TcpFlow::start(&self.lab, &from, &to, ip)
            .with_context(|| format!("{a} -> {b} before {fault}"))?;
        let stream = self.lab.start_ping(&from, ip, PING_EVERY)?;
        let t = Instant::now();
        let outcome = inject(self).and_then(|()| {
            let this = &*self;
            wait_until(deadline, &format!("recovery from {fault}"), || {
                recovered(this) && this.lab.ping(&from, ip).is_ok()
            })
            .map_err(anyhow::Error::from)
        });
        let recovered_after = t.elapsed();
        let pings = self.lab.finish_ping(stream)?;
        let resumed = outcome.and_then(|_| flow.resumes_within(TCP_RESUME));
        let tcp = flow.finish(TCP_RESUME)?;
        resumed
            .with_context(|| format!("{fault}: {}\n{}", self.pair_state(a, b), self.logs(30)))?;
        let row = FaultRow {
            fault: fault.to_string(),
            pair: (a.to_string(), b.to_string()),
            recovered_after,
            pings,
            tcp: Some(tcp.clone()),
        };
        eprintln!("[fault] {}", row.markdown());
        if !tcp.intact {
            return Err(anyhow!(
                "{fault}: the TCP stream {a} -> {b} did not survive: {tcp:?}\n{}",
                self.logs(30)
            ));
        }
        Ok(row)
    }

    /// Checks that `cond` holds for the whole of `window`: a path that came back must stay,
    /// not flap.
    pub fn holds_for(
        &self,
        what: &str,
        window: Duration,
        cond: impl Fn(&Scenario) -> bool,
    ) -> Result<()> {
        wirekube_lab::holds_for(window, what, || cond(self))
            .map_err(|e| anyhow!("{e}: {}", self.pair_state_summary()))
    }

    fn pair_state_summary(&self) -> String {
        self.peers()
            .map(|p| {
                p.iter()
                    .filter_map(|(n, peer)| {
                        let s = peer.status.as_ref()?;
                        let c: Vec<String> = s
                            .connections
                            .iter()
                            .map(|c| format!("{}:{:?}", c.name, c.path))
                            .collect();
                        Some(format!("{n} -> [{}]", c.join(", ")))
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default()
    }

    /// `wg show` of both nodes and the conntrack tables of their gateways, for failure messages.
    pub fn pair_state(&self, a: &str, b: &str) -> String {
        let mut out = String::new();
        for n in [a, b] {
            if let Ok(h) = self.host_of(n) {
                let wg = self.lab.run(h, &["wg", "show", "all", "dump"]);
                out += &format!(
                    "--- wg show on {n}:\n{}\n",
                    wg.unwrap_or_else(|e| e.to_string())
                );
            }
            if let Ok(site) = self.site_of(n)
                && let Ok(s) = self.lab.site(&site)
            {
                let ct = self.lab.run(&s.gateway, &["conntrack", "-L", "-p", "udp"]);
                out += &format!(
                    "--- conntrack on {site}:\n{}\n",
                    ct.unwrap_or_else(|e| e.to_string())
                );
            }
        }
        out
    }

    /// Stops the external relay and starts it again on the same address and token.
    pub fn restart_relay(&mut self) -> Result<()> {
        let old = self
            .relay
            .take()
            .ok_or_else(|| anyhow!("this scenario has no external relay"))?;
        self.lab.stop(&old)?;
        let token_file = self.lab.dir().join("relay-token");
        let p = start_relay(&self.lab, &self.dmz, &token_file)?;
        wait_until(Duration::from_secs(10), "relay listening again", || {
            self.lab.tcp_listening(&self.dmz, RELAY_PORT) || !self.lab.is_running(&p)
        })?;
        self.relay = Some(p);
        Ok(())
    }

    /// SIGKILLs `node`'s agent (its lab kubelet restarts the container); returns the old pid.
    /// The pid is looked up in this lab's node namespace ([`Scenario::agent_pid`]): a
    /// machine-wide `pgrep` for `--node-name=<node>` found another lab's agent of the same
    /// name when two labs of one seed ran at once, killed it, and left this node's agent (and
    /// its deleted key) untouched.
    pub fn kill_agent(&self, node: &str) -> Result<u32> {
        let pid = self.agent_pid(node);
        if pid == 0 {
            return Err(anyhow!("no running agent on {node}"));
        }
        let pid_t = libc::pid_t::try_from(pid)?;
        if !wirekube_lab::signal(pid_t, libc::SIGKILL) {
            return Err(anyhow!("kill {pid}: {}", std::io::Error::last_os_error()));
        }
        Ok(pid)
    }

    /// Deletes `node`'s private key file (its private `/var/lib/wirekube`).
    pub fn delete_key(&self, node: &str) -> Result<()> {
        let h = self.host_of(node)?.clone();
        self.lab
            .run(&h, &["rm", "-f", "/var/lib/wirekube/private.key"])?;
        Ok(())
    }

    /// The public address `node`'s agent reports (what STUN told it).
    pub fn reported_public_ip(&self, node: &str) -> Option<String> {
        self.peers()
            .ok()?
            .get(node)?
            .status
            .as_ref()?
            .public_ip
            .clone()
    }

    /// The public key `node`'s agent reports.
    pub fn reported_key(&self, node: &str) -> Option<String> {
        self.peers()
            .ok()?
            .get(node)?
            .status
            .as_ref()?
            .public_key
            .clone()
    }
}

/// Label of the managed relay's pods.
const RELAY_POD_LABEL: &str = "app.kubernetes.io/name=wirekube-relay";

impl Scenario {
    /// The running managed relay pod: (name, node), `None` when none runs.
    pub fn relay_pod(&self) -> Option<(String, String)> {
        let out = self
            .kubectl(&[
                "get",
                "pods",
                "-n",
                super::run::SYSTEM_NAMESPACE,
                "-l",
                RELAY_POD_LABEL,
                "--field-selector=status.phase=Running",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
            ])
            .ok()?;
        out.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // A third field is a deletion timestamp: that pod is on its way out.
            (f.len() == 2).then(|| (f[0].to_string(), f[1].to_string()))
        })
    }

    /// The relay endpoints the mesh status publishes (empty when it cannot be read).
    pub fn relay_endpoints(&self) -> Vec<String> {
        self.cluster()
            .mesh(super::run::MESH_NAME)
            .ok()
            .flatten()
            .and_then(|m| m.status)
            .map(|s| s.relay_endpoints)
            .unwrap_or_default()
    }

    /// Deletes the managed relay pod (its Deployment creates another); returns its name.
    pub fn delete_relay_pod(&self) -> Result<String> {
        let (pod, _) = self
            .relay_pod()
            .ok_or_else(|| anyhow!("no running managed relay pod"))?;
        self.kubectl(&[
            "delete",
            "pod",
            "-n",
            super::run::SYSTEM_NAMESPACE,
            &pod,
            "--wait=false",
        ])?;
        Ok(pod)
    }

    /// Runs the operator's replicas on `node` (every other node cordoned while they restart)
    /// and waits until one of them holds the Lease: a fault on that node's network then also
    /// hits the leader's API connections.
    pub fn pin_operator_to(&self, node: &str, timeout: Duration) -> Result<()> {
        let others: Vec<&String> = self.hosts.keys().filter(|n| *n != node).collect();
        for n in &others {
            self.kubectl(&["cordon", n])?;
        }
        let ns = super::run::SYSTEM_NAMESPACE;
        let moved = self
            .kubectl(&[
                "delete",
                "pods",
                "-n",
                ns,
                "-l",
                "app.kubernetes.io/name=wirekube-operator",
                "--wait=false",
            ])
            .and_then(|_| {
                let on_node = || {
                    let holder = self.lease_holder().ok()?;
                    let path = "jsonpath={.spec.nodeName} {.status.phase}";
                    let out = self.kubectl(&["get", "pod", "-n", ns, &holder, "-o", path]);
                    out.ok().filter(|o| o.trim() == format!("{node} Running"))
                };
                wait_until(
                    timeout,
                    "the operator's Lease held by a pod on the node",
                    || on_node().is_some(),
                )
                .with_context(|| format!("operator leader onto {node}"))
            });
        for n in &others {
            self.kubectl(&["uncordon", n])?;
        }
        moved.map(drop)
    }
}
