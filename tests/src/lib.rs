//! End-to-end tests across parts: the shared harness.
//!
//! Everything here drives the real components as separate processes: pcscd with the vpcd
//! driver, `virtual-card`, `card-tool`, `issuance-server`. The pieces:
//!
//! * [`PcscLock`]: pcscd, its socket and the vpcd ports are machine-wide, so every test that uses
//!   them holds this cross-process lock (an `flock` on `/tmp/pcsc-tests.lock`) for its whole run.
//! * [`ensure_pcscd`]: starts `pcscd -f` when none runs (and leaves it running for the next test
//!   binary; `cargo xtask test` starts its own and exports `PCSCD_RUNNING=1`).
//! * [`binary`]: the path of a workspace binary, built once per test process with the target
//!   directory and profile of the running test (derived from `current_exe`).
//! * [`Proc`]: a child process with its output in a log file, stopped when dropped.
//! * [`VirtualCard`]: a card state file and a `virtual-card run` process on one vpcd reader.
//! * [`Server`]: an `issuance-server` on a free loopback port with its own data directory,
//!   staff users and their tokens, and a small HTTP client.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod proxy;
pub mod terminal;

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use fs4::fs_std::FileExt;

/// The vpcd driver's first reader listens here, the second on the next port.
pub const VPCD_PORT: u16 = 35963;

/// The lock file every PC/SC test shares (any crate, any process).
pub const PCSC_LOCK_FILE: &str = "/tmp/pcsc-tests.lock";

/// The name pcscd gives vpcd reader `index` (0 or 1).
pub fn reader_name(index: u8) -> String {
    format!("Virtual PCD 00 {index:02}")
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(Path::to_path_buf).unwrap_or(here)
}

/// The shared test vectors (`../shared/vectors` from the workspace root).
pub fn vectors_dir() -> PathBuf {
    workspace_root().join("../shared/vectors")
}

// ---------------------------------------------------------------------------------------------
// The machine-wide PC/SC lock and pcscd

/// Held while a test uses pcscd and the vpcd readers; released on drop.
pub struct PcscLock {
    file: File,
}

impl PcscLock {
    /// Waits for the lock (other tests, other test binaries, other crates' tests).
    pub fn acquire() -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(PCSC_LOCK_FILE)
            .with_context(|| format!("opening {PCSC_LOCK_FILE}"))?;
        FileExt::lock_exclusive(&file).with_context(|| format!("locking {PCSC_LOCK_FILE}"))?;
        Ok(PcscLock { file })
    }
}

impl Drop for PcscLock {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.file);
    }
}

/// Takes the PC/SC lock and makes sure pcscd runs with the vpcd readers. Every PC/SC test starts
/// with this and keeps the guard to its end.
pub fn pcsc_session() -> Result<PcscLock> {
    let lock = PcscLock::acquire()?;
    ensure_pcscd()?;
    Ok(lock)
}

/// True when some socket listens on TCP `port`, read from the kernel's tables (the source of
/// `ss -ltn`): connecting to the vpcd port to find out would insert a card.
pub fn port_listening(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        fs::read_to_string(table).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                matches!((f.get(1), f.get(3)), (Some(local), Some(&"0A"))
                    if local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port))
            })
        })
    })
}

fn pcscd_running() -> bool {
    fs::read_dir("/proc").is_ok_and(|entries| {
        entries.flatten().any(|e| {
            fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim_end() == "pcscd")
                && fs::read_to_string(e.path().join("stat")).is_ok_and(|s| {
                    s.rsplit(')')
                        .next()
                        .is_some_and(|r| !r.trim_start().starts_with('Z'))
                })
        })
    })
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Makes sure pcscd runs and its vpcd reader listens. Starts `pcscd -f` in the background when
/// none runs; it is left running (pcscd is a machine service; the next test binary reuses it).
/// Call it with the [`PcscLock`] held, so that two tests never start two.
pub fn ensure_pcscd() -> Result<()> {
    if std::env::var_os("PCSCD_RUNNING").is_none() && !pcscd_running() {
        let pcscd = find_program("pcscd")
            .context("pcscd is not installed: apt-get install pcscd vsmartcard-vpcd")?;
        let log = std::env::temp_dir().join("pcscd-tests.log");
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        Command::new(pcscd)
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting pcscd -f")?;
    }
    wait_until(
        Duration::from_secs(15),
        "pcscd's vpcd reader on port 35963",
        || Ok(port_listening(VPCD_PORT)),
    )
    .context("is vsmartcard-vpcd installed? (its driver makes pcscd listen on 35963)")
}

/// Polls `ready` every 20 ms until it says yes or `limit` passes.
pub fn wait_until(
    limit: Duration,
    what: &str,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if ready()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Workspace binaries

/// The profile directory of the running test or example (`target/debug` for
/// `target/debug/deps/t-…`, `target/release` for `target/release/examples/bench_…`).
pub fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test binary")?;
    let deps = exe.parent().context("test binary has no directory")?;
    // Tests and benches live in `deps`, examples in `examples`.
    let dir = if deps
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
    {
        deps.parent().context("deps has no parent")?
    } else {
        deps
    };
    Ok(dir.to_path_buf())
}

/// The path of binary `bin` of workspace package `package`, built once per process (a no-op
/// when it is up to date) into the target directory and profile of the running tests, so a
/// test never runs a stale binary. With `E2E_NO_BUILD=1` the binary must already exist.
pub fn binary(package: &str, bin: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let profile = profile_dir()?;
    let path = profile.join(bin);
    let built = BUILT.get_or_init(|| Mutex::new(HashSet::new()));
    let mut built = built.lock().map_err(|_| anyhow!("binary lock poisoned"))?;
    if built.contains(bin) {
        return Ok(path);
    }
    if std::env::var_os("E2E_NO_BUILD").is_none() || !path.is_file() {
        let target = profile
            .parent()
            .context("profile directory has no parent")?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", package, "--bin", bin])
            .arg("--target-dir")
            .arg(target)
            .current_dir(workspace_root());
        if profile.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let out = cmd
            .output()
            .with_context(|| format!("running cargo build -p {package}"))?;
        if !out.status.success() {
            bail!(
                "cargo build -p {package} --bin {bin} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    if !path.is_file() {
        bail!("{} does not exist after building", path.display());
    }
    built.insert(bin.to_owned());
    Ok(path)
}

/// A command for `card-tool`, with no reader, server or token leaking in from the environment.
pub fn card_tool() -> Result<Command> {
    let mut cmd = Command::new(binary("card-tool", "card-tool")?);
    for var in [
        "CARD_TOOL_READER",
        "CARD_TOOL_SERVER",
        "CARD_TOOL_TOKEN",
        "CARD_TOOL_JOURNAL",
    ] {
        cmd.env_remove(var);
    }
    // The tests match card-tool's English texts, whatever the machine's locale.
    cmd.env("CARD_TOOL_LANG", "en");
    Ok(cmd)
}

/// Runs `cmd` to the end with a time limit and returns its output.
pub fn run_output(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let dir = tempfile::tempdir()?;
    let out_path = dir.path().join("out");
    let err_path = dir.path().join("err");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{cmd:?} did not finish within {limit:?}; stderr:\n{}",
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: fs::read(&out_path)?,
        stderr: fs::read(&err_path)?,
    })
}

/// Runs `cmd` (60 s limit) and requires success; returns stdout.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = run_output(cmd, Duration::from_secs(60))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` (60 s limit) and requires failure; returns stderr.
pub fn run_fails(cmd: &mut Command) -> Result<String> {
    let out = run_output(cmd, Duration::from_secs(60))?;
    if out.status.success() {
        bail!(
            "{cmd:?} succeeded but should have failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A background process whose output goes to a log file; stopped (killed) when dropped.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The output so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Fails (with the log) when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its output:\n{}",
                self.name,
                self.log()
            );
        }
        Ok(())
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                bail!("{} still runs after {limit:?}", self.name);
            }
            sleep(Duration::from_millis(10));
        }
    }

    /// Kills the process (SIGKILL: the components under test must survive it) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free TCP port on loopback (bound, then released: a small race other users of the machine
/// could win; the server's start-up check catches it).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

// ---------------------------------------------------------------------------------------------
// PC/SC observation

/// What pcscd says about `reader` now: its event counter (pcscd bumps it at every insertion and
/// removal it notices) and whether a powered-up card is in it.
pub fn reader_state(reader: &str) -> Result<(u32, bool)> {
    let ctx = pcsc::Context::establish(pcsc::Scope::User).context("connecting to pcscd")?;
    reader_state_in(&ctx, &CString::new(reader)?)
}

fn reader_state_in(ctx: &pcsc::Context, name: &CString) -> Result<(u32, bool)> {
    let mut states = [pcsc::ReaderState::new(name.clone(), pcsc::State::UNAWARE)];
    match ctx.get_status_change(Duration::ZERO, &mut states) {
        Ok(()) | Err(pcsc::Error::Timeout) => {}
        Err(pcsc::Error::UnknownReader) => return Ok((0, false)),
        Err(e) => return Err(e.into()),
    }
    let s = states[0].event_state();
    let present = s.contains(pcsc::State::PRESENT) && !s.contains(pcsc::State::MUTE);
    Ok((states[0].event_count(), present))
}

/// Waits until pcscd reports a card in `reader` (`present`) or none (`!present`).
///
/// This is the reader's state as pcscd last saw it: right after a card vanished pcscd may not
/// have noticed yet (it polls every 400 ms). To wait for a change, use [`wait_card_events`].
pub fn wait_card(reader: &str, present: bool, limit: Duration) -> Result<()> {
    wait_card_events(reader, 0, 0, present, limit)
}

/// Waits until pcscd counted at least `events` insertions and removals in `reader` since its
/// event counter read `since` (see [`reader_state`]), and then reports a card (`present`) or
/// none.
pub fn wait_card_events(
    reader: &str,
    since: u32,
    events: u32,
    present: bool,
    limit: Duration,
) -> Result<()> {
    let ctx = pcsc::Context::establish(pcsc::Scope::User).context("connecting to pcscd")?;
    let name = CString::new(reader)?;
    wait_until(
        limit,
        &format!("{events} card events and card present={present} in {reader}"),
        || {
            let (count, has) = reader_state_in(&ctx, &name)?;
            // The counter is 16 bits wide in pcsc-lite.
            let moved = count.wrapping_sub(since) & 0xFFFF;
            Ok(moved >= events && has == present)
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Virtual cards

/// A virtual card: its state file, and while running, the `virtual-card` process on one vpcd
/// reader.
pub struct VirtualCard {
    /// The state file.
    pub state: PathBuf,
    /// The vpcd reader index (0 or 1).
    pub index: u8,
    proc: Option<Proc>,
}

impl VirtualCard {
    /// Makes a blank card in `state` whose static SCP03 keys are diversified from `master`
    /// (`div_data` random when `None`).
    pub fn init_blank(state: &Path, master: &[u8; 16], div_data: Option<[u8; 10]>) -> Result<()> {
        let mut cmd = Command::new(binary("virtual-card", "virtual-card")?);
        cmd.arg("init")
            .arg("--state")
            .arg(state)
            .arg("--master-key")
            .arg(hex::encode(master))
            .arg("--force");
        if let Some(d) = div_data {
            cmd.arg("--div-data").arg(hex::encode(d));
        }
        run_ok(&mut cmd)?;
        Ok(())
    }

    /// Inserts the card in `state` into vpcd reader `index` (starts `virtual-card run` with
    /// `extra` arguments, e.g. `--tear-after 3`) and waits until pcscd sees it.
    pub fn insert(state: &Path, index: u8, extra: &[&str]) -> Result<Self> {
        let log = state.with_extension("log");
        let mut cmd = Command::new(binary("virtual-card", "virtual-card")?);
        // Power and reset events in the log help when a test fails.
        cmd.env("RUST_LOG", "virtual_card=debug")
            .arg("run")
            .arg("--state")
            .arg(state)
            .arg("--reader-index")
            .arg(index.to_string())
            .args(extra);
        let reader = reader_name(index);
        // The reader must be empty in pcscd's eyes first, or the insertion would not be seen.
        wait_card(&reader, false, Duration::from_secs(10))
            .context("the reader still holds a card")?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (since, _) = reader_state(&reader)?;
            let mut proc = Proc::spawn("virtual-card", &mut cmd, &log)?;
            match wait_card_events(&reader, since, 1, true, Duration::from_secs(5)) {
                Ok(()) => {
                    return Ok(VirtualCard {
                        state: state.to_owned(),
                        index,
                        proc: Some(proc),
                    })
                }
                // pcscd's vpcd reader occasionally misses a card that arrives while it is still
                // winding up the previous one; a real operator would put the card on again.
                Err(e) if attempt < 3 => {
                    proc.check_alive()?;
                    eprintln!("{reader}: {e:#}; inserting the card again");
                    proc.kill();
                    wait_card(&reader, false, Duration::from_secs(10))?;
                }
                Err(e) => {
                    proc.check_alive()?;
                    return Err(e.context(format!("virtual-card output:\n{}", proc.log())));
                }
            }
        }
    }

    /// pcscd's event counter of this card's reader (see [`wait_card_events`]).
    pub fn events(&self) -> Result<u32> {
        Ok(reader_state(&self.reader())?.0)
    }

    /// Waits until the card, torn away after the event counter read `since`, is back: pcscd saw
    /// it leave and come again.
    pub fn wait_back(&self, since: u32) -> Result<()> {
        wait_card_events(&self.reader(), since, 2, true, Duration::from_secs(10))
            .with_context(|| format!("the card did not come back; its log:\n{}", self.log()))
    }

    /// The reader's name.
    pub fn reader(&self) -> String {
        reader_name(self.index)
    }

    /// The virtual card's output so far.
    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log).unwrap_or_default()
    }

    /// Removes the card (kills the process) and waits until pcscd sees the reader empty.
    pub fn remove(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.kill();
            wait_card(&self.reader(), false, Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// Fails (with the log) if the process died.
    pub fn check_alive(&mut self) -> Result<()> {
        match &mut self.proc {
            Some(p) => p.check_alive(),
            None => bail!("the virtual card is not inserted"),
        }
    }
}

impl Drop for VirtualCard {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
            // The next test must not find this card still in the reader.
            let _ = wait_card(&reader_name(self.index), false, Duration::from_secs(5));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The issuance server

/// An issuance server with its own data directory on a free loopback port.
pub struct Server {
    /// Base URL (`http://127.0.0.1:PORT`, or `https://localhost:PORT` after
    /// [`Server::serve_tls`]).
    pub url: String,
    /// The data directory.
    pub data: PathBuf,
    /// The admin token `init` printed.
    pub admin_token: String,
    _dir: tempfile::TempDir,
    proc: Option<Proc>,
    agent: ureq::Agent,
    tls: Option<ServerTls>,
}

/// The files of a server that serves HTTPS ([`Server::serve_tls`]).
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The office CA's certificate (PEM): what clients are given with `--ca-cert`.
    pub ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// Makes a throw-away office CA and a server certificate it signed for `localhost` and
/// 127.0.0.1 in `dir` (the way a district office without a public certificate runs HTTPS).
pub fn make_office_ca(dir: &Path) -> Result<ServerTls> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Test certificate office CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let mut leaf =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "issuance server");
    let cert = leaf.signed_by(&key, &issuer)?;
    let tls = ServerTls {
        ca: dir.join("office-ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    std::fs::write(&tls.ca, ca_cert.pem())?;
    std::fs::write(&tls.cert, cert.pem())?;
    std::fs::write(&tls.key, key.serialize_pem())?;
    Ok(tls)
}

/// A client agent for the harness: plain, or trusting only `ca` (PEM file).
fn harness_agent(ca: Option<&Path>) -> Result<ureq::Agent> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca)?;
        let cert = Certificate::from_pem(&pem)?.to_owned();
        config = config.tls_config(
            TlsConfig::builder()
                .root_certs(RootCerts::new_with_certs(&[cert]))
                .build(),
        );
    }
    Ok(config.build().into())
}

/// Pulls the bearer token out of what `issuance-server init` / `user add` print: on the first
/// line that mentions a token, the single word after its last colon.
pub fn parse_token(stdout: &str) -> Option<String> {
    stdout.lines().find_map(|line| {
        if !line.to_ascii_lowercase().contains("token") {
            return None;
        }
        let (_, after) = line.rsplit_once(':')?;
        let t = after.trim();
        (!t.is_empty() && !t.contains(char::is_whitespace)).then(|| t.to_owned())
    })
}

/// A valid 18-character resident ID (GB 11643-1999) for test applicant `n`: region 110101, a
/// birth date in 1950..1999 and a sequence number derived from `n`, and the MOD 11-2 check
/// character. Different `n` (below 50 * 365 * 1000) give different IDs.
pub fn resident_id(n: u32) -> String {
    let seq = n % 1000;
    let day = n / 1000;
    let year = 1950 + (day / 365) % 50;
    let doy = day % 365;
    const MONTHS: [u32; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let (mut month, mut d) = (0usize, doy);
    while d >= MONTHS[month] {
        d -= MONTHS[month];
        month += 1;
    }
    let body = format!("110101{year:04}{:02}{:02}{seq:03}", month + 1, d + 1);
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = body
        .bytes()
        .zip(W)
        .map(|(c, w)| u32::from(c - b'0') * w)
        .sum();
    let check = b"10X98765432"[(sum % 11) as usize] as char;
    format!("{body}{check}")
}

/// A "photo" the server accepts: the PNG signature and a few bytes (base64), so that the
/// credential covers every attribute, the photo digest included.
pub const TEST_PHOTO_BASE64: &str = "iVBORw0KGgp0ZXN0IGhvbGRlciBwaG90bw==";

/// The JSON of a new application for test applicant `n` with every entitlement and a photo, so
/// that the card holds all nine attributes (the largest taps).
pub fn applicant(n: u32) -> serde_json::Value {
    serde_json::json!({
        "photo": TEST_PHOTO_BASE64,
        "name": format!("Test Holder {n}"),
        "resident_id": resident_id(n),
        "category": 1 + (n % 7),
        "level": 1 + (n % 4),
        "region": 110101,
        "entitlements": ["free_transit", "companion", "rehab_subsidy", "quota_employment",
                         "welfare_points"],
    })
}

/// A command for `issuance-server` on the default SQLite database whatever the environment says.
fn server_command() -> Result<Command> {
    let mut cmd = Command::new(binary("issuance-server", "issuance-server")?);
    cmd.env_remove("DATABASE_URL").env_remove("ISSUANCE_DATA");
    Ok(cmd)
}

impl Server {
    /// Initializes a data directory and starts the server on a free port; waits for `/healthz`.
    pub fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let out = run_ok(server_command()?.arg("init").arg("--data").arg(&data))?;
        let admin_token = parse_token(&out)
            .with_context(|| format!("no token in the output of issuance-server init:\n{out}"))?;
        let mut server = Server {
            url: String::new(),
            data,
            admin_token,
            _dir: dir,
            proc: None,
            agent: harness_agent(None)?,
            tls: None,
        };
        server.serve()?;
        Ok(server)
    }

    /// (Re)starts `issuance-server serve` on a fresh port.
    pub fn serve(&mut self) -> Result<()> {
        self.serve_on(free_port()?)
    }

    /// Restarts the server serving HTTPS with a certificate from a new office CA (on a fresh
    /// port; `url` becomes `https://localhost:PORT`); returns the files, whose `ca` clients
    /// are given with `--ca-cert`.
    pub fn serve_tls(&mut self) -> Result<ServerTls> {
        let dir = self.data.with_file_name("tls");
        std::fs::create_dir_all(&dir)?;
        let tls = make_office_ca(&dir)?;
        self.agent = harness_agent(Some(&tls.ca))?;
        self.tls = Some(tls.clone());
        self.serve()?;
        Ok(tls)
    }

    /// (Re)starts `issuance-server serve` on `port` (the same URL as before a stop).
    pub fn serve_on(&mut self, port: u16) -> Result<()> {
        self.stop();
        let listen = format!("127.0.0.1:{port}");
        let log = self.data.with_extension("log");
        let mut cmd = server_command()?;
        cmd.arg("serve")
            .arg("--data")
            .arg(&self.data)
            .arg("--listen")
            .arg(&listen);
        if let Some(tls) = &self.tls {
            cmd.arg("--tls-cert")
                .arg(&tls.cert)
                .arg("--tls-key")
                .arg(&tls.key);
        }
        let mut proc = Proc::spawn("issuance-server", &mut cmd, &log)?;
        self.url = if self.tls.is_some() {
            format!("https://localhost:{port}")
        } else {
            format!("http://{listen}")
        };
        let health = format!("{}/healthz", self.url);
        let agent = self.agent.clone();
        let ready = wait_until(Duration::from_secs(20), "the server's /healthz", || {
            proc.check_alive()?;
            Ok(agent
                .get(&health)
                .call()
                .is_ok_and(|r| r.status().as_u16() == 200))
        });
        if let Err(e) = ready {
            return Err(e.context(format!("server output:\n{}", proc.log())));
        }
        self.proc = Some(proc);
        Ok(())
    }

    /// Stops the server (the data directory stays).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// The server's output so far.
    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log).unwrap_or_default()
    }

    /// The office's SCP03 master key (what a card manufacturer would get to load blank cards).
    pub fn scp03_master(&self) -> Result<[u8; 16]> {
        let p = self.data.join("keys").join("scp03-master.key");
        let bytes = fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        bytes
            .try_into()
            .map_err(|_| anyhow!("{} is not 16 bytes", p.display()))
    }

    /// Adds a staff user with `role` (clerk, approver, auditor, admin) and returns its token.
    pub fn add_user(&self, name: &str, role: &str) -> Result<String> {
        let out = run_ok(
            server_command()?
                .args(["user", "add", name, "--role", role, "--data"])
                .arg(&self.data),
        )?;
        parse_token(&out).with_context(|| format!("no token in the output of user add:\n{out}"))
    }

    /// A JSON call: `(status, body)`. `token` is sent as a bearer token.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value)> {
        let url = format!("{}{path}", self.url);
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut resp = match method {
            "GET" => {
                let mut r = self.agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()?
            }
            _ => {
                let mut r = self.agent.post(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                match body {
                    Some(b) => r.send_json(b)?,
                    None => r.send_empty()?,
                }
            }
        };
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string()?;
        let value = if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        Ok((status, value))
    }

    /// A call that must succeed (2xx); returns the JSON body.
    pub fn ok(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let (status, v) = self.call(method, path, Some(token), body.as_ref())?;
        if !(200..300).contains(&status) {
            bail!("{method} {path} answered {status}: {v}");
        }
        Ok(v)
    }

    /// A clerk submits `application` and an approver (another person) approves it; returns
    /// the application id.
    pub fn approved_application(
        &self,
        clerk: &str,
        approver: &str,
        application: serde_json::Value,
    ) -> Result<i64> {
        let v = self.ok("POST", "/api/v1/applications", clerk, Some(application))?;
        let id = v["id"]
            .as_i64()
            .with_context(|| format!("no id in the application answer: {v}"))?;
        self.ok(
            "POST",
            &format!("/api/v1/applications/{id}/approve"),
            approver,
            Some(serde_json::json!({})),
        )?;
        Ok(id)
    }

    /// Raw bytes of a GET.
    pub fn get_bytes(&self, path: &str) -> Result<Vec<u8>> {
        let mut r = self.agent.get(format!("{}{path}", self.url)).call()?;
        if r.status().as_u16() != 200 {
            bail!("GET {path} answered {}", r.status());
        }
        Ok(r.body_mut().with_config().limit(64 << 20).read_to_vec()?)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// An office: a server with staff, and blank cards made from its SCP03 master key

/// A running office: the server, an admin, a clerk and an approver, and a directory for cards.
pub struct Office {
    /// The server.
    pub server: Server,
    /// Admin token.
    pub admin: String,
    /// Clerk token (applications, personalization).
    pub clerk: String,
    /// Approver token (another person than the clerk: four eyes).
    pub approver: String,
    /// A scratch directory (card state files, keys, journals).
    pub dir: tempfile::TempDir,
    next_applicant: std::sync::atomic::AtomicU32,
}

impl Office {
    /// Starts a server with a fresh office and its staff.
    pub fn start() -> Result<Self> {
        let server = Server::start()?;
        let clerk = server.add_user("clerk1", "clerk")?;
        let approver = server.add_user("approver1", "approver")?;
        let admin = server.admin_token.clone();
        // Applicant numbers differ between offices of one test run, so resident IDs never repeat
        // even if two tests share a database some day.
        let seed = std::process::id() % 1000 * 1000;
        Ok(Office {
            server,
            admin,
            clerk,
            approver,
            dir: tempfile::tempdir()?,
            next_applicant: std::sync::atomic::AtomicU32::new(seed),
        })
    }

    /// A new approved application (every entitlement); returns its id.
    pub fn application(&self) -> Result<i64> {
        let n = self
            .next_applicant
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.server
            .approved_application(&self.clerk, &self.approver, applicant(n))
    }

    /// A blank card state file `NAME.card` with keys from this office's master key.
    pub fn blank_card(&self, name: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(format!("{name}.card"));
        VirtualCard::init_blank(&path, &self.server.scp03_master()?, None)?;
        Ok(path)
    }

    /// A path in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `card-tool personalize` of `application` on vpcd reader `index`, with this office's server
    /// and clerk token and a journal in the scratch directory. Not run yet.
    pub fn personalize_cmd(&self, index: u8, application: i64) -> Result<Command> {
        let mut cmd = card_tool()?;
        cmd.arg("--reader")
            .arg(reader_name(index))
            .arg("--json")
            .arg("personalize")
            .arg("--server")
            .arg(&self.server.url)
            .arg("--token")
            .arg(&self.clerk)
            .arg("--application")
            .arg(application.to_string())
            .arg("--journal")
            .arg(self.path("journal.json"));
        Ok(cmd)
    }

    /// Makes a terminal key and registers it for `services`; returns (key file, cert file).
    pub fn terminal(&self, name: &str, services: &str) -> Result<(PathBuf, PathBuf)> {
        let key = self.path(&format!("{name}.key"));
        let cert = self.path(&format!("{name}.cert"));
        run_ok(card_tool()?.arg("keygen").arg("--out").arg(&key))?;
        run_ok(
            card_tool()?
                .arg("register-terminal")
                .arg("--server")
                .arg(&self.server.url)
                .arg("--token")
                .arg(&self.admin)
                .arg("--key")
                .arg(&key)
                .arg("--services")
                .arg(services)
                .arg("--subject")
                .arg(name)
                .arg("--out")
                .arg(&cert),
        )?;
        Ok((key, cert))
    }
}

/// Parses the JSON object a `--json` command printed.
pub fn json_of(stdout: &str) -> Result<serde_json::Value> {
    serde_json::from_str(stdout.trim()).with_context(|| format!("not JSON: {stdout}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_in_cli_output() {
        let init = "office 1 created in /d\nadmin user: admin\n\
                    admin token (shown once, store it now): abc.DEF-012\n";
        assert_eq!(parse_token(init).as_deref(), Some("abc.DEF-012"));
        let add = "user alice (clerk) added\ntoken (shown once, give it to alice): t0k3n\n";
        assert_eq!(parse_token(add).as_deref(), Some("t0k3n"));
        assert_eq!(parse_token("nothing here\n"), None);
        assert_eq!(parse_token("token: two words\n"), None);
    }

    #[test]
    fn resident_ids_are_valid_and_distinct() {
        let ids: HashSet<String> = (0..3000).map(|n| resident_id(n * 7)).collect();
        assert_eq!(ids.len(), 3000);
        for id in &ids {
            shared_crypto::certno::ResidentId::parse(id).unwrap_or_else(|e| panic!("{id}: {e}"));
        }
    }

    #[test]
    fn the_profile_directory_is_where_the_binaries_go() {
        let p = profile_dir().unwrap();
        assert!(p.join("deps").is_dir(), "{}", p.display());
    }

    #[test]
    fn port_listening_sees_a_listener_and_not_a_closed_port() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(port_listening(port));
        drop(l);
        assert!(!port_listening(port));
    }
}
