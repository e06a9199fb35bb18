//! Process helpers shared by every subcommand (and meant for the demo's later steps):
//!
//! * [`run`], [`run_with_timeout`], [`capture`], [`succeeds`]: run a command with its command line
//!   shown first, so the output reads as a transcript a person could repeat by hand;
//! * [`Background`]: a service (pcscd, a server, a virtual card) kept alive for the length of a run
//!   and stopped, together with any children it spawned, when the guard is dropped — also when a
//!   step fails or panics;
//! * [`port_listening`], [`wait_until`]: readiness checks that never connect to the port (a
//!   connection to the vpcd port counts as a card insertion, see ENVIRONMENT.md).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long a stopped process gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(5);
/// How often readiness and exit are polled.
const POLL: Duration = Duration::from_millis(50);

/// The command line as a person would type it: `(in DIR) VAR=value program arg 'arg with space'`.
pub fn show(cmd: &Command) -> String {
    let mut parts = Vec::new();
    if let Some(dir) = cmd.get_current_dir() {
        parts.push(format!("(in {})", dir.display()));
    }
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            parts.push(format!("{}={}", key.to_string_lossy(), quote(value)));
        }
    }
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

/// Shell-style quoting, only where a word needs it.
fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// "exited with status 3" or "was killed by signal 9".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended ({status})"),
    }
}

fn check(status: ExitStatus, cmd: &Command) -> Result<()> {
    if status.success() {
        Ok(())
    } else {
        bail!("`{}` {}", show(cmd), describe(status))
    }
}

fn start_error(cmd: &Command) -> String {
    format!("could not start `{}`", cmd.get_program().to_string_lossy())
}

/// Runs `cmd` with inherited output after printing its command line; an unsuccessful exit is an error.
pub fn run(cmd: &mut Command) -> Result<()> {
    println!("$ {}", show(cmd));
    let status = cmd.status().with_context(|| start_error(cmd))?;
    check(status, cmd)
}

/// Like [`run`], but stops the command (and its children) when it outlives `limit`.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Result<()> {
    println!("$ {}    (time limit {} s)", show(cmd), limit.as_secs());
    let mut child = cmd.spawn().with_context(|| start_error(cmd))?;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return check(status, cmd);
        }
        if Instant::now() >= deadline {
            terminate_tree(&mut child);
            bail!(
                "`{}` did not finish within {} s and was stopped",
                show(cmd),
                limit.as_secs()
            );
        }
        sleep(POLL);
    }
}

/// Runs `cmd` quietly and returns its standard output; on failure the error carries its stderr.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| start_error(cmd))?;
    if !out.status.success() {
        bail!(
            "`{}` {}: {}",
            show(cmd),
            describe(out.status),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True when `cmd` can be started and exits successfully; all its output is discarded.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Finds an executable on `PATH`, then in the sbin directories a non-root `PATH` may lack
/// (`pcscd` lives in /usr/sbin).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Polls `ready` until it says yes or `limit` passes; `what` names the awaited condition in the error.
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
            bail!("timed out after {} s waiting for {what}", limit.as_secs());
        }
        sleep(POLL);
    }
}

/// True when some socket listens on TCP `port` (any address, IPv4 or IPv6).
///
/// This reads the kernel's socket tables, the same source as `ss -ltn`, and works without
/// iproute2 installed. It never connects: a connection to the vpcd port would insert a card.
pub fn port_listening(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        fs::read_to_string(table).is_ok_and(|text| listening_ports(&text).contains(&port))
    })
}

/// The ports in LISTEN state (`st` = 0A) of a /proc/net/tcp table.
fn listening_ports(table: &str) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state) = (fields.get(1)?, fields.get(3)?);
            if *state != "0A" {
                return None;
            }
            u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
        })
        .collect()
}

/// The ids of running processes whose command name (`/proc/PID/comm`) is `name`.
pub fn pids_named(name: &str) -> Vec<u32> {
    process_table()
        .into_iter()
        .filter(|p| p.state != 'Z' && p.comm == name)
        .map(|p| p.pid)
        .collect()
}

struct ProcessInfo {
    pid: u32,
    ppid: u32,
    state: char,
    comm: String,
}

fn process_table() -> Vec<ProcessInfo> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            let (state, ppid) = parse_stat(&stat)?;
            let comm = fs::read_to_string(entry.path().join("comm")).ok()?;
            Some(ProcessInfo {
                pid,
                ppid,
                state,
                comm: comm.trim_end().to_owned(),
            })
        })
        .collect()
}

/// State and parent id from a /proc/PID/stat line. The command name sits in parentheses and may
/// itself contain spaces and parentheses, so the fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(char, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// All descendants of `root`, children before grandchildren.
fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for p in process_table() {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            found.push(child);
            queue.push(child);
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| parse_stat(&stat))
        .is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// Sends `signal` (TERM, KILL) through the shell's `kill`, which every Debian system has.
fn signal(pids: &[u32], signal: &str) {
    if pids.is_empty() {
        return;
    }
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    let _ = succeeds(
        Command::new("sh")
            .arg("-c")
            .arg(format!("kill -s {signal} {}", list.join(" "))),
    );
}

/// Stops `child` and everything it spawned: SIGTERM first (pcscd then removes its socket and pid
/// file, so the next start is clean), SIGKILL after [`GRACE`]; reaps `child`.
fn terminate_tree(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let root = child.id();
    let mut tree = descendants(root);
    tree.push(root);
    signal(&tree, "TERM");
    let deadline = Instant::now() + GRACE;
    loop {
        let root_done = matches!(child.try_wait(), Ok(Some(_)));
        let rest_done = tree.iter().all(|&pid| pid == root || !alive(pid));
        if root_done && rest_done {
            return;
        }
        if Instant::now() >= deadline {
            break;
        }
        sleep(POLL);
    }
    let left: Vec<u32> = tree
        .into_iter()
        .filter(|&pid| pid != root && alive(pid))
        .collect();
    signal(&left, "KILL");
    let _ = child.kill();
    let _ = child.wait();
}

/// A background process that lives as long as this guard. Dropping the guard stops the process
/// and its children, so a failed step or a panic cannot leave a service running.
pub struct Background {
    name: String,
    child: Child,
    log: Option<PathBuf>,
    stopped: bool,
}

impl Background {
    /// Starts `cmd` in the background. With a `log` path its stdout and stderr go to that file
    /// (created afresh); without one they are shown inline.
    pub fn start(name: &str, cmd: &mut Command, log: Option<&Path>) -> Result<Self> {
        let shown = match log {
            Some(log) => format!("{} &    (output in {})", show(cmd), log.display()),
            None => format!("{} &", show(cmd)),
        };
        Self::start_shown(name, cmd, log, &shown)
    }

    /// [`Background::start`], printing `$ shown` as the command line (the demo shortens paths
    /// and hides tokens in what it prints).
    pub fn start_shown(
        name: &str,
        cmd: &mut Command,
        log: Option<&Path>,
        shown: &str,
    ) -> Result<Self> {
        cmd.stdin(Stdio::null());
        if let Some(log) = log {
            if let Some(dir) = log.parent() {
                fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
            cmd.stdout(file.try_clone()?).stderr(file);
        }
        println!("$ {shown}");
        let child = cmd.spawn().with_context(|| start_error(cmd))?;
        println!("started {name} (pid {})", child.id());
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.map(Path::to_path_buf),
            stopped: false,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error (with the end of the log) if the process has already exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            self.stopped = true;
            bail!(
                "{} stopped by itself: it {}{}",
                self.name,
                describe(status),
                self.log_tail(15)
            );
        }
        Ok(())
    }

    /// Waits until TCP `port` listens, failing early if the process exits first.
    pub fn wait_for_port(&mut self, port: u16, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if port_listening(port) {
                return Ok(());
            }
            self.ensure_running()?;
            if Instant::now() >= deadline {
                bail!(
                    "{} did not listen on port {port} within {} s{}",
                    self.name,
                    limit.as_secs(),
                    self.log_tail(15)
                );
            }
            sleep(POLL);
        }
    }

    /// The last `lines` lines of the log file, formatted to append to a message (empty without a log).
    pub fn log_tail(&self, lines: usize) -> String {
        let Some(log) = &self.log else {
            return String::new();
        };
        let text = fs::read_to_string(log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n    ");
        format!("\n  last lines of {}:\n    {tail}", log.display())
    }

    /// Stops the process now (the same as dropping the guard, but explicit at the call site).
    pub fn stop(self) {}
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        terminate_tree(&mut self.child);
        println!("stopped {} (pid {})", self.name, self.child.id());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn show_quotes_only_what_needs_it() {
        let mut cmd = Command::new("cargo");
        cmd.args(["run", "--example", "a b", "it's"])
            .env("BENCH_OUT", "/t/x.json")
            .current_dir("/tmp");
        assert_eq!(
            show(&cmd),
            r"(in /tmp) BENCH_OUT=/t/x.json cargo run --example 'a b' 'it'\''s'"
        );
        assert_eq!(show(&Command::new("")), "''");
    }

    #[test]
    fn listening_ports_reads_only_listen_rows() {
        let table = "  sl  local_address rem_address   st tx_queue\n\
            0: 00000000:8C7B 00000000:0000 0A 00000000:00000000\n\
            1: 0100007F:1538 0100007F:D2F0 01 00000000:00000000\n\
            2: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 0\n\
            garbage\n";
        assert_eq!(listening_ports(table), vec![35963, 8080]);
    }

    #[test]
    fn port_listening_sees_a_real_listener_and_its_end() {
        // Other test processes on the machine open listeners on ephemeral ports too, and one may
        // take the port the moment it is freed; so the end is checked on a few fresh ports, and
        // one clean observation is required.
        let mut ended = false;
        for _ in 0..5 {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            assert!(port_listening(port));
            drop(listener);
            if !port_listening(port) {
                ended = true;
                break;
            }
        }
        assert!(ended, "a closed listener still shows as listening");
    }

    #[test]
    fn parse_stat_handles_parentheses_in_the_name() {
        assert_eq!(parse_stat("42 (a) b)) S 7 42 42 0"), Some(('S', 7)));
        assert_eq!(parse_stat("42 (x) Z 1"), Some(('Z', 1)));
        assert_eq!(parse_stat("42 no parens"), None);
        assert_eq!(parse_stat("42 (x) S notanumber"), None);
    }

    #[test]
    fn run_reports_failure_and_missing_programs() {
        assert!(run(&mut Command::new("true")).is_ok());
        let err = run(Command::new("sh").args(["-c", "exit 3"])).unwrap_err();
        assert!(err.to_string().contains("exited with status 3"), "{err}");
        assert!(run(&mut Command::new("/nonexistent/xtask-test")).is_err());
    }

    #[test]
    fn capture_returns_stdout_or_stderr_in_the_error() {
        assert_eq!(capture(Command::new("echo").arg("hi")).unwrap(), "hi\n");
        let err = capture(Command::new("sh").args(["-c", "echo broken >&2; exit 1"])).unwrap_err();
        assert!(err.to_string().contains("broken"), "{err}");
    }

    #[test]
    fn run_with_timeout_stops_a_command_that_runs_too_long() {
        let started = Instant::now();
        let err = run_with_timeout(Command::new("sleep").arg("30"), Duration::from_millis(300))
            .unwrap_err();
        assert!(err.to_string().contains("did not finish"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(run_with_timeout(&mut Command::new("true"), Duration::from_secs(10)).is_ok());
        assert!(run_with_timeout(&mut Command::new("false"), Duration::from_secs(10)).is_err());
    }

    #[test]
    fn dropping_a_background_guard_stops_the_process_and_its_children() {
        let dir = std::env::temp_dir().join(format!("xtask-test-{}", std::process::id()));
        let log = dir.join("bg.log");
        // The shell starts a grandchild and waits for it: both must be gone after the drop.
        let mut bg = Background::start(
            "sleeper",
            Command::new("sh").args(["-c", "echo started; sleep 30 & wait"]),
            Some(&log),
        )
        .unwrap();
        let shell = bg.pid();
        wait_until(Duration::from_secs(5), "the grandchild", || {
            Ok(!descendants(shell).is_empty())
        })
        .unwrap();
        let grandchild = descendants(shell)[0];
        bg.ensure_running().unwrap();
        assert!(alive(shell) && alive(grandchild));
        drop(bg);
        assert!(!alive(shell), "shell still alive");
        wait_until(Duration::from_secs(5), "the grandchild to end", || {
            Ok(!alive(grandchild))
        })
        .unwrap();
        assert!(fs::read_to_string(&log).unwrap().contains("started"));
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn background_reports_an_early_exit_with_its_log() {
        let dir = std::env::temp_dir().join(format!("xtask-test-early-{}", std::process::id()));
        let log = dir.join("bg.log");
        let mut bg = Background::start(
            "quitter",
            Command::new("sh").args(["-c", "echo cannot open device; exit 2"]),
            Some(&log),
        )
        .unwrap();
        let err = bg
            .wait_for_port(1, Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(err.contains("exited with status 2"), "{err}");
        assert!(err.contains("cannot open device"), "{err}");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn pids_named_finds_a_running_process() {
        let mut bg = Background::start("sleeper", Command::new("sleep").arg("30"), None).unwrap();
        assert!(pids_named("sleep").contains(&bg.pid()));
        assert!(pids_named("no-such-process-name-xtask").is_empty());
        bg.ensure_running().unwrap();
    }

    #[test]
    fn find_program_finds_sh_and_not_nonsense() {
        assert!(find_program("sh").is_some());
        assert!(find_program("no-such-program-xtask").is_none());
    }
}
