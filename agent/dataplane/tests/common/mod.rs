//! The dataplane tests' network: a `wirekube_lab::Lab` with two public nodes `a` and `b` on the
//! lab's internet (one bridge, no NAT between them), torn down on drop (also when a test
//! panics) with the lab's own teardown: every process inside killed, namespaces deleted,
//! leftovers checked. Needs root.
//!
//! The `Dataplane` under test runs on this test's threads ([`in_ns`] joins only the network
//! namespace), so the userspace daemons it starts and `wg` see the machine's
//! `/var/run/wireguard`, not the lab hosts' private view: UAPI sockets are global
//! (docs/lab-findings.md §7.1), hence interface names unique per lab ([`Lab::ifname`]).
#![allow(dead_code)]

use std::future::Future;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::IpNet;
use wirekube_dataplane::{InterfaceConfig, PeerConfig};
use wirekube_lab::{Host, netns, wait_until};

/// Runs `args` (a shell-free argv) in this process's namespaces, panicking with its stderr on
/// failure; its stdout.
pub fn run(args: &[&str]) -> String {
    let mut cmd = std::process::Command::new(args[0]);
    cmd.args(&args[1..]);
    let out = netns::run("host", &mut cmd).unwrap_or_else(|e| panic!("{e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`run`] but returns whether it succeeded.
pub fn try_run(args: &[&str]) -> bool {
    let mut cmd = std::process::Command::new(args[0]);
    cmd.args(&args[1..]);
    netns::run("host", &mut cmd).is_ok()
}

/// Runs the future produced by `f` on a fresh current-thread runtime in a thread that has
/// joined network namespace `ns` (only that thread changes namespace; every thread, socket and
/// child process created from it lives there too). `f` may borrow from the caller.
pub fn in_ns<F, Fut, T>(ns: &str, f: F) -> T
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T>,
    T: Send,
{
    let path = netns::ns_path(ns);
    std::thread::scope(|s| {
        s.spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            netns::join(&file).unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
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

/// Pings `ip` from namespace `ns` until a reply or `secs` seconds (a WireGuard initiation that
/// beats the peer's configuration is retried after 5 s, docs/lab-findings.md §7.10). For code
/// that has no [`Lab`] at hand (inside a spawned task).
pub fn ping_ns(ns: &str, ip: &str, secs: u64) -> bool {
    let what = format!("ping {ip} from {ns}");
    wait_until(Duration::from_secs(secs), &what, || {
        try_run(&["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", ip])
    })
    .is_ok()
}

/// Two public nodes of a lab: `a.ns` and `b.ns` are their namespaces, `eth0` their NIC.
pub struct Lab {
    pub lab: wirekube_lab::Lab,
    pub a: Host,
    pub b: Host,
}

impl Lab {
    /// A lab tagged `test` (its first three letters start the lab prefix).
    pub fn new(test: &str) -> Lab {
        let lab = wirekube_lab::Lab::new_unique(test).expect("lab");
        let a = lab.add_public_node("a").expect("node a");
        let b = lab.add_public_node("b").expect("node b");
        // Carrier comes up asynchronously; until then routes print `linkdown`, and tests that
        // compare route tables before and after would see a difference that is not theirs.
        for h in [&a, &b] {
            wait_until(Duration::from_secs(5), "veth carrier", || {
                run(&["ip", "-n", &h.ns, "-o", "link", "show", "eth0"]).contains("LOWER_UP")
            })
            .unwrap();
        }
        Lab { lab, a, b }
    }

    /// Globally unique interface name: `wk<lab prefix><side>`.
    pub fn ifname(&self, side: &str) -> String {
        let s = format!("wk{}{side}", self.lab.prefix());
        assert!(s.len() <= 15, "{s}");
        s
    }

    /// The underlay address of node `a` or `b`.
    pub fn addr(&self, side: &str) -> Ipv4Addr {
        self.side(side).ip()
    }

    /// The WireGuard endpoint of node `a` or `b` (its address, port 51820).
    pub fn ep(&self, side: &str) -> String {
        format!("{}:51820", self.addr(side))
    }

    fn side(&self, side: &str) -> &Host {
        match side {
            "a" => &self.a,
            "b" => &self.b,
            _ => panic!("no node {side:?} in the dataplane lab"),
        }
    }

    /// Pings `ip` from `from` until a reply or `secs` seconds; whether one came.
    pub fn ping(&self, from: &Host, ip: &str, secs: u64) -> bool {
        let ip: Ipv4Addr = ip.parse().expect("IPv4 address");
        (self.lab)
            .ping_until(from, ip, Duration::from_secs(secs))
            .is_ok()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The lab kills every process in its namespaces (TERM, then KILL), deletes them and
        // checks for leftovers; `ip netns del` alone would not (docs/lab-findings.md §7.2).
        if let Err(e) = self.lab.shutdown() {
            eprintln!("dataplane lab teardown: {e}");
        }
        // wireguard-go removes its UAPI socket on TERM; one that was KILLed leaves it.
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
