//! Finding WireKube's own binaries for tests, benchmarks and the demo: the one place that knows
//! where `cargo build --workspace --bins` puts them and where the repository is.
//!
//! A test of the package that owns a binary may use `env!("CARGO_BIN_EXE_<name>")` instead
//! (cargo builds it first); every test that starts another package's binary (the agent's lab
//! tests start the relay, the scenarios start everything) finds it here. Starting it is
//! [`crate::Lab::spawn`] with the [`std::process::Command`] of [`command`].

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{LabError, Result};

/// Environment variable naming the directory with the binaries (default: the directory of the
/// running test or benchmark executable, i.e. `target/<profile>/`).
pub const BIN_DIR_ENV: &str = "WIREKUBE_BIN_DIR";

/// Environment variable naming the repository root (default: two levels above this crate).
pub const REPO_ENV: &str = "WIREKUBE_REPO";

/// Where the binaries are: `$WIREKUBE_BIN_DIR`, else `target/<profile>/` of the running
/// executable.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(BIN_DIR_ENV) {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    profile_dir(&exe)
}

/// `target/<profile>/` for an executable in it or in its `deps/` (test and bench binaries) or
/// `examples/` directory.
fn profile_dir(exe: &Path) -> PathBuf {
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
    {
        dir.pop();
    }
    dir
}

/// Full path of our binary `name`, or an error that says how to build it.
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = bin_dir().join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(LabError::MissingBinary {
            path,
            hint: format!(
                "build the binaries first: `cargo build --workspace --bins` (or set {BIN_DIR_ENV})"
            ),
        })
    }
}

/// A [`Command`] for our binary `name` (to hand to [`crate::Lab::spawn`] or run directly).
pub fn command(name: &str) -> Result<Command> {
    Ok(Command::new(binary(name)?))
}

/// The names in `names` whose binary is missing from [`bin_dir`].
pub fn missing<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let dir = bin_dir();
    (names.iter())
        .copied()
        .filter(|n| !dir.join(n).is_file())
        .collect()
}

/// The repository root (for `config/`, `scripts/`, `docs/`): `$WIREKUBE_REPO`, else the
/// directory two levels above this crate (`e2e/lab`).
pub fn repo_root() -> PathBuf {
    if let Some(d) = std::env::var_os(REPO_ENV) {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::{profile_dir, repo_root};

    #[test]
    fn profile_dir_of_binaries_tests_and_examples() {
        let table = [
            ("/r/target/debug/wirekube-agent", "/r/target/debug"),
            ("/r/target/debug/deps/agent_lab-0123abcd", "/r/target/debug"),
            ("/r/target/release/deps/lab-0123abcd", "/r/target/release"),
            (
                "/r/target/debug/examples/dataplane_bench",
                "/r/target/debug",
            ),
            ("/other/bin/tool", "/other/bin"),
        ];
        for (exe, want) in table {
            assert_eq!(profile_dir(Path::new(exe)), PathBuf::from(want), "{exe}");
        }
    }

    #[test]
    fn repo_root_holds_the_workspace() {
        let root = repo_root();
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"), "{}", root.display());
        assert!(root.join("e2e/lab/src/bins.rs").is_file());
    }
}
