//! The mesh controller: watches meshes, nodes, peers and the relay objects; each reconcile
//! observes (caches, three GETs), decides (`decide.rs`, pure), applies (`apply.rs`,
//! `peer_writes.rs`) and writes the status.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as CtrlConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{Instrument, debug, info, info_span, warn};
use wirekube_crds::{MESH_LABEL, OPERATOR_MANAGER, WireKubeMesh, WireKubePeer};
use wirekube_kubeclient::WatchRetry;

use crate::apply::{RecentWrites, Writer};
use crate::decide::{self, MeshObserved, Rejected};
use crate::deferral::{self, Deferrals};
use crate::diff;
use crate::error::{Error, Result};
use crate::events::EventQueue;
use crate::joining::{self, KeyArrivals};
use crate::leadership::Leadership;
use crate::managed_relay;
use crate::metrics::Metrics;
use crate::nodes::{ClusterNode, select_nodes};
use crate::peer_writes;
use crate::relay_reconcile;
use crate::status;
use crate::triggers::{self, TriggerFilter};

/// Settings of the controllers.
#[derive(Clone, Debug)]
pub struct ControllerSettings {
    /// Namespace of the managed relay objects (the operator's namespace).
    pub namespace: String,
    /// Reporting instance for events (the pod name).
    pub identity: String,
    /// Relay image instead of the mesh's `relay.managed.image`.
    pub relay_image_override: Option<String>,
    /// Quiet time before a reconcile runs (kube-runtime's debounce: it restarts at every
    /// triggering change). Zero by default: changes during a reconcile are coalesced into the
    /// next one anyway, and a quiet time starved the operator while many agents reported.
    pub debounce: Duration,
    /// Periodic full resync.
    pub resync: Duration,
    /// How long a spec write that only records endpoints in use waits (`crate::deferral`).
    pub record_delay: Duration,
    /// How long spec updates wait while nodes publish their first keys (`crate::joining`).
    pub key_hold: joining::HoldTimes,
}

impl Default for ControllerSettings {
    fn default() -> Self {
        ControllerSettings {
            namespace: "wirekube-system".into(),
            identity: "wirekube-operator".into(),
            relay_image_override: None,
            debounce: Duration::ZERO,
            resync: Duration::from_secs(300),
            record_delay: deferral::RECORD_DELAY,
            key_hold: joining::HoldTimes::default(),
        }
    }
}

/// Shared state of one controller run.
pub struct Context {
    pub writer: Writer,
    pub settings: ControllerSettings,
    /// Events about the mesh, published by their own task (`crate::events`).
    pub events: EventQueue,
    pub nodes: Store<Node>,
    pub peers: Store<WireKubePeer>,
    /// Pods of the managed relays (operator namespace): where they run decides the
    /// NodePort endpoints.
    pub relay_pods: Store<Pod>,
    /// Spec writes that only record endpoints in use, waiting (`crate::deferral`).
    pub deferrals: Deferrals,
    /// The keys seen per mesh: in a mass start, spec updates wait for the rest (`crate::joining`).
    pub keys: KeyArrivals,
}

/// How long the API server keeps one watch open (`timeoutSeconds`); the client gives up on a
/// silent one 5 s later and watches again from where it was. A watch whose TCP connection died
/// without a FIN or RST (the operator's node behind a NAT that came back on a new public
/// address) stayed silent for kube's default 295 s, and the mesh was not re-planned meanwhile:
/// the NAT-reboot fault. The client's TCP keepalive (`wirekube_kubeclient`) now notices such a
/// connection within 5 s; this bound stays for what keepalive cannot see (a proxy or load
/// balancer in front of the API server that keeps its own TCP leg alive while the far one is
/// dead). Cost: one watch request per watch per 15 s when nothing changes (six watches here).
pub const WATCH_TIMEOUT_SECS: u32 = 15;

/// How the operator's watches retry: from 200 ms (on a fresh cluster the first list usually
/// fails on the API server's not yet routed Service address, and kube's 800 ms start delayed
/// the first plan by 1-2 s), doubling to 5 s rather than kube's 30 s: one or two replicas with
/// six watches each cost a down API server about one request a second per replica, and the
/// mesh is re-planned within 5 s of its return. Reset after 120 s without an error.
pub const WATCH_RETRY: WatchRetry = WatchRetry {
    first: Duration::from_millis(200),
    max: Duration::from_secs(5),
    reset: Duration::from_secs(120),
};

fn watch_config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT_SECS)
}

/// Runs the mesh controller until `stop` resolves. Every replica runs it from the start, so
/// its caches are warm whichever becomes leader; only while this replica is `leader` does a
/// reconcile do anything (plan, write), and each item of `leadership_gained` reconciles every
/// mesh.
pub async fn run(
    client: Client,
    settings: ControllerSettings,
    metrics: Metrics,
    leader: Arc<Leadership>,
    leadership_gained: impl Stream<Item = ()> + Send + 'static,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (nodes, node_writer) = reflector::store::<Node>();
    let node_events = plan_triggers(
        reflector::reflector(
            node_writer,
            watcher(Api::<Node>::all(client.clone()), watch_config()),
        )
        .backoff(WATCH_RETRY.backoff()),
        triggers::node_key,
    );
    let node_events = logged_watch("Node", node_events);
    let (peers, peer_writer) = reflector::store::<WireKubePeer>();
    let peer_events = plan_triggers(
        reflector::reflector(
            peer_writer,
            watcher(
                Api::<WireKubePeer>::all(client.clone()),
                watch_config().labels(MESH_LABEL),
            ),
        )
        .backoff(WATCH_RETRY.backoff()),
        triggers::peer_key,
    );
    let peer_events = logged_watch("WireKubePeer", peer_events);
    let relay_sel = watch_config().labels("app.kubernetes.io/name=wirekube-relay");
    let ns = settings.namespace.clone();
    let (relay_pods, pod_writer) = reflector::store::<Pod>();
    let pod_events = reflector::reflector(
        pod_writer,
        watcher(
            Api::<Pod>::namespaced(client.clone(), &ns),
            relay_sel.clone(),
        ),
    )
    .backoff(WATCH_RETRY.backoff())
    .touched_objects();
    let pod_events = logged_watch("relay Pod", pod_events);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: OPERATOR_MANAGER.into(),
            instance: Some(settings.identity.clone()),
        },
    );
    let events = EventQueue::start(recorder, metrics.clone(), leader.clone());
    let ctx = Arc::new(Context {
        writer: Writer {
            client: client.clone(),
            namespace: ns.clone(),
            metrics,
            leader,
            recent: RecentWrites::default(),
        },
        settings: settings.clone(),
        events,
        nodes,
        peers,
        relay_pods,
        deferrals: Deferrals::new(settings.record_delay),
        keys: KeyArrivals::new(settings.key_hold),
    });
    let (meshes, mesh_writer) = reflector::store::<WireKubeMesh>();
    let mesh_events = reflector::reflector(
        mesh_writer,
        watcher(Api::<WireKubeMesh>::all(client.clone()), watch_config()),
    )
    .backoff(WATCH_RETRY.backoff())
    .applied_objects();
    let ctrl = Controller::for_stream(logged_watch("WireKubeMesh", mesh_events), meshes.clone())
        .with_config(CtrlConfig::default().debounce(settings.debounce));
    ctrl.watches_stream(node_events, move |_: Node| {
        meshes
            .state()
            .iter()
            .map(|m| ObjectRef::from_obj(m.as_ref()))
            .collect::<Vec<_>>()
    })
    .watches_stream(peer_events, |p: WireKubePeer| {
        diff::peer_mesh(&p).map(ObjectRef::<WireKubeMesh>::new)
    })
    // A relay pod becoming ready, or moving, changes the NodePort endpoints.
    .watches_stream(pod_events, |p: Pod| relay_mesh(p.labels()))
    // The relay objects by their instance label, not `owns`: kube-runtime maps an owned
    // object to its owner's ref in the *child's* namespace, and the cluster-scoped mesh
    // then had two refs ("default" and "default.wirekube-system") that were reconciled as two
    // objects, concurrently. A replica that became leader after a failover reconciled only
    // the namespaced one: it re-planned on relay changes only, never on nodes or peers (the
    // fault suite's node-left after the failover, docs/operator.md).
    .watches_stream(
        logged_watch(
            "relay Deployment",
            watcher(
                Api::<PartialObjectMeta<Deployment>>::namespaced(client.clone(), &ns),
                relay_sel.clone(),
            )
            .backoff(WATCH_RETRY.backoff())
            .touched_objects(),
        ),
        |d| relay_mesh(d.labels()),
    )
    .watches_stream(
        logged_watch(
            "relay Service",
            watcher(
                Api::<PartialObjectMeta<Service>>::namespaced(client.clone(), &ns),
                relay_sel,
            )
            .backoff(WATCH_RETRY.backoff())
            .touched_objects(),
        ),
        |s| relay_mesh(s.labels()),
    )
    .reconcile_all_on(leadership_gained)
    .graceful_shutdown_on(stop)
    .run(reconcile, error_policy, ctx)
    .for_each(|r| async move {
        if let Err(e) = r {
            debug!(error = %e, "controller event");
        }
    })
    .await;
}

/// The mesh a relay object belongs to, by its instance label (cluster-scoped: no namespace).
fn relay_mesh(labels: &BTreeMap<String, String>) -> Option<ObjectRef<WireKubeMesh>> {
    (labels.get(managed_relay::INSTANCE_LABEL)).map(|m| ObjectRef::<WireKubeMesh>::new(m))
}

/// The objects of `events` worth a re-plan ([`TriggerFilter`]); the cache behind the stream
/// still sees every event.
fn plan_triggers<K: Resource>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    key: fn(&K) -> u64,
) -> impl Stream<Item = Result<K, watcher::Error>> {
    let mut filter = TriggerFilter::new(key);
    events.filter_map(move |ev| {
        std::future::ready(match ev {
            Ok(e) => filter.admit(e).map(Ok),
            Err(e) => Some(Err(e)),
        })
    })
}

/// Logs a watch's errors and keeps them from the controller; the watch itself retries on its
/// own backoff ([`WATCH_RETRY`], before this). Why: the controller wraps all its trigger
/// streams in one more backoff, which pauses *every* stream while it waits and grows with each
/// error from any of them. The six watches of one dead connection (the operator's NAT gateway
/// rebooted) failed together, that shared backoff grew to 0.9 + 2 + 3.5 + 8 + 20 + 28 s, and
/// the mesh was not re-planned for a minute (the NAT-reboot fault, docs/benchmarks.md).
fn logged_watch<T>(
    watch: &'static str,
    events: impl Stream<Item = Result<T, watcher::Error>>,
) -> impl Stream<Item = Result<T, watcher::Error>> {
    events.filter_map(move |ev| {
        std::future::ready(match ev {
            Ok(obj) => Some(Ok(obj)),
            Err(error) => {
                warn!(watch, %error, "watch failed; retrying on its own backoff");
                None
            }
        })
    })
}

fn error_policy(mesh: Arc<WireKubeMesh>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.writer.metrics.failure(err.metric_reason());
    warn!(mesh = %mesh.name_any(), error = %err, "reconcile failed");
    Action::requeue(err.retry_after())
}

async fn reconcile(mesh: Arc<WireKubeMesh>, ctx: Arc<Context>) -> Result<Action> {
    if !ctx.writer.leader.is_elected() {
        // A standby: its caches follow the cluster, the leader plans and writes. Gaining the
        // Lease reconciles every mesh (`leadership_gained`).
        return Ok(Action::await_change());
    }
    let span = info_span!(
        "reconcile",
        mesh = %mesh.name_any(),
        generation = mesh.metadata.generation.unwrap_or(0)
    );
    let started = Instant::now();
    ctx.writer.metrics.reconciles.inc();
    let r = reconcile_inner(&mesh, &ctx).instrument(span).await;
    ctx.writer
        .metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    r
}

/// observe → decide → apply → status, for one mesh (the decisions are in `decide.rs`).
async fn reconcile_inner(mesh: &WireKubeMesh, ctx: &Context) -> Result<Action> {
    if mesh.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // Never plan on a half-filled cache: that would delete the peers of unseen nodes.
    let _ = ctx.nodes.wait_until_ready().await;
    let _ = ctx.peers.wait_until_ready().await;
    let name = mesh.name_any();
    let now = Time(Timestamp::now());

    if let Some(rejected) = decide::invalid_spec(mesh, &now) {
        return reject(ctx, mesh, rejected).await;
    }

    let nodes = selected_nodes(ctx, mesh);
    // Phase times go into the "reconciled" line: at 20+ nodes a pass on a loaded machine took
    // seconds, and a status arriving during one waits for the next (docs/benchmarks.md).
    let started = Instant::now();
    let relay = relay_reconcile::reconcile_relay(mesh, ctx).await?;
    let relay_ms = started.elapsed().as_millis();
    let peers = cached_peers(ctx);
    let observed = MeshObserved {
        mesh,
        nodes: &nodes,
        peers: &peers,
        relay: &relay,
    };
    let mut changes = match decide::mesh(&observed, &now) {
        Ok(changes) => changes,
        // Keep every stored spec: report and wait for a spec change.
        Err(rejected) => return reject(ctx, mesh, *rejected).await,
    };

    // In a mass start, updates wait for the rest of the keys (`joining`); the whole pass
    // keeps the wait decided here.
    let keys_until = ctx
        .keys
        .observe(&name, node_keys(&nodes, &peers, &name), Instant::now());
    let decided_at = Instant::now();
    let redecide = || {
        let (nodes, peers) = (selected_nodes(ctx, mesh), cached_peers(ctx));
        let observed = MeshObserved {
            mesh,
            nodes: &nodes,
            peers: &peers,
            relay: &relay,
        };
        let mut newer = decide::mesh(&observed, &now).ok()?;
        let writes = std::mem::take(&mut newer.writes);
        let still = keys_until.filter(|t| *t > Instant::now());
        let (writes, _) = joining::split(writes, still);
        newer.writes = ctx.deferrals.split(&name, writes, Instant::now()).0;
        Some(newer)
    };
    let all = std::mem::take(&mut changes.writes);
    let (all, keys_held) = joining::split(all, keys_until);
    let (first, _) = ctx.deferrals.split(&name, all, Instant::now());
    let (writes, newest) =
        peer_writes::write_peers(&ctx.writer, &name, first, &changes.deletes, redecide).await;
    let writes_ms = decided_at.elapsed().as_millis();
    // What waits now, after the pass's last decision (its writes may have made some due).
    let held = ctx.deferrals.held(&name, Instant::now());
    // The mesh status and the metrics from the newest decision; the events of every decision
    // of the pass, each once (a later decision repeats the first's while the cache lags
    // behind the pass's writes, and announces what it changed in the writes after it).
    let mut events = std::mem::take(&mut changes.events);
    for e in &writes.later_events {
        if !events.contains(e) {
            events.push(e.clone());
        }
    }
    let changes = newest.unwrap_or(changes);
    for d in &events {
        let (reason, note) = d.reason_note();
        info!(reason, %note, "decision");
        let ty = if d.is_warning() {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let related = d.node().map(peer_ref);
        publish_about(ctx, mesh, ty, reason, note, related);
    }

    let metrics = &ctx.writer.metrics;
    metrics.mesh(&name, changes.counts.total, &changes.summary);
    let mesh_label = crate::metrics::MeshLabel { mesh: name.clone() };
    (metrics.quarantined)
        .get_or_create(&mesh_label)
        .set(changes.quarantined as i64);
    (metrics.records_held)
        .get_or_create(&mesh_label)
        .set(held.count as i64);
    (metrics.held_for_keys)
        .get_or_create(&mesh_label)
        .set(keys_held.count as i64);
    let mut st = changes.status;
    let generation = mesh.metadata.generation.unwrap_or(0);
    let written = status::written_condition(&writes.failure_texts());
    status::merge_condition(&mut st.conditions, &written, generation, &now);
    let status_changed = Some(&st) != mesh.status.as_ref();
    let status_at = Instant::now();
    if status_changed {
        ctx.writer.apply_status(mesh, &st).await?;
    }
    let status_ms = status_at.elapsed().as_millis();
    info!(
        nodes = nodes.len(),
        peers_written = writes.applied,
        peers_deleted = writes.removed.len(),
        write_failures = writes.failures.len(),
        spec_changes = %writes.changes,
        refreshes = writes.refreshes,
        records_held = held.count,
        held_for_keys = keys_held.count,
        quarantined = changes.quarantined,
        status_changed,
        relay_ms,
        writes_ms,
        status_ms,
        total_ms = started.elapsed().as_millis(),
        "reconciled"
    );
    // Failed writes are retried with the error's backoff; everything else was written.
    match writes.into_error() {
        Some(e) => Err(e),
        None => {
            let wake = [held.wake, keys_held.wake].into_iter().flatten().min();
            Ok(Action::requeue(next_pass(wake, ctx.settings.resync)))
        }
    }
}

/// The next pass: the resync, or sooner when a held write falls due.
fn next_pass(wake: Option<Instant>, resync: Duration) -> Duration {
    let now = Instant::now();
    (wake.map(|t| t.saturating_duration_since(now))).map_or(resync, |d| d.min(resync))
}

/// Each selected node's published key, if any (a peer of another mesh has none here).
fn node_keys<'a>(
    nodes: &'a [ClusterNode],
    peers: &'a BTreeMap<String, Arc<WireKubePeer>>,
    mesh: &'a str,
) -> impl Iterator<Item = (&'a str, Option<&'a str>)> {
    nodes.iter().map(move |n| {
        let key = (peers.get(n.name()))
            .filter(|p| diff::peer_mesh(p) == Some(mesh))
            .and_then(|p| p.status.as_ref()?.public_key.as_deref());
        (n.name(), key)
    })
}

/// The nodes the mesh selects, from the cache.
fn selected_nodes(ctx: &Context, mesh: &WireKubeMesh) -> Vec<ClusterNode> {
    let node_objs = ctx.nodes.state();
    select_nodes(
        node_objs.iter().map(|n| n.as_ref()),
        &mesh.spec.node_selector,
    )
}

/// Every stored peer (of any mesh), by name, from the cache.
fn cached_peers(ctx: &Context) -> BTreeMap<String, Arc<WireKubePeer>> {
    (ctx.peers.state().into_iter())
        .map(|p| (p.name_any(), p))
        .collect()
}

/// Writes a rejected reconcile's status and event (once: not when the status already says
/// so), then waits for a spec change.
async fn reject(ctx: &Context, mesh: &WireKubeMesh, r: Rejected) -> Result<Action> {
    if Some(&r.status) != mesh.status.as_ref() {
        ctx.writer.apply_status(mesh, &r.status).await?;
        warn!(reason = %r.reason, msg = %r.message, "mesh rejected; nothing applied");
        publish(ctx, mesh, EventType::Warning, &r.reason, r.message);
    }
    Ok(Action::await_change())
}

fn publish(ctx: &Context, mesh: &WireKubeMesh, type_: EventType, reason: &str, note: String) {
    publish_about(ctx, mesh, type_, reason, note, None);
}

fn peer_ref(node: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(WireKubePeer::api_version(&()).into_owned()),
        kind: Some(WireKubePeer::kind(&()).into_owned()),
        name: Some(node.to_owned()),
        ..ObjectReference::default()
    }
}

/// An event about the mesh and, when `related` is set, that object too (queued: published by
/// `crate::events` while this operator leads).
fn publish_about(
    ctx: &Context,
    mesh: &WireKubeMesh,
    type_: EventType,
    reason: &str,
    note: String,
    related: Option<ObjectReference>,
) {
    if !ctx.writer.leader.is_elected() {
        return;
    }
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: related,
    };
    ctx.events.send(mesh.object_ref(&()), event);
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use kube::runtime::watcher;

    use super::logged_watch;

    #[tokio::test]
    async fn a_failed_watch_never_reaches_the_controller_and_later_events_still_do() {
        let events = futures::stream::iter(vec![
            Ok(1),
            Err(watcher::Error::NoResourceVersion),
            Err(watcher::Error::NoResourceVersion),
            Ok(2),
        ]);
        let passed: Vec<_> = logged_watch("test", events).collect().await;
        let objects: Vec<i32> = passed.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(objects, vec![1, 2]);
    }
}
