//! `terminal-sim`: the terminal on a PC with a PC/SC reader. See `--help` and
//! `docs/terminal-sim.md`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use shared_crypto::model::{Outcome, Service};
use terminal_core::{Lang, ServiceRequest};
use terminal_sim::datadir::DataDir;
use terminal_sim::flash::LAYOUT;
use terminal_sim::platform::SystemClock;
use terminal_sim::reader::{connect, ReaderChoice};
use terminal_sim::report::{StatusReport, TapReport};
use terminal_sim::server::HttpServer;
use terminal_sim::sim::{init, InitRequest, Sim};

/// The certificate terminal on a PC: taps cards on a PC/SC reader and decides offline, exactly
/// as the terminal device does.
///
/// A service point goes through four steps:
///
///   1. terminal-sim init --data DIR --service transit --server https://office.example:8443
///      [--ca-cert office-ca.pem] makes the terminal's key and pins the server's root key (and
///      the office's CA). Give the printed public key to an admin, or pass --admin-token to
///      register at once.
///
///   2. terminal-sim sync --data DIR
///      fetches the trust bundle, the revocation status list and the service rules; each is
///      verified before it is installed. Run it at least daily: with a list older than the rules
///      allow, the terminal asks staff instead of deciding.
///
///   3. terminal-sim tap --data DIR --wait
///      one tap: prints what the person sees (light, display) and hears (buzzer, voice prompt).
///
///   4. terminal-sim upload --data DIR
///      sends the signed tap log to the server, which frees the log's flash.
///
/// `status` shows epochs, the status list's age and how full the log is.
#[derive(Parser, Debug)]
#[command(name = "terminal-sim", version, verbatim_doc_comment)]
struct Cli {
    /// The terminal's data directory (key, certificate, flash.bin).
    #[arg(
        long,
        global = true,
        env = "TERMINAL_SIM_DATA",
        default_value = "terminal-data"
    )]
    data: PathBuf,

    /// Print the result as JSON (for scripts and tests) instead of text.
    #[arg(long, global = true)]
    json: bool,

    /// Pretend the clock shows this Unix time (training, tests). Normally the system clock.
    #[arg(long, global = true, value_name = "UNIX_SECONDS")]
    now: Option<u64>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the terminal: its key, its flash file, the pinned root key; optionally register.
    ///
    /// Run once per terminal. Without --admin-token or --certificate it prints the terminal's
    /// public key: an admin registers it (POST /api/v1/terminals), and you finish with
    /// `init --certificate HEX` on the same directory. The key is never replaced.
    Init {
        /// The service this point performs.
        #[arg(long, value_enum)]
        service: ServiceArg,
        /// The issuance server: https://HOST[:PORT], or http://127.0.0.1:PORT for a server on
        /// this machine (plain HTTP to another machine is refused).
        #[arg(long, env = "TERMINAL_SIM_SERVER")]
        server: String,
        /// The office's CA certificate (PEM) for an https:// server with its own CA: copied
        /// into the data directory and from then on the only CA trusted for the server.
        /// Without it an https:// server needs a certificate from a public CA.
        #[arg(long, value_name = "PEM")]
        ca_cert: Option<PathBuf>,
        /// Name in the terminal's certificate, e.g. "Bus 42 front door".
        #[arg(long, default_value = "terminal-sim")]
        subject: String,
        /// 6-digit administrative region code of the service point (0 = national).
        #[arg(long, default_value_t = 0)]
        region: u32,
        /// Register now with this admin token (the server signs the terminal's certificate).
        #[arg(long, env = "TERMINAL_SIM_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Install a certificate an admin handed over (hex, or @FILE with hex or raw bytes).
        #[arg(long, conflicts_with = "admin_token")]
        certificate: Option<String>,
        /// The root key you expect (hex, from the office); refuses a server serving another.
        #[arg(long)]
        root_key: Option<String>,
    },
    /// Fetch and install trust bundle, status list (delta when possible) and service rules.
    Sync,
    /// Tap one card: decide, show, sound, log.
    ///
    /// Exit status: 0 accepted, 2 refused, 3 ask staff, 1 the tap could not run (no reader,
    /// no card, terminal not set up).
    Tap {
        /// Reader name or a unique part of it (default: the first reader with a card).
        #[arg(long, env = "TERMINAL_SIM_READER")]
        reader: Option<String>,
        /// Welfare: points to debit (required for a welfare terminal, refused otherwise).
        #[arg(long)]
        amount: Option<u32>,
        /// Wait for a card (default 30 s, or the seconds given) instead of failing at once.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "30")]
        wait: Option<u64>,
        /// Language of the voice prompt and display line.
        #[arg(long, value_enum, default_value = "zh-CN")]
        lang: LangArg,
    },
    /// Upload the signed tap log to the server and free the uploaded records' flash.
    Upload,
    /// Show epochs, the status list's age, and how full the tap log is.
    Status,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ServiceArg {
    Transit,
    Employment,
    Rehab,
    Welfare,
}

impl From<ServiceArg> for Service {
    fn from(s: ServiceArg) -> Service {
        match s {
            ServiceArg::Transit => Service::Transit,
            ServiceArg::Employment => Service::Employment,
            ServiceArg::Rehab => Service::Rehab,
            ServiceArg::Welfare => Service::Welfare,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LangArg {
    /// Simplified Chinese.
    #[value(name = "zh-CN", alias = "zh")]
    ZhCn,
    /// English.
    #[value(name = "en")]
    En,
}

impl From<LangArg> for Lang {
    fn from(l: LangArg) -> Lang {
        match l {
            LangArg::ZhCn => Lang::ZhCn,
            LangArg::En => Lang::En,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn clock(cli_now: Option<u64>) -> SystemClock {
    cli_now.map_or_else(SystemClock::system, SystemClock::fixed)
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode> {
    let dir = DataDir::new(&cli.data);
    match cli.command {
        Command::Init {
            service,
            server,
            subject,
            region,
            admin_token,
            certificate,
            root_key,
            ca_cert,
        } => {
            let certificate = certificate.map(|c| read_certificate(&c)).transpose()?;
            let expect_root = root_key.map(|r| parse_root(&r)).transpose()?;
            let ca_pem = ca_cert
                .map(|p| {
                    std::fs::read(&p)
                        .with_context(|| format!("cannot read the CA certificate {}", p.display()))
                })
                .transpose()?;
            // A CA given before is kept for a second `init` (finishing a registration).
            let ca_pem = match ca_pem {
                Some(pem) => Some(pem),
                None => dir.load_ca()?,
            };
            let mut http = HttpServer::new(&server, ca_pem.as_deref())?;
            let report = init(
                &dir,
                &InitRequest {
                    server: &server,
                    ca_pem: ca_pem.as_deref(),
                    service: service.into(),
                    subject: &subject,
                    region,
                    admin_token: admin_token.as_deref(),
                    certificate,
                    expect_root,
                },
                &mut http,
                &LAYOUT,
            )?;
            if cli.json {
                print_json(&report)?;
            } else {
                println!("terminal key id  {}", report.key_id);
                println!("public key       {}", report.public_key);
                println!("root key         {}", report.root_key);
                if report.registered {
                    println!(
                        "registered: certificate stored in {}",
                        dir.cert_path().display()
                    );
                    println!("next: terminal-sim sync --data {}", dir.path().display());
                } else {
                    println!(
                        "not registered yet: an admin registers the public key above for this \
                         service, then run\n  terminal-sim init --data {} --certificate <hex>",
                        dir.path().display()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync => {
            let mut sim = Sim::open(&dir, clock(cli.now))?;
            let mut http = HttpServer::new(&sim.config.server, dir.load_ca()?.as_deref())?;
            let report = sim.sync(&mut http)?;
            if cli.json {
                print_json(&report)?;
            } else {
                for o in &report.done {
                    let epochs = match (o.from, o.epoch) {
                        (Some(f), Some(e)) if f != e => format!("epoch {f} -> {e}"),
                        (_, Some(e)) => format!("epoch {e}"),
                        _ => String::new(),
                    };
                    println!("{:<14} {:<14} {epochs}", o.object, o.action);
                }
                for (object, why) in &report.failed {
                    println!("{object:<14} FAILED         {why}");
                }
            }
            if report.failed.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                bail!("{} of 3 objects could not be updated", report.failed.len())
            }
        }
        Command::Tap {
            reader,
            amount,
            wait,
            lang,
        } => {
            let mut sim = Sim::open(&dir, clock(cli.now))?;
            let service = sim.config.service()?;
            let request = match (service, amount) {
                (Service::Welfare, Some(amount)) => ServiceRequest::Welfare { amount },
                (Service::Welfare, None) => {
                    bail!("a welfare terminal needs --amount (points to debit)")
                }
                (_, Some(_)) => bail!("--amount is only for a welfare terminal"),
                (Service::Transit, None) => ServiceRequest::Transit,
                (Service::Employment, None) => ServiceRequest::Employment,
                (Service::Rehab, None) => ServiceRequest::Rehab,
            };
            let mut card = connect(&ReaderChoice {
                name: reader,
                wait: wait.map(Duration::from_secs),
            })?;
            let tap = sim.tap(&mut card, request)?;
            let reader_name = card.reader().to_owned();
            // The card stays on the reader; a failure to let go does not change the decision.
            let _ = card.release();
            let lang = Lang::from(lang);
            let report = TapReport::new(&tap.decision, lang, Some(&reader_name));
            if cli.json {
                print_json(&report)?;
            } else {
                print!("{}", report.to_text(lang));
            }
            Ok(match tap.decision.outcome {
                Outcome::Accepted => ExitCode::SUCCESS,
                Outcome::Refused => ExitCode::from(2),
                Outcome::AskStaff => ExitCode::from(3),
            })
        }
        Command::Upload => {
            let mut sim = Sim::open(&dir, clock(cli.now))?;
            let mut http = HttpServer::new(&sim.config.server, dir.load_ca()?.as_deref())?;
            let report = sim.upload(&mut http)?;
            if cli.json {
                print_json(&report)?;
            } else if report.batches == 0 {
                println!("nothing to upload");
            } else {
                println!(
                    "uploaded {} records in {} batches ({} new on the server{})",
                    report.records,
                    report.batches,
                    report.accepted,
                    if report.duplicates > 0 {
                        format!(", {} batches seen before", report.duplicates)
                    } else {
                        String::new()
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status => {
            let sim = Sim::open(&dir, clock(cli.now))?;
            let report = StatusReport::new(
                &sim.state(),
                sim.now(),
                &sim.config.service,
                &sim.config.server,
            );
            if cli.json {
                print_json(&report)?;
            } else {
                print!("{}", report.to_text());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read_certificate(arg: &str) -> Result<Vec<u8>> {
    let bytes = match arg.strip_prefix('@') {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {path}"))?,
        None => arg.as_bytes().to_vec(),
    };
    // Hex text, or the raw wire bytes of a file.
    match std::str::from_utf8(&bytes)
        .ok()
        .and_then(|t| hex::decode(t.trim()).ok())
    {
        Some(b) => Ok(b),
        None if arg.starts_with('@') => Ok(bytes),
        None => Err(anyhow!("--certificate is neither hex nor @FILE")),
    }
}

fn parse_root(arg: &str) -> Result<[u8; 33]> {
    let key: [u8; 33] = hex::decode(arg.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow!("--root-key must be 33 bytes of hex (a compressed P-256 key)"))?;
    shared_crypto::PublicKey::from_sec1(&key)
        .map_err(|_| anyhow!("--root-key is not a compressed P-256 public key"))?;
    Ok(key)
}
