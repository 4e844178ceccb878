//! Repository hygiene that review kept finding by hand (issue 20), checked on the sources:
//! every crate takes the workspace lints, nothing cites files outside the repository, test
//! fixtures are not compiled into release builds, our binaries are found in one place
//! (`wirekube_lab::bins`) and no Rust file passes 600 lines. Each check reports every offending
//! file, not only the first.

use std::path::{Path, PathBuf};

use wirekube_lab::bins::repo_root;

/// Files under the repository with one of `exts`, skipping build output, VCS data and the
/// fuzz crate's own target directory.
fn files(exts: &[&str]) -> Vec<PathBuf> {
    fn walk(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if !matches!(name.as_str(), "target" | ".git" | "node_modules") {
                    walk(&p, exts, out);
                }
            } else if exts.iter().any(|x| name.ends_with(x)) {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo_root(), exts, &mut out);
    out.sort();
    out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(repo_root())
        .unwrap_or(p)
        .display()
        .to_string()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// What a Cargo manifest's `[lints]` table says, if it has one.
fn lints_table(manifest: &str) -> Option<String> {
    let start = manifest.find("\n[lints]\n")? + "\n[lints]\n".len();
    let rest = &manifest[start..];
    let end = rest.find("\n[").unwrap_or(rest.len());
    Some(rest[..end].trim().to_owned())
}

#[test]
fn lints_table_is_read_from_a_manifest() {
    let table = [
        (
            "[package]\nname = \"x\"\n\n[lints]\nworkspace = true\n\n[dependencies]\n",
            Some("workspace = true"),
        ),
        (
            "[package]\nname = \"x\"\n\n[lints]\nworkspace = true\n",
            Some("workspace = true"),
        ),
        (
            "[package]\nname = \"x\"\n\n[lints.rust]\nunsafe_code = \"allow\"\n",
            None,
        ),
        ("[package]\nname = \"x\"\n", None),
    ];
    for (manifest, want) in table {
        assert_eq!(lints_table(manifest).as_deref(), want, "{manifest}");
    }
}

#[test]
fn every_workspace_crate_takes_the_workspace_lints() {
    let root = repo_root();
    let workspace = read(&root.join("Cargo.toml"));
    let members = workspace
        .split_once("members = [")
        .and_then(|(_, r)| r.split_once(']'))
        .map(|(m, _)| m)
        .expect("workspace members in Cargo.toml");
    let mut bad = Vec::new();
    let mut n = 0;
    for member in members.split(',').map(|m| m.trim().trim_matches('"')) {
        if member.is_empty() {
            continue;
        }
        n += 1;
        let manifest = read(&root.join(member).join("Cargo.toml"));
        if lints_table(&manifest).as_deref() != Some("workspace = true") {
            bad.push(member.to_owned());
        }
    }
    assert!(n >= 12, "only {n} workspace members found");
    assert!(
        bad.is_empty(),
        "crates without `[lints] workspace = true`: {bad:?}"
    );
}

#[test]
fn nothing_cites_files_outside_the_repository() {
    // Built from pieces so that this file does not match itself.
    let outside = [
        ["lab", "-notes"].concat(),
        ["lab", " notes §"].concat(),
        ["../", "shared"].concat(),
        ["/work/", "shared"].concat(),
        ["platform", "-notes"].concat(),
        ["design", "-brief"].concat(),
        ["seed-", "topologies.md"].concat(),
    ];
    let mut bad = Vec::new();
    for p in files(&[".rs", ".md", ".sh", ".yaml", ".yml", ".toml", "Makefile"]) {
        let text = read(&p);
        for (i, line) in text.lines().enumerate() {
            if let Some(hit) = outside.iter().find(|o| line.contains(o.as_str())) {
                bad.push(format!("{}:{}: {hit}", rel(&p), i + 1));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "citations of files a reader of the repository does not have (copy the facts into \
         docs/ and cite that):\n{}",
        bad.join("\n")
    );
}

#[test]
fn fixtures_modules_are_not_in_release_builds() {
    let mut bad = Vec::new();
    for p in files(&[".rs"]) {
        let text = read(&p);
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let l = line.trim();
            let declares = l.ends_with("mod fixtures;") && l.starts_with(['m', 'p']);
            let gated = i > 0 && {
                let prev = lines[i - 1].trim();
                prev.starts_with("#[cfg(") && prev.contains("test")
            };
            if declares && !gated {
                bad.push(format!("{}:{}: {l}", rel(&p), i + 1));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "fixture modules compiled into release builds (gate them with #[cfg(test)] or a \
         test-support feature):\n{}",
        bad.join("\n")
    );
}

#[test]
fn our_binaries_are_found_in_one_place() {
    let own = Path::new("e2e/lab/src/bins.rs");
    let mut bad = Vec::new();
    for p in files(&[".rs"]) {
        let r = rel(&p);
        if Path::new(&r) == own {
            continue;
        }
        let text = read(&p);
        for (i, line) in text.lines().enumerate() {
            // The running executable is how a test finds target/<profile>/: only bins.rs may
            // look at it.
            if line.contains(&["current", "_exe()"].concat()) {
                bad.push(format!("{r}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "locating binaries outside wirekube_lab::bins:\n{}",
        bad.join("\n")
    );
}

/// Rust files stay readable in one sitting: above this, split the file by what its parts do
/// (table tests go to a sibling `*_tests.rs` or `tests.rs`).
const MAX_RUST_FILE_LINES: usize = 600;

#[test]
fn rust_files_stay_under_the_line_limit() {
    let mut bad = Vec::new();
    for p in files(&[".rs"]) {
        let n = read(&p).lines().count();
        if n > MAX_RUST_FILE_LINES {
            bad.push(format!("{}: {n} lines", rel(&p)));
        }
    }
    assert!(
        bad.is_empty(),
        "Rust files over {MAX_RUST_FILE_LINES} lines (split them by responsibility):\n{}",
        bad.join("\n")
    );
}
