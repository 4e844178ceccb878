//! The relay's command line as data, for the programs that start a relay: the operator
//! (the managed relay's Deployment args) and the test harnesses. The relay's own parser
//! (`relay/src/cli.rs`) takes its flag names from [`names`], and tests there and in the
//! operator parse what [`RelayFlags::to_args`] renders with it, so a renamed or removed
//! flag fails a test instead of a relay pod.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// The flag names (without the leading `--`).
pub mod names {
    pub const LISTEN: &str = "listen";
    pub const STUN_IP: &str = "stun-ip";
    pub const STUN_PORT: &str = "stun-port";
    pub const STUN_ALT_PORT: &str = "stun-alt-port";
    pub const STUN_ALT_IP: &str = "stun-alt-ip";
    pub const NO_STUN: &str = "no-stun";
    pub const METRICS_LISTEN: &str = "metrics-listen";
    pub const TOKEN_FILE: &str = "token-file";
    pub const MAX_CONNECTIONS: &str = "max-connections";
    pub const TOTAL_QUEUE_BYTES: &str = "total-queue-bytes";
    pub const REGISTRATION_RATE: &str = "registration-rate";
    pub const REGISTRATION_BURST: &str = "registration-burst";
}

/// Relay flags to set; `None` (or `false`) leaves the relay's default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RelayFlags {
    /// TCP relay listen address.
    pub listen: Option<SocketAddr>,
    /// IP the STUN responder binds and reports (default: the listen IP).
    pub stun_ip: Option<IpAddr>,
    pub stun_port: Option<u16>,
    /// STUN alternate port (CHANGE-REQUEST change-port).
    pub stun_alt_port: Option<u16>,
    /// Second IP for CHANGE-REQUEST change-IP.
    pub stun_alt_ip: Option<IpAddr>,
    /// Run without the STUN responder.
    pub no_stun: bool,
    /// HTTP address for /metrics, /healthz, /readyz.
    pub metrics_listen: Option<SocketAddr>,
    /// File holding the mesh token.
    pub token_file: Option<PathBuf>,
    pub max_connections: Option<usize>,
    /// Bytes queued for all connections together.
    pub total_queue_bytes: Option<usize>,
    /// Registrations per second per source IP.
    pub registration_rate: Option<f64>,
    pub registration_burst: Option<u32>,
}

impl RelayFlags {
    /// `--name=value` arguments, in declaration order, for the flags that are set.
    pub fn to_args(&self) -> Vec<String> {
        use names::*;
        let mut out = Vec::new();
        let mut set = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                out.push(format!("--{name}={v}"));
            }
        };
        set(LISTEN, self.listen.map(|a| a.to_string()));
        set(STUN_IP, self.stun_ip.map(|a| a.to_string()));
        set(STUN_PORT, self.stun_port.map(|p| p.to_string()));
        set(STUN_ALT_PORT, self.stun_alt_port.map(|p| p.to_string()));
        set(STUN_ALT_IP, self.stun_alt_ip.map(|a| a.to_string()));
        set(METRICS_LISTEN, self.metrics_listen.map(|a| a.to_string()));
        set(
            TOKEN_FILE,
            (self.token_file.as_ref()).map(|p| p.display().to_string()),
        );
        set(MAX_CONNECTIONS, self.max_connections.map(|n| n.to_string()));
        set(
            TOTAL_QUEUE_BYTES,
            self.total_queue_bytes.map(|n| n.to_string()),
        );
        set(
            REGISTRATION_RATE,
            self.registration_rate.map(|r| r.to_string()),
        );
        set(
            REGISTRATION_BURST,
            self.registration_burst.map(|n| n.to_string()),
        );
        if self.no_stun {
            out.push(format!("--{NO_STUN}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_only_what_is_set() {
        assert!(RelayFlags::default().to_args().is_empty());
        let f = RelayFlags {
            listen: Some("[fd00::1]:3478".parse().unwrap()),
            token_file: Some("/etc/wirekube/token/token".into()),
            no_stun: true,
            registration_rate: Some(0.5),
            ..RelayFlags::default()
        };
        assert_eq!(
            f.to_args(),
            [
                "--listen=[fd00::1]:3478",
                "--token-file=/etc/wirekube/token/token",
                "--registration-rate=0.5",
                "--no-stun",
            ]
        );
    }
}
