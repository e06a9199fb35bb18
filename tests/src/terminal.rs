//! `terminal-sim` as the end-to-end tests drive it: a terminal data directory, registered with an
//! office's server (or a proxy in front of it), and its commands with their `--json` answers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{binary, json_of, run_ok, run_output, Office};

/// A `terminal-sim` data directory.
pub struct Terminal {
    /// The data directory.
    pub dir: PathBuf,
    /// Its service (`transit`, `employment`, `rehab`, `welfare`).
    pub service: String,
}

/// A command for `terminal-sim` with nothing leaking in from the environment.
pub fn terminal_sim() -> Result<Command> {
    let mut cmd = Command::new(binary("terminal-sim", "terminal-sim")?);
    for var in [
        "TERMINAL_SIM_DATA",
        "TERMINAL_SIM_SERVER",
        "TERMINAL_SIM_ADMIN_TOKEN",
        "TERMINAL_SIM_READER",
    ] {
        cmd.env_remove(var);
    }
    // The tests match English messages (a tap's voice stays zh-CN: the variable sets only the
    // messages' language).
    cmd.env("TERMINAL_SIM_LANG", "en");
    Ok(cmd)
}

impl Terminal {
    /// Creates a terminal for `service` in the office's scratch directory, registered with the
    /// admin token at `server` (the office's URL, or a proxy's).
    pub fn register(office: &Office, name: &str, service: &str, server: &str) -> Result<Self> {
        let dir = office.path(name);
        run_ok(
            terminal_sim()?
                .arg("--data")
                .arg(&dir)
                .args(["--json", "init", "--service", service, "--server", server])
                .args(["--subject", name, "--admin-token", &office.admin]),
        )?;
        Ok(Terminal {
            dir,
            service: service.to_owned(),
        })
    }

    /// A registered terminal that has synced once.
    pub fn ready(office: &Office, name: &str, service: &str) -> Result<Self> {
        let t = Self::register(office, name, service, &office.server.url)?;
        t.sync()?;
        Ok(t)
    }

    /// A command on this terminal's data directory, `--json` on.
    pub fn command(&self) -> Result<Command> {
        let mut cmd = terminal_sim()?;
        cmd.arg("--data").arg(&self.dir).arg("--json");
        Ok(cmd)
    }

    /// `sync`, which must succeed; its report.
    pub fn sync(&self) -> Result<Value> {
        json_of(&run_ok(self.command()?.arg("sync"))?)
    }

    /// `sync` whatever its exit status: (success, report printed on stdout, stderr).
    pub fn sync_output(&self) -> Result<(bool, Value, String)> {
        let out = run_output(self.command()?.arg("sync"), Duration::from_secs(60))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let report = if stdout.trim().is_empty() {
            Value::Null
        } else {
            json_of(&stdout)?
        };
        Ok((
            out.status.success(),
            report,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// One tap on `reader` (a debit of `amount` for welfare); the report of a decision (exit
    /// status 0 accepted, 2 refused, 3 ask staff). Any other status is an error.
    pub fn tap(&self, reader: &str, amount: Option<u32>) -> Result<Value> {
        let mut cmd = self.command()?;
        cmd.args(["tap", "--reader", reader]);
        if let Some(a) = amount {
            cmd.args(["--amount", &a.to_string()]);
        }
        let out: Output = run_output(&mut cmd, Duration::from_secs(60))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let code = out.status.code();
        if !matches!(code, Some(0 | 2 | 3)) {
            bail!(
                "terminal-sim tap ended with {:?}:\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let report = json_of(&stdout)?;
        // The exit status and the report agree.
        let expected = match report["outcome"].as_str() {
            Some("accepted") => 0,
            Some("refused") => 2,
            Some("ask_staff") => 3,
            other => bail!("unknown outcome {other:?} in {report}"),
        };
        if code != Some(expected) {
            bail!("exit status {code:?} for {report}");
        }
        Ok(report)
    }

    /// `upload`, which must succeed; its report.
    pub fn upload(&self) -> Result<Value> {
        json_of(&run_ok(self.command()?.arg("upload"))?)
    }

    /// `status`; its report.
    pub fn status(&self) -> Result<Value> {
        json_of(&run_ok(self.command()?.arg("status"))?)
    }

    /// The terminal's private key file (hex; `card-tool tap --terminal-key` reads it).
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("terminal.key")
    }

    /// The terminal's root-signed certificate file.
    pub fn cert_file(&self) -> PathBuf {
        self.dir.join("terminal.cert")
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

/// `(outcome, reason)` of a tap report.
pub fn decision(report: &Value) -> Result<(String, String)> {
    let outcome = report["outcome"]
        .as_str()
        .with_context(|| format!("no outcome in {report}"))?;
    let reason = report["reason"]
        .as_str()
        .with_context(|| format!("no reason in {report}"))?;
    Ok((outcome.to_owned(), reason.to_owned()))
}
