//! The command line: parsing, running, and printing for people (or JSON for scripts).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use shared_crypto::apdu::WireStats;
use shared_crypto::model::{AttributeId, AttributeSet, LifeCycle, Service};

use crate::batch::{self, BatchMode};
use crate::i18n::{
    display_width, error_text, pad, table, writing, Lang, LangChoice, Localized, Text, WithText,
};
use crate::journal::Journal;
use crate::keys::{read_wire_file, KeyFormat, TerminalKey};
use crate::personalize;
use crate::reader::Readers;
use crate::server::{Client, ServerError};
use crate::tap::{self, life_cycle_shown, Selected, TapRequest, Trust};

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
  card-tool --lang zh status                         messages in Simplified Chinese (简体中文)

A failed personalization (card pulled away, server down) is resumed by running the same command
again: the card stays BLANK until its very last step, and the server keeps the job.
Messages are in Simplified Chinese or English: --lang zh|en, or CARD_TOOL_LANG; by default (auto)
Chinese when the first non-empty of LC_ALL, LC_MESSAGES, LANG starts with `zh`. The --json keys
and machine-readable values are the same in both; only the human messages change.
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
    /// Language of the messages: zh (简体中文), en, or auto (zh when the first non-empty of
    /// LC_ALL, LC_MESSAGES, LANG starts with `zh`, else en).
    #[arg(
        long,
        global = true,
        env = "CARD_TOOL_LANG",
        value_enum,
        default_value = "auto",
        value_name = "auto|zh|en"
    )]
    pub lang: LangChoice,
    /// The office's CA certificate (PEM) for an https:// server with its own CA: then only
    /// that CA is trusted for the server. Without it an https:// server needs a certificate
    /// from a public CA.
    #[arg(long, global = true, env = "CARD_TOOL_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The issuance server and the staff token.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Base URL of the issuance server: https://HOST[:PORT], or http://127.0.0.1:PORT for a
    /// server on this machine (plain HTTP to another machine is refused).
    #[arg(long, env = "CARD_TOOL_SERVER", value_name = "URL")]
    pub server: String,
    /// Staff bearer token (clerk or admin; `issuance-server user add` prints one).
    #[arg(long, env = "CARD_TOOL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ServerArgs {
    fn client(&self, ca_cert: Option<&std::path::Path>) -> Result<Client, ServerError> {
        Client::new(&self.server, self.token.clone(), ca_cert)
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
    let lang = cli.lang.resolve();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = error_text(&e, lang);
            // A command that already printed its JSON result (a batch with failures) must not
            // print a second object.
            if json && e.downcast_ref::<Reported>().is_none() {
                let v = serde_json::json!({ "ok": false, "error": message });
                println!("{v}");
            }
            eprintln!("{}{message}", lang.pick("error: ", "错误："));
            ExitCode::FAILURE
        }
    }
}

/// A failure whose result was already printed (the exit status still says it failed).
#[derive(Debug)]
pub(crate) struct Reported(Text);

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.en)
    }
}

impl std::error::Error for Reported {}

impl Localized for Reported {
    fn localized(&self, lang: Lang) -> String {
        self.0.localized(lang)
    }
}

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

/// Runs a parsed command line (its results and messages in the language `--lang` chose).
pub fn run(cli: Cli) -> Result<()> {
    let json = cli.json;
    let lang = cli.lang.resolve();
    match cli.command {
        Command::Readers => {
            let readers = Readers::new()?;
            let list = readers.list()?;
            emit(json, &list, |list| {
                let mut s = String::new();
                for r in list {
                    s += &match (&r.atr, lang) {
                        (Some(atr), Lang::En) => format!("{}: card present, ATR {atr}\n", r.name),
                        (Some(atr), Lang::Zh) => format!("{}：有卡片，ATR {atr}\n", r.name),
                        (None, Lang::En) => format!("{}: no card\n", r.name),
                        (None, Lang::Zh) => format!("{}：没有卡片\n", r.name),
                    };
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
                    Some(i.life_cycle),
                    0x9000,
                ),
                Selected::Blocked => (true, None, Some(LifeCycle::Blocked), 0x6283),
                Selected::NotOurCard(sw) => (false, None, None, sw),
            };
            let status = Status {
                reader: link.reader(),
                atr: hex::encode(atr),
                applet,
                applet_version: version,
                life_cycle: lc.map(tap::life_cycle_name),
                select_status: format!("{sw:04X}"),
            };
            link.close();
            emit(json, &status, |s| {
                let version = s.applet_version.as_deref().unwrap_or("?");
                let life_cycle = lc.map_or("?".into(), |l| life_cycle_shown(l, lang));
                let meaning = tap::sw_meaning(sw);
                if lang == Lang::Zh {
                    let mut rows = vec![("读卡器：", s.reader.clone()), ("ATR：", s.atr.clone())];
                    if s.applet {
                        rows.push(("应用：", format!("已安装（版本 {version}）")));
                        rows.push(("生命周期：", life_cycle));
                    } else {
                        rows.push((
                            "应用：",
                            format!(
                                "不存在（SELECT 的应答为 {}：{}）",
                                s.select_status, meaning.zh
                            ),
                        ));
                    }
                    return table(&rows);
                }
                let mut out = format!("reader:      {}\nATR:         {}\n", s.reader, s.atr);
                if s.applet {
                    out += &format!(
                        "applet:      present (version {version})\nlife cycle:  {life_cycle}\n"
                    );
                } else {
                    out += &format!(
                        "applet:      absent (SELECT answered {}: {})\n",
                        s.select_status, meaning.en
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
                holder_data: lang.pick(
                    "none: the card discloses attributes only to an authenticated terminal",
                    "无：卡片只向通过认证的终端披露属性",
                ),
                wire: stats.into(),
            };
            emit(json, &r, |r| {
                let version = format!(
                    "{}.{}",
                    r.info.applet_version >> 4,
                    r.info.applet_version & 0xF
                );
                let life_cycle = life_cycle_shown(r.info.life_cycle, lang);
                let challenge = hex::encode(r.info.challenge);
                let (exchanges, bytes) = (r.wire.exchanges, r.wire.total_bytes());
                match lang {
                    Lang::En => format!(
                        "applet version: {version}\nlife cycle:     {life_cycle}\n\
                         challenge:      {challenge}\nholder data:    {}\n\
                         wire:           {exchanges} exchange(s), {bytes} bytes\n",
                        r.holder_data,
                    ),
                    Lang::Zh => table(&[
                        ("应用版本：", version),
                        ("生命周期：", life_cycle),
                        ("挑战随机数：", challenge),
                        ("持证人数据：", r.holder_data.to_owned()),
                        ("通信：", format!("{exchanges} 次交互，{bytes} 字节")),
                    ]),
                }
            })
        }
        Command::Personalize {
            server,
            application,
            journal,
        } => {
            let client = server.client(cli.ca_cert.as_deref())?;
            let journal = journal_of(journal);
            let readers = Readers::new()?;
            let mut link = readers.connect_any(cli.reader.as_deref())?;
            let done = personalize::personalize(&mut link, &client, application, &journal)?;
            link.close();
            emit(json, &done, |d| d.human_in(lang))
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
                return Err(Text::new(
                    "no applications given: use --applications 12,13 or --applications-file FILE",
                    "没有给出任何申请：请使用 --applications 12,13 或 --applications-file FILE",
                )
                .into());
            }
            let mode = if sequential {
                BatchMode::Sequential {
                    reader: cli.reader.clone(),
                    wait: Duration::from_secs(wait),
                }
            } else {
                BatchMode::PerReader
            };
            let client = server.client(cli.ca_cert.as_deref())?;
            let journal = journal_of(journal);
            let summary = batch::run(&client, &journal, &applications, &mode, !json, lang)?;
            emit(json, &summary, |s| s.human_in(lang))?;
            if summary.failed > 0 {
                let (failed, all) = (summary.failed, summary.results.len());
                return Err(Reported(Text::new(
                    format!(
                        "{failed} of {all} cards failed; run the same batch again for the failed \
                         ones with their cards"
                    ),
                    format!(
                        "{all} 张卡片中有 {failed} 张失败；请放上失败的申请对应的卡片，\
                         对这些申请再运行一次同样的 batch 命令"
                    ),
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
                return Err(Text::new(
                    "--debit works only with --service welfare",
                    "--debit 只能和 --service welfare 一起使用",
                )
                .into());
            }
            let key = TerminalKey::load(&terminal_key)?;
            let cert = read_wire_file(&terminal_cert)?;
            let trust = match (root_key, trust_bundle, server) {
                (Some(root), Some(bundle), _) => Some(Trust {
                    root: shared_crypto::PublicKey::from_sec1(
                        &hex::decode(root.trim()).with_text(|| {
                            Text::new("--root-key is not hex", "--root-key 不是十六进制数据")
                        })?,
                    )
                    .map_err(|e| {
                        Text::new(format!("--root-key: {e}"), format!("--root-key：{e}"))
                    })?,
                    bundle: read_wire_file(&bundle)?,
                }),
                (_, _, Some(url)) => {
                    let c = Client::new(&url, None, cli.ca_cert.as_deref())?;
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
            emit(json, &report, |r| human_tap(r, lang))
        }
        Command::Credit {
            server,
            serial,
            amount,
        } => {
            let serial: [u8; 8] = hex::decode(serial.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    Text::new(
                        "--serial must be 16 hex digits (the card serial `tap` prints)",
                        "--serial 必须是 16 位十六进制数字（即 `tap` 显示的卡片序列号）",
                    )
                })?;
            let client = server.client(cli.ca_cert.as_deref())?;
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
            emit(json, &c, |c| match lang {
                Lang::En => format!(
                    "credited {} points (voucher #{}) to card {}; balance now {}\n",
                    c.amount, c.seq, c.serial, c.balance
                ),
                Lang::Zh => format!(
                    "已向卡片 {} 充值 {} 积分（积分券 #{}）；当前余额 {} 积分\n",
                    c.serial, c.amount, c.seq, c.balance
                ),
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
                let next = format!(
                    "card-tool register-terminal --key {} --services ... --out terminal.cert",
                    m.file
                );
                match lang {
                    Lang::En => format!(
                        "wrote {} (mode 0600)\npublic key: {}\nkey id:     {}\nnext: {next}\n",
                        m.file, m.public_key, m.key_id
                    ),
                    Lang::Zh => {
                        format!("已写入 {}（权限 0600）\n", m.file)
                            + &table(&[
                                ("公钥：", m.public_key.clone()),
                                ("密钥编号：", m.key_id.clone()),
                                ("下一步：", next),
                            ])
                    }
                }
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
            let t = server.client(cli.ca_cert.as_deref())?.register_terminal(
                &subject,
                &key.public_key().to_sec1(),
                &names,
                region,
            )?;
            std::fs::write(&out, hex::encode(&t.certificate) + "\n").with_text(|| writing(&out))?;
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
            emit(json, &r, |r| match lang {
                Lang::En => format!(
                    "terminal {} (key id {}) registered; certificate in {}\n",
                    r.terminal_id, r.key_id, r.certificate_file
                ),
                Lang::Zh => format!(
                    "终端 {}（密钥编号 {}）已注册；证书保存在 {}\n",
                    r.terminal_id, r.key_id, r.certificate_file
                ),
            })
        }
    }
}

/// What a tap showed, for people, in `lang`.
fn human_tap(r: &tap::TapReport, lang: Lang) -> String {
    if lang == Lang::Zh {
        return human_tap_zh(r);
    }
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

/// [`human_tap`] in Chinese: the same lines, labels aligned by terminal columns.
fn human_tap_zh(r: &tap::TapReport) -> String {
    let rows = [
        ("服务：", r.service.to_owned()),
        ("卡片序列号：", r.card_serial.clone()),
        ("状态索引：", r.status_index.to_string()),
        (
            "有效期：",
            format!(
                "{} .. {}（{}）",
                r.valid_from,
                r.valid_until,
                if r.valid_now {
                    "当前有效"
                } else {
                    "当前无效"
                }
            ),
        ),
        (
            "签发方：",
            format!(
                "{}（{}）",
                r.issuer,
                if r.issuer_verified {
                    "签名已对照信任包验证通过"
                } else {
                    "未验证：请提供 --server，或同时提供 --root-key 和 --trust-bundle"
                }
            ),
        ),
    ];
    let mut tail = Vec::new();
    if let Some(rc) = &r.receipt {
        tail.push((
            "收据：",
            format!(
                "扣减 {} 积分，余额 {}（计数器 {}），由卡片签名",
                rc.amount, rc.balance_after, rc.counter
            ),
        ));
    }
    if let Some((balance, counter)) = r.balance {
        tail.push(("余额：", format!("{balance} 积分（计数器 {counter}）")));
    }
    let w = r.tap_wire;
    tail.push((
        "通信（刷卡）：",
        format!(
            "{} 次交互，{} 条 APDU，发出 {} 字节 + 收到 {} 字节 = {} 字节，按 106 kbit/s 计 {:.1} ms",
            w.exchanges,
            w.apdus,
            w.bytes_out,
            w.bytes_in,
            w.total_bytes(),
            w.air_ms(106.0)
        ),
    ));
    if r.total_wire != r.tap_wire {
        tail.push((
            "通信（全部）：",
            format!(
                "{} 次交互，{} 字节",
                r.total_wire.exchanges,
                r.total_wire.total_bytes()
            ),
        ));
    }
    // One column for the labels of both groups; the disclosed attributes come between them.
    let width = rows
        .iter()
        .chain(&tail)
        .map(|(label, _)| display_width(label))
        .max()
        .unwrap_or(0)
        + 1;
    let line = |(label, value): &(&str, String)| format!("{}{value}\n", pad(label, width));
    let mut s: String = rows.iter().map(line).collect();
    s += "披露的属性：\n";
    if r.attributes.is_empty() {
        s += "  （无）\n";
    }
    for a in &r.attributes {
        s += &format!("  {:<19} {}\n", a.name, a.value_zh);
    }
    s.extend(tail.iter().map(line));
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
    fn lang_is_a_global_option_and_refuses_other_languages() {
        let cli = Cli::try_parse_from(["card-tool", "readers", "--lang", "zh"]).unwrap();
        assert_eq!(cli.lang, LangChoice::Zh);
        assert_eq!(cli.lang.resolve(), Lang::Zh);
        let cli = Cli::try_parse_from(["card-tool", "--lang", "en", "status"]).unwrap();
        assert_eq!(cli.lang.resolve(), Lang::En);
        assert!(Cli::try_parse_from(["card-tool", "--lang", "fr", "status"]).is_err());
        let help = Cli::command().render_long_help().to_string();
        assert!(
            help.contains("--lang") && help.contains("CARD_TOOL_LANG"),
            "{help}"
        );
    }

    /// Runs a command line that fails before it needs a reader or a server.
    fn failure(args: &[&str]) -> String {
        let cli = Cli::try_parse_from(args).unwrap();
        let lang = cli.lang.resolve();
        let e = run(cli).unwrap_err();
        error_text(&e, lang)
    }

    #[test]
    fn command_line_failures_are_said_in_the_chosen_language() {
        let cases: [&[&str]; 3] = [
            &["card-tool", "batch", "--server", "http://127.0.0.1:9"],
            &[
                "card-tool",
                "tap",
                "--service",
                "transit",
                "--terminal-key",
                "k",
                "--terminal-cert",
                "c",
                "--debit",
                "5",
            ],
            &[
                "card-tool",
                "credit",
                "--server",
                "http://127.0.0.1:9",
                "--serial",
                "0102",
                "--amount",
                "5",
            ],
        ];
        for args in cases {
            let en = failure(&[args, &["--lang", "en"]].concat());
            let zh = failure(&[args, &["--lang", "zh"]].concat());
            crate::i18n::check_pair(args[1], &en, &zh);
        }
        let en = failure(&[cases[0], &["--lang", "en"]].concat());
        assert_eq!(
            en,
            "no applications given: use --applications 12,13 or --applications-file FILE"
        );
        // A server that does not answer: the tool's lead-in in Chinese, the URL as it is.
        let zh = failure(&[
            "card-tool",
            "--lang",
            "zh",
            "credit",
            "--server",
            "http://127.0.0.1:9",
            "--token",
            "t",
            "--serial",
            "0102030405060708",
            "--amount",
            "5",
        ]);
        assert!(
            zh.starts_with("无法连接位于 http://127.0.0.1:9/api/v1/cards/"),
            "{zh}"
        );
        assert!(zh.contains("`issuance-server serve`"), "{zh}");
        // A key file that is missing: the path kept, the explanation in Chinese.
        let zh = failure(&[
            "card-tool",
            "--lang",
            "zh",
            "tap",
            "--service",
            "transit",
            "--terminal-key",
            "/nonexistent/t.key",
            "--terminal-cert",
            "c",
        ]);
        assert!(
            zh.starts_with("读取密钥文件 /nonexistent/t.key 时出错："),
            "{zh}"
        );
    }

    fn report(verified: bool) -> tap::TapReport {
        let wire = tap::Wire {
            exchanges: 2,
            apdus: 3,
            bytes_out: 266,
            bytes_in: 431,
        };
        tap::TapReport {
            service: "welfare",
            card_serial: "abababababababab".into(),
            status_index: 7,
            valid_from: 1_799_999_900,
            valid_until: 1_800_000_100,
            valid_now: verified,
            issuer: "0a0b0c0d".into(),
            issuer_verified: verified,
            attributes: vec![tap::ShownAttribute {
                id: 3,
                name: "category",
                value: "5 (intellectual)".into(),
                value_zh: "5（智力残疾）".into(),
            }],
            receipt: Some(tap::ReceiptInfo {
                counter: 1,
                amount: 15,
                balance_after: 25,
                reference: "00".into(),
                wire: "00".into(),
            }),
            balance: Some((25, 1)),
            tap_wire: wire,
            total_wire: tap::Wire {
                exchanges: 3,
                ..wire
            },
        }
    }

    #[test]
    fn tap_results_read_in_both_languages() {
        for verified in [true, false] {
            let r = report(verified);
            let en = human_tap(&r, Lang::En);
            let zh = human_tap(&r, Lang::Zh);
            // "NOT" is English emphasis, not a name to keep.
            crate::i18n::check_pair("tap", &en.replace("NOT ", ""), &zh);
            let columns = crate::i18n::value_columns(&zh);
            assert_eq!(columns.len(), 9, "{zh}");
            assert!(columns.iter().all(|c| *c == columns[0]), "{zh}");
            assert!(zh.contains("  category            5（智力残疾）\n"), "{zh}");
        }
        let en = human_tap(&report(false), Lang::En);
        assert!(en.starts_with("service:      welfare\ncard serial:  abababababababab\n"));
        assert!(en.contains("(NOT valid now)\n"), "{en}");
        assert!(
            en.contains("disclosed:\n  category            5 (intellectual)\n"),
            "{en}"
        );
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
