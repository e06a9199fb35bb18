//! `terminal-sim`: the terminal on a PC with a PC/SC reader. See `--help` and
//! `docs/terminal-sim.md`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use shared_crypto::model::{Outcome, Service};
use terminal_core::{Lang, ServiceRequest};
use terminal_sim::datadir::DataDir;
use terminal_sim::flash::LAYOUT;
use terminal_sim::i18n::{error_text, lang_from_env, pick, TextContext};
use terminal_sim::msg;
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
///
/// Messages are in Simplified Chinese or English (--lang, TERMINAL_SIM_LANG, or the locale);
/// a tap's voice prompt and display line are in zh-CN unless --lang is given on the command line.
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

    /// Language of the messages: auto (Chinese when the first non-empty of LC_ALL, LC_MESSAGES,
    /// LANG starts with zh, else English), zh-CN or en. Given on the command line (not through
    /// the environment), zh-CN or en also sets the language of a tap's voice prompt and display
    /// line, which is zh-CN otherwise.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "TERMINAL_SIM_LANG",
        default_value = "auto"
    )]
    lang: LangArg,

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LangArg {
    /// From the locale: Chinese when LC_ALL, LC_MESSAGES or LANG (the first set) starts with zh.
    Auto,
    /// Simplified Chinese.
    #[value(name = "zh-CN", alias = "zh")]
    ZhCn,
    /// English.
    #[value(name = "en")]
    En,
}

/// The languages of one run.
#[derive(Clone, Copy, Debug)]
struct Langs {
    /// Errors and text results.
    messages: Lang,
    /// A tap's voice prompt and display line.
    decision: Lang,
}

impl Langs {
    /// `arg` is what --lang (or TERMINAL_SIM_LANG) says; `on_command_line` whether it was
    /// typed. The decision keeps the device's language, zh-CN, unless the operator asks for
    /// another on the command line: the environment variable and the locale choose only the
    /// messages, so that a script or a test harness that wants English errors does not change
    /// what the person at the gate hears.
    fn new(arg: LangArg, on_command_line: bool) -> Self {
        let messages = match arg {
            LangArg::Auto => lang_from_env(),
            LangArg::ZhCn => Lang::ZhCn,
            LangArg::En => Lang::En,
        };
        let decision = match (arg, on_command_line) {
            (LangArg::En, true) => Lang::En,
            _ => Lang::ZhCn,
        };
        Langs { messages, decision }
    }
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let langs = Langs::new(
        cli.lang,
        matches.value_source("lang") == Some(ValueSource::CommandLine),
    );
    match run(cli, langs) {
        Ok(code) => code,
        Err(e) => {
            let prefix = pick(langs.messages, "error: ", "错误：");
            eprintln!("{prefix}{}", error_text(&e, langs.messages));
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

fn run(cli: Cli, langs: Langs) -> Result<ExitCode> {
    let lang = langs.messages;
    let say = |t: terminal_sim::i18n::Text| println!("{}", t.get(lang));
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
                .map(|p| std::fs::read(&p).with_text(|| msg::cannot_read_ca(&p)))
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
                say(msg::init_key_id(&report.key_id));
                say(msg::init_public_key(&report.public_key));
                say(msg::init_root_key(&report.root_key));
                if report.registered {
                    say(msg::init_registered(&dir.cert_path()));
                    say(msg::init_next(dir.path()));
                } else {
                    say(msg::init_not_registered(dir.path()));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync => {
            let mut sim = Sim::open(&dir, clock(cli.now))?;
            let mut http = HttpServer::new(&sim.config.server, dir.load_ca()?.as_deref())?;
            let report = sim.sync(&mut http)?;
            let failed = report.failed_in(lang);
            if cli.json {
                // The reasons are the one human text of the report: in the messages' language.
                let mut shown = report.clone();
                shown.failed = failed;
                print_json(&shown)?;
            } else {
                for o in &report.done {
                    let epochs = msg::sync_epochs(o.from, o.epoch);
                    println!(
                        "{} {} {}",
                        pad(msg::sync_object(o.object).get(lang), 14),
                        pad(msg::sync_action(o.action).get(lang), 14),
                        epochs.get(lang)
                    );
                }
                for (object, why) in &failed {
                    println!(
                        "{} {} {why}",
                        pad(msg::sync_object(object).get(lang), 14),
                        pad(msg::SYNC_FAILED.get(lang), 14)
                    );
                }
            }
            if report.failed.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                Err(msg::sync_failed(report.failed.len()).into())
            }
        }
        Command::Tap {
            reader,
            amount,
            wait,
        } => {
            let mut sim = Sim::open(&dir, clock(cli.now))?;
            let service = sim.config.service()?;
            let request = match (service, amount) {
                (Service::Welfare, Some(amount)) => ServiceRequest::Welfare { amount },
                (Service::Welfare, None) => return Err(msg::amount_needed().into()),
                (_, Some(_)) => return Err(msg::amount_not_welfare().into()),
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
            let report = TapReport::new(&tap.decision, langs.decision, Some(&reader_name));
            if cli.json {
                print_json(&report)?;
            } else {
                print!("{}", report.to_text(langs.decision));
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
                say(msg::upload_nothing());
            } else {
                say(msg::uploaded(
                    report.records,
                    report.batches,
                    report.accepted,
                    report.duplicates,
                ));
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
                print!("{}", report.to_text(lang));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read_certificate(arg: &str) -> Result<Vec<u8>> {
    let bytes = match arg.strip_prefix('@') {
        Some(path) => std::fs::read(path).with_text(|| msg::reading(path))?,
        None => arg.as_bytes().to_vec(),
    };
    // Hex text, or the raw wire bytes of a file.
    match std::str::from_utf8(&bytes)
        .ok()
        .and_then(|t| hex::decode(t.trim()).ok())
    {
        Some(b) => Ok(b),
        None if arg.starts_with('@') => Ok(bytes),
        None => Err(msg::certificate_arg().into()),
    }
}

fn parse_root(arg: &str) -> Result<[u8; 33]> {
    let key: [u8; 33] = hex::decode(arg.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(msg::root_key_arg_length)?;
    shared_crypto::PublicKey::from_sec1(&key).map_err(|_| msg::root_key_arg_point())?;
    Ok(key)
}

/// `s` padded with spaces to `width` columns, a CJK character counting as two (`{:<14}` counts
/// characters, which misaligns Chinese columns in a terminal).
fn pad(s: &str, width: usize) -> String {
    let cols: usize = s.chars().map(|c| if c >= '\u{2e80}' { 2 } else { 1 }).sum();
    format!("{s}{}", " ".repeat(width.saturating_sub(cols)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn langs(args: &[&str]) -> Langs {
        let m = Cli::command().try_get_matches_from(args).unwrap();
        let cli = Cli::from_arg_matches(&m).unwrap();
        Langs::new(
            cli.lang,
            m.value_source("lang") == Some(ValueSource::CommandLine),
        )
    }

    #[test]
    fn tap_decision_follows_only_an_explicit_lang() {
        let d = |args: &[&str]| langs(args).decision;
        assert_eq!(d(&["t", "tap"]), Lang::ZhCn);
        assert_eq!(d(&["t", "tap", "--lang", "en"]), Lang::En);
        assert_eq!(d(&["t", "--lang", "en", "tap"]), Lang::En);
        assert_eq!(d(&["t", "tap", "--lang", "zh-CN"]), Lang::ZhCn);
        assert_eq!(d(&["t", "tap", "--lang", "zh"]), Lang::ZhCn);
        assert_eq!(d(&["t", "tap", "--lang", "auto"]), Lang::ZhCn);
        assert_eq!(langs(&["t", "tap", "--lang", "en"]).messages, Lang::En);
        assert_eq!(langs(&["t", "status", "--lang", "zh"]).messages, Lang::ZhCn);
        // Given through the environment, the language is the messages' only.
        assert_eq!(Langs::new(LangArg::En, false).decision, Lang::ZhCn);
        assert_eq!(Langs::new(LangArg::En, false).messages, Lang::En);
    }

    #[test]
    fn padding_counts_chinese_as_two_columns() {
        assert_eq!(pad("信任包", 8), "信任包  ");
        assert_eq!(pad("trust_bundle", 14), "trust_bundle  ");
        assert_eq!(pad("longer_than_width", 4), "longer_than_width");
    }
}
