//! Runs the card applet behind pcscd through the vpcd virtual reader.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use virtual_card::card::AppletCard;
use virtual_card::vpcd::{self, RunOptions, TearMode, TearPlan, VPCD_PORT};

const AFTER_HELP: &str = "\
Examples:
  pcscd -f &                                          start pcscd first (package vsmartcard-vpcd)
  virtual-card init --state card1.bin --master-key-file DATA/keys/scp03-master.key
  virtual-card run --state card1.bin                  insert it into 'Virtual PCD 00 00'
  virtual-card run --state card2.bin --reader-index 1 a second card in 'Virtual PCD 00 01'
  virtual-card run --state card1.bin --tear-after 5   answer 5 APDUs, then vanish once
  virtual-card info --state card1.bin

The card's memory lives in the state file, rewritten (atomically) after every APDU that changes
it, so the card survives a restart or a kill. Set RUST_LOG=debug to see every event.";

/// A virtual contactless card running the certificate applet, inserted into pcscd's vpcd reader.
#[derive(Debug, Parser)]
#[command(name = "virtual-card", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    /// The torn command has no effect.
    Before,
    /// The torn command takes effect, its answer is lost.
    After,
    /// Power fails in the middle of the command's first memory write.
    During,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make a blank card (the factory step): static SCP03 keys diversified from the office master
    /// key, life cycle BLANK.
    Init {
        /// The card's state file.
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
        /// The office's SCP03 master key (32 hex digits).
        #[arg(long, value_name = "HEX", conflicts_with = "master_key_file")]
        master_key: Option<String>,
        /// A file holding the master key: 16 raw bytes (the issuance server's
        /// keys/scp03-master.key) or 32 hex digits.
        #[arg(long, value_name = "FILE")]
        master_key_file: Option<PathBuf>,
        /// The card's 10-byte key diversification data (20 hex digits); default: random.
        #[arg(long, value_name = "HEX")]
        div_data: Option<String>,
        /// Replace an existing card in FILE.
        #[arg(long)]
        force: bool,
    },
    /// Insert the card into a vpcd reader and answer until stopped (Ctrl-C or a signal).
    Run {
        /// The card's state file.
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
        /// vpcd reader: 0 = 'Virtual PCD 00 00' (port 35963), 1 = 'Virtual PCD 00 01' (35964).
        #[arg(long, default_value = "0", conflicts_with = "port")]
        reader_index: u16,
        /// vpcd TCP port (instead of --reader-index).
        #[arg(long)]
        port: Option<u16>,
        /// Tearing: answer N APDUs, then vanish when the next one arrives, and come back.
        #[arg(long, value_name = "N")]
        tear_after: Option<u32>,
        /// What the torn APDU does to the card.
        #[arg(long, value_enum, default_value = "before", requires = "tear_after")]
        tear_mode: Mode,
        /// How many times to tear (counting N APDUs again after each return).
        #[arg(long, default_value = "1", requires = "tear_after")]
        tear_times: u32,
        /// Milliseconds a torn card stays away before it comes back (pcscd must see it gone).
        #[arg(long, default_value_t = vpcd::DEFAULT_AWAY.as_millis() as u64, requires = "tear_after")]
        tear_away_ms: u64,
        /// Seconds to wait for vpcd (at start and after it went away).
        #[arg(long, default_value = "10")]
        connect_timeout: u64,
        /// Exit when vpcd closes the connection (pcscd stopped) instead of waiting for it.
        #[arg(long)]
        exit_when_vpcd_leaves: bool,
    },
    /// Show what the state file holds.
    Info {
        /// The card's state file.
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
    },
}

fn parse_master(hex_arg: Option<String>, file: Option<PathBuf>) -> Result<[u8; 16]> {
    let bytes = match (hex_arg, file) {
        (Some(h), _) => hex::decode(h.trim()).context("--master-key is not hex")?,
        (None, Some(f)) => {
            let raw = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
            if raw.len() == 16 {
                raw
            } else {
                let text = String::from_utf8(raw).unwrap_or_default();
                hex::decode(text.trim())
                    .with_context(|| format!("{} is neither 16 bytes nor hex", f.display()))?
            }
        }
        (None, None) => bail!("give the office master key with --master-key or --master-key-file"),
    };
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("the SCP03 master key must be 16 bytes (AES-128)"))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init {
            state,
            master_key,
            master_key_file,
            div_data,
            force,
        } => {
            let master = parse_master(master_key, master_key_file)?;
            let div: [u8; 10] = match div_data {
                Some(h) => hex::decode(h.trim())
                    .ok()
                    .and_then(|v| v.try_into().ok())
                    .context("--div-data must be 20 hex digits")?,
                None => {
                    let mut d = [0u8; 10];
                    getrandom::fill(&mut d)
                        .map_err(|e| anyhow::anyhow!("the system RNG failed: {e}"))?;
                    d
                }
            };
            AppletCard::create_blank(&state, &master, div, force)?;
            println!(
                "blank card in {} (div data {})\nnext: virtual-card run --state {}",
                state.display(),
                hex::encode(div),
                state.display()
            );
            Ok(())
        }
        Command::Run {
            state,
            reader_index,
            port,
            tear_after,
            tear_mode,
            tear_times,
            tear_away_ms,
            connect_timeout,
            exit_when_vpcd_leaves,
        } => {
            let mut card = AppletCard::load(&state)?;
            let port = match port {
                Some(p) => p,
                None => VPCD_PORT
                    .checked_add(reader_index)
                    .context("--reader-index too large")?,
            };
            let mut options = RunOptions::new(port);
            options.connect_timeout = Duration::from_secs(connect_timeout);
            options.exit_when_vpcd_leaves = exit_when_vpcd_leaves;
            options.tear = tear_after.map(|after| TearPlan {
                after,
                mode: match tear_mode {
                    Mode::Before => TearMode::BeforeProcessing,
                    Mode::After => TearMode::AfterProcessing,
                    Mode::During => TearMode::DuringWrite,
                },
                times: tear_times,
                away: Duration::from_millis(tear_away_ms),
            });
            let summary = vpcd::run(&mut card, &options)?;
            println!(
                "stopped: {} APDUs, {} tears, {} connections",
                summary.apdus, summary.tears, summary.connections
            );
            Ok(())
        }
        Command::Info { state } => {
            let card = AppletCard::load(&state)?;
            let lc = card
                .life_cycle()
                .map_or("unknown".into(), |l| format!("{l:?}").to_uppercase());
            println!("state file:  {}", card.state_path().display());
            println!("life cycle:  {lc}");
            if let Some(k) = card.card_public_key() {
                println!("card key:    {}", hex::encode(k.to_sec1()));
            }
            if let (Some(b), Some(c)) = (card.balance(), card.counter()) {
                println!("purse:       {b} points (counter {c})");
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn master_keys_must_be_16_bytes() {
        assert_eq!(
            parse_master(Some("00".repeat(16)), None).unwrap(),
            [0u8; 16]
        );
        assert!(parse_master(Some("00".repeat(15)), None).is_err());
        assert!(parse_master(Some("zz".into()), None).is_err());
        assert!(parse_master(None, None).is_err());
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        std::fs::write(&raw, [9u8; 16]).unwrap();
        assert_eq!(parse_master(None, Some(raw)).unwrap(), [9u8; 16]);
        let hexf = dir.path().join("hex");
        std::fs::write(&hexf, "0a".repeat(16) + "\n").unwrap();
        assert_eq!(parse_master(None, Some(hexf)).unwrap(), [10u8; 16]);
    }
}
