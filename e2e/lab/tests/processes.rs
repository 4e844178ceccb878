//! Processes in simulated hosts: private mount views with wireguard-go, logs, stop (run as root).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use wirekube_lab::{Host, Lab, NatKind, SiteSpec, wait_until};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Starts wireguard-go as `wirekube0` in `host`, with a key in its private /var/lib/wirekube and
/// the overlay address `addr`. Returns its public key.
fn start_wg(lab: &Lab, host: &Host, addr: &str) -> (wirekube_lab::Proc, String) {
    let mut cmd = Command::new("wireguard-go");
    cmd.args(["-f", "wirekube0"]);
    let proc = lab.spawn(host, cmd).unwrap();
    let sock = lab
        .host_dir(&host.name)
        .join("run-wireguard/wirekube0.sock");
    wait_until(Duration::from_secs(5), "UAPI socket", || sock.exists())
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(20)));
    let key = lab.run(host, &["wg", "genkey"]).unwrap();
    std::fs::write(
        lab.host_dir(&host.name).join("lib-wirekube/key"),
        key.trim(),
    )
    .unwrap();
    let public = lab
        .run(host, &["sh", "-c", "wg pubkey < /var/lib/wirekube/key"])
        .unwrap();
    lab.run(
        host,
        &[
            "wg",
            "set",
            "wirekube0",
            "private-key",
            "/var/lib/wirekube/key",
            "listen-port",
            "51820",
        ],
    )
    .unwrap();
    lab.run(host, &["ip", "addr", "add", addr, "dev", "wirekube0"])
        .unwrap();
    lab.run(host, &["ip", "link", "set", "wirekube0", "up"])
        .unwrap();
    (proc, public.trim().to_owned())
}

#[test]
fn two_hosts_both_run_wirekube0_through_a_nat() {
    let lab = common::lab("wg");
    assert!(
        have("wireguard-go") && have("wg"),
        "wireguard-go and wg are needed (scripts/install-deps.sh installs them)"
    );
    lab.add_site(SiteSpec::new(
        "home",
        NatKind::PortRestrictedCone,
        "192.168.1.0/24",
    ))
    .unwrap();
    let a = lab.add_node("home", "a").unwrap();
    let b = lab.add_public_node("b").unwrap();
    let (pa, key_a) = start_wg(&lab, &a, "10.99.0.1/24");
    let (_pb, key_b) = start_wg(&lab, &b, "10.99.0.2/24");
    assert_ne!(key_a, key_b);

    // Each host's `wg` sees its own wirekube0 only.
    assert_eq!(
        lab.run(&a, &["wg", "show", "wirekube0", "public-key"])
            .unwrap()
            .trim(),
        key_a
    );
    assert_eq!(
        lab.run(&b, &["wg", "show", "wirekube0", "public-key"])
            .unwrap()
            .trim(),
        key_b
    );
    assert_eq!(
        lab.run(&a, &["wg", "show", "interfaces"]).unwrap().trim(),
        "wirekube0"
    );
    assert_eq!(
        lab.run(&a, &["ls", "/var/run/wireguard"]).unwrap().trim(),
        "wirekube0.sock"
    );
    // The PID is the daemon itself, not a wrapper.
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", pa.pid)).unwrap();
    assert_eq!(comm.trim(), "wireguard-go");

    // b is passive; a (behind NAT) initiates.
    lab.run(
        &b,
        &[
            "wg",
            "set",
            "wirekube0",
            "peer",
            &key_a,
            "allowed-ips",
            "10.99.0.1/32",
        ],
    )
    .unwrap();
    let ep = format!("{}:51820", b.ip());
    lab.run(
        &a,
        &[
            "wg",
            "set",
            "wirekube0",
            "peer",
            &key_b,
            "allowed-ips",
            "10.99.0.2/32",
            "endpoint",
            &ep,
            "persistent-keepalive",
            "1",
        ],
    )
    .unwrap();
    let rtt = lab
        .ping_until(&a, "10.99.0.2".parse().unwrap(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(20)));
    eprintln!("first overlay ping rtt {rtt:?}");
    lab.ping(&b, "10.99.0.1".parse().unwrap())
        .expect("return path via the roamed endpoint");
    let t = lab
        .tcp_transfer(&a, &b, "10.99.0.2".parse().unwrap(), 4 << 20)
        .unwrap();
    eprintln!(
        "4 MiB over wireguard-go through NAT: {:.0} Mbit/s",
        t.bits_per_second() / 1e6
    );
    // b saw a's NAT mapping as the endpoint (the WAN address of home).
    let eps = lab
        .run(&b, &["wg", "show", "wirekube0", "endpoints"])
        .unwrap();
    assert!(
        eps.contains(&lab.site("home").unwrap().wan_ip.to_string()),
        "{eps}"
    );

    // Stop one daemon by PID: its socket goes, the other one is untouched.
    lab.stop(&pa).unwrap();
    assert!(!lab.is_running(&pa));
    assert!(
        !lab.host_dir("a")
            .join("run-wireguard/wirekube0.sock")
            .exists()
    );
    assert!(
        lab.host_dir("b")
            .join("run-wireguard/wirekube0.sock")
            .exists()
    );
    assert!(!lab.log(&pa).is_empty(), "wireguard-go logged nothing");

    lab.shutdown().unwrap();
    assert!(Lab::leftovers(lab.prefix()).is_empty());
    assert!(!Path::new(&lab.dir()).exists());
}

#[test]
fn logs_exit_status_and_iperf3() {
    let lab = common::lab("log");
    let p = lab.add_public_node("p").unwrap();
    let q = lab.add_public_node("q").unwrap();
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "echo hello from $(ip -o -4 addr show eth0 | awk '{print $4}'); exit 3",
    ]);
    let proc = lab.spawn(&p, cmd).unwrap();
    wait_until(Duration::from_secs(5), "sh exits", || {
        !lab.is_running(&proc)
    })
    .unwrap();
    assert_eq!(lab.log(&proc).trim(), format!("hello from {}/24", p.ip()));
    assert_eq!(lab.stop(&proc).unwrap().code(), Some(3));
    // exec returns the output whatever the status; run fails on non-zero.
    assert_eq!(lab.exec(&p, &["false"]).unwrap().status.code(), Some(1));
    assert!(lab.run(&p, &["false"]).is_err());
    // A one-shot command that hangs is killed at its deadline.
    let e = lab
        .exec_timeout(&p, &["sleep", "30"], Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(e, wirekube_lab::LabError::Timeout { .. }), "{e}");
    if have("iperf3") {
        let bps = lab.iperf3(&q, &p, q.ip(), 1).unwrap();
        eprintln!("iperf3 raw veth+bridge, 1 s: {:.1} Gbit/s", bps / 1e9);
        assert!(bps > 1e8);
    }
}
