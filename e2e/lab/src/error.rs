//! Errors of the lab library.

use std::io;
use std::time::Duration;

/// Everything that can go wrong while building, driving or tearing down a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A name (prefix, site, node) is not usable for namespaces or interfaces.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// A lab with this prefix (or a leftover of one) already exists.
    #[error(
        "lab prefix {0:?} is already in use (namespace or lab dir exists); pick another or purge it"
    )]
    PrefixInUse(String),
    /// Something referenced by name is not in this lab.
    #[error("unknown {kind} {name:?}")]
    Unknown { kind: &'static str, name: String },
    /// The topology request does not make sense (duplicate, address outside the LAN, ...).
    #[error("topology: {0}")]
    Topology(String),
    /// An external command (ip, nft, conntrack, ping, ...) exited unsuccessfully.
    #[error("command `{cmd}` in {ns} failed ({status}): {stderr}")]
    Command {
        ns: String,
        cmd: String,
        status: String,
        stderr: String,
    },
    /// A command or a wait did not finish in time.
    #[error("timed out after {after:?}: {what}")]
    Timeout { what: String, after: Duration },
    /// A condition that had to hold for a while stopped holding.
    #[error("{what} stopped holding after {after:?}")]
    NotHeld { what: String, after: Duration },
    /// A traffic check failed (wrong bytes, no reply, unparsable output).
    #[error("traffic: {0}")]
    Traffic(String),
    /// Teardown finished but something is still there.
    #[error("teardown left things behind: {0:?}")]
    Leftovers(Vec<String>),
    /// One of our binaries is not built (see [`crate::bins`]).
    #[error("{} not found; {hint}", path.display())]
    MissingBinary {
        path: std::path::PathBuf,
        hint: String,
    },
    /// An OS call failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

/// Result alias used by the whole crate.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// Adds a human context to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| LabError::Io {
            context: context(),
            source,
        })
    }
}
