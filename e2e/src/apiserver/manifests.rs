//! Loading manifests (YAML/JSON files or directories) into the store as admin.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::error::ApiServerError;
use super::ops::{self, Ctx, PatchOpts, Target};
use super::patch::PatchType;
use super::server::Shared;
use super::util;

fn files(path: &Path) -> Result<Vec<PathBuf>, ApiServerError> {
    let io = |source| ApiServerError::Io {
        path: path.display().to_string(),
        source,
    };
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(path).map_err(io)? {
        let p = e.map_err(io)?.path();
        if p.is_dir() {
            out.extend(files(&p)?);
        } else if p
            .extension()
            .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
        {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Parses every document of every manifest file under `path`.
pub fn documents(path: &Path) -> Result<Vec<Value>, ApiServerError> {
    let mut docs = Vec::new();
    for f in files(path)? {
        let text = std::fs::read_to_string(&f).map_err(|source| ApiServerError::Io {
            path: f.display().to_string(),
            source,
        })?;
        for d in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(d).map_err(|e| ApiServerError::Manifest {
                path: f.display().to_string(),
                message: e.to_string(),
            })?;
            match v.get("kind").and_then(Value::as_str) {
                None | Some("Kustomization") => {}
                Some(k) if k.ends_with("List") => {
                    docs.extend(v["items"].as_array().cloned().unwrap_or_default())
                }
                Some(_) => docs.push(v),
            }
        }
    }
    // CRDs and namespaces first, so that what depends on them can be stored.
    docs.sort_by_key(|d| match util::str_at(d, "/kind") {
        "CustomResourceDefinition" => 0,
        "Namespace" => 1,
        _ => 2,
    });
    Ok(docs)
}

/// Applies the manifests under `path` (server-side apply, forced). Returns how many.
pub fn load(shared: &Shared, path: &Path) -> Result<usize, ApiServerError> {
    let docs = documents(path)?;
    let mut st = shared.store.lock().expect("store lock");
    let mut ctx = Ctx::internal("wirekube-apiserver-preload");
    for d in &docs {
        let ri = st
            .registry
            .by_kind(util::str_at(d, "/apiVersion"), util::str_at(d, "/kind"))
            .ok_or_else(|| ApiServerError::Manifest {
                path: path.display().to_string(),
                message: format!(
                    "no resource serves {} {}",
                    util::str_at(d, "/apiVersion"),
                    util::str_at(d, "/kind")
                ),
            })?;
        let ns = if ri.namespaced {
            match util::meta_namespace(d) {
                "" => "default".to_string(),
                n => n.to_string(),
            }
        } else {
            String::new()
        };
        let t = Target {
            ri,
            ns,
            name: util::meta_name(d).to_string(),
            sub: None,
        };
        ops::patch(
            &mut st,
            &mut ctx,
            &t,
            PatchOpts {
                kind: PatchType::Apply,
                force: true,
            },
            d.clone(),
        )
        .map_err(|source| ApiServerError::Load {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(docs.len())
}
