//! Node identity: the WireGuard key pair.
//!
//! The private key is generated on the node the first time the agent starts and stored in
//! the state directory (a hostPath in the DaemonSet) so that restarts keep the same public key
//! (peers and the relay know the node by it). It is never logged, never sent, never put in a
//! Kubernetes object; only the public key is published in the peer status.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use wirekube_relay_proto::{PrivateKey, PublicKey};

/// File name of the private key inside the state directory (`wg genkey` format).
pub const KEY_FILE: &str = "private.key";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A pre-existing state directory (or key file) that someone other than this process'
    /// user could write: they could replace the key, so it is refused rather than chmodded
    /// (the directory may be shared or managed by someone else, e.g. a hostPath).
    #[error("{path} {problem}; refusing to keep the node's private key there: {fix}")]
    Insecure {
        path: PathBuf,
        problem: String,
        fix: String,
    },
    /// The file exists but is not a key; refuse to overwrite it (it may be an operator's
    /// mistake worth looking at, and replacing it would silently change the node's identity).
    #[error("key file {path} does not hold a base64 WireGuard key")]
    Corrupt { path: PathBuf },
}

/// The node's key pair. `Debug` never prints the private half.
#[derive(Clone)]
pub struct Identity {
    private: [u8; 32],
    public: PublicKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity(public={})", self.public)
    }
}

impl Identity {
    fn from_bytes(private: [u8; 32]) -> Self {
        let public = PrivateKey::from_bytes(private).public_key();
        Self { private, public }
    }

    /// Generates a fresh key pair (clamping is done by X25519 itself, as in WireGuard).
    pub fn generate() -> Self {
        let mut b = [0u8; 32];
        rand::fill(&mut b);
        Self::from_bytes(b)
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The raw private key, for the dataplane only.
    pub fn private_bytes(&self) -> [u8; 32] {
        self.private
    }

    /// The private key as the relay client wants it.
    pub fn relay_key(&self) -> PrivateKey {
        PrivateKey::from_bytes(self.private)
    }

    /// Loads the key from `dir`, or creates a new key (0600), creating `dir` (0700) if it is
    /// missing. An existing `dir` is checked, never chmodded (see [`prepare_dir`]).
    /// Returns the identity and whether it was newly generated.
    pub fn load_or_create(dir: &Path) -> Result<(Identity, bool), IdentityError> {
        prepare_dir(dir)?;
        let path = dir.join(KEY_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => {
                check_owner(&path, "key file")?;
                let key = STANDARD
                    .decode(text.trim())
                    .ok()
                    .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok())
                    .ok_or_else(|| IdentityError::Corrupt { path: path.clone() })?;
                // A key restored from a backup may carry loose permissions; fix them.
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(
                    |source| IdentityError::Io {
                        path: path.clone(),
                        source,
                    },
                )?;
                Ok((Identity::from_bytes(key), false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = Identity::generate();
                write_atomic(&path, STANDARD.encode(id.private).as_bytes())?;
                Ok((id, true))
            }
            Err(source) => Err(IdentityError::Io { path, source }),
        }
    }
}

/// Creates `dir` with mode 0700 when it is missing (parents with the default mode). A
/// directory that already exists is not ours to chmod: it may be a hostPath kubelet made
/// (0755), a path shared with other software, or an operator's choice. It must be owned by
/// this process' user and not writable by group or others, since whoever can write it can
/// put their own key file in place (even with the sticky bit: before the first start);
/// otherwise the start fails with the fix in the error. Readable by others is accepted (the
/// key file itself is 0600, so only file names show) and logged.
fn prepare_dir(dir: &Path) -> Result<(), IdentityError> {
    let dir_err = |source| IdentityError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(dir_err)?;
    }
    // Non-recursive, so "we created it" is decided by the kernel, not by a racy check.
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        // Exactly 0700 whatever the umask: it is ours.
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(dir_err),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => check_existing_dir(dir),
        Err(e) => Err(dir_err(e)),
    }
}

fn check_existing_dir(dir: &Path) -> Result<(), IdentityError> {
    let meta = fs::metadata(dir).map_err(|source| IdentityError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    let insecure = |problem: String, fix: String| IdentityError::Insecure {
        path: dir.to_path_buf(),
        problem,
        fix,
    };
    if !meta.is_dir() {
        return Err(insecure(
            "is not a directory".into(),
            "point --state-dir at a directory".into(),
        ));
    }
    check_owner(dir, "state directory")?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(insecure(
            format!("is writable by group or others (mode {mode:04o})"),
            format!("run `chmod go-w {}`", dir.display()),
        ));
    }
    if mode & 0o077 != 0 {
        tracing::info!(
            path = %dir.display(),
            mode = format!("{mode:04o}"),
            "state directory is readable by others (the key file is 0600); `chmod 700` hides the file names"
        );
    }
    Ok(())
}

/// Refuses `path` unless this process' effective user owns it.
#[allow(unsafe_code)]
fn check_owner(path: &Path, what: &str) -> Result<(), IdentityError> {
    let meta = fs::metadata(path).map_err(|source| IdentityError::Dir {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(IdentityError::Insecure {
            path: path.to_path_buf(),
            problem: format!(
                "({what}) is owned by uid {}, not by this process (uid {me})",
                meta.uid()
            ),
            fix: format!(
                "run `chown {me} {}` or use another --state-dir",
                path.display()
            ),
        });
    }
    Ok(())
}

/// Writes `data` to a temp file created 0600, fsyncs it, and renames it over `path`, so a
/// crash never leaves a half-written key (which would change the node's identity).
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    let res = f
        .write_all(data)
        .and_then(|_| f.write_all(b"\n"))
        .and_then(|_| f.sync_all());
    drop(f);
    if let Err(e) = res.and_then(|_| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(io(e));
    }
    if let Some(parent) = path.parent()
        && let Ok(d) = fs::File::open(parent)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_key_with_tight_permissions() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let (id, created) = Identity::load_or_create(&dir).unwrap();
        assert!(created);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        // Only the key file is left behind (no temp file).
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        assert_eq!(
            id.public_key(),
            PrivateKey::from_bytes(id.private_bytes()).public_key()
        );
    }

    #[test]
    fn reuses_key_after_restart_and_fixes_key_permissions_only() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, _) = Identity::load_or_create(tmp.path()).unwrap();
        fs::set_permissions(tmp.path().join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        // As kubelet creates a DirectoryOrCreate hostPath: readable, not writable, by others.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let (b, created) = Identity::load_or_create(tmp.path()).unwrap();
        assert!(!created);
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(a.private_bytes(), b.private_bytes());
        assert_eq!(mode(&tmp.path().join(KEY_FILE)), 0o600);
        // The directory pre-existed: not ours to chmod.
        assert_eq!(mode(tmp.path()), 0o755);
    }

    #[test]
    fn creates_missing_parents_and_the_directory_0700() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/state");
        Identity::load_or_create(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
    }

    #[test]
    fn refuses_a_writable_existing_directory_without_touching_it() {
        for m in [0o775, 0o757, 0o1777] {
            let tmp = tempfile::tempdir().unwrap();
            fs::set_permissions(tmp.path(), fs::Permissions::from_mode(m)).unwrap();
            let err = Identity::load_or_create(tmp.path()).unwrap_err();
            assert!(matches!(err, IdentityError::Insecure { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains(&tmp.path().display().to_string()), "{msg}");
            assert!(msg.contains("chmod go-w"), "{msg}");
            assert_eq!(
                fs::metadata(tmp.path()).unwrap().permissions().mode() & 0o7777,
                m
            );
            assert_eq!(
                fs::read_dir(tmp.path()).unwrap().count(),
                0,
                "no key written"
            );
        }
    }

    #[test]
    #[allow(unsafe_code)]
    fn refuses_a_directory_or_key_owned_by_someone_else() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            panic!("this test needs root (chown)");
        }
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(tmp.path(), Some(65534), None).unwrap();
        let err = Identity::load_or_create(tmp.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("owned by uid 65534") && err.contains("chown"),
            "{err}"
        );
        std::os::unix::fs::chown(tmp.path(), Some(0), None).unwrap();
        Identity::load_or_create(tmp.path()).unwrap();
        std::os::unix::fs::chown(tmp.path().join(KEY_FILE), Some(65534), None).unwrap();
        let err = Identity::load_or_create(tmp.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("key file") && err.contains("65534"), "{err}");
    }

    #[test]
    fn refuses_a_file_as_state_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, "x").unwrap();
        let err = Identity::load_or_create(&file).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }

    #[test]
    fn reads_wg_genkey_format_and_refuses_garbage() {
        let tmp = tempfile::tempdir().unwrap();
        let raw = [7u8; 32];
        fs::write(
            tmp.path().join(KEY_FILE),
            format!("{}\n", STANDARD.encode(raw)),
        )
        .unwrap();
        let (id, _) = Identity::load_or_create(tmp.path()).unwrap();
        assert_eq!(id.private_bytes(), raw);

        fs::write(tmp.path().join(KEY_FILE), "not a key").unwrap();
        assert!(matches!(
            Identity::load_or_create(tmp.path()),
            Err(IdentityError::Corrupt { .. })
        ));
        // The file is left as it was, not replaced by a new identity.
        assert_eq!(
            fs::read_to_string(tmp.path().join(KEY_FILE)).unwrap(),
            "not a key"
        );
    }

    #[test]
    fn debug_never_shows_private_key() {
        let id = Identity::generate();
        let dbg = format!("{id:?}");
        assert!(!dbg.contains(&STANDARD.encode(id.private_bytes())));
        assert!(dbg.contains(&id.public_key().to_base64()));
    }
}
