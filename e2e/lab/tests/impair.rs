//! Impairments on the internet: UDP blocks (with and without expiry) and random loss.

mod common;

use std::time::Duration;

use wirekube_lab::{NatKind, SiteSpec, wait_until};

#[test]
fn block_heal_and_loss() {
    let lab = common::lab("imp");
    let site = lab
        .add_site(SiteSpec::new("home", NatKind::FullCone, "192.168.1.0/24"))
        .unwrap();
    let a = lab.add_node("home", "a").unwrap();
    let p = lab.add_public_node("p").unwrap();
    let (wan, pip) = (site.wan_ip, p.ip());
    assert_eq!(lab.udp_delivery(&a, &p, pip, 20).unwrap(), 20);

    // The direct UDP path dies; TCP still works; healing restores it.
    lab.block_udp(wan, pip, None).unwrap();
    assert_eq!(lab.udp_delivery(&a, &p, pip, 20).unwrap(), 0);
    assert_eq!(lab.udp_delivery(&p, &a, wan, 5).unwrap(), 0);
    lab.tcp_transfer(&a, &p, pip, 64 << 10).unwrap();
    lab.heal_udp(wan, pip).unwrap();
    assert_eq!(lab.udp_delivery(&a, &p, pip, 20).unwrap(), 20);

    // A block that lifts itself.
    lab.block_udp(wan, pip, Some(Duration::from_millis(500)))
        .unwrap();
    assert_eq!(lab.udp_delivery(&a, &p, pip, 5).unwrap(), 0);
    wait_until(Duration::from_secs(3), "block expires", || {
        lab.udp_delivery(&a, &p, pip, 5).unwrap() == 5
    })
    .unwrap();

    // 50 % loss, one way: about half arrives.
    lab.set_loss(wan, pip, 50).unwrap();
    let got = lab.udp_delivery(&a, &p, pip, 400).unwrap();
    eprintln!("50% loss: {got}/400 arrived");
    assert!((120..=280).contains(&got), "{got}/400");
    lab.set_loss(wan, pip, 0).unwrap();
    assert_eq!(lab.udp_delivery(&a, &p, pip, 100).unwrap(), 100);

    lab.block_udp(wan, pip, None).unwrap();
    lab.set_loss(wan, pip, 100).unwrap();
    lab.heal_all().unwrap();
    assert_eq!(lab.udp_delivery(&a, &p, pip, 20).unwrap(), 20);
    lab.ping(&a, pip).unwrap();
}
