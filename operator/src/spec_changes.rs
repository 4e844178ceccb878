//! Which parts of a node's spec a write changes, as field names (pure). The `reconciled` log
//! line counts them per pass: at 30 nodes a start-up took ten passes of 30 spec writes each,
//! and which inputs keep rewriting every spec is the question to answer (docs/benchmarks.md).

use std::collections::{BTreeMap, BTreeSet};

use wirekube_crds::{PeerEntry, WireKubePeerSpec};

/// The fields of `new` that differ from `old` (`None`: the peer is new), each once:
/// top-level fields by name (`mtu`, `relayEndpoints`, …), entries as `peers+` (added),
/// `peers-` (removed) and `peers.<field>` (changed in at least one entry).
pub fn spec_changes(old: Option<&WireKubePeerSpec>, new: &WireKubePeerSpec) -> Vec<&'static str> {
    let Some(old) = old else {
        return vec!["created"];
    };
    let WireKubePeerSpec {
        mesh,
        mesh_ip,
        mesh_cidr,
        interface_name,
        listen_port,
        mtu,
        relay_mode,
        relay_endpoints,
        relay_token_secret,
        stun_servers,
        direct_timeout,
        external_ips,
        pod_cidrs,
        pod_network,
        peers,
    } = new;
    let mut out = BTreeSet::new();
    let mut note = |differs: bool, field: &'static str| {
        if differs {
            out.insert(field);
        }
    };
    note(*mesh != old.mesh, "mesh");
    note(*mesh_ip != old.mesh_ip, "meshIP");
    note(*mesh_cidr != old.mesh_cidr, "meshCIDR");
    note(*interface_name != old.interface_name, "interfaceName");
    note(*listen_port != old.listen_port, "listenPort");
    note(*mtu != old.mtu, "mtu");
    note(*relay_mode != old.relay_mode, "relayMode");
    note(*relay_endpoints != old.relay_endpoints, "relayEndpoints");
    note(
        *relay_token_secret != old.relay_token_secret,
        "relayTokenSecret",
    );
    note(*stun_servers != old.stun_servers, "stunServers");
    note(*direct_timeout != old.direct_timeout, "directTimeout");
    note(*external_ips != old.external_ips, "externalIPs");
    note(*pod_cidrs != old.pod_cidrs, "podCIDRs");
    note(*pod_network != old.pod_network, "podNetwork");
    let before: BTreeMap<&str, &PeerEntry> =
        (old.peers.iter()).map(|e| (e.name.as_str(), e)).collect();
    let after: BTreeMap<&str, &PeerEntry> = (peers.iter()).map(|e| (e.name.as_str(), e)).collect();
    for (name, entry) in &after {
        match before.get(name) {
            None => {
                out.insert("peers+");
            }
            Some(prev) => out.extend(entry_changes(prev, entry)),
        }
    }
    if before.keys().any(|name| !after.contains_key(name)) {
        out.insert("peers-");
    }
    out.into_iter().collect()
}

fn entry_changes(old: &PeerEntry, new: &PeerEntry) -> Vec<&'static str> {
    let PeerEntry {
        name: _,
        public_key,
        allowed_ips,
        endpoint,
        path,
        reason,
        initiate,
        punch_toward,
        persistent_keepalive,
    } = new;
    [
        (*public_key != old.public_key, "peers.publicKey"),
        (*allowed_ips != old.allowed_ips, "peers.allowedIPs"),
        (*endpoint != old.endpoint, "peers.endpoint"),
        (*path != old.path, "peers.path"),
        (*reason != old.reason, "peers.reason"),
        (*initiate != old.initiate, "peers.initiate"),
        (*punch_toward != old.punch_toward, "peers.punchToward"),
        (
            *persistent_keepalive != old.persistent_keepalive,
            "peers.persistentKeepalive",
        ),
    ]
    .into_iter()
    .filter_map(|(differs, field)| differs.then_some(field))
    .collect()
}

/// `field×count` per field over a pass's writes, most frequent first (ties by name).
pub fn summary<'a>(writes: impl IntoIterator<Item = &'a [&'static str]>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for fields in writes {
        for f in fields {
            *counts.entry(f).or_default() += 1;
        }
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    (counts.iter())
        .map(|(f, n)| format!("{f}×{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use wirekube_crds::{PathReason, PlannedPath};

    use super::*;

    fn entry(name: &str) -> PeerEntry {
        PeerEntry {
            name: name.into(),
            public_key: String::new(),
            allowed_ips: vec!["10.99.0.2/32".into()],
            endpoint: None,
            path: PlannedPath::Relay,
            reason: PathReason::SameSite,
            initiate: false,
            punch_toward: None,
            persistent_keepalive: 0,
        }
    }

    fn spec(peers: Vec<PeerEntry>) -> WireKubePeerSpec {
        WireKubePeerSpec {
            mtu: 1380,
            peers,
            ..WireKubePeerSpec::default()
        }
    }

    #[test]
    fn each_changed_field_is_named_once() {
        let old = spec(vec![entry("a"), entry("b"), entry("c")]);
        let same = old.clone();
        let mut moved = old.clone();
        moved.peers[0].endpoint = Some("192.0.2.1:51820".into());
        moved.peers[0].path = PlannedPath::Direct;
        moved.peers[1].endpoint = Some("192.0.2.2:51820".into());
        let mut grown = old.clone();
        grown.peers.push(entry("d"));
        grown.peers.remove(0);
        grown.mtu = 1280;
        grown.peers[0].public_key = "k".into();
        for (name, new, want) in [
            ("unchanged", same, vec![]),
            (
                "two entries moved",
                moved,
                vec!["peers.endpoint", "peers.path"],
            ),
            (
                "mtu, a key, one added and one removed",
                grown,
                vec!["mtu", "peers+", "peers-", "peers.publicKey"],
            ),
        ] {
            assert_eq!(spec_changes(Some(&old), &new), want, "{name}");
        }
        assert_eq!(spec_changes(None, &old), vec!["created"]);
    }

    #[test]
    fn every_entry_field_is_compared() {
        let old = entry("a");
        let changed = [
            PeerEntry {
                public_key: "k".into(),
                ..old.clone()
            },
            PeerEntry {
                allowed_ips: vec![],
                ..old.clone()
            },
            PeerEntry {
                endpoint: Some("e".into()),
                ..old.clone()
            },
            PeerEntry {
                path: PlannedPath::Direct,
                ..old.clone()
            },
            PeerEntry {
                reason: PathReason::BothSymmetric,
                ..old.clone()
            },
            PeerEntry {
                initiate: true,
                ..old.clone()
            },
            PeerEntry {
                punch_toward: Some("p".into()),
                ..old.clone()
            },
            PeerEntry {
                persistent_keepalive: 25,
                ..old.clone()
            },
        ];
        for new in &changed {
            assert_eq!(entry_changes(&old, new).len(), 1, "{new:?}");
        }
    }

    #[test]
    fn summary_counts_fields_over_writes_most_frequent_first() {
        let a: &[&str] = &["peers.endpoint", "peers.path"];
        let b: &[&str] = &["peers.endpoint"];
        assert_eq!(summary([a, b]), "peers.endpoint×2 peers.path×1");
        assert_eq!(summary(std::iter::empty::<&[&str]>()), "");
    }
}
