//! Gateways in layers: elastic IPs (a 1:1 NAT per node, as a cloud maps an elastic IP onto a
//! VM's private address) and the address the internet sees for a host behind one or more
//! gateways (double NAT: [`SiteSpec::behind`](super::SiteSpec::behind)).

use std::net::Ipv4Addr;

use crate::error::{LabError, Result};
use crate::nat::WAN_IF;
use crate::netns;
use crate::{Host, Lab};

impl Lab {
    /// Adds node `name` on `site`'s LAN with an elastic IP (`ip`, or the next free public
    /// address): the gateway owns the public address and maps it onto the node's LAN address
    /// in both directions, every protocol and port, unsolicited inbound included. The node
    /// has only its private address, as a cloud VM with an elastic IP. Returns the node and
    /// its public address.
    pub fn add_elastic_node(
        &self,
        site: &str,
        name: &str,
        ip: Option<Ipv4Addr>,
    ) -> Result<(Host, Ipv4Addr)> {
        let s = self.site(site)?;
        if s.upstream.is_some() {
            return Err(LabError::Topology(format!(
                "site {site} is behind another site; an elastic IP needs a gateway on the internet"
            )));
        }
        let public = self.take_public(ip)?;
        let host = self.add_node(site, name)?;
        let table = format!("wkeip_{}", host.ip().to_string().replace('.', "_"));
        self.run_input(
            &s.gateway,
            &["nft", "-f", "-"],
            &one_to_one_ruleset(&table, public, host.ip()),
        )?;
        netns::ip(
            &s.gateway.ns,
            &["addr", "add", &format!("{public}/32"), "dev", WAN_IF],
        )?;
        self.lock()
            .sites
            .get_mut(site)
            .ok_or_else(|| LabError::Unknown {
                kind: "site",
                name: site.to_owned(),
            })?
            .elastic
            .insert(name.to_owned(), public);
        Ok((host, public))
    }

    /// The address the internet sees as the source of `host`'s packets: its own for a public
    /// host, its elastic IP, else the WAN address of the outermost gateway in front of it.
    pub fn public_ip(&self, host: &Host) -> Result<Ipv4Addr> {
        let Some(mut site) = host.site.clone() else {
            return Ok(host.ip());
        };
        if let Some(ip) = self.site(&site)?.elastic.get(&host.name) {
            return Ok(*ip);
        }
        loop {
            let s = self.site(&site)?;
            match s.upstream {
                Some(up) => site = up,
                None => return Ok(s.wan_ip),
            }
        }
    }
}

/// A static 1:1 NAT in its own table. Its chains run just before the site ruleset's
/// (priority −5): the first NAT chain that binds a connection wins, so the elastic node's
/// flows never reach the site's masquerade or cone maps. No conntrack state is needed for
/// inbound: any packet to `public` is forwarded (the site's forward chain accepts DNATed
/// flows).
fn one_to_one_ruleset(table: &str, public: Ipv4Addr, inner: Ipv4Addr) -> String {
    let w = WAN_IF;
    format!(
        "table ip {table} {{
  chain pre {{ type nat hook prerouting priority dstnat - 5; policy accept;
    iifname \"{w}\" ip daddr {public} dnat ip to {inner}
  }}
  chain post {{ type nat hook postrouting priority srcnat - 5; policy accept;
    oifname \"{w}\" ip saddr {inner} snat ip to {public}
  }}
}}
"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_to_one_maps_both_directions_before_the_site_nat() {
        let r = super::one_to_one_ruleset(
            "wkeip_10_1_0_11",
            "198.18.0.50".parse().unwrap(),
            "10.1.0.11".parse().unwrap(),
        );
        assert!(
            r.contains("ip daddr 198.18.0.50 dnat ip to 10.1.0.11"),
            "{r}"
        );
        assert!(
            r.contains("ip saddr 10.1.0.11 snat ip to 198.18.0.50"),
            "{r}"
        );
        assert_eq!(r.matches("priority dstnat - 5").count(), 1, "{r}");
        assert_eq!(r.matches("priority srcnat - 5").count(), 1, "{r}");
    }
}
