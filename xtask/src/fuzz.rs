//! `cargo xtask fuzz`: lists the fuzz targets, or runs one for a given time.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};

use crate::process::run;
use crate::steps::{Outcome, Steps};
use crate::test::{cargo_fuzz_installed, fuzz_run_command, nightly_installed};
use crate::workspace::{cargo, fuzz_crates, FuzzCrate};

/// Prints every fuzz crate and its targets.
pub fn list(root: &Path) -> Result<()> {
    let crates = fuzz_crates(root)?;
    if crates.is_empty() {
        println!(
            "no fuzz crates yet (looked for fuzz/, */fuzz/ and */*/fuzz/ holding a Cargo.toml)"
        );
        return Ok(());
    }
    for krate in crates {
        println!(
            "{}:",
            krate.dir.strip_prefix(root).unwrap_or(&krate.dir).display()
        );
        if krate.targets.is_empty() {
            println!("  (no [[bin]] targets)");
        }
        for target in krate.targets {
            println!("  {target}");
        }
    }
    Ok(())
}

/// The one fuzz crate that has target `name`.
fn crate_with<'a>(crates: &'a [FuzzCrate], name: &str) -> Result<&'a FuzzCrate> {
    let holders: Vec<&FuzzCrate> = crates
        .iter()
        .filter(|c| c.targets.iter().any(|t| t == name))
        .collect();
    match holders.as_slice() {
        [one] => Ok(one),
        [] => {
            let all: Vec<&str> = crates
                .iter()
                .flat_map(|c| c.targets.iter().map(String::as_str))
                .collect();
            if all.is_empty() {
                bail!("no fuzz target {name}: there are no fuzz crates yet");
            }
            bail!("no fuzz target {name}; the targets are: {}", all.join(", "))
        }
        many => {
            let dirs: Vec<String> = many.iter().map(|c| c.dir.display().to_string()).collect();
            bail!(
                "fuzz target {name} exists in several crates: {}",
                dirs.join(", ")
            )
        }
    }
}

/// Installs the nightly toolchain and cargo-fuzz when missing, one step each; true when both are
/// there afterwards. Shared by `cargo xtask fuzz` and the fuzz smoke step of `cargo xtask test`.
pub fn ensure_fuzz_tools(steps: &mut Steps) -> bool {
    let nightly = steps.run("nightly toolchain", || {
        if nightly_installed() {
            return Ok(Outcome::PassNote("installed".into()));
        }
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
        Ok(Outcome::PassNote("installed now".into()))
    });
    nightly
        && steps.run("cargo-fuzz", || {
            if cargo_fuzz_installed() {
                return Ok(Outcome::PassNote("installed".into()));
            }
            run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
            Ok(Outcome::PassNote("installed now".into()))
        })
}

/// Runs fuzz target `name` for `seconds`, installing cargo-fuzz and nightly first if missing.
pub fn run_target(root: &Path, name: &str, seconds: u64) -> Result<bool> {
    let crates = fuzz_crates(root)?;
    let krate = crate_with(&crates, name)?;
    let mut steps = Steps::new(&format!("cargo xtask fuzz: {name} for {seconds} s"));
    let tool = ensure_fuzz_tools(&mut steps);
    if tool {
        steps.run(&format!("fuzz {name} for {seconds} s"), || {
            run(&mut fuzz_run_command(&krate.dir, name, seconds, &[]))?;
            Ok(Outcome::Pass)
        });
    }
    Ok(steps.summary())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn krate(dir: &str, targets: &[&str]) -> FuzzCrate {
        FuzzCrate {
            dir: PathBuf::from(dir),
            targets: targets.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    #[test]
    fn crate_with_finds_the_one_holder() {
        let crates = vec![krate("a/fuzz", &["x", "y"]), krate("b/fuzz", &["z"])];
        assert_eq!(
            crate_with(&crates, "z").unwrap().dir,
            PathBuf::from("b/fuzz")
        );
        let err = crate_with(&crates, "w").unwrap_err().to_string();
        assert!(err.contains("x, y, z"), "{err}");
        assert!(crate_with(&[], "x")
            .unwrap_err()
            .to_string()
            .contains("no fuzz crates"));
        let twice = vec![krate("a/fuzz", &["x"]), krate("b/fuzz", &["x"])];
        assert!(crate_with(&twice, "x")
            .unwrap_err()
            .to_string()
            .contains("several"));
    }
}
