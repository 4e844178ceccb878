//! Impairments on the internet bridge (bridge-family nftables in the internet namespace, hook
//! prerouting, so both bridged and routed frames are seen): UDP blocks with optional expiry and
//! random loss between two addresses. There is no netem on this kernel, so no delay.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::Lab;
use crate::error::{LabError, Result};

const TABLE: &str = "bridge wkimpair";

impl Lab {
    fn ensure_impair(&self) -> Result<()> {
        if self.lock().impair_ready {
            return Ok(());
        }
        let rules = format!(
            "table {TABLE} {{
  set blocked {{ type ipv4_addr . ipv4_addr; flags timeout; }}
  chain loss {{ }}
  chain pre {{ type filter hook prerouting priority 0; policy accept;
    ip protocol udp ip saddr . ip daddr @blocked drop
    jump loss
  }}
}}
"
        );
        self.run_input(&self.internet(), &["nft", "-f", "-"], &rules)?;
        self.lock().impair_ready = true;
        Ok(())
    }

    /// Drops all UDP between public addresses `a` and `b` (both directions) on the internet,
    /// e.g. a site's WAN address and a public node: the direct path dies, TCP still works.
    /// With `for_` the block lifts itself after that time (nft set element timeout).
    pub fn block_udp(&self, a: Ipv4Addr, b: Ipv4Addr, for_: Option<Duration>) -> Result<()> {
        self.ensure_impair()?;
        let t = for_
            .map(|d| format!(" timeout {}ms", d.as_millis().max(1)))
            .unwrap_or_default();
        // Delete first so that re-blocking replaces a pending timeout.
        let _ = self.heal_udp(a, b);
        let cmd = format!("add element {TABLE} blocked {{ {a} . {b}{t}, {b} . {a}{t} }}\n");
        self.run_input(&self.internet(), &["nft", "-f", "-"], &cmd)?;
        Ok(())
    }

    /// Drops UDP from `a` to `b` only (one-way loss); [`Lab::heal_udp`] lifts it.
    pub fn block_udp_one_way(&self, a: Ipv4Addr, b: Ipv4Addr) -> Result<()> {
        self.ensure_impair()?;
        let _ = self.heal_udp(a, b);
        let cmd = format!("add element {TABLE} blocked {{ {a} . {b} }}\n");
        self.run_input(&self.internet(), &["nft", "-f", "-"], &cmd)?;
        Ok(())
    }

    /// Lifts a [`Lab::block_udp`] between `a` and `b` (no error if there was none).
    pub fn heal_udp(&self, a: Ipv4Addr, b: Ipv4Addr) -> Result<()> {
        self.ensure_impair()?;
        for (x, y) in [(a, b), (b, a)] {
            let cmd = format!("delete element {TABLE} blocked {{ {x} . {y} }}\n");
            // Missing element -> error from nft; that is "already healed".
            let _ = self.run_input(&self.internet(), &["nft", "-f", "-"], &cmd);
        }
        Ok(())
    }

    /// Drops `percent` % of all packets between `a` and `b` (both directions, any protocol);
    /// 0 removes the loss. Implemented with `numgen random mod 100`.
    pub fn set_loss(&self, a: Ipv4Addr, b: Ipv4Addr, percent: u8) -> Result<()> {
        if percent > 100 {
            return Err(LabError::Topology(format!("loss {percent}% > 100%")));
        }
        self.ensure_impair()?;
        let rules = {
            let mut st = self.lock();
            st.loss
                .retain(|&(x, y, _)| !((x, y) == (a, b) || (x, y) == (b, a)));
            if percent > 0 {
                st.loss.push((a, b, percent));
            }
            st.loss.clone()
        };
        let mut cmd = format!("flush chain {TABLE} loss\n");
        for (x, y, p) in rules {
            for (s, d) in [(x, y), (y, x)] {
                // numgen's range is 0..=99, so 100 % is a plain drop.
                let chance = if p >= 100 {
                    String::new()
                } else {
                    format!("numgen random mod 100 < {p} ")
                };
                cmd += &format!("add rule {TABLE} loss ip saddr {s} ip daddr {d} {chance}drop\n");
            }
        }
        self.run_input(&self.internet(), &["nft", "-f", "-"], &cmd)?;
        Ok(())
    }

    /// Removes every impairment.
    pub fn heal_all(&self) -> Result<()> {
        if !self.lock().impair_ready {
            return Ok(());
        }
        self.lock().loss.clear();
        let cmd = format!("flush set {TABLE} blocked\nflush chain {TABLE} loss\n");
        self.run_input(&self.internet(), &["nft", "-f", "-"], &cmd)?;
        Ok(())
    }
}
