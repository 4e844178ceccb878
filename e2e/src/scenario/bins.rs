//! The WireKube binaries the scenarios run (built by `cargo build --workspace --bins`); finding
//! them is [`wirekube_lab::bins`], re-exported here.

use anyhow::{Result, bail};

pub use wirekube_lab::bins::{BIN_DIR_ENV, bin_dir, binary, repo_root};

/// Every binary a scenario starts.
pub const BINARIES: [&str; 4] = [
    "wirekube-lab-kubelet",
    "wirekube-operator",
    "wirekube-agent",
    "wirekube-relay",
];

/// Checks that every binary exists.
pub fn check_all() -> Result<()> {
    let missing = wirekube_lab::bins::missing(&BINARIES);
    if !missing.is_empty() {
        bail!(
            "missing binaries in {}: {}; build them first: `cargo build --workspace --bins` \
             (or set {BIN_DIR_ENV})",
            bin_dir().display(),
            missing.join(", ")
        );
    }
    Ok(())
}
