//! Project automation for the disability-certificate platform: `cargo xtask test | bench | fuzz | demo`.
//!
//! Every subcommand installs what it needs and is missing (see [`setup`]), prints each step with
//! its command lines, and ends with a summary table. Modules:
//! [`process`] (run commands, background services with a stop-on-drop guard, port readiness),
//! [`steps`] (announced, timed steps and the summary), [`workspace`] (what the tree holds now),
//! [`setup`] (packages, PostgreSQL, pcscd), and one module per subcommand.

mod bench;
mod demo;
mod fuzz;
mod process;
mod setup;
mod steps;
mod test;
mod workspace;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Project automation for the disability-certificate platform",
    long_about = "Project automation for the disability-certificate platform.\n\n\
        Each subcommand installs what a fresh Debian 12 machine lacks (apt packages, the \
        thumbv7em-none-eabihf target, rustfmt and clippy), starts the services it needs \
        (pcscd with the vpcd virtual reader, PostgreSQL), prints every step and command, and \
        ends with a summary table. Services it started are stopped at the end, also on failure."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every check CI runs (this is what .ci/run calls)
    #[command(
        long_about = "Run every check CI runs (this is what .ci/run calls).\n\n\
        Steps: install what is missing; make sure PostgreSQL answers (exports DATABASE_TEST_URL) \
        and pcscd runs with the vpcd reader (exports PCSCD_RUNNING=1); cargo fmt --check; \
        cargo clippy -D warnings; cargo test --workspace; build every no_std crate and feature set \
        for thumbv7em-none-eabihf; build the Cortex-M4 image and run it under QEMU; run every fuzz \
        target for a few seconds (when cargo-fuzz and nightly are installed). All steps run even \
        after a failure; the exit status is non-zero if any step failed."
    )]
    Test {
        /// Install nothing; use the machine as it is
        #[arg(long)]
        no_install: bool,
        /// Skip the fuzz smoke step
        #[arg(long, env = "XTASK_SKIP_FUZZ")]
        skip_fuzz: bool,
        /// Seconds each fuzz target runs in the fuzz smoke step
        #[arg(long, default_value_t = 5, value_name = "SECONDS")]
        fuzz_seconds: u64,
        /// Seconds the Cortex-M4 image may run under QEMU before it counts as hung
        #[arg(long, default_value_t = 300, value_name = "SECONDS")]
        qemu_timeout: u64,
        /// Arguments for the test binaries, e.g. `-- --test-threads=1`
        #[arg(last = true, value_name = "TEST_ARGS")]
        test_args: Vec<String>,
    },
    /// Run the benchmark programs and merge their results into target/bench.json
    #[command(
        long_about = "Run the benchmark programs and merge their results into target/bench.json.\n\n\
        Each benchmark is a program run with --release that writes a flat JSON object of named \
        numbers to the file in BENCH_OUT (target/bench/<name>.json). The list is one table in \
        xtask/src/bench.rs; a benchmark whose package or example does not exist yet is skipped \
        with a note. Prints the merged results as a table key | value."
    )]
    Bench {
        /// Run only the benchmark of this name
        #[arg(long, value_name = "NAME")]
        only: Option<String>,
        /// List the benchmarks and exit
        #[arg(long)]
        list: bool,
        /// Install nothing; use the machine as it is
        #[arg(long)]
        no_install: bool,
    },
    /// Run one fuzz target for a while (installs cargo-fuzz and nightly if missing)
    #[command(long_about = "Run one fuzz target for a while.\n\n\
        Finds the fuzz crate (fuzz/, */fuzz/ or */*/fuzz/) that has target NAME, installs \
        cargo-fuzz and the nightly toolchain if missing, and runs \
        `cargo +nightly fuzz run NAME -- -max_total_time=SECONDS`. `--list` lists the targets.")]
    Fuzz {
        /// List the fuzz crates and their targets
        #[arg(long, conflicts_with_all = ["name", "seconds"])]
        list: bool,
        /// The fuzz target
        #[arg(required_unless_present = "list")]
        name: Option<String>,
        /// How long to fuzz, in seconds
        #[arg(required_unless_present = "list")]
        seconds: Option<u64>,
    },
    /// Run the platform end to end on its embedded defaults, narrated step by step
    #[command(
        long_about = "Run the platform end to end on its embedded defaults, narrated step by step.\n\n\
        The story: the issuance server on SQLite in a fresh data directory (target/xtask/demo); \
        a clerk and an approver; two applicants approved; pcscd and two virtual cards; both \
        cards personalized with card-tool; four terminal-sim terminals (transit gate, employer, \
        rehabilitation centre, welfare-point shop) registered and synced; taps at each, with \
        what the service point sees and hears; points granted with a voucher and debited; a \
        card revoked as lost and refused; the tap logs uploaded and checked. It ends with a \
        table of every tap and the summary, and stops everything it started. A chapter whose \
        program does not build says so (NOT YET) and the chapters that need it are skipped."
    )]
    Demo {
        /// Install nothing; use the machine as it is
        #[arg(long)]
        no_install: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a subcommand; Ok(false) means it ran and something failed (already reported).
fn dispatch(command: Command) -> Result<bool> {
    let root = workspace::root();
    std::env::set_current_dir(&root).with_context(|| format!("entering {}", root.display()))?;
    match command {
        Command::Test {
            no_install,
            skip_fuzz,
            fuzz_seconds,
            qemu_timeout,
            test_args,
        } => test::run_all(
            &root,
            &test::Options {
                no_install,
                skip_fuzz,
                fuzz_seconds,
                qemu_timeout,
                test_args,
            },
        ),
        Command::Bench { list: true, .. } => {
            bench::list();
            Ok(true)
        }
        Command::Bench {
            only, no_install, ..
        } => bench::run_all(&root, &bench::Options { only, no_install }),
        Command::Fuzz {
            name: Some(name),
            seconds: Some(seconds),
            list: false,
        } => fuzz::run_target(&root, &name, seconds),
        Command::Fuzz { .. } => {
            fuzz::list(&root)?;
            Ok(true)
        }
        Command::Demo { no_install } => demo::run_demo(&root, &demo::Options { no_install }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn fuzz_needs_a_name_and_seconds_unless_listing() {
        assert!(Cli::try_parse_from(["xtask", "fuzz", "--list"]).is_ok());
        assert!(Cli::try_parse_from(["xtask", "fuzz", "credential", "30"]).is_ok());
        assert!(Cli::try_parse_from(["xtask", "fuzz", "credential"]).is_err());
        assert!(Cli::try_parse_from(["xtask", "fuzz"]).is_err());
        assert!(Cli::try_parse_from(["xtask", "fuzz", "credential", "soon"]).is_err());
        assert!(Cli::try_parse_from(["xtask", "fuzz", "--list", "credential"]).is_err());
    }

    #[test]
    fn test_passes_trailing_arguments_to_the_test_binaries() {
        let cli = Cli::try_parse_from(["xtask", "test", "--no-install", "--", "--test-threads=1"])
            .unwrap();
        let Command::Test {
            test_args,
            no_install,
            fuzz_seconds,
            ..
        } = cli.command
        else {
            panic!("not the test command");
        };
        assert_eq!(test_args, vec!["--test-threads=1"]);
        assert!(no_install);
        assert_eq!(fuzz_seconds, 5);
    }
}
