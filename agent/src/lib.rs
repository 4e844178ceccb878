//! WireKube node agent: discovery, dataplane, relay client, fallback.
//!
//! The pure parts (NAT classifier, path state machine, spec mapping, and `step`: one
//! reconcile pass's decisions and the status) are sans-IO and unit-tested; the I/O parts (STUN
//! sockets, Kubernetes watches, the dataplane, `reconcile`) are thin layers around them. See
//! `docs/agent.md`.

pub mod discovery;
pub mod identity;
pub mod kubeapi;
pub mod liveness;
pub mod metrics;
pub mod observation;
pub mod pathstate;
pub mod pathtiming;
pub mod podnet;
pub mod reconcile;
pub mod rtt;
pub mod sidecar;
pub mod spec;
pub mod status;
pub mod step;
pub mod wallclock;
