//! WireKube network lab: the test network as a library (in the spirit of Tailscale's natlab).
//!
//! A [`Lab`] owns a set of Linux network namespaces named `<prefix>-<host>`: an "internet" with a
//! bridge on `198.18.0.0/24` (RFC 2544 range), NAT gateways ([`NatKind`]) with LANs behind them,
//! public nodes and a DMZ. Every simulated host also gets a private mount view of
//! `/var/run/wireguard` and `/var/lib/wirekube`, so two hosts can both run `wirekube0`.
//! Processes are started by PID ([`Lab::spawn`]), one-shot commands run in the same view
//! ([`Lab::exec`]), and teardown ([`Lab::shutdown`] or `Drop`) kills, deletes and verifies that
//! nothing is left ([`Lab::leftovers`]). See `docs/lab.md`.
//!
//! Needs root, `iproute2`, `nftables` and `conntrack`; `ping` and `iperf3` for those helpers.

pub mod bins;
mod echo;
mod error;
mod impair;
pub mod nat;
pub mod netns;
mod pingstream;
mod process;
mod teardown;
mod topology;
mod traffic;
mod wait;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

pub use echo::EchoSocket;
pub use error::{LabError, Result};
pub use ipnet::Ipv4Net;
pub use nat::NatKind;
pub use pingstream::{PingReport, PingStream};
pub use process::{MARKER_ENV, PRIVATE_PATHS, Proc, signal};
pub use topology::{Host, Role, Site, SiteSpec};
pub use traffic::{Filtering, Mapping, NatProbe, Transfer};
pub use wait::{holds_for, wait_for, wait_until};

use process::{Entry, Running};

/// The internet bridge's own address (default gateway of WAN sides and public hosts).
pub const INTERNET_GW: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The "internet": every public address of a lab is in here.
pub const INTERNET_NET: &str = "198.18.0.0/24";
/// Longest prefix accepted by [`Lab::new`] (namespace and alias names stay short).
pub const MAX_PREFIX_LEN: usize = 8;

/// A running network lab. Dropping it tears everything down.
pub struct Lab {
    prefix: String,
    dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    hosts: BTreeMap<String, Host>,
    sites: BTreeMap<String, Site>,
    /// Namespaces in creation order.
    namespaces: Vec<String>,
    procs: Vec<Running>,
    used_public: BTreeSet<Ipv4Addr>,
    loss: Vec<(Ipv4Addr, Ipv4Addr, u8)>,
    impair_ready: bool,
    log_seq: u32,
    down: bool,
}

impl Lab {
    /// Creates an empty lab (only the internet namespace) for `prefix`: 1–8 characters `[a-z0-9]`,
    /// starting with a letter, unique among labs alive on this machine. Use
    /// [`Lab::unique_prefix`] to make one.
    pub fn new(prefix: &str) -> Result<Lab> {
        validate_prefix(prefix)?;
        if !netns::list_with_prefix(&format!("{prefix}-")).is_empty() {
            return Err(LabError::PrefixInUse(prefix.to_owned()));
        }
        process::ensure_mount_points()?;
        let base = labs_root();
        std::fs::create_dir_all(&base).map_err(|source| LabError::Io {
            context: format!("create {}", base.display()),
            source,
        })?;
        let dir = base.join(prefix);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(LabError::PrefixInUse(prefix.to_owned()));
            }
            Err(source) => {
                return Err(LabError::Io {
                    context: format!("create {}", dir.display()),
                    source,
                });
            }
        }
        for sub in ["hosts", "logs"] {
            std::fs::create_dir(dir.join(sub)).map_err(|source| LabError::Io {
                context: format!("create {sub} in {}", dir.display()),
                source,
            })?;
        }
        let lab = Lab {
            prefix: prefix.to_owned(),
            dir,
            state: Mutex::new(State::default()),
        };
        // From here on, Drop cleans up whatever was built if something fails.
        lab.build_internet()?;
        Ok(lab)
    }

    /// A fresh prefix: `tag` (up to 3 letters) plus 5 characters from the PID, the clock and a
    /// counter, so parallel tests and parallel test binaries do not collide.
    pub fn unique_prefix(tag: &str) -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_lowercase())
            .take(3)
            .collect();
        let tag = if tag.is_empty() { "wk".to_owned() } else { tag };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let mut x = (u64::from(std::process::id()) << 20) ^ nanos ^ seq.wrapping_mul(0x9E37_79B9);
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 29;
        let mut s = tag;
        const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        for _ in 0..5 {
            s.push(DIGITS[(x % 36) as usize] as char);
            x /= 36;
        }
        s
    }

    /// [`Lab::new`] with [`Lab::unique_prefix`]`(tag)`.
    pub fn new_unique(tag: &str) -> Result<Lab> {
        Lab::new(&Lab::unique_prefix(tag))
    }

    /// The lab's prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The lab directory (per-host private dirs under `hosts/`, process logs under `logs/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Namespace name of host `name` in this lab.
    pub fn ns_name(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Starts `cmd` inside `host` (its namespace and private mount view), stdout and stderr going
    /// to a log file in the lab dir. The returned PID is the program itself. The lab stops it at
    /// teardown; [`Lab::stop`] stops it earlier.
    pub fn spawn(&self, host: &Host, cmd: Command) -> Result<Proc> {
        let prog = Path::new(cmd.get_program())
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "proc".into());
        let mut st = self.lock();
        if st.down {
            return Err(LabError::Topology("lab is shut down".into()));
        }
        st.log_seq += 1;
        let log = self
            .dir
            .join("logs")
            .join(format!("{}.{prog}.{}.log", host.name, st.log_seq));
        let run = process::spawn(&self.entry(host), cmd, &host.name, log)?;
        let p = run.proc.clone();
        st.procs.push(run);
        Ok(p)
    }

    /// Stops a process started with [`Lab::spawn`] (TERM, up to 3 s, then KILL) and reaps it.
    pub fn stop(&self, proc: &Proc) -> Result<std::process::ExitStatus> {
        let mut run = {
            let mut st = self.lock();
            let i = st
                .procs
                .iter()
                .position(|r| r.proc.pid == proc.pid)
                .ok_or_else(|| LabError::Unknown {
                    kind: "process",
                    name: format!("{} ({})", proc.pid, proc.label),
                })?;
            st.procs.swap_remove(i)
        };
        process::stop(&mut run, Duration::from_secs(3))
    }

    /// Whether a spawned process is still running (reaps it if it exited).
    pub fn is_running(&self, proc: &Proc) -> bool {
        let mut st = self.lock();
        st.procs
            .iter_mut()
            .find(|r| r.proc.pid == proc.pid)
            .is_some_and(|r| matches!(r.child.try_wait(), Ok(None)))
    }

    /// How a process started with [`Lab::spawn`] ended, in words ("exit code 1", "killed by
    /// signal 9 (SIGKILL)"), or `None` while it runs. For failure messages: a process that
    /// died before writing its log is otherwise a riddle.
    pub fn exit_status(&self, proc: &Proc) -> Option<String> {
        let mut st = self.lock();
        let run = st.procs.iter_mut().find(|r| r.proc.pid == proc.pid)?;
        match run.child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => Some(process::describe_exit(status)),
            Err(e) => Some(format!("unknown ({e})")),
        }
    }

    /// The output a spawned process has written so far.
    pub fn log(&self, proc: &Proc) -> String {
        std::fs::read_to_string(&proc.log).unwrap_or_default()
    }

    /// The last `lines` lines of every process log, for failure messages.
    pub fn logs_tail(&self, lines: usize) -> String {
        let st = self.lock();
        let mut out = String::new();
        for r in &st.procs {
            out += &format!(
                "==== {} pid {} ({})\n{}\n",
                r.proc.host,
                r.proc.pid,
                r.proc.log.display(),
                process::tail(&r.proc.log, lines)
            );
        }
        out
    }

    /// Runs a one-shot command in `host` (same namespace and mount view as its processes, so
    /// `wg show` sees that host's UAPI sockets). Returns the output whatever the exit status;
    /// 20 s deadline.
    pub fn exec(&self, host: &Host, args: &[&str]) -> Result<Output> {
        self.exec_timeout(host, args, netns::default_timeout())
    }

    /// [`Lab::exec`] with an explicit deadline.
    pub fn exec_timeout(&self, host: &Host, args: &[&str], timeout: Duration) -> Result<Output> {
        process::exec(&self.entry(host), args, timeout)
    }

    /// Like [`Lab::exec`] but fails on a non-zero exit; returns stdout.
    pub fn run(&self, host: &Host, args: &[&str]) -> Result<String> {
        let out = self.exec(host, args)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(LabError::Command {
                ns: host.ns.clone(),
                cmd: args.join(" "),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    /// Runs `f` on a thread inside `host`'s network namespace (sockets it creates stay there).
    pub fn in_host<T, F>(&self, host: &Host, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        netns::in_netns(&host.ns, f)
    }

    /// Runs `args` in `host` with `input` on stdin, failing on a non-zero exit.
    fn run_input(&self, host: &Host, args: &[&str], input: &str) -> Result<Output> {
        let mut cmd = Command::new(args[0]);
        cmd.args(&args[1..]);
        let _ns = self.entry(host).apply(&mut cmd)?;
        netns::run_input(
            &host.ns,
            &mut cmd,
            Some(input.as_bytes()),
            netns::default_timeout(),
        )
    }

    fn entry(&self, host: &Host) -> Entry {
        let binds = if host.role.has_private_view() {
            let hd = self.host_dir(&host.name);
            vec![
                (hd.join("run-wireguard"), PathBuf::from(PRIVATE_PATHS[0])),
                (hd.join("lib-wirekube"), PathBuf::from(PRIVATE_PATHS[1])),
                (hd.join("cni-net.d"), PathBuf::from(PRIVATE_PATHS[2])),
            ]
        } else {
            Vec::new()
        };
        Entry {
            netns: host.ns.clone(),
            binds,
            prefix: self.prefix.clone(),
        }
    }

    /// The directory that host `name` sees as its private paths (`run-wireguard`, `lib-wirekube`,
    /// `cni-net.d`).
    pub fn host_dir(&self, name: &str) -> PathBuf {
        self.dir.join("hosts").join(name)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock must not prevent teardown.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Parent of every lab dir.
pub fn labs_root() -> PathBuf {
    std::env::temp_dir().join("wirekube-lab")
}

/// True when running as root (the lab needs it).
#[allow(unsafe_code)]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn validate_prefix(prefix: &str) -> Result<()> {
    let bad = |reason| {
        Err(LabError::InvalidName {
            name: prefix.to_owned(),
            reason,
        })
    };
    if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN {
        return bad("prefix must be 1 to 8 characters");
    }
    if !prefix.starts_with(|c: char| c.is_ascii_lowercase()) {
        return bad("prefix must start with a lowercase letter");
    }
    if !prefix
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return bad("prefix may only contain a-z and 0-9");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn lab_is_shareable_between_threads() {
        fn check<T: Send + Sync>() {}
        check::<super::Lab>();
    }

    #[test]
    fn prefixes_are_valid_and_distinct() {
        let a = super::Lab::unique_prefix("abcdef");
        let b = super::Lab::unique_prefix("abc");
        assert!(super::validate_prefix(&a).is_ok(), "{a}");
        assert_eq!(a.len(), 8);
        assert_ne!(a, b);
        assert!(super::validate_prefix("9x").is_err());
    }
}
