//! The WireGuard cross-platform UAPI text protocol (`/var/run/wireguard/<if>.sock`).
//!
//! Spoken directly rather than through `defguard_wireguard_rs::WGApi<Userspace>` because
//! reconcile needs things that API hides: `update_only`/`remove` per peer, a peer update
//! that does not touch the endpoint, an interface update that does not replace all
//! peers, and the raw `last_handshake_time_sec` value (which boringtun-cli reports as an
//! age, not an epoch time; see `stats`). The protocol is small and stable, and the same
//! code then drives wireguard-go, boringtun-cli and the embedded engine alike.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::error::DataplaneError;
use crate::types::REDACTED;

/// Directory of the UAPI sockets. Global across network namespaces (docs/lab-findings.md §7.1).
pub(crate) const SOCKET_DIR: &str = "/var/run/wireguard";

/// A UAPI request must never hang the reconcile loop.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn socket_path(iface: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{iface}.sock"))
}

/// What a WireGuard device reports, engine-independent (the kernel backend fills it too).
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct DeviceState {
    pub private_key: Option<[u8; 32]>,
    pub listen_port: u16,
    pub fwmark: u32,
    pub peers: Vec<PeerState>,
}

impl std::fmt::Debug for DeviceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let DeviceState {
            private_key,
            listen_port,
            fwmark,
            peers,
        } = self;
        f.debug_struct("DeviceState")
            .field("private_key", &private_key.map(|_| REDACTED))
            .field("listen_port", listen_port)
            .field("fwmark", fwmark)
            .field("peers", peers)
            .finish()
    }
}

/// One peer as reported by `get`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PeerState {
    pub public_key: [u8; 32],
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: u16,
    /// Raw `last_handshake_time_sec`: epoch seconds (wireguard-go, kernel, defguard) or an
    /// age in seconds (boringtun-cli). Interpreted in `stats::handshake_time`.
    pub handshake_sec: u64,
    pub handshake_nsec: u32,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// One write that reconcile decided on. Each value counts as one WireGuard change.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum WgChange {
    /// Interface-level settings; `None` leaves a field alone.
    Interface {
        private_key: Option<[u8; 32]>,
        listen_port: Option<u16>,
        fwmark: Option<u32>,
    },
    /// Create or update a peer. `None` fields are left as they are (crucially the endpoint,
    /// so a roamed endpoint survives), `Some` fields are written.
    Peer {
        public_key: [u8; 32],
        create: bool,
        endpoint: Option<SocketAddr>,
        persistent_keepalive: Option<u16>,
        allowed_ips: Option<Vec<IpNet>>,
    },
    Remove([u8; 32]),
}

impl std::fmt::Debug for WgChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WgChange::Interface {
                private_key,
                listen_port,
                fwmark,
            } => f
                .debug_struct("Interface")
                .field("private_key", &private_key.map(|_| REDACTED))
                .field("listen_port", listen_port)
                .field("fwmark", fwmark)
                .finish(),
            WgChange::Peer {
                public_key,
                create,
                endpoint,
                persistent_keepalive,
                allowed_ips,
            } => f
                .debug_struct("Peer")
                .field("public_key", public_key)
                .field("create", create)
                .field("endpoint", endpoint)
                .field("persistent_keepalive", persistent_keepalive)
                .field("allowed_ips", allowed_ips)
                .finish(),
            WgChange::Remove(k) => f.debug_tuple("Remove").field(k).finish(),
        }
    }
}

fn hex(key: &[u8; 32]) -> String {
    let mut s = String::with_capacity(64);
    for b in key {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub(crate) fn parse_hex_key(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Serialises changes into the body of one `set=1` transaction (without the terminating
/// empty line).
pub(crate) fn set_body(changes: &[WgChange]) -> String {
    let mut out = String::new();
    // Interface keys must precede the first public_key line.
    for c in changes {
        if let WgChange::Interface {
            private_key,
            listen_port,
            fwmark,
        } = c
        {
            if let Some(k) = private_key {
                let _ = writeln!(out, "private_key={}", hex(k));
            }
            if let Some(p) = listen_port {
                let _ = writeln!(out, "listen_port={p}");
            }
            if let Some(m) = fwmark {
                let _ = writeln!(out, "fwmark={m}");
            }
        }
    }
    for c in changes {
        match c {
            WgChange::Interface { .. } => {}
            WgChange::Remove(k) => {
                let _ = writeln!(out, "public_key={}\nremove=true", hex(k));
            }
            WgChange::Peer {
                public_key,
                create,
                endpoint,
                persistent_keepalive,
                allowed_ips,
            } => {
                let _ = writeln!(out, "public_key={}", hex(public_key));
                if !create {
                    // If the peer vanished meanwhile, do not resurrect it half-configured.
                    out.push_str("update_only=true\n");
                }
                if let Some(e) = endpoint {
                    let _ = writeln!(out, "endpoint={e}");
                }
                if let Some(k) = persistent_keepalive {
                    let _ = writeln!(out, "persistent_keepalive_interval={k}");
                }
                if let Some(ips) = allowed_ips {
                    out.push_str("replace_allowed_ips=true\n");
                    for ip in ips {
                        let _ = writeln!(out, "allowed_ip={ip}");
                    }
                }
            }
        }
    }
    out
}

/// Parses the reply to `get=1`. Unknown keys are ignored (engines add their own, e.g.
/// boringtun-cli's `own_public_key`). Returns the device and the trailing errno.
pub(crate) fn parse_get(text: &str) -> Result<(DeviceState, i32), String> {
    let mut dev = DeviceState::default();
    let mut errno = 0;
    let mut cur: Option<PeerState> = None;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("malformed UAPI line {line:?}"));
        };
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("bad number in {line:?}"))
        };
        match (k, cur.as_mut()) {
            ("public_key", _) => {
                if let Some(p) = cur.take() {
                    dev.peers.push(p);
                }
                let key = parse_hex_key(v).ok_or_else(|| format!("bad key in {line:?}"))?;
                cur = Some(PeerState {
                    public_key: key,
                    ..PeerState::default()
                });
            }
            ("errno", _) => errno = v.parse().map_err(|_| format!("bad errno {line:?}"))?,
            ("private_key", None) => dev.private_key = parse_hex_key(v),
            ("listen_port", None) => dev.listen_port = num(v)? as u16,
            ("fwmark", None) => dev.fwmark = num(v)? as u32,
            ("endpoint", Some(p)) => {
                p.endpoint = Some(v.parse().map_err(|_| format!("bad endpoint {line:?}"))?)
            }
            ("allowed_ip", Some(p)) => p
                .allowed_ips
                .push(v.parse().map_err(|_| format!("bad allowed_ip {line:?}"))?),
            ("persistent_keepalive_interval", Some(p)) => p.persistent_keepalive = num(v)? as u16,
            ("last_handshake_time_sec", Some(p)) => p.handshake_sec = num(v)?,
            ("last_handshake_time_nsec", Some(p)) => p.handshake_nsec = num(v)? as u32,
            ("rx_bytes", Some(p)) => p.rx_bytes = num(v)?,
            ("tx_bytes", Some(p)) => p.tx_bytes = num(v)?,
            _ => {}
        }
    }
    if let Some(p) = cur.take() {
        dev.peers.push(p);
    }
    Ok((dev, errno))
}

/// A UAPI endpoint (one unix socket).
#[derive(Debug, Clone)]
pub(crate) struct Uapi {
    pub iface: String,
    pub path: PathBuf,
}

impl Uapi {
    pub fn new(iface: &str) -> Self {
        Self {
            iface: iface.to_string(),
            path: socket_path(iface),
        }
    }

    fn err(&self, reason: impl std::fmt::Display) -> DataplaneError {
        DataplaneError::Uapi {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    /// Sends one request and reads until the reply's terminating blank line.
    async fn round_trip(&self, request: &str) -> Result<String, DataplaneError> {
        let fut = async {
            let mut s = UnixStream::connect(&self.path).await?;
            s.write_all(request.as_bytes()).await?;
            let mut buf = Vec::with_capacity(4096);
            let mut chunk = [0u8; 8192];
            loop {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                // Every reply ends with "errno=N\n\n"; engines keep the socket open after it.
                if buf.ends_with(b"\n\n") && last_line_is_errno(&buf) {
                    break;
                }
            }
            Ok::<_, std::io::Error>(buf)
        };
        let buf = tokio::time::timeout(IO_TIMEOUT, fut)
            .await
            .map_err(|_| self.err("timed out"))?
            .map_err(|e| self.err(e))?;
        String::from_utf8(buf).map_err(|_| self.err("reply is not UTF-8"))
    }

    /// True when a daemon answers on the socket (a stale socket file refuses connections).
    pub async fn alive(&self) -> bool {
        self.get().await.is_ok()
    }

    pub async fn get(&self) -> Result<DeviceState, DataplaneError> {
        let reply = self.round_trip("get=1\n\n").await?;
        let (dev, errno) = parse_get(&reply).map_err(|e| self.err(e))?;
        if errno != 0 {
            return Err(DataplaneError::UapiErrno {
                iface: self.iface.clone(),
                errno,
            });
        }
        Ok(dev)
    }

    pub async fn set(&self, changes: &[WgChange]) -> Result<(), DataplaneError> {
        if changes.is_empty() {
            return Ok(());
        }
        let req = format!("set=1\n{}\n", set_body(changes));
        let reply = self.round_trip(&req).await?;
        let (_, errno) = parse_get(&reply).map_err(|e| self.err(e))?;
        if errno != 0 {
            return Err(DataplaneError::UapiErrno {
                iface: self.iface.clone(),
                errno,
            });
        }
        Ok(())
    }
}

fn last_line_is_errno(buf: &[u8]) -> bool {
    let trimmed = &buf[..buf.len().saturating_sub(2)];
    let start = trimmed
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    trimmed[start..].starts_with(b"errno=")
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: [u8; 32] = [0x11; 32];
    const K2: [u8; 32] = [0xab; 32];

    #[test]
    fn hex_keys_round_trip() {
        assert_eq!(parse_hex_key(&hex(&K2)), Some(K2));
        assert_eq!(parse_hex_key("zz"), None);
    }

    #[test]
    fn parses_wireguard_go_get() {
        let text = format!(
            "private_key={}\nlisten_port=51820\nfwmark=51820\npublic_key={}\npreshared_key={}\nprotocol_version=1\nendpoint=[fd00::1]:51821\nlast_handshake_time_sec=1764000000\nlast_handshake_time_nsec=5\ntx_bytes=10\nrx_bytes=20\npersistent_keepalive_interval=25\nallowed_ip=100.96.0.2/32\nallowed_ip=10.244.1.0/24\npublic_key={}\nallowed_ip=100.96.0.3/32\nerrno=0\n\n",
            hex(&K1),
            hex(&K2),
            hex(&[0; 32]),
            hex(&K1)
        );
        let (dev, errno) = parse_get(&text).unwrap();
        assert_eq!(errno, 0);
        assert_eq!(dev.private_key, Some(K1));
        assert_eq!((dev.listen_port, dev.fwmark), (51820, 51820));
        assert_eq!(dev.peers.len(), 2);
        let p = &dev.peers[0];
        assert_eq!(p.public_key, K2);
        assert_eq!(p.endpoint, Some("[fd00::1]:51821".parse().unwrap()));
        assert_eq!((p.handshake_sec, p.handshake_nsec), (1764000000, 5));
        assert_eq!(
            (p.tx_bytes, p.rx_bytes, p.persistent_keepalive),
            (10, 20, 25)
        );
        assert_eq!(p.allowed_ips.len(), 2);
        assert_eq!(dev.peers[1].endpoint, None);
    }

    #[test]
    fn set_body_keeps_endpoint_when_not_asked() {
        let body = set_body(&[
            WgChange::Peer {
                public_key: K2,
                create: false,
                endpoint: None,
                persistent_keepalive: None,
                allowed_ips: Some(vec!["100.96.0.2/32".parse().unwrap()]),
            },
            WgChange::Interface {
                private_key: None,
                listen_port: Some(1),
                fwmark: None,
            },
            WgChange::Remove(K1),
        ]);
        assert_eq!(
            body,
            format!(
                "listen_port=1\npublic_key={}\nupdate_only=true\nreplace_allowed_ips=true\nallowed_ip=100.96.0.2/32\npublic_key={}\nremove=true\n",
                hex(&K2),
                hex(&K1)
            )
        );
        assert!(!body.contains("endpoint"));
    }

    #[test]
    fn errno_terminator() {
        assert!(last_line_is_errno(b"a=1\nerrno=0\n\n"));
        assert!(!last_line_is_errno(b"a=1\n\n"));
    }
}
