//! The metric names WireKube's alert rules and Grafana dashboard use (config/monitoring/), and
//! a scrape's metric families: tests check the first are a subset of what the binaries export.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};

/// Every `wirekube_*` name in the PromQL of `config/monitoring/alerts.yaml` and
/// `config/monitoring/dashboard.json`, as written (counters with `_total`).
pub fn used_metric_names(root: &Path) -> Result<BTreeSet<String>> {
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
    Ok(exprs.iter().flat_map(|e| metric_names(e)).collect())
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
            }
        }
        e
    }

    pub fn merge(&mut self, other: Exported) {
        self.families.extend(other.families);
        self.samples.extend(other.samples);
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
    }
}
