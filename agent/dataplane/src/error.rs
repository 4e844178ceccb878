//! Errors with enough context for an operator to act on them.

use std::path::PathBuf;

use crate::types::ForeignRoute;

fn join(routes: &[ForeignRoute]) -> String {
    let v: Vec<String> = routes.iter().map(ToString::to_string).collect();
    v.join(", ")
}

/// Everything that can go wrong in the dataplane.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// `EngineChoice::WireguardGo` (or `Auto` fallback) could not find the daemon.
    #[error(
        "wireguard-go not found at {0}: install wireguard-go (apt-get install --no-install-recommends wireguard-go) or run with --engine=embedded"
    )]
    WireguardGoNotFound(PathBuf),
    /// `EngineChoice::Kernel` was requested but the kernel cannot create WireGuard links.
    #[error(
        "kernel WireGuard unavailable ({0}): load the wireguard module or run with --engine=wireguard-go / --engine=embedded"
    )]
    KernelUnavailable(String),
    /// The userspace daemon did not serve its UAPI socket in time.
    #[error(
        "WireGuard daemon for {iface} did not come up: {reason} (check /dev/net/tun, CAP_NET_ADMIN and that no other process owns /var/run/wireguard/{iface}.sock)"
    )]
    DaemonStart {
        /// Interface name.
        iface: String,
        /// What was observed.
        reason: String,
    },
    /// The embedded engine failed to create the interface.
    #[error("embedded WireGuard engine failed for {iface}: {reason}")]
    Embedded {
        /// Interface name.
        iface: String,
        /// Engine error text.
        reason: String,
    },
    /// Talking to the UAPI socket failed.
    #[error("WireGuard UAPI on {path}: {reason}")]
    Uapi {
        /// Socket path.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A UAPI `set` was rejected by the engine.
    #[error("WireGuard rejected the configuration of {iface}: errno {errno}")]
    UapiErrno {
        /// Interface name.
        iface: String,
        /// errno reported by the engine.
        errno: i32,
    },
    /// Kernel WireGuard (generic netlink via defguard_wireguard_rs) failed.
    #[error("kernel WireGuard on {iface}: {reason}")]
    KernelWg {
        /// Interface name.
        iface: String,
        /// Library error text.
        reason: String,
    },
    /// An rtnetlink request failed.
    #[error("netlink {op}: {reason}")]
    Netlink {
        /// Operation, e.g. "add route 100.96.0.7/32 table 51820".
        op: String,
        /// Kernel or library error text.
        reason: String,
    },
    /// Routes WireKube needs are held in its table by routes it did not create. Everything
    /// else was reconciled; these prefixes keep the foreign routes.
    #[error(
        "routing table {table} has routes WireKube did not create at prefixes it needs: {}; WireKube never changes those: remove them, or give WireKube a table of its own (--table)",
        join(.routes)
    )]
    RouteConflict {
        /// WireKube's table.
        table: u32,
        /// The foreign routes, one per contested prefix.
        routes: Vec<ForeignRoute>,
    },
    /// The interface that should exist does not.
    #[error("interface {0} not found")]
    LinkNotFound(String),
    /// The input was inconsistent.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The interface exists but is not the engine asked for (e.g. a kernel link when
    /// wireguard-go was requested).
    #[error(
        "interface {iface} already exists as {found}; run `wirekube-agent cleanup` or pick the matching engine"
    )]
    EngineMismatch {
        /// Interface name.
        iface: String,
        /// What was found.
        found: String,
    },
    /// Relay bridge socket I/O.
    #[error("relay bridge: {0}")]
    Bridge(String),
    /// Other I/O.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl DataplaneError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn netlink(op: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Self::Netlink {
            op: op.into(),
            reason: e.to_string(),
        }
    }
}
