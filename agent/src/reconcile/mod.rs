//! The agent's main loop: spec, token and relay changes, a stats tick and discovery rounds
//! all lead to one idempotent reconcile pass: observations are gathered here, decided by
//! [`crate::step`] (pure) and applied here (dataplane write, datagrams, status patch).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;
use wirekube_crds::{Engine, WireKubePeer};
use wirekube_dataplane::{Dataplane, EngineChoice, EngineKind};

use crate::discovery::{
    self, DiscoveryReport, DiscoveryState, FIRST_DISCOVERY_GRACE, Retransmit, candidates,
};
use crate::identity::Identity;
use crate::kubeapi::{self, TokenWatch};
use crate::metrics::Metrics;
use crate::pathstate::Phase;
use crate::spec::LocalSettings;
use crate::step::PeerPath;
use liveness_io::LivenessSocket;
use relay_link::RelayRt;

mod converge;
mod first_round;
mod liveness_io;
mod probe_signal;
mod relay_link;
mod report;
mod status_writer;

/// Stats are read this often while a probe runs, so that it is confirmed (or given up) within
/// its short window rather than at the next regular stats tick.
const PROBE_TICK: Duration = Duration::from_millis(250);

/// A relay client that has not authenticated for this long moves on to the next
/// `relayEndpoints` entry (round robin), e.g. when one address of the relay is unreachable
/// from this node.
const RELAY_FAILOVER_AFTER: Duration = Duration::from_secs(10);

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
    /// Where the CNI configuration goes when the agent provides the pod network.
    pub cni_conf_dir: std::path::PathBuf,
    /// The private key was generated at this start (none on disk): WireGuard sessions on an
    /// interface left by a previous run belong to the old key and are not adopted.
    pub key_created: bool,
    /// Test only: seconds added to the system clock for probe slots, to emulate a node whose
    /// clock is off (`WIREKUBE_TEST_CLOCK_OFFSET_SECS`; 0 in production).
    pub test_clock_offset_secs: i64,
}

enum Wake {
    Shutdown,
    WatchEnded,
    Other,
    DiscoveryDue,
    Discovered(Option<DiscoveryReport>),
}

/// The discovery rounds the main loop runs besides the reconcile passes.
struct Rounds {
    /// The round in flight.
    task: Option<tokio::task::JoinHandle<DiscoveryReport>>,
    /// Wakes the periodic NAT re-check (and a retry of the first round).
    tick: tokio::time::Interval,
    /// The first round (from the WireGuard port, before the dataplane binds it) is done.
    first_done: bool,
    /// STUN servers the last round used: a change (typically the relay endpoint being
    /// published after the agent started) triggers a new round instead of waiting for the
    /// periodic re-check.
    servers: Vec<String>,
    /// When the agent started (the first-discovery grace).
    started: Instant,
}

impl Rounds {
    fn new(interval: Duration) -> Self {
        let mut tick = tokio::time::interval(interval);
        tick.reset();
        Self {
            task: None,
            tick,
            first_done: false,
            servers: Vec::new(),
            started: Instant::now(),
        }
    }
}

pub struct Agent {
    cfg: AgentConfig,
    id: Identity,
    client: kube::Client,
    metrics: Arc<Metrics>,
    dp: Option<Dataplane>,
    dp_error: Option<String>,
    /// The pod network last put in place, and the outcome (`None`: not asked for).
    podnet: Option<(Option<crate::podnet::PodNet>, Result<(), String>)>,
    /// The interface the MSS clamp was last put on, or why it failed.
    mss: Option<Result<String, String>>,
    relay: Option<RelayRt>,
    /// Index into `relayEndpoints` of the relay address in use.
    relay_choice: usize,
    /// Per peer of the spec: its path, decided by `crate::step`.
    peers: BTreeMap<String, PeerPath>,
    /// Liveness (and RTT) request sockets to the peers' mesh IPs, opened on first use.
    liveness: BTreeMap<String, LivenessSocket>,
    discovery: DiscoveryState,
    /// Discovery rounds in a row in which no STUN server answered.
    discovery_failures: u32,
    /// Writes the statuses this loop builds, off the loop (`status_writer`).
    status: status_writer::StatusWriter,
    /// Peers of the last spec that were skipped, and why (the `PeersAccepted` condition).
    spec_problems: Vec<String>,
    /// Probe announcements to and from peers (opened once our mesh IP is up).
    signal: Option<probe_signal::ProbeSignal>,
    /// A direct path failed in the last reconcile pass (a NAT re-check may be due).
    direct_failed: bool,
    /// The last NAT re-check a failed direct path triggered, and until when silent rounds
    /// are retried rather than published (`discovery::RECHECK_WINDOW`).
    last_recheck: Option<Instant>,
    recheck_until: Option<Instant>,
}

fn engine_of(k: EngineKind) -> Engine {
    match k {
        EngineKind::Kernel => Engine::Kernel,
        EngineKind::UserspaceExternal => Engine::UserspaceExternal,
        EngineKind::UserspaceEmbedded => Engine::UserspaceEmbedded,
    }
}

impl Agent {
    pub fn new(
        cfg: AgentConfig,
        id: Identity,
        client: kube::Client,
        metrics: Arc<Metrics>,
    ) -> Self {
        let status = {
            let (client, node) = (client.clone(), cfg.node.clone());
            status_writer::StatusWriter::spawn(cfg.heartbeat, metrics.clone(), move |st| {
                let (client, node) = (client.clone(), node.clone());
                async move { kubeapi::patch_status(&client, &node, &st).await }
            })
        };
        Self {
            cfg,
            id,
            client,
            metrics,
            dp: None,
            dp_error: None,
            podnet: None,
            mss: None,
            relay: None,
            relay_choice: 0,
            peers: BTreeMap::new(),
            liveness: BTreeMap::new(),
            discovery: DiscoveryState::default(),
            discovery_failures: 0,
            status,
            spec_problems: Vec::new(),
            signal: None,
            direct_failed: false,
            last_recheck: None,
            recheck_until: None,
        }
    }

    /// Runs until `shutdown` resolves. Leaves the interface, routes and keys in place.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let (mut peer_rx, peer_task) = kubeapi::watch_peer(self.client.clone(), &self.cfg.node);
        let mut token = TokenWatch::new();
        let mut stats_tick = tokio::time::interval(self.cfg.stats_interval);
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rounds = Rounds::new(self.cfg.discovery_interval);
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
                match rounds.task.as_mut() {
                    Some(t) => t.await.ok(),
                    None => std::future::pending().await,
                }
            };
            // Probes and liveness requests in flight are decided within a second or so:
            // sample faster than the stats tick while they last.
            let probing = self
                .peers
                .values()
                .any(|p| matches!(p.state.phase(), Phase::Probing { .. }) || p.state.fast_tick());
            let wake = tokio::select! {
                _ = &mut shutdown => Wake::Shutdown,
                _ = tokio::time::sleep(PROBE_TICK), if probing => Wake::Other,
                r = peer_rx.changed() => if r.is_err() { Wake::WatchEnded } else { Wake::Other },
                _ = token.changed().changed() => Wake::Other,
                _ = relay_changed => Wake::Other,
                _ = stats_tick.tick() => Wake::Other,
                _ = rounds.tick.tick() => Wake::DiscoveryDue,
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
                    // Before the first round completes, `ready_for_pass` retries it.
                    if rounds.task.is_none() && rounds.first_done {
                        let p = peer_rx.borrow().clone();
                        rounds.task = self.spawn_discovery(&p, None);
                    }
                }
                Wake::Discovered(r) => {
                    rounds.task = None;
                    if let Some(r) = r {
                        rounds.tick.reset_after(self.on_discovery(r));
                    }
                }
            }
            let peer = peer_rx.borrow_and_update().clone();
            if let Some(peer) = peer
                && self.ready_for_pass(&peer, &mut token, &mut rounds).await
            {
                self.pass(&peer, &mut rounds).await;
            }
            self.metrics.tick();
        }
        peer_task.abort();
        if let Some(r) = self.relay.take() {
            r.client.shutdown().await;
        }
        tracing::info!("shutting down; interface, routes and keys are left in place");
    }

    /// Token, relay client and discovery rounds for this spec; false while the first
    /// discovery round waits (for a STUN server to be published, or to retry).
    async fn ready_for_pass(
        &mut self,
        peer: &Arc<WireKubePeer>,
        token: &mut TokenWatch,
        rounds: &mut Rounds,
    ) -> bool {
        self.discovery.listen_port = Some(peer.spec.listen_port);
        token.set(
            &self.client,
            &self.cfg.namespace,
            peer.spec.relay_token_secret.as_deref(),
        );
        // Before the first discovery too: a relay that answers over TCP while STUN stays
        // silent tells that this node's UDP is blocked (discovery::after_first_round).
        self.ensure_relay(peer, token.token());
        let servers = discovery::stun_servers(&peer.spec);
        if !rounds.first_done
            && servers.is_empty()
            && peer.spec.relay_mode != wirekube_crds::RelayMode::Never
            && rounds.started.elapsed() < FIRST_DISCOVERY_GRACE
        {
            // The relay's STUN responder is not published yet. The mapping of the
            // WireGuard port can only be learned before the dataplane binds it, so wait
            // (briefly) for a server rather than bind now and never know it.
            return false;
        }
        if rounds.first_done && rounds.task.is_none() && servers != rounds.servers {
            rounds.servers = servers.clone();
            rounds.task = self.spawn_discovery(&Some(peer.clone()), None);
        }
        if !rounds.first_done {
            rounds.servers = servers;
            if !self
                .first_discovery(peer, token, rounds.started, &mut rounds.tick)
                .await
            {
                return false;
            }
            rounds.first_done = true;
        }
        true
    }

    /// One reconcile pass (timed), then a NAT re-check if a direct path failed in it.
    async fn pass(&mut self, peer: &Arc<WireKubePeer>, rounds: &mut Rounds) {
        let span = tracing::info_span!("reconcile", node = %self.cfg.node, generation = ?peer.metadata.generation);
        let t = Instant::now();
        self.reconcile(peer).instrument(span).await;
        self.metrics
            .reconcile_seconds
            .observe(t.elapsed().as_secs_f64());
        if rounds.task.is_none() {
            rounds.task = self.recheck_after_direct_failure(peer);
        }
    }

    /// A NAT re-check right away when a direct path failed in the last pass
    /// (`discovery::recheck_now`: a new public address?).
    fn recheck_after_direct_failure(
        &mut self,
        peer: &Arc<WireKubePeer>,
    ) -> Option<tokio::task::JoinHandle<DiscoveryReport>> {
        let now = Instant::now();
        let failed = std::mem::take(&mut self.direct_failed);
        if !discovery::recheck_now(failed, self.last_recheck, now) {
            return None;
        }
        tracing::info!("a direct path failed: re-checking the NAT now (new public address?)");
        self.last_recheck = Some(now);
        self.recheck_until = Some(now + discovery::RECHECK_WINDOW);
        self.spawn_discovery(&Some(peer.clone()), None)
    }

    fn spawn_discovery(
        &self,
        peer: &Option<Arc<WireKubePeer>>,
        port: Option<u16>,
    ) -> Option<tokio::task::JoinHandle<DiscoveryReport>> {
        let peer = peer.as_ref()?;
        let servers = discovery::stun_servers(&peer.spec);
        let local = candidates::local_addrs().unwrap_or_default();
        let external = discovery::external_ips(&peer.spec);
        self.metrics.discovery_runs.inc();
        Some(tokio::spawn(
            async move {
                discovery::discover(&servers, port, local, external, Retransmit::default()).await
            }
            .instrument(tracing::debug_span!("discovery")),
        ))
    }

    /// Records a discovery round; returns how long to wait before the next one.
    fn on_discovery(&mut self, r: DiscoveryReport) -> Duration {
        let window_left = self
            .recheck_until
            .and_then(|t| t.checked_duration_since(Instant::now()));
        let type_changed = r.classification.nat_type != self.discovery.nat_type();
        if let discovery::RoundVerdict::RetryIn(wait) =
            discovery::judge_round(r.stun_reachable, window_left, type_changed)
        {
            tracing::debug!(
                answered = r.stun_reachable,
                nat = ?r.classification.nat_type,
                "round right after a direct path failed not published (silent, or a NAT type change to confirm after the window): {}",
                r.message
            );
            return wait;
        }
        if r.stun_reachable {
            self.recheck_until = None;
        }
        let msg = r.message.clone();
        let conclusive =
            r.stun_reachable && r.classification.nat_type != wirekube_crds::NatType::Unknown;
        let (wait, failures) = discovery::next_check(
            conclusive,
            self.discovery_failures,
            self.cfg.discovery_interval,
        );
        self.discovery_failures = failures;
        if self.discovery.update(r) {
            tracing::info!(nat = ?self.discovery.nat_type(), public_ip = ?self.discovery.public_ip(), srflx = ?self.discovery.srflx, "discovery changed: {msg}");
        }
        wait
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
}
