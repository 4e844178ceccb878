//! Shared set-up of the kubelab tests: a lab with one NATed site holding one node, a DMZ, and
//! the control plane running in the DMZ.

use wirekube_kubelab::controlplane::{ControlPlane, ControlPlaneConfig};
use wirekube_lab::{Host, Lab, NatKind, SiteSpec};

/// (lab, the node's host, the DMZ, the control plane). Needs root.
pub fn lab_with_node(tag: &str, site: &str, node: &str) -> (Lab, Host, Host, ControlPlane) {
    let lab = Lab::new_unique(tag).expect("lab (needs root)");
    lab.add_site(SiteSpec::new(
        site,
        NatKind::PortRestrictedCone,
        "10.1.0.0/24",
    ))
    .unwrap();
    let host = lab.add_node(site, node).unwrap();
    let dmz = lab.add_dmz("dmz", &[]).unwrap();
    let cp = ControlPlane::start(&lab, &dmz, ControlPlaneConfig::new().unwrap())
        .unwrap_or_else(|e| panic!("control plane: {e}\n{}", lab.logs_tail(20)));
    (lab, host, dmz, cp)
}
