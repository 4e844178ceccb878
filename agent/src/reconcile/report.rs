//! Status: built from the state machines and WireGuard stats, applied only on change.

use super::*;

impl Agent {
    pub(super) fn build_status(
        &self,
        peer: &WireKubePeer,
        stats: &[PeerStats],
        now: Instant,
        now_sys: SystemTime,
    ) -> WireKubePeerStatus {
        let spec = &peer.spec;
        let old = peer.status.as_ref();
        let wall = |i: Instant| {
            now_sys
                .checked_sub(now.duration_since(i))
                .unwrap_or(now_sys)
        };
        let mut conns = Vec::new();
        let mut observed = Vec::new();
        for p in &spec.peers {
            let Some(rt) = self.peers.get(&p.name) else {
                conns.push(PeerConnection {
                    name: p.name.clone(),
                    path: ActualPath::Down,
                    reason: Some(if p.public_key.is_empty() {
                        PathReason::KeyMissing
                    } else {
                        p.reason
                    }),
                    ..Default::default()
                });
                continue;
            };
            let s = stats
                .iter()
                .find(|s| s.public_key == *rt.target.key.as_bytes());
            let ep = s.and_then(|s| s.endpoint);
            if let Some(e) = ep
                && !e.ip().is_loopback()
            {
                observed.push((p.name.as_str(), e));
            }
            let relay_down = rt.state.actual() == ActualPath::Relay
                && self
                    .relay
                    .as_ref()
                    .is_none_or(|r| r.client.state().status != Status::Connected);
            conns.push(PeerConnection {
                name: p.name.clone(),
                path: if relay_down {
                    ActualPath::Down
                } else {
                    rt.state.actual()
                },
                reason: Some(if rt.state.direct_failed() {
                    PathReason::DirectFailed
                } else if relay_down {
                    PathReason::NoRelay
                } else {
                    p.reason
                }),
                endpoint: ep.map(|e| e.to_string()),
                last_handshake: s.and_then(|s| s.last_handshake).map(status::to_time),
                rx_bytes: s.map_or(0, |s| s.rx_bytes),
                tx_bytes: s.map_or(0, |s| s.tx_bytes),
                fallback: rt.state.fallback(),
                transitions: rt.state.transitions,
                last_transition: rt.state.last_transition.map(|i| status::to_time(wall(i))),
                rtt_micros: if relay_down {
                    None
                } else {
                    rt.rtt.published_micros()
                },
            });
        }
        let mut cands = candidates::host_candidates(
            &candidates::local_addrs().unwrap_or_default(),
            &spec.interface_name,
            spec.listen_port,
        );
        if let Some(s) = self.discovery.srflx {
            cands.push(wirekube_crds::Candidate {
                kind: wirekube_crds::CandidateKind::Srflx,
                address: s.to_string(),
                prefix_length: None,
                observed_by: None,
            });
        }
        cands.extend(candidates::prflx_candidates(observed));
        let mut conds = Vec::new();
        let (stun_ok, stun_msg) = match &self.discovery.latest {
            Some(r) => (r.stun_reachable, r.message.clone()),
            None => (false, "discovery has not run yet".to_string()),
        };
        conds.push(CondInput::new(
            ct::STUN_REACHABLE,
            stun_ok,
            if stun_ok { "Answered" } else { "NoAnswer" },
            stun_msg,
        ));
        let mss_error = match &self.mss {
            Some(Err(e)) => Some(format!("MSS clamp: {e}")),
            _ => None,
        };
        let dp_ok = self.dp.is_some() && self.dp_error.is_none() && mss_error.is_none();
        conds.push(CondInput::new(
            ct::DATAPLANE_READY,
            dp_ok,
            if dp_ok { "Reconciled" } else { "Error" },
            self.dp_error
                .clone()
                .or(mss_error)
                .unwrap_or_else(|| "interface, peers, routes and MSS clamp converged".into()),
        ));
        if let Some((p, outcome)) = &self.podnet {
            let (ok, msg) = match (p, outcome) {
                (Some(p), Ok(())) => (
                    true,
                    format!(
                        "pods on {} attach to {}; CNI configuration {} in {}",
                        p.subnet,
                        crate::podnet::BRIDGE,
                        crate::podnet::CONF_FILE,
                        self.cfg.cni_conf_dir.display()
                    ),
                ),
                (_, Err(e)) => (false, e.clone()),
                (None, Ok(())) => (false, "not configured yet".into()),
            };
            conds.push(CondInput::new(
                ct::POD_NETWORK_READY,
                ok,
                if ok { "Configured" } else { "Error" },
                msg,
            ));
        }
        if spec::relay_allowed(spec) {
            let (ok, msg) = match &self.relay {
                None => (
                    false,
                    format!(
                        "no relay token yet (Secret {:?} in {})",
                        spec.relay_token_secret, self.cfg.namespace
                    ),
                ),
                Some(r) => {
                    let s = r.client.state();
                    (
                        s.status == Status::Connected,
                        match s.status {
                            Status::Connected => format!("connected to {}", r.addr),
                            _ => format!(
                                "{:?} to {}: {}",
                                s.status,
                                r.addr,
                                s.last_error.unwrap_or_default()
                            ),
                        },
                    )
                }
            };
            conds.push(CondInput::new(
                ct::RELAY_CONNECTED,
                ok,
                if ok { "Connected" } else { "NotConnected" },
                msg,
            ));
        }
        conds.extend(key_conditions(peer, &self.spec_problems));
        conds.push(CondInput::new(
            ct::READY,
            dp_ok,
            if dp_ok { "Ready" } else { "DataplaneNotReady" },
            if dp_ok {
                "agent reconciled the dataplane"
            } else {
                "see DataplaneReady"
            },
        ));
        let generation = peer.metadata.generation;
        let summary = status::summary(&conns);
        for (path, n) in [
            ("direct", summary.direct),
            ("relay", summary.relay),
            ("connecting", summary.connecting),
            ("down", summary.down),
        ] {
            self.metrics
                .peers
                .get_or_create(&PathLabel { path: path.into() })
                .set(i64::from(n));
        }
        WireKubePeerStatus {
            observed_generation: generation,
            public_key: Some(self.id.public_key().to_base64()),
            candidates: cands,
            nat_type: self.discovery.nat_type(),
            public_ip: self.discovery.public_ip().map(|i| i.to_string()),
            engine: self.dp.as_ref().map(|d| engine_of(d.engine())),
            conditions: status::conditions(
                old.map_or(&[][..], |o| &o.conditions[..]),
                conds,
                generation,
                now_sys,
            ),
            connections: conns,
            summary,
        }
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

/// `PublicKeyAccepted` (False while the operator quarantines this node for its key, with the
/// operator's note) and `PeersAccepted` (False naming each peer of the spec that was skipped).
fn key_conditions(peer: &WireKubePeer, problems: &[String]) -> [CondInput; 2] {
    let note = peer
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(wirekube_crds::QUARANTINE_ANNOTATION));
    let key = match note {
        Some(n) => CondInput::new(ct::PUBLIC_KEY_ACCEPTED, false, "Quarantined", n.clone()),
        None => CondInput::new(
            ct::PUBLIC_KEY_ACCEPTED,
            true,
            "Listed",
            "the operator lists this node's key in the other nodes' specs",
        ),
    };
    let peers = if problems.is_empty() {
        CondInput::new(
            ct::PEERS_ACCEPTED,
            true,
            "AllValid",
            "every peer of the spec is configured",
        )
    } else {
        CondInput::new(
            ct::PEERS_ACCEPTED,
            false,
            "PeersSkipped",
            problems.join(" | "),
        )
    };
    [key, peers]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarantine_note_and_skipped_peers_become_conditions() {
        let mut p = WireKubePeer::new("n1", Default::default());
        let [key, peers] = key_conditions(&p, &[]);
        assert!(key.ok && peers.ok);
        p.metadata.annotations = Some(
            [(
                wirekube_crds::QUARANTINE_ANNOTATION.to_string(),
                "nodes n1, n2 report the same public key".to_string(),
            )]
            .into(),
        );
        let skipped = ["peer x: publicKey is also listed for y".to_string()];
        let [key, peers] = key_conditions(&p, &skipped);
        assert_eq!((key.ok, key.reason.as_str()), (false, "Quarantined"));
        assert!(key.message.contains("n1, n2"));
        assert_eq!((peers.ok, peers.reason.as_str()), (false, "PeersSkipped"));
        assert_eq!(peers.message, skipped[0]);
    }
}
