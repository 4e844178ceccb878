//! The container images as a user gets them (needs root, buildah and debootstrap from
//! scripts/install-deps.sh, and `cargo build --workspace --bins`): scripts/build-images.sh builds
//! them without Docker or a registry, then each image's root filesystem is mounted and its binary
//! run from it with chroot, so only what the image carries is used: every `--version` prints the
//! workspace version, the relay answers a STUN binding request on loopback, the agent's `cleanup`
//! removes an interface, rule and route in a throw-away network namespace (running nft from the
//! image on the way), and the labels and users are the ones docs/images.md promises.

mod common;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use wirekube_lab::bins::repo_root;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const CHROOT: &str = "/usr/sbin/chroot";

fn script() -> PathBuf {
    repo_root().join("scripts/build-images.sh")
}

use common::run_ok as run;

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).trim().to_owned()
}

fn buildah(args: &[&str]) -> String {
    stdout(Command::new("bash").arg(script()).arg("buildah").args(args))
}

/// An image's root filesystem, mounted read-write through a working container (removed on drop),
/// and its OCI config.
struct Mounted {
    ctr: String,
    root: PathBuf,
    config: serde_json::Value,
}

impl Mounted {
    fn new(image: &str) -> Mounted {
        let ctr = buildah(&["from", "--pull-never", image]);
        let root = PathBuf::from(buildah(&["mount", &ctr]));
        let inspect = buildah(&["inspect", "--type", "image", image]);
        let inspect: serde_json::Value = serde_json::from_str(&inspect).expect("inspect json");
        // What a container runtime provides and an image does not carry: /dev/null and friends.
        std::fs::create_dir_all(root.join("dev")).expect("mkdir dev");
        for (dev, minor) in [
            ("null", "3"),
            ("zero", "5"),
            ("random", "8"),
            ("urandom", "9"),
        ] {
            let path = root.join("dev").join(dev);
            if !path.exists() {
                run(Command::new("mknod")
                    .args(["-m", "666"])
                    .arg(&path)
                    .args(["c", "1", minor]));
            }
        }
        Mounted {
            ctr,
            root,
            config: inspect["OCIv1"]["config"].clone(),
        }
    }

    /// The image's environment (its Env, as a runtime sets it), nothing from the host.
    fn env(&self) -> Vec<(String, String)> {
        let env = self.config["Env"].as_array().cloned().unwrap_or_default();
        env.iter()
            .filter_map(|e| e.as_str()?.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// `chroot <root> <args>` in the image's environment.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(CHROOT);
        c.env_clear().envs(self.env()).arg(&self.root).args(args);
        c
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["buildah", "rm", &self.ctr])
            .output();
    }
}

struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(Command::new("ip").args(["netns", "add", name]));
        Netns(name.to_owned())
    }
    fn ip(&self, args: &[&str]) -> String {
        stdout(Command::new("ip").args(["-n", &self.0]).args(args))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Builds the images once per test binary (the script is cached and quick when nothing changed)
/// and returns their references: operator, relay, agent.
fn images() -> Vec<String> {
    static BUILT: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = Command::new("bash")
                .arg(script())
                .stderr(Stdio::inherit())
                .output()
                .expect("run scripts/build-images.sh");
            assert!(out.status.success(), "scripts/build-images.sh failed");
            let tags = stdout(Command::new("bash").arg(script()).arg("tags"));
            tags.lines().map(str::to_owned).collect()
        })
        .clone()
}

fn image(name: &str) -> String {
    let tag = format!("ghcr.io/wirekube/wirekube-{name}:v{VERSION}");
    assert!(images().contains(&tag), "{tag} not in {:?}", images());
    tag
}

#[test]
fn every_image_runs_its_binary_at_the_workspace_version() {
    for (name, user) in [
        ("operator", "65532:65532"),
        ("relay", "65532:65532"),
        ("agent", ""),
    ] {
        let img = image(name);
        let m = Mounted::new(&img);
        let bin = format!("/usr/local/bin/wirekube-{name}");
        let v = stdout(&mut m.cmd(&[&bin, "--version"]));
        assert_eq!(v, format!("wirekube-{name} {VERSION}"), "{img}");
        assert_eq!(m.config["User"].as_str().unwrap_or(""), user, "{img} user");
        let labels = &m.config["Labels"];
        assert_eq!(labels["org.opencontainers.image.version"], VERSION, "{img}");
        assert!(
            labels["org.opencontainers.image.source"]
                .as_str()
                .is_some_and(|s| s.starts_with("https://")),
            "{img}: {labels}"
        );
        assert_eq!(m.config["Entrypoint"], serde_json::json!([bin]), "{img}");
        // Nothing interactive: no shell, no package manager in any image.
        for absent in ["bin/sh", "usr/bin/bash", "usr/bin/apt", "usr/bin/dpkg"] {
            assert!(!m.root.join(absent).exists(), "{img} carries /{absent}");
        }
    }
}

#[test]
fn agent_image_carries_the_userspace_engine_and_nft() {
    let img = image("agent");
    let m = Mounted::new(&img);
    let wg = stdout(&mut m.cmd(&["/usr/bin/wireguard-go", "--version"]));
    assert!(wg.starts_with("wireguard-go v"), "{wg}");
    let nft = stdout(&mut m.cmd(&["/usr/sbin/nft", "--version"]));
    assert!(nft.starts_with("nftables v"), "{nft}");
    assert!(
        m.env().contains(&(
            "WIREKUBE_WIREGUARD_GO_BINARY".into(),
            "/usr/bin/wireguard-go".into()
        )),
        "{:?}",
        m.env()
    );
}

/// A STUN binding request (RFC 5389 §6) and the success response's transaction id.
fn stun_binding(to: &str) -> Vec<u8> {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let tid: [u8; 12] = rand::random();
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    req.extend_from_slice(&tid);
    let mut buf = [0u8; 1500];
    let mut answer = None;
    // The relay binds when it has started: ask until it answers.
    wirekube_lab::wait_until(Duration::from_secs(20), "the relay answers STUN", || {
        let _ = sock.send_to(&req, to);
        match sock.recv(&mut buf) {
            Ok(n) => {
                answer = Some(buf[..n].to_vec());
                true
            }
            Err(_) => false,
        }
    })
    .expect("no STUN answer from the relay image");
    let a = answer.expect("answer");
    assert_eq!(&a[..2], &[0x01, 0x01], "not a binding success: {a:02x?}");
    assert_eq!(&a[8..20], &tid, "transaction id");
    a
}

#[test]
fn relay_image_answers_stun_on_loopback() {
    let img = image("relay");
    let m = Mounted::new(&img);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("token"),
        "image-test-token-0123456789abcdef",
    )
    .expect("token");
    // The token file goes inside the image root, where the chrooted relay sees it.
    let inside = Path::new("/tmp/wirekube-image-test-token");
    std::fs::copy(
        dir.path().join("token"),
        m.root.join(inside.strip_prefix("/").expect("abs")),
    )
    .expect("copy token");
    let port = 40000 + (std::process::id() % 5000) as u16 * 4;
    let mut c = m.cmd(&[
        "/usr/local/bin/wirekube-relay",
        &format!("--listen=127.0.0.1:{port}"),
        &format!("--stun-port={port}"),
        &format!("--stun-alt-port={}", port + 1),
        &format!("--metrics-listen=127.0.0.1:{}", port + 2),
        &format!("--token-file={}", inside.display()),
    ]);
    c.stdout(Stdio::null()).stderr(Stdio::inherit());
    let _relay = Kill(c.spawn().expect("spawn relay"));
    let answer = stun_binding(&format!("127.0.0.1:{port}"));
    // XOR-MAPPED-ADDRESS (0x0020) is in the answer.
    assert!(
        answer[20..].windows(2).any(|w| w == [0x00, 0x20]),
        "no XOR-MAPPED-ADDRESS: {answer:02x?}"
    );
}

#[test]
fn agent_image_cleanup_removes_interface_rule_and_route() {
    let img = image("agent");
    let m = Mounted::new(&img);
    let ns = Netns::new("wk-image-cleanup");
    // Our own table and priority (flags), so the test depends on no default.
    let (table, prio) = ("3210", "3210");
    // A veth end stands in for the WireGuard link (no dummy module on every kernel).
    ns.ip(&[
        "link",
        "add",
        "wirekube0",
        "type",
        "veth",
        "peer",
        "name",
        "wk-other",
    ]);
    ns.ip(&["link", "set", "wirekube0", "up"]);
    ns.ip(&["rule", "add", "priority", prio, "table", table]);
    // Protocol 87 marks WireKube's routes (agent/dataplane/src/owner.rs ROUTE_PROTOCOL).
    ns.ip(&[
        "route",
        "add",
        "10.99.0.0/24",
        "dev",
        "wirekube0",
        "table",
        table,
        "proto",
        "87",
    ]);
    assert!(
        ns.ip(&["route", "show", "table", table])
            .contains("10.99.0.0/24")
    );
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.0, CHROOT])
        .arg(&m.root)
        .args([
            "/usr/local/bin/wirekube-agent",
            "cleanup",
            "--interface",
            "wirekube0",
        ])
        .args(["--table", table, "--rule-priority", prio])
        .args(["--cni-conf-dir", "/tmp/cni", "--kubeconfig", "/nonexistent"])
        .env_clear()
        .envs(m.env());
    let out = run(&mut c);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("removed interface, routes and rules"), "{log}");
    assert!(!ns.ip(&["link", "show"]).contains("wirekube0"), "link left");
    assert!(
        !ns.ip(&["rule", "show"]).contains(&format!("{prio}:")),
        "rule left"
    );
    assert_eq!(ns.ip(&["route", "show", "table", table]), "", "route left");
}

/// The agent image as the DaemonSet's `wireguard` container runs it (`wirekube-agent
/// userspace-engine`, with the node's /dev/net/tun and /var/run/wireguard): on this kernel (no
/// WireGuard module) it execs the image's wireguard-go, which creates the interface in the
/// pod's (here: a throw-away) network namespace and serves the UAPI socket the agent drives;
/// on TERM both go away. On a kernel with the module it must say it idles instead.
#[test]
fn agent_image_runs_the_userspace_engine_container() {
    let img = image("agent");
    let m = Mounted::new(&img);
    // What the DaemonSet mounts from the host: the TUN device and the UAPI socket directory.
    std::fs::create_dir_all(m.root.join("dev/net")).expect("mkdir dev/net");
    run(Command::new("mknod")
        .args(["-m", "666"])
        .arg(m.root.join("dev/net/tun"))
        .args(["c", "10", "200"]));
    std::fs::create_dir_all(m.root.join("var/run/wireguard")).expect("mkdir");
    let ns = Netns::new("wk-image-engine");
    let log = m.root.join("tmp/engine.log");
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.0, CHROOT])
        .arg(&m.root)
        .args([
            "/usr/local/bin/wirekube-agent",
            "userspace-engine",
            "--interface",
            "wk-img",
        ])
        .env_clear()
        .envs(m.env())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let mut engine = Kill(c.spawn().expect("spawn userspace-engine"));
    let kernel_wg = Path::new("/sys/module/wireguard").exists();
    let sock = m.root.join("var/run/wireguard/wk-img.sock");
    if kernel_wg {
        let idle =
            wirekube_lab::wait_until(Duration::from_secs(20), "idle on kernel WireGuard", || {
                std::fs::read_to_string(&log)
                    .is_ok_and(|l| l.contains("kernel WireGuard available"))
            });
        assert!(
            idle.is_ok(),
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        return;
    }
    let up = wirekube_lab::wait_until(
        Duration::from_secs(20),
        "wireguard-go's link and socket",
        || sock.exists() && ns.ip(&["link", "show"]).contains("wk-img"),
    );
    assert!(
        up.is_ok(),
        "{up:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // TERM, as the kubelet stops a container: wireguard-go removes its link and socket.
    let pid = engine.0.id().to_string();
    run(Command::new("kill").args(["-TERM", &pid]));
    let status = engine.0.wait().expect("wait");
    let gone = wirekube_lab::wait_until(Duration::from_secs(10), "link and socket removed", || {
        !sock.exists() && !ns.ip(&["link", "show"]).contains("wk-img")
    });
    assert!(gone.is_ok(), "{gone:?} after {status}");
}
