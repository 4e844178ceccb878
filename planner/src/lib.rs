//! PathPlanner: for every pair of mesh nodes, Direct or Relay (or Down), which endpoint each
//! side sends to, who initiates and why; plus every node's mesh IP.
//!
//! Pure: no kube client, no async, no clock, no I/O; the crate depends on the API types
//! (`wirekube-crds`) and `ipnet` only, so the compiler keeps it that way. The input is the mesh spec, the nodes,
//! the agents' reported statuses and the stored specs; the output is the desired
//! `WireKubePeer` spec of every node, which of them changed, and a per-pair summary for the
//! mesh status. The rules and their evidence are in docs/topologies.md, "Path planning rules".
//!
//! ```
//! use wirekube_planner::{plan, NodeInfo, PlannerInput};
//! let mut input = PlannerInput::new("default", wirekube_crds::WireKubeMeshSpec {
//!     mesh_cidr: "10.99.0.0/24".into(), listen_port: 51820, interface_name: "wirekube0".into(),
//!     mtu: 1420, persistent_keepalive: 25, node_selector: Default::default(),
//!     stun_servers: vec![], relay: Default::default(), routing: Default::default(),
//!     pod_network: Default::default(),
//! });
//! input.nodes = vec![NodeInfo::new("a"), NodeInfo::new("b")];
//! let plan = plan(&input).unwrap();
//! assert_eq!(plan.spec("a").unwrap().mesh_ip, "10.99.0.1");
//! assert_eq!(plan.pending_nodes, ["a", "b"]); // no agent has published a key yet
//! ```
//!
//! Modules, by responsibility: `types` (input/output), `facts` (per-node facts derived once),
//! `rules` (the pair table), `endpoints` (which address a side sends to), `alloc` (mesh IPs),
//! `build` (plans, one-node re-plans, spec diff and summary), `keys` (quarantine of nodes
//! with a duplicate or malformed public key), `select` (node selection),
//! `fixtures` (builders for tests and benchmarks, behind the `test-support` feature).

#![forbid(unsafe_code)]

mod alloc;
mod build;
mod endpoints;
mod facts;
#[cfg(any(test, feature = "test-support"))]
pub mod fixtures;
mod keys;
pub mod routes;
mod rules;
mod select;
mod types;

pub use build::PathPlanner;
pub use keys::{KeyProblem, duplicate_keys, key_problems};
pub use rules::NAT_KEEPALIVE_SECS;
pub use select::{select_nodes, selected};
pub use types::{
    NodeAddress, NodeAddressKind, NodeInfo, PairPlan, Plan, PlanError, PlanIssue, PlannerInput,
};

/// Plans the whole mesh once. Equivalent to `PathPlanner::new(input)?.into_plan()`.
pub fn plan(input: &PlannerInput) -> Result<Plan, PlanError> {
    PathPlanner::new(input).map(PathPlanner::into_plan)
}
