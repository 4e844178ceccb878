//! `kubectl wirekube netcheck NODE`: what that node's agent found out about its network.

use serde::Serialize;
use wirekube_crds::{CandidateKind, NatType, conditions};

use crate::error::CliError;
use crate::explain::nat_words;
use crate::snapshot::{Snapshot, age_seconds, human_age, peer_condition};
use crate::status::{engine_str, nat_str};
use crate::text::table;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Netcheck {
    pub node: String,
    /// False when the agent has not written a status yet (everything below is empty).
    pub reported: bool,
    pub nat_type: Option<NatType>,
    pub nat_meaning: Option<String>,
    #[serde(rename = "publicIP")]
    pub public_ip: Option<String>,
    /// The node's ExternalIPs as its cloud reports them (for 1:1 NAT recognition).
    #[serde(rename = "externalIPs")]
    pub external_ips: Vec<String>,
    /// Addresses the node may be reached at: LAN, STUN mappings, addresses peers saw.
    pub mappings: Vec<Mapping>,
    /// STUN servers the operator gave the agent (empty: the relay's responder).
    pub stun_servers: Vec<String>,
    pub stun: Option<Probe>,
    pub relay: Option<Probe>,
    pub engine: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Mapping {
    pub kind: CandidateKind,
    pub address: String,
    pub prefix_length: Option<u8>,
    pub observed_by: Option<String>,
}

/// A condition the agent keeps about something it talks to.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub ok: bool,
    pub message: String,
    /// Seconds since the condition last changed.
    pub since_seconds: i64,
}

pub fn netcheck(s: &Snapshot, node: &str) -> Result<Netcheck, CliError> {
    let p = s.peer(node).ok_or_else(|| CliError::UnknownNode {
        node: node.to_owned(),
        mesh: s.mesh_name(),
        known: s.node_names().join(", "),
    })?;
    let probe = |t: &str| {
        peer_condition(p, t).map(|c| Probe {
            ok: c.status == "True",
            message: c.message.clone(),
            since_seconds: age_seconds(s.taken_at, c.last_transition_time.0),
        })
    };
    let st = p.status.as_ref();
    Ok(Netcheck {
        node: node.to_owned(),
        reported: st.is_some(),
        nat_type: st.map(|st| st.nat_type),
        nat_meaning: st.map(|st| nat_words(st.nat_type).to_owned()),
        public_ip: st.and_then(|st| st.public_ip.clone()),
        external_ips: p.spec.external_ips.clone(),
        mappings: st
            .map(|st| {
                st.candidates
                    .iter()
                    .map(|c| Mapping {
                        kind: c.kind,
                        address: c.address.clone(),
                        prefix_length: c.prefix_length,
                        observed_by: c.observed_by.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        stun_servers: p.spec.stun_servers.clone(),
        stun: probe(conditions::STUN_REACHABLE),
        relay: probe(conditions::RELAY_CONNECTED),
        engine: st
            .and_then(|st| st.engine)
            .map(|e| engine_str(e).to_owned()),
    })
}

impl Netcheck {
    pub fn to_text(&self) -> String {
        if !self.reported {
            return format!(
                "{}: its agent has not reported yet (no status); see `kubectl wirekube doctor`\n",
                self.node
            );
        }
        let dash = || "-".to_string();
        let mut out = format!("node {}\n", self.node);
        let nat = self.nat_type.map_or("-", nat_str);
        let meaning = self.nat_meaning.clone().unwrap_or_default();
        out.push_str(&format!("  NAT type:     {nat} ({meaning})\n"));
        out.push_str(&format!(
            "  public IP:    {}\n",
            self.public_ip.clone().unwrap_or_else(dash)
        ));
        if !self.external_ips.is_empty() {
            out.push_str(&format!(
                "  external IPs: {}\n",
                self.external_ips.join(", ")
            ));
        }
        let servers = if self.stun_servers.is_empty() {
            "the relay's STUN responder".to_string()
        } else {
            self.stun_servers.join(", ")
        };
        out.push_str(&format!("  STUN servers: {servers}\n"));
        out.push_str(&format!(
            "  STUN:         {}\n",
            probe_text(self.stun.as_ref())
        ));
        out.push_str(&format!(
            "  relay:        {}\n",
            probe_text(self.relay.as_ref())
        ));
        out.push_str(&format!(
            "  engine:       {}\n\n",
            self.engine.clone().unwrap_or_else(dash)
        ));
        out.push_str(&self.mappings_text());
        out
    }

    fn mappings_text(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .mappings
            .iter()
            .map(|m| {
                let kind = match m.kind {
                    CandidateKind::Host => "host (LAN)",
                    CandidateKind::Srflx => "srflx (STUN mapping)",
                    CandidateKind::Prflx => "prflx (a peer's address, seen from here)",
                };
                let extra = match (&m.prefix_length, &m.observed_by) {
                    (Some(l), _) => format!("/{l}"),
                    (_, Some(peer)) => format!("of {peer}"),
                    _ => String::new(),
                };
                vec![kind.to_string(), m.address.clone(), extra]
            })
            .collect();
        table(&["MAPPING", "ADDRESS", ""], &rows)
    }
}

fn probe_text(p: Option<&Probe>) -> String {
    match p {
        None => "not reported".into(),
        Some(p) => format!(
            "{} for {}: {}",
            if p.ok { "ok" } else { "FAILING" },
            human_age(p.since_seconds),
            p.message
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn reports_nat_mappings_and_probes() {
        let n = netcheck(&fixtures::three_nodes(), "node-3").unwrap();
        assert_eq!(n.nat_type, Some(NatType::Symmetric));
        assert_eq!(n.public_ip.as_deref(), Some("198.18.0.20"));
        assert_eq!(n.mappings.len(), 2);
        assert_eq!(n.mappings[1].address, "198.18.0.20:40000");
        let stun = n.stun.as_ref().unwrap();
        assert!(stun.ok && stun.since_seconds == 600, "{stun:?}");
        let t = n.to_text();
        assert!(
            t.contains("NAT type:     symmetric (symmetric: a new mapping per destination"),
            "{t}"
        );
        assert!(
            t.contains("STUN:         ok for 10m: 2 of 2 STUN server address(es) answered"),
            "{t}"
        );
        assert!(t.contains("srflx (STUN mapping)  198.18.0.20:40000"), "{t}");
        assert!(
            t.contains("host (LAN)            192.168.1.10:51820  /24"),
            "{t}"
        );
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(v["natType"], "symmetric");
        assert_eq!(v["mappings"][1]["kind"], "srflx");
    }

    #[test]
    fn a_silent_agent_and_an_unknown_node() {
        let mut s = fixtures::three_nodes();
        s.peers[0].status = None;
        let n = netcheck(&s, "node-1").unwrap();
        assert!(!n.reported);
        assert!(n.to_text().contains("has not reported yet"));
        assert!(matches!(
            netcheck(&s, "x"),
            Err(CliError::UnknownNode { .. })
        ));
    }
}
