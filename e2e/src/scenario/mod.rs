//! Scenario harness: builds a topology in the network lab ([`wirekube_lab`]), runs the real
//! `wirekube-apiserver`, `wirekube-operator`, `wirekube-relay` and one `wirekube-agent` per node in
//! it, applies a WireKubeMesh and checks every pair in both directions against the seed's table:
//! the path and reason in the agents' status, `wg show`, ping and a verified TCP transfer over the
//! mesh IPs. See `docs/topologies.md`.
//!
//! Assertions reach the cluster only through a kubeconfig ([`Cluster`]) and the nodes only
//! through [`NodeAccess`], so the same checks could run against a real cluster (`e2e/kind/`).

pub mod bins;
pub mod cluster;
pub mod diagnose;
pub mod hosts;
pub mod report;
pub mod run;
pub mod topology;

pub use cluster::Cluster;
pub use hosts::{LabNodes, NodeAccess, WgPeer, parse_wg_dump, wg_dump};
pub use report::{PairReport, Timings};
pub use run::{Options, Outcome, Scenario, run};
pub use topology::{Expect, RelaySetup, SiteDef, Topology};
