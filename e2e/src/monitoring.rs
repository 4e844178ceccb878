//! The metric names and label matchers WireKube's alert rules and Grafana dashboard use
//! (config/monitoring/), and a scrape's metric families, samples and label values: tests check
//! the first are a subset of what the binaries export.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use wirekube_lab::{Host, Lab};

use crate::scenario::Scenario;
use crate::scenario::run::SYSTEM_NAMESPACE;

/// Every `wirekube_*` name in the PromQL of `config/monitoring/alerts.yaml` and
/// `config/monitoring/dashboard.json`, as written (counters with `_total`).
pub fn used_metric_names(root: &Path) -> Result<BTreeSet<String>> {
    Ok(used_exprs(root)?
        .iter()
        .flat_map(|e| metric_names(e))
        .collect())
}

/// Every `metric{label="value"}` equality matcher in the same PromQL, as
/// (metric, label, value): the value must be one the binaries export, e.g. the operator's
/// `path="direct"`, not the API's `Direct`.
pub fn used_label_matchers(root: &Path) -> Result<BTreeSet<LabelValue>> {
    Ok(used_exprs(root)?
        .iter()
        .flat_map(|e| label_matchers(e))
        .collect())
}

/// (metric or sample name, label, value).
pub type LabelValue = (String, String, String);

fn used_exprs(root: &Path) -> Result<Vec<String>> {
    let mut exprs = Vec::new();
    let rules_path = root.join("config/monitoring/alerts.yaml");
    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(&rules_path).with_context(|| rules_path.display().to_string())?,
    )?;
    for g in rules["groups"].as_sequence().into_iter().flatten() {
        for r in g["rules"].as_sequence().into_iter().flatten() {
            exprs.extend(r["expr"].as_str().map(str::to_owned));
        }
    }
    let dash_path = root.join("config/monitoring/dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&dash_path).with_context(|| dash_path.display().to_string())?,
    )?;
    for p in dash["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.extend(t["expr"].as_str().map(str::to_owned));
        }
    }
    Ok(exprs)
}

/// The `label="value"` equality matchers (not `!=`, `=~`, `!~`) of each `wirekube_*{...}`
/// selector in a PromQL expression.
pub fn label_matchers(expr: &str) -> BTreeSet<LabelValue> {
    let mut out = BTreeSet::new();
    for name in metric_names(expr) {
        let mut rest = expr;
        while let Some(i) = rest.find(name.as_str()) {
            let after = &rest[i + name.len()..];
            rest = after;
            let Some(body) = after.strip_prefix('{').and_then(|b| b.split_once('}')) else {
                continue;
            };
            for (label, op, value) in label_pairs(body.0) {
                if op == "=" {
                    out.insert((name.clone(), label, value));
                }
            }
        }
    }
    out
}

/// `a="x",b!="y"` → (a, =, x), (b, !=, y): label names, operators and unquoted values.
fn label_pairs(body: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        let Some(q) = rest.find('"') else { break };
        let (lhs, after) = (&rest[..q], &rest[q + 1..]);
        let name_end = lhs.find(['=', '!']).unwrap_or(lhs.len());
        let (label, op) = (lhs[..name_end].trim(), lhs[name_end..].trim());
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => value.extend(chars.next().map(|(_, c)| c)),
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((label.to_owned(), op.to_owned(), value));
        rest = &after[end..];
    }
    out
}

/// The `wirekube_*` identifiers in a PromQL expression.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(off) = expr[i..].find("wirekube_") {
        let start = i + off;
        let boundary = start == 0 || !is_ident(bytes[start - 1]);
        let mut end = start;
        while end < bytes.len() && is_ident(bytes[end]) {
            end += 1;
        }
        if boundary {
            out.insert(expr[start..end].to_owned());
        }
        i = end.max(start + 1);
    }
    out
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

/// What one scrape (Prometheus or OpenMetrics text) exports: the metric families declared
/// (`# TYPE`) and the sample names that carry a value.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Exported {
    pub families: BTreeSet<String>,
    pub samples: BTreeSet<String>,
    /// (sample name, label, value) of every sample.
    pub labels: BTreeSet<LabelValue>,
}

impl Exported {
    pub fn parse(text: &str) -> Exported {
        let mut e = Exported::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                e.families.extend(rest.split(' ').next().map(str::to_owned));
            } else if !line.starts_with('#')
                && let Some(name) = line.split(['{', ' ']).next()
                && !name.is_empty()
            {
                e.samples.insert(name.to_owned());
                if let Some(body) = line[name.len()..]
                    .strip_prefix('{')
                    .and_then(|b| b.rsplit_once('}'))
                {
                    for (label, _, value) in label_pairs(body.0) {
                        e.labels.insert((name.to_owned(), label, value));
                    }
                }
            }
        }
        e
    }

    pub fn merge(&mut self, other: Exported) {
        self.families.extend(other.families);
        self.samples.extend(other.samples);
        self.labels.extend(other.labels);
    }

    /// Whether `name` (as PromQL writes it: `x_total` for a counter) is a declared family.
    pub fn declares(&self, name: &str) -> bool {
        self.families.contains(name) || self.families.contains(family_of(name))
    }
}

/// The family of a sample name: without `_total`, `_bucket`, `_sum`, `_count`, `_created`.
pub fn family_of(sample: &str) -> &str {
    ["_total", "_bucket", "_sum", "_count", "_created"]
        .iter()
        .find_map(|s| sample.strip_suffix(s))
        .unwrap_or(sample)
}

/// `GET /metrics` at `addr` from inside `host`'s network namespace.
fn scrape(lab: &Lab, host: &Host, addr: SocketAddr) -> Result<String> {
    use std::io::{Read, Write};
    let got = lab.in_host(host, move || -> std::io::Result<String> {
        let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        c.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut out = String::new();
        c.read_to_string(&mut out)?;
        Ok(out)
    });
    got.map_err(|e| anyhow!("{e}"))?
        .with_context(|| format!("scrape {addr} in {}", host.name))
}

/// One scrape of every WireKube binary of a scenario, merged: every node's agent (host network,
/// 127.0.0.1:9473 as the chart sets), each operator pod (its pod IP, :8080, from the node it
/// runs on) and the external relay (127.0.0.1:9090 in the DMZ). Also returns how many operator
/// pods were scraped.
pub fn scrape_scenario(sc: &Scenario) -> Result<(Exported, usize)> {
    let mut got = Exported::default();
    for host in sc.hosts.values() {
        got.merge(Exported::parse(&scrape(
            &sc.lab,
            host,
            SocketAddr::from(([127, 0, 0, 1], 9473)),
        )?));
    }
    let pods = sc.kube.kubectl(&[
        "get",
        "pods",
        "-n",
        SYSTEM_NAMESPACE,
        "-l",
        "app.kubernetes.io/name=wirekube-operator",
        "-o",
        "jsonpath={range .items[*]}{.spec.nodeName} {.status.podIP}{\"\\n\"}{end}",
    ])?;
    let mut operators = 0;
    for line in pods.lines().filter(|l| !l.trim().is_empty()) {
        let (node, ip) = line
            .split_once(' ')
            .with_context(|| format!("node and pod IP in {line:?}"))?;
        let host = sc
            .hosts
            .get(node)
            .with_context(|| format!("no node {node}"))?;
        let addr = format!("{ip}:8080")
            .parse()
            .with_context(|| format!("pod IP {ip:?}"))?;
        got.merge(Exported::parse(&scrape(&sc.lab, host, addr)?));
        operators += 1;
    }
    got.merge(Exported::parse(&scrape(
        &sc.lab,
        &sc.kube.dmz,
        SocketAddr::from(([127, 0, 0, 1], 9090)),
    )?));
    Ok((got, operators))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_promql() {
        let n = metric_names(
            "sum by (pod) (rate(wirekube_relay_drops_total[5m])) / x_wirekube_not + \
             max(wirekube_operator_mesh_nodes{mesh=\"a\"})",
        );
        let want: BTreeSet<String> = ["wirekube_relay_drops_total", "wirekube_operator_mesh_nodes"]
            .map(String::from)
            .into();
        assert_eq!(n, want);
    }

    #[test]
    fn scrape_families_and_samples() {
        let text = "# HELP wirekube_agent_peers Peers\n# TYPE wirekube_agent_peers gauge\n\
                    wirekube_agent_peers{path=\"direct\"} 2\n\
                    # TYPE wirekube_relay_drops counter\nwirekube_relay_drops_total{reason=\"x\"} 0\n\
                    # TYPE wirekube_relay_auth_failures counter\n# EOF\n";
        let e = Exported::parse(text);
        assert!(e.declares("wirekube_agent_peers"));
        assert!(e.declares("wirekube_relay_drops_total"));
        assert!(e.declares("wirekube_relay_auth_failures_total"));
        assert!(!e.declares("wirekube_agent_nope"));
        assert!(e.samples.contains("wirekube_relay_drops_total"));
        assert!(!e.samples.contains("wirekube_relay_auth_failures_total"));
        assert_eq!(family_of("wirekube_x_seconds_bucket"), "wirekube_x_seconds");
        let lv = |m: &str, l: &str, v: &str| (m.to_owned(), l.to_owned(), v.to_owned());
        assert!(
            e.labels
                .contains(&lv("wirekube_agent_peers", "path", "direct"))
        );
        assert!(
            e.labels
                .contains(&lv("wirekube_relay_drops_total", "reason", "x"))
        );
        assert_eq!(e.labels.len(), 2);
    }

    #[test]
    fn equality_matchers_in_promql() {
        let lv = |m: &str, l: &str, v: &str| (m.to_owned(), l.to_owned(), v.to_owned());
        let cases: [(&str, Vec<LabelValue>); 5] = [
            ("sum(wirekube_agent_peers)", vec![]),
            (
                "2 * sum(wirekube_operator_mesh_pairs{path=\"direct\"})",
                vec![lv("wirekube_operator_mesh_pairs", "path", "direct")],
            ),
            (
                "wirekube_a{x=\"1\", y!=\"2\",z=~\"3|4\"} + on() wirekube_b{ w = \"a,b\" }",
                vec![lv("wirekube_a", "x", "1"), lv("wirekube_b", "w", "a,b")],
            ),
            (
                "wirekube_a{q=\"say \\\"hi\\\"\"} and wirekube_a{r=\"2\"}",
                vec![
                    lv("wirekube_a", "q", "say \"hi\""),
                    lv("wirekube_a", "r", "2"),
                ],
            ),
            ("rate(wirekube_c_total[5m])", vec![]),
        ];
        for (expr, want) in cases {
            let want: BTreeSet<LabelValue> = want.into_iter().collect();
            assert_eq!(label_matchers(expr), want, "{expr}");
        }
    }
}
