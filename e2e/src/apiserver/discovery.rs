//! Discovery: /version, /api, /apis, group/version resource lists, aggregated discovery
//! (apidiscovery.k8s.io/v2) and a minimal /openapi/v3.

use serde_json::{Value, json};

use super::resources::{Registry, ResourceInfo};

pub const AGGREGATED_CT: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

pub fn wants_aggregated(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=APIGroupDiscoveryList") && first.contains("v=v2"))
}

pub fn version() -> Value {
    json!({
        "major": "1", "minor": "32", "gitVersion": "v1.32.0-wirekube-test",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc",
        "platform": "linux/amd64"
    })
}

pub fn api_versions(server: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}]})
}

fn groups(reg: &Registry) -> Vec<String> {
    reg.group_order
        .iter()
        .filter(|g| !g.is_empty())
        .cloned()
        .collect()
}

fn api_group(reg: &Registry, g: &str) -> Value {
    let versions: Vec<Value> = reg
        .group_versions(g)
        .iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({"name": g, "versions": versions, "preferredVersion": versions.first().cloned().unwrap_or(Value::Null)})
}

pub fn api_group_list(reg: &Registry) -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1",
        "groups": groups(reg).iter().map(|g| api_group(reg, g)).collect::<Vec<_>>()})
}

pub fn api_group_one(reg: &Registry, g: &str) -> Option<Value> {
    if reg.group_versions(g).is_empty() {
        return None;
    }
    let mut v = api_group(reg, g);
    v["kind"] = json!("APIGroup");
    v["apiVersion"] = json!("v1");
    Some(v)
}

pub fn resource_list(reg: &Registry, g: &str, v: &str) -> Option<Value> {
    let rs = reg.resources_in(g, v);
    if rs.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for r in &rs {
        out.push(json!({"name": r.resource, "singularName": r.singular, "namespaced": r.namespaced,
            "kind": r.kind, "verbs": r.verbs(), "shortNames": r.short_names, "categories": r.categories}));
        if r.has_status {
            out.push(json!({"name": format!("{}/status", r.resource), "singularName": "", "namespaced": r.namespaced,
                "kind": r.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    let gv = if g.is_empty() {
        v.to_string()
    } else {
        format!("{g}/{v}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}),
    )
}

fn aggregated_resource(r: &ResourceInfo) -> Value {
    let rk = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let mut v = json!({
        "resource": r.resource, "responseKind": rk, "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular, "verbs": r.verbs(),
    });
    if !r.short_names.is_empty() {
        v["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        v["categories"] = json!(r.categories);
    }
    if r.has_status {
        v["subresources"] = json!([{"subresource": "status", "responseKind": rk, "verbs": ["get", "patch", "update"]}]);
    }
    v
}

fn aggregated_group(reg: &Registry, g: &str) -> Value {
    let versions: Vec<Value> = reg
        .group_versions(g)
        .iter()
        .map(|v| {
            json!({"version": v, "freshness": "Current",
                "resources": reg.resources_in(g, v).iter().map(|r| aggregated_resource(r)).collect::<Vec<_>>()})
        })
        .collect();
    let meta = if g.is_empty() {
        json!({"creationTimestamp": null})
    } else {
        json!({"name": g, "creationTimestamp": null})
    };
    json!({"metadata": meta, "versions": versions})
}

/// Aggregated discovery for `/api` (core) or `/apis` (all named groups).
pub fn aggregated(reg: &Registry, core: bool) -> Value {
    let items: Vec<Value> = if core {
        vec![aggregated_group(reg, "")]
    } else {
        groups(reg)
            .iter()
            .map(|g| aggregated_group(reg, g))
            .collect()
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// `/openapi/v3`: one entry per group version; each document declares only the parameters
/// kubectl probes (`fieldValidation` on PATCH), no schemas.
pub fn openapi_v3_root(reg: &Registry) -> Value {
    let mut paths = serde_json::Map::new();
    paths.insert(
        "api/v1".into(),
        json!({"serverRelativeURL": "/openapi/v3/api/v1"}),
    );
    for g in groups(reg) {
        for v in reg.group_versions(&g) {
            paths.insert(
                format!("apis/{g}/{v}"),
                json!({"serverRelativeURL": format!("/openapi/v3/apis/{g}/{v}")}),
            );
        }
    }
    json!({"paths": paths})
}

pub fn openapi_v3_gv(reg: &Registry, g: &str, v: &str) -> Option<Value> {
    let rs = reg.resources_in(g, v);
    if rs.is_empty() {
        return None;
    }
    let prefix = if g.is_empty() {
        format!("/api/{v}")
    } else {
        format!("/apis/{g}/{v}")
    };
    let mut paths = serde_json::Map::new();
    let param = json!({"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    for r in rs {
        let p = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.resource)
        } else {
            format!("{prefix}/{}/{{name}}", r.resource)
        };
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let op = json!({"parameters": [param.clone()], "responses": {}, "x-kubernetes-group-version-kind": gvk});
        paths.insert(p, json!({"get": {"responses": {}}, "put": op.clone(), "patch": op.clone(), "delete": {"responses": {}}}));
    }
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": paths,
        "components": {"schemas": {}}}),
    )
}
