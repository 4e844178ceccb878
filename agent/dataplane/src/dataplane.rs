//! The `Dataplane` handle: engine + netlink, reconciled together.

use std::collections::HashMap;
use std::time::SystemTime;

use crate::diff::{
    EndpointMemory, Restart, endpoints_written, route_prefixes, validate, validate_rule_priority,
    validate_table, wg_changes,
};
use crate::engine::{
    Backend, EngineChoice, EngineKind, EngineSelection, open_engine, stop_daemons,
};
use crate::error::DataplaneError;
use crate::netlink::Netlink;
use crate::stats::PeerStats;
use crate::types::{InterfaceConfig, PeerConfig, ReconcileReport};
use crate::uapi::socket_path;

/// One WireGuard interface with its address, routes and rules.
///
/// Dropping it (graceful agent shutdown) changes nothing: the link, routes, rules and an
/// external daemon stay, so traffic keeps flowing and the next [`Dataplane::open`] adopts
/// them. Only [`Dataplane::cleanup`] removes state. The embedded engine is the exception:
/// its tunnel lives in this process and ends with it (or with this value).
pub struct Dataplane {
    name: String,
    backend: Backend,
    nl: Netlink,
    selection: EngineSelection,
    /// Desired endpoint per peer as of the last reconcile (see `diff`).
    memory: EndpointMemory,
    /// Peers to re-create at the next reconcile if they never completed a handshake.
    restart: HashMap<[u8; 32], Restart>,
}

impl Dataplane {
    /// Creates the interface with the chosen engine, or adopts one left by a previous agent
    /// run (a kernel link, or a userspace daemon whose UAPI socket answers). Must run on a
    /// tokio runtime inside the network namespace that should hold the interface. Only the
    /// engine is set up here; [`Dataplane::reconcile`] applies keys, addresses and routes.
    pub async fn open(
        choice: EngineChoice,
        iface: &InterfaceConfig,
    ) -> Result<Dataplane, DataplaneError> {
        validate(iface, &[])?;
        let nl = Netlink::connect()?;
        let (backend, selection) = open_engine(&choice, &iface.name, &nl).await?;
        if nl.link(&iface.name).await?.is_none() {
            return Err(DataplaneError::LinkNotFound(iface.name.clone()));
        }
        tracing::info!(
            iface = %iface.name,
            engine = selection.kind.as_str(),
            adopted = selection.adopted,
            reason = %selection.reason,
            "WireGuard engine ready"
        );
        Ok(Dataplane {
            name: iface.name.clone(),
            backend,
            nl,
            selection,
            memory: EndpointMemory::new(),
            restart: HashMap::new(),
        })
    }

    /// The engine in use.
    pub fn engine(&self) -> EngineKind {
        self.selection.kind
    }

    /// The engine in use, why it was chosen, and whether it was adopted.
    pub fn selection(&self) -> &EngineSelection {
        &self.selection
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Forgets the endpoint the last reconcile wrote for `public_key`, so the next reconcile
    /// writes the desired one again even though it did not change. For a direct probe that
    /// WireGuard's roaming undid (the peer's relay packets arrived after we pointed the peer at
    /// its direct address); a roamed-to *direct* endpoint that works is still kept.
    pub fn reassert_endpoint(&mut self, public_key: &[u8; 32]) {
        self.memory.remove(public_key);
    }

    /// Asks the next reconcile to re-create the peer if it never completed a handshake (no
    /// session to lose): clears the engine's one-initiation-per-5-s rate limit, so that a
    /// datagram sent right after starts a handshake at once (see `diff::wg_changes`).
    /// [`Restart::Crossed`] and [`Restart::Unconfirmed`] re-create more (see there); asked
    /// twice, the stronger one is kept.
    pub fn restart_handshake(&mut self, public_key: &[u8; 32], how: Restart) {
        let e = self.restart.entry(*public_key).or_insert(how);
        *e = (*e).max(how);
    }

    /// Converges WireGuard and netlink state to `iface` + `peers`: reads the current state,
    /// writes only differences, and returns how many writes it made (zero on a repeat call
    /// with the same input). Peers not in `peers` are removed, with their routes. An
    /// endpoint is written only for new peers or when the desired endpoint changed since
    /// the previous call, so endpoints WireGuard roamed to are kept.
    #[tracing::instrument(skip_all, fields(iface = %iface.name, peers = peers.len()))]
    pub async fn reconcile(
        &mut self,
        iface: &InterfaceConfig,
        peers: &[PeerConfig],
    ) -> Result<ReconcileReport, DataplaneError> {
        validate(iface, peers)?;
        if iface.name != self.name {
            return Err(DataplaneError::InvalidConfig(format!(
                "this Dataplane manages {}, not {}",
                self.name, iface.name
            )));
        }
        let mut report = ReconcileReport::default();
        let now = SystemTime::now();
        let cur = self.backend.get().await?;
        let restart = std::mem::take(&mut self.restart);
        let changes = wg_changes(&cur, iface, peers, &self.memory, &restart, now);
        if !changes.is_empty() {
            tracing::debug!(?changes, "WireGuard changes");
            report.wireguard_changes += changes.len();
            report.endpoints_written = endpoints_written(&changes);
            if self.backend.set(&cur, &changes).await? {
                // Kernel interface rewrite dropped all peers: add them back now.
                let cur = self.backend.get().await?;
                let again = wg_changes(
                    &cur,
                    iface,
                    peers,
                    &EndpointMemory::new(),
                    &HashMap::new(),
                    now,
                );
                report.wireguard_changes += again.len();
                self.backend.set(&cur, &again).await?;
            }
        }
        self.memory = peers.iter().map(|p| (p.public_key, p.endpoint)).collect();

        let link = self
            .nl
            .link(&self.name)
            .await?
            .ok_or_else(|| DataplaneError::LinkNotFound(self.name.clone()))?;
        report.netlink_changes += self.nl.reconcile_link(&link, iface).await?;
        // New routes, then rules, then stale routes: moving to another table (or priority)
        // never leaves a moment in which the rule in force points at an empty table. Rules
        // even with foreign routes in the table: every other prefix still works.
        let routes = self
            .nl
            .reconcile_routes(link.index, iface, &route_prefixes(peers))
            .await?;
        report.netlink_changes += routes.changes;
        report.netlink_changes += self.nl.reconcile_rules(iface).await?;
        report.netlink_changes += self.nl.delete_routes(routes.stale).await?;
        let foreign = routes.foreign;
        if !report.is_noop() {
            tracing::info!(
                wireguard = report.wireguard_changes,
                netlink = report.netlink_changes,
                "dataplane reconciled"
            );
        }
        if !foreign.is_empty() {
            return Err(DataplaneError::RouteConflict {
                table: iface.table,
                routes: foreign,
            });
        }
        Ok(report)
    }

    /// Current per-peer endpoint, last handshake and byte counters, read from the engine.
    pub async fn peer_stats(&self) -> Result<Vec<PeerStats>, DataplaneError> {
        let now = SystemTime::now();
        let dev = self.backend.get().await?;
        Ok(dev
            .peers
            .iter()
            .map(|p| PeerStats::from_state(p, now))
            .collect())
    }

    /// Removes everything `open`/`reconcile` created for `iface_name` (for
    /// `wirekube-agent cleanup`): the external daemon, its UAPI socket, the link, and the
    /// routes and rules WireKube made (marked with [`crate::ROUTE_PROTOCOL`]; unmarked ones
    /// of older agents are recognised by their shape at `table` and `rule_priority`).
    /// Routes and rules of others, in the same table too, stay. Idempotent; missing pieces
    /// are not errors. Run it in the namespace that holds the interface.
    pub async fn cleanup(
        iface_name: &str,
        table: u32,
        rule_priority: u32,
    ) -> Result<(), DataplaneError> {
        validate_table(table)?;
        validate_rule_priority(rule_priority)?;
        let nl = Netlink::connect()?;
        let stopped = stop_daemons(iface_name).await;
        if let Some(l) = nl.link(iface_name).await? {
            nl.delete_link(l.index).await?;
        }
        let sock = socket_path(iface_name);
        if sock.exists() {
            std::fs::remove_file(&sock)
                .map_err(|e| DataplaneError::io(format!("remove {}", sock.display()), e))?;
        }
        let removed = nl.cleanup(table, rule_priority).await?;
        tracing::info!(
            iface = iface_name,
            daemons = stopped,
            routes_and_rules = removed,
            "dataplane cleaned up"
        );
        Ok(())
    }
}
