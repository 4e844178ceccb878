//! Kernel WireGuard backend through `defguard_wireguard_rs::WGApi<Kernel>` (generic netlink).
//!
//! The netlink calls cannot run on the test machines (no WireGuard module); what decides
//! correctness, the mapping of each change onto a defguard call ([`kernel_write`]), is a pure
//! function with unit tests below. Peer writes map 1:1 onto `configure_peer`/`remove_peer`. Interface-level writes (key, port, fwmark)
//! have no partial API in defguard: `configure_interface` replaces all peers, so the caller
//! re-reads the state afterwards and re-adds the peers in the same reconcile.

use std::time::SystemTime;

use defguard_wireguard_rs::key::Key;
use defguard_wireguard_rs::net::IpAddrMask;
use defguard_wireguard_rs::peer::Peer;
use defguard_wireguard_rs::{InterfaceConfiguration, Kernel, WGApi, WireguardInterfaceApi};

use crate::error::DataplaneError;
use crate::uapi::{DeviceState, PeerState, WgChange};

pub(crate) struct KernelWg {
    api: WGApi<Kernel>,
    iface: String,
}

impl KernelWg {
    pub fn new(iface: &str) -> Result<Self, DataplaneError> {
        let api = WGApi::<Kernel>::new(iface).map_err(|e| err(iface, e))?;
        Ok(Self {
            api,
            iface: iface.to_string(),
        })
    }

    pub fn get(&self) -> Result<DeviceState, DataplaneError> {
        let host = self
            .api
            .read_interface_data()
            .map_err(|e| err(&self.iface, e))?;
        let peers = host
            .peers
            .values()
            .map(|p| {
                let hs = p
                    .last_handshake
                    .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .unwrap_or_default();
                PeerState {
                    public_key: p.public_key.as_array(),
                    endpoint: p.endpoint,
                    allowed_ips: p
                        .allowed_ips
                        .iter()
                        .filter_map(|m| ipnet::IpNet::new(m.address, m.cidr).ok())
                        .collect(),
                    persistent_keepalive: p.persistent_keepalive_interval.unwrap_or(0),
                    handshake_sec: hs.as_secs(),
                    handshake_nsec: hs.subsec_nanos(),
                    rx_bytes: p.rx_bytes,
                    tx_bytes: p.tx_bytes,
                }
            })
            .collect();
        Ok(DeviceState {
            private_key: host.private_key.map(|k| k.as_array()),
            listen_port: host.listen_port,
            fwmark: host.fwmark.unwrap_or(0),
            peers,
        })
    }

    /// Applies `changes`. Returns true when an interface-level write wiped the peers, so
    /// the caller must diff again.
    pub fn set(&self, current: &DeviceState, changes: &[WgChange]) -> Result<bool, DataplaneError> {
        let mut wiped = false;
        for c in changes {
            match kernel_write(&self.iface, current, c) {
                KernelWrite::Interface(cfg) => {
                    self.api
                        .configure_interface(&cfg)
                        .map_err(|e| err(&self.iface, e))?;
                    wiped = true;
                }
                KernelWrite::Peer(peer) => self
                    .api
                    .configure_peer(&peer)
                    .map_err(|e| err(&self.iface, e))?,
                KernelWrite::Remove(k) => {
                    self.api.remove_peer(&k).map_err(|e| err(&self.iface, e))?
                }
            }
        }
        Ok(wiped)
    }
}

/// One defguard call.
#[derive(Debug)]
enum KernelWrite {
    Interface(InterfaceConfiguration),
    Peer(Peer),
    Remove(Key),
}

/// Maps one change onto the defguard call that makes it, filling in from `current` what
/// defguard would otherwise reset: it has no partial interface update (key, port and fwmark are
/// always written together) and always replaces a peer's allowed IPs and keepalive.
fn kernel_write(iface: &str, current: &DeviceState, change: &WgChange) -> KernelWrite {
    match change {
        WgChange::Interface {
            private_key,
            listen_port,
            fwmark,
        } => {
            let key = private_key.or(current.private_key).unwrap_or([0; 32]);
            KernelWrite::Interface(InterfaceConfiguration {
                name: iface.to_string(),
                prvkey: Key::new(key).to_lower_hex(),
                // Addresses and MTU are owned by our rtnetlink code.
                addresses: Vec::new(),
                port: listen_port.unwrap_or(current.listen_port),
                peers: Vec::new(),
                mtu: None,
                fwmark: Some(fwmark.unwrap_or(current.fwmark)),
            })
        }
        WgChange::Peer {
            public_key,
            endpoint,
            persistent_keepalive,
            allowed_ips,
            ..
        } => {
            let cur = current.peers.iter().find(|p| p.public_key == *public_key);
            let ips = allowed_ips
                .clone()
                .or_else(|| cur.map(|p| p.allowed_ips.clone()))
                .unwrap_or_default();
            let mut peer = Peer::new(Key::new(*public_key));
            // None leaves the kernel's (possibly roamed) endpoint alone: no attribute is sent.
            peer.endpoint = *endpoint;
            peer.persistent_keepalive_interval =
                persistent_keepalive.or(cur.map(|p| p.persistent_keepalive));
            peer.allowed_ips = ips
                .iter()
                .map(|n| IpAddrMask::new(n.addr(), n.prefix_len()))
                .collect();
            KernelWrite::Peer(peer)
        }
        WgChange::Remove(k) => KernelWrite::Remove(Key::new(*k)),
    }
}

fn err(iface: &str, e: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::KernelWg {
        iface: iface.to_string(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current() -> DeviceState {
        DeviceState {
            private_key: Some([7; 32]),
            listen_port: 51820,
            fwmark: 51820,
            peers: vec![PeerState {
                public_key: [1; 32],
                endpoint: Some("198.51.100.7:40000".parse().unwrap()),
                allowed_ips: vec![
                    "10.99.0.2/32".parse().unwrap(),
                    "10.244.2.0/24".parse().unwrap(),
                ],
                persistent_keepalive: 25,
                handshake_sec: 0,
                handshake_nsec: 0,
                rx_bytes: 0,
                tx_bytes: 0,
            }],
        }
    }

    #[test]
    fn a_port_change_keeps_the_key_and_fwmark() {
        let w = kernel_write(
            "wk0",
            &current(),
            &WgChange::Interface {
                private_key: None,
                listen_port: Some(51821),
                fwmark: None,
            },
        );
        let KernelWrite::Interface(cfg) = w else {
            panic!("{w:?}")
        };
        assert_eq!(cfg.name, "wk0");
        assert_eq!(cfg.port, 51821);
        assert_eq!(cfg.fwmark, Some(51820));
        assert_eq!(cfg.prvkey, Key::new([7; 32]).to_lower_hex());
        assert!(
            cfg.addresses.is_empty() && cfg.mtu.is_none(),
            "rtnetlink owns these"
        );
    }

    #[test]
    fn a_keepalive_change_keeps_allowed_ips_and_the_roamed_endpoint() {
        let w = kernel_write(
            "wk0",
            &current(),
            &WgChange::Peer {
                public_key: [1; 32],
                create: false,
                endpoint: None,
                persistent_keepalive: Some(10),
                allowed_ips: None,
            },
        );
        let KernelWrite::Peer(p) = w else {
            panic!("{w:?}")
        };
        assert_eq!(p.public_key, Key::new([1; 32]));
        assert_eq!(
            p.endpoint, None,
            "no endpoint attribute: the roamed one stays"
        );
        assert_eq!(p.persistent_keepalive_interval, Some(10));
        let ips: Vec<String> = p.allowed_ips.iter().map(ToString::to_string).collect();
        assert_eq!(ips, ["10.99.0.2/32", "10.244.2.0/24"]);
    }

    #[test]
    fn a_new_peer_gets_exactly_what_was_asked() {
        let w = kernel_write(
            "wk0",
            &current(),
            &WgChange::Peer {
                public_key: [2; 32],
                create: true,
                endpoint: Some("127.0.0.1:40001".parse().unwrap()),
                persistent_keepalive: None,
                allowed_ips: Some(vec!["10.99.0.3/32".parse().unwrap()]),
            },
        );
        let KernelWrite::Peer(p) = w else {
            panic!("{w:?}")
        };
        assert_eq!(p.endpoint, Some("127.0.0.1:40001".parse().unwrap()));
        assert_eq!(p.persistent_keepalive_interval, None);
        assert_eq!(p.allowed_ips.len(), 1);
        assert!(matches!(
            kernel_write("wk0", &current(), &WgChange::Remove([1; 32])),
            KernelWrite::Remove(k) if k == Key::new([1; 32])
        ));
    }
}
