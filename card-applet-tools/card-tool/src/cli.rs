//! The command line: parsing, running, and printing for people (or JSON for scripts).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use shared_crypto::apdu::WireStats;
use shared_crypto::model::{AttributeId, AttributeSet, Service};

use crate::batch::{self, BatchMode};
use crate::journal::Journal;
use crate::keys::{read_wire_file, KeyFormat, TerminalKey};
use crate::personalize;
use crate::reader::Readers;
use crate::server::Client;
use crate::tap::{self, life_cycle_name, Selected, TapRequest, Trust};

const AFTER_HELP: &str = "\
Examples:
  card-tool readers                                  list readers and the cards in them
  card-tool status                                   ATR, applet and life cycle of the first card
  card-tool --reader 'Virtual PCD 00 01' read        what the card says before authentication
  export CARD_TOOL_TOKEN=...                         a clerk's token from `issuance-server user add`
  card-tool personalize --server http://127.0.0.1:8080 --application 12
  card-tool batch --server http://127.0.0.1:8080 --applications 12,13,14
  card-tool keygen --out terminal.key
  card-tool register-terminal --server URL --key terminal.key --services transit --out terminal.cert
  card-tool tap --service transit --terminal-key terminal.key --terminal-cert terminal.cert --server URL
  card-tool credit --server URL --serial 0102030405060708 --amount 50

A failed personalization (card pulled away, server down) is resumed by running the same command
again: the card stays BLANK until its very last step, and the server keeps the job.
Exit status: 0 success, 1 failure (the message says what to do), 2 bad usage.";

/// Personalize and diagnose disability-certificate cards through any PC/SC reader.
#[derive(Debug, Parser)]
#[command(name = "card-tool", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Reader to use (exact name from `card-tool readers`); default: the first reader holding a
    /// card.
    #[arg(long, global = true, env = "CARD_TOOL_READER")]
    pub reader: Option<String>,
    /// Print one JSON object (for scripts) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The issuance server and the staff token.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Base URL of the issuance server.
    #[arg(long, env = "CARD_TOOL_SERVER", value_name = "URL")]
    pub server: String,
    /// Staff bearer token (clerk or admin; `issuance-server user add` prints one).
    #[arg(long, env = "CARD_TOOL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ServerArgs {
    fn client(&self) -> Client {
        Client::new(&self.server, self.token.clone())
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the PC/SC readers and whether a card is in each.
    Readers,
    /// Show the card's ATR, whether it holds the applet, and its life cycle.
    Status,
    /// SELECT the applet and show what any reader learns without a terminal key (nothing about
    /// the holder: version, life cycle and a fresh challenge).
    Read,
    /// Personalize the blank card in the reader for an approved application.
    #[command(after_help = "Resumes by itself: run it again after any failure.\n\
        Example: card-tool personalize --server http://127.0.0.1:8080 --application 12")]
    Personalize {
        /// Server and token.
        #[command(flatten)]
        server: ServerArgs,
        /// The approved application to personalize a card for.
        #[arg(long, value_name = "ID")]
        application: i64,
        /// The journal file that lets a rerun finish an interrupted job
        /// [default: $CARD_TOOL_JOURNAL or ~/.local/state/card-tool/journal.json].
        #[arg(long)]
        journal: Option<PathBuf>,
    },
    /// Personalize many cards: one per reader at once, or one after another on one reader.
    #[command(
        after_help = "Examples:\n  card-tool batch --server URL --applications 12,13   \
        (the blank cards in all readers)\n  card-tool batch --server URL --applications-file ids.txt \
        --sequential --reader 'ACS ACR1252 00 00'"
    )]
    Batch {
        /// Server and token.
        #[command(flatten)]
        server: ServerArgs,
        /// Application ids, comma-separated, in the order the cards are personalized.
        #[arg(long, value_delimiter = ',', value_name = "ID,ID,...")]
        applications: Vec<i64>,
        /// A file of application ids, one per line (`#` starts a comment).
        #[arg(long, value_name = "FILE")]
        applications_file: Option<PathBuf>,
        /// One reader, one card after another: insert, wait, remove, next.
        #[arg(long)]
        sequential: bool,
        /// Sequential mode: how long to wait for each card to be inserted or removed.
        #[arg(long, default_value = "120", value_name = "SECONDS")]
        wait: u64,
        /// The journal file (see `personalize`).
        #[arg(long)]
        journal: Option<PathBuf>,
    },
    /// Tap the card as a terminal of a service (diagnostics): authenticate with a terminal key,
    /// verify the answer, print the disclosed attributes and what crossed the wire.
    Tap {
        /// The service: transit, employment, rehab or welfare.
        #[arg(long, value_parser = parse_service)]
        service: Service,
        /// The terminal's private key (`card-tool keygen`).
        #[arg(long, value_name = "FILE")]
        terminal_key: PathBuf,
        /// The terminal's root-signed certificate (`card-tool register-terminal`), hex or binary.
        #[arg(long, value_name = "FILE")]
        terminal_cert: PathBuf,
        /// Fetch the root key and trust bundle from this server to verify the issuer.
        #[arg(long, env = "CARD_TOOL_SERVER", value_name = "URL")]
        server: Option<String>,
        /// Root public key (hex, 33 bytes) instead of asking the server.
        #[arg(long, requires = "trust_bundle", value_name = "HEX")]
        root_key: Option<String>,
        /// Trust bundle file (hex or binary) instead of asking the server.
        #[arg(long, requires = "root_key", value_name = "FILE")]
        trust_bundle: Option<PathBuf>,
        /// Attributes to ask for (comma-separated names); default: all the service may read.
        #[arg(long, value_delimiter = ',', value_parser = parse_attribute)]
        attributes: Vec<AttributeId>,
        /// Welfare: debit this many points (prints the card-signed receipt).
        #[arg(long, value_name = "POINTS")]
        debit: Option<u32>,
        /// Welfare: read the purse balance.
        #[arg(long)]
        balance: bool,
        /// The terminal's time (Unix seconds); default: now.
        #[arg(long)]
        time: Option<u64>,
    },
    /// Fetch a welfare-point voucher from the server and CREDIT it to the card.
    Credit {
        /// Server and token (admin or approver).
        #[command(flatten)]
        server: ServerArgs,
        /// The card's serial (hex, 8 bytes; `tap` shows it).
        #[arg(long, value_name = "HEX")]
        serial: String,
        /// Points to grant.
        #[arg(long)]
        amount: u32,
    },
    /// Make a terminal key for diagnostics (written with mode 0600, never overwritten).
    Keygen {
        /// Where to write the private key.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// PKCS#8 DER or 64 hex digits.
        #[arg(long, value_enum, default_value = "pkcs8")]
        format: KeyFormat,
    },
    /// Register a terminal key with the server (admin) and save its root-signed certificate.
    RegisterTerminal {
        /// Server and token (admin).
        #[command(flatten)]
        server: ServerArgs,
        /// The terminal's private key (its public half is sent).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Services the terminal may perform (comma-separated).
        #[arg(long, value_delimiter = ',', value_parser = parse_service, required = true)]
        services: Vec<Service>,
        /// Who operates it.
        #[arg(long, default_value = "card-tool diagnostics")]
        subject: String,
        /// 6-digit administrative division code (0 = national).
        #[arg(long, default_value = "0")]
        region: u32,
        /// Where to write the certificate (hex).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

fn parse_service(s: &str) -> Result<Service, String> {
    Service::from_name(s)
        .ok_or_else(|| format!("unknown service {s:?}: use transit, employment, rehab or welfare"))
}

fn parse_attribute(s: &str) -> Result<AttributeId, String> {
    AttributeId::ALL
        .iter()
        .copied()
        .find(|a| tap::attribute_name(*a) == s)
        .ok_or_else(|| {
            let names: Vec<&str> = AttributeId::ALL
                .iter()
                .map(|a| tap::attribute_name(*a))
                .collect();
            format!("unknown attribute {s:?}; known: {}", names.join(", "))
        })
}

/// Parses the arguments, runs, prints, and returns the exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A command that already printed its JSON result (a batch with failures) must not
            // print a second object.
            if json && e.downcast_ref::<Reported>().is_none() {
                let v = serde_json::json!({ "ok": false, "error": format!("{e:#}") });
                println!("{v}");
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A failure whose result was already printed (the exit status still says it failed).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Reported(String);

/// Prints `value` as JSON or with `human`.
fn emit<T: Serialize>(json: bool, value: &T, human: impl FnOnce(&T) -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        print!("{}", human(value));
    }
    Ok(())
}

fn journal_of(path: Option<PathBuf>) -> Journal {
    Journal::new(path.unwrap_or_else(Journal::default_path))
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let json = cli.json;
    match cli.command {
        Command::Readers => {
            let readers = Readers::new()?;
            let list = readers.list()?;
            emit(json, &list, |list| {
                let mut s = String::new();
                for r in list {
                    match &r.atr {
                        Some(atr) => s += &format!("{}: card present, ATR {atr}\n", r.name),
                        None => s += &format!("{}: no card\n", r.name),
                    }
                }
                s
            })
        }
        Command::Status => {
            let readers = Readers::new()?;
            let mut link = readers.connect_any(cli.reader.as_deref())?;
            let atr = link.atr()?;
            let mut stats = WireStats::default();
            let selected = tap::select(&mut link, &mut stats)?;
            #[derive(Serialize)]
            struct Status {
                reader: String,
                atr: String,
                applet: bool,
                applet_version: Option<String>,
                life_cycle: Option<&'static str>,
                select_status: String,
            }
            let (applet, version, lc, sw) = match selected {
                Selected::Applet(i) => (
                    true,
                    Some(format!(
                        "{}.{}",
                        i.applet_version >> 4,
                        i.applet_version & 0xF
                    )),
                    Some(life_cycle_name(i.life_cycle)),
                    0x9000,
                ),
                Selected::Blocked => (true, None, Some("BLOCKED"), 0x6283),
                Selected::NotOurCard(sw) => (false, None, None, sw),
            };
            let status = Status {
                reader: link.reader(),
                atr: hex::encode(atr),
                applet,
                applet_version: version,
                life_cycle: lc,
                select_status: format!("{sw:04X}"),
            };
            link.close();
            emit(json, &status, |s| {
                let mut out = format!("reader:      {}\nATR:         {}\n", s.reader, s.atr);
                if s.applet {
                    out += &format!(
                        "applet:      present (version {})\nlife cycle:  {}\n",
                        s.applet_version.as_deref().unwrap_or("?"),
                        s.life_cycle.unwrap_or("?")
                    );
                } else {
                    out += &format!(
                        "applet:      absent (SELECT answered {}: {})\n",
                        s.select_status,
                        tap::sw_meaning(sw)
                    );
                }
                out
            })
        }
        Command::Read => {
            let readers = Readers::new()?;
            let mut link = readers.connect_any(cli.reader.as_deref())?;
            let mut stats = WireStats::default();
            let info = tap::select_applet(&mut link, &mut stats)?;
            link.close();
            #[derive(Serialize)]
            struct Read {
                #[serde(flatten)]
                info: tap::CardInfo,
                holder_data: &'static str,
                wire: tap::Wire,
            }
            let r = Read {
                info,
                holder_data:
                    "none: the card discloses attributes only to an authenticated terminal",
                wire: stats.into(),
            };
            emit(json, &r, |r| {
                format!(
                    "applet version: {}.{}\nlife cycle:     {}\nchallenge:      {}\n\
                     holder data:    {}\nwire:           {} exchange(s), {} bytes\n",
                    r.info.applet_version >> 4,
                    r.info.applet_version & 0xF,
                    life_cycle_name(r.info.life_cycle),
                    hex::encode(r.info.challenge),
                    r.holder_data,
                    r.wire.exchanges,
                    r.wire.total_bytes()
                )
            })
        }
        Command::Personalize {
            server,
            application,
            journal,
        } => {
            let client = server.client();
            let journal = journal_of(journal);
            let readers = Readers::new()?;
            let mut link = readers.connect_any(cli.reader.as_deref())?;
            let done = personalize::personalize(&mut link, &client, application, &journal)?;
            link.close();
            emit(json, &done, |d| d.human())
        }
        Command::Batch {
            server,
            mut applications,
            applications_file,
            sequential,
            wait,
            journal,
        } => {
            if let Some(file) = applications_file {
                applications.extend(batch::read_application_file(&file)?);
            }
            if applications.is_empty() {
                bail!(
                    "no applications given: use --applications 12,13 or --applications-file FILE"
                );
            }
            let mode = if sequential {
                BatchMode::Sequential {
                    reader: cli.reader.clone(),
                    wait: Duration::from_secs(wait),
                }
            } else {
                BatchMode::PerReader
            };
            let client = server.client();
            let journal = journal_of(journal);
            let summary = batch::run(&client, &journal, &applications, &mode, !json)?;
            emit(json, &summary, |s| s.human())?;
            if summary.failed > 0 {
                return Err(Reported(format!(
                    "{} of {} cards failed; run the same batch again for the failed ones with \
                     their cards",
                    summary.failed,
                    summary.results.len()
                ))
                .into());
            }
            Ok(())
        }
        Command::Tap {
            service,
            terminal_key,
            terminal_cert,
            server,
            root_key,
            trust_bundle,
            attributes,
            debit,
            balance,
            time,
        } => {
            if debit.is_some() && service != Service::Welfare {
                bail!("--debit works only with --service welfare");
            }
            let key = TerminalKey::load(&terminal_key)?;
            let cert = read_wire_file(&terminal_cert)?;
            let trust = match (root_key, trust_bundle, server) {
                (Some(root), Some(bundle), _) => Some(Trust {
                    root: shared_crypto::PublicKey::from_sec1(
                        &hex::decode(root.trim()).context("--root-key is not hex")?,
                    )
                    .map_err(|e| anyhow::anyhow!("--root-key: {e}"))?,
                    bundle: read_wire_file(&bundle)?,
                }),
                (_, _, Some(url)) => {
                    let c = Client::new(&url, None);
                    Some(Trust {
                        root: c.root_key()?,
                        bundle: c.trust_bundle()?,
                    })
                }
                _ => None,
            };
            let requested = if attributes.is_empty() {
                service.release_policy()
            } else {
                AttributeSet::of(&attributes)
            };
            let request = TapRequest {
                service,
                requested,
                now: time.unwrap_or_else(crate::now),
                debit,
                read_balance: balance,
            };
            let readers = Readers::new()?;
            let mut link = readers.connect_any(cli.reader.as_deref())?;
            let report = tap::tap(&mut link, &key, &cert, trust.as_ref(), &request)?;
            link.close();
            emit(json, &report, human_tap)
        }
        Command::Credit {
            server,
            serial,
            amount,
        } => {
            let serial: [u8; 8] = hex::decode(serial.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .context("--serial must be 16 hex digits (the card serial `tap` prints)")?;
            let client = server.client();
            let grant = client.voucher(&serial, amount)?;
            let readers = Readers::new()?;
            let mut link = readers.connect_any(cli.reader.as_deref())?;
            let mut stats = WireStats::default();
            tap::select_applet(&mut link, &mut stats)?;
            let balance = tap::credit(&mut link, &grant.voucher_cert, &grant.voucher, &mut stats)?;
            link.close();
            #[derive(Serialize)]
            struct Credited {
                serial: String,
                amount: u32,
                seq: u32,
                balance: u32,
            }
            let c = Credited {
                serial: hex::encode(serial),
                amount,
                seq: grant.seq,
                balance,
            };
            emit(json, &c, |c| {
                format!(
                    "credited {} points (voucher #{}) to card {}; balance now {}\n",
                    c.amount, c.seq, c.serial, c.balance
                )
            })
        }
        Command::Keygen { out, format } => {
            let key = TerminalKey::generate(&out, format)?;
            #[derive(Serialize)]
            struct Made {
                file: String,
                public_key: String,
                key_id: String,
            }
            let pk = key.public_key();
            let m = Made {
                file: out.display().to_string(),
                public_key: hex::encode(pk.to_sec1()),
                key_id: hex::encode(pk.key_id()),
            };
            emit(json, &m, |m| {
                format!(
                    "wrote {} (mode 0600)\npublic key: {}\nkey id:     {}\n\
                     next: card-tool register-terminal --key {} --services ... --out terminal.cert\n",
                    m.file, m.public_key, m.key_id, m.file
                )
            })
        }
        Command::RegisterTerminal {
            server,
            key,
            services,
            subject,
            region,
            out,
        } => {
            let key = TerminalKey::load(&key)?;
            let names: Vec<&str> = services.iter().map(|s| s.name()).collect();
            let t = server.client().register_terminal(
                &subject,
                &key.public_key().to_sec1(),
                &names,
                region,
            )?;
            std::fs::write(&out, hex::encode(&t.certificate) + "\n")
                .with_context(|| format!("writing {}", out.display()))?;
            #[derive(Serialize)]
            struct Registered {
                terminal_id: i64,
                key_id: String,
                certificate_file: String,
            }
            let r = Registered {
                terminal_id: t.terminal_id,
                key_id: t.key_id,
                certificate_file: out.display().to_string(),
            };
            emit(json, &r, |r| {
                format!(
                    "terminal {} (key id {}) registered; certificate in {}\n",
                    r.terminal_id, r.key_id, r.certificate_file
                )
            })
        }
    }
}

fn human_tap(r: &tap::TapReport) -> String {
    let mut s = format!(
        "service:      {}\ncard serial:  {}\nstatus index: {}\nvalid:        {} .. {} ({})\n\
         issuer:       {} ({})\n",
        r.service,
        r.card_serial,
        r.status_index,
        r.valid_from,
        r.valid_until,
        if r.valid_now {
            "valid now"
        } else {
            "NOT valid now"
        },
        r.issuer,
        if r.issuer_verified {
            "signature verified against the trust bundle"
        } else {
            "NOT verified: give --server or --root-key and --trust-bundle"
        }
    );
    s += "disclosed:\n";
    if r.attributes.is_empty() {
        s += "  (nothing)\n";
    }
    for a in &r.attributes {
        s += &format!("  {:<19} {}\n", a.name, a.value);
    }
    if let Some(rc) = &r.receipt {
        s += &format!(
            "receipt:      debited {} points, balance {} (counter {}), signed by the card\n",
            rc.amount, rc.balance_after, rc.counter
        );
    }
    if let Some((balance, counter)) = r.balance {
        s += &format!("balance:      {balance} points (counter {counter})\n");
    }
    s += &format!(
        "wire (tap):   {} exchanges, {} APDUs, {} bytes out + {} in = {} bytes, {:.1} ms at 106 kbit/s\n",
        r.tap_wire.exchanges,
        r.tap_wire.apdus,
        r.tap_wire.bytes_out,
        r.tap_wire.bytes_in,
        r.tap_wire.total_bytes(),
        r.tap_wire.air_ms(106.0)
    );
    if r.total_wire != r.tap_wire {
        s += &format!(
            "wire (all):   {} exchanges, {} bytes\n",
            r.total_wire.exchanges,
            r.total_wire.total_bytes()
        );
    }
    s
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
    fn services_and_attributes_parse_by_name_and_refuse_others() {
        assert_eq!(parse_service("welfare").unwrap(), Service::Welfare);
        assert!(parse_service("bus").unwrap_err().contains("transit"));
        assert_eq!(
            parse_attribute("birth_year").unwrap(),
            AttributeId::BirthYear
        );
        assert!(parse_attribute("salary")
            .unwrap_err()
            .contains("certificate_number"));
    }

    #[test]
    fn tap_arguments_need_both_trust_files_together() {
        let r = Cli::try_parse_from([
            "card-tool",
            "tap",
            "--service",
            "transit",
            "--terminal-key",
            "k",
            "--terminal-cert",
            "c",
            "--root-key",
            "02",
        ]);
        assert!(r.is_err());
    }
}
