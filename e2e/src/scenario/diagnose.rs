//! What to print when a pair fails its traffic check: enough to tell a dataplane problem (no
//! session, stale keys, wrong endpoint) from a routing one without rerunning the lab.

use std::net::Ipv4Addr;
use std::time::Duration;

use wirekube_lab::wait_until;

use super::hosts::{NodeAccess, wg_dump};

/// How long a failed ping keeps being retried to learn whether (and when) the path recovers.
const RECOVERY_WATCH: Duration = Duration::from_secs(25);

/// Both ends' WireGuard view of each other, the route `a` uses, and when (if ever) pings
/// start to work again.
pub fn ping_failure(nodes: &dyn NodeAccess, a: &str, b: &str, iface: &str, ip: Ipv4Addr) -> String {
    let mut out = format!("diagnostics for {a} -> {b} ({ip}):");
    for n in [a, b] {
        match wg_dump(nodes, n, iface) {
            Ok(peers) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                for p in peers {
                    let age = if p.latest_handshake == 0 {
                        "never".to_string()
                    } else {
                        format!("{} s ago", now.saturating_sub(p.latest_handshake))
                    };
                    out.push_str(&format!(
                        "\n  {n}: peer {} endpoint {} allowed {} handshake {age} rx {} tx {}",
                        &p.public_key[..8.min(p.public_key.len())],
                        p.endpoint,
                        p.allowed_ips,
                        p.rx,
                        p.tx
                    ));
                }
            }
            Err(e) => out.push_str(&format!("\n  {n}: {e:#}")),
        }
    }
    let ip_s = ip.to_string();
    if let Ok(o) = nodes.exec(a, &["ip", "route", "get", &ip_s]) {
        out.push_str(&format!(
            "\n  {a}: ip route get {ip}: {}",
            String::from_utf8_lossy(&o.stdout).trim()
        ));
    }
    let recovered = wait_until(RECOVERY_WATCH, "ping to recover", || {
        nodes.ping(a, ip).is_ok()
    });
    out.push_str(&match recovered {
        Ok(d) => format!(
            "\n  ping recovered {:.1} s after the check gave up",
            d.as_secs_f64()
        ),
        Err(_) => format!(
            "\n  ping still failing {} s after the check gave up",
            RECOVERY_WATCH.as_secs()
        ),
    });
    out
}
