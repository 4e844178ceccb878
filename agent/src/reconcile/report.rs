//! Status, the I/O half: gathers what [`crate::step::report`] needs (the relay client's state,
//! the interface addresses), and applies the result only on change.

use std::time::{Instant, SystemTime};

use wirekube_crds::{WireKubePeer, WireKubePeerStatus};
use wirekube_dataplane::PeerStats;

use super::{Agent, engine_of};
use crate::discovery::candidates;
use crate::kubeapi;
use crate::status;
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
        report::build_status(&StatusFacts {
            peer,
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

    pub(super) async fn maybe_patch(&mut self, st: WireKubePeerStatus, now: Instant) {
        let due = self
            .last_patch
            .is_none_or(|t| now.duration_since(t) >= self.cfg.heartbeat);
        if !due && !status::significant_change(self.last_status.as_ref(), &st) {
            return;
        }
        self.metrics.status_patches.inc();
        match kubeapi::patch_status(&self.client, &self.cfg.node, &st).await {
            Ok(()) => {
                self.last_status = Some(st);
                self.last_patch = Some(now);
            }
            Err(e) => {
                self.metrics.status_patch_errors.inc();
                tracing::warn!(error = %e, "status apply failed (will retry)");
            }
        }
    }
}
