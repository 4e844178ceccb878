//! The mesh token, read from the mounted Secret and re-read when the file changes.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

/// Where the token comes from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// A file (the Kubernetes Secret mount); polled for changes.
    File(PathBuf),
    /// A fixed value (tests, benchmarks).
    Static(Vec<u8>),
}

/// Errors reading the token file.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("cannot read token file {path}: {source}")]
    Read {
        /// Token file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is empty after trimming whitespace.
    #[error("token file {0} is empty")]
    Empty(PathBuf),
}

/// Current token, shared by all connections.
#[derive(Clone, Default)]
pub struct TokenStore {
    current: Arc<RwLock<Option<Arc<[u8]>>>>,
}

fn read_token(path: &PathBuf) -> Result<Vec<u8>, TokenError> {
    let raw = std::fs::read(path).map_err(|source| TokenError::Read {
        path: path.clone(),
        source,
    })?;
    // Secrets created with `echo` or kubectl --from-file often end in a newline.
    let t = raw.trim_ascii().to_vec();
    if t.is_empty() {
        return Err(TokenError::Empty(path.clone()));
    }
    Ok(t)
}

fn stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl TokenStore {
    /// Loads the token once. A missing file is an error here so that a misconfigured
    /// relay fails at start-up rather than refusing every client.
    pub fn load(source: &TokenSource) -> Result<Self, TokenError> {
        let store = Self::default();
        let t = match source {
            TokenSource::File(p) => read_token(p)?,
            TokenSource::Static(t) => t.clone(),
        };
        store.set(t);
        Ok(store)
    }

    fn set(&self, t: Vec<u8>) {
        let mut g = self.current.write().unwrap_or_else(|e| e.into_inner());
        *g = Some(t.into());
    }

    /// Whether a token is loaded (readiness).
    pub fn is_loaded(&self) -> bool {
        self.current.read().map(|g| g.is_some()).unwrap_or(false)
    }

    /// Constant-time check of a presented token.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let cur = self.current.read().ok().and_then(|g| g.clone());
        match cur {
            Some(t) => wirekube_relay_proto::token_matches(&t, presented),
            None => false,
        }
    }

    /// Polls the file's mtime and size every `interval` and reloads on change. Kubernetes
    /// updates Secret mounts by swapping a symlink, which changes the mtime we see.
    /// A failed reload keeps the previous token so a half-written update cannot lock
    /// everyone out.
    pub fn spawn_watch(&self, source: &TokenSource, interval: Duration, cancel: CancellationToken) {
        let TokenSource::File(path) = source.clone() else {
            return;
        };
        let store = self.clone();
        tokio::spawn(async move {
            let mut last = stamp(&path);
            let mut tick = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now = stamp(&path);
                if now == last {
                    continue;
                }
                match read_token(&path) {
                    Ok(t) => {
                        store.set(t);
                        last = now;
                        tracing::info!(path = %path.display(), "mesh token reloaded");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "token reload failed; keeping previous token")
                    }
                }
            }
        });
    }
}
