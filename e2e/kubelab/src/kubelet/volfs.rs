//! Effects for volumes: fetching the referenced Secrets and ConfigMaps, checking host paths,
//! writing volume files atomically, requesting and renewing service account tokens.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};

use super::env::{KeyData, Objects, Refs};
use super::error::{KubeletError, Result, api_code};
use super::token;
use super::volumes::{Backing, Content, FileKind, HostPathAction, check_host_path};

/// A token file to keep fresh.
#[derive(Clone, Debug)]
pub struct TokenFile {
    pub file: PathBuf,
    pub mode: u32,
    pub audience: Option<String>,
    pub expiration_seconds: Option<i64>,
}

/// The prepared volumes of a pod: where each lives on the node, and the token files in them.
#[derive(Clone, Debug, Default)]
pub struct Prepared {
    pub paths: BTreeMap<String, PathBuf>,
    pub tokens: Vec<TokenFile>,
    /// When the first token needs renewing.
    pub refresh: Option<Duration>,
}

/// Fetches the referenced objects (those that do not exist are left out).
pub async fn fetch_objects(client: &Client, ns: &str, refs: &Refs) -> Result<Objects> {
    let mut objects = Objects::default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    for name in &refs.secrets {
        if let Some(s) = get_opt(&secrets, ns, name).await? {
            let data = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0));
            objects.secrets.insert(name.clone(), data.collect());
        }
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    for name in &refs.config_maps {
        if let Some(c) = get_opt(&cms, ns, name).await? {
            let mut data: KeyData = c
                .binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            data.extend(
                c.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes())),
            );
            objects.config_maps.insert(name.clone(), data);
        }
    }
    Ok(objects)
}

async fn get_opt<K>(api: &Api<K>, ns: &str, name: &str) -> Result<Option<K>>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get(name).await {
        Ok(o) => Ok(Some(o)),
        Err(e) if api_code(&e) == Some(404) => Ok(None),
        Err(e) => Err(KubeletError::api(format!("get {ns}/{name}"), e)),
    }
}

/// What is at `path` (following symlinks, as the kubelet's checks do).
pub fn file_kind(path: &Path) -> FileKind {
    match fs::metadata(path) {
        Err(_) => FileKind::Missing,
        Ok(m) => {
            let t = m.file_type();
            if t.is_dir() {
                FileKind::Directory
            } else if t.is_file() {
                FileKind::File
            } else if t.is_char_device() {
                FileKind::CharDevice
            } else if t.is_block_device() {
                FileKind::BlockDevice
            } else if t.is_socket() {
                FileKind::Socket
            } else {
                FileKind::Other
            }
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> KubeletError {
    let what = what.into();
    move |e| KubeletError::io(what, e)
}

/// Writes `data` to `path` atomically (temporary file in the same directory, then rename).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(format!("create {}", tmp.display())))?;
    f.write_all(data)
        .map_err(io(format!("write {}", tmp.display())))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {}", tmp.display())))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io(format!("rename to {}", path.display())))
}

/// Prepares one volume under `dir` (its directory for emptyDir and file volumes).
fn prepare_one(name: &str, backing: &Backing, dir: &Path, out: &mut Prepared) -> Result<()> {
    let path = match backing {
        Backing::HostPath { path, kind } => {
            let action =
                check_host_path(*kind, file_kind(path)).map_err(|reason| KubeletError::Volume {
                    volume: name.to_owned(),
                    reason: format!("hostPath {}: {reason}", path.display()),
                })?;
            match action {
                HostPathAction::Use => {}
                HostPathAction::CreateDirectory => {
                    fs::create_dir_all(path).map_err(io(format!("create {}", path.display())))?;
                }
                HostPathAction::CreateFile => {
                    if let Some(parent) = path.parent() {
                        fs::create_dir_all(parent)
                            .map_err(io(format!("create {}", parent.display())))?;
                    }
                    fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .mode(0o644)
                        .open(path)
                        .map_err(io(format!("create {}", path.display())))?;
                }
            }
            path.clone()
        }
        Backing::EmptyDir => {
            fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o777))
                .map_err(io(format!("chmod {}", dir.display())))?;
            dir.to_path_buf()
        }
        Backing::Files(files) => {
            fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
            for f in files {
                let file = dir.join(&f.path);
                match &f.content {
                    Content::Bytes(b) => write_atomic(&file, b, f.mode)?,
                    Content::Token {
                        audience,
                        expiration_seconds,
                    } => out.tokens.push(TokenFile {
                        file,
                        mode: f.mode,
                        audience: audience.clone(),
                        expiration_seconds: *expiration_seconds,
                    }),
                }
            }
            dir.to_path_buf()
        }
    };
    out.paths.insert(name.to_owned(), path);
    Ok(())
}

/// Prepares all planned volumes under `root` (one directory per volume) and writes their
/// first tokens. Returns where each volume lives.
pub async fn prepare(
    client: &Client,
    pod: &Pod,
    plans: &[(String, Backing)],
    root: &Path,
) -> Result<Prepared> {
    let mut out = Prepared::default();
    for (name, backing) in plans {
        prepare_one(name, backing, &root.join(name), &mut out)?;
    }
    for t in &out.tokens {
        let d = write_token(client, pod, t).await?;
        out.refresh = Some(out.refresh.map_or(d, |r| r.min(d)));
    }
    Ok(out)
}

/// Requests a token for `t` and writes it; returns when it should be renewed.
pub async fn write_token(client: &Client, pod: &Pod, t: &TokenFile) -> Result<Duration> {
    let req = token::token_request(pod, t.audience.as_deref(), t.expiration_seconds);
    let issued = Timestamp::now();
    let tok = token::request(client, pod, &req).await?;
    write_atomic(&t.file, tok.token.as_bytes(), t.mode)?;
    let requested = t
        .expiration_seconds
        .unwrap_or(token::DEFAULT_EXPIRATION_SECONDS);
    Ok(token::refresh_after(requested, issued, tok.expires))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content_with_mode() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sub/token");
        write_atomic(&f, b"one", 0o600).unwrap();
        write_atomic(&f, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["token"], "no temporary file left");
    }

    #[test]
    fn file_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"").unwrap();
        let cases = [
            (dir.path().to_path_buf(), FileKind::Directory),
            (file, FileKind::File),
            (dir.path().join("missing"), FileKind::Missing),
            (PathBuf::from("/dev/null"), FileKind::CharDevice),
        ];
        for (p, want) in cases {
            assert_eq!(file_kind(&p), want, "{}", p.display());
        }
    }

    #[test]
    fn prepares_files_and_collects_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Prepared::default();
        let files = Backing::Files(vec![
            super::super::volumes::FileSpec {
                path: "ca.crt".into(),
                mode: 0o644,
                content: Content::Bytes(b"PEM".to_vec()),
            },
            super::super::volumes::FileSpec {
                path: "token".into(),
                mode: 0o600,
                content: Content::Token {
                    audience: None,
                    expiration_seconds: None,
                },
            },
        ]);
        let vdir = dir.path().join("kube-api-access");
        prepare_one("kube-api-access", &files, &vdir, &mut out).unwrap();
        assert_eq!(fs::read(vdir.join("ca.crt")).unwrap(), b"PEM");
        assert_eq!(out.tokens.len(), 1);
        assert_eq!(out.tokens[0].file, vdir.join("token"));
        let created = dir.path().join("host/created");
        let host = Backing::HostPath {
            path: created.clone(),
            kind: super::super::volumes::HostPathType::DirectoryOrCreate,
        };
        prepare_one("h", &host, &dir.path().join("unused"), &mut out).unwrap();
        assert!(created.is_dir());
        assert_eq!(out.paths["h"], created);
        let bad = Backing::HostPath {
            path: created,
            kind: super::super::volumes::HostPathType::CharDevice,
        };
        let err = prepare_one("h", &bad, dir.path(), &mut out).unwrap_err();
        assert!(
            err.to_string()
                .contains("expected CharDevice, found Directory"),
            "{err}"
        );
    }
}
