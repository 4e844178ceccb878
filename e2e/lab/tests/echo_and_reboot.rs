//! The lab's in-process ICMP echo, and a rebooted gateway that must forget its old address
//! (run as root).

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use wirekube_lab::{Host, Lab, NatKind, SiteSpec};

fn site_and_public(lab: &Lab) -> (Host, Host) {
    lab.add_site(SiteSpec::new("full", NatKind::FullCone, "192.168.2.0/24"))
        .expect("site");
    let node = lab.add_node("full", "full-a").expect("node");
    let public = lab.add_public_node("pub").expect("public node");
    (node, public)
}

#[test]
fn an_echo_socket_hears_only_the_addresses_that_answer() {
    let lab = common::lab("ech");
    let (node, public) = site_and_public(&lab);
    let gw = lab.site("full").unwrap().wan_ip;
    let mut sock = lab.echo_socket(&node).expect("socket");
    // Private space is not routed on the lab's internet: that one never answers.
    let silent = Ipv4Addr::new(10, 77, 0, 1);
    let mut heard = Vec::new();
    for _ in 0..20 {
        for ip in [public.ip(), gw, silent] {
            let _ = sock.send(ip);
        }
        heard.extend(sock.replies(Duration::from_millis(100)));
        if heard.contains(&public.ip()) && heard.contains(&gw) {
            break;
        }
    }
    assert!(heard.contains(&public.ip()), "{heard:?}");
    assert!(heard.contains(&gw), "{heard:?}");
    assert!(!heard.contains(&silent), "{heard:?}");
}

fn udp_in(lab: &Lab, host: &Host, port: u16) -> UdpSocket {
    let s = lab
        .in_host(host, move || UdpSocket::bind(("0.0.0.0", port)))
        .expect("netns")
        .expect("bind");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    s
}

/// One datagram's source, or `None` when nothing came within the read timeout.
fn recv_from(s: &UdpSocket) -> Option<SocketAddr> {
    let mut buf = [0u8; 64];
    s.recv_from(&mut buf).ok().map(|(_, from)| from)
}

/// Sends from `a` to `to` until `p` receives something (at most ten tries, one read timeout
/// apart): the first datagrams after a gateway reboot may be lost while the gateway and the
/// router resolve each other again. Returns the source of what arrived.
fn send_until_received(a: &UdpSocket, p: &UdpSocket, to: SocketAddr) -> Option<SocketAddr> {
    (0..10).find_map(|_| {
        a.send_to(b"probe", to).ok()?;
        recv_from(p)
    })
}

/// A full-cone node and a public node, each with a UDP socket; the node has sent once, the
/// public node answered at the node's mapping (so the internet router knows the gateway's
/// address) and the node got it. Returns the sockets, the public node's address and the
/// node's mapping.
fn mapped_pair(lab: &Lab) -> (UdpSocket, UdpSocket, SocketAddr, SocketAddr) {
    let (node, public) = site_and_public(lab);
    let (a, p) = (udp_in(lab, &node, 40000), udp_in(lab, &public, 40001));
    let to_public = SocketAddr::from((public.ip(), 40001));
    a.send_to(b"hello", to_public).unwrap();
    let old = recv_from(&p).expect("the node reaches the public node");
    p.send_to(b"back", old).unwrap();
    assert!(recv_from(&a).is_some(), "full cone admits the answer");
    (a, p, to_public, old)
}

/// A gateway rebooted onto a new address translates nothing sent to its old one, even while
/// the internet router still has the old address's ARP entry: a real router that lost the
/// address drops such packets, and the lab once delivered them (which then made the node's
/// own packets leave from the old address).
#[test]
fn a_rebooted_gateway_forgets_its_old_address() {
    let lab = common::lab("rbt");
    let (a, p, to_public, old) = mapped_pair(&lab);

    let new_ip = lab.reboot_gateway_new_ip("full").expect("reboot");
    let new = send_until_received(&a, &p, to_public)
        .expect("the node reaches the public node after the reboot");
    assert_eq!(
        new.ip(),
        std::net::IpAddr::V4(new_ip),
        "leaves from the new address"
    );
    // Sent to the old address at the new mapping's port: nothing may arrive.
    p.send_to(b"old", SocketAddr::new(old.ip(), new.port()))
        .unwrap();
    assert_eq!(recv_from(&a), None, "delivered through the old address");
    // The new address works, and the node's next packet still leaves from it.
    p.send_to(b"new", new).unwrap();
    assert!(recv_from(&a).is_some(), "full cone admits the new address");
    a.send_to(b"last", to_public).unwrap();
    assert_eq!(
        recv_from(&p),
        Some(new),
        "the mapping stayed on the new address"
    );
}

/// The reboot under traffic: a flow the public node started keeps the node answering as fast
/// as it can while the gateway renumbers. None of its packets may carry the old address into
/// the rebooted gateway's fresh mappings: afterwards the node's packets leave from the new one.
#[test]
fn a_gateway_rebooted_under_traffic_maps_only_its_new_address() {
    let lab = common::lab("rbu");
    // The public node started a flow to the mapping; the node now answers it without pause.
    let (a, p, to_public, _) = mapped_pair(&lab);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let blaster = {
        let (a, stop) = (a.try_clone().unwrap(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = a.send_to(b"reply", to_public);
            }
        })
    };
    let new_ip = lab.reboot_gateway_new_ip("full").expect("reboot");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    blaster.join().unwrap();
    // Drain what the blaster delivered, then one more datagram: from the new address.
    while recv_from(&p).is_some_and(|from| from.ip() != std::net::IpAddr::V4(new_ip)) {}
    let from = send_until_received(&a, &p, to_public)
        .expect("the node reaches the public node after the reboot");
    assert_eq!(from.ip(), std::net::IpAddr::V4(new_ip), "left from {from}");
}
