//! One reconcile pass: spec → per-peer state machines → dataplane, plus the datagrams that
//! start handshakes and probes.

use super::*;

impl Agent {
    pub(super) async fn reconcile(&mut self, peer: &WireKubePeer) {
        self.metrics.reconciles.inc();
        let now = Instant::now();
        let now_sys = SystemTime::now();
        let spec = &peer.spec;
        let iface = spec::interface_config(spec, self.id.private_bytes(), self.cfg.local);
        let (targets, mut problems) = spec::peer_targets(spec);
        let targets = spec::without_own_key(targets, &self.id.public_key(), &mut problems);
        for p in &problems {
            tracing::warn!("spec: {p}");
        }
        self.spec_problems = problems.iter().map(ToString::to_string).collect();
        self.update_peers(&targets, timing(spec, self.cfg.probe_min), now);
        if let Some(r) = &self.relay {
            let keys: HashSet<[u8; 32]> = targets.iter().map(|t| *t.key.as_bytes()).collect();
            r.bridge.set_authorized(keys);
        }
        let stats = match &iface {
            Ok(i) => self.converge(i, now, now_sys).await,
            Err(e) => {
                self.dp_error = Some(format!("invalid spec: {e}"));
                Vec::new()
            }
        };
        self.reconcile_podnet(spec).await;
        self.reconcile_mss(&spec.interface_name).await;
        let st = self.build_status(peer, &stats, now, now_sys);
        self.metrics.observe_status(&st, now_sys);
        self.maybe_patch(st, now).await;
    }

    /// Clamps the MSS of TCP forwarded through the mesh (once per interface name; again after
    /// a failure).
    async fn reconcile_mss(&mut self, iface: &str) {
        if matches!(&self.mss, Some(Ok(done)) if done == iface) {
            return;
        }
        let outcome = crate::podnet::apply_mss(iface).await;
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "MSS clamp for traffic forwarded through the mesh");
        }
        self.mss = Some(
            outcome
                .map(|()| iface.to_owned())
                .map_err(|e| e.to_string()),
        );
    }

    /// Puts the pod network in place when the spec asks for it (again only after it changed
    /// or failed), and removes WireKube's CNI file and rule when it no longer does.
    async fn reconcile_podnet(&mut self, spec: &wirekube_crds::WireKubePeerSpec) {
        use crate::podnet;
        let dir = self.cfg.cni_conf_dir.clone();
        let want = match podnet::desired(spec) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "pod network");
                self.podnet = Some((None, Err(e.to_string())));
                return;
            }
        };
        let Some(want) = want else {
            let ours = self.podnet.take().is_some() || dir.join(podnet::CONF_FILE).exists();
            if ours && let Err(e) = podnet::remove(&dir).await {
                tracing::warn!(error = %e, "removing the pod network configuration");
            }
            return;
        };
        if let Some((Some(done), Ok(()))) = &self.podnet
            && *done == want
        {
            return;
        }
        let outcome = podnet::apply(&dir, &want).await;
        match &outcome {
            Ok(changed) => tracing::info!(
                subnet = %want.subnet,
                file = %dir.join(podnet::CONF_FILE).display(),
                changed,
                "pod network in place"
            ),
            Err(e) => tracing::error!(error = %e, "pod network"),
        }
        self.podnet = Some((Some(want), outcome.map(|_| ()).map_err(|e| e.to_string())));
    }

    pub(super) fn update_peers(&mut self, targets: &[PeerTarget], timing: Timing, now: Instant) {
        self.peers
            .retain(|name, _| targets.iter().any(|t| &t.name == name));
        for t in targets {
            let update = peer_update(
                self.peers.get(&t.name).map(|rt| &rt.target.key),
                &t.key,
                self.cfg.key_created,
            );
            if update == PeerUpdate::Fresh && self.peers.remove(&t.name).is_some() {
                tracing::info!(peer = %t.name, "peer has a new public key: its path starts over");
            }
            match self.peers.get_mut(&t.name) {
                Some(rt) => {
                    rt.state.set_timing(timing);
                    if let Some(tr) = rt.state.set_plan(t.plan, now) {
                        self.metrics
                            .transitions
                            .get_or_create(&PathLabel {
                                path: format!("{:?}", tr.to).to_lowercase(),
                            })
                            .inc();
                        tracing::info!(peer = %t.name, from = ?tr.from, to = ?tr.to, cause = ?tr.cause, "path transition");
                    }
                    if rt.target.direct_endpoint != t.direct_endpoint {
                        rt.state.retry_direct(now);
                    }
                    rt.target = t.clone();
                }
                None => {
                    let mut state = if update == PeerUpdate::Adopt {
                        PathState::new(timing, t.plan, now)
                    } else {
                        PathState::fresh(timing, t.plan, now)
                    };
                    state
                        .set_clock(WallClock::system(now).shifted(self.cfg.test_clock_offset_secs));
                    self.peers.insert(
                        t.name.clone(),
                        PeerRt {
                            target: t.clone(),
                            state,
                            last_trigger: None,
                            live: None,
                            rtt: crate::rtt::Rtt::default(),
                        },
                    );
                }
            }
        }
    }

    /// Opens the dataplane if needed, feeds stats to the state machines and converges.
    /// Returns the stats read before converging (for status).
    pub(super) async fn converge(
        &mut self,
        iface: &InterfaceConfig,
        now: Instant,
        now_sys: SystemTime,
    ) -> Vec<PeerStats> {
        if self.dp.is_none() {
            match Dataplane::open(self.cfg.engine.clone(), iface).await {
                Ok(dp) => {
                    let sel = dp.selection();
                    tracing::info!(
                        engine = sel.kind.as_str(),
                        adopted = sel.adopted,
                        "dataplane open: {}",
                        sel.reason
                    );
                    self.dp = Some(dp);
                }
                Err(e) => {
                    self.metrics.reconcile_errors.inc();
                    self.dp_error = Some(format!("open dataplane: {e}"));
                    tracing::error!(error = %e, "cannot open dataplane (will retry)");
                    return Vec::new();
                }
            }
        }
        let Some(dp) = self.dp.as_mut() else {
            return Vec::new();
        };
        let stats = match dp.peer_stats().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "reading peer stats failed");
                Vec::new()
            }
        };
        let relay = self.relay.as_ref();
        let is_relay = |ep: SocketAddr| {
            ep.ip().is_loopback() || relay.is_some_and(|r| r.bridge.is_relay_endpoint(ep).is_some())
        };
        let local = iface.address.addr();
        if self.signal.as_ref().is_none_or(|s| !s.is_for(local)) {
            // Fails until our mesh IP is on the interface (first pass): retried every pass.
            self.signal = probe_signal::ProbeSignal::open(local)
                .map_err(|e| tracing::debug!(error = %e, "probe announcement socket"))
                .ok();
        }
        let announced_by = self
            .signal
            .as_ref()
            .map(|s| s.received())
            .unwrap_or_default();
        let mut announce = Vec::new();
        let mut configs = Vec::with_capacity(self.peers.len());
        let (mut triggers, mut reassert) = (Vec::new(), Vec::new());
        for (name, rt) in self.peers.iter_mut() {
            let span = tracing::debug_span!("peer", peer = %name);
            let _g = span.enter();
            let s = stats
                .iter()
                .find(|s| s.public_key == *rt.target.key.as_bytes());
            let cur = Current {
                endpoint: s.and_then(|s| s.endpoint),
                last_handshake: s.and_then(|s| s.last_handshake),
                via_relay: s.and_then(|s| s.endpoint).is_some_and(is_relay),
            };
            let obs = Observation {
                last_handshake: cur.last_handshake.map(|t| to_instant(t, now_sys, now)),
                endpoint: cur.endpoint,
                via_relay: cur.via_relay,
                rx_bytes: s.map_or(0, |s| s.rx_bytes),
                tx_bytes: s.map_or(0, |s| s.tx_bytes),
            };
            rt.poll_liveness(local, now);
            if rt
                .target
                .mesh_ip
                .is_some_and(|ip| announced_by.contains(&ip))
                && rt.state.peer_probing(now)
            {
                tracing::info!("peer announced a probe: probing with it");
            }
            let was_fallback = matches!(rt.state.phase(), Phase::Fallback { .. });
            if let Some(tr) = rt.state.observe(&obs, now) {
                if tr.from == ActualPath::Direct && tr.to != ActualPath::Direct {
                    self.direct_failed = true;
                }
                self.metrics
                    .transitions
                    .get_or_create(&PathLabel {
                        path: format!("{:?}", tr.to).to_lowercase(),
                    })
                    .inc();
                tracing::info!(from = ?tr.from, to = ?tr.to, cause = ?tr.cause, "path transition");
            }
            if was_fallback
                && matches!(rt.state.phase(), Phase::Probing { .. })
                && let Some(ip) = rt.target.mesh_ip
            {
                announce.push(ip);
            }
            rt.rtt.on_path(rt.state.actual());
            rt.send_liveness(now);
            let relay_ep = match (rt.state.want(), relay) {
                (crate::pathstate::Want::Relay, Some(r)) => {
                    match r.bridge.endpoint_for(*rt.target.key.as_bytes()).await {
                        Ok(a) => Some(a),
                        Err(e) => {
                            tracing::warn!(error = %e, "no relay socket for peer");
                            None
                        }
                    }
                }
                _ => None,
            };
            configs.push(spec::peer_config(
                &rt.target,
                rt.state.want(),
                cur,
                relay_ep,
                now_sys,
            ));
            // Initiation: make sure a handshake starts for peers we must initiate, by
            // sending one datagram into the tunnel (WireGuard handshakes on demand). The
            // keepalive set for them keeps it going; this covers engines that do not send an
            // initiation when a peer is added (boringtun, docs/lab-findings.md §4.1).
            // A probe (either side) is confirmed by traffic over the direct endpoint, i.e. rx
            // growth between two samples (an existing session does not handshake again), so
            // while probing it triggers every PROBE_TRIGGER_EVERY; the peer's kernel answers
            // (port unreachable) through its tunnel, over the path it now uses.
            let probing = matches!(rt.state.phase(), Phase::Probing { .. });
            if probing && cur.via_relay {
                // The peer's relay packets arrived after we pointed it at the direct address
                // and WireGuard roamed back: point it there again, or the probe's triggers
                // (and the reply to them) go through the relay and prove nothing.
                reassert.push(*rt.target.key.as_bytes());
            }
            // The non-initiating side triggers too. On a hole-punched pair its WireGuard then
            // sends toward the punch target, which opens its own NAT's filter for the
            // initiator: without it nothing left that side until the first probe (the lab's
            // cone <-> symmetric pairs stayed unconnected for the whole directTimeout). And
            // when the initiator's first initiation reached us before we had configured it
            // (dropped, retried only after 5 s), ours reaches a peer that has us already and
            // passes the filter its initiation opened: the NAT grid's second wave of pairs
            // at ~11.5 s.
            let attempting = probing || matches!(rt.state.actual(), ActualPath::Connecting);
            let every = if probing {
                PROBE_TRIGGER_EVERY
            } else {
                Duration::from_secs(5)
            };
            if attempting
                && rt
                    .last_trigger
                    .is_none_or(|t| now.duration_since(t) >= every)
                && let Some(ip) = rt.target.mesh_ip
            {
                rt.last_trigger = Some(now);
                triggers.push(ip);
            }
        }
        if let Some(sig) = &self.signal
            && !announce.is_empty()
        {
            // Before the endpoint write, so that the announcement still leaves through the
            // relay (the direct path is what the probe tests); a moment for the engine to
            // encrypt and send it before its endpoint changes.
            for ip in &announce {
                sig.announce(*ip);
            }
            tokio::time::sleep(ANNOUNCE_LEAD).await;
        }
        let Some(dp) = self.dp.as_mut() else {
            return stats;
        };
        for k in &reassert {
            dp.reassert_endpoint(k);
        }
        let result = dp.reconcile(iface, &configs).await;
        // After the write: a trigger sent before it would leave through the old endpoint
        // (the relay, at the start of a probe) and its reply would roam WireGuard back there.
        for ip in triggers {
            trigger_handshake(ip);
        }
        match result {
            Ok(rep) => {
                self.dp_error = None;
                if !rep.is_noop() {
                    tracing::info!(
                        wireguard = rep.wireguard_changes,
                        netlink = rep.netlink_changes,
                        "dataplane changed"
                    );
                }
                self.metrics
                    .dataplane_changes
                    .get_or_create(&KindLabel {
                        kind: "wireguard".into(),
                    })
                    .inc_by(rep.wireguard_changes as u64);
                self.metrics
                    .dataplane_changes
                    .get_or_create(&KindLabel {
                        kind: "netlink".into(),
                    })
                    .inc_by(rep.netlink_changes as u64);
            }
            Err(e) => {
                self.metrics.reconcile_errors.inc();
                self.dp_error = Some(format!("reconcile dataplane: {e}"));
                tracing::error!(error = %e, "dataplane reconcile failed");
            }
        }
        stats
    }
}

/// Time given to WireGuard to send probe announcements through the relay before the probe
/// points the peers at their direct endpoints.
const ANNOUNCE_LEAD: Duration = Duration::from_millis(20);

/// What a peer of a new spec does with the path state kept for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PeerUpdate {
    /// Same key: the state carries on.
    Keep,
    /// New to this agent: an existing recent handshake on the interface (an agent restart
    /// that kept the interface) is evidence for the path (`PathState::new`).
    Adopt,
    /// The peer's key changed, or ours was generated at this start: sessions on the interface
    /// belong to the old key and prove nothing (`PathState::fresh`). Keeping the old state
    /// instead read the new WireGuard peer's zeroed counters and missing handshake as "keys
    /// expired while sending", stalled every pair with the node onto the relay and doubled
    /// their probe backoff.
    Fresh,
}

pub(super) fn peer_update(
    kept_key: Option<&wirekube_relay_proto::PublicKey>,
    key: &wirekube_relay_proto::PublicKey,
    own_key_created: bool,
) -> PeerUpdate {
    match kept_key {
        Some(k) if k == key => PeerUpdate::Keep,
        Some(_) => PeerUpdate::Fresh,
        None if own_key_created => PeerUpdate::Fresh,
        None => PeerUpdate::Adopt,
    }
}

/// Sends one datagram to the peer's mesh IP; it is routed into the WireGuard interface, which
/// starts a handshake if it has no session. Port 9 (discard) has no listener, so the peer's
/// kernel answers with ICMP port unreachable through its tunnel: probes count that reply.
pub(super) fn trigger_handshake(ip: std::net::IpAddr) {
    let bind: SocketAddr = (Ipv4Addr::UNSPECIFIED, 0).into();
    if let Ok(s) = UdpSocket::bind(bind) {
        let _ = s.set_nonblocking(true);
        let _ = s.send_to(b"wirekube-handshake-trigger", SocketAddr::new(ip, 9));
    }
}

impl PeerRt {
    /// Feeds answers to earlier liveness requests to the state machine (before `observe`, so
    /// an answer that is merely read late still counts).
    fn poll_liveness(&mut self, local: std::net::IpAddr, now: Instant) {
        let Some(ip) = self.target.mesh_ip else {
            self.live = None;
            return;
        };
        if self.live.as_ref().is_none_or(|l| !l.is_for(local, ip)) {
            // Fails until our mesh IP is on the interface (first pass): retried every pass.
            self.live = liveness_io::LivenessSocket::open(local, ip)
                .map_err(|e| tracing::debug!(error = %e, "liveness socket"))
                .ok();
        }
        let answers = self.live.as_ref().map(|l| l.answers()).unwrap_or_default();
        for at in &answers {
            if let Some(rtt) = self.rtt.answered(*at, &RTT_TIMING) {
                tracing::debug!(peer = %self.target.name, rtt_us = rtt.as_micros(), "rtt sample");
            }
        }
        if !answers.is_empty() {
            if !self.state.liveness_armed() {
                tracing::info!(peer = %self.target.name, %ip, "peer answered a liveness request: fast failover armed");
            }
            self.state.liveness_answered(now);
        }
    }

    /// Liveness requests when due, otherwise an RTT request when due (crate::rtt); both
    /// are the same datagram, and every request is a possible RTT sample.
    fn send_liveness(&mut self, now: Instant) {
        let liveness = self.state.liveness_due(now);
        if !liveness && !self.rtt.due(self.state.rtt_ready(now), now, &RTT_TIMING) {
            return;
        }
        if let Some(l) = &self.live {
            tracing::debug!(peer = %self.target.name, liveness, "liveness request");
            let sent = l.send();
            if sent.answered_unknown_time {
                self.state.liveness_answered(now);
            }
            self.rtt.sent(sent.at, &RTT_TIMING);
            if liveness {
                self.state.liveness_sent(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wirekube_relay_proto::PublicKey;

    #[test]
    fn a_changed_key_on_either_side_starts_the_path_over() {
        let (k1, k2) = (PublicKey([1; 32]), PublicKey([2; 32]));
        use PeerUpdate::*;
        // (key kept for the peer, key in the spec, own key generated at this start) -> update
        for (kept, key, own_new, want) in [
            (Some(&k1), &k1, false, Keep),
            (Some(&k1), &k1, true, Keep),
            (Some(&k1), &k2, false, Fresh),
            (None, &k1, false, Adopt),
            (None, &k1, true, Fresh),
        ] {
            assert_eq!(
                peer_update(kept, key, own_new),
                want,
                "{kept:?} {key:?} {own_new}"
            );
        }
    }
}
