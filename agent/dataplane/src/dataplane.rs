//! The `Dataplane` handle.

use crate::engine::{EngineChoice, EngineKind, EngineSelection};
use crate::error::DataplaneError;
use crate::stats::PeerStats;
use crate::types::{InterfaceConfig, PeerConfig, ReconcileReport};

/// One WireGuard interface with its address, routes and rules.
pub struct Dataplane {
    selection: EngineSelection,
}

impl Dataplane {
    /// Creates the interface, or adopts one left by a previous agent run.
    pub async fn open(
        _choice: EngineChoice,
        iface: &InterfaceConfig,
    ) -> Result<Dataplane, DataplaneError> {
        Err(DataplaneError::LinkNotFound(iface.name.clone()))
    }

    /// The engine in use.
    pub fn engine(&self) -> EngineKind {
        self.selection.kind
    }

    /// The engine in use and why it was chosen.
    pub fn selection(&self) -> &EngineSelection {
        &self.selection
    }

    /// Converges WireGuard and netlink state to `iface` + `peers`, writing only differences.
    pub async fn reconcile(
        &mut self,
        _iface: &InterfaceConfig,
        _peers: &[PeerConfig],
    ) -> Result<ReconcileReport, DataplaneError> {
        Ok(ReconcileReport::default())
    }

    /// Current per-peer counters.
    pub async fn peer_stats(&self) -> Result<Vec<PeerStats>, DataplaneError> {
        Ok(Vec::new())
    }

    /// Removes everything `open`/`reconcile` created for `iface_name`.
    pub async fn cleanup(
        _iface_name: &str,
        _table: u32,
        _rule_priority: u32,
    ) -> Result<(), DataplaneError> {
        Ok(())
    }
}
