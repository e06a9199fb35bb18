//! The command line: `init`, `serve`, `user add`, `audit verify`, `reissue --all`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

use crate::auth::Role;

const ABOUT: &str = "The certificate office's issuance server for smart disability certificates.";

const LONG_ABOUT: &str = "\
The certificate office's issuance server for smart disability certificates.

An office runs it like this:
  1. issuance-server init --data /var/lib/issuance --office \"Dongcheng DPF\" --region 110101
     creates the keys, the database and the first admin account (its token is printed once).
  2. issuance-server serve --data /var/lib/issuance
     serves the API on 127.0.0.1:8080 (JSON under /api/v1; OpenAPI at /api/v1/openapi.json).
  3. issuance-server user add alice --role clerk --data /var/lib/issuance
     gives each member of staff a token: clerk, approver, auditor or admin.
  4. Clerks register applicants; an approver who is not the submitter approves them (four-eyes
     rule); card-tool personalizes the cards through personalization jobs.
  5. issuance-server audit verify --data /var/lib/issuance checks the audit chain.

The database is the SQLite file DIR/issuance.db unless DATABASE_URL names PostgreSQL
(postgres://user@host/db). Keys live in DIR/keys (mode 0600); keep DIR backed up, and keep
the root key offline in production (see docs/server.md).";

/// Command line of `issuance-server`.
#[derive(Debug, Parser)]
#[command(name = "issuance-server", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the office lives.
#[derive(Debug, Clone, Args)]
pub struct Place {
    /// The office's data directory (keys, configuration, and the SQLite database by default).
    #[arg(long, value_name = "DIR", env = "ISSUANCE_DATA")]
    pub data: PathBuf,
    /// PostgreSQL instead of the SQLite file: postgres://user@host:port/database.
    #[arg(long, value_name = "URL", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new office: root key, Issuer, StatusSigner and Voucher keys certified by the
    /// root, SCP03 master key, personal-data key, database and a first admin account.
    ///
    /// Refuses, changing nothing, if DIR exists and is not empty or the database already belongs
    /// to an office. Prints the admin's token once: store it now.
    Init {
        /// Where the office lives.
        #[command(flatten)]
        place: Place,
        /// Office name, used in key-certificate subjects (at most 32 bytes).
        #[arg(long, default_value = "Certificate office")]
        office: String,
        /// The office's 6-digit administrative division code (0 = national).
        #[arg(long, default_value_t = 0)]
        region: u32,
        /// Login name of the first admin.
        #[arg(long, default_value = "admin")]
        admin: String,
    },
    /// Serve the HTTP API until SIGTERM or SIGINT (requests in flight finish first).
    Serve {
        /// Where the office lives.
        #[command(flatten)]
        place: Place,
        /// Address and port to listen on. Plain HTTP only on loopback (127.0.0.1, ::1, e.g.
        /// behind a TLS-terminating proxy on this machine); any other address needs --tls-cert
        /// and --tls-key.
        #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
        listen: SocketAddr,
        /// Serve HTTPS with this certificate (PEM: the server's certificate first, then its
        /// chain). Clients trust it through the office's CA (`card-tool --ca-cert`,
        /// `terminal-sim init --ca-cert`).
        #[arg(long, value_name = "PEM", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key of --tls-cert (PEM, PKCS#8, SEC1 or PKCS#1). Keep it readable by the
        /// server's user only.
        #[arg(long, value_name = "PEM", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Manage staff accounts.
    User {
        /// What to do with users.
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Check the audit log.
    Audit {
        /// What to do with the audit log.
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Re-sign the credential of every active card (new validity, or a new Issuer key), on all
    /// cores, written in large transactions.
    Reissue {
        /// Where the office lives.
        #[command(flatten)]
        place: Place,
        /// Re-issue for every active card (required: it is a mass operation).
        #[arg(long)]
        all: bool,
        /// Validity of the new credentials from now, in days (default: the office setting).
        #[arg(long)]
        validity_days: Option<u32>,
        /// Signing threads (default: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
}

/// `user` subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a member of staff and print their token (shown once).
    Add {
        /// Login name (A-Z a-z 0-9 . _ @ -).
        name: String,
        /// clerk: applications and personalization; approver: decisions, revocations,
        /// vouchers; auditor: audit log and statistics; admin: everything.
        #[arg(long, value_enum)]
        role: Role,
        /// Where the office lives.
        #[command(flatten)]
        place: Place,
    },
}

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the whole chain; report the first edited, inserted or deleted row (exit status 1).
    Verify {
        /// Where the office lives.
        #[command(flatten)]
        place: Place,
    },
}

/// Runs a parsed command line; returns the process exit status.
pub async fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Init {
            place,
            office,
            region,
            admin,
        } => {
            let outcome = crate::office::init(&crate::office::InitOptions {
                data: place.data.clone(),
                database_url: place.database_url.clone(),
                office,
                region,
                admin: admin.clone(),
            })
            .await?;
            println!(
                "office {} created in {}",
                outcome.office_id,
                place.data.display()
            );
            println!("admin user: {admin}");
            println!(
                "admin token (shown once, store it now): {}",
                outcome.admin_token
            );
            Ok(0)
        }
        Command::Serve {
            place,
            listen,
            tls_cert,
            tls_key,
        } => {
            // Checked before the office is opened: a refused start touches nothing.
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => Some(crate::server::tls_config(&cert, &key)?),
                _ => {
                    crate::server::check_plain_http(listen)?;
                    None
                }
            };
            let state = crate::office::open(&place.data, place.database_url.as_deref()).await?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
            crate::server::serve(state, listener, tls).await?;
            Ok(0)
        }
        Command::User {
            command: UserCommand::Add { name, role, place },
        } => {
            let state = crate::office::open(&place.data, place.database_url.as_deref()).await?;
            let token = crate::office::add_user(&state, &name, role).await?;
            state.db.close().await;
            println!("user {name} ({}) added", role.name());
            println!("token (shown once, give it to {name}): {token}");
            Ok(0)
        }
        Command::Audit {
            command: AuditCommand::Verify { place },
        } => {
            let state = crate::office::open(&place.data, place.database_url.as_deref()).await?;
            let result = crate::audit::verify(state.db.pool()).await?;
            state.db.close().await;
            match result {
                Ok(v) => {
                    println!(
                        "audit chain intact: {} rows, head hash {}",
                        v.rows, v.head_hash
                    );
                    Ok(0)
                }
                Err(broken) => {
                    println!("AUDIT CHAIN BROKEN: {broken}");
                    Ok(1)
                }
            }
        }
        Command::Reissue {
            place,
            all,
            validity_days,
            threads,
        } => {
            if !all {
                bail!("re-issue needs --all (it re-signs the credential of every active card)");
            }
            let state = crate::office::open(&place.data, place.database_url.as_deref()).await?;
            let days = validity_days.unwrap_or(state.config.credential_validity_days);
            let report = crate::batch::reissue_all(
                &state,
                "cli",
                crate::batch::ReissueOptions {
                    validity_s: u64::from(days) * 86_400,
                    threads,
                    ..Default::default()
                },
            )
            .await?;
            state.db.close().await;
            println!(
                "re-issued {} credentials in {:.2} s ({:.0} per second)",
                report.credentials,
                report.elapsed.as_secs_f64(),
                report.rate()
            );
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
