//! One reconcile pass, the I/O half: read the spec and WireGuard's stats, let
//! [`crate::step`] decide, then write the dataplane and send the datagrams it asked for
//! (handshake triggers, probe announcements, liveness and RTT requests).

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime};

use wirekube_crds::{WireKubePeer, WireKubePeerSpec};
use wirekube_dataplane::{Dataplane, InterfaceConfig, PeerConfig, PeerStats, ReconcileReport};

use super::Agent;
use super::liveness_io::LivenessSocket;
use super::probe_signal::ProbeSignal;
use crate::metrics::{KindLabel, Metrics, PathLabel};
use crate::pathstate::{Timing, Transition, Want};
use crate::spec::{self, PeerTarget};
use crate::step::targets::{PathSettings, TargetEvent, apply_targets, path_timing};
use crate::step::{PeerObservation, PeerStep, Request};

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
        self.update_peers(
            &targets,
            path_timing(spec, self.cfg.probe_min),
            now,
            now_sys,
        );
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
        self.submit_status(st);
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
    async fn reconcile_podnet(&mut self, spec: &WireKubePeerSpec) {
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

    /// Brings the per-peer paths in line with the spec (`step::targets`).
    fn update_peers(
        &mut self,
        targets: &[PeerTarget],
        timing: Timing,
        now: Instant,
        now_sys: SystemTime,
    ) {
        let settings = PathSettings {
            timing,
            own_key_created: self.cfg.key_created,
            clock_offset_secs: self.cfg.test_clock_offset_secs,
        };
        for event in apply_targets(&mut self.peers, targets, settings, now, now_sys) {
            match event {
                TargetEvent::KeyChanged(name) => {
                    self.liveness.remove(&name);
                    tracing::info!(peer = %name, "peer has a new public key: its path starts over");
                }
                TargetEvent::Transition(name, tr) => count_transition(&self.metrics, &name, tr),
            }
        }
        self.liveness
            .retain(|name, _| self.peers.contains_key(name));
    }

    /// Opens the dataplane if needed, lets every peer's path take a step on WireGuard's stats
    /// and applies the steps. Returns the stats read before converging (for status).
    pub(super) async fn converge(
        &mut self,
        iface: &InterfaceConfig,
        now: Instant,
        now_sys: SystemTime,
    ) -> Vec<PeerStats> {
        if !self.open_dataplane(iface).await {
            return Vec::new();
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
        let local = iface.address.addr();
        let steps = self.step_peers(&stats, local, now, now_sys);
        let configs = self.apply_steps(&steps, now, now_sys).await;
        self.announce_probes(&steps).await;
        self.write_dataplane(iface, &steps, &configs).await;
        stats
    }

    /// Opens the dataplane when it is not yet; false when that failed (retried next pass).
    async fn open_dataplane(&mut self, iface: &InterfaceConfig) -> bool {
        if self.dp.is_some() {
            return true;
        }
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
                true
            }
            Err(e) => {
                self.metrics.reconcile_errors.inc();
                self.dp_error = Some(format!("open dataplane: {e}"));
                tracing::error!(error = %e, "cannot open dataplane (will retry)");
                false
            }
        }
    }

    /// Gathers each peer's observation (stats, relay endpoint, liveness answers, the peer's
    /// probe announcement) and lets its path take a step.
    fn step_peers(
        &mut self,
        stats: &[PeerStats],
        local: IpAddr,
        now: Instant,
        now_sys: SystemTime,
    ) -> Vec<(String, PeerStep)> {
        if self.signal.as_ref().is_none_or(|s| !s.is_for(local)) {
            // Fails until our mesh IP is on the interface (first pass): retried every pass.
            self.signal = ProbeSignal::open(local)
                .map_err(|e| tracing::debug!(error = %e, "probe announcement socket"))
                .ok();
        }
        let announced_by = self
            .signal
            .as_ref()
            .map(|s| s.received())
            .unwrap_or_default();
        let relay = self.relay.as_ref();
        let is_relay = |ep: SocketAddr| {
            ep.ip().is_loopback() || relay.is_some_and(|r| r.bridge.is_relay_endpoint(ep).is_some())
        };
        let mut steps = Vec::with_capacity(self.peers.len());
        for (name, path) in self.peers.iter_mut() {
            let span = tracing::debug_span!("peer", peer = %name);
            let _g = span.enter();
            let wireguard = stats
                .iter()
                .find(|s| s.public_key == *path.target.key.as_bytes())
                .cloned();
            let mesh_ip = path.target.mesh_ip;
            let obs = PeerObservation {
                via_relay: wireguard
                    .as_ref()
                    .and_then(|s| s.endpoint)
                    .is_some_and(is_relay),
                wireguard,
                liveness_answers: liveness_answers(&mut self.liveness, name, mesh_ip, local),
                probe_announced: mesh_ip.is_some_and(|ip| announced_by.contains(&ip)),
            };
            let step = path.step(&obs, now, now_sys);
            for rtt in &step.rtt_samples {
                tracing::debug!(rtt_us = rtt.as_micros(), "rtt sample");
            }
            if step.liveness_armed {
                tracing::info!(ip = ?mesh_ip, "peer answered a liveness request: fast failover armed");
            }
            if step.joined_peer_probe {
                tracing::info!("peer announced a probe: probing with it");
            }
            if let Some(tr) = step.transition {
                self.direct_failed |= step.left_direct();
                count_transition(&self.metrics, name, tr);
            }
            steps.push((name.clone(), step));
        }
        steps
    }

    /// Sends the liveness and RTT requests the steps ask for (feeding the send back to the
    /// path) and builds each peer's WireGuard config, opening a relay bridge socket for the
    /// peers the relay carries.
    async fn apply_steps(
        &mut self,
        steps: &[(String, PeerStep)],
        now: Instant,
        now_sys: SystemTime,
    ) -> Vec<PeerConfig> {
        let mut configs = Vec::with_capacity(steps.len());
        for (name, step) in steps {
            let Some(path) = self.peers.get_mut(name) else {
                continue;
            };
            if let Some(request) = step.request
                && let Some(l) = self.liveness.get(name)
            {
                let liveness = request == Request::Liveness;
                tracing::debug!(peer = %name, liveness, "liveness request");
                let sent = l.send();
                path.request_sent(request, sent.at, sent.answered_unknown_time, now);
            }
            let relay_endpoint = match (step.want, &self.relay) {
                (Want::Relay, Some(r)) => {
                    match r.bridge.endpoint_for(*path.target.key.as_bytes()).await {
                        Ok(a) => Some(a),
                        Err(e) => {
                            tracing::warn!(peer = %name, error = %e, "no relay socket for peer");
                            None
                        }
                    }
                }
                _ => None,
            };
            configs.push(step.config(&path.target, relay_endpoint, now_sys));
        }
        configs
    }

    /// Tells the peers whose path started a probe (through the relay, before the endpoint
    /// write, so that the announcement still leaves over the relay: the direct path is what
    /// the probe tests), with a moment for the engine to encrypt and send it.
    async fn announce_probes(&self, steps: &[(String, PeerStep)]) {
        let Some(sig) = &self.signal else {
            return;
        };
        let mut announced = false;
        for ip in steps.iter().filter_map(|(_, s)| s.announce_probe) {
            sig.announce(ip);
            announced = true;
        }
        if announced {
            tokio::time::sleep(ANNOUNCE_LEAD).await;
        }
    }

    /// Writes the configs (re-pointing probing peers WireGuard roamed back to the relay),
    /// then sends the handshake triggers.
    async fn write_dataplane(
        &mut self,
        iface: &InterfaceConfig,
        steps: &[(String, PeerStep)],
        configs: &[PeerConfig],
    ) {
        let Some(dp) = self.dp.as_mut() else {
            return;
        };
        for (name, _) in steps.iter().filter(|(_, s)| s.reassert_endpoint) {
            if let Some(p) = self.peers.get(name) {
                dp.reassert_endpoint(p.target.key.as_bytes());
            }
        }
        for (name, s) in steps.iter() {
            if let (Some(how), Some(p)) = (s.restart, self.peers.get(name)) {
                dp.restart_handshake(p.target.key.as_bytes(), how);
            }
        }
        let result = dp.reconcile(iface, configs).await;
        // After the write: a trigger sent before it would leave through the old endpoint
        // (the relay, at the start of a probe) and its reply would roam WireGuard back there.
        let mut triggers: Vec<IpAddr> = steps.iter().filter_map(|(_, s)| s.trigger).collect();
        if let Ok(rep) = &result {
            let now = Instant::now();
            for path in self.peers.values_mut() {
                if rep.endpoints_written.contains(path.target.key.as_bytes())
                    && let Some(ip) = path.endpoint_written(now)
                    && !triggers.contains(&ip)
                {
                    tracing::debug!(peer = %path.target.name, "endpoint written: handshake trigger");
                    triggers.push(ip);
                }
            }
        }
        for ip in triggers {
            trigger_handshake(ip);
        }
        match result {
            Ok(rep) => {
                self.dp_error = None;
                count_dataplane_changes(&self.metrics, &rep);
            }
            Err(e) => {
                self.metrics.reconcile_errors.inc();
                self.dp_error = Some(format!("reconcile dataplane: {e}"));
                tracing::error!(error = %e, "dataplane reconcile failed");
            }
        }
    }
}

/// Time given to WireGuard to send probe announcements through the relay before the probe
/// points the peers at their direct endpoints.
const ANNOUNCE_LEAD: Duration = Duration::from_millis(20);

fn count_transition(metrics: &Metrics, peer: &str, tr: Transition) {
    metrics
        .transitions
        .get_or_create(&PathLabel {
            path: format!("{:?}", tr.to).to_lowercase(),
        })
        .inc();
    tracing::info!(peer, from = ?tr.from, to = ?tr.to, cause = ?tr.cause, "path transition");
}

fn count_dataplane_changes(metrics: &Metrics, rep: &ReconcileReport) {
    if !rep.is_noop() {
        tracing::info!(
            wireguard = rep.wireguard_changes,
            netlink = rep.netlink_changes,
            "dataplane changed"
        );
    }
    for (kind, n) in [
        ("wireguard", rep.wireguard_changes),
        ("netlink", rep.netlink_changes),
    ] {
        metrics
            .dataplane_changes
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc_by(n as u64);
    }
}

/// Answers to earlier liveness requests to the peer's mesh IP `peer_ip`, opening (or
/// re-opening, after an address change) its socket first.
fn liveness_answers(
    sockets: &mut BTreeMap<String, LivenessSocket>,
    name: &str,
    peer_ip: Option<IpAddr>,
    local: IpAddr,
) -> Vec<Instant> {
    let Some(ip) = peer_ip else {
        sockets.remove(name);
        return Vec::new();
    };
    if sockets.get(name).is_none_or(|l| !l.is_for(local, ip)) {
        // Fails until our mesh IP is on the interface (first pass): retried every pass.
        match LivenessSocket::open(local, ip) {
            Ok(l) => {
                sockets.insert(name.to_owned(), l);
            }
            Err(e) => {
                sockets.remove(name);
                tracing::debug!(error = %e, "liveness socket");
            }
        }
    }
    sockets.get(name).map(|l| l.answers()).unwrap_or_default()
}

/// Sends one datagram to the peer's mesh IP; it is routed into the WireGuard interface, which
/// starts a handshake if it has no session. Port 9 (discard) has no listener, so the peer's
/// kernel answers with ICMP port unreachable through its tunnel: probes count that reply.
fn trigger_handshake(ip: IpAddr) {
    let bind: SocketAddr = (Ipv4Addr::UNSPECIFIED, 0).into();
    if let Ok(s) = UdpSocket::bind(bind) {
        let _ = s.set_nonblocking(true);
        let _ = s.send_to(b"wirekube-handshake-trigger", SocketAddr::new(ip, 9));
    }
}
