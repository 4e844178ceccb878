//! Cone NATs keep one public port per inner endpoint, also when two inner hosts use the same
//! port (every WireKube node's WireGuard port is 51820): the second host gets another public
//! port, the same toward every destination, and packets to each public port reach their own
//! host. Before, masquerade kept 51820 for both hosts toward different destinations and the
//! full cone's map flipped between them (the fault suite's node joining a full-cone site took
//! its neighbour's traffic).

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use wirekube_lab::{Host, Lab, NatKind, SiteSpec};

const PORT: u16 = 51820;

fn udp(lab: &Lab, host: &Host, ip: Ipv4Addr, port: u16) -> UdpSocket {
    let s = lab
        .in_host(host, move || UdpSocket::bind((ip, port)))
        .unwrap()
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

/// Sends from `from` to `to` and returns the source address `to` saw.
fn seen_from(from: &UdpSocket, to: &UdpSocket) -> SocketAddrV4 {
    from.send_to(b"map", to.local_addr().unwrap()).unwrap();
    let mut buf = [0u8; 16];
    match to.recv_from(&mut buf) {
        Ok((_, SocketAddr::V4(a))) => a,
        other => panic!("no packet from {:?}: {other:?}", from.local_addr()),
    }
}

#[test]
fn cone_nats_give_each_inner_endpoint_its_own_public_port() {
    let lab = common::lab("cone");
    for (site, kind, lan) in [
        ("full", NatKind::FullCone, "192.168.2.0/24"),
        ("arc", NatKind::AddressRestrictedCone, "192.168.1.0/24"),
    ] {
        lab.add_site(SiteSpec::new(site, kind, lan)).unwrap();
        lab.add_node(site, &format!("{site}-a")).unwrap();
        lab.add_node(site, &format!("{site}-b")).unwrap();
    }
    lab.add_dmz("dmz", &[]).unwrap();
    let dmz = lab.host("dmz").unwrap();
    let (ip_a, ip_b) = (dmz.ips[0], dmz.ips[1]);
    let a1 = udp(&lab, &dmz, ip_a, 3478);
    let a2 = udp(&lab, &dmz, ip_a, 3479);
    let b1 = udp(&lab, &dmz, ip_b, 3478);
    for site in ["full", "arc"] {
        let wan = lab.site(site).unwrap().wan_ip;
        let first = udp(
            &lab,
            &lab.host(&format!("{site}-a")).unwrap(),
            Ipv4Addr::UNSPECIFIED,
            PORT,
        );
        let second = udp(
            &lab,
            &lab.host(&format!("{site}-b")).unwrap(),
            Ipv4Addr::UNSPECIFIED,
            PORT,
        );
        // The first host keeps its port; the second, toward other destinations than the
        // first's, must not get the same public port.
        let m_first = seen_from(&first, &a1);
        assert_eq!(m_first, SocketAddrV4::new(wan, PORT), "{site}: first host");
        let m_second = seen_from(&second, &b1);
        assert_eq!(*m_second.ip(), wan, "{site}");
        assert_ne!(
            m_second.port(),
            PORT,
            "{site}: both hosts on public port {PORT}"
        );
        // Endpoint-independent: each keeps its public port toward every destination.
        assert_eq!(
            seen_from(&second, &a2),
            m_second,
            "{site}: second host, 2nd destination"
        );
        assert_eq!(
            seen_from(&first, &b1),
            m_first,
            "{site}: first host, 2nd destination"
        );
        // Inbound to each public port reaches its own host (both sent to a1's IP already).
        for (sock, mapped, who) in [(&first, m_first, "first"), (&second, m_second, "second")] {
            a1.send_to(who.as_bytes(), mapped).unwrap();
            let mut buf = [0u8; 16];
            let (k, _) = sock
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("{site}: nothing for the {who} host at {mapped}: {e}"));
            assert_eq!(
                &buf[..k],
                who.as_bytes(),
                "{site}: {mapped} reached the wrong host"
            );
        }
    }
}
