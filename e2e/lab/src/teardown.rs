//! Teardown: kill every process by PID, delete the namespaces, remove the lab dir, verify.

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};
use crate::process::{self, alive, marked_pids, signal};
use crate::{Lab, labs_root, netns};

/// How long processes get between TERM and KILL at teardown.
pub const TERM_GRACE: Duration = Duration::from_secs(3);

impl Lab {
    /// Tears the lab down and checks that nothing is left. Idempotent; `Drop` calls it too.
    ///
    /// 1. TERM to every spawned process, every process carrying the lab marker and every process
    ///    found inside a lab namespace; up to 3 s; then KILL; spawned children are reaped.
    /// 2. Delete the namespaces (a process inside would keep one alive, hence step 1).
    /// 3. Remove the lab dir.
    /// 4. [`Lab::leftovers`] must be empty.
    pub fn shutdown(&self) -> Result<()> {
        let (mut procs, namespaces) = {
            let mut st = self.lock();
            if st.down {
                return Ok(());
            }
            st.down = true;
            (std::mem::take(&mut st.procs), st.namespaces.clone())
        };
        let stray = |namespaces: &[String]| -> Vec<i32> {
            let mut v = marked_pids(&self.prefix);
            for ns in namespaces {
                v.extend(netns::pids_in(ns));
            }
            v.sort_unstable();
            v.dedup();
            v.retain(|&p| p != std::process::id() as i32);
            v
        };
        for r in &procs {
            signal(r.proc.pid as i32, libc::SIGTERM);
        }
        for pid in stray(&namespaces) {
            signal(pid, libc::SIGTERM);
        }
        let start = Instant::now();
        loop {
            procs.retain_mut(|r| matches!(r.child.try_wait(), Ok(None)));
            let others: Vec<i32> = stray(&namespaces)
                .into_iter()
                .filter(|&p| alive(p))
                .collect();
            if procs.is_empty() && others.is_empty() {
                break;
            }
            if start.elapsed() >= TERM_GRACE + Duration::from_secs(2) {
                break; // unkillable (D state); reported by leftovers below
            }
            if start.elapsed() >= TERM_GRACE {
                for r in &mut procs {
                    tracing::warn!(pid = r.proc.pid, host = %r.proc.host, "no exit after TERM, KILL");
                    let _ = r.child.kill();
                    let _ = r.child.wait();
                }
                procs.clear();
                for pid in others {
                    signal(pid, libc::SIGKILL);
                }
            }
            thread::sleep(Duration::from_millis(5));
        }
        let mut errors = Vec::new();
        for ns in namespaces.iter().rev() {
            if let Err(e) = netns::delete(ns) {
                errors.push(e.to_string());
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            errors.push(format!("remove {}: {e}", self.dir.display()));
        }
        errors.extend(Lab::leftovers(&self.prefix));
        if errors.is_empty() {
            tracing::debug!(prefix = %self.prefix, "lab down");
            Ok(())
        } else {
            Err(LabError::Leftovers(errors))
        }
    }

    /// Everything of lab `prefix` that still exists: namespaces `<prefix>-*`, processes carrying
    /// the lab marker, links in this (root) namespace with the lab's alias, the lab dir.
    /// Empty after a correct teardown.
    pub fn leftovers(prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        for ns in netns::list_with_prefix(&format!("{prefix}-")) {
            out.push(format!("namespace {ns}"));
        }
        for pid in marked_pids(prefix) {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            out.push(format!("process {pid} ({})", comm.trim()));
        }
        let alias = format!("wirekube-lab:{prefix}");
        if let Ok(rd) = fs::read_dir("/sys/class/net") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let a = fs::read_to_string(e.path().join("ifalias")).unwrap_or_default();
                if a.trim() == alias || name.starts_with(&format!("{prefix}-")) {
                    out.push(format!("link {name} in the root namespace"));
                }
            }
        }
        let dir = labs_root().join(prefix);
        if Path::new(&dir).exists() {
            out.push(format!("lab dir {}", dir.display()));
        }
        out
    }

    /// Removes what a lab with `prefix` left behind when its test process was killed before
    /// teardown could run (SIGKILL, OOM). Kills its processes, deletes its namespaces and dir.
    pub fn purge(prefix: &str) -> Result<()> {
        let namespaces = netns::list_with_prefix(&format!("{prefix}-"));
        let pids = || {
            let mut v = marked_pids(prefix);
            for ns in &namespaces {
                v.extend(netns::pids_in(ns));
            }
            v
        };
        for pid in pids() {
            signal(pid, libc::SIGKILL);
        }
        let start = Instant::now();
        while pids().into_iter().any(process::alive) && start.elapsed() < TERM_GRACE {
            thread::sleep(Duration::from_millis(5));
        }
        for ns in &namespaces {
            netns::delete(ns)?;
        }
        let _ = fs::remove_dir_all(labs_root().join(prefix));
        let left = Lab::leftovers(prefix);
        if left.is_empty() {
            Ok(())
        } else {
            Err(LabError::Leftovers(left))
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            // Never panic in drop (it may run during a test's unwinding); shout instead.
            eprintln!("wirekube-lab {}: teardown: {e}", self.prefix);
        }
    }
}
