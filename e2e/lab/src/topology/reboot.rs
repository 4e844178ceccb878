//! A gateway that reboots and comes back with a new public address, as a home router whose
//! ISP hands out another DHCP lease: every NAT mapping is gone and the internet sees the
//! site's nodes at an address nobody has heard of.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::nat::{self, WAN_IF};
use crate::wait::wait_until;
use crate::{INTERNET_GW, Lab, netns};

/// Why a site's gateway cannot be given a new public address, or `None` when it can: only a
/// gateway directly on the internet, without elastic IPs (their addresses live on the same
/// WAN interface) and without sites behind it (their routes point at its address).
pub fn renumber_refusal(
    name: &str,
    on_internet: bool,
    elastic: usize,
    downstream: usize,
) -> Option<String> {
    if !on_internet {
        return Some(format!(
            "site {name} is behind another site: renumber the outermost gateway instead"
        ));
    }
    if elastic > 0 {
        return Some(format!(
            "site {name} has {elastic} elastic IP(s) on its WAN: renumbering would move them too"
        ));
    }
    if downstream > 0 {
        return Some(format!(
            "site {name} has {downstream} site(s) behind it: renumber a gateway without downstream sites"
        ));
    }
    None
}

impl Lab {
    /// Reboots `site`'s gateway onto a new public address: the WAN address is replaced by the
    /// next free one, the ruleset is reloaded (its dynamic cone maps start empty) and conntrack
    /// is flushed. Returns the new address; the old one is not reused in this lab.
    pub fn reboot_gateway_new_ip(&self, site: &str) -> Result<Ipv4Addr> {
        let s = self.site(site)?;
        if let Some(why) = renumber_refusal(
            site,
            s.upstream.is_none(),
            s.elastic.len(),
            s.downstream.len(),
        ) {
            return Err(LabError::Topology(why));
        }
        let new = self.take_public(None)?;
        let ns = s.gateway.ns.as_str();
        // Down while it "reboots": nothing crosses the WAN until the new ruleset and an empty
        // conntrack table are in place. Without the pause, a packet of a flow the internet
        // had started (its reply direction) could leave between the ruleset reload and the
        // conntrack flush and write the old address into the fresh cone maps; the node's
        // next packets then left from the old address for as long as they kept flowing (the
        // NAT-reboot fault recovered in 94-129 s, with 5 s gaps, in a third of its runs).
        netns::ip_batch(
            ns,
            &[
                format!("link set {WAN_IF} down"),
                format!("addr del {}/24 dev {WAN_IF}", s.wan_ip),
                format!("addr add {new}/24 dev {WAN_IF}"),
            ],
        )?;
        if s.nat == nat::NatKind::None {
            let inet = self.internet();
            let lan = s.lan.to_string();
            netns::ip(
                &inet.ns,
                &["route", "replace", &lan, "via", &new.to_string()],
            )?;
        }
        {
            let mut st = self.lock();
            if let Some(site) = st.sites.get_mut(site) {
                site.wan_ip = new;
                site.gateway.ips[0] = new;
            }
            if let Some(gw) = st.hosts.get_mut(&s.gateway.name) {
                gw.ips[0] = new;
            }
        }
        // set_nat reloads the ruleset (empty maps) and flushes conntrack: the reboot.
        self.set_nat(site, s.nat)?;
        netns::ip(ns, &["link", "set", WAN_IF, "up"])?;
        // The kernel reports the link operational a moment after `up` and drops what is sent
        // before: wait, so that the gateway is back when this returns.
        wait_until(Duration::from_secs(5), "the WAN link operational", || {
            netns::ip(ns, &["-br", "link", "show", "dev", WAN_IF])
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(" UP "))
        })?;
        let gw = INTERNET_GW.to_string();
        netns::ip(ns, &["route", "replace", "default", "via", &gw])?;
        tracing::debug!(site, old = %s.wan_ip, %new, "gateway rebooted onto a new address");
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::renumber_refusal;

    #[test]
    fn only_a_plain_gateway_on_the_internet_can_be_renumbered() {
        assert_eq!(renumber_refusal("home", true, 0, 0), None);
        let cases = [
            (false, 0, 0, "behind another site"),
            (true, 1, 0, "elastic IP"),
            (true, 0, 2, "site(s) behind it"),
        ];
        for (on_internet, elastic, downstream, want) in cases {
            let why = renumber_refusal("home", on_internet, elastic, downstream).expect("refused");
            assert!(why.contains(want), "{why}");
            assert!(why.contains("home"), "{why}");
        }
    }
}
