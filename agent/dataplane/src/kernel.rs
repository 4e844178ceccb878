//! Kernel WireGuard backend through `defguard_wireguard_rs::WGApi<Kernel>` (generic netlink).
//!
//! Not exercised by the tests here (this machine has no WireGuard module). Peer writes map
//! 1:1 onto `configure_peer`/`remove_peer`. Interface-level writes (key, port, fwmark)
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
            match c {
                WgChange::Interface {
                    private_key,
                    listen_port,
                    fwmark,
                } => {
                    let key = private_key.or(current.private_key).unwrap_or([0; 32]);
                    let cfg = InterfaceConfiguration {
                        name: self.iface.clone(),
                        prvkey: Key::new(key).to_lower_hex(),
                        // Addresses and MTU are owned by our rtnetlink code.
                        addresses: Vec::new(),
                        port: listen_port.unwrap_or(current.listen_port),
                        peers: Vec::new(),
                        mtu: None,
                        fwmark: Some(fwmark.unwrap_or(current.fwmark)),
                    };
                    self.api
                        .configure_interface(&cfg)
                        .map_err(|e| err(&self.iface, e))?;
                    wiped = true;
                }
                WgChange::Peer {
                    public_key,
                    endpoint,
                    persistent_keepalive,
                    allowed_ips,
                    ..
                } => {
                    // defguard always replaces allowed IPs, so send the full current list
                    // when the change does not carry one.
                    let cur = current.peers.iter().find(|p| p.public_key == *public_key);
                    let ips = allowed_ips
                        .clone()
                        .or_else(|| cur.map(|p| p.allowed_ips.clone()))
                        .unwrap_or_default();
                    let mut peer = Peer::new(Key::new(*public_key));
                    peer.endpoint = *endpoint;
                    peer.persistent_keepalive_interval =
                        persistent_keepalive.or(cur.map(|p| p.persistent_keepalive));
                    peer.allowed_ips = ips
                        .iter()
                        .map(|n| IpAddrMask::new(n.addr(), n.prefix_len()))
                        .collect();
                    self.api
                        .configure_peer(&peer)
                        .map_err(|e| err(&self.iface, e))?;
                }
                WgChange::Remove(k) => self
                    .api
                    .remove_peer(&Key::new(*k))
                    .map_err(|e| err(&self.iface, e))?,
            }
        }
        Ok(wiped)
    }
}

fn err(iface: &str, e: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::KernelWg {
        iface: iface.to_string(),
        reason: e.to_string(),
    }
}
