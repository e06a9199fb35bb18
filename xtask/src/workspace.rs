//! What the repository holds right now: workspace packages and their targets (from
//! `cargo metadata`), fuzz crates and their targets. Other parts are written in parallel, so
//! every question here is asked of the tree as it is, never assumed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::process::capture;

/// The repository root (the workspace root). `cargo run` sets `CARGO_MANIFEST_DIR` for the
/// program it runs; the compile-time value is the fallback.
pub fn root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or(manifest_dir)
}

/// The `cargo` to run: the rustup proxy on PATH, so `+nightly` works.
pub fn cargo() -> Command {
    Command::new("cargo")
}

/// A workspace package.
#[derive(Debug, Clone)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Directory holding its Cargo.toml.
    pub dir: PathBuf,
    /// Its build targets.
    pub targets: Vec<Target>,
}

/// A build target of a package (lib, bin, example, test, bench).
#[derive(Debug, Clone)]
pub struct Target {
    /// Target name.
    pub name: String,
    /// Its kinds (`lib`, `bin`, `example`, ...).
    pub kinds: Vec<String>,
    /// Features it needs (`required-features`).
    pub required_features: Vec<String>,
}

impl Package {
    /// The target of `kind` named `name`, if there is one.
    pub fn target(&self, kind: &str, name: &str) -> Option<&Target> {
        self.targets
            .iter()
            .find(|t| t.name == name && t.kinds.iter().any(|k| k == kind))
    }

    /// All targets of `kind`.
    pub fn targets_of(&self, kind: &str) -> impl Iterator<Item = &Target> {
        let kind = kind.to_owned();
        self.targets.iter().filter(move |t| t.kinds.contains(&kind))
    }
}

/// The workspace members, from `cargo metadata --no-deps` run in `dir`.
pub fn packages(dir: &Path) -> Result<Vec<Package>> {
    let json = capture(
        cargo()
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .current_dir(dir),
    )
    .context("reading the workspace with `cargo metadata`")?;
    parse_metadata(&json)
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn parse_metadata(json: &str) -> Result<Vec<Package>> {
    let metadata: Value = serde_json::from_str(json).context("`cargo metadata` printed no JSON")?;
    let packages = metadata["packages"]
        .as_array()
        .context("`cargo metadata` lists no packages")?;
    packages
        .iter()
        .map(|p| {
            let name = p["name"]
                .as_str()
                .context("a package without a name")?
                .to_owned();
            let manifest = PathBuf::from(
                p["manifest_path"]
                    .as_str()
                    .context("a package without a manifest")?,
            );
            let dir = manifest.parent().map(Path::to_path_buf).unwrap_or_default();
            let targets = p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| {
                    Some(Target {
                        name: t["name"].as_str()?.to_owned(),
                        kinds: strings(&t["kind"]),
                        required_features: strings(&t["required-features"]),
                    })
                })
                .collect();
            Ok(Package { name, dir, targets })
        })
        .collect()
}

/// A cargo-fuzz crate and its fuzz targets.
#[derive(Debug, Clone)]
pub struct FuzzCrate {
    /// The crate directory (the one holding its Cargo.toml), absolute.
    pub dir: PathBuf,
    /// Its `[[bin]]` names, i.e. the fuzz targets.
    pub targets: Vec<String>,
}

/// The fuzz crates at `fuzz/`, `*/fuzz/` and `*/*/fuzz/` under `root`, sorted by path.
pub fn fuzz_crates(root: &Path) -> Result<Vec<FuzzCrate>> {
    let mut levels = vec![root.to_path_buf()];
    let mut found = Vec::new();
    for _depth in 0..3 {
        let mut next = Vec::new();
        for dir in &levels {
            let manifest = dir.join("fuzz").join("Cargo.toml");
            if manifest.is_file() {
                let text = fs::read_to_string(&manifest)
                    .with_context(|| format!("reading {}", manifest.display()))?;
                found.push(FuzzCrate {
                    dir: dir.join("fuzz"),
                    targets: bin_names(&text),
                });
            }
            next.extend(subdirs(dir));
        }
        levels = next;
    }
    found.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(found)
}

/// Subdirectories worth searching: not hidden, not build output.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !name.starts_with('.') && name != "target" && name != "node_modules"
        })
        .map(|e| e.path())
        .collect()
}

/// The `name`s of the `[[bin]]` tables of a Cargo.toml. A minimal reader, enough for the
/// manifests `cargo fuzz add` writes (`name = "target"` inside `[[bin]]`).
pub fn bin_names(manifest: &str) -> Vec<String> {
    let mut in_bin = false;
    let mut names = Vec::new();
    for line in manifest.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            in_bin = line.replace(' ', "") == "[[bin]]";
        } else if in_bin {
            if let Some(name) = string_value(line, "name") {
                names.push(name);
            }
        }
    }
    names
}

/// The `name` of the `[package]` table of a Cargo.toml (same minimal reader).
pub fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            in_package = line.replace(' ', "") == "[package]";
        } else if in_package {
            if let Some(name) = string_value(line, "name") {
                return Some(name);
            }
        }
    }
    None
}

/// `value` from a line `key = "value"` (or single quotes).
fn string_value(line: &str, key: &str) -> Option<String> {
    let (k, v) = line.split_once('=')?;
    if k.trim() != key {
        return None;
    }
    let v = v.trim();
    let quote = v.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let inner = &v[1..];
    let end = inner.find(quote)?;
    Some(inner[..end].to_owned())
}

/// Lines in the `.rs` files under `dir` (build output excluded): a rough, honest size of a part.
pub fn rust_lines(dir: &Path) -> usize {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                if name != "target" && !name.to_string_lossy().starts_with('.') {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                total += fs::read_to_string(&path)
                    .map(|t| t.lines().count())
                    .unwrap_or(0);
            }
        }
    }
    total
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bin_names_reads_only_bin_tables() {
        let manifest = r#"
[package]
name = "shared-crypto-fuzz"   # not a target

[dependencies]
libfuzzer-sys = "0.4"

[[bin]]
name = "credential_decode"
path = "fuzz_targets/credential_decode.rs"
test = false

[ [bin] ]
name='status_list'

[[example]]
name = "not_a_target"
"#;
        assert_eq!(
            bin_names(manifest),
            vec!["credential_decode", "status_list"]
        );
        assert!(bin_names("[package]\nname = \"x\"\n").is_empty());
    }

    #[test]
    fn package_name_ignores_other_tables() {
        let manifest = "[workspace]\nname = \"no\"\n[package]\nversion = \"0.1.0\"\nname = \"terminal-m4\"\n[[bin]]\nname = \"other\"\n";
        assert_eq!(package_name(manifest).as_deref(), Some("terminal-m4"));
        assert_eq!(package_name("[lib]\nname = \"x\"\n"), None);
    }

    #[test]
    fn string_value_needs_the_key_and_a_quoted_value() {
        assert_eq!(string_value(r#"name = "a""#, "name").as_deref(), Some("a"));
        assert_eq!(string_value("name = 'b'", "name").as_deref(), Some("b"));
        assert_eq!(string_value(r#"names = "a""#, "name"), None);
        assert_eq!(string_value("name = 3", "name"), None);
        assert_eq!(string_value(r#"name = "unterminated"#, "name"), None);
    }

    #[test]
    fn metadata_of_this_workspace_has_xtask_with_its_bin() {
        let packages = packages(&root()).unwrap();
        let xtask = packages.iter().find(|p| p.name == "xtask").unwrap();
        assert!(xtask.target("bin", "xtask").is_some());
        assert!(xtask.target("example", "xtask").is_none());
        assert!(xtask.dir.ends_with("xtask"));
    }

    #[test]
    fn parse_metadata_reads_targets_and_required_features() {
        let json = r#"{"packages":[{"name":"shared-crypto","manifest_path":"/r/shared-crypto/Cargo.toml",
            "targets":[{"name":"shared_crypto","kind":["lib"],"required-features":[]},
                       {"name":"bench_status_list","kind":["example"],"required-features":["std"]}]}]}"#;
        let packages = parse_metadata(json).unwrap();
        assert_eq!(packages[0].dir, PathBuf::from("/r/shared-crypto"));
        let example = packages[0].target("example", "bench_status_list").unwrap();
        assert_eq!(example.required_features, vec!["std"]);
        assert_eq!(packages[0].targets_of("example").count(), 1);
        assert!(parse_metadata("not json").is_err());
        assert!(parse_metadata("{}").is_err());
    }

    #[test]
    fn fuzz_crates_are_found_at_each_depth() {
        let root = std::env::temp_dir().join(format!("xtask-fuzz-scan-{}", std::process::id()));
        let write = |rel: &str, text: &str| {
            let path = root.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        };
        write("fuzz/Cargo.toml", "[[bin]]\nname = \"top\"\n");
        write(
            "shared-crypto/fuzz/Cargo.toml",
            "[[bin]]\nname = \"a\"\n[[bin]]\nname = \"b\"\n",
        );
        write(
            "card-applet-tools/applet/fuzz/Cargo.toml",
            "[[bin]]\nname = \"apdu\"\n",
        );
        write(
            "target/debug/fuzz/Cargo.toml",
            "[[bin]]\nname = \"ignored\"\n",
        );
        write("a/b/c/fuzz/Cargo.toml", "[[bin]]\nname = \"too_deep\"\n");
        let crates = fuzz_crates(&root).unwrap();
        let found: Vec<(String, Vec<String>)> = crates
            .iter()
            .map(|c| {
                (
                    c.dir.strip_prefix(&root).unwrap().display().to_string(),
                    c.targets.clone(),
                )
            })
            .collect();
        assert_eq!(
            found,
            vec![
                (
                    "card-applet-tools/applet/fuzz".to_owned(),
                    vec!["apdu".to_owned()]
                ),
                ("fuzz".to_owned(), vec!["top".to_owned()]),
                (
                    "shared-crypto/fuzz".to_owned(),
                    vec!["a".to_owned(), "b".to_owned()]
                ),
            ]
        );
        let _ = fs::remove_dir_all(root);
    }
}
