//! WireKube operator: the mesh controller (it runs the PathPlanner of `wirekube-planner`
//! and the managed relay).

#![forbid(unsafe_code)]

pub mod apply;
pub mod controller;
pub mod decide;
pub mod deferral;
pub mod diff;
pub mod error;
pub mod events;
pub mod http;
pub mod joining;
pub mod leader;
pub mod leadership;
pub mod lease;
pub mod managed_relay;
pub mod metrics;
pub mod nodes;
pub mod peer_writes;
pub mod placement;
pub mod plan;
pub mod relay_reconcile;
pub mod spec_changes;
pub mod status;
pub mod telemetry;
#[cfg(test)]
mod test_objects;
pub mod triggers;

pub use controller::ControllerSettings;
pub use error::{Error, Result};
pub use leader::{OperatorSettings, run};
pub use metrics::Metrics;
