//! Network namespaces: create, delete, run code or commands inside, find their processes.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::linux::fs::MetadataExt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::error::{IoContext, LabError, Result};

/// Where `ip netns` keeps its bind-mounted namespace handles.
pub const NETNS_DIR: &str = "/run/netns";

/// Path of the handle of namespace `name`.
/// An absolute `name` is taken as the path itself (e.g. `/proc/<pid>/ns/net` of a process that
/// runs in a namespace made in another mount namespace, whose `/run/netns` entry this process
/// cannot see).
pub fn ns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Creates namespace `name` (through `ip netns add`, which also prepares `/run/netns` as a shared
/// mount point) and brings its loopback up.
pub fn create(name: &str) -> Result<()> {
    run(name, Command::new("ip").args(["netns", "add", name]))?;
    ip(name, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes namespace `name` like `ip netns del` does: detach the bind mount, remove the file.
/// Processes still inside keep the namespace alive, so kill them first.
#[allow(unsafe_code)]
pub fn delete(name: &str) -> Result<()> {
    let path = ns_path(name);
    let c = CString::new(path.as_os_str().as_bytes()).expect("no NUL in path");
    // SAFETY: plain syscall with a valid C string.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT) {
            return Err(e).ctx(|| format!("umount {}", path.display()));
        }
    }
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).ctx(|| format!("remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Names of all namespaces whose name starts with `prefix`.
pub fn list_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(rd) = fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// Inode of the namespace behind handle `name` (what `/proc/PID/ns/net` shows as `net:[INODE]`).
pub fn inode(name: &str) -> Option<u64> {
    fs::metadata(ns_path(name)).ok().map(|m| m.st_ino())
}

/// PIDs of every process whose network namespace is `name` (like `ip netns pids`).
pub fn pids_in(name: &str) -> Vec<i32> {
    let Some(ino) = inode(name) else {
        return Vec::new();
    };
    let want = format!("net:[{ino}]");
    all_pids()
        .into_iter()
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/ns/net"))
                .map(|l| l.as_os_str().as_bytes() == want.as_bytes())
                .unwrap_or(false)
        })
        .collect()
}

/// Every PID in `/proc`.
pub fn all_pids() -> Vec<i32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect()
}

/// Moves the calling thread into the network namespace `ns` refers to (an open
/// `/run/netns/<name>`). Only this thread changes namespace; sockets it creates afterwards live
/// there.
#[allow(unsafe_code)]
pub fn join(ns: &fs::File) -> io::Result<()> {
    // SAFETY: setns on a valid descriptor; affects only the calling thread.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Runs `f` on a fresh thread that has joined namespace `name`. Sockets created by `f` stay in that
/// namespace for their whole life and may be used from any thread afterwards.
pub fn in_netns<T, F>(name: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = ns_path(name);
    let file = fs::File::open(&path).ctx(|| format!("open {}", path.display()))?;
    let handle = thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || {
            join(&file)?;
            drop(file);
            Ok(f())
        })
        .ctx(|| "spawn netns thread".to_owned())?;
    match handle.join() {
        Ok(r) => r.ctx(|| format!("setns into {name}")),
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Writes a sysctl (`net.ipv4.ip_forward`) inside namespace `ns`.
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = value.to_owned();
    let p2 = path.clone();
    in_netns(ns, move || fs::write(&p2, value))?.ctx(|| format!("{ns}: write {path}"))
}

/// Reads a sysctl inside namespace `ns`.
pub fn sysctl_get(ns: &str, key: &str) -> Result<String> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let p2 = path.clone();
    in_netns(ns, move || fs::read_to_string(&p2))?
        .map(|s| s.trim().to_owned())
        .ctx(|| format!("{ns}: read {path}"))
}

/// `ip -n NS ARGS...`, failing on a non-zero exit.
pub fn ip(ns: &str, args: &[&str]) -> Result<Output> {
    run(ns, Command::new("ip").arg("-n").arg(ns).args(args))
}

/// `ip -n NS -batch -` with one command per line: one process for many changes.
pub fn ip_batch(ns: &str, lines: &[String]) -> Result<Output> {
    let input = lines.join("\n") + "\n";
    run_input(
        ns,
        Command::new("ip").args(["-n", ns, "-batch", "-"]),
        Some(input.as_bytes()),
        default_timeout(),
    )
}

/// Default deadline for one-shot commands (times [`slowdown`]: [`default_timeout`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// Environment variable with a whole factor (default 1) on the lab's start-up and command
/// deadlines, for machines much slower than a CI runner: `make test-kernel` runs labs under
/// software emulation in a VM (there `kubectl apply -k config/default` alone takes about 30 s).
pub const SLOWDOWN_ENV: &str = "WIREKUBE_LAB_SLOWDOWN";

/// The factor of [`SLOWDOWN_ENV`]; 1 when unset or not a whole number from 1 to 100.
pub fn slowdown() -> u32 {
    parse_slowdown(std::env::var(SLOWDOWN_ENV).ok().as_deref())
}

fn parse_slowdown(v: Option<&str>) -> u32 {
    v.and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|f| (1..=100).contains(f))
        .unwrap_or(1)
}

/// [`DEFAULT_TIMEOUT`] times [`slowdown`].
pub fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT * slowdown()
}

/// Runs `cmd` to completion (20 s deadline), failing on a non-zero exit. `ns` is only for messages.
pub fn run(ns: &str, cmd: &mut Command) -> Result<Output> {
    run_input(ns, cmd, None, default_timeout())
}

/// Runs `cmd` with optional stdin, a deadline, and checks the exit status.
pub fn run_input(
    ns: &str,
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output> {
    let out = output_with_timeout(ns, cmd, input, timeout)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(LabError::Command {
            ns: ns.to_owned(),
            cmd: describe(cmd),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned()
                + &String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .take(5)
                    .map(|l| format!("\n  stdout: {l}"))
                    .collect::<String>(),
        })
    }
}

/// `cmd` rendered for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Spawns `cmd` with piped output, feeds `input`, and collects the output; kills it (by PID) if it
/// is still running at the deadline. Does not look at the exit status.
pub fn output_with_timeout(
    ns: &str,
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .ctx(|| format!("{ns}: spawn {}", describe(cmd)))?;
    if let Some(data) = input {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(data)
            .ctx(|| format!("{ns}: write stdin of {}", describe(cmd)))?;
    }
    let mut so = child.stdout.take().expect("piped stdout");
    let mut se = child.stderr.take().expect("piped stderr");
    let t_out = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = so.read_to_end(&mut b);
        b
    });
    let t_err = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = se.read_to_end(&mut b);
        b
    });
    // A waiter thread blocks in wait(); the deadline is a channel timeout, so a short command
    // costs no polling latency. On timeout the child is killed by PID: it is not reaped yet (the
    // waiter still waits), so the PID cannot have been reused.
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(timeout) {
        Ok(st) => st.ctx(|| format!("{ns}: wait"))?,
        Err(_) => {
            // Our own unreaped child.
            crate::signal(pid, libc::SIGKILL);
            let _ = rx.recv();
            return Err(LabError::Timeout {
                what: format!("{ns}: {}", describe(cmd)),
                after: timeout,
            });
        }
    };
    Ok(Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod slowdown_tests {
    use super::parse_slowdown;

    #[test]
    fn slowdown_is_a_whole_factor_from_one_to_a_hundred() {
        for (v, want) in [
            (None, 1),
            (Some("4"), 4),
            (Some(" 3 "), 3),
            (Some("0"), 1),
            (Some("1.5"), 1),
            (Some("x"), 1),
            (Some("1000"), 1),
        ] {
            assert_eq!(parse_slowdown(v), want, "{v:?}");
        }
    }
}
