//! `cargo xtask demo`: the whole platform on its embedded defaults, narrated step by step.
//!
//! The story (DESIGN.md, issue 7): the issuance server on SQLite in a fresh data directory; a
//! clerk and an approver; two applicants registered and approved (a blind holder entitled to a
//! free companion, a holder with a physical disability in the welfare-points programme); pcscd
//! and two virtual cards; both cards personalized with card-tool; four terminals (transit gate,
//! employer, rehabilitation centre, welfare-point shop) registered and synced with
//! `terminal-sim`; taps at each service point with what the point SEES and HEARS; points granted
//! with a voucher and debited; a card revoked as lost, the delta synced and the refused tap; the
//! tap logs uploaded and checked by the back office; a table of every tap.
//!
//! Every chapter is one row of [`STORY`] and one step of the summary. A chapter whose part is
//! missing or broken says so (`NOT YET` or `FAIL` with the reason) and the chapters that need it
//! are skipped with the reason; nothing is faked. Processes are started through
//! [`crate::process::Background`], so they stop when the demo ends, also on failure. The data
//! directory `target/xtask/demo` is wiped at the start of each run and kept afterwards for its
//! logs, so a second run starts from nothing.

use std::fs::{self, File, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fs4::fs_std::FileExt;
use serde_json::{json, Value};

use crate::process::{self, describe, run, show, Background};
use crate::setup::{self, Needs};
use crate::steps::{Outcome, Steps};
use crate::workspace::{self, cargo, Package};

/// Options of `cargo xtask demo`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Install nothing; use the machine as it is.
    pub no_install: bool,
}

/// The lock file every user of pcscd's virtual readers shares (the e2e harness uses the same):
/// the demo must not put its cards into readers a test is using.
const PCSC_LOCK_FILE: &str = "/tmp/pcsc-tests.lock";

/// The binaries the story runs: (package, binary).
const TOOLS: &[(&str, &str)] = &[
    ("issuance-server", "issuance-server"),
    ("virtual-card", "virtual-card"),
    ("card-tool", "card-tool"),
    ("terminal-sim", "terminal-sim"),
];

/// One applicant of the story.
struct Person {
    /// Used in file names.
    id: &'static str,
    name_zh: &'static str,
    name_en: &'static str,
    resident_id: &'static str,
    category: u8,
    level: u8,
    region: u32,
    entitlements: &'static [&'static str],
    about: &'static str,
    /// The vpcd reader the card sits in.
    reader: u8,
}

const WANG: usize = 0;
const LI: usize = 1;

#[rustfmt::skip]
const PEOPLE: [Person; 2] = [
    Person {
        id: "wang-fang", name_zh: "王芳", name_en: "Wang Fang",
        // GB 11643-1999: born 1980-01-01 in Dongcheng, Beijing; the check character is computed.
        resident_id: "110101198001010029", category: 1, level: 1, region: 110101,
        entitlements: &["free_transit", "companion", "quota_employment"],
        about: "blind (vision, level 1); rides free with a companion; works for an employer who counts her for the quota",
        reader: 0,
    },
    Person {
        id: "li-qiang", name_zh: "李强", name_en: "Li Qiang",
        resident_id: "110105197506150036", category: 4, level: 2, region: 110105,
        entitlements: &["free_transit", "rehab_subsidy", "quota_employment", "welfare_points"],
        about: "physical disability (level 2); rehabilitation subsidy; member of the welfare-points programme",
        reader: 1,
    },
];

/// One service point of the story.
struct Point {
    /// Directory name.
    id: &'static str,
    service: &'static str,
    /// The subject of its certificate.
    subject: &'static str,
    what: &'static str,
}

const GATE: usize = 0;
const EMPLOYER: usize = 1;
const REHAB: usize = 2;
const SHOP: usize = 3;

#[rustfmt::skip]
const POINTS: [Point; 4] = [
    Point { id: "gate", service: "transit", subject: "Bus 42 front door", what: "the gate of bus 42" },
    Point { id: "employer", service: "employment", subject: "Huaxin Printing HR desk", what: "the HR desk of Huaxin Printing (an employer)" },
    Point { id: "rehab", service: "rehab", subject: "Dongcheng Rehab Centre", what: "the Dongcheng rehabilitation centre" },
    Point { id: "shop", service: "welfare", subject: "Welfare-point shop", what: "the welfare-point shop" },
];

/// The office once its server runs.
struct Office {
    server: Background,
    url: String,
    data: PathBuf,
    admin: String,
    root_key: String,
    clerk: Option<String>,
    approver: Option<String>,
}

/// A person's card as far as the story got.
#[derive(Default)]
struct Card {
    application: Option<i64>,
    process: Option<Background>,
    serial: Option<String>,
}

/// One tap, for the closing table.
struct TapRow {
    who: &'static str,
    point: &'static str,
    outcome: String,
    reason: String,
    voice_en: String,
}

/// Everything the chapters share.
pub struct Demo<'a> {
    root: &'a Path,
    packages: Vec<Package>,
    /// Where the release binaries are.
    bins: PathBuf,
    /// Packages of [`TOOLS`] that did not build, with cargo's complaint.
    broken: Vec<(String, String)>,
    /// `target/xtask/demo`.
    dir: PathBuf,
    /// (secret or long text, what to print instead) for the command lines shown.
    redact: Vec<(String, String)>,
    http: ureq::Agent,
    office: Option<Office>,
    cards: [Card; 2],
    /// Terminals whose init and first sync worked.
    terminals: [bool; 4],
    lock: Option<File>,
    taps: Vec<TapRow>,
}

type Chapter = fn(&mut Demo) -> Result<Outcome>;

/// The demo, in order: (title, what it shows, the function).
#[rustfmt::skip]
const STORY: &[(&str, &str, Chapter)] = &[
    ("the parts and how far each is built",
     "every folder of the platform with its packages and lines of Rust", parts),
    ("the issuance server on SQLite",
     "issuance-server init (root key, office keys, database) in a fresh data directory, then serve", start_server),
    ("staff: a clerk and an approver",
     "issuance-server user add gives each member of staff a role and a token", staff),
    ("two applicants registered and approved",
     "a clerk registers two applicants, an approver (another person: four eyes) approves them", applicants),
    ("two virtual cards behind pcscd",
     "two blank cards made from the office's SCP03 master key, running the real applet in pcscd's two virtual readers", virtual_cards),
    ("both cards personalized with card-tool",
     "card-tool personalizes each card over SCP03; the card makes its own key, the server signs the credential", personalize),
    ("four terminals registered and synced",
     "terminal-sim for a transit gate, an employer, a rehabilitation centre and a welfare-point shop: key, certificate, trust bundle, status list, rules", terminals),
    ("taps at the transit gate",
     "a free ride, the companion's passage, a second holder", transit),
    ("taps at the employer and the rehabilitation centre",
     "minimum disclosure: the employer sees the identity, the centre sees category and level; a holder without the subsidy is refused", employer_and_rehab),
    ("welfare points: a voucher credited, points debited",
     "an approver grants points with a signed voucher that card-tool credits; the shop debits with a card-signed receipt", welfare),
    ("a lost card revoked",
     "the card is revoked, the gate syncs the status-list delta and refuses the card; an offline terminal still accepts it", revocation),
    ("tap logs uploaded to the back office",
     "each terminal uploads its signed tap log; the server verifies receipts, flags anomalies, counts usage; the audit chain is checked", upload),
    ("what the service points saw",
     "every tap of the story in one table", tap_table),
];

/// Runs the demo; returns true when no chapter failed.
pub fn run_demo(root: &Path, options: &Options) -> Result<bool> {
    let mut steps = Steps::new(
        "cargo xtask demo: the disability-certificate platform end to end, on its embedded defaults",
    );
    let services = setup::prepare(
        &mut steps,
        root,
        Needs {
            install: !options.no_install,
            postgres: false,
            pcscd: true,
        },
    );
    let mut broken = Vec::new();
    steps.run("build the workspace (release)", || {
        match run(cargo().args(["build", "--workspace", "--release", "--keep-going"])) {
            Ok(()) => Ok(Outcome::Pass),
            Err(e) => {
                // Find out which of the story's tools are the broken ones: the others still run.
                println!("the build failed; checking which of the demo's programs build");
                for (package, bin) in TOOLS {
                    let out = cargo()
                        .args(["build", "--release", "--quiet", "-p", package, "--bin", bin])
                        .stdin(Stdio::null())
                        .output()
                        .context("running cargo")?;
                    if !out.status.success() {
                        let why = String::from_utf8_lossy(&out.stderr);
                        let first = why
                            .lines()
                            .find(|l| l.starts_with("error"))
                            .unwrap_or("does not build")
                            .to_owned();
                        broken.push(((*package).to_owned(), first));
                    }
                }
                Err(e)
            }
        }
    });
    let mut demo = Demo::new(root, broken)?;
    // A failed build does not stop the story: a chapter whose program did not build says so
    // (see `Demo::tool`), the others run with what was just built.
    for (title, shows, chapter) in STORY {
        steps.run(title, || {
            println!("This chapter shows: {shows}.");
            chapter(&mut demo)
        });
    }
    demo.stop();
    services.stop();
    println!();
    println!(
        "The demo's data directory (database, keys, card and terminal files, logs) stays in {} \
         until the next run wipes it.",
        demo.dir.display()
    );
    Ok(steps.summary())
}

impl<'a> Demo<'a> {
    fn new(root: &'a Path, broken: Vec<(String, String)>) -> Result<Self> {
        let bins = target_dir(root)?.join("release");
        let dir = root.join("target").join("xtask").join("demo");
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // The server is on loopback: never through a proxy from the environment.
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let redact = vec![
            (format!("{}/", bins.display()), String::new()),
            (dir.display().to_string(), "$DEMO".to_owned()),
        ];
        Ok(Demo {
            root,
            packages: workspace::packages(root)?,
            bins,
            broken,
            dir,
            redact,
            http,
            office: None,
            cards: Default::default(),
            terminals: [false; 4],
            lock: None,
            taps: Vec::new(),
        })
    }

    /// The path of a tool: a NOT YET (a [`Stop`]) when the workspace has no such program, a
    /// failure when its package does not build.
    fn tool(&self, bin: &str) -> Result<PathBuf> {
        locate(&self.packages, &self.broken, &self.bins, bin)
    }

    /// A command for `bin` (see [`Demo::tool`]).
    fn command(&self, bin: &str) -> Result<Command> {
        let mut cmd = Command::new(self.tool(bin)?);
        // Nothing from the person's environment may redirect the story's tools.
        for var in [
            "DATABASE_URL",
            "ISSUANCE_DATA",
            "CARD_TOOL_READER",
            "CARD_TOOL_SERVER",
            "CARD_TOOL_TOKEN",
            "CARD_TOOL_JOURNAL",
            "TERMINAL_SIM_DATA",
            "TERMINAL_SIM_SERVER",
            "TERMINAL_SIM_ADMIN_TOKEN",
            "TERMINAL_SIM_READER",
        ] {
            cmd.env_remove(var);
        }
        // The story reads card-tool's answers and matches the README's English transcript.
        cmd.env("CARD_TOOL_LANG", "en");
        // terminal-sim's messages too (its taps' voice stays zh-CN unless --lang is given).
        cmd.env("TERMINAL_SIM_LANG", "en");
        Ok(cmd)
    }

    /// A command line as printed: tokens replaced by their names, the binaries' directory and
    /// the demo directory shortened, so the transcript reads the same on every machine.
    fn shown(&self, cmd: &Command) -> String {
        self.shorten(&show(cmd))
    }

    /// Starts a background process whose output goes to `log`, printing the shortened command.
    fn start(&self, name: &str, cmd: &mut Command, log: &Path) -> Result<Background> {
        let shown = format!(
            "{} &    (output in {})",
            self.shown(cmd),
            self.shorten(&log.display().to_string())
        );
        Background::start_shown(name, cmd, Some(log), &shown)
    }

    /// `text` with the secrets and long paths replaced by their names.
    fn shorten(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for (secret, name) in &self.redact {
            text = text.replace(secret.as_str(), name);
        }
        text
    }

    /// Runs `cmd` after printing it; returns (exit status, stdout). A status outside `ok` is an
    /// error that carries the command's stderr.
    fn exec(&self, cmd: &mut Command, ok: &[i32]) -> Result<(i32, String)> {
        let shown = self.shown(cmd);
        println!("$ {shown}");
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("could not start `{shown}`"))?;
        let code = out.status.code().unwrap_or(-1);
        if !ok.contains(&code) {
            bail!(
                "`{shown}` {}: {}",
                describe(out.status),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok((code, String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    /// [`Demo::exec`] of a `--json` command that must succeed; its JSON output.
    fn exec_json(&self, cmd: &mut Command) -> Result<Value> {
        let (_, out) = self.exec(cmd, &[0])?;
        serde_json::from_str(out.trim()).with_context(|| format!("not JSON: {out}"))
    }

    /// Runs `cmd`, which must succeed, and prints its output indented.
    fn exec_show(&self, cmd: &mut Command) -> Result<String> {
        let (_, out) = self.exec(cmd, &[0])?;
        self.say(&out);
        Ok(out)
    }

    /// Prints a program's output indented, with the same shortening as the command lines.
    fn say(&self, out: &str) {
        print_indented(&self.shorten(out));
    }

    /// The office, or a SKIP of the chapter when the server did not start.
    fn office(&self) -> Result<&Office> {
        self.office.as_ref().ok_or_else(|| {
            outcome_error(Outcome::Skip("the issuance server is not running".into()))
        })
    }

    /// One API call; prints what is asked and of whom. `who` is (role and name, token).
    fn api(
        &self,
        method: &str,
        path: &str,
        who: Option<(&str, &str)>,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let office = self.office.as_ref().context("the server is not running")?;
        let url = format!("{}{path}", office.url);
        match who {
            Some((name, _)) => println!("> {method} {path}   (as {name})"),
            None => println!("> {method} {path}"),
        }
        let auth = who.map(|(_, token)| format!("Bearer {token}"));
        let mut resp = if method == "GET" {
            let mut r = self.http.get(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        } else {
            let mut r = self.http.post(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            match body {
                Some(b) => r.send_json(b),
                None => r.send_empty(),
            }
        }
        .with_context(|| format!("{method} {path}: the server does not answer"))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string()?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// An API call that must succeed.
    fn api_ok(
        &self,
        method: &str,
        path: &str,
        who: Option<(&str, &str)>,
        body: Option<&Value>,
    ) -> Result<Value> {
        let (status, v) = self.api(method, path, who, body)?;
        if !(200..300).contains(&status) {
            bail!("{method} {path} answered {status}: {v}");
        }
        Ok(v)
    }

    fn reader(index: u8) -> String {
        format!("Virtual PCD 00 {index:02}")
    }

    fn terminal_dir(&self, point: usize) -> PathBuf {
        self.dir.join("terminals").join(POINTS[point].id)
    }

    /// A tap of `person`'s card at `point` (a debit of `amount` at the shop), narrated: what the
    /// point sees and hears, in both languages. Returns (outcome, reason, the report).
    fn tap(
        &mut self,
        person: usize,
        point: usize,
        amount: Option<u32>,
        story: &str,
    ) -> Result<(String, String, Value)> {
        println!();
        println!("{story}");
        let mut cmd = self.command("terminal-sim")?;
        cmd.arg("--data")
            .arg(self.terminal_dir(point))
            .args(["--json", "tap", "--reader"])
            .arg(Self::reader(PEOPLE[person].reader));
        if let Some(a) = amount {
            cmd.args(["--amount", &a.to_string()]);
        }
        // 0 accepted, 2 refused, 3 ask staff: all are decisions to show.
        let (_, out) = self.exec(&mut cmd, &[0, 2, 3])?;
        let report: Value =
            serde_json::from_str(out.trim()).with_context(|| format!("not JSON: {out}"))?;
        print_tap(&report);
        let outcome = text(&report["outcome"]);
        let reason = text(&report["reason"]);
        self.taps.push(TapRow {
            who: PEOPLE[person].name_en,
            point: POINTS[point].subject,
            outcome: outcome.clone(),
            reason: reason.clone(),
            voice_en: text(&report["hears"]["voice_en"]),
        });
        Ok((outcome, reason, report))
    }

    /// Stops every process the story started and releases the readers.
    fn stop(&mut self) {
        for card in &mut self.cards {
            if let Some(p) = card.process.take() {
                p.stop();
            }
        }
        if let Some(office) = self.office.take() {
            office.server.stop();
        }
        if let Some(lock) = self.lock.take() {
            let _ = FileExt::unlock(&lock);
        }
    }
}

/// An [`Outcome`] that stops a chapter, carried through `?` as an error and turned back into
/// the outcome by [`chapter_result`].
#[derive(Debug)]
struct Stop(Outcome);

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::error::Error for Stop {}

fn outcome_error(o: Outcome) -> anyhow::Error {
    anyhow::Error::new(Stop(o))
}

/// A chapter's result with a [`Stop`] turned back into its outcome (a SKIP or NOT YET is not a
/// failure of this chapter).
fn chapter_result(r: Result<Outcome>) -> Result<Outcome> {
    match r {
        Err(e) => match e.downcast::<Stop>() {
            Ok(Stop(o)) => Ok(o),
            Err(e) => Err(e),
        },
        ok => ok,
    }
}

/// Where binary `bin` of the story is: the release build in `bins`. A program the workspace does
/// not declare (yet) stops the chapter as NOT YET; one whose package did not build, or that is
/// missing after the build, fails it.
fn locate(
    packages: &[Package],
    broken: &[(String, String)],
    bins: &Path,
    bin: &str,
) -> Result<PathBuf> {
    let package = TOOLS
        .iter()
        .find(|(_, b)| *b == bin)
        .map_or(bin, |(p, _)| *p);
    let declared = packages
        .iter()
        .filter(|p| p.name == package)
        .any(|p| p.targets_of("bin").any(|t| t.name == bin));
    if !declared {
        return Err(outcome_error(Outcome::NotYet(format!(
            "the workspace has no program {bin} (package {package}) yet"
        ))));
    }
    if let Some((_, why)) = broken.iter().find(|(p, _)| p == package) {
        bail!("{package} does not build: {why}");
    }
    let path = bins.join(bin);
    if !path.is_file() {
        bail!("{package} was built but {} is missing", path.display());
    }
    Ok(path)
}

/// The target directory cargo uses (respects `CARGO_TARGET_DIR`).
fn target_dir(root: &Path) -> Result<PathBuf> {
    let out = process::capture(
        cargo()
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .current_dir(root),
    )?;
    let v: Value = serde_json::from_str(&out).context("`cargo metadata` printed no JSON")?;
    v["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("`cargo metadata` names no target directory")
}

/// Sleeps until the system clock is in a later second than `unix`.
fn wait_past(unix: u64) {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(u64::MAX)
    };
    while now() <= unix {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn print_indented(out: &str) {
    for line in out.lines() {
        println!("    {line}");
    }
}

/// The token on the line of `issuance-server init` / `user add` output that mentions one.
fn token_of(out: &str) -> Result<String> {
    out.lines()
        .filter(|l| l.to_ascii_lowercase().contains("token"))
        .find_map(|l| {
            let t = l.rsplit_once(':')?.1.trim();
            (!t.is_empty() && !t.contains(char::is_whitespace)).then(|| t.to_owned())
        })
        .with_context(|| format!("no token in:\n{out}"))
}

/// A free TCP port on loopback.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `2031-11-22` for Unix seconds (civil calendar from days, UTC).
fn date(unix: u64) -> String {
    let days = i64::try_from(unix / 86_400).unwrap_or(0);
    // Howard Hinnant's days-to-civil: eras of 400 years starting 0000-03-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The light as words: "green light, steady 1500 ms" or "red light, blinks 3x (250 ms on, 250 ms off)".
fn light_words(l: &Value) -> String {
    let color = text(&l["color"]);
    let repeat = l["repeat"].as_u64().unwrap_or(1);
    let on = l["on_ms"].as_u64().unwrap_or(0);
    let off = l["off_ms"].as_u64().unwrap_or(0);
    if repeat <= 1 {
        format!("{color} light, steady {on} ms")
    } else {
        format!("{color} light, blinks {repeat}x ({on} ms on, {off} ms off)")
    }
}

/// The buzzer as words: "2093 Hz 200 ms" or "392 Hz 150 ms, pause 100 ms, ...".
fn tone_words(tones: &Value) -> String {
    let parts: Vec<String> = tones
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let hz = t["hz"].as_u64().unwrap_or(0);
            let ms = t["ms"].as_u64().unwrap_or(0);
            if hz == 0 {
                format!("pause {ms} ms")
            } else {
                format!("{hz} Hz {ms} ms")
            }
        })
        .collect();
    if parts.is_empty() {
        "silent".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The holder data a tap disclosed, one "label value" pair per field present.
fn holder_words(h: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let field = |k: &str| h.get(k).filter(|v| !v.is_null());
    if let Some(v) = field("name") {
        out.push(("name".into(), text(v)));
    }
    if let Some(v) = field("certificate_number") {
        out.push(("certificate no.".into(), text(v)));
    }
    if let Some(v) = field("category") {
        let name = field("category_name").map(text).unwrap_or_default();
        out.push(("category".into(), format!("{} {name}", text(v))));
    }
    if let Some(v) = field("level") {
        out.push(("level".into(), text(v)));
    }
    if let Some(v) = field("region") {
        out.push(("region".into(), text(v)));
    }
    if let Some(v) = field("birth_year") {
        out.push(("birth year".into(), text(v)));
    }
    if let Some(v) = field("entitlements") {
        let names: Vec<String> = v.as_array().into_iter().flatten().map(text).collect();
        out.push(("entitlements".into(), names.join(", ")));
    }
    if let Some(v) = field("certificate_expiry").and_then(Value::as_u64) {
        out.push(("valid until".into(), date(v)));
    }
    out
}

/// Prints what a service point sees and hears for one tap report of `terminal-sim --json tap`.
fn print_tap(r: &Value) {
    let sees = &r["sees"];
    let hears = &r["hears"];
    println!("  SEES   {}", light_words(&sees["light"]));
    println!("         display:         {}", text(&sees["display"]));
    for (label, value) in holder_words(&sees["holder"]) {
        println!("         {:16} {value}", format!("{label}:"));
    }
    if let Some(d) = sees.get("debit").filter(|d| !d.is_null()) {
        println!(
            "         debit:           {} points, balance now {} (purse counter {}); card-signed receipt kept",
            text(&d["amount"]),
            text(&d["balance_after"]),
            text(&d["counter"])
        );
    }
    println!("  HEARS  buzzer {}", tone_words(&hears["tones"]));
    println!(
        "         voice prompt #{} (zh-CN): {}",
        text(&hears["prompt_id"]),
        text(&hears["voice_zh"])
    );
    println!(
        "                         (en):    {}",
        text(&hears["voice_en"])
    );
    let card = match r["card_serial"].as_str() {
        Some(s) => format!(", card {s}"),
        None => String::new(),
    };
    println!(
        "  RESULT {} ({}){card}, tap-log record {}",
        text(&r["outcome"]),
        text(&r["reason"]),
        text(&r["log_seq"])
    );
}

/// Compares a tap's decision with what the story expects; the mismatches become a WARN.
fn check(
    misses: &mut Vec<String>,
    what: &str,
    got: &(String, String, Value),
    outcome: &str,
    reason: &str,
) {
    if got.0 != outcome || got.1 != reason {
        println!("  !! the story expected {outcome} ({reason}) here");
        misses.push(format!(
            "{what}: {} ({}), expected {outcome} ({reason})",
            got.0, got.1
        ));
    }
}

fn verdict(misses: Vec<String>, note: String) -> Outcome {
    if misses.is_empty() {
        Outcome::PassNote(note)
    } else {
        Outcome::Warn(misses.join("; "))
    }
}

// ---------------------------------------------------------------------------------------------
// The chapters

/// The platform's folders, as in the README and DESIGN.md.
const FOLDERS: &[&str] = &[
    "shared-crypto",
    "card-applet-tools",
    "terminal-firmware",
    "issuance-server",
    "tests",
    "xtask",
];

/// Below this many lines of Rust a package is still the workspace skeleton.
const SKELETON_LINES: usize = 10;

fn parts(demo: &mut Demo) -> Result<Outcome> {
    println!(
        "{:20} {:20} {:>10}  targets",
        "folder", "package", "Rust lines"
    );
    let mut skeletons = 0;
    for folder in FOLDERS {
        let mut members: Vec<&Package> = demo
            .packages
            .iter()
            .filter(|p| p.dir.starts_with(demo.root.join(folder)))
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        if members.is_empty() {
            println!("{:20} {:20} {:>10}", format!("{folder}/"), "(none)", "-");
        }
        for package in members {
            let lines = workspace::rust_lines(&package.dir);
            let mut targets: Vec<String> = package
                .targets
                .iter()
                .map(|t| {
                    let needs = if t.required_features.is_empty() {
                        String::new()
                    } else {
                        format!(" (with {})", t.required_features.join("+"))
                    };
                    format!("{} {}{needs}", t.kinds.join("+"), t.name)
                })
                .collect();
            targets.sort();
            let state = if lines <= SKELETON_LINES {
                skeletons += 1;
                "  (skeleton only)"
            } else {
                ""
            };
            println!(
                "{:20} {:20} {:>10}  {}{state}",
                format!("{folder}/"),
                package.name,
                lines,
                targets.join(", ")
            );
        }
    }
    let m4 = demo.root.join(crate::test::M4_DIR);
    let m4_state = if m4.join("Cargo.toml").is_file() {
        format!("{} lines of Rust", workspace::rust_lines(&m4))
    } else {
        "not written yet".to_owned()
    };
    println!(
        "{:20} {:20} {:>10}  (its own workspace) {m4_state}",
        "terminal-firmware/", "m4 image", ""
    );
    Ok(Outcome::PassNote(format!(
        "{} packages, {skeletons} still skeletons",
        demo.packages.len()
    )))
}

fn start_server(demo: &mut Demo) -> Result<Outcome> {
    chapter_result(start_server_inner(demo))
}

fn start_server_inner(demo: &mut Demo) -> Result<Outcome> {
    let mut init = demo.command("issuance-server")?;
    if demo.dir.exists() {
        fs::remove_dir_all(&demo.dir).with_context(|| format!("wiping {}", demo.dir.display()))?;
    }
    fs::create_dir_all(&demo.dir).with_context(|| format!("creating {}", demo.dir.display()))?;
    println!(
        "The demo works in DEMO={} (wiped at every start). Programs are the release builds in {}.",
        demo.dir.display(),
        demo.bins.display()
    );
    println!();
    println!(
        "The certificate office of Dongcheng district sets up its issuance server with the \
         embedded defaults: a SQLite database file in the data directory, no other service."
    );
    let data = demo.dir.join("office");
    let (_, out) = demo.exec(
        init.arg("init").arg("--data").arg(&data).args([
            "--office",
            "Dongcheng DPF",
            "--region",
            "110101",
        ]),
        &[0],
    )?;
    let admin = token_of(&out)?;
    // From here on the token is printed by name: the transcript stays the same on every run.
    demo.redact.push((admin.clone(), "$ADMIN_TOKEN".into()));
    demo.say(&out);
    println!(
        "init made the root key (a real office keeps it offline), the Issuer, StatusSigner and \
         Voucher keys certified by it, the SCP03 master key for blank cards, the personal-data \
         key, and the database:"
    );
    for sub in ["", "keys", "certs"] {
        let dir = data.join(sub);
        let mut names: Vec<String> = fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| sub.is_empty() || !n.is_empty())
            .collect();
        names.sort();
        println!("    $DEMO/office/{sub:5} {}", names.join("  "));
    }

    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let mut serve = demo.command("issuance-server")?;
    serve
        .arg("serve")
        .arg("--data")
        .arg(&data)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"));
    let mut server = demo.start(
        "the issuance server",
        &mut serve,
        &demo.dir.join("office.log"),
    )?;
    server.wait_for_port(port, Duration::from_secs(30))?;
    demo.office = Some(Office {
        server,
        url: url.clone(),
        data,
        admin,
        root_key: String::new(),
        clerk: None,
        approver: None,
    });
    let root = demo.api_ok("GET", "/api/v1/root-key", None, None)?;
    let key = text(&root["public_key"]);
    let key_id = text(&root["key_id"]);
    println!("  root key {key} (key id {key_id}): cards and terminals will trust only this key");
    if let Some(office) = demo.office.as_mut() {
        office.root_key = key;
    }
    Ok(Outcome::PassNote(format!(
        "serving on {url}, root key id {key_id}"
    )))
}

fn staff(demo: &mut Demo) -> Result<Outcome> {
    chapter_result(staff_inner(demo))
}

fn staff_inner(demo: &mut Demo) -> Result<Outcome> {
    let data = demo.office()?.data.clone();
    println!(
        "The admin gives two members of staff their accounts: Li Na registers applicants \
         (clerk), Zhang Wei decides on them (approver). Each gets a token, shown once."
    );
    let mut tokens = Vec::new();
    for (name, role, var) in [
        ("li.na", "clerk", "$CLERK_TOKEN"),
        ("zhang.wei", "approver", "$APPROVER_TOKEN"),
    ] {
        let mut cmd = demo.command("issuance-server")?;
        let (_, out) = demo.exec(
            cmd.args(["user", "add", name, "--role", role, "--data"])
                .arg(&data),
            &[0],
        )?;
        let token = token_of(&out)?;
        demo.redact.push((token.clone(), var.to_owned()));
        demo.say(&out);
        tokens.push(token);
    }
    if let Some(office) = demo.office.as_mut() {
        office.approver = tokens.pop();
        office.clerk = tokens.pop();
    }
    Ok(Outcome::PassNote(
        "clerk li.na, approver zhang.wei".to_owned(),
    ))
}

fn applicants(demo: &mut Demo) -> Result<Outcome> {
    chapter_result(applicants_inner(demo))
}

fn applicants_inner(demo: &mut Demo) -> Result<Outcome> {
    let office = demo.office()?;
    let (Some(clerk), Some(approver)) = (office.clerk.clone(), office.approver.clone()) else {
        return Ok(Outcome::Skip("the staff accounts were not made".into()));
    };
    let clerk = ("clerk li.na", clerk.as_str());
    let approver = ("approver zhang.wei", approver.as_str());
    let mut ids = Vec::new();
    for person in &PEOPLE {
        println!();
        println!(
            "Li Na registers {} ({}): {}.",
            person.name_zh, person.name_en, person.about
        );
        let v = demo.api_ok(
            "POST",
            "/api/v1/applications",
            Some(clerk),
            Some(&json!({
                "name": person.name_zh,
                "resident_id": person.resident_id,
                "category": person.category,
                "level": person.level,
                "region": person.region,
                "entitlements": person.entitlements,
            })),
        )?;
        let id = v["id"].as_i64().with_context(|| format!("no id in {v}"))?;
        println!(
            "  application {id}: state {}, certificate number {} (resident ID + category {} + level {}), born {}",
            text(&v["state"]),
            text(&v["certificate_number"]),
            person.category,
            person.level,
            text(&v["birth_year"])
        );
        ids.push(id);
    }

    println!();
    println!(
        "Li Na is a clerk: she registers, she does not decide. (The server also refuses an \
         approver or admin who decides on an application they submitted: four eyes.)"
    );
    let first = ids.first().copied().context("no application")?;
    let (status, v) = demo.api(
        "POST",
        &format!("/api/v1/applications/{first}/approve"),
        Some(clerk),
        Some(&json!({})),
    )?;
    println!(
        "  refused with {status}: {} ({})",
        text(&v["message"]),
        text(&v["code"])
    );
    let four_eyes_held = (400..500).contains(&status);

    println!();
    println!("Zhang Wei, the approver, checks both files and approves them.");
    for (person, id) in PEOPLE.iter().zip(&ids) {
        let v = demo.api_ok(
            "POST",
            &format!("/api/v1/applications/{id}/approve"),
            Some(approver),
            Some(&json!({"note": "documents checked"})),
        )?;
        println!(
            "  application {id} ({}): {} by {}",
            person.name_en,
            text(&v["state"]),
            text(&v["decided_by"])
        );
    }
    for (card, id) in demo.cards.iter_mut().zip(&ids) {
        card.application = Some(*id);
    }
    if !four_eyes_held {
        return Ok(Outcome::Warn(format!(
            "the clerk's own approval answered {status}, expected a refusal"
        )));
    }
    Ok(Outcome::PassNote(format!(
        "applications {} approved; the clerk's own approval refused ({status})",
        ids.iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// Takes the readers' lock: waits (up to ten minutes) while tests use the virtual readers.
fn lock_readers(demo: &mut Demo) -> Result<()> {
    if demo.lock.is_some() {
        return Ok(());
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(PCSC_LOCK_FILE)
        .with_context(|| format!("opening {PCSC_LOCK_FILE}"))?;
    if !FileExt::try_lock_exclusive(&file)? {
        println!(
            "Another program (probably `cargo test`) is using the virtual readers; waiting for it \
             to finish (lock {PCSC_LOCK_FILE})."
        );
        process::wait_until(Duration::from_secs(600), "the virtual readers", || {
            Ok(FileExt::try_lock_exclusive(&file)?)
        })?;
    }
    demo.lock = Some(file);
    Ok(())
}

/// `card-tool readers`, quietly.
fn readers_text(demo: &Demo) -> Result<String> {
    let mut cmd = demo.command("card-tool")?;
    process::capture(cmd.arg("readers"))
}

fn card_present(listing: &str, reader: u8) -> bool {
    let name = Demo::reader(reader);
    listing
        .lines()
        .any(|l| l.starts_with(&name) && l.contains("card present"))
}

fn virtual_cards(demo: &mut Demo) -> Result<Outcome> {
    chapter_result(virtual_cards_inner(demo))
}

fn virtual_cards_inner(demo: &mut Demo) -> Result<Outcome> {
    let data = demo.office()?.data.clone();
    demo.tool("virtual-card")?;
    demo.tool("card-tool")?;
    lock_readers(demo)?;
    let before = readers_text(demo)?;
    for person in &PEOPLE {
        if card_present(&before, person.reader) {
            bail!(
                "{} already holds a card: another virtual card runs. Stop it and run the demo \
                 again.\n{before}",
                Demo::reader(person.reader)
            );
        }
    }
    println!(
        "pcscd runs with the vpcd driver, which gives two virtual readers. A card factory loads \
         blank cards with static SCP03 keys derived from the office's master key; `virtual-card` \
         plays such a card: the real applet, its memory in a state file, behind a reader."
    );
    let cards_dir = demo.dir.join("cards");
    fs::create_dir_all(&cards_dir)?;
    for (i, person) in PEOPLE.iter().enumerate() {
        println!();
        println!(
            "A blank card for {} goes into reader {}.",
            person.name_en,
            Demo::reader(person.reader)
        );
        let state = cards_dir.join(format!("{}.card", person.id));
        let mut init = demo.command("virtual-card")?;
        demo.exec_show(
            init.arg("init")
                .arg("--state")
                .arg(&state)
                .arg("--master-key-file")
                .arg(data.join("keys").join("scp03-master.key")),
        )?;
        let mut run = demo.command("virtual-card")?;
        run.arg("run")
            .arg("--state")
            .arg(&state)
            .args(["--reader-index", &person.reader.to_string()]);
        let mut bg = demo.start(
            &format!("{}'s virtual card", person.name_en),
            &mut run,
            &cards_dir.join(format!("{}.log", person.id)),
        )?;
        let started = Instant::now();
        loop {
            bg.ensure_running()?;
            if card_present(&readers_text(demo)?, person.reader) {
                break;
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!(
                    "pcscd did not see the card in {} within 20 s{}",
                    Demo::reader(person.reader),
                    bg.log_tail(10)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        demo.cards[i].process = Some(bg);
    }
    println!();
    let mut cmd = demo.command("card-tool")?;
    demo.exec_show(cmd.arg("readers"))?;
    Ok(Outcome::PassNote(
        "two blank cards in Virtual PCD 00 00 and 00 01".to_owned(),
    ))
}

fn personalize(demo: &mut Demo) -> Result<Outcome> {
    chapter_result(personalize_inner(demo))
}

fn personalize_inner(demo: &mut Demo) -> Result<Outcome> {
    let office = demo.office()?;
    let url = office.url.clone();
    let Some(clerk) = office.clerk.clone() else {
        return Ok(Outcome::Skip("there is no clerk".into()));
    };
    let mut notes = Vec::new();
    for (i, person) in PEOPLE.iter().enumerate() {
        let (Some(app), true) = (demo.cards[i].application, demo.cards[i].process.is_some()) else {
            return Ok(Outcome::Skip(format!(
                "{}'s application or card is missing (an earlier chapter failed)",
                person.name_en
            )));
        };
        println!();
        println!(
            "Li Na personalizes {}'s card at her desk reader: card-tool opens a secure channel \
             (SCP03, level 0x33) with the card's own keys from the server's job, the card \
             generates its key pair, the server signs the credential for that key, card-tool \
             writes it and locks the card.",
            person.name_en
        );
        let mut cmd = demo.command("card-tool")?;
        let v = demo.exec_json(
            cmd.args([
                "--reader",
                &Demo::reader(person.reader),
                "--json",
                "personalize",
            ])
            .args(["--server", &url, "--token", &clerk])
            .args(["--application", &app.to_string(), "--journal"])
            .arg(demo.dir.join("journal.json")),
        )?;
        let serial = text(&v["card_serial"]);
        let seconds = v["seconds"].as_f64().unwrap_or(0.0);
        println!(
            "  card {serial} (status index {}) personalized in {} APDUs, {:.2} s; job {} completed",
            text(&v["status_index"]),
            text(&v["apdus"]),
            seconds,
            text(&v["job_id"])
        );
        notes.push(format!("{} {serial}", person.name_en));
        demo.cards[i].serial = Some(serial);
    }
    println!();
    println!(
        "A stranger's phone or reader without a terminal certificate reads Wang Fang's card \
         (skimming): it learns that this is a certificate card, nothing about her."
    );
    let mut cmd = demo.command("card-tool")?;
    demo.exec_show(cmd.args(["--reader", &Demo::reader(PEOPLE[WANG].reader), "read"]))?;
    Ok(Outcome::PassNote(notes.join(", ")))
}

fn terminals(demo: &mut Demo) -> Result<Outcome> {
    chapter_result(terminals_inner(demo))
}

fn terminals_inner(demo: &mut Demo) -> Result<Outcome> {
    let office = demo.office()?;
    let (url, admin, root) = (
        office.url.clone(),
        office.admin.clone(),
        office.root_key.clone(),
    );
    demo.tool("terminal-sim")?;
    let mut done = Vec::new();
    for (i, point) in POINTS.iter().enumerate() {
        println!();
        println!(
            "The {} terminal at {}: `init` makes its key (it never leaves the terminal), pins \
             the office's root key and registers with the admin's token, which gets a \
             root-signed certificate for the {} service only; `sync` installs the trust bundle, \
             the revocation status list and the service rules, each verified first.",
            point.service, point.what, point.service
        );
        let dir = demo.terminal_dir(i);
        let mut init = demo.command("terminal-sim")?;
        demo.exec_show(
            init.arg("--data")
                .arg(&dir)
                .args(["init", "--service", point.service, "--server", &url])
                .args(["--subject", point.subject, "--region", "110101"])
                .args(["--root-key", &root, "--admin-token", &admin]),
        )?;
        let mut sync = demo.command("terminal-sim")?;
        demo.exec_show(sync.arg("--data").arg(&dir).arg("sync"))?;
        demo.terminals[i] = true;
        done.push(point.id);
    }
    Ok(Outcome::PassNote(format!(
        "{} registered and synced",
        done.join(", ")
    )))
}

/// Skips a tap chapter unless the cards are personalized and the terminals exist.
fn ready_to_tap(demo: &Demo, points: &[usize]) -> Option<Outcome> {
    if demo.cards.iter().any(|c| c.serial.is_none()) {
        return Some(Outcome::Skip("the cards are not personalized".into()));
    }
    if let Some(p) = points.iter().find(|p| !demo.terminals[**p]) {
        return Some(Outcome::Skip(format!(
            "the {} terminal is not set up",
            POINTS[*p].id
        )));
    }
    None
}

fn transit(demo: &mut Demo) -> Result<Outcome> {
    chapter_result(transit_inner(demo))
}

fn transit_inner(demo: &mut Demo) -> Result<Outcome> {
    if let Some(skip) = ready_to_tap(demo, &[GATE]) {
        return Ok(skip);
    }
    println!(
        "The gate decides offline: the credential's issuer signature, the card's signature over \
         this tap, validity, the status list, the disclosures; then the transit rule. A gate may \
         read only the entitlements and the expiry: never a name."
    );
    let mut misses = Vec::new();
    let t = demo.tap(
        WANG,
        GATE,
        None,
        "Wang Fang, who is blind, holds her card to the gate of bus 42.",
    )?;
    check(&mut misses, "Wang Fang at the gate", &t, "accepted", "ok");
    let t = demo.tap(
        WANG,
        GATE,
        None,
        "Her companion rides free too: she holds the card to the gate again within a minute.",
    )?;
    check(
        &mut misses,
        "the companion",
        &t,
        "accepted",
        "companion_passage",
    );
    let t = demo.tap(LI, GATE, None, "Li Qiang boards the same bus.")?;
    check(&mut misses, "Li Qiang at the gate", &t, "accepted", "ok");
    Ok(verdict(
        misses,
        "free ride, companion's passage, second holder".into(),
    ))
}

fn employer_and_rehab(demo: &mut Demo) -> Result<Outcome> {
    chapter_result(employer_and_rehab_inner(demo))
}

fn employer_and_rehab_inner(demo: &mut Demo) -> Result<Outcome> {
    if let Some(skip) = ready_to_tap(demo, &[EMPLOYER, REHAB]) {
        return Ok(skip);
    }
    let mut misses = Vec::new();
    let t = demo.tap(
        LI,
        EMPLOYER,
        None,
        "Li Qiang starts a job at Huaxin Printing. The HR officer checks his certificate for the \
         disability-employment quota: this terminal may read his identity.",
    )?;
    check(
        &mut misses,
        "Li Qiang at the employer",
        &t,
        "accepted",
        "ok",
    );
    let t = demo.tap(
        LI,
        REHAB,
        None,
        "He goes to the rehabilitation centre: the centre reads category, level, region and \
         birth year (no name), checks the subsidy and records a session.",
    )?;
    check(&mut misses, "Li Qiang at rehab", &t, "accepted", "ok");
    let t = demo.tap(
        WANG,
        REHAB,
        None,
        "Wang Fang asks at the same centre; her certificate carries no rehabilitation subsidy.",
    )?;
    check(
        &mut misses,
        "Wang Fang at rehab",
        &t,
        "refused",
        "not_entitled",
    );
    Ok(verdict(
        misses,
        "identity at the employer, session at rehab, one refusal".into(),
    ))
}

fn welfare(demo: &mut Demo) -> Result<Outcome> {
    chapter_result(welfare_inner(demo))
}

fn welfare_inner(demo: &mut Demo) -> Result<Outcome> {
    if let Some(skip) = ready_to_tap(demo, &[SHOP]) {
        return Ok(skip);
    }
    let office = demo.office()?;
    let url = office.url.clone();
    let Some(approver) = office.approver.clone() else {
        return Ok(Outcome::Skip("there is no approver".into()));
    };
    let serial = demo.cards[LI].serial.clone().unwrap_or_default();
    println!(
        "Li Qiang's card holds the welfare programme's starting points. For his volunteer work \
         Zhang Wei grants him 50 more: the server signs a voucher (Voucher key, a sequence \
         number per card) and card-tool credits it to the card, which accepts each voucher once."
    );
    let mut cmd = demo.command("card-tool")?;
    let v = demo.exec_json(
        cmd.args([
            "--reader",
            &Demo::reader(PEOPLE[LI].reader),
            "--json",
            "credit",
        ])
        .args(["--server", &url, "--token", &approver])
        .args(["--serial", &serial, "--amount", "50"]),
    )?;
    let balance = v["balance"].as_u64().unwrap_or(0);
    println!(
        "  voucher #{} for {} points credited: the card's purse went from {} to {balance} points",
        text(&v["seq"]),
        text(&v["amount"]),
        balance.saturating_sub(v["amount"].as_u64().unwrap_or(0))
    );
    let mut misses = Vec::new();
    let t = demo.tap(
        LI,
        SHOP,
        Some(30),
        "At the welfare-point shop Li Qiang pays 30 points for groceries.",
    )?;
    check(&mut misses, "Li Qiang at the shop", &t, "accepted", "ok");
    let after = t.2["sees"]["debit"]["balance_after"].as_u64();
    if after != Some(balance.saturating_sub(30)) {
        misses.push(format!(
            "balance after the debit {after:?}, expected {}",
            balance.saturating_sub(30)
        ));
    }
    Ok(verdict(
        misses,
        format!(
            "credited 50, debited 30, balance {}",
            after.map_or("?".into(), |a| a.to_string())
        ),
    ))
}

fn revocation(demo: &mut Demo) -> Result<Outcome> {
    chapter_result(revocation_inner(demo))
}

fn revocation_inner(demo: &mut Demo) -> Result<Outcome> {
    if let Some(skip) = ready_to_tap(demo, &[GATE, EMPLOYER]) {
        return Ok(skip);
    }
    let Some(approver) = demo.office()?.approver.clone() else {
        return Ok(Outcome::Skip("there is no approver".into()));
    };
    let serial = demo.cards[WANG].serial.clone().unwrap_or_default();
    println!(
        "Wang Fang loses her card and calls the office. Zhang Wei revokes it: its bit in the \
         status list is set and the server signs a new list epoch and a delta."
    );
    let v = demo.api_ok(
        "POST",
        &format!("/api/v1/cards/{serial}/revoke"),
        Some(("approver zhang.wei", approver.as_str())),
        Some(&json!({"reason": "lost"})),
    )?;
    println!(
        "  card {}: {} ({})",
        text(&v["serial"]),
        text(&v["state"]),
        text(&v["revoke_reason"])
    );
    println!();
    println!("The bus gate syncs when the bus is back at the depot: only the delta travels.");
    let mut sync = demo.command("terminal-sim")?;
    let out = demo.exec_show(sync.arg("--data").arg(demo.terminal_dir(GATE)).arg("sync"))?;
    let mut misses = Vec::new();
    if !out.contains("delta_applied") {
        misses.push("the gate did not apply a delta".to_owned());
    }
    let t = demo.tap(
        WANG,
        GATE,
        None,
        "Someone who found the card holds it to the gate.",
    )?;
    check(
        &mut misses,
        "the lost card at the gate",
        &t,
        "refused",
        "revoked",
    );
    // The story runs faster than life: the back office orders taps and revocations by whole
    // seconds, so the finder's tap waits for the clock to leave the revocation's second.
    wait_past(v["revoked_at"].as_u64().unwrap_or(0));
    let t = demo.tap(
        WANG,
        EMPLOYER,
        None,
        "The employer's desk terminal has been offline since yesterday's sync: its list does not \
         know the card is revoked yet, and the list is still within the rules' age limit.",
    )?;
    check(
        &mut misses,
        "the lost card at the offline employer terminal",
        &t,
        "accepted",
        "ok",
    );
    println!(
        "  (the back office will flag this tap when the log arrives: a revoked card accepted by \
         an out-of-date terminal)"
    );
    Ok(verdict(
        misses,
        "revoked, delta synced, refused at the gate".into(),
    ))
}

fn upload(demo: &mut Demo) -> Result<Outcome> {
    chapter_result(upload_inner(demo))
}

fn upload_inner(demo: &mut Demo) -> Result<Outcome> {
    let office = demo.office()?;
    let (admin, data) = (office.admin.clone(), office.data.clone());
    if !demo.terminals.iter().any(|t| *t) {
        return Ok(Outcome::Skip("no terminal is set up".into()));
    }
    if demo.taps.is_empty() {
        return Ok(Outcome::Skip(
            "no tap happened, so there is no log to upload".into(),
        ));
    }
    println!(
        "Back online, each terminal uploads its tap log as terminal-signed batches; records are \
         freed from its flash only once the server accepted them."
    );
    for (i, point) in POINTS.iter().enumerate() {
        if !demo.terminals[i] {
            continue;
        }
        println!();
        println!("{}:", point.subject);
        let mut cmd = demo.command("terminal-sim")?;
        demo.exec_show(cmd.arg("--data").arg(demo.terminal_dir(i)).arg("upload"))?;
    }
    println!();
    println!(
        "The back office verifies each batch with the terminal's key, each receipt with the \
         card's key (into the points ledger, once), and looks for anomalies. An auditor's view \
         (no personal data):"
    );
    let s = demo.api_ok(
        "GET",
        "/api/v1/stats",
        Some(("admin", admin.as_str())),
        None,
    )?;
    println!(
        "  cards: {}   status list epoch {}, {} revoked of {}",
        s["cards"], s["status_epoch"], s["revoked"], s["status_size"]
    );
    println!(
        "  terminals: {}   receipts in the points ledger: {}   anomalies: {}",
        s["terminals"], s["receipts"], s["anomalies"]
    );
    println!("  usage:  day         service      region   taps  accepted");
    for u in s["usage"].as_array().into_iter().flatten() {
        // A cell of fewer than 5 distinct cards is withheld by the server: with two holders
        // in the story, every cell is.
        let (taps, accepted) = if u["suppressed"] == true {
            ("withheld (fewer than 5 cards)".to_owned(), String::new())
        } else {
            (text(&u["taps"]), text(&u["accepted"]))
        };
        println!(
            "          {}  {:11}  {:7}  {:>4}  {:>8}",
            text(&u["date"]),
            text(&u["service"]),
            text(&u["region"]),
            taps,
            accepted
        );
    }
    println!();
    println!("Every change at the office went into a hash-chained audit log; anyone can check it:");
    let mut cmd = demo.command("issuance-server")?;
    let audit = demo.exec_show(cmd.args(["audit", "verify", "--data"]).arg(&data))?;
    let mut misses = Vec::new();
    if s["receipts"].as_u64() != Some(1) {
        misses.push(format!(
            "{} receipts in the ledger, expected 1",
            s["receipts"]
        ));
    }
    // Exactly one tap is suspect: the lost card accepted by the employer's out-of-date terminal
    // after the revocation (its taps before the revocation were fine).
    match s["anomalies"].as_u64() {
        Some(1) => {}
        Some(0) => {
            misses.push("the revoked card's tap at the offline terminal was not flagged".into())
        }
        n => misses.push(format!(
            "{} anomalies flagged, expected 1 (the lost card at the offline employer terminal)",
            n.map_or_else(|| "?".to_owned(), |n| n.to_string())
        )),
    }
    if !audit.contains("intact") {
        misses.push("the audit chain is not reported intact".into());
    }
    Ok(verdict(
        misses,
        format!(
            "{} receipts, {} anomalies, audit chain intact",
            s["receipts"], s["anomalies"]
        ),
    ))
}

fn tap_table(demo: &mut Demo) -> Result<Outcome> {
    if demo.taps.is_empty() {
        return Ok(Outcome::Skip("no tap happened".into()));
    }
    println!(
        "  #  {:10} {:24} {:9} {:18} voice prompt (en)",
        "holder", "service point", "outcome", "reason"
    );
    for (i, t) in demo.taps.iter().enumerate() {
        println!(
            "{:>3}  {:10} {:24} {:9} {:18} {}",
            i + 1,
            t.who,
            t.point,
            t.outcome,
            t.reason,
            t.voice_en
        );
    }
    let accepted = demo.taps.iter().filter(|t| t.outcome == "accepted").count();
    Ok(Outcome::PassNote(format!(
        "{} taps, {accepted} accepted",
        demo.taps.len()
    )))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_story_starts_with_the_parts_and_titles_are_unique() {
        assert_eq!(STORY[0].0, "the parts and how far each is built");
        let mut titles: Vec<&str> = STORY.iter().map(|c| c.0).collect();
        titles.sort_unstable();
        titles.dedup();
        assert_eq!(titles.len(), STORY.len());
    }

    #[test]
    fn every_folder_exists_in_the_repository() {
        let root = workspace::root();
        for folder in FOLDERS {
            assert!(root.join(folder).is_dir(), "{folder} is missing");
        }
    }

    #[test]
    fn dates_are_civil_dates() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(date(1_795_437_800), "2026-11-23");
        assert_eq!(date(4_107_542_400), "2100-03-01");
    }

    #[test]
    fn tokens_are_read_from_the_servers_output() {
        let init = "office 1 created in /d\nadmin user: admin\n\
                    admin token (shown once, store it now): 05ab\n";
        assert_eq!(token_of(init).unwrap(), "05ab");
        assert!(token_of("nothing\n").is_err());
    }

    #[test]
    fn taps_are_put_in_words() {
        let steady = json!({"color": "green", "on_ms": 1500, "off_ms": 0, "repeat": 1});
        assert_eq!(light_words(&steady), "green light, steady 1500 ms");
        let blink = json!({"color": "red", "on_ms": 250, "off_ms": 250, "repeat": 3});
        assert_eq!(
            light_words(&blink),
            "red light, blinks 3x (250 ms on, 250 ms off)"
        );
        let tones = json!([{"hz": 392, "ms": 150}, {"hz": 0, "ms": 100}]);
        assert_eq!(tone_words(&tones), "392 Hz 150 ms, pause 100 ms");
        assert_eq!(tone_words(&json!([])), "silent");
        let holder = json!({"entitlements": ["free_transit", "companion"],
                            "certificate_expiry": 1_795_437_800u64});
        assert_eq!(
            holder_words(&holder),
            vec![
                (
                    "entitlements".to_owned(),
                    "free_transit, companion".to_owned()
                ),
                ("valid until".to_owned(), "2026-11-23".to_owned())
            ]
        );
    }

    #[test]
    fn the_readers_listing_tells_which_reader_holds_a_card() {
        let listing = "Virtual PCD 00 00: card present, ATR 3b88\nVirtual PCD 00 01: no card\n";
        assert!(card_present(listing, 0));
        assert!(!card_present(listing, 1));
    }

    #[test]
    fn a_missing_program_is_not_yet_and_a_broken_one_fails() {
        let dir = std::env::temp_dir().join(format!("xtask-demo-locate-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("card-tool"), b"").unwrap();
        let package = |name: &str, bin: &str| Package {
            name: name.to_owned(),
            dir: dir.clone(),
            targets: vec![workspace::Target {
                name: bin.to_owned(),
                kinds: vec!["bin".to_owned()],
                required_features: Vec::new(),
            }],
        };
        let packages = vec![
            package("card-tool", "card-tool"),
            package("terminal-sim", "terminal-sim"),
            package("virtual-card", "virtual-card"),
        ];
        let broken = vec![("virtual-card".to_owned(), "error[E0308]".to_owned())];
        assert_eq!(
            locate(&packages, &broken, &dir, "card-tool").unwrap(),
            dir.join("card-tool")
        );
        // Not in the workspace: the chapter is NOT YET, not a failure.
        let r = chapter_result(
            locate(&packages, &broken, &dir, "issuance-server").map(|_| Outcome::Pass),
        );
        assert!(matches!(r, Ok(Outcome::NotYet(_))), "{r:?}");
        // Declared but broken, or missing after the build: a failure that says why.
        let e =
            chapter_result(locate(&packages, &broken, &dir, "virtual-card").map(|_| Outcome::Pass))
                .unwrap_err();
        assert!(
            e.to_string().contains("does not build: error[E0308]"),
            "{e}"
        );
        let e =
            chapter_result(locate(&packages, &broken, &dir, "terminal-sim").map(|_| Outcome::Pass))
                .unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_stop_outcome_is_not_a_failure() {
        let r = chapter_result(Err(outcome_error(Outcome::NotYet("x".into()))));
        assert_eq!(r.unwrap(), Outcome::NotYet("x".into()));
        assert!(chapter_result(Err(anyhow::anyhow!("broken"))).is_err());
    }

    #[test]
    fn people_have_valid_resident_ids() {
        const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
        for p in &PEOPLE {
            let b = p.resident_id.as_bytes();
            let sum: u32 = b[..17]
                .iter()
                .zip(W)
                .map(|(c, w)| u32::from(c - b'0') * w)
                .sum();
            assert_eq!(b[17], b"10X98765432"[(sum % 11) as usize], "{}", p.name_en);
        }
    }
}
