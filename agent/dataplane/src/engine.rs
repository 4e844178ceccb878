//! Engine selection: kernel WireGuard, an external userspace daemon, or the embedded one.

use std::path::PathBuf;

/// Which WireGuard implementation the caller wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineChoice {
    /// Kernel if `ip link add type wireguard` works, else wireguard-go if the binary exists,
    /// else the embedded engine.
    Auto,
    /// Kernel module only.
    Kernel,
    /// External wireguard-go daemon at `binary`, driven over its UAPI socket.
    WireguardGo {
        /// Path to the wireguard-go executable.
        binary: PathBuf,
    },
    /// boringtun embedded in this process (defguard_wireguard_rs `WGApi<Userspace>`).
    Embedded,
}

/// Which WireGuard implementation is actually running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// Kernel module, configured over generic netlink.
    Kernel,
    /// An external daemon (wireguard-go, or boringtun-cli as a sidecar) behind a UAPI socket.
    UserspaceExternal,
    /// boringtun threads inside this process.
    UserspaceEmbedded,
}

impl EngineKind {
    /// Short name for status and metrics: `kernel`, `userspace-external`, `userspace-embedded`.
    pub fn as_str(&self) -> &'static str {
        match self {
            EngineKind::Kernel => "kernel",
            EngineKind::UserspaceExternal => "userspace-external",
            EngineKind::UserspaceEmbedded => "userspace-embedded",
        }
    }

    /// True for engines whose tunnel outlives the agent process.
    pub fn survives_agent_restart(&self) -> bool {
        !matches!(self, EngineKind::UserspaceEmbedded)
    }
}

/// The engine chosen by [`crate::Dataplane::open`] and why, for status and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSelection {
    /// The engine in use.
    pub kind: EngineKind,
    /// Human-readable reason, e.g. "kernel WireGuard unavailable (Operation not supported); wireguard-go found at /usr/bin/wireguard-go".
    pub reason: String,
    /// True when an existing interface (left by a previous agent run) was adopted.
    pub adopted: bool,
}
