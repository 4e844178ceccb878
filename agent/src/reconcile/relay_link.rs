//! The relay client and its bridge: started, replaced (token, address, failover to the next
//! `relayEndpoints` entry) or stopped to match the spec.

use std::time::Instant;

use tokio::sync::watch;
use wirekube_crds::WireKubePeer;
use wirekube_dataplane::RelayBridge;
use wirekube_relay_client::{ConnectionState, RelayClient, RelayClientConfig, Status};

use super::{Agent, RELAY_FAILOVER_AFTER};
use crate::spec;

pub(super) struct RelayRt {
    /// Not authenticated since (None while connected).
    pub(super) down_since: Option<Instant>,
    pub(super) addr: String,
    pub(super) token: Vec<u8>,
    pub(super) client: RelayClient,
    pub(super) bridge: RelayBridge,
    pub(super) state_rx: watch::Receiver<ConnectionState>,
}

impl Agent {
    /// Starts, replaces or stops the relay client and bridge to match the spec and token.
    pub(super) fn ensure_relay(&mut self, peer: &WireKubePeer, token: Option<Vec<u8>>) {
        let eps = &peer.spec.relay_endpoints;
        if let Some(r) = self.relay.as_mut() {
            let st = r.client.state();
            if relay_failover_due(
                st.status == Status::Connected,
                &mut r.down_since,
                Instant::now(),
            ) && eps.len() > 1
            {
                let next = (self.relay_choice + 1) % eps.len();
                tracing::warn!(relay = %r.addr, next = %eps[next], last_error = ?st.last_error, "relay not connected for {RELAY_FAILOVER_AFTER:?}; trying the next relayEndpoints entry");
                self.relay_choice = next;
            }
        }
        let want = match (spec::relay_allowed(&peer.spec), token) {
            (true, Some(t)) => Some((eps[self.relay_choice % eps.len()].clone(), t)),
            _ => None,
        };
        let same = match (&self.relay, &want) {
            (Some(r), Some((a, t))) => r.addr == *a && r.token == *t,
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        if let Some(old) = self.relay.take() {
            tracing::info!(relay = %old.addr, "stopping relay client");
            let c = old.client.clone();
            drop(old.bridge);
            tokio::spawn(async move { c.shutdown().await });
        }
        if let Some((addr, token)) = want {
            tracing::info!(relay = %addr, "starting relay client");
            let mut cfg = RelayClientConfig::new(addr.clone(), self.id.relay_key(), token.clone());
            // Marked like WireGuard's own packets, so the bypass rule keeps the relay
            // connection out of the mesh table even if a relay address falls into AllowedIPs.
            let mark = self.cfg.local.fwmark;
            cfg.socket_mark = (mark != 0).then_some(mark);
            let (client, receiver) = RelayClient::start(cfg);
            let bridge = RelayBridge::new(client.clone(), receiver, peer.spec.listen_port);
            let state_rx = client.watch_state();
            self.relay = Some(RelayRt {
                down_since: Some(Instant::now()),
                addr,
                token,
                client,
                bridge,
                state_rx,
            });
        }
    }
}

/// Tracks how long the relay client has been without a connection; true once that exceeds
/// [`RELAY_FAILOVER_AFTER`] (and restarts the clock, so the next entry gets its own time).
pub(super) fn relay_failover_due(
    connected: bool,
    down_since: &mut Option<Instant>,
    now: Instant,
) -> bool {
    if connected {
        *down_since = None;
        return false;
    }
    let since = *down_since.get_or_insert(now);
    if now.duration_since(since) >= RELAY_FAILOVER_AFTER {
        *down_since = Some(now);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn fails_over_after_ten_seconds_without_a_connection_and_restarts_the_clock() {
        let t = Instant::now();
        let mut down = Some(t);
        assert!(!relay_failover_due(
            false,
            &mut down,
            t + Duration::from_secs(9)
        ));
        assert!(relay_failover_due(
            false,
            &mut down,
            t + Duration::from_secs(10)
        ));
        // The next endpoint gets its own 10 s.
        assert!(!relay_failover_due(
            false,
            &mut down,
            t + Duration::from_secs(19)
        ));
        assert!(relay_failover_due(
            false,
            &mut down,
            t + Duration::from_secs(20)
        ));
    }

    #[test]
    fn a_connection_resets_the_clock() {
        let t = Instant::now();
        let mut down = Some(t);
        assert!(!relay_failover_due(
            true,
            &mut down,
            t + Duration::from_secs(30)
        ));
        assert_eq!(down, None);
        assert!(!relay_failover_due(
            false,
            &mut down,
            t + Duration::from_secs(31)
        ));
        assert!(!relay_failover_due(
            false,
            &mut down,
            t + Duration::from_secs(40)
        ));
        assert!(relay_failover_due(
            false,
            &mut down,
            t + Duration::from_secs(41)
        ));
    }
}
