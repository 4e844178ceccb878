//! The "container runtime": pod network namespaces and container processes, each in its own
//! process group and mount namespace with the pod's volumes bind-mounted. When a container's
//! main process ends, whatever else runs in its mount namespace is killed, as a runtime does.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

use super::error::{KubeletError, Result};
use super::volumes::Bind;

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The environment variable the lab marks its processes with (kept for containers so that lab
/// teardown finds them even after the kubelet is gone).
const LAB_MARKER: &str = "WIREKUBE_LAB";
/// `PATH` of a container, as container images usually set it.
const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A pod network namespace's name: `<prefix>-p<first 8 hex digits of the uid>`.
pub fn netns_name(prefix: &str, uid: &str) -> String {
    let short: String = uid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(8)
        .collect();
    format!("{prefix}-p{short}")
}

/// Path of a named network namespace.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

async fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| KubeletError::io(format!("run ip {}", args.join(" ")), e))?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    Err(KubeletError::io(
        format!("ip {}", args.join(" ")),
        io::Error::other(msg),
    ))
}

/// Creates a named network namespace (reusing one that already exists).
pub async fn netns_add(name: &str) -> Result<()> {
    if File::open(netns_path(name)).is_ok_and(|f| is_netns(&f)) {
        return Ok(());
    }
    ip(&["netns", "add", name]).await
}

#[allow(unsafe_code)]
fn is_netns(f: &File) -> bool {
    // SAFETY: fstatfs on an open descriptor with a zeroed out-parameter.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::fstatfs(f.as_raw_fd(), &mut st) == 0 && st.f_type == libc::NSFS_MAGIC
    }
}

/// Deletes a named network namespace; a missing one is fine.
pub async fn netns_del(name: &str) -> Result<()> {
    if !netns_path(name).exists() {
        return Ok(());
    }
    ip(&["netns", "del", name]).await
}

/// How to start one container process.
#[derive(Clone, Debug)]
pub struct SpawnSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub hostname: String,
    /// The pod's network namespace; `None` for hostNetwork pods.
    pub netns: Option<PathBuf>,
    pub binds: Vec<Bind>,
    pub log: PathBuf,
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|e| KubeletError::io(format!("path {}", p.display()), io::Error::other(e)))
}

/// Creates each bind target like its source (directory or empty file) if it is missing.
fn make_targets(binds: &[Bind]) -> Result<()> {
    for b in binds {
        if b.target.exists() {
            continue;
        }
        let what = || format!("create mount point {}", b.target.display());
        if b.source.is_dir() {
            fs::create_dir_all(&b.target).map_err(|e| KubeletError::io(what(), e))?;
        } else {
            if let Some(parent) = b.target.parent() {
                fs::create_dir_all(parent).map_err(|e| KubeletError::io(what(), e))?;
            }
            File::create(&b.target).map_err(|e| KubeletError::io(what(), e))?;
        }
    }
    Ok(())
}

/// Starts a container process: new session, the pod's network namespace, a private mount
/// namespace with the volume binds, output appended to its log.
#[allow(unsafe_code)]
pub fn spawn(spec: &SpawnSpec) -> Result<Child> {
    let mut binds = spec.binds.clone();
    binds.sort_by_key(|b| b.target.components().count());
    make_targets(&binds)?;
    let prepared: Vec<(CString, CString, bool)> = binds
        .iter()
        .map(|b| Ok((cstr(&b.source)?, cstr(&b.target)?, b.read_only)))
        .collect::<Result<_>>()?;
    let netns = spec
        .netns
        .as_ref()
        .map(|p| File::open(p).map_err(|e| KubeletError::io(format!("open {}", p.display()), e)))
        .transpose()?;
    let netns_fd = netns.as_ref().map(AsRawFd::as_raw_fd);
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(|e| KubeletError::io(format!("open log {}", spec.log.display()), e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| KubeletError::io("dup log", e))?;
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| KubeletError::io("spawn", io::Error::other("empty argv")))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", CONTAINER_PATH)
        .env("HOSTNAME", &spec.hostname)
        .envs(std::env::var_os(LAB_MARKER).map(|v| (LAB_MARKER, v)))
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    let (root, sys, sysfs) = (c"/", c"/sys", c"sysfs");
    // SAFETY: the closure only makes raw syscalls on data prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            let chk = |rc: libc::c_int| {
                if rc == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            };
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(fd) = netns_fd {
                chk(libc::setns(fd, libc::CLONE_NEWNET))?;
            }
            chk(libc::unshare(libc::CLONE_NEWNS))?;
            let none = std::ptr::null();
            chk(libc::mount(
                none,
                root.as_ptr(),
                none,
                libc::MS_REC | libc::MS_SLAVE,
                none.cast(),
            ))?;
            if netns_fd.is_some() {
                libc::umount2(sys.as_ptr(), libc::MNT_DETACH);
                chk(libc::mount(
                    sysfs.as_ptr(),
                    sys.as_ptr(),
                    sysfs.as_ptr(),
                    0,
                    none.cast(),
                ))?;
            }
            for (src, dst, ro) in &prepared {
                chk(libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    none,
                    libc::MS_BIND | libc::MS_REC,
                    none.cast(),
                ))?;
                if *ro {
                    let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
                    chk(libc::mount(none, dst.as_ptr(), none, flags, none.cast()))?;
                }
            }
            Ok(())
        });
    }
    let mut cmd = Command::from(cmd);
    cmd.kill_on_drop(false);
    let child = cmd
        .spawn()
        .map_err(|e| KubeletError::io(format!("start {program}"), e))?;
    drop(netns);
    Ok(child)
}

/// The mount namespace of process `pid` (its inode), `None` when it is gone. Each container run
/// has its own (`spawn` unshares one), inherited by everything it starts, also by daemons that
/// leave its session: the lab's stand-in for a container's PID namespace and cgroup.
pub fn mount_ns(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|m| m.ino())
}

/// A container run's mount namespace, held open for as long as the run is watched.
///
/// Namespace inode numbers are reused as soon as a namespace is freed: when a container's only
/// process died, the next process to unshare a mount namespace (any `kubectl` the tests run
/// through the lab, which gives every command its own) could get the same number, and the
/// leftover sweep killed it (a fault test's `kubectl delete` right after SIGKILLing the operator
/// failed with no output that way). The open file keeps the namespace, and so its number, alive.
pub struct RunNamespace {
    ino: u64,
    _pin: fs::File,
}

impl RunNamespace {
    /// Pins the mount namespace of `pid`; `None` when the process is gone.
    pub fn pin(pid: u32) -> Option<RunNamespace> {
        use std::os::unix::fs::MetadataExt;
        let f = fs::File::open(format!("/proc/{pid}/ns/mnt")).ok()?;
        let ino = f.metadata().ok()?.ino();
        Some(RunNamespace { ino, _pin: f })
    }

    pub fn ino(&self) -> u64 {
        self.ino
    }
}

/// The processes to kill when a container run ends: those in the run's mount namespace `ns`,
/// unless that is `own` (the kubelet's: `spawn` failed to give the run one of its own).
pub fn leftovers(procs: &[(u32, u64)], ns: u64, own: Option<u64>) -> Vec<u32> {
    if own == Some(ns) {
        return Vec::new();
    }
    procs
        .iter()
        .filter(|(_, n)| *n == ns)
        .map(|(p, _)| *p)
        .collect()
}

/// SIGKILLs every process still in mount namespace `ns`, as a container runtime kills what is
/// left in a container whose main process ended (a daemon it started with `setsid` included);
/// returns the pids killed.
#[allow(unsafe_code)]
pub fn kill_leftovers(ns: u64) -> Vec<u32> {
    let mut procs = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                && let Some(n) = mount_ns(pid)
            {
                procs.push((pid, n));
            }
        }
    }
    let victims = leftovers(&procs, ns, mount_ns(std::process::id()));
    for &p in &victims {
        if let Ok(pid) = libc::pid_t::try_from(p) {
            // SAFETY: kill(2) on a process of this container run; failures (gone) are harmless.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    victims
}

/// Sends `sig` to the process group led by `pid` (a container and everything it started),
/// falling back to the process alone.
#[allow(unsafe_code)]
pub fn signal_group(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) with a group or process id; failures (already gone) are harmless here.
    unsafe {
        if libc::kill(-pid, sig) != 0 {
            libc::kill(pid, sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_the_processes_of_the_run_namespace_only() {
        let procs = [(10, 7), (11, 7), (12, 8), (13, 9)];
        assert_eq!(leftovers(&procs, 7, Some(9)), [10, 11]);
        assert_eq!(leftovers(&procs, 8, Some(9)), [12]);
        assert!(leftovers(&procs, 5, Some(9)).is_empty());
        // Never the kubelet's own namespace, whatever shares it.
        assert!(leftovers(&procs, 9, Some(9)).is_empty());
    }

    /// A pinned run namespace keeps its number while its processes come and go: a process
    /// that unshares a mount namespace after the run's last one died never gets it.
    #[test]
    fn a_pinned_namespace_number_is_not_reused() {
        assert!(wirekube_lab::is_root(), "needs root (unshare -m)");
        let spawn = || {
            std::process::Command::new("unshare")
                .args(["-m", "sleep", "30"])
                .spawn()
                .unwrap()
        };
        let ns_of = |c: &std::process::Child| {
            wirekube_lab::wait_for(std::time::Duration::from_secs(5), "unshared", || {
                mount_ns(c.id()).filter(|n| Some(*n) != mount_ns(std::process::id()))
            })
            .expect("the child's own mount namespace")
            .0
        };
        let mut run = spawn();
        let own = ns_of(&run);
        let pinned = RunNamespace::pin(run.id()).expect("pin");
        assert_eq!(pinned.ino(), own);
        run.kill().unwrap();
        run.wait().unwrap();
        // The namespace lost its last process; new ones must get other numbers.
        for _ in 0..20 {
            let mut next = spawn();
            let n = ns_of(&next);
            next.kill().unwrap();
            next.wait().unwrap();
            assert_ne!(n, pinned.ino(), "a new namespace reused the pinned number");
        }
    }

    #[test]
    fn netns_names() {
        let cases = [
            (
                "klt1a2b",
                "0d9c3e5a-1b2c-4d5e-8f90-aabbccddeeff",
                "klt1a2b-p0d9c3e5a",
            ),
            ("x", "12", "x-p12"),
            ("x", "", "x-p"),
        ];
        for (prefix, uid, want) in cases {
            assert_eq!(netns_name(prefix, uid), want);
        }
        assert_eq!(netns_path("a"), PathBuf::from("/run/netns/a"));
    }

    #[test]
    fn mount_targets_follow_the_source_type() {
        let dir = tempfile::tempdir().unwrap();
        let src_file = dir.path().join("f");
        fs::write(&src_file, b"x").unwrap();
        let binds = vec![
            Bind {
                source: dir.path().to_path_buf(),
                target: dir.path().join("t/dir"),
                read_only: false,
            },
            Bind {
                source: src_file,
                target: dir.path().join("t/sub/file"),
                read_only: true,
            },
        ];
        make_targets(&binds).unwrap();
        assert!(dir.path().join("t/dir").is_dir());
        assert!(dir.path().join("t/sub/file").is_file());
    }
}
