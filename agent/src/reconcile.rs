//! The agent's main loop: spec, token and relay changes, a stats tick and discovery rounds
//! all lead to one idempotent reconcile pass (dataplane converge + status).

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tracing::Instrument;
use wirekube_crds::{
    ActualPath, Engine, PathReason, PeerConnection, WireKubePeer, WireKubePeerStatus,
    conditions as ct, duration::parse_duration,
};
use wirekube_dataplane::{
    Dataplane, EngineChoice, EngineKind, InterfaceConfig, PeerStats, RelayBridge,
};
use wirekube_relay_proto::{ConnectionState, RelayClient, RelayClientConfig, Status};

use crate::discovery::{self, DiscoveryReport, DiscoveryState, Retransmit, candidates};
use crate::identity::Identity;
use crate::kubeapi::{self, TokenWatch};
use crate::metrics::{KindLabel, Metrics, PathLabel};
use crate::pathstate::{Observation, PathState, Phase, Timing, WallClock};
use crate::spec::{self, Current, LocalSettings, PeerTarget};
use crate::status::{self, CondInput};

/// Trigger cadence while probing a direct path (several per probe window).
const PROBE_TRIGGER_EVERY: Duration = Duration::from_millis(300);

/// Stats are read this often while a probe runs, so that it is confirmed (or given up) within
/// its short window rather than at the next regular stats tick.
const PROBE_TICK: Duration = Duration::from_millis(250);

/// How long the first discovery waits for STUN servers (the relay being published) before the
/// dataplane takes the WireGuard port anyway.
const FIRST_DISCOVERY_GRACE: Duration = Duration::from_secs(30);

/// Settings from flags.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node: String,
    pub namespace: String,
    pub engine: EngineChoice,
    pub local: LocalSettings,
    /// How often WireGuard stats are read (handshake detection).
    pub stats_interval: Duration,
    /// Status is re-applied at least this often even when nothing significant changed.
    pub heartbeat: Duration,
    /// NAT re-check period.
    pub discovery_interval: Duration,
    /// First wait before probing a fallen-back direct path again (then doubling, up to 8x).
    pub probe_min: Duration,
}

enum Wake {
    Shutdown,
    WatchEnded,
    Other,
    DiscoveryDue,
    Discovered(Option<DiscoveryReport>),
}

struct PeerRt {
    target: PeerTarget,
    state: PathState,
    last_trigger: Option<Instant>,
}

struct RelayRt {
    addr: String,
    token: Vec<u8>,
    client: RelayClient,
    bridge: RelayBridge,
    state_rx: watch::Receiver<ConnectionState>,
}

pub struct Agent {
    cfg: AgentConfig,
    id: Identity,
    client: kube::Client,
    metrics: Arc<Metrics>,
    dp: Option<Dataplane>,
    dp_error: Option<String>,
    relay: Option<RelayRt>,
    peers: BTreeMap<String, PeerRt>,
    discovery: DiscoveryState,
    last_status: Option<WireKubePeerStatus>,
    last_patch: Option<Instant>,
}

fn engine_of(k: EngineKind) -> Engine {
    match k {
        EngineKind::Kernel => Engine::Kernel,
        EngineKind::UserspaceExternal => Engine::UserspaceExternal,
        EngineKind::UserspaceEmbedded => Engine::UserspaceEmbedded,
    }
}

fn timing(spec: &wirekube_crds::WireKubePeerSpec, probe_min: Duration) -> Timing {
    Timing::with_probe_min(
        parse_duration(&spec.direct_timeout).unwrap_or(Duration::from_secs(10)),
        probe_min,
    )
}

/// Converts a wall-clock handshake time to the monotonic clock the state machine uses.
fn to_instant(t: SystemTime, now_sys: SystemTime, now: Instant) -> Instant {
    let age = now_sys.duration_since(t).unwrap_or(Duration::ZERO);
    now.checked_sub(age).unwrap_or(now)
}

impl Agent {
    pub fn new(
        cfg: AgentConfig,
        id: Identity,
        client: kube::Client,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            cfg,
            id,
            client,
            metrics,
            dp: None,
            dp_error: None,
            relay: None,
            peers: BTreeMap::new(),
            discovery: DiscoveryState::default(),
            last_status: None,
            last_patch: None,
        }
    }

    /// Runs until `shutdown` resolves. Leaves the interface, routes and keys in place.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let (mut peer_rx, peer_task) = kubeapi::watch_peer(self.client.clone(), &self.cfg.node);
        let mut token = TokenWatch::new();
        let mut stats_tick = tokio::time::interval(self.cfg.stats_interval);
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut disc_tick = tokio::time::interval(self.cfg.discovery_interval);
        disc_tick.reset();
        let mut disc_task: Option<tokio::task::JoinHandle<DiscoveryReport>> = None;
        let mut first_discovery_done = false;
        // STUN servers the last discovery used: a change (typically the relay endpoint being
        // published after the agent started) triggers a new round instead of waiting for the
        // periodic re-check.
        let mut discovered_with: Vec<String> = Vec::new();
        let started = Instant::now();
        tracing::info!(node = %self.cfg.node, public_key = %self.id.public_key(), "agent running; waiting for this node's WireKubePeer");
        loop {
            let relay_changed = async {
                match self.relay.as_mut() {
                    Some(r) => {
                        let _ = r.state_rx.changed().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let disc_done = async {
                match disc_task.as_mut() {
                    Some(t) => t.await.ok(),
                    None => std::future::pending().await,
                }
            };
            let probing = self
                .peers
                .values()
                .any(|p| matches!(p.state.phase(), Phase::Probing { .. }));
            let wake = tokio::select! {
                _ = &mut shutdown => Wake::Shutdown,
                _ = tokio::time::sleep(PROBE_TICK), if probing => Wake::Other,
                r = peer_rx.changed() => if r.is_err() { Wake::WatchEnded } else { Wake::Other },
                _ = token.changed().changed() => Wake::Other,
                _ = relay_changed => Wake::Other,
                _ = stats_tick.tick() => Wake::Other,
                _ = disc_tick.tick() => Wake::DiscoveryDue,
                r = disc_done => Wake::Discovered(r),
            };
            match wake {
                Wake::Shutdown => break,
                Wake::WatchEnded => {
                    tracing::error!("peer watch ended");
                    break;
                }
                Wake::Other => {}
                Wake::DiscoveryDue => {
                    if disc_task.is_none() && first_discovery_done {
                        let p = peer_rx.borrow().clone();
                        disc_task = self.spawn_discovery(&p, None);
                    }
                }
                Wake::Discovered(r) => {
                    disc_task = None;
                    if let Some(r) = r {
                        self.on_discovery(r);
                    }
                }
            }
            let peer = peer_rx.borrow_and_update().clone();
            let Some(peer) = peer else {
                self.metrics.tick();
                continue;
            };
            token.set(
                &self.client,
                &self.cfg.namespace,
                peer.spec.relay_token_secret.as_deref(),
            );
            let servers = discovery::stun_servers(&peer.spec);
            if !first_discovery_done
                && servers.is_empty()
                && peer.spec.relay_mode != wirekube_crds::RelayMode::Never
                && started.elapsed() < FIRST_DISCOVERY_GRACE
            {
                // The relay's STUN responder is not published yet. The mapping of the
                // WireGuard port can only be learned before the dataplane binds it, so wait
                // (briefly) for a server rather than bind now and never know it.
                self.metrics.tick();
                continue;
            }
            if first_discovery_done && disc_task.is_none() && servers != discovered_with {
                discovered_with = servers.clone();
                disc_task = self.spawn_discovery(&Some(peer.clone()), None);
            }
            if !first_discovery_done {
                discovered_with = servers.clone();
                // First discovery runs from the WireGuard port itself, before the dataplane
                // binds it (lab-notes §7.7). Publish the key and discovery result first: the
                // operator needs both to plan anyone's path to us.
                let port = (self.dp.is_none()).then_some(peer.spec.listen_port);
                if let Some(h) = self.spawn_discovery(&Some(peer.clone()), port)
                    && let Ok(r) = h.await
                {
                    self.on_discovery(r);
                }
                self.seed_srflx(&peer);
                first_discovery_done = true;
            }
            self.ensure_relay(&peer, token.token());
            let span = tracing::info_span!("reconcile", node = %self.cfg.node, generation = ?peer.metadata.generation);
            let t = Instant::now();
            self.reconcile(&peer).instrument(span).await;
            self.metrics
                .reconcile_seconds
                .observe(t.elapsed().as_secs_f64());
            self.metrics.tick();
        }
        peer_task.abort();
        if let Some(r) = self.relay.take() {
            r.client.shutdown().await;
        }
        tracing::info!("shutting down; interface, routes and keys are left in place");
    }

    fn spawn_discovery(
        &self,
        peer: &Option<Arc<WireKubePeer>>,
        port: Option<u16>,
    ) -> Option<tokio::task::JoinHandle<DiscoveryReport>> {
        let peer = peer.as_ref()?;
        let servers = discovery::stun_servers(&peer.spec);
        let local_ips: Vec<_> = candidates::local_addrs()
            .unwrap_or_default()
            .into_iter()
            .map(|a| a.ip)
            .collect();
        self.metrics.discovery_runs.inc();
        Some(
            tokio::spawn(
                async move {
                    discovery::discover(&servers, port, local_ips, Retransmit::default()).await
                }
                .instrument(tracing::debug_span!("discovery")),
            ),
        )
    }

    fn on_discovery(&mut self, r: DiscoveryReport) {
        let msg = r.message.clone();
        if self.discovery.update(r) {
            tracing::info!(nat = ?self.discovery.nat_type(), public_ip = ?self.discovery.public_ip(), srflx = ?self.discovery.srflx, "discovery changed: {msg}");
        }
    }

    /// After a restart the WireGuard port is already bound, so the first round could not
    /// measure its mapping; keep the previous run's srflx if the public IP is unchanged.
    fn seed_srflx(&mut self, peer: &WireKubePeer) {
        let Some(st) = peer.status.as_ref() else {
            return;
        };
        let prev = st
            .candidates
            .iter()
            .filter(|c| c.kind == wirekube_crds::CandidateKind::Srflx)
            .find_map(|c| c.address.parse::<SocketAddr>().ok());
        if let Some(p) = prev
            && self.discovery.public_ip() == Some(p.ip())
        {
            self.discovery.seed_srflx(p);
        }
    }

    /// Starts, replaces or stops the relay client and bridge to match the spec and token.
    fn ensure_relay(&mut self, peer: &WireKubePeer, token: Option<Vec<u8>>) {
        let want = match (spec::relay_allowed(&peer.spec), token) {
            (true, Some(t)) => Some((peer.spec.relay_endpoints[0].clone(), t)),
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
            let (client, receiver) = RelayClient::start(RelayClientConfig::new(
                addr.clone(),
                self.id.relay_key(),
                token.clone(),
            ));
            let bridge = RelayBridge::new(client.clone(), receiver, peer.spec.listen_port);
            let state_rx = client.watch_state();
            self.relay = Some(RelayRt {
                addr,
                token,
                client,
                bridge,
                state_rx,
            });
        }
    }

    async fn reconcile(&mut self, peer: &WireKubePeer) {
        self.metrics.reconciles.inc();
        let now = Instant::now();
        let now_sys = SystemTime::now();
        let spec = &peer.spec;
        let iface = spec::interface_config(spec, self.id.private_bytes(), self.cfg.local);
        let (targets, problems) = spec::peer_targets(spec);
        for p in &problems {
            tracing::warn!("spec: {p}");
        }
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
        let st = self.build_status(peer, &stats, now, now_sys);
        self.maybe_patch(st, now).await;
    }

    fn update_peers(&mut self, targets: &[PeerTarget], timing: Timing, now: Instant) {
        self.peers
            .retain(|name, _| targets.iter().any(|t| &t.name == name));
        for t in targets {
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
                    let mut state = PathState::new(timing, t.plan, now);
                    state.set_clock(WallClock::system(now));
                    self.peers.insert(
                        t.name.clone(),
                        PeerRt {
                            target: t.clone(),
                            state,
                            last_trigger: None,
                        },
                    );
                }
            }
        }
    }

    /// Opens the dataplane if needed, feeds stats to the state machines and converges.
    /// Returns the stats read before converging (for status).
    async fn converge(
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
            if let Some(tr) = rt.state.observe(&obs, now) {
                self.metrics
                    .transitions
                    .get_or_create(&PathLabel {
                        path: format!("{:?}", tr.to).to_lowercase(),
                    })
                    .inc();
                tracing::info!(from = ?tr.from, to = ?tr.to, cause = ?tr.cause, "path transition");
            }
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
            // initiation when a peer is added (boringtun, lab-notes §4.1).
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
            let attempting = probing
                || (rt.target.initiate && matches!(rt.state.actual(), ActualPath::Connecting));
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

    fn build_status(
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
        let dp_ok = self.dp.is_some() && self.dp_error.is_none();
        conds.push(CondInput::new(
            ct::DATAPLANE_READY,
            dp_ok,
            if dp_ok { "Reconciled" } else { "Error" },
            self.dp_error
                .clone()
                .unwrap_or_else(|| "interface, peers and routes converged".into()),
        ));
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

    async fn maybe_patch(&mut self, st: WireKubePeerStatus, now: Instant) {
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

/// Sends one datagram to the peer's mesh IP; it is routed into the WireGuard interface, which
/// starts a handshake if it has no session. Port 9 (discard): nothing answers it.
fn trigger_handshake(ip: std::net::IpAddr) {
    let bind: SocketAddr = (Ipv4Addr::UNSPECIFIED, 0).into();
    if let Ok(s) = UdpSocket::bind(bind) {
        let _ = s.set_nonblocking(true);
        let _ = s.send_to(b"wirekube-handshake-trigger", SocketAddr::new(ip, 9));
    }
}
