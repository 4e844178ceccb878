//! The lab cloud for `serviceType: LoadBalancer`: it hands out [`LB_ADDRESS`] and announces it
//! on the node that runs the endpoint, forwarding it to the pods there with nftables DNAT (an
//! IP-target load balancer: the client's address is kept).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use wirekube_kubelab::cloud::{Announcement, Announcer, LabCloud};
use wirekube_lab::nat::{LAN_IF, WAN_IF};
use wirekube_lab::{Host, Lab, NatKind, Site};

use crate::kube_lab::KubeLab;

/// The public address the lab cloud hands to a LoadBalancer Service: high in the lab's internet
/// range, where the lab's own allocation (from .10 upwards) never reaches.
pub const LB_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 240);

/// Starts the lab cloud. Announcements go to public nodes (a second address on the NIC, as a
/// floating IP) and to nodes with an elastic IP (routed to them through their gateway).
pub(super) fn start_cloud(
    lab: &Arc<Lab>,
    kube: &KubeLab,
    hosts: &BTreeMap<String, Host>,
) -> Result<LabCloud> {
    let (lab, hosts) = (lab.clone(), hosts.clone());
    let announce: Announcer = Arc::new(move |a: &Announcement, up: bool| {
        let Some(h) = hosts.get(&a.node) else {
            tracing::warn!("lab cloud: no lab host {}; {} not announced", a.node, a.ip);
            return;
        };
        if let Err(e) = announce(&lab, h, a, up) {
            eprintln!("lab cloud: announce {} on {} ({up}): {e:#}", a.ip, a.node);
        }
    });
    let ns = wirekube_lab::netns::ns_path(&kube.dmz.ns);
    Ok(LabCloud::start(
        &kube.cp.admin_kubeconfig(),
        Some(&ns),
        vec![LB_ADDRESS],
        Some(announce),
    )?)
}

fn announce(lab: &Lab, host: &Host, a: &Announcement, up: bool) -> Result<()> {
    match &host.site {
        None => announce_on(lab, host, a, up, None),
        Some(site) => {
            let s = lab.site(site)?;
            if !s.elastic.contains_key(&host.name) {
                return Err(anyhow!(
                    "{} is behind a NAT without an elastic IP: the internet cannot reach it",
                    host.name
                ));
            }
            announce_on(lab, host, a, up, Some(host.ip()))?;
            route_through_gateway(lab, &s, host.ip(), a.ip, up)
        }
    }
}

/// Adds (or removes) the address and its DNAT table on `host`; `also` is a second destination
/// forwarded the same way (the node's LAN address, where its gateway sends the traffic).
fn announce_on(
    lab: &Lab,
    host: &Host,
    a: &Announcement,
    up: bool,
    also: Option<Ipv4Addr>,
) -> Result<()> {
    let table = lb_table(a.ip);
    let addr = format!("{}/32", a.ip);
    if !up {
        let _ = lab.exec(host, &["nft", "delete", "table", "ip", &table]);
        lab.run(host, &["ip", "addr", "del", &addr, "dev", "eth0"])?;
        return Ok(());
    }
    let daddr = match also {
        Some(ip) => format!("{{ {}, {ip} }}", a.ip),
        None => a.ip.to_string(),
    };
    let rules: String = a
        .forwards
        .iter()
        .map(|f| {
            format!(
                "ip daddr {daddr} {} dport {} dnat to {}:{}; ",
                f.protocol, f.port, f.pod_ip, f.target_port
            )
        })
        .collect();
    let script = format!(
        "table ip {table} {{ \
           chain pre {{ type nat hook prerouting priority dstnat - 10; {rules}}}; \
           chain out {{ type nat hook output priority -110; {rules}}}; }}"
    );
    let _ = lab.exec(host, &["nft", "delete", "table", "ip", &table]);
    lab.run(host, &["nft", &script])?;
    let _ = lab.exec(host, &["ip", "addr", "add", &addr, "dev", "eth0"]);
    Ok(())
}

/// A cloud load balancer in front of a VM with an elastic IP reaches it inside the VPC: the
/// site's gateway answers ARP for the address on the internet (a proxy entry: the address is
/// on-link for every internet host) and forwards it to the node's LAN address (DNAT, which the
/// site's ruleset lets in and undoes on the way back). LAN clients go through the gateway too
/// and are NATed to its public address, as the VPC's NAT gateway does for any public address:
/// a STUN answer through the load balancer then describes the site's NAT, not the LAN.
fn route_through_gateway(
    lab: &Lab,
    site: &Site,
    node: Ipv4Addr,
    lb: Ipv4Addr,
    up: bool,
) -> Result<()> {
    let gw = &site.gateway;
    let (table, lb_s) = (lb_table(lb), lb.to_string());
    if !up {
        let _ = lab.exec(gw, &["nft", "delete", "table", "ip", &table]);
        let _ = lab.exec(gw, &["ip", "route", "del", &format!("{lb}/32")]);
        let _ = lab.exec(gw, &["ip", "neigh", "del", "proxy", &lb_s, "dev", WAN_IF]);
        return Ok(());
    }
    // The hairpin keeps the site's mapping behaviour: a symmetric site stays symmetric.
    let random = if site.nat == NatKind::Symmetric {
        " random"
    } else {
        ""
    };
    let (lan, wan) = (site.lan, site.wan_ip);
    let script = format!(
        "table ip {table} {{ \
           chain pre {{ type nat hook prerouting priority dstnat - 10; ip daddr {lb} dnat ip to {node}; }}; \
           chain post {{ type nat hook postrouting priority srcnat - 10; \
             oifname \"{LAN_IF}\" ip saddr {lan} ip daddr {node} ct status dnat snat ip to {wan}{random}; }}; }}"
    );
    let _ = lab.exec(gw, &["nft", "delete", "table", "ip", &table]);
    lab.run(gw, &["nft", &script])?;
    // The proxy entry answers only for an address routed out of another interface.
    lab.run(
        gw,
        &[
            "ip",
            "route",
            "replace",
            &format!("{lb}/32"),
            "via",
            &node.to_string(),
        ],
    )?;
    let _ = lab.exec(gw, &["ip", "neigh", "del", "proxy", &lb_s, "dev", WAN_IF]);
    lab.run(gw, &["ip", "neigh", "add", "proxy", &lb_s, "dev", WAN_IF])?;
    Ok(())
}

fn lb_table(ip: Ipv4Addr) -> String {
    format!("wklb_{}", ip.to_string().replace('.', "_"))
}
