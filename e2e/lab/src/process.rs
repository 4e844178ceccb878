//! Processes inside a simulated host: network namespace plus a private mount view in which
//! per-host directories are bind-mounted over `/var/run/wireguard` and `/var/lib/wirekube`.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{IoContext, LabError, Result};
use crate::netns;

/// Paths that every simulated host sees privately. The host's own copy lives in the lab dir.
/// (`/etc/cni/net.d`: where an agent providing the pod network writes its node's CNI
/// configuration, which that node's lab kubelet reads.)
pub const PRIVATE_PATHS: [&str; 3] = ["/var/run/wireguard", "/var/lib/wirekube", "/etc/cni/net.d"];

/// Environment variable set on every process the lab starts; teardown and `leftovers` find
/// stray processes (including their children) by it.
pub const MARKER_ENV: &str = "WIREKUBE_LAB";

/// How to enter a simulated host: its namespace and its bind mounts (source, target).
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub netns: String,
    pub binds: Vec<(PathBuf, PathBuf)>,
    pub prefix: String,
}

impl Entry {
    /// Prepares `cmd` so that, between fork and exec, the child joins the namespace, gets a private
    /// mount namespace with its own `/sys` and the bind mounts. Returns the namespace handle, which
    /// must stay open until `spawn` returns.
    #[allow(unsafe_code)]
    pub fn apply(&self, cmd: &mut Command) -> Result<File> {
        let path = netns::ns_path(&self.netns);
        let file = File::open(&path).ctx(|| format!("open {}", path.display()))?;
        let fd: RawFd = file.as_raw_fd();
        let cstr = |p: &Path| CString::new(p.as_os_str().as_bytes()).expect("no NUL in path");
        let binds: Vec<(CString, CString)> =
            self.binds.iter().map(|(s, d)| (cstr(s), cstr(d))).collect();
        let sys_src = CString::new(self.netns.as_bytes()).expect("no NUL in name");
        let sys = CString::new("/sys").expect("static");
        let root = CString::new("/").expect("static");
        let sysfs = CString::new("sysfs").expect("static");
        cmd.env(MARKER_ENV, &self.prefix);
        // SAFETY: the closure only makes raw syscalls on data prepared before fork (no allocation,
        // no locks), which is what pre_exec requires.
        unsafe {
            cmd.pre_exec(move || {
                let chk = |rc: libc::c_int| {
                    if rc == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::last_os_error())
                    }
                };
                chk(libc::setns(fd, libc::CLONE_NEWNET))?;
                chk(libc::unshare(libc::CLONE_NEWNS))?;
                chk(libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                // A sysfs of this network namespace, as `ip netns exec` does.
                libc::umount2(sys.as_ptr(), libc::MNT_DETACH);
                chk(libc::mount(
                    sys_src.as_ptr(),
                    sys.as_ptr(),
                    sysfs.as_ptr(),
                    0,
                    std::ptr::null(),
                ))?;
                for (src, dst) in &binds {
                    chk(libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ))?;
                }
                Ok(())
            });
        }
        Ok(file)
    }
}

/// Creates the mount points on the machine (empty directories) so that bind mounts can target them.
pub(crate) fn ensure_mount_points() -> Result<()> {
    for p in PRIVATE_PATHS {
        fs::create_dir_all(p).ctx(|| format!("create mount point {p}"))?;
    }
    Ok(())
}

/// A process the lab started. Cheap to clone; the lab owns the real `Child`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proc {
    /// The real PID of the program (no wrapper process in between).
    pub pid: u32,
    /// The host (namespace short name) it runs in.
    pub host: String,
    /// Label used for the log file name.
    pub label: String,
    /// File that receives its stdout and stderr.
    pub log: PathBuf,
}

/// A started process and its handle.
pub(crate) struct Running {
    pub proc: Proc,
    pub child: Child,
}

/// Starts `cmd` inside `entry`, output appended to `log`.
pub(crate) fn spawn(entry: &Entry, mut cmd: Command, host: &str, log: PathBuf) -> Result<Running> {
    let label = log
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .ctx(|| format!("open log {}", log.display()))?;
    let err = out.try_clone().ctx(|| "clone log fd".to_owned())?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let _ns = entry.apply(&mut cmd)?;
    let child = cmd
        .spawn()
        .ctx(|| format!("{host}: spawn {}", netns::describe(&cmd)))?;
    tracing::debug!(host, pid = child.id(), cmd = %netns::describe(&cmd), "spawned");
    Ok(Running {
        proc: Proc {
            pid: child.id(),
            host: host.to_owned(),
            label,
            log,
        },
        child,
    })
}

/// Runs a one-shot command inside `entry` and returns its output whatever the exit status.
pub(crate) fn exec(entry: &Entry, args: &[&str], timeout: Duration) -> Result<Output> {
    let (prog, rest) = args.split_first().ok_or_else(|| LabError::Command {
        ns: entry.netns.clone(),
        cmd: String::new(),
        status: "not run".into(),
        stderr: "empty command".into(),
    })?;
    let mut cmd = Command::new(prog);
    cmd.args(rest);
    let _ns = entry.apply(&mut cmd)?;
    netns::output_with_timeout(&entry.netns, &mut cmd, None, timeout)
}

/// Sends `sig` to `pid` (kill(2)); false if it no longer exists. The lab's, the scenarios' and
/// the tests' one way to signal a process they know by PID.
#[allow(unsafe_code)]
pub fn signal(pid: i32, sig: libc::c_int) -> bool {
    // SAFETY: kill(2) has no memory-safety requirements.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// True if `pid` exists and is not a zombie.
pub(crate) fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(true),
        Err(_) => false,
    }
}

/// Stops a child: TERM, wait until `grace`, then KILL; always reaps it. Returns how it ended.
pub(crate) fn stop(run: &mut Running, grace: Duration) -> Result<std::process::ExitStatus> {
    let pid = run.proc.pid as i32;
    if let Some(st) = run.child.try_wait().ctx(|| format!("wait {pid}"))? {
        return Ok(st);
    }
    signal(pid, libc::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Some(st) = run.child.try_wait().ctx(|| format!("wait {pid}"))? {
            return Ok(st);
        }
        thread::sleep(Duration::from_millis(5));
    }
    let _ = run.child.kill();
    run.child.wait().ctx(|| format!("wait {pid}"))
}

/// PIDs of processes carrying the lab marker `MARKER_ENV=prefix` (children included).
pub(crate) fn marked_pids(prefix: &str) -> Vec<i32> {
    let needle = format!("{MARKER_ENV}={prefix}\0");
    let me = std::process::id() as i32;
    netns::all_pids()
        .into_iter()
        .filter(|&pid| pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.windows(needle.len()).any(|w| w == needle.as_bytes()))
                .unwrap_or(false)
        })
        .filter(|&pid| alive(pid))
        .collect()
}

/// An exit status in words: "exit code N" or "killed by signal N (NAME)".
pub(crate) fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig} ({})", signal_name(sig)),
        (None, None) => format!("{status}"),
    }
}

fn signal_name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "other",
    }
}

/// Last `lines` lines of a log file (for failure messages).
pub fn tail(path: &Path, lines: usize) -> String {
    let s = fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::describe_exit;

    #[test]
    fn exit_statuses_in_words() {
        // wait(2) encoding: the exit code in the second byte, a terminating signal in the low bits.
        let table = [
            (0, "exit code 0"),
            (1 << 8, "exit code 1"),
            (101 << 8, "exit code 101"),
            (9, "killed by signal 9 (SIGKILL)"),
            (15, "killed by signal 15 (SIGTERM)"),
            (11, "killed by signal 11 (SIGSEGV)"),
            (10, "killed by signal 10 (other)"),
        ];
        for (raw, want) in table {
            assert_eq!(describe_exit(ExitStatus::from_raw(raw)), want, "raw {raw}");
        }
    }
}
