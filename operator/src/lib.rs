//! WireKube operator: PathPlanner, mesh and relay controllers

pub mod planner;

pub mod apply;
pub mod controller;
pub mod diff;
pub mod error;
pub mod fixtures;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod nodes;
pub mod peer_writes;
pub mod placement;
pub mod plan;
pub mod relay;
pub mod status;
pub mod telemetry;

pub use controller::ControllerSettings;
pub use error::{Error, Result};
pub use leader::{OperatorSettings, run};
pub use metrics::Metrics;
