//! Semantic validation of a mesh spec, run by the operator before anything is applied.
//!
//! The CRD's OpenAPI and CEL rules reject most bad input at the API server already; this is
//! the second line for clusters where those rules are not enforced (old servers, CEL off,
//! objects created before a CRD upgrade) and for checks CEL cannot express. It returns every
//! problem at once so a user fixes a CR in one round.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::duration::parse_duration;
use crate::enums::RelayProvider;
use crate::mesh::WireKubeMeshSpec;

mod labels;

/// One thing wrong with a spec: where, what, and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Field path as kubectl users write it, e.g. `spec.relay.external.endpoint`.
    pub field: String,
    pub message: String,
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (fix: {})", self.field, self.message, self.fix)
    }
}

fn problem(
    field: impl Into<String>,
    message: impl Into<String>,
    fix: impl Into<String>,
) -> Problem {
    Problem {
        field: field.into(),
        message: message.into(),
        fix: fix.into(),
    }
}

/// Smallest and largest mesh prefixes accepted: /28 still holds 14 nodes, /8 is the
/// largest private block.
pub const MIN_PREFIX: u8 = 8;
pub const MAX_PREFIX: u8 = 28;

/// Checks a mesh spec; `Ok(())` or every problem found.
pub fn validate_mesh(spec: &WireKubeMeshSpec) -> Result<(), Vec<Problem>> {
    let mut problems = Vec::new();
    check_cidr(&spec.mesh_cidr, &mut problems);
    if spec.listen_port == 0 {
        problems.push(problem(
            "spec.listenPort",
            "port 0 is not a usable UDP port",
            "set listenPort between 1 and 65535 (default 51820)",
        ));
    }
    if !valid_interface_name(&spec.interface_name) {
        problems.push(problem(
            "spec.interfaceName",
            format!(
                "{:?} is not a valid Linux interface name",
                spec.interface_name
            ),
            "use 1-15 characters from [a-zA-Z0-9_=+.-], e.g. wirekube0",
        ));
    }
    if !(1280..=9000).contains(&spec.mtu) {
        problems.push(problem(
            "spec.mtu",
            format!("{} is outside 1280-9000", spec.mtu),
            "use 1420 for a 1500-byte underlay (1280 is the IPv6 minimum)",
        ));
    }
    if spec.persistent_keepalive > 65535 {
        problems.push(problem(
            "spec.persistentKeepalive",
            "WireGuard keepalive is a 16-bit number of seconds",
            "use 0 (off) to 65535; 25 is typical",
        ));
    }
    for (k, _) in spec.node_selector.iter() {
        if k.is_empty() {
            problems.push(problem(
                "spec.nodeSelector",
                "empty label key",
                "remove the entry or name a label key",
            ));
        }
    }
    if spec.stun_servers.len() == 1 {
        problems.push(problem(
            "spec.stunServers",
            "one STUN server cannot tell a symmetric NAT from a cone",
            "list at least 2 servers, or none to use the relay's STUN responder",
        ));
    }
    for (i, s) in spec.stun_servers.iter().enumerate() {
        if let Err(why) = check_host_port(s) {
            problems.push(problem(
                format!("spec.stunServers[{i}]"),
                format!("{s:?}: {why}"),
                "write host:port, e.g. stun.example.com:3478 or [2001:db8::1]:3478",
            ));
        }
    }
    check_relay(spec, &mut problems);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn check_relay(spec: &WireKubeMeshSpec, problems: &mut Vec<Problem>) {
    let relay = &spec.relay;
    if relay.provider == RelayProvider::External {
        match &relay.external {
            None => problems.push(problem(
                "spec.relay.external.endpoint",
                "required when relay.provider is external",
                "set relay.external.endpoint to host:port of your relay, or use provider: managed",
            )),
            Some(ext) => {
                if let Err(why) = check_host_port(&ext.endpoint) {
                    problems.push(problem(
                        "spec.relay.external.endpoint",
                        format!("{:?}: {why}", ext.endpoint),
                        "write host:port, e.g. relay.example.com:3478",
                    ));
                }
            }
        }
    }
    match parse_duration(&relay.direct_timeout) {
        Ok(d) if d.as_secs() < 1 || d.as_secs() > 600 => problems.push(problem(
            "spec.relay.directTimeout",
            format!("{} is outside 1s-10m", relay.direct_timeout),
            "WireGuard retries a handshake every 5s; use 10s to 60s",
        )),
        Ok(_) => {}
        Err(e) => problems.push(problem(
            "spec.relay.directTimeout",
            e.to_string(),
            "write a duration such as 10s or 1m",
        )),
    }
    let m = &relay.managed;
    if m.port == 0 || m.port == u16::MAX {
        problems.push(problem(
            "spec.relay.managed.port",
            format!(
                "{} is not usable (the STUN responder also needs port+1)",
                m.port
            ),
            "use 1-65534; default 3478",
        ));
    }
    if let Some(np) = m.node_port
        && !(30000..=32767).contains(&np)
    {
        problems.push(problem(
            "spec.relay.managed.nodePort",
            format!("{np} is outside the default NodePort range"),
            "use 30000-32767 or remove it to have one allocated",
        ));
    }
    if m.replicas == 0 {
        problems.push(problem(
            "spec.relay.managed.replicas",
            "zero replicas means no relay",
            "use at least 1, or relay.mode: never if you want no relay",
        ));
    }
    if m.replicas > 1 {
        problems.push(problem(
            "spec.relay.managed.replicas",
            format!(
                "{} replicas would split the agents between relays that share no state",
                m.replicas
            ),
            "use 1 replica (relays do not forward to each other yet)",
        ));
    }
    if m.image.trim().is_empty() {
        problems.push(problem(
            "spec.relay.managed.image",
            "empty image",
            "remove the field to use the default relay image",
        ));
    }
    labels::check_labels(
        "spec.relay.managed.nodeSelector",
        &m.node_selector,
        problems,
    );
    labels::check_tolerations("spec.relay.managed.tolerations", &m.tolerations, problems);
}

fn check_cidr(cidr: &str, problems: &mut Vec<Problem>) {
    const FIELD: &str = "spec.meshCIDR";
    const FIX: &str = "use an IPv4 network address with a /8 to /28 prefix, e.g. 10.99.0.0/16";
    match cidr.parse::<IpNet>() {
        Err(_) => problems.push(problem(FIELD, format!("{cidr:?} is not a CIDR"), FIX)),
        Ok(IpNet::V6(_)) => problems.push(problem(FIELD, "IPv6 meshes are not supported yet", FIX)),
        Ok(net) => {
            if net.prefix_len() < MIN_PREFIX || net.prefix_len() > MAX_PREFIX {
                problems.push(problem(
                    FIELD,
                    format!(
                        "prefix /{} is outside /{MIN_PREFIX}-/{MAX_PREFIX}",
                        net.prefix_len()
                    ),
                    FIX,
                ));
            }
            if net.network() != net.addr() {
                problems.push(problem(
                    FIELD,
                    format!("{cidr} has host bits set"),
                    format!("write the network address: {}", net.trunc()),
                ));
            }
        }
    }
}

fn valid_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_=+.-".contains(&b))
}

/// Accepts `ip:port`, `[v6]:port` and `hostname:port` with a non-zero port.
pub fn check_host_port(s: &str) -> Result<(), String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return if sa.port() == 0 {
            Err("port 0".into())
        } else {
            Ok(())
        };
    }
    let (host, port) = s.rsplit_once(':').ok_or("missing :port")?;
    let port: u16 = port.parse().map_err(|_| "port is not a number 1-65535")?;
    if port == 0 {
        return Err("port 0".into());
    }
    if host.is_empty() || host.parse::<IpAddr>().is_ok() || host.contains([':', '[', ']']) {
        return Err("bad host".into());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.len() > 253 || !host.split('.').all(label_ok) {
        return Err("host is not a valid DNS name".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
