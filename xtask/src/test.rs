//! `cargo xtask test`: everything CI checks, in one run, with a summary at the end.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::process::{capture, describe, run, run_with_timeout, show, succeeds};
use crate::setup::{self, Needs, EMBEDDED_TARGET};
use crate::steps::{Outcome, Steps};
use crate::workspace::{self, cargo, package_name};

/// Every `no_std` crate and feature set that ships, built for the Cortex-M4 target:
/// (crate directory, package, extra cargo arguments). `--no-default-features` is always passed,
/// so a row lists the complete feature set. Add a row to build one more combination.
#[rustfmt::skip]
pub const NO_STD_BUILDS: &[(&str, &str, &[&str])] = &[
    ("shared-crypto",             "shared-crypto",    &[]),
    ("shared-crypto",             "shared-crypto",    &["--features", "alloc"]),
    ("shared-crypto",             "shared-crypto",    &["--features", "scp03"]),
    ("card-applet-tools/applet",  "card-applet",      &[]),
    ("terminal-firmware/core",    "terminal-core",    &[]),
    ("terminal-firmware/core",    "terminal-core",    &["--features", "testkit"]),
    ("terminal-firmware/drivers", "terminal-drivers", &[]),
];

/// The Cortex-M4 terminal image: its own workspace (target set in its .cargo/config.toml).
pub const M4_DIR: &str = "terminal-firmware/m4";

/// The QEMU command line of ENVIRONMENT.md; `-icount shift=0` makes instruction counts exact.
const QEMU_ARGS: &[&str] = &[
    "-machine",
    "mps2-an386",
    "-cpu",
    "cortex-m4",
    "-nographic",
    "-semihosting-config",
    "enable=on,target=native",
    "-icount",
    "shift=0",
];

/// Options of `cargo xtask test`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Install nothing; use the machine as it is.
    pub no_install: bool,
    /// Skip the fuzz smoke step.
    pub skip_fuzz: bool,
    /// Seconds each fuzz target runs.
    pub fuzz_seconds: u64,
    /// Seconds the QEMU run may take.
    pub qemu_timeout: u64,
    /// Extra arguments for the test binaries (after `cargo test --workspace --`).
    pub test_args: Vec<String>,
}

/// Runs every check; returns true when none failed.
pub fn run_all(root: &Path, options: &Options) -> Result<bool> {
    let mut steps = Steps::new(&format!(
        "cargo xtask test: the checks CI runs, in {}",
        root.display()
    ));
    let services = setup::prepare(
        &mut steps,
        root,
        Needs {
            install: !options.no_install,
            postgres: true,
            pcscd: true,
        },
    );

    steps.run("cargo fmt --all -- --check", || {
        run(cargo().args(["fmt", "--all", "--", "--check"]))?;
        Ok(Outcome::Pass)
    });
    steps.run(
        "cargo clippy --workspace --all-targets -- -D warnings",
        || {
            run(cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))?;
            Ok(Outcome::Pass)
        },
    );
    steps.run("cargo test --workspace", || {
        let mut cmd = cargo();
        // --no-fail-fast: one failing test binary must not hide the results of all the others.
        cmd.args(["test", "--workspace", "--no-fail-fast"]);
        if !options.test_args.is_empty() {
            cmd.arg("--").args(&options.test_args);
        }
        run(services.apply(&mut cmd))?;
        Ok(Outcome::Pass)
    });

    for (dir, package, args) in NO_STD_BUILDS {
        let features = if args.is_empty() {
            "no features".to_owned()
        } else {
            args.join(" ")
        };
        steps.run(
            &format!("{package} for {EMBEDDED_TARGET} ({features})"),
            || {
                if !root.join(dir).join("Cargo.toml").is_file() {
                    return Ok(Outcome::Skip(format!(
                        "{dir}/Cargo.toml does not exist yet"
                    )));
                }
                run(cargo()
                    .args([
                        "build",
                        "-p",
                        package,
                        "--target",
                        EMBEDDED_TARGET,
                        "--no-default-features",
                    ])
                    .args(*args))?;
                Ok(Outcome::Pass)
            },
        );
    }

    let mut elf = None;
    steps.run(&format!("build the Cortex-M4 image ({M4_DIR})"), || {
        let dir = root.join(M4_DIR);
        if !dir.join("Cargo.toml").is_file() {
            return Ok(Outcome::Skip(format!(
                "{M4_DIR}/Cargo.toml does not exist yet"
            )));
        }
        let path = build_m4(&dir)?;
        let note = format!("{}", path.display());
        elf = Some(path);
        Ok(Outcome::PassNote(note))
    });
    if let Some(elf) = &elf {
        steps.run("run the Cortex-M4 image under QEMU (mps2-an386)", || {
            run_with_timeout(
                Command::new("qemu-system-arm")
                    .args(QEMU_ARGS)
                    .arg("-kernel")
                    .arg(elf),
                Duration::from_secs(options.qemu_timeout),
            )?;
            Ok(Outcome::Pass)
        });
    } else {
        steps.skip(
            "run the Cortex-M4 image under QEMU (mps2-an386)",
            "no image was built",
        );
    }

    fuzz_smoke(&mut steps, root, options);

    // Stop pcscd before the summary, so the summary is the last thing printed.
    services.stop();
    Ok(steps.summary())
}

/// Builds the image in its own workspace and returns the path of the ELF, as cargo reports it
/// (so the target directory, `CARGO_TARGET_DIR` or not, never has to be guessed).
fn build_m4(dir: &Path) -> Result<PathBuf> {
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))?;
    let package = package_name(&manifest).context("the image's Cargo.toml names no [package]")?;
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--release",
        "--message-format=json-render-diagnostics",
    ])
    .current_dir(dir);
    println!("$ {}", show(&cmd));
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .context("could not start cargo")?;
    if !out.status.success() {
        bail!("building the Cortex-M4 image {}", describe(out.status));
    }
    let bins = executables(&String::from_utf8_lossy(&out.stdout));
    choose_elf(&package, bins)
}

/// (target name, executable path) of every binary in cargo's JSON messages.
fn executables(messages: &str) -> Vec<(String, PathBuf)> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter_map(|m| {
            let name = m["target"]["name"].as_str()?.to_owned();
            let path = PathBuf::from(m["executable"].as_str()?);
            Some((name, path))
        })
        .collect()
}

/// The binary named after the package, else the only binary.
fn choose_elf(package: &str, bins: Vec<(String, PathBuf)>) -> Result<PathBuf> {
    if let Some((_, path)) = bins.iter().find(|(name, _)| name == package) {
        return Ok(path.clone());
    }
    match bins.as_slice() {
        [(_, path)] => Ok(path.clone()),
        [] => bail!("the build produced no executable"),
        many => bail!(
            "several executables and none named {package}: {}",
            many.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// True when the `nightly` toolchain is installed (cargo-fuzz needs it).
pub fn nightly_installed() -> bool {
    capture(Command::new("rustup").args(["toolchain", "list"]))
        .is_ok_and(|list| list.lines().any(|l| l.starts_with("nightly")))
}

/// True when `cargo fuzz` works.
pub fn cargo_fuzz_installed() -> bool {
    succeeds(cargo().args(["fuzz", "--version"]))
}

/// Every fuzz target of every fuzz crate, a few seconds each: enough to catch a target that
/// crashes on its seed corpus or at once, not a fuzzing campaign (that is `cargo xtask fuzz`).
fn fuzz_smoke(steps: &mut Steps, root: &Path, options: &Options) {
    const NAME: &str = "fuzz smoke";
    if options.skip_fuzz {
        return steps.skip(NAME, "switched off (XTASK_SKIP_FUZZ=1 or --skip-fuzz)");
    }
    let crates = match workspace::fuzz_crates(root) {
        Ok(crates) => crates,
        Err(e) => {
            steps.run(NAME, || Err(e));
            return;
        }
    };
    if crates.is_empty() {
        return steps.skip(NAME, "no fuzz crates yet (fuzz/, */fuzz/, */*/fuzz/)");
    }
    // A fresh machine lacks cargo-fuzz (and perhaps nightly): install them like every other
    // missing tool, so that CI really fuzzes instead of reporting a skip.
    if options.no_install {
        if !nightly_installed() || !cargo_fuzz_installed() {
            return steps.skip(
                NAME,
                "nightly or cargo-fuzz is missing and --no-install was given",
            );
        }
    } else if !crate::fuzz::ensure_fuzz_tools(steps) {
        return;
    }
    for krate in crates {
        let rel = krate
            .dir
            .strip_prefix(root)
            .unwrap_or(&krate.dir)
            .display()
            .to_string();
        let built = steps.run(&format!("fuzz: build {rel}"), || {
            run(cargo()
                .arg("+nightly")
                .args(["fuzz", "build"])
                .args(SMOKE_FLAGS)
                .arg("--fuzz-dir")
                .arg(&krate.dir))?;
            Ok(Outcome::Pass)
        });
        for target in &krate.targets {
            let name = format!("fuzz: {target} for {} s", options.fuzz_seconds);
            if !built {
                steps.skip(&name, "its crate did not build");
                continue;
            }
            steps.run(&name, || {
                run_with_timeout(
                    &mut fuzz_run_command(&krate.dir, target, options.fuzz_seconds, SMOKE_FLAGS),
                    // libFuzzer stops itself after max_total_time; the limit is only a backstop.
                    Duration::from_secs(options.fuzz_seconds + 120),
                )?;
                Ok(Outcome::Pass)
            });
        }
    }
}

/// cargo-fuzz flags of the smoke step: no sanitizer. Every crate fuzzed here forbids `unsafe`, so
/// AddressSanitizer finds little that a panic does not, and building without it keeps three
/// fuzz crates within CI's time; `cargo xtask fuzz` (a real campaign) keeps the sanitizer.
const SMOKE_FLAGS: &[&str] = &["--sanitizer", "none"];

/// `cargo +nightly fuzz run TARGET [FLAGS] --fuzz-dir DIR -- -max_total_time=SECONDS`. `--fuzz-dir` is
/// given because cargo-fuzz otherwise looks for `fuzz/` next to the nearest non-fuzz Cargo.toml,
/// which for `card-applet-tools/fuzz` would be the workspace root.
pub fn fuzz_run_command(dir: &Path, target: &str, seconds: u64, flags: &[&str]) -> Command {
    let mut cmd = cargo();
    cmd.arg("+nightly")
        .args(["fuzz", "run", target])
        .args(flags)
        .arg("--fuzz-dir")
        .arg(dir)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"));
    cmd
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn executables_reads_artifacts_with_an_executable() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"cortex_m_rt","kind":["lib"]},"executable":null}
{"reason":"build-script-executed","package_id":"x"}
{"reason":"compiler-artifact","target":{"name":"terminal-m4","kind":["bin"]},"executable":"/t/thumbv7em-none-eabihf/release/terminal-m4"}
not json at all
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executables(messages),
            vec![(
                "terminal-m4".to_owned(),
                PathBuf::from("/t/thumbv7em-none-eabihf/release/terminal-m4")
            )]
        );
    }

    #[test]
    fn choose_elf_prefers_the_package_name_then_the_only_binary() {
        let bin = |n: &str| (n.to_owned(), PathBuf::from(format!("/t/{n}")));
        assert_eq!(
            choose_elf("m4", vec![bin("bench"), bin("m4")]).unwrap(),
            PathBuf::from("/t/m4")
        );
        assert_eq!(
            choose_elf("m4", vec![bin("image")]).unwrap(),
            PathBuf::from("/t/image")
        );
        assert!(choose_elf("m4", vec![]).is_err());
        let err = choose_elf("m4", vec![bin("a"), bin("b")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("a, b"), "{err}");
    }

    #[test]
    fn the_no_std_table_rows_match_the_crates_that_exist() {
        let root = workspace::root();
        let packages = workspace::packages(&root).unwrap();
        for (dir, package, _) in NO_STD_BUILDS {
            // A row may come before its crate (the step then skips); once the crate exists,
            // the row must name it correctly.
            if !root.join(dir).join("Cargo.toml").is_file() {
                continue;
            }
            let member = packages.iter().find(|p| p.name == *package);
            let member = member.unwrap_or_else(|| panic!("{package} is not a workspace member"));
            assert_eq!(member.dir, root.join(dir), "{package} lives elsewhere");
        }
    }

    #[test]
    fn fuzz_run_command_passes_the_time_to_libfuzzer() {
        let cmd = fuzz_run_command(Path::new("/r/shared-crypto/fuzz"), "credential", 5, &[]);
        assert_eq!(
            show(&cmd),
            "cargo +nightly fuzz run credential --fuzz-dir /r/shared-crypto/fuzz -- -max_total_time=5"
        );
        let smoke = fuzz_run_command(Path::new("/r/f"), "x", 3, SMOKE_FLAGS);
        assert_eq!(
            show(&smoke),
            "cargo +nightly fuzz run x --sanitizer none --fuzz-dir /r/f -- -max_total_time=3"
        );
    }
}
