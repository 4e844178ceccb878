//! WireKube as the pod network (`WireKubeMesh.spec.podNetwork.enabled`): the agent writes the
//! node's CNI configuration (`bridge` + `host-local` on the node's podCIDR, `portmap`) and one
//! nftables rule that masquerades pod traffic leaving the cluster. Traffic between pods at
//! different nodes goes through the mesh with the pods' own addresses (the mesh routes every
//! node's pod CIDR, `spec.routing.podCIDRs`).
//!
//! [`desired`] is pure (spec in, files and rules out); [`apply`] and [`remove`] are the effects.

use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde_json::json;
use wirekube_crds::WireKubePeerSpec;

/// The file the agent owns in the CNI configuration directory. `10-` sorts before most CNIs'
/// files, so a runtime picks it when WireKube is the pod network.
pub const CONF_FILE: &str = "10-wirekube.conflist";
/// The bridge pods attach to.
pub const BRIDGE: &str = "wkpod0";
/// The nftables table holding the masquerade rule (ours alone).
pub const NFT_TABLE: &str = "wirekube_podnet";
/// The nftables table clamping TCP MSS on forwarded traffic through the mesh (ours alone).
pub const MSS_TABLE: &str = "wirekube_mss";

/// TCP connections forwarded through the mesh (pods, hosts behind a node route) announce an
/// MSS that fits the tunnel: SYNs leaving or entering `iface` get the route's MTU as their
/// MSS bound, so no segment relies on Path MTU discovery through ICMP.
pub fn mss_script(iface: &str) -> String {
    let clamp = "tcp flags syn / syn,rst tcp option maxseg size set rt mtu";
    replace_table(
        "inet",
        MSS_TABLE,
        &format!(
            "\tchain forward {{\n\
             \t\ttype filter hook forward priority mangle; policy accept;\n\
             \t\toifname \"{iface}\" {clamp}\n\
             \t\tiifname \"{iface}\" {clamp}\n\
             \t}}\n"
        ),
    )
}

/// `nft -f` input that drops table `family name` if present ("table" first makes the delete
/// never fail) and, with a non-empty `body`, creates it anew: one atomic transaction.
fn replace_table(family: &str, name: &str, body: &str) -> String {
    let mut s = format!("table {family} {name}\ndelete table {family} {name}\n");
    if !body.is_empty() {
        s.push_str(&format!("table {family} {name} {{\n{body}}}\n"));
    }
    s
}

/// (Re)creates the MSS clamp for `iface`.
pub async fn apply_mss(iface: &str) -> Result<(), PodNetError> {
    nft(&mss_script(iface)).await
}

/// Removes the MSS clamp (nothing if it is not there).
pub async fn remove_mss() -> Result<(), PodNetError> {
    nft(&replace_table("inet", MSS_TABLE, "")).await
}

/// What the node needs for the pod network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNet {
    pub subnet: Ipv4Net,
    /// The CNI configuration list, as written.
    pub conflist: String,
    /// `nft -f` input that (re)creates [`NFT_TABLE`].
    pub nft: String,
}

/// Errors of the pod network.
#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    #[error(
        "spec.podCIDRs is empty: the node has no podCIDR (run the controller-manager with \
         --allocate-node-cidrs, or set the Node's spec.podCIDR)"
    )]
    NoPodCidr,
    #[error("spec.podCIDRs has no IPv4 CIDR ({0:?}); the pod network is IPv4")]
    NoIpv4(Vec<String>),
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nft (needed for the pod network's masquerade rule): {0}")]
    Nft(String),
}

/// The pod network this spec asks for: `None` when it is off.
pub fn desired(spec: &WireKubePeerSpec) -> Result<Option<PodNet>, PodNetError> {
    if !spec.pod_network {
        return Ok(None);
    }
    if spec.pod_cidrs.is_empty() {
        return Err(PodNetError::NoPodCidr);
    }
    let subnet = spec
        .pod_cidrs
        .iter()
        .find_map(|c| c.parse::<Ipv4Net>().ok())
        .map(|n| n.trunc())
        .ok_or_else(|| PodNetError::NoIpv4(spec.pod_cidrs.clone()))?;
    Ok(Some(PodNet {
        subnet,
        conflist: conflist(subnet, spec.mtu),
        nft: nft_script(subnet, &spec.interface_name),
    }))
}

/// The CNI configuration list. Pods get the tunnel's MTU, so their TCP segments fit the mesh
/// without fragmentation; `ipMasq` is off because the nftables rule masquerades only what
/// leaves the cluster (the bridge plugin's own rule would hide pod addresses from remote pods).
fn conflist(subnet: Ipv4Net, mtu: u32) -> String {
    let v = json!({
        "cniVersion": "1.0.0",
        "name": "wirekube",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "mtu": mtu,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
        ]
    });
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

/// Pod traffic that leaves through neither the mesh nor the pod bridge (the internet, the
/// node's LAN) is masqueraded to the node's address; everything else keeps the pod address.
fn nft_script(subnet: Ipv4Net, mesh_iface: &str) -> String {
    replace_table(
        "ip",
        NFT_TABLE,
        &format!(
            "\tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr {subnet} oifname != {{ \"{mesh_iface}\", \"{BRIDGE}\" }} masquerade\n\
             \t}}\n"
        ),
    )
}

/// Writes the configuration (only when it differs, atomically) and (re)creates the rule.
/// Returns whether the file changed.
pub async fn apply(dir: &Path, p: &PodNet) -> Result<bool, PodNetError> {
    let path = dir.join(CONF_FILE);
    let current = tokio::fs::read_to_string(&path).await.ok();
    let changed = current.as_deref() != Some(p.conflist.as_str());
    if changed {
        let write = |source| PodNetError::Write {
            path: path.clone(),
            source,
        };
        tokio::fs::create_dir_all(dir).await.map_err(write)?;
        let tmp = dir.join(format!(".{CONF_FILE}.tmp"));
        tokio::fs::write(&tmp, &p.conflist).await.map_err(write)?;
        tokio::fs::rename(&tmp, &path).await.map_err(write)?;
    }
    nft(&p.nft).await?;
    Ok(changed)
}

/// Removes what [`apply`] made (nothing else in `dir`, no other table). Safe to repeat.
pub async fn remove(dir: &Path) -> Result<(), PodNetError> {
    let path = dir.join(CONF_FILE);
    match tokio::fs::remove_file(&path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(PodNetError::Write { path, source }),
    }
    nft(&replace_table("ip", NFT_TABLE, "")).await
}

async fn nft(script: &str) -> Result<(), PodNetError> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| PodNetError::Nft(format!("cannot run nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| PodNetError::Nft(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| PodNetError::Nft(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(PodNetError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(on: bool, cidrs: &[&str]) -> WireKubePeerSpec {
        WireKubePeerSpec {
            pod_network: on,
            pod_cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
            mtu: 1420,
            interface_name: "wirekube0".into(),
            ..WireKubePeerSpec::default()
        }
    }

    #[test]
    fn mss_clamp_covers_both_directions_of_the_mesh_interface() {
        let s = mss_script("wirekube0");
        for dir in ["oifname", "iifname"] {
            assert!(
                s.contains(&format!(
                    "{dir} \"wirekube0\" tcp flags syn / syn,rst tcp option maxseg size set rt mtu"
                )),
                "{s}"
            );
        }
    }

    #[test]
    fn tables_are_replaced_in_one_transaction_and_removal_never_fails() {
        assert_eq!(
            replace_table("ip", "t", ""),
            "table ip t\ndelete table ip t\n"
        );
        let s = replace_table("inet", "t", "\tchain c {\n\t}\n");
        assert!(
            s.starts_with("table inet t\ndelete table inet t\ntable inet t {\n"),
            "{s}"
        );
        assert!(s.ends_with("\t}\n}\n"), "{s}");
    }

    #[test]
    fn off_means_nothing_to_do() {
        assert_eq!(desired(&spec(false, &["10.244.1.0/24"])).unwrap(), None);
    }

    #[test]
    fn on_gives_a_bridge_on_the_pod_cidr_with_the_tunnel_mtu() {
        let p = desired(&spec(true, &["fd00:10:244::/64", "10.244.1.0/24"]))
            .unwrap()
            .unwrap();
        assert_eq!(p.subnet, "10.244.1.0/24".parse().unwrap());
        let v: serde_json::Value = serde_json::from_str(&p.conflist).unwrap();
        let bridge = &v["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["mtu"], 1420);
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.244.1.0/24");
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert!(
            p.nft.contains(
                "ip saddr 10.244.1.0/24 oifname != { \"wirekube0\", \"wkpod0\" } masquerade"
            ),
            "{}",
            p.nft
        );
    }

    #[test]
    fn missing_or_ipv6_only_pod_cidrs_are_errors_that_say_why() {
        let e = desired(&spec(true, &[])).unwrap_err().to_string();
        assert!(e.contains("--allocate-node-cidrs"), "{e}");
        let e = desired(&spec(true, &["fd00::/64"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("IPv4"), "{e}");
    }
}
