//! Finding the WireKube binaries the scenarios run (built by `cargo build --workspace --bins`).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// Every binary a scenario starts.
pub const BINARIES: [&str; 4] = [
    "wirekube-lab-kubelet",
    "wirekube-operator",
    "wirekube-agent",
    "wirekube-relay",
];

/// Environment variable naming the directory with the binaries (default: next to the running
/// executable, i.e. `target/<profile>/`).
pub const BIN_DIR_ENV: &str = "WIREKUBE_BIN_DIR";

/// Where the binaries are.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(BIN_DIR_ENV) {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    // Test binaries live in target/<profile>/deps.
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}

/// Full path of binary `name`, or an error that says how to build it.
pub fn binary(name: &str) -> Result<PathBuf> {
    let p = bin_dir().join(name);
    if p.is_file() {
        Ok(p)
    } else {
        bail!(
            "{} not found; build the binaries first: `cargo build --workspace --bins` \
             (or set {BIN_DIR_ENV})",
            p.display()
        )
    }
}

/// Checks that every binary exists.
pub fn check_all() -> Result<()> {
    let missing: Vec<String> = BINARIES
        .iter()
        .filter(|b| !bin_dir().join(b).is_file())
        .map(|b| b.to_string())
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing binaries in {}: {}; build them first: `cargo build --workspace --bins`",
            bin_dir().display(),
            missing.join(", ")
        );
    }
    Ok(())
}

/// The repository root (for `config/`).
pub fn repo_root() -> PathBuf {
    if let Some(d) = std::env::var_os("WIREKUBE_REPO") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}
