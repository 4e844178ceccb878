//! Discovery against the real STUN responder (the `wirekube-relay` binary, primary and
//! alternate IP × port) from nodes behind every lab NAT kind. Needs root (network
//! namespaces, nftables); fails otherwise.

use std::net::Ipv4Addr;
use std::time::Duration;

use wirekube_agent::discovery::{self, DiscoveryReport, Retransmit, candidates};
use wirekube_crds::{NatType, WireKubePeerSpec};
use wirekube_lab::{Host, Lab, NatKind, SiteSpec, wait_for};
use wirekube_relay_proto::flags::RelayFlags;

fn discover_in(lab: &Lab, host: &Host, servers: Vec<String>, hold_port: bool) -> DiscoveryReport {
    lab.in_host(host, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            // Simulates WireGuard already owning the port (agent restart).
            let _hold = if hold_port {
                Some(std::net::UdpSocket::bind("0.0.0.0:51820").unwrap())
            } else {
                None
            };
            let local = candidates::local_addrs().unwrap();
            discovery::discover(&servers, Some(51820), local, vec![], Retransmit::default()).await
        })
    })
    .unwrap()
}

#[test]
fn discovery_classifies_every_nat_kind() {
    assert!(
        wirekube_lab::is_root(),
        "needs root (network namespaces): run the lab tests as root"
    );
    let relay_cmd = wirekube_lab::bins::command("wirekube-relay").unwrap();
    let lab = Lab::new_unique("agd").unwrap();
    let kinds = [
        ("sym", NatKind::Symmetric, NatType::Symmetric),
        ("prc", NatKind::PortRestrictedCone, NatType::PortRestricted),
        (
            "arc",
            NatKind::AddressRestrictedCone,
            NatType::AddressRestricted,
        ),
        ("fc", NatKind::FullCone, NatType::FullCone),
        ("fw", NatKind::TcpOnlyFirewall, NatType::UdpBlocked),
    ];
    let mut nodes = Vec::new();
    for (i, (name, kind, want)) in kinds.iter().enumerate() {
        lab.add_site(SiteSpec::new(name, *kind, &format!("10.{}.0.0/24", i + 1)))
            .unwrap();
        nodes.push((lab.add_node(name, &format!("{name}-a")).unwrap(), *want));
    }
    let public = lab.add_public_node("pub").unwrap();
    nodes.push((public.clone(), NatType::Open));
    let dmz = lab.add_dmz("dmz", &[]).unwrap();
    let (ip1, ip2): (Ipv4Addr, Ipv4Addr) = (dmz.ips[0], dmz.ips[1]);
    let token = lab.dir().join("relay-token");
    std::fs::write(&token, "lab-token\n").unwrap();
    let mut cmd = relay_cmd;
    let flags = RelayFlags {
        listen: Some((ip1, 3478).into()),
        stun_ip: Some(ip1.into()),
        stun_alt_ip: Some(ip2.into()),
        metrics_listen: Some((ip1, 9090).into()),
        token_file: Some(token.clone()),
        ..RelayFlags::default()
    };
    cmd.args(flags.to_args());
    let relay = lab.spawn(&dmz, cmd).unwrap();

    // STUN servers as the agent derives them from a relay endpoint (ports 3478 and 3479).
    let spec = WireKubePeerSpec {
        relay_endpoints: vec![format!("{ip1}:3478")],
        ..Default::default()
    };
    let servers = discovery::stun_servers(&spec);
    // Readiness: the public node gets an answer.
    let _ = wait_for(Duration::from_secs(15), "STUN responder", || {
        let r = discover_in(&lab, &public, servers.clone(), false);
        r.stun_reachable.then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.log(&relay)));

    for (host, want) in &nodes {
        let r = discover_in(&lab, host, servers.clone(), false);
        assert_eq!(
            r.classification.nat_type,
            *want,
            "{}: {}\n{}",
            host.name,
            r.message,
            lab.logs_tail(20)
        );
        match want {
            NatType::UdpBlocked => {
                assert!(!r.stun_reachable);
                assert!(r.message.contains("no answer"), "{}", r.message);
                assert_eq!(r.listen_port_srflx, None);
            }
            _ => {
                assert!(r.stun_reachable, "{}", r.message);
                // The mapping of the WireGuard port itself was measured.
                let s = r.listen_port_srflx.expect("srflx of the listen port");
                if *want != NatType::Symmetric {
                    let site_wan = match host.site.as_deref() {
                        Some(site) => lab.site(site).unwrap().wan_ip,
                        None => host.ip(),
                    };
                    assert_eq!(s.ip(), std::net::IpAddr::V4(site_wan), "{}", host.name);
                }
            }
        }
    }

    // WireGuard already owns the port: the type is still measured (from another port), but
    // no srflx is claimed for the WireGuard port.
    let fc = &nodes[3].0;
    let r = discover_in(&lab, fc, servers.clone(), true);
    assert_eq!(
        r.classification.nat_type,
        NatType::FullCone,
        "{}",
        r.message
    );
    assert_eq!(r.listen_port_srflx, None);

    // Unreachable STUN server: a clear message, not a crash.
    let r = discover_in(
        &lab,
        fc,
        vec!["198.18.0.250:3478".into(), "198.18.0.250:3479".into()],
        false,
    );
    assert_eq!(r.classification.nat_type, NatType::UdpBlocked);
    assert!(!r.stun_reachable);
    lab.shutdown().unwrap();
}
