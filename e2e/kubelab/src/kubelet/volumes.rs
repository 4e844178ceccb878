//! What each volume of a pod is made of (pure planning), and which bind mounts a container
//! gets. Writing the files and checking host paths is in [`super::volfs`].

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, KeyToPath, Pod, Volume};

use super::env::{KeyData, Objects, PodFacts, field_value};
use super::error::{KubeletError, Result};

/// File mode of secret, configMap, downwardAPI and projected files when the spec names none.
pub const DEFAULT_MODE: u32 = 0o644;

/// What a volume is backed by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backing {
    /// A path of the node (in the kubelet's mount view), checked and maybe created.
    HostPath { path: PathBuf, kind: HostPathType },
    /// An empty directory under the pod's volume dir.
    EmptyDir,
    /// A directory under the pod's volume dir holding these files.
    Files(Vec<FileSpec>),
}

/// One file of a secret, configMap, downwardAPI or projected volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSpec {
    /// Relative path inside the volume (validated: no `..`, not absolute).
    pub path: PathBuf,
    pub mode: u32,
    pub content: Content,
}

/// A file's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    Bytes(Vec<u8>),
    /// A service account token, requested (and renewed) through the TokenRequest API.
    Token {
        audience: Option<String>,
        expiration_seconds: Option<i64>,
    },
}

/// `hostPath.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPathType {
    Any,
    Directory,
    DirectoryOrCreate,
    File,
    FileOrCreate,
    CharDevice,
    BlockDevice,
    Socket,
}

impl HostPathType {
    fn parse(s: Option<&str>) -> Result<Self, String> {
        Ok(match s.unwrap_or("") {
            "" => Self::Any,
            "Directory" => Self::Directory,
            "DirectoryOrCreate" => Self::DirectoryOrCreate,
            "File" => Self::File,
            "FileOrCreate" => Self::FileOrCreate,
            "CharDevice" => Self::CharDevice,
            "BlockDevice" => Self::BlockDevice,
            "Socket" => Self::Socket,
            other => return Err(format!("unsupported hostPath type {other:?}")),
        })
    }
}

/// What is at a host path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Missing,
    Directory,
    File,
    CharDevice,
    BlockDevice,
    Socket,
    Other,
}

/// What to do about a host path before mounting it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPathAction {
    Use,
    CreateDirectory,
    CreateFile,
}

/// Decides whether a host path of `kind` may be used as `want`.
pub fn check_host_path(want: HostPathType, found: FileKind) -> Result<HostPathAction, String> {
    use FileKind as F;
    use HostPathType as T;
    let ok = match (want, found) {
        (T::Any, _) => true,
        (T::DirectoryOrCreate, F::Missing) => return Ok(HostPathAction::CreateDirectory),
        (T::FileOrCreate, F::Missing) => return Ok(HostPathAction::CreateFile),
        (T::Directory | T::DirectoryOrCreate, k) => k == F::Directory,
        (T::File | T::FileOrCreate, k) => k == F::File,
        (T::CharDevice, k) => k == F::CharDevice,
        (T::BlockDevice, k) => k == F::BlockDevice,
        (T::Socket, k) => k == F::Socket,
    };
    if ok {
        Ok(HostPathAction::Use)
    } else {
        Err(format!("expected {want:?}, found {found:?}"))
    }
}

/// A relative path inside a volume, refusing anything that could escape it.
fn rel_path(p: &str) -> Result<PathBuf, String> {
    let path = Path::new(p);
    let clean = !p.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
    if clean {
        Ok(path.to_path_buf())
    } else {
        Err(format!("invalid path {p:?} (must be relative, without ..)"))
    }
}

fn mode(m: Option<i32>, default: u32) -> u32 {
    m.and_then(|m| u32::try_from(m).ok())
        .map_or(default, |m| m & 0o7777)
}

/// Files of a secret or configMap (`items` selects and renames keys).
fn key_files(
    data: Option<&KeyData>,
    what: &str,
    items: Option<&Vec<KeyToPath>>,
    optional: Option<bool>,
    default_mode: u32,
) -> Result<Vec<FileSpec>, String> {
    let Some(data) = data else {
        return match optional {
            Some(true) => Ok(Vec::new()),
            _ => Err(format!("{what} not found")),
        };
    };
    let file = |path: &str, m: Option<i32>, bytes: &Vec<u8>| -> Result<FileSpec, String> {
        Ok(FileSpec {
            path: rel_path(path)?,
            mode: mode(m, default_mode),
            content: Content::Bytes(bytes.clone()),
        })
    };
    match items {
        None => data.iter().map(|(k, v)| file(k, None, v)).collect(),
        Some(items) => items
            .iter()
            .filter_map(|it| match data.get(&it.key) {
                Some(v) => Some(file(&it.path, it.mode, v)),
                None if optional == Some(true) => None,
                None => Some(Err(format!("key {:?} not found in {what}", it.key))),
            })
            .collect(),
    }
}

/// Files of a downwardAPI volume or projection.
fn downward_files(
    pod: &Pod,
    facts: &PodFacts,
    items: Option<&Vec<DownwardAPIVolumeFile>>,
    default_mode: u32,
) -> Result<Vec<FileSpec>, String> {
    items
        .into_iter()
        .flatten()
        .map(|it| {
            let field = it
                .field_ref
                .as_ref()
                .ok_or_else(|| format!("{}: only fieldRef is supported", it.path))?;
            Ok(FileSpec {
                path: rel_path(&it.path)?,
                mode: mode(it.mode, default_mode),
                content: Content::Bytes(field_value(pod, &field.field_path, facts)?.into_bytes()),
            })
        })
        .collect()
}

/// Plans one volume.
pub fn plan(pod: &Pod, vol: &Volume, objects: &Objects, facts: &PodFacts) -> Result<Backing> {
    plan_inner(pod, vol, objects, facts).map_err(|reason| KubeletError::Volume {
        volume: vol.name.clone(),
        reason,
    })
}

fn plan_inner(
    pod: &Pod,
    vol: &Volume,
    objects: &Objects,
    facts: &PodFacts,
) -> Result<Backing, String> {
    if let Some(h) = &vol.host_path {
        let kind = HostPathType::parse(h.type_.as_deref())?;
        return Ok(Backing::HostPath {
            path: PathBuf::from(&h.path),
            kind,
        });
    }
    if vol.empty_dir.is_some() {
        return Ok(Backing::EmptyDir);
    }
    if let Some(s) = &vol.secret {
        let name = s.secret_name.as_deref().unwrap_or_default();
        let what = format!("secret {name:?}");
        let m = mode(s.default_mode, DEFAULT_MODE);
        let files = key_files(
            objects.secrets.get(name),
            &what,
            s.items.as_ref(),
            s.optional,
            m,
        )?;
        return Ok(Backing::Files(files));
    }
    if let Some(c) = &vol.config_map {
        let what = format!("configmap {:?}", c.name);
        let data = objects.config_maps.get(&c.name);
        let m = mode(c.default_mode, DEFAULT_MODE);
        return Ok(Backing::Files(key_files(
            data,
            &what,
            c.items.as_ref(),
            c.optional,
            m,
        )?));
    }
    if let Some(d) = &vol.downward_api {
        let m = mode(d.default_mode, DEFAULT_MODE);
        return Ok(Backing::Files(downward_files(
            pod,
            facts,
            d.items.as_ref(),
            m,
        )?));
    }
    if let Some(p) = &vol.projected {
        let m = mode(p.default_mode, DEFAULT_MODE);
        let mut files = Vec::new();
        for src in p.sources.iter().flatten() {
            files.extend(projection_files(pod, src, objects, facts, m)?);
        }
        return Ok(Backing::Files(files));
    }
    Err("unsupported volume type (the lab kubelet knows hostPath, emptyDir, secret, configMap, downwardAPI and projected)".into())
}

fn projection_files(
    pod: &Pod,
    src: &k8s_openapi::api::core::v1::VolumeProjection,
    objects: &Objects,
    facts: &PodFacts,
    m: u32,
) -> Result<Vec<FileSpec>, String> {
    if let Some(t) = &src.service_account_token {
        return Ok(vec![FileSpec {
            path: rel_path(&t.path)?,
            mode: m,
            content: Content::Token {
                audience: t.audience.clone(),
                expiration_seconds: t.expiration_seconds,
            },
        }]);
    }
    if let Some(c) = &src.config_map {
        let what = format!("configmap {:?}", c.name);
        let data = objects.config_maps.get(&c.name);
        return key_files(data, &what, c.items.as_ref(), c.optional, m);
    }
    if let Some(s) = &src.secret {
        let what = format!("secret {:?}", s.name);
        let data = objects.secrets.get(&s.name);
        return key_files(data, &what, s.items.as_ref(), s.optional, m);
    }
    if let Some(d) = &src.downward_api {
        return downward_files(pod, facts, d.items.as_ref(), m);
    }
    Err(
        "unsupported projection (serviceAccountToken, configMap, secret and downwardAPI are)"
            .into(),
    )
}

/// One bind mount of a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// The bind mounts of `container`, given where each volume of the pod lives on the node.
pub fn binds(container: &Container, volumes: &BTreeMap<String, PathBuf>) -> Result<Vec<Bind>> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            let err = |reason: String| KubeletError::Volume {
                volume: m.name.clone(),
                reason,
            };
            let base = volumes
                .get(&m.name)
                .ok_or_else(|| err("mounted but not declared in the pod's volumes".into()))?;
            let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => base.join(rel_path(sub).map_err(err)?),
                None => base.clone(),
            };
            if !m.mount_path.starts_with('/') {
                return Err(err(format!("mountPath {:?} is not absolute", m.mount_path)));
            }
            Ok(Bind {
                source,
                target: PathBuf::from(&m.mount_path),
                read_only: m.read_only.unwrap_or(false),
            })
        })
        .collect()
}

#[cfg(test)]
#[path = "volumes_tests.rs"]
mod tests;
