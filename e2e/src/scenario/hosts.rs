//! Nodes as scenario assertions see them: run a command, ping, push bytes over TCP. The lab
//! implements it with network namespaces; a kind implementation would use `docker exec`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use wirekube_lab::{Host, Lab};

/// What a scenario needs from a node.
pub trait NodeAccess: Send + Sync {
    /// Runs a command on the node (e.g. `wg show wirekube0 dump`).
    fn exec(&self, node: &str, args: &[&str]) -> Result<Output>;
    /// One echo request (1 s timeout); the round-trip time.
    fn ping(&self, from: &str, ip: Ipv4Addr) -> Result<Duration>;
    /// Pings every address of `targets` from `from` a few times a second until each has
    /// answered once, `stop` says so, or `timeout` passes; `answered` hears of each first
    /// reply as it arrives. Unanswered targets at the end are not an error.
    fn ping_until_answered(
        &self,
        from: &str,
        targets: &[Ipv4Addr],
        timeout: Duration,
        stop: &dyn Fn() -> bool,
        answered: &mut dyn FnMut(Ipv4Addr),
    ) -> Result<()>;
    /// Sends `bytes` over TCP from `from` to a listener on `to` reached at `ip`; every byte is
    /// verified. Returns the elapsed time.
    fn transfer(&self, from: &str, to: &str, ip: Ipv4Addr, bytes: u64) -> Result<Duration>;
}

/// How often [`LabNodes::ping_until_answered`] asks each unanswered target: the resolution of
/// the "first reply" times in the start-up figures.
const ECHO_INTERVAL: Duration = Duration::from_millis(250);

/// [`NodeAccess`] for lab hosts.
pub struct LabNodes {
    lab: Arc<Lab>,
    hosts: BTreeMap<String, Host>,
}

impl LabNodes {
    pub fn new(lab: Arc<Lab>, hosts: BTreeMap<String, Host>) -> LabNodes {
        LabNodes { lab, hosts }
    }

    fn host(&self, name: &str) -> Result<&Host> {
        self.hosts
            .get(name)
            .ok_or_else(|| anyhow!("no lab host for node {name}"))
    }
}

impl NodeAccess for LabNodes {
    fn exec(&self, node: &str, args: &[&str]) -> Result<Output> {
        let h = self.host(node)?;
        self.lab
            .exec(h, args)
            .with_context(|| format!("{node}: {}", args.join(" ")))
    }

    fn ping(&self, from: &str, ip: Ipv4Addr) -> Result<Duration> {
        let h = self.host(from)?;
        Ok(self.lab.ping(h, ip)?)
    }

    fn ping_until_answered(
        &self,
        from: &str,
        targets: &[Ipv4Addr],
        timeout: Duration,
        stop: &dyn Fn() -> bool,
        answered: &mut dyn FnMut(Ipv4Addr),
    ) -> Result<()> {
        let mut socket = self.lab.echo_socket(self.host(from)?)?;
        let mut pending: BTreeSet<Ipv4Addr> = targets.iter().copied().collect();
        let deadline = Instant::now() + timeout;
        while !pending.is_empty() && !stop() && Instant::now() < deadline {
            for ip in &pending {
                // No route yet (the mesh interface is not up) is "not yet", like no reply.
                let _ = socket.send(*ip);
            }
            for src in socket.replies(ECHO_INTERVAL) {
                if pending.remove(&src) {
                    answered(src);
                }
            }
        }
        Ok(())
    }

    fn transfer(&self, from: &str, to: &str, ip: Ipv4Addr, bytes: u64) -> Result<Duration> {
        let (f, t) = (self.host(from)?, self.host(to)?);
        Ok(self.lab.tcp_transfer(f, t, ip, bytes)?.elapsed)
    }
}

/// One peer line of `wg show <if> dump`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WgPeer {
    pub public_key: String,
    /// `(none)` when unset.
    pub endpoint: String,
    pub allowed_ips: String,
    /// Unix seconds; 0 = never.
    pub latest_handshake: u64,
    pub rx: u64,
    pub tx: u64,
}

/// Parses `wg show <if> dump` (the first line is the interface itself).
pub fn parse_wg_dump(text: &str) -> Vec<WgPeer> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            if f.len() < 8 {
                return None;
            }
            Some(WgPeer {
                public_key: f[0].into(),
                endpoint: f[2].into(),
                allowed_ips: f[3].into(),
                latest_handshake: f[4].parse().unwrap_or(0),
                rx: f[5].parse().unwrap_or(0),
                tx: f[6].parse().unwrap_or(0),
            })
        })
        .collect()
}

/// `wg show <iface> dump` on a node.
pub fn wg_dump(nodes: &dyn NodeAccess, node: &str, iface: &str) -> Result<Vec<WgPeer>> {
    let out = nodes.exec(node, &["wg", "show", iface, "dump"])?;
    if !out.status.success() {
        return Err(anyhow!(
            "{node}: wg show {iface} dump: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(parse_wg_dump(&String::from_utf8_lossy(&out.stdout)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_dump() {
        let t = "priv\tpub\t51820\toff\n\
                 KEY1=\t(none)\t127.0.0.1:40001\t10.99.0.2/32\t1700000000\t1000\t2000\t25\n\
                 KEY2=\t(none)\t(none)\t10.99.0.3/32\t0\t0\t0\toff\n";
        let p = super::parse_wg_dump(t);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].endpoint, "127.0.0.1:40001");
        assert_eq!(p[0].latest_handshake, 1_700_000_000);
        assert_eq!(p[1].endpoint, "(none)");
        assert_eq!(p[1].latest_handshake, 0);
    }
}
