//! The agent pod's `wireguard` container: `wirekube-agent userspace-engine`.
//!
//! A container restart kills every process of the container. With the userspace engine started
//! by the agent (a child of the agent process), restarting the agent container would take the
//! tunnel down with it. The shipped DaemonSet therefore runs the userspace engine in a container
//! of its own, sharing `/var/run/wireguard` (the UAPI socket) and `/dev/net/tun` with the agent,
//! whose `--engine sidecar` attaches to that daemon instead of starting one. On a kernel with
//! WireGuard the agent uses the kernel and this container only waits for its stop.
//! `docs/agent.md` (Restart in a pod) has the design and the measured traffic gaps.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What the `wireguard` container does on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The kernel has WireGuard: the agent creates a kernel link; nothing to run here.
    Idle,
    /// No kernel WireGuard: run wireguard-go in the foreground as this container's process.
    RunWireguardGo {
        /// Why the kernel cannot be used (logged).
        kernel: String,
    },
}

/// The decision, from the kernel probe's result.
pub fn plan(kernel_probe: Result<(), String>) -> Plan {
    match kernel_probe {
        Ok(()) => Plan::Idle,
        Err(kernel) => Plan::RunWireguardGo { kernel },
    }
}

/// Errors of the `userspace-engine` command.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// `exec` of wireguard-go failed (a successful exec never returns).
    #[error(
        "cannot run {binary} for {iface}: {source} (install wireguard-go in the agent image or set --wireguard-go-binary)"
    )]
    Exec {
        binary: PathBuf,
        iface: String,
        #[source]
        source: std::io::Error,
    },
}

/// wireguard-go in the foreground (`-f`) for `iface`: it creates the TUN device and serves
/// `/var/run/wireguard/<iface>.sock` until TERM, then removes both.
pub fn wireguard_go_command(binary: &Path, iface: &str) -> Command {
    let mut cmd = Command::new(binary);
    cmd.arg("-f")
        .arg(iface)
        // A kernel that has the module but cannot be used (e.g. no CAP_NET_ADMIN for generic
        // netlink) must not make wireguard-go refuse to start.
        .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1");
    cmd
}

/// Replaces this process with wireguard-go (so the container runtime's TERM reaches it
/// directly); returns only on failure.
pub fn exec_wireguard_go(binary: &Path, iface: &str) -> SidecarError {
    use std::os::unix::process::CommandExt;
    let source = wireguard_go_command(binary, iface).exec();
    SidecarError::Exec {
        binary: binary.to_path_buf(),
        iface: iface.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_wireguard_means_idle_else_wireguard_go() {
        assert_eq!(plan(Ok(())), Plan::Idle);
        assert_eq!(
            plan(Err("Operation not supported".into())),
            Plan::RunWireguardGo {
                kernel: "Operation not supported".into()
            }
        );
    }

    #[test]
    fn wireguard_go_runs_in_the_foreground_for_the_interface() {
        let cmd = wireguard_go_command(Path::new("/usr/bin/wireguard-go"), "wirekube0");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(args, ["-f", "wirekube0"]);
        assert_eq!(cmd.get_program(), "/usr/bin/wireguard-go");
    }

    #[test]
    fn a_missing_binary_is_an_error_naming_it() {
        let e = exec_wireguard_go(Path::new("/nonexistent/wireguard-go"), "wirekube0");
        let msg = e.to_string();
        assert!(
            msg.contains("/nonexistent/wireguard-go") && msg.contains("wirekube0"),
            "{msg}"
        );
    }
}
