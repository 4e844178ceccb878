//! Network-namespace lab for the dataplane tests: two namespaces joined by a veth pair,
//! torn down on drop (also when a test panics). Needs root.
#![allow(dead_code)]

use std::future::Future;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use wirekube_dataplane::{InterfaceConfig, PeerConfig};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs `cmd` (a shell-free argv), panicking with its stderr on failure.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like `run` but returns whether it succeeded.
pub fn try_run(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs the future produced by `f` on a fresh current-thread runtime in a thread that has
/// joined namespace `ns` (setns affects only the calling thread; every thread, socket and
/// child process created from it lives in that namespace too).
pub fn in_ns<F, Fut, T>(ns: &str, f: F) -> T
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T>,
    T: Send,
{
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on our own thread with a valid namespace fd.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Two namespaces `a` and `b`, veth `v0` in each, 10.77.0.1/24 and 10.77.0.2/24.
pub struct Lab {
    pub a: String,
    pub b: String,
    pub tag: String,
}

impl Lab {
    pub fn new(test: &str) -> Lab {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{:x}{n}", std::process::id() & 0xfff);
        let a = format!("wkdp-{test}-{tag}-a");
        let b = format!("wkdp-{test}-{tag}-b");
        let lab = Lab {
            a: a.clone(),
            b: b.clone(),
            tag,
        };
        run(&["ip", "netns", "add", &a]);
        run(&["ip", "netns", "add", &b]);
        run(&[
            "ip", "-n", &a, "link", "add", "v0", "type", "veth", "peer", "name", "v0", "netns", &b,
        ]);
        for (ns, ip) in [(&a, "10.77.0.1/24"), (&b, "10.77.0.2/24")] {
            run(&["ip", "-n", ns, "addr", "add", ip, "dev", "v0"]);
            run(&["ip", "-n", ns, "link", "set", "v0", "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        // Carrier comes up asynchronously; until then routes print `linkdown`, and tests
        // that compare route tables before and after would see a difference that is not theirs.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while [&a, &b]
            .iter()
            .any(|ns| !run(&["ip", "-n", ns, "-o", "link", "show", "v0"]).contains("LOWER_UP"))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "veth carrier never came up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        lab
    }

    /// Globally unique interface name (UAPI sockets are shared by all namespaces).
    pub fn ifname(&self, side: &str) -> String {
        let s = format!("wk{}{side}", self.tag);
        assert!(s.len() <= 15);
        s
    }

    /// Pings `ip` from namespace `ns`, retrying for up to `secs` (the first WireGuard
    /// initiation can be dropped if it beats the peer's configuration: 5 s retry).
    pub fn ping(&self, ns: &str, ip: &str, secs: u64) -> bool {
        for _ in 0..secs {
            if try_run(&["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", ip]) {
                return true;
            }
        }
        false
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            // `ip netns del` does not kill processes (docs/lab-findings.md §7.2): the daemons first.
            let pids = Command::new("ip").args(["netns", "pids", ns]).output();
            if let Ok(o) = pids {
                for p in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-TERM", p]).status();
                }
            }
        }
        // Give TERM a chance (wireguard-go removes its UAPI socket on TERM), then KILL.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline
            && [&self.a, &self.b].iter().any(|ns| {
                Command::new("ip")
                    .args(["netns", "pids", ns])
                    .output()
                    .is_ok_and(|o| !o.stdout.trim_ascii().is_empty())
            })
        {
            std::thread::yield_now();
        }
        for ns in [&self.a, &self.b] {
            if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for p in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", p]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for side in ["a", "b"] {
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.ifname(side)));
        }
    }
}

pub fn keypair(seed: u8) -> ([u8; 32], [u8; 32]) {
    let mut sk = [0u8; 32];
    for (i, b) in sk.iter_mut().enumerate() {
        *b = seed.wrapping_mul(31).wrapping_add(i as u8);
    }
    let public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(sk)).to_bytes();
    (sk, public)
}

pub const TABLE: u32 = 51820;
pub const PRIO: u32 = 5210;

pub fn iface(name: &str, sk: [u8; 32], mesh_ip: &str) -> InterfaceConfig {
    InterfaceConfig {
        name: name.to_string(),
        private_key: sk,
        listen_port: 51820,
        mtu: 1420,
        address: format!("{mesh_ip}/16").parse().unwrap(),
        mesh_cidr: "100.96.0.0/16".parse().unwrap(),
        fwmark: 0xca6c,
        table: TABLE,
        rule_priority: PRIO,
    }
}

pub fn peer(public: [u8; 32], endpoint: Option<&str>, mesh_ip: &str) -> PeerConfig {
    PeerConfig {
        public_key: public,
        endpoint: endpoint.map(|e| e.parse().unwrap()),
        allowed_ips: vec![format!("{mesh_ip}/32").parse::<IpNet>().unwrap()],
        persistent_keepalive: Some(5),
    }
}

pub fn b64(k: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(k)
}
