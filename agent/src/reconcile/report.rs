//! Status, the I/O half: gathers what [`crate::step::report`] needs (the relay client's state,
//! the interface addresses); `status_writer` applies the result when it changed.

use std::time::{Instant, SystemTime};

use wirekube_crds::{WireKubePeer, WireKubePeerStatus};
use wirekube_dataplane::PeerStats;

use super::{Agent, engine_of};
use crate::discovery::candidates;
use crate::step::report::{self, DataplaneFacts, RelayFacts, StatusFacts};

impl Agent {
    pub(super) fn build_status(
        &self,
        peer: &WireKubePeer,
        stats: &[PeerStats],
        now: Instant,
        now_sys: SystemTime,
    ) -> WireKubePeerStatus {
        let relay = self.relay.as_ref().map(|r| {
            let state = r.client.state();
            RelayFacts {
                addr: r.addr.clone(),
                status: state.status,
                last_error: state.last_error,
            }
        });
        let local_addrs = candidates::local_addrs().unwrap_or_default();
        let public_key = self.id.public_key().to_base64();
        // The previous pass's status: the writer holds it.
        let previous = self.status.submitted();
        report::build_status(&StatusFacts {
            peer,
            previous: previous.as_ref(),
            paths: &self.peers,
            stats,
            relay: relay.as_ref(),
            discovery: &self.discovery,
            local_addrs: &local_addrs,
            dataplane: DataplaneFacts {
                engine: self.dp.as_ref().map(|d| engine_of(d.engine())),
                error: self.dp_error.as_deref(),
                mss: self.mss.as_ref(),
                podnet: self.podnet.as_ref(),
                cni_conf_dir: &self.cfg.cni_conf_dir,
            },
            namespace: &self.cfg.namespace,
            spec_problems: &self.spec_problems,
            public_key: &public_key,
            now,
            now_sys,
        })
    }

    /// Hands the status to the writer, which applies it when it changed (or the heartbeat is
    /// due); never waits for the API server.
    pub(super) fn submit_status(&self, st: WireKubePeerStatus) {
        self.status.submit(st);
    }
}
