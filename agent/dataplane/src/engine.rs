//! Engine selection: kernel WireGuard, an external userspace daemon, or the embedded one.

use std::path::PathBuf;
use std::time::Duration;

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
    /// Kernel if `ip link add type wireguard` works, else a userspace daemon that another
    /// process runs (the `wireguard` container of the agent pod): wait up to `wait` for its
    /// UAPI socket and attach to it, never start one. A restart of the agent then leaves the
    /// userspace tunnel running, as it leaves a kernel link.
    Sidecar {
        /// How long to wait for the daemon's socket to answer.
        wait: Duration,
    },
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

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use defguard_wireguard_rs::{Userspace, WGApi, WireguardInterfaceApi};

use crate::error::DataplaneError;
use crate::kernel::KernelWg;
use crate::netlink::{Netlink, is_kernel_wg, kernel_wireguard_available};
use crate::uapi::{DeviceState, Uapi, WgChange};

/// Default location of the Debian wireguard-go package's binary.
pub const DEFAULT_WIREGUARD_GO: &str = "/usr/bin/wireguard-go";

/// How long a freshly started userspace engine may take to serve its UAPI socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The configured engine behind one interface.
pub(crate) enum Backend {
    Kernel(KernelWg),
    /// wireguard-go (or an adopted external daemon) over UAPI.
    External(Uapi),
    /// In-process boringtun; `_api` owns the device threads, dropping it stops the tunnel.
    Embedded {
        uapi: Uapi,
        _api: Box<WGApi<Userspace>>,
    },
}

impl Backend {
    pub async fn get(&self) -> Result<DeviceState, DataplaneError> {
        match self {
            Backend::Kernel(k) => k.get(),
            Backend::External(u) | Backend::Embedded { uapi: u, .. } => u.get().await,
        }
    }

    /// Applies changes; true when the peers were wiped and the diff must be recomputed.
    pub async fn set(
        &self,
        current: &DeviceState,
        changes: &[WgChange],
    ) -> Result<bool, DataplaneError> {
        match self {
            Backend::Kernel(k) => k.set(current, changes),
            Backend::External(u) | Backend::Embedded { uapi: u, .. } => {
                u.set(changes).await.map(|()| false)
            }
        }
    }
}

fn wireguard_go_binary(choice: &EngineChoice) -> PathBuf {
    match choice {
        EngineChoice::WireguardGo { binary } => binary.clone(),
        _ => PathBuf::from(DEFAULT_WIREGUARD_GO),
    }
}

/// Opens or adopts the engine for `name`. The link may not exist yet for external engines
/// until the daemon has started; the caller looks it up afterwards.
pub(crate) async fn open_engine(
    choice: &EngineChoice,
    name: &str,
    nl: &Netlink,
) -> Result<(Backend, EngineSelection), DataplaneError> {
    let link = nl.link(name).await?;
    let uapi = Uapi::new(name);
    let alive = uapi.alive().await;
    let kernel_link = link.as_ref().is_some_and(|l| is_kernel_wg(&l.kind));
    let sel = |kind, reason: String, adopted| EngineSelection {
        kind,
        reason,
        adopted,
    };

    let sidecar = match choice {
        EngineChoice::Sidecar { wait } => Some(*wait),
        _ => None,
    };
    // Adoption first: whatever a previous agent run left working is kept, so that a
    // restart does not interrupt traffic.
    if kernel_link
        && matches!(
            choice,
            EngineChoice::Auto | EngineChoice::Kernel | EngineChoice::Sidecar { .. }
        )
    {
        let reason = format!("adopted existing kernel WireGuard link {name}");
        return Ok((
            Backend::Kernel(KernelWg::new(name)?),
            sel(EngineKind::Kernel, reason, true),
        ));
    }
    if alive && !matches!(choice, EngineChoice::Kernel) {
        if link.is_none() {
            return Err(DataplaneError::EngineMismatch {
                iface: name.into(),
                found: format!(
                    "a live UAPI socket {} whose link is not in this network namespace (interface names must be unique per host)",
                    uapi.path.display()
                ),
            });
        }
        let reason = format!(
            "adopted running userspace WireGuard daemon on {}",
            uapi.path.display()
        );
        return Ok((
            Backend::External(uapi),
            sel(EngineKind::UserspaceExternal, reason, true),
        ));
    }
    if let (Some(wait), false, true) = (sidecar, kernel_link, link.is_some()) {
        // The sidecar's daemon made its TUN and is about to serve the socket (or is
        // starting over): never delete what another container owns.
        return attach_sidecar(&uapi, name, wait, String::new()).await;
    }
    if let Some(l) = &link {
        if kernel_link || alive {
            return Err(DataplaneError::EngineMismatch {
                iface: name.into(),
                found: if kernel_link {
                    "a kernel WireGuard link".into()
                } else {
                    "a userspace engine".into()
                },
            });
        }
        // A link without a live engine (e.g. a persistent TUN left behind): remove it so
        // the new engine can create its own.
        tracing::warn!(iface = name, kind = ?l.kind, "removing orphaned link without a live WireGuard engine");
        nl.delete_link(l.index).await?;
    }
    remove_stale_socket(&uapi.path);

    let try_kernel = matches!(
        choice,
        EngineChoice::Auto | EngineChoice::Kernel | EngineChoice::Sidecar { .. }
    );
    let kernel_err = if try_kernel {
        match kernel_wireguard_available(nl).await {
            Ok(()) => {
                nl.create_kernel_wg(name).await?;
                let why = "kernel WireGuard available".to_string();
                return Ok((
                    Backend::Kernel(KernelWg::new(name)?),
                    sel(EngineKind::Kernel, why, false),
                ));
            }
            Err(e) if matches!(choice, EngineChoice::Kernel) => {
                return Err(DataplaneError::KernelUnavailable(e));
            }
            Err(e) => Some(e),
        }
    } else {
        None
    };
    let prefix = kernel_err
        .map(|e| format!("kernel WireGuard unavailable ({e}); "))
        .unwrap_or_default();
    if let Some(wait) = sidecar {
        return attach_sidecar(&uapi, name, wait, prefix).await;
    }

    if matches!(
        choice,
        EngineChoice::Auto | EngineChoice::WireguardGo { .. }
    ) {
        let bin = wireguard_go_binary(choice);
        if bin.is_file() {
            start_wireguard_go(&bin, name, &uapi).await?;
            let why = format!("{prefix}started wireguard-go {}", bin.display());
            return Ok((
                Backend::External(uapi),
                sel(EngineKind::UserspaceExternal, why, false),
            ));
        }
        if matches!(choice, EngineChoice::WireguardGo { .. }) {
            return Err(DataplaneError::WireguardGoNotFound(bin));
        }
    }
    let api = start_embedded(name).await?;
    let why = format!(
        "{prefix}{}embedded boringtun",
        if matches!(choice, EngineChoice::Auto) {
            "wireguard-go not found at /usr/bin/wireguard-go; "
        } else {
            ""
        }
    );
    Ok((
        Backend::Embedded {
            uapi,
            _api: Box::new(api),
        },
        sel(EngineKind::UserspaceEmbedded, why, false),
    ))
}

/// Waits for the userspace daemon another container runs and attaches to it.
async fn attach_sidecar(
    uapi: &Uapi,
    name: &str,
    wait: Duration,
    prefix: String,
) -> Result<(Backend, EngineSelection), DataplaneError> {
    if !socket_alive_within(uapi, wait).await {
        return Err(DataplaneError::DaemonStart {
            iface: name.into(),
            reason: format!(
                "no userspace WireGuard daemon answered on {} within {wait:?}: with the sidecar \
                 engine the agent pod's wireguard container runs it \
                 (`wirekube-agent userspace-engine`)",
                uapi.path.display()
            ),
        });
    }
    let reason = format!(
        "{prefix}attached to the sidecar's userspace WireGuard daemon on {}",
        uapi.path.display()
    );
    Ok((
        Backend::External(Uapi::new(name)),
        EngineSelection {
            kind: EngineKind::UserspaceExternal,
            reason,
            adopted: false,
        },
    ))
}

async fn socket_alive_within(uapi: &Uapi, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if uapi.alive().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether this kernel can create WireGuard links (`Err` says why not), probed with a
/// throw-away link in the current network namespace.
pub async fn kernel_wireguard_probe() -> Result<(), DataplaneError> {
    let nl = Netlink::connect()?;
    kernel_wireguard_available(&nl)
        .await
        .map_err(DataplaneError::KernelUnavailable)
}

fn remove_stale_socket(path: &Path) {
    // A dead daemon (e.g. boringtun-cli exiting on a privilege error) can leave its socket
    // file; the next daemon could not bind it.
    if path.exists() {
        tracing::info!(path = %path.display(), "removing stale UAPI socket");
        let _ = std::fs::remove_file(path);
    }
}

/// Starts wireguard-go so that it outlives this process: it daemonises itself (the parent
/// we spawn exits once the TUN and UAPI socket exist), and `setsid` puts it in its own
/// session, so neither our exit nor a SIGINT/SIGHUP to our process group reaches it.
#[allow(unsafe_code)]
async fn start_wireguard_go(bin: &Path, name: &str, uapi: &Uapi) -> Result<(), DataplaneError> {
    let mut cmd = Command::new(bin);
    cmd.arg(name)
        .stdin(Stdio::null())
        // The parent logs why it failed (e.g. no /dev/net/tun) to stdout, its banner to stderr.
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Silent daemon: with LOG_LEVEL set it would inherit our pipes and `output()` would
        // wait for its exit (without it the daemon gets /dev/null for all three).
        .env_remove("LOG_LEVEL")
        .env_remove("WG_PROCESS_FOREGROUND")
        // Explicitly requested userspace must not refuse to run on a kernel with the module.
        .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1");
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(|e| DataplaneError::DaemonStart {
            iface: name.into(),
            reason: e.to_string(),
        })?
        .map_err(|e| DataplaneError::io(format!("spawn {}", bin.display()), e))?;
    if !out.status.success() {
        return Err(DataplaneError::DaemonStart {
            iface: name.into(),
            reason: format!(
                "wireguard-go exited with {}: {} {}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    wait_alive(uapi, name).await
}

async fn wait_alive(uapi: &Uapi, name: &str) -> Result<(), DataplaneError> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if uapi.alive().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(DataplaneError::DaemonStart {
        iface: name.into(),
        reason: format!(
            "no answer on {} after {START_TIMEOUT:?}",
            uapi.path.display()
        ),
    })
}

/// Creates the embedded boringtun device on a dedicated thread.
///
/// boringtun blocks SIGINT/SIGTERM with `sigprocmask` in the creating thread (inherited by
/// its worker threads) and consumes them through a `signalfd`, exiting its event loop —
/// the tunnel dies while the agent keeps running and never sees the signal. Two measures:
/// the mask is confined to a throwaway thread instead of a tokio worker, and the signalfds
/// it opened are neutralised afterwards (replaced by /dev/null via `dup2`, which drops them
/// from boringtun's epoll set; the fd numbers stay valid for boringtun to close later), so
/// SIGTERM reaches the agent's own handler deterministically.
async fn start_embedded(name: &str) -> Result<WGApi<Userspace>, DataplaneError> {
    let owned = name.to_string();
    let join = std::thread::Builder::new()
        .name("wk-embedded-init".into())
        .spawn(move || {
            let before = signalfds();
            let mut api = WGApi::<Userspace>::new(owned.clone())?;
            api.create_interface()?;
            for fd in signalfds().difference(&before) {
                neutralize_fd(*fd);
            }
            Ok::<_, defguard_wireguard_rs::error::WireguardInterfaceError>(api)
        })
        .map_err(|e| DataplaneError::io("spawn embedded engine thread", e))?;
    let res = tokio::task::spawn_blocking(move || join.join())
        .await
        .map_err(|e| DataplaneError::Embedded {
            iface: name.into(),
            reason: e.to_string(),
        })?
        .map_err(|_| DataplaneError::Embedded {
            iface: name.into(),
            reason: "engine thread panicked".into(),
        })?;
    let api = res.map_err(|e| DataplaneError::Embedded {
        iface: name.into(),
        reason: e.to_string(),
    })?;
    wait_alive(&Uapi::new(name), name).await?;
    Ok(api)
}

pub(crate) fn signalfds() -> std::collections::BTreeSet<i32> {
    let mut out = std::collections::BTreeSet::new();
    if let Ok(rd) = std::fs::read_dir("/proc/self/fd") {
        for e in rd.flatten() {
            if let Ok(t) = std::fs::read_link(e.path())
                && t.to_string_lossy() == "anon_inode:[signalfd]"
                && let Some(fd) = e.file_name().to_str().and_then(|s| s.parse().ok())
            {
                out.insert(fd);
            }
        }
    }
    out
}

#[allow(unsafe_code)]
fn neutralize_fd(fd: i32) {
    // SAFETY: plain fd syscalls; dup2 atomically replaces `fd` with /dev/null.
    unsafe {
        let devnull = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if devnull >= 0 {
            libc::dup2(devnull, fd);
            libc::close(devnull);
        }
    }
}

/// PIDs of wireguard-go processes serving `name` (matched by command line) in the caller's
/// network namespace. The PID namespace is usually wider: other namespaces (other pods' or
/// labs' nodes) run daemons for interfaces of the same name, and `cleanup` must not stop them.
pub(crate) fn daemon_pids(name: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    // The calling thread's namespace (`in_ns`-style callers setns one thread only).
    let own = net_ns("/proc/thread-self/ns/net");
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let ns = net_ns(&format!("/proc/{pid}/ns/net"));
        if is_daemon_of(&cmd, name) && same_namespace(own, ns) {
            pids.push(pid);
        }
    }
    pids
}

fn net_ns(path: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Whether a process in namespace `theirs` is ours to stop: only in our own namespace (an
/// unreadable namespace is not).
fn same_namespace(own: Option<u64>, theirs: Option<u64>) -> bool {
    own.is_some() && own == theirs
}

/// Whether NUL-separated command line `cmd` is wireguard-go or boringtun-cli serving `name`.
fn is_daemon_of(cmd: &[u8], name: &str) -> bool {
    let args: Vec<&[u8]> = cmd.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
    let is_wg = args
        .first()
        .is_some_and(|a| a.ends_with(b"wireguard-go") || a.ends_with(b"boringtun-cli"));
    is_wg && args.last().is_some_and(|a| *a == name.as_bytes())
}

/// Terminates the external daemons of `name`: TERM, up to 3 s grace, then KILL.
#[allow(unsafe_code)]
pub(crate) async fn stop_daemons(name: &str) -> usize {
    let pids = daemon_pids(name);
    for &p in &pids {
        // SAFETY: sending a signal to a PID we just matched by command line.
        unsafe { libc::kill(p, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline
        && pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for &p in &pids {
        if Path::new(&format!("/proc/{p}")).exists() {
            // SAFETY: as above.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
    pids.len()
}

#[cfg(test)]
mod daemon_tests {
    use super::{is_daemon_of, same_namespace};

    #[test]
    fn daemons_are_matched_by_binary_and_interface() {
        let cases: [(&[u8], bool); 6] = [
            (b"/usr/bin/wireguard-go\0wirekube0\0", true),
            (b"wireguard-go\0-f\0wirekube0\0", true),
            (b"/usr/bin/boringtun-cli\0--foreground\0wirekube0\0", true),
            (b"/usr/bin/wireguard-go\0wirekube1\0", false),
            (b"/bin/wirekube-agent\0userspace-engine\0wirekube0\0", false),
            (b"", false),
        ];
        for (cmd, want) in cases {
            assert_eq!(is_daemon_of(cmd, "wirekube0"), want, "{cmd:?}");
        }
    }

    #[test]
    fn only_daemons_of_our_network_namespace_are_stopped() {
        assert!(same_namespace(Some(7), Some(7)));
        assert!(!same_namespace(Some(7), Some(8)), "another pod's or lab's");
        assert!(!same_namespace(Some(7), None), "gone or unreadable");
        assert!(!same_namespace(None, None));
    }
}
