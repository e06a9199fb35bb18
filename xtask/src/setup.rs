//! Installs what a fresh machine lacks and starts the services the tests, benches and demo use.
//! The facts behind each step are in ENVIRONMENT.md (Debian 12, root, no systemd).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::{
    self, capture, find_program, pids_named, port_listening, run, succeeds, Background,
};
use crate::steps::{Outcome, Steps};

/// Debian packages the project needs: PC/SC (pcscd, the vpcd virtual reader, client tools),
/// QEMU for the Cortex-M4 image, and the ARM GCC toolchain and newlib that `p256-cortex-m4` builds with.
pub const APT_PACKAGES: &[&str] = &[
    "pkg-config",
    "libpcsclite-dev",
    "pcscd",
    "vsmartcard-vpcd",
    "pcsc-tools",
    "opensc",
    "qemu-system-arm",
    "binutils-arm-none-eabi",
    "gcc-arm-none-eabi",
    "libnewlib-arm-none-eabi",
];

/// The embedded target every `no_std` crate is built for.
pub const EMBEDDED_TARGET: &str = "thumbv7em-none-eabihf";

/// Rustup components the checks use.
pub const RUST_COMPONENTS: &[&str] = &["rustfmt", "clippy"];

/// The vpcd driver's first reader ("Virtual PCD 00 00") listens here once pcscd has loaded it.
pub const VPCD_PORT: u16 = 35963;

/// Where the tests find PostgreSQL; ENVIRONMENT.md: trust auth, databases `test`, `root`, `postgres`.
const PG_HOST: &str = "127.0.0.1";
const PG_PORT: &str = "5432";
const DATABASE_URL_CANDIDATES: &[&str] = &[
    "postgres://root@127.0.0.1:5432/test",
    "postgres://postgres@127.0.0.1:5432/test",
];

/// Which preparations a subcommand needs.
#[derive(Debug, Clone, Copy)]
pub struct Needs {
    /// Install missing apt packages, rustup targets and components.
    pub install: bool,
    /// Make sure PostgreSQL answers and export `DATABASE_TEST_URL`.
    pub postgres: bool,
    /// Make sure pcscd runs with the vpcd reader and export `PCSCD_RUNNING=1`.
    pub pcscd: bool,
}

/// The services prepared for a run. Dropping it stops a pcscd this run started (one that was
/// already running is left alone).
#[derive(Default)]
pub struct Services {
    /// `postgres://...` of a reachable test database, if there is one.
    pub database_test_url: Option<String>,
    /// True once pcscd runs and its vpcd reader listens.
    pub pcscd_ready: bool,
    pcscd: Option<Background>,
}

impl Services {
    /// Adds the environment the tests and benches read: `DATABASE_TEST_URL`, `PCSCD_RUNNING=1`.
    pub fn apply<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        if let Some(url) = &self.database_test_url {
            cmd.env("DATABASE_TEST_URL", url);
        }
        if self.pcscd_ready {
            cmd.env("PCSCD_RUNNING", "1");
        }
        cmd
    }

    /// Stops the pcscd this run started, if any.
    pub fn stop(mut self) {
        if let Some(pcscd) = self.pcscd.take() {
            pcscd.stop();
        }
    }
}

/// Runs the preparation steps `needs` asks for, each as its own step of `steps`.
pub fn prepare(steps: &mut Steps, root: &Path, needs: Needs) -> Services {
    let mut services = Services::default();
    if needs.install {
        steps.run(
            "install missing system packages and Rust targets",
            install_missing,
        );
    } else {
        steps.skip(
            "install missing system packages and Rust targets",
            "--no-install given",
        );
    }
    if needs.postgres {
        steps.run("PostgreSQL at 127.0.0.1:5432", || {
            let (url, outcome) = ensure_postgres()?;
            services.database_test_url = url;
            Ok(outcome)
        });
    }
    if needs.pcscd {
        steps.run("pcscd with the vpcd virtual reader", || {
            let log = root.join("target").join("xtask").join("pcscd.log");
            let (started, outcome) = ensure_pcscd(&log)?;
            services.pcscd = started;
            services.pcscd_ready = true;
            Ok(outcome)
        });
    }
    services
}

/// Installs the missing apt packages (one `apt-get update`, one install) and the missing rustup
/// target and components. A second run finds everything present and does nothing.
pub fn install_missing() -> Result<Outcome> {
    let mut installed = Vec::new();

    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        println!("all {} system packages are installed", APT_PACKAGES.len());
    } else {
        println!("missing system packages: {}", missing.join(" "));
        run(apt_get().arg("update")).context("apt-get update")?;
        run(apt_get()
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args([
                "-o",
                "DPkg::Lock::Timeout=600",
                "install",
                "-y",
                "--no-install-recommends",
            ])
            .args(&missing))
        .context("installing the missing system packages")?;
        installed.extend(missing.iter().map(|p| p.to_string()));
    }

    if find_program("rustup").is_none() {
        println!("note: rustup is not on PATH, so the {EMBEDDED_TARGET} target and rustfmt/clippy are not checked");
        return Ok(Outcome::PassNote(
            "rustup not found; Rust targets not checked".into(),
        ));
    }
    let targets = capture(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if targets.lines().any(|t| t.trim() == EMBEDDED_TARGET) {
        println!("rust target {EMBEDDED_TARGET} is installed");
    } else {
        run(Command::new("rustup").args(["target", "add", EMBEDDED_TARGET]))?;
        installed.push(EMBEDDED_TARGET.to_owned());
    }
    let components = capture(Command::new("rustup").args(["component", "list", "--installed"]))?;
    for component in RUST_COMPONENTS {
        // Installed components are listed with the host triple: `clippy-x86_64-unknown-linux-gnu`.
        let present = components
            .lines()
            .any(|c| c.trim() == *component || c.trim().starts_with(&format!("{component}-")));
        if present {
            println!("rust component {component} is installed");
        } else {
            run(Command::new("rustup").args(["component", "add", component]))?;
            installed.push((*component).to_owned());
        }
    }

    Ok(if installed.is_empty() {
        Outcome::PassNote("everything was already installed".into())
    } else {
        Outcome::PassNote(format!("installed {}", installed.join(", ")))
    })
}

/// `dpkg -s` knows a removed package whose config files remain, so the status line is checked.
fn dpkg_installed(package: &str) -> bool {
    capture(Command::new("dpkg").args(["-s", package])).is_ok_and(|out| {
        out.lines()
            .any(|l| l.trim() == "Status: install ok installed")
    })
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

/// `apt-get`, through `sudo` when not root (CI and the project's machines run as root).
fn apt_get() -> Command {
    if is_root() {
        Command::new("apt-get")
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("apt-get");
        sudo
    }
}

fn pg_ready() -> bool {
    succeeds(Command::new("pg_isready").args(["-q", "-h", PG_HOST, "-p", PG_PORT]))
}

fn loud_warning(lines: &[&str]) {
    println!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    for line in lines {
        println!("!!! {line}");
    }
    println!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
}

/// Whether the value of the `CI` variable says this is a CI run (set, not empty, not `0` or
/// `false`: the forms CI services use).
fn is_ci(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_some_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// Makes sure PostgreSQL answers at 127.0.0.1:5432 (starting the local cluster if it is installed
/// but down) and picks the test database URL. Not reachable is a loud warning, not a failure:
/// the server's PostgreSQL tests then report that they skip. On CI (`CI` set) it is a failure,
/// so that a CI machine without PostgreSQL cannot pass with half the database tests skipped.
pub fn ensure_postgres() -> Result<(Option<String>, Outcome)> {
    let unreachable = |why: &str| {
        if is_ci(std::env::var_os("CI").as_deref()) {
            bail!(
                "PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} ({why}), and CI is set: on CI \
                 the issuance-server tests on PostgreSQL must run, not skip"
            );
        }
        loud_warning(&[
            &format!("PostgreSQL is not reachable at {PG_HOST}:{PG_PORT}: {why}"),
            "DATABASE_TEST_URL is not set: the issuance-server tests on PostgreSQL will SKIP,",
            "only the SQLite half of the database tests runs.",
        ]);
        Ok((
            None,
            Outcome::Warn(format!("PostgreSQL not reachable ({why}); its tests skip")),
        ))
    };
    if find_program("pg_isready").is_none() {
        return unreachable("pg_isready is not installed");
    }
    if pg_ready() {
        println!("PostgreSQL accepts connections at {PG_HOST}:{PG_PORT}");
    } else {
        println!(
            "PostgreSQL does not answer at {PG_HOST}:{PG_PORT}; trying to start the local cluster"
        );
        let mut versions: Vec<String> = fs::read_dir("/etc/postgresql")
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        versions.sort();
        if versions.is_empty() {
            return unreachable("no cluster in /etc/postgresql");
        }
        for version in &versions {
            // No systemd on these machines: start the cluster directly.
            if let Err(e) = run(Command::new("pg_ctlcluster").args([
                "--skip-systemctl-redirect",
                version,
                "main",
                "start",
            ])) {
                println!("{e:#}");
            }
        }
        if process::wait_until(Duration::from_secs(30), "PostgreSQL", || Ok(pg_ready())).is_err() {
            return unreachable("it did not start within 30 s");
        }
        println!("PostgreSQL started and accepts connections");
    }

    if let Ok(url) = std::env::var("DATABASE_TEST_URL") {
        println!("DATABASE_TEST_URL is already set; keeping it: {url}");
        return Ok((
            Some(url.clone()),
            Outcome::PassNote(format!("DATABASE_TEST_URL={url} (given)")),
        ));
    }
    let url = if find_program("psql").is_some() {
        let working = DATABASE_URL_CANDIDATES
            .iter()
            .find(|url| succeeds(Command::new("psql").args([url, "-tAc", "select 1"])));
        match working {
            Some(url) => *url,
            None => return unreachable(
                "no candidate user/database accepts a login (tried root and postgres on `test`)",
            ),
        }
    } else {
        println!(
            "psql is not installed, so the login is not checked; assuming the usual trust setup"
        );
        DATABASE_URL_CANDIDATES[0]
    };
    println!("tests get DATABASE_TEST_URL={url}");
    Ok((
        Some(url.to_owned()),
        Outcome::PassNote(format!("DATABASE_TEST_URL={url}")),
    ))
}

/// Makes sure pcscd runs with the vpcd reader listening. Starts `pcscd -f` (foreground, so this
/// run owns it; never `--auto-exit`, which quits after a minute idle and takes the virtual card
/// down) if none runs, and returns its guard; a pcscd that already runs is left alone.
pub fn ensure_pcscd(log: &Path) -> Result<(Option<Background>, Outcome)> {
    let running = pids_named("pcscd");
    if let Some(pid) = running.first() {
        println!("pcscd is already running (pid {pid}); it is left alone");
        if process::wait_until(Duration::from_secs(10), "the vpcd port", || {
            Ok(port_listening(VPCD_PORT))
        })
        .is_err()
        {
            bail!(
                "the running pcscd (pid {pid}) has no vpcd reader on port {VPCD_PORT}: \
                 is vsmartcard-vpcd installed? Stop that pcscd and run again."
            );
        }
        println!("the vpcd reader listens on port {VPCD_PORT}");
        return Ok((
            None,
            Outcome::PassNote(format!("already running (pid {pid}), left alone")),
        ));
    }
    let program = find_program("pcscd").context("pcscd is not installed (apt package pcscd)")?;
    let mut pcscd = Background::start("pcscd", Command::new(program).arg("-f"), Some(log))?;
    // Readiness is the listening vpcd socket; connecting to it would insert a card.
    pcscd.wait_for_port(VPCD_PORT, Duration::from_secs(20))?;
    println!(
        "pcscd runs (pid {}) and the vpcd reader listens on port {VPCD_PORT}",
        pcscd.pid()
    );
    let pid = pcscd.pid();
    Ok((
        Some(pcscd),
        Outcome::PassNote(format!("started pcscd -f (pid {pid}), stopped at the end")),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn services_export_only_what_is_ready() {
        let mut cmd = Command::new("true");
        Services::default().apply(&mut cmd);
        assert_eq!(cmd.get_envs().count(), 0);

        let services = Services {
            database_test_url: Some("postgres://root@127.0.0.1:5432/test".into()),
            pcscd_ready: true,
            pcscd: None,
        };
        let mut cmd = Command::new("true");
        services.apply(&mut cmd);
        let envs: Vec<(String, String)> = cmd
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.unwrap().to_string_lossy().into_owned(),
                )
            })
            .collect();
        assert!(envs.contains(&("PCSCD_RUNNING".into(), "1".into())));
        assert!(envs.contains(&(
            "DATABASE_TEST_URL".into(),
            "postgres://root@127.0.0.1:5432/test".into()
        )));
    }

    #[test]
    fn ci_variable_forms() {
        use std::ffi::OsStr;
        assert!(!is_ci(None));
        for off in ["", "0", "false", "FALSE"] {
            assert!(!is_ci(Some(OsStr::new(off))), "{off:?}");
        }
        for on in ["1", "true", "yes"] {
            assert!(is_ci(Some(OsStr::new(on))), "{on:?}");
        }
    }

    #[test]
    fn dpkg_check_tells_installed_from_unknown() {
        // dpkg itself is always installed on Debian; the second name does not exist.
        if find_program("dpkg").is_some() {
            assert!(dpkg_installed("dpkg"));
            assert!(!dpkg_installed("no-such-package-xtask"));
        }
    }
}
