//! `cargo xtask bench`: runs the benchmark programs and merges their results into
//! `target/bench.json`.
//!
//! The convention (see the project preamble): a benchmark is an example or bin run with
//! `--release`; it prints a human-readable table and writes a flat JSON object of named numbers
//! to the file named by `BENCH_OUT`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{Number, Value};

use crate::process::run;
use crate::setup::{self, Needs};
use crate::steps::{Outcome, Steps};
use crate::workspace::{self, cargo, Package};

/// The benchmarks, in the order they run: (name, cargo arguments). The name must be unique; the
/// program's `BENCH_OUT` is `target/bench/<name>.json`.
///
/// To add a benchmark, add ONE row here, e.g.
/// `("apdu_roundtrip", &["run", "--release", "-p", "virtual-card", "--example", "bench_apdu"]),`
/// A row whose package or example/bin does not exist yet is skipped with a note, so a row may be
/// added before its program is written.
#[rustfmt::skip]
pub const BENCHES: &[(&str, &[&str])] = &[
    ("status_list", &["run", "--release", "-p", "shared-crypto", "--features", "std", "--example", "bench_status_list"]),
    ("terminal_m4", &["run", "--release", "-p", "terminal-core", "--features", "std", "--example", "bench_m4"]),
    ("card", &["run", "--release", "-p", "card-tool", "--example", "bench_card"]),
    ("issuance", &["bench", "-p", "issuance-server", "--bench", "issuance"]),
    ("ingest", &["bench", "-p", "issuance-server", "--bench", "ingest"]),
];

/// Options of `cargo xtask bench`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Run only the benchmark of this name.
    pub only: Option<String>,
    /// Install nothing; use the machine as it is.
    pub no_install: bool,
}

/// Prints the benchmark table.
pub fn list() {
    println!("benchmarks (name: cargo arguments); results go to target/bench/<name>.json:");
    for (name, args) in BENCHES {
        println!("  {name}: cargo {}", args.join(" "));
    }
}

/// Runs the benchmarks; returns true when none failed.
pub fn run_all(root: &Path, options: &Options) -> Result<bool> {
    let selected: Vec<&(&str, &[&str])> = match &options.only {
        Some(only) => {
            let found: Vec<_> = BENCHES.iter().filter(|(name, _)| name == only).collect();
            if found.is_empty() {
                let names: Vec<&str> = BENCHES.iter().map(|(n, _)| *n).collect();
                bail!("no benchmark named {only}; there are: {}", names.join(", "));
            }
            found
        }
        None => BENCHES.iter().collect(),
    };

    let mut steps = Steps::new(
        "cargo xtask bench: the benchmark programs, results merged into target/bench.json",
    );
    let out_dir = root.join("target").join("bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let packages = workspace::packages(root)?;

    let mut runnable = Vec::new();
    for (name, args) in &selected {
        let out = out_dir.join(format!("{name}.json"));
        match missing(args, &packages) {
            Some(reason) => {
                // Results of a program that no longer exists must not linger in the merge.
                let _ = fs::remove_file(&out);
                steps.skip(&format!("bench {name}"), &reason);
            }
            None => runnable.push((*name, *args, out)),
        }
    }

    if !runnable.is_empty() {
        let services = setup::prepare(
            &mut steps,
            root,
            Needs {
                install: !options.no_install,
                postgres: true,
                pcscd: true,
            },
        );
        for (name, args, out) in &runnable {
            let passed = steps.run(&format!("bench {name}"), || {
                // A stale file must not pass for this run's result.
                let _ = fs::remove_file(out);
                run(services.apply(cargo().args(*args).env("BENCH_OUT", out)))?;
                let text = fs::read_to_string(out).with_context(|| {
                    format!(
                        "the program wrote no results to BENCH_OUT={}",
                        out.display()
                    )
                })?;
                let results =
                    parse_results(&text).with_context(|| format!("in {}", out.display()))?;
                Ok(Outcome::PassNote(format!("{} numbers", results.len())))
            });
            if !passed {
                // What a failed run wrote is not a result.
                let _ = fs::remove_file(out);
            }
        }
        services.stop();
    }

    let merged_ok = steps.run("merge into target/bench.json", || {
        let merged = merge(&out_dir, &selected_names(options))?;
        let path = root.join("target").join("bench.json");
        let mut text = serde_json::to_string_pretty(&merged)?;
        text.push('\n');
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        print_table(&merged);
        Ok(Outcome::PassNote(format!(
            "{} numbers in {}",
            merged.len(),
            path.display()
        )))
    });
    Ok(steps.summary() && merged_ok)
}

/// With `--only`, the other benchmarks' files from earlier runs are merged too (and said to be).
fn selected_names(options: &Options) -> Vec<(&'static str, bool)> {
    BENCHES
        .iter()
        .map(|(name, _)| {
            (
                *name,
                options.only.as_deref().is_some_and(|only| only != *name),
            )
        })
        .collect()
}

/// Why a benchmark cannot run yet: its package or its example/bin is not in the workspace.
fn missing(args: &[&str], packages: &[Package]) -> Option<String> {
    let value_of = |flags: &[&str]| {
        args.windows(2)
            .find(|pair| flags.contains(&pair[0]))
            .map(|pair| pair[1])
    };
    let package_name = value_of(&["-p", "--package"])?;
    let Some(package) = packages.iter().find(|p| p.name == package_name) else {
        return Some(format!(
            "package {package_name} is not in the workspace yet"
        ));
    };
    for (flag, kind) in [("--example", "example"), ("--bin", "bin")] {
        if let Some(target) = value_of(&[flag]) {
            if package.target(kind, target).is_none() {
                return Some(format!("{package_name} has no {kind} {target} yet"));
            }
        }
    }
    None
}

/// A benchmark's output: a flat JSON object whose values are all numbers.
fn parse_results(text: &str) -> Result<BTreeMap<String, Number>> {
    let value: Value = serde_json::from_str(text).context("not JSON")?;
    let Value::Object(object) = value else {
        bail!("not a JSON object");
    };
    object
        .into_iter()
        .map(|(key, value)| match value {
            Value::Number(n) => Ok((key, n)),
            other => bail!("{key} is not a number: {other}"),
        })
        .collect()
}

/// Merges `target/bench/<name>.json` of every named benchmark that has one. A key that two
/// benchmarks both write is an error: one would silently hide the other.
fn merge(out_dir: &Path, names: &[(&str, bool)]) -> Result<BTreeMap<String, Number>> {
    let mut merged: BTreeMap<String, Number> = BTreeMap::new();
    let mut origin: BTreeMap<String, &str> = BTreeMap::new();
    for (name, earlier_run) in names {
        let path: PathBuf = out_dir.join(format!("{name}.json"));
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let results = parse_results(&text).with_context(|| format!("in {}", path.display()))?;
        let when = if *earlier_run {
            " (from an earlier run)"
        } else {
            ""
        };
        println!("{}: {} numbers{when}", path.display(), results.len());
        for (key, value) in results {
            if let Some(first) = origin.get(&key) {
                bail!("both {first} and {name} write the key {key}; rename one");
            }
            origin.insert(key.clone(), name);
            merged.insert(key, value);
        }
    }
    Ok(merged)
}

fn print_table(merged: &BTreeMap<String, Number>) {
    if merged.is_empty() {
        println!("no results: no benchmark program exists yet");
        return;
    }
    let width = merged
        .keys()
        .map(|k| k.chars().count())
        .max()
        .unwrap_or(3)
        .max(3);
    println!();
    println!("{:width$} | value", "key");
    println!("{}-|-{}", "-".repeat(width), "-".repeat(12));
    for (key, value) in merged {
        println!("{key:width$} | {value}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::workspace::Target;

    fn package(name: &str, examples: &[&str]) -> Package {
        Package {
            name: name.into(),
            dir: PathBuf::from(name),
            targets: examples
                .iter()
                .map(|e| Target {
                    name: (*e).into(),
                    kinds: vec!["example".into()],
                    required_features: vec![],
                })
                .collect(),
        }
    }

    #[test]
    fn missing_names_the_absent_package_or_example() {
        let packages = vec![package("shared-crypto", &["bench_status_list"])];
        let args = [
            "run",
            "--release",
            "-p",
            "shared-crypto",
            "--example",
            "bench_status_list",
        ];
        assert_eq!(missing(&args, &packages), None);
        let args = [
            "run",
            "--release",
            "-p",
            "shared-crypto",
            "--example",
            "bench_other",
        ];
        assert_eq!(
            missing(&args, &packages).unwrap(),
            "shared-crypto has no example bench_other yet"
        );
        let args = ["run", "--package", "card-tool", "--bin", "bench"];
        assert_eq!(
            missing(&args, &packages).unwrap(),
            "package card-tool is not in the workspace yet"
        );
        let args = ["run", "-p", "shared-crypto", "--bin", "bench_status_list"];
        assert!(
            missing(&args, &packages).is_some(),
            "an example is not a bin"
        );
    }

    #[test]
    fn bench_names_are_unique() {
        let mut names: Vec<&str> = BENCHES.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), BENCHES.len());
    }

    #[test]
    fn results_must_be_a_flat_object_of_numbers() {
        let ok = parse_results(r#"{"b_ns": 12.5, "a_count": 3}"#).unwrap();
        assert_eq!(ok.keys().collect::<Vec<_>>(), vec!["a_count", "b_ns"]);
        assert!(parse_results(r#"{"a": "fast"}"#).is_err());
        assert!(parse_results(r#"{"a": {"b": 1}}"#).is_err());
        assert!(parse_results("[1, 2]").is_err());
        assert!(parse_results("").is_err());
    }

    #[test]
    fn merge_sorts_keys_skips_absent_files_and_refuses_duplicates() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("one.json"), r#"{"z_last": 1, "m_mid": 2.5}"#).unwrap();
        fs::write(dir.join("two.json"), r#"{"a_first": 3}"#).unwrap();
        let merged = merge(&dir, &[("one", false), ("two", true), ("absent", false)]).unwrap();
        assert_eq!(
            serde_json::to_string(&merged).unwrap(),
            r#"{"a_first":3,"m_mid":2.5,"z_last":1}"#
        );

        fs::write(dir.join("three.json"), r#"{"m_mid": 7}"#).unwrap();
        let err = merge(&dir, &[("one", false), ("three", false)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("m_mid"), "{err}");
        let _ = fs::remove_dir_all(dir);
    }
}
