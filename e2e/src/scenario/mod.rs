//! Scenario harness: builds a topology in the network lab ([`wirekube_lab`]), runs the real
//! Kubernetes control plane in its DMZ and a lab kubelet + kube-proxy per node
//! ([`wirekube_kubelab`]), installs WireKube with `kubectl apply -k config/default` (operator
//! and agents run as pods), applies a WireKubeMesh and checks every pair in both directions:
//! the path and reason in the agents' status, `wg show`, ping and a verified TCP transfer over the
//! mesh IPs. See `docs/topologies.md`.
//!
//! Assertions reach the cluster only through a kubeconfig ([`Cluster`]) and the nodes only
//! through [`NodeAccess`], so the same checks could run against a real cluster (`e2e/kind/`).

pub mod bins;
pub mod cloud;
pub mod cluster;
pub mod diagnose;
pub mod faults;
pub mod grid;
pub mod hosts;
pub mod membership;
pub mod outage;
pub mod report;
pub mod restart;
pub mod run;
pub mod startup;
pub mod tcpflow;
pub mod topology;

pub use cluster::Cluster;
pub use hosts::{LabNodes, NodeAccess, WgPeer, parse_wg_dump, wg_dump};
pub use report::{PairReport, Timings};
pub use run::{Options, Outcome, Scenario, run};
pub use topology::{Expect, RelaySetup, SiteDef, Topology};
