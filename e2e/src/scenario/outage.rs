//! Control-plane faults on a running [`Scenario`]: the API server stopped for a while, etcd
//! restarted, the operator's leader killed during a mass write. Forwarding must not notice
//! (ping streams on a direct and a relayed pair run throughout) and nobody may need a restart
//! or make up for lost time with a burst of writes, counted from the API server's audit log
//! (which records what WireKube's own service accounts do: `wirekube_kubelab` audit policy).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use wirekube_kubelab::controlplane::Component;
use wirekube_lab::{PingReport, PingStream, wait_until};

use super::faults::{FaultRow, PING_EVERY, TCP_RESUME};
use super::run::{MESH_NAME, SYSTEM_NAMESPACE, Scenario};
use super::tcpflow::TcpFlow;

/// The operator's leader-election Lease (the operator's default `--lease-name`).
pub const OPERATOR_LEASE: &str = "wirekube-operator";

/// One write request in the audit log.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Write {
    /// `agent`, `operator`, ... (the service account's name without the `wirekube-` prefix).
    pub who: String,
    pub verb: String,
    /// `wirekubepeers/status`, `events`, ...
    pub resource: String,
}

#[derive(Deserialize)]
struct AuditEvent {
    stage: Option<String>,
    verb: Option<String>,
    user: Option<AuditUser>,
    #[serde(rename = "objectRef")]
    object_ref: Option<ObjectRef>,
}

#[derive(Deserialize)]
struct AuditUser {
    username: Option<String>,
}

#[derive(Deserialize)]
struct ObjectRef {
    resource: Option<String>,
    subresource: Option<String>,
}

/// The writes (create, update, patch, delete) in audit log lines, Lease renewals left out
/// (leader election renews every few seconds by design; it is not a reaction to the fault).
/// Lines that are not complete request events are skipped.
pub fn audited_writes(log: &str) -> Vec<Write> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<AuditEvent>(l).ok())
        .filter(|e| e.stage.as_deref() == Some("ResponseComplete"))
        .filter_map(|e| {
            let verb = e.verb?;
            if !matches!(
                verb.as_str(),
                "create" | "update" | "patch" | "delete" | "deletecollection"
            ) {
                return None;
            }
            let o = e.object_ref?;
            let resource = o.resource?;
            if resource == "leases" {
                return None;
            }
            let resource = match o.subresource {
                Some(s) => format!("{resource}/{s}"),
                None => resource,
            };
            let user = e.user?.username?;
            let sa = user.rsplit(':').next().unwrap_or(&user);
            let who = sa.strip_prefix("wirekube-").unwrap_or(sa).to_string();
            Some(Write {
                who,
                verb,
                resource,
            })
        })
        .collect()
}

/// "3 agent update wirekubepeers/status, 1 operator create events" (empty: "none").
pub fn summarize(writes: &[Write]) -> String {
    let mut counts: BTreeMap<&Write, usize> = BTreeMap::new();
    for w in writes {
        *counts.entry(w).or_default() += 1;
    }
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(w, n)| format!("{n} {} {} {}", w.who, w.verb, w.resource))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether the writes after a control plane came back are a burst, compared with the same
/// window before the fault: each agent may publish the status it could not write meanwhile,
/// twice at most (a change may land while the first write is on its way); the operator has
/// nothing to catch up on (its plan did not change) beyond its mesh status, written again
/// at most twice for the same reason: after an etcd restart the relay Deployment's status
/// and an agent's status arrived 20 ms apart, and since Events no longer slow the reconcile
/// down (operator `events.rs`) each got its own status write. A client that replays what it
/// missed, or an operator that rewrites every peer (one write per node), exceeds this.
pub fn burst(before: &[Write], after: &[Write], nodes: usize) -> Option<String> {
    let count = |w: &[Write], who: &str| w.iter().filter(|x| x.who == who).count();
    let agent_max = count(before, "agent") + 2 * nodes;
    let operator_max = count(before, "operator") + 2;
    let others = |w: &[Write]| {
        w.iter()
            .filter(|x| x.who != "agent" && x.who != "operator")
            .count()
    };
    let (agent, operator, other) = (
        count(after, "agent"),
        count(after, "operator"),
        others(after),
    );
    let other_max = others(before) + 1;
    (agent > agent_max || operator > operator_max || other > other_max).then(|| {
        format!(
            "agents {agent} (at most {agent_max}), operator {operator} (at most \
             {operator_max}), others {other} (at most {other_max}): {}",
            summarize(after)
        )
    })
}

/// What a control-plane fault cost.
pub struct Outage {
    /// One row per measured pair.
    pub rows: Vec<FaultRow>,
    /// Writes in the window after the component came back, and in a window of the same length
    /// before the fault.
    pub writes_after: Vec<Write>,
    pub writes_before: Vec<Write>,
}

impl Scenario {
    /// Starts a 10/s ping stream on each pair (after a first ping passes).
    pub fn start_streams(&self, pairs: &[(&str, &str)]) -> Result<Vec<PingStream>> {
        let ips = self.mesh_ips(&self.peers()?);
        let mut out = Vec::new();
        for (a, b) in pairs {
            let ip = *ips.get(*b).ok_or_else(|| anyhow!("no mesh IP for {b}"))?;
            let from = self
                .hosts
                .get(*a)
                .ok_or_else(|| anyhow!("no node {a}"))?
                .clone();
            self.lab
                .ping_until(&from, ip, Duration::from_secs(30))
                .with_context(|| format!("{a} -> {b} before the fault"))?;
            out.push(self.lab.start_ping(&from, ip, PING_EVERY)?);
        }
        Ok(out)
    }

    /// Starts a paced TCP stream on each pair, from the first node to the second's mesh IP.
    pub fn start_flows(&self, pairs: &[(&str, &str)]) -> Result<Vec<TcpFlow>> {
        let ips = self.mesh_ips(&self.peers()?);
        let host = |n: &str| {
            self.hosts
                .get(n)
                .cloned()
                .ok_or_else(|| anyhow!("no node {n}"))
        };
        let mut out = Vec::new();
        for (a, b) in pairs {
            let ip = *ips.get(*b).ok_or_else(|| anyhow!("no mesh IP for {b}"))?;
            out.push(TcpFlow::start(&self.lab, &host(a)?, &host(b)?, ip)?);
        }
        Ok(out)
    }

    fn audit_len(&self) -> u64 {
        std::fs::metadata(self.kube.cp.audit_log()).map_or(0, |m| m.len())
    }

    /// The writes audited since byte `from` of the audit log.
    fn writes_since(&self, from: u64) -> Result<Vec<Write>> {
        let all = std::fs::read(self.kube.cp.audit_log())?;
        let start = usize::try_from(from)?.min(all.len());
        Ok(audited_writes(&String::from_utf8_lossy(&all[start..])))
    }

    /// Writes audited during `window` from now (the clock, not a sleep: the audit log is read
    /// once the window has passed).
    fn writes_during(&self, window: Duration) -> Result<Vec<Write>> {
        let from = self.audit_len();
        let until = Instant::now() + window;
        wait_until(window + Duration::from_secs(5), "audit window", || {
            Instant::now() >= until
        })?;
        self.writes_since(from)
    }

    /// Every container's restart count in the system namespace, by pod name.
    pub fn restart_counts(&self) -> Result<BTreeMap<String, String>> {
        let out = self.kubectl(&[
            "get",
            "pods",
            "-n",
            SYSTEM_NAMESPACE,
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.containerStatuses[*].restartCount}{\"\\n\"}{end}",
        ])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(p, n)| (p.to_string(), n.to_string()))
            .collect())
    }

    /// Stops `component` for `down`, starts it again and waits until the operator renewed its
    /// Lease after the return, while ping streams run on `pairs`. Fails when a stream lost a
    /// ping, when a pod restarted, or when the window after the return holds more writes than
    /// the same window before the fault plus one per node (an agent may publish one status
    /// change the fault caused).
    pub fn control_plane_outage(
        &mut self,
        fault: &str,
        component: Component,
        down: Duration,
        pairs: &[(&str, &str)],
    ) -> Result<Outage> {
        const WINDOW: Duration = Duration::from_secs(30);
        let writes_before = self.writes_during(WINDOW)?;
        // Counted right before the fault: restarts while the mesh settled are not its doing.
        let restarts_before = self.restart_counts()?;
        let streams = self.start_streams(pairs)?;
        let flows = self.start_flows(pairs)?;
        let t = Instant::now();
        let lab = self.lab.clone();
        let outcome = (|| -> Result<(Instant, u64)> {
            self.kube.cp.stop_component(&lab, component)?;
            let back_at = Instant::now() + down;
            wait_until(down + Duration::from_secs(5), "the outage", || {
                Instant::now() >= back_at
            })?;
            self.kube.cp.start_component(&lab, component)?;
            let returned = Instant::now();
            let audit_at_return = self.audit_len();
            // The operator resumed: its Lease renewed after the component came back.
            wait_until(Duration::from_secs(60), "operator Lease renewed", || {
                self.lease_renew_age()
                    .is_some_and(|age| age < returned.elapsed())
            })?;
            Ok((returned, audit_at_return))
        })();
        let recovered_after = t.elapsed();
        let mut reports: Vec<PingReport> = Vec::new();
        for s in streams {
            reports.push(self.lab.finish_ping(s)?);
        }
        let mut tcp = Vec::new();
        for f in flows {
            tcp.push(f.finish(TCP_RESUME)?);
        }
        let (returned, audit_at_return) =
            outcome.with_context(|| format!("{fault}\n{}", self.logs(30)))?;
        let window_end = returned + WINDOW;
        wait_until(WINDOW + Duration::from_secs(5), "audit window", || {
            Instant::now() >= window_end
        })?;
        let writes_after = self.writes_since(audit_at_return)?;
        let rows: Vec<FaultRow> = pairs
            .iter()
            .zip(reports)
            .zip(tcp)
            .map(|(((a, b), pings), tcp)| FaultRow {
                fault: fault.to_string(),
                pair: (a.to_string(), b.to_string()),
                recovered_after,
                pings,
                tcp: Some(tcp),
            })
            .collect();
        for r in &rows {
            eprintln!("[fault] {}", r.markdown());
        }
        eprintln!(
            "[fault] {fault}: writes in {WINDOW:?} before: {}; after the return: {}",
            summarize(&writes_before),
            summarize(&writes_after)
        );
        for r in &rows {
            if let Some(tcp) = r.tcp.as_ref().filter(|t| !t.intact) {
                bail!(
                    "{fault}: the TCP stream {} -> {} did not survive: {tcp:?}\n{}",
                    r.pair.0,
                    r.pair.1,
                    self.logs(60)
                );
            }
            if r.pings.lost() > 0 {
                bail!(
                    "{fault}: {} ↔ {} lost {} pings, longest gap {:?} (forwarding must not \
                     depend on the control plane)\n{}",
                    r.pair.0,
                    r.pair.1,
                    r.pings.lost(),
                    r.pings.longest_gap_time(),
                    self.logs(60)
                );
            }
        }
        let restarts_after = self.restart_counts()?;
        if restarts_after != restarts_before {
            bail!(
                "{fault}: containers restarted: before {restarts_before:?}, after {restarts_after:?}\n{}",
                self.logs(40)
            );
        }
        if let Some(why) = burst(&writes_before, &writes_after, self.hosts.len()) {
            bail!("{fault}: a burst of writes after the return: {why}");
        }
        Ok(Outage {
            rows,
            writes_after,
            writes_before,
        })
    }

    /// One field of the operator's Lease (a jsonpath below `.spec`), trimmed.
    fn lease_field(&self, field: &str) -> Result<String> {
        let path = format!("jsonpath={{.spec.{field}}}");
        let out = self.kubectl(&[
            "get",
            "lease",
            "-n",
            SYSTEM_NAMESPACE,
            OPERATOR_LEASE,
            "-o",
            &path,
        ])?;
        Ok(out.trim().to_string())
    }

    /// How long ago the operator's Lease was last renewed (`None` when unreadable).
    pub fn lease_renew_age(&self) -> Option<Duration> {
        let t: jiff::Timestamp = self.lease_field("renewTime").ok()?.parse().ok()?;
        Duration::try_from(jiff::Timestamp::now().duration_since(t)).ok()
    }

    /// The operator Lease's holder (a pod name).
    pub fn lease_holder(&self) -> Result<String> {
        self.lease_field("holderIdentity")
    }

    /// The pid of the operator process of pod `pod` (its `POD_NAME`), 0 when none runs.
    pub fn operator_pid(&self, pod: &str) -> u32 {
        let want = format!("POD_NAME={pod}");
        let out = std::process::Command::new("pgrep")
            .args(["-f", "wirekube-operator"])
            .output();
        let Ok(out) = out else { return 0 };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse::<u32>().ok())
            .find(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .map(|e| e.split(|b| *b == 0).any(|v| v == want.as_bytes()))
                    .unwrap_or(false)
            })
            .unwrap_or(0)
    }

    /// Every peer spec's MTU, by node.
    fn mtus(&self) -> Result<BTreeMap<String, u32>> {
        Ok(self
            .peers()?
            .into_iter()
            .map(|(n, p)| (n, p.spec.mtu))
            .collect())
    }

    /// Changes the mesh's MTU, which rewrites every peer spec, and SIGKILLs the leading
    /// operator replica right after, then deletes its pod at once (grace 0) so that it does not
    /// come back under the same identity: the Lease must move to another replica, which
    /// finishes the rewrite; no peer is lost, duplicated or renumbered. Measured under a ping
    /// stream on `pair`; returns the row and the new leader.
    pub fn operator_failover_during_mass_write(
        &mut self,
        pair: (&str, &str),
        mtu: u32,
    ) -> Result<(FaultRow, String)> {
        let leader = self.lease_holder()?;
        let before = self.peers()?;
        let ips_before = self.mesh_ips(&before);
        let row = self.measure_fault(
            "operator leader SIGKILLed during a mass write",
            pair,
            |sc| {
                let pid = sc.operator_pid(&leader);
                if pid == 0 {
                    bail!("no operator process for the leader {leader}");
                }
                let mut mesh = sc
                    .cluster()
                    .mesh(MESH_NAME)?
                    .ok_or_else(|| anyhow!("no mesh {MESH_NAME}"))?;
                mesh.spec.mtu = mtu;
                // A server-side apply carries no managed fields.
                mesh.metadata.managed_fields = None;
                sc.cluster().apply_mesh(&mesh)?;
                let pid_t = libc::pid_t::try_from(pid)?;
                if !wirekube_lab::signal(pid_t, libc::SIGKILL) {
                    bail!("kill {pid}: {}", std::io::Error::last_os_error());
                }
                sc.kubectl(&[
                    "delete",
                    "pod",
                    "-n",
                    SYSTEM_NAMESPACE,
                    &leader,
                    "--grace-period=0",
                    "--force",
                    "--wait=false",
                ])?;
                Ok(())
            },
            |sc| {
                let moved = sc
                    .lease_holder()
                    .is_ok_and(|h| !h.is_empty() && h != leader);
                moved
                    && sc
                        .mtus()
                        .is_ok_and(|m| m.len() == before.len() && m.values().all(|v| *v == mtu))
            },
            Duration::from_secs(90),
        )?;
        let after = self.peers()?;
        let ips_after = self.mesh_ips(&after);
        if ips_after != ips_before {
            bail!("mesh IPs changed in the failover: {ips_before:?} -> {ips_after:?}");
        }
        Ok((row, self.lease_holder()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = r#"{"kind":"Event","stage":"ResponseComplete","verb":"update","user":{"username":"system:serviceaccount:wirekube-system:wirekube-agent"},"objectRef":{"resource":"wirekubepeers","name":"a","subresource":"status"}}
{"kind":"Event","stage":"ResponseComplete","verb":"update","user":{"username":"system:serviceaccount:wirekube-system:wirekube-operator"},"objectRef":{"resource":"leases","name":"wirekube-operator"}}
{"kind":"Event","stage":"ResponseComplete","verb":"get","user":{"username":"system:serviceaccount:wirekube-system:wirekube-agent"},"objectRef":{"resource":"wirekubepeers","name":"a"}}
{"kind":"Event","stage":"ResponseStarted","verb":"watch","user":{"username":"system:serviceaccount:wirekube-system:wirekube-agent"},"objectRef":{"resource":"wirekubepeers"}}
{"kind":"Event","stage":"ResponseComplete","verb":"create","user":{"username":"system:serviceaccount:wirekube-system:wirekube-operator"},"objectRef":{"resource":"events"}}
{"kind":"Event","stage":"ResponseComplete","verb":"patch","user":{"username":"system:serviceaccount:wirekube-system:wirekube-agent"},"objectRef":{"resource":"wirekubepeers","name":"b","subresource":"status"}}
not json"#;

    fn w(who: &str, n: usize) -> Vec<Write> {
        vec![
            Write {
                who: who.into(),
                verb: "patch".into(),
                resource: "wirekubepeers/status".into(),
            };
            n
        ]
    }

    #[test]
    fn a_burst_is_more_than_a_status_or_two_per_agent_or_any_operator_catch_up() {
        let cases: [(Vec<Write>, Vec<Write>, bool); 8] = [
            (vec![], vec![], false),
            (vec![], w("agent", 5), false),
            (vec![], w("agent", 10), false),
            (vec![], w("agent", 11), true),
            (w("operator", 2), w("operator", 3), false),
            (vec![], w("operator", 2), false),
            (vec![], w("operator", 3), true),
            (vec![], w("operator", 5), true),
        ];
        for (before, after, want) in cases {
            assert_eq!(
                burst(&before, &after, 5).is_some(),
                want,
                "{} before, {} after",
                summarize(&before),
                summarize(&after)
            );
        }
    }

    #[test]
    fn writes_are_counted_without_reads_watches_and_lease_renewals() {
        let w = audited_writes(LOG);
        let got: Vec<(&str, &str, &str)> = w
            .iter()
            .map(|w| (w.who.as_str(), w.verb.as_str(), w.resource.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("agent", "update", "wirekubepeers/status"),
                ("operator", "create", "events"),
                ("agent", "patch", "wirekubepeers/status"),
            ]
        );
        assert_eq!(
            summarize(&w),
            "1 agent patch wirekubepeers/status, 1 agent update wirekubepeers/status, 1 operator create events"
        );
        assert_eq!(summarize(&[]), "none");
    }
}
