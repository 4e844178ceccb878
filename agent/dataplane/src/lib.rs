//! WireKube node dataplane: one WireGuard interface plus the kernel routing state around it,
//! and the loopback bridge that carries relayed peers over the relay's TCP connection.
//!
//! The agent owns policy (which peers, which endpoints, when to fall back); this crate owns
//! mechanism and makes it cheap to call repeatedly: [`Dataplane::reconcile`] reads the current
//! WireGuard and netlink state, compares it with the desired state and writes only the
//! differences, so a repeat call with the same input performs zero writes.
//!
//! See `docs/dataplane.md` for the design and the engine trade-offs.

mod dataplane;
mod diff;
mod engine;
mod error;
mod kernel;
mod netlink;
mod owner;
mod relay_bridge;
mod stats;
mod types;
mod uapi;

pub use dataplane::Dataplane;
pub use diff::{Restart, validate_rule_priority, validate_table};
pub use engine::{
    DEFAULT_WIREGUARD_GO, EngineChoice, EngineKind, EngineSelection, kernel_wireguard_probe,
};
pub use error::DataplaneError;
pub use netlink::TEST_NO_KERNEL_WIREGUARD_ENV;
pub use owner::{DEFAULT_RULE_PRIORITY, DEFAULT_TABLE, ROUTE_PROTOCOL};
pub use relay_bridge::{RelayBridge, RelayBridgeCounters};
pub use stats::PeerStats;
pub use types::{
    DEFAULT_FWMARK, ForeignRoute, InterfaceConfig, PeerConfig, ReconcileReport, relay_socket_mark,
};

#[cfg(test)]
mod send_check {
    // The agent holds these across await points in spawned tasks.
    fn assert_send<T: Send>() {}
    #[test]
    fn handles_are_send() {
        assert_send::<crate::Dataplane>();
        assert_send::<crate::RelayBridge>();
    }
}
