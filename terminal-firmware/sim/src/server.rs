//! The issuance server as the terminal sees it: signed objects to download, its own registration,
//! and log upload (the HTTP API of `docs/protocol.md`, under `/api/v1`).
//!
//! [`Distribution`] is the seam: [`HttpServer`] talks to a real server; tests put an in-memory
//! authority behind it. Nothing fetched is trusted: the core verifies every object before it is
//! installed.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

/// An answer that may be "nothing new".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetched {
    /// The object (wire bytes of a `Signed<…>`).
    Body(Vec<u8>),
    /// 304: what the terminal has is current.
    NotModified,
    /// 410: the server cannot build a delta from that epoch; fetch the full list.
    Gone,
}

/// `POST /api/v1/terminals` body.
#[derive(Clone, Debug, Serialize)]
pub struct Registration<'a> {
    /// Certificate subject.
    pub subject: &'a str,
    /// The terminal's public key (hex, compressed).
    pub public_key: &'a str,
    /// Service names.
    pub services: Vec<&'a str>,
    /// Region code (0 = national).
    pub region: u32,
}

/// `POST /api/v1/terminals` answer.
#[derive(Clone, Debug, Deserialize)]
pub struct Registered {
    /// The server's id of the terminal.
    pub terminal_id: i64,
    /// Key id (hex).
    pub key_id: String,
    /// Root-signed Terminal certificate (hex of the wire bytes).
    pub certificate: String,
}

/// `POST /api/v1/terminals/{key_id}/logs` answer.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub struct UploadAnswer {
    /// Records accepted.
    pub accepted: u64,
    /// The batch had been uploaded before (nothing new stored).
    pub duplicate: bool,
}

/// `GET /api/v1/root-key` answer.
#[derive(Clone, Debug, Deserialize)]
pub struct RootKey {
    /// Compressed public key (hex).
    pub public_key: String,
    /// Its key id (hex).
    pub key_id: String,
}

/// What the terminal asks of the server.
pub trait Distribution {
    /// The root public key (only ever used at `init`, then pinned).
    fn root_key(&mut self) -> Result<RootKey>;
    /// The trust bundle.
    fn trust_bundle(&mut self) -> Result<Vec<u8>>;
    /// The full status list; `NotModified` when `current` is still the server's epoch.
    fn status_list(&mut self, current: Option<u64>) -> Result<Fetched>;
    /// The delta from epoch `from` to the server's current epoch.
    fn status_delta(&mut self, from: u64) -> Result<Fetched>;
    /// The service rules.
    fn service_rules(&mut self) -> Result<Vec<u8>>;
    /// Registers a terminal key (admin token).
    fn register(&mut self, admin_token: &str, req: &Registration<'_>) -> Result<Registered>;
    /// Uploads a signed log batch.
    fn upload_logs(&mut self, key_id_hex: &str, batch: &[u8]) -> Result<UploadAnswer>;
}

/// Largest object accepted from the server (the status-list slot is 2 MiB).
pub const MAX_OBJECT: u64 = 4 << 20;

/// Checks that `url` names a server on this machine and returns it without a trailing `/`.
///
/// The host terminal talks plain HTTP: that is only acceptable on loopback (every object is
/// signed, but the admin token of `init` is not).
pub fn loopback_base(url: &str) -> Result<String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        anyhow!("server URL {url:?} must start with http:// and name this machine (127.0.0.1)")
    })?;
    let authority = rest.split('/').next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    let loopback = host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback());
    if !loopback {
        bail!(
            "server URL {url:?} is not on this machine: terminal-sim only talks to a server on \
             loopback (127.0.0.1, ::1 or localhost)"
        );
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// The issuance server over HTTP.
pub struct HttpServer {
    api: String,
    agent: ureq::Agent,
}

#[derive(Deserialize)]
struct ApiError {
    code: String,
    message: String,
}

impl HttpServer {
    /// A client for the server at `base` (must be loopback).
    pub fn new(base: &str) -> Result<Self> {
        let base = loopback_base(base)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Never through a proxy from the environment: the server is on this machine.
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Ok(Self {
            api: format!("{base}/api/v1"),
            agent,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    /// Turns a non-2xx answer into an error carrying the server's own explanation.
    fn refusal(what: &str, resp: &mut ureq::http::Response<ureq::Body>) -> anyhow::Error {
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 10)
            .read_to_string()
            .unwrap_or_default();
        match serde_json::from_str::<ApiError>(&text) {
            Ok(e) => anyhow!(
                "{what}: the server answered {status} {}: {}",
                e.code,
                e.message
            ),
            Err(_) => anyhow!("{what}: the server answered {status} {}", text.trim()),
        }
    }

    fn get_object(&self, what: &str, path: &str, etag: Option<u64>) -> Result<Fetched> {
        let mut req = self.agent.get(self.url(path));
        if let Some(e) = etag {
            req = req.header("If-None-Match", format!("\"{e}\""));
        }
        let mut resp = req
            .call()
            .with_context(|| format!("{what}: cannot reach the server at {}", self.api))?;
        match resp.status().as_u16() {
            200 => Ok(Fetched::Body(
                resp.body_mut()
                    .with_config()
                    .limit(MAX_OBJECT)
                    .read_to_vec()
                    .with_context(|| format!("{what}: reading the answer"))?,
            )),
            304 => Ok(Fetched::NotModified),
            410 => Ok(Fetched::Gone),
            _ => Err(Self::refusal(what, &mut resp)),
        }
    }

    fn must_body(what: &str, f: Fetched) -> Result<Vec<u8>> {
        match f {
            Fetched::Body(b) => Ok(b),
            other => bail!("{what}: unexpected answer {other:?}"),
        }
    }
}

impl Distribution for HttpServer {
    fn root_key(&mut self) -> Result<RootKey> {
        let mut resp = self
            .agent
            .get(self.url("/root-key"))
            .call()
            .with_context(|| format!("root key: cannot reach the server at {}", self.api))?;
        if resp.status().as_u16() != 200 {
            return Err(Self::refusal("root key", &mut resp));
        }
        resp.body_mut()
            .with_config()
            .limit(64 << 10)
            .read_json()
            .context("root key: the answer is not the expected JSON")
    }

    fn trust_bundle(&mut self) -> Result<Vec<u8>> {
        Self::must_body(
            "trust bundle",
            self.get_object("trust bundle", "/trust-bundle", None)?,
        )
    }

    fn status_list(&mut self, current: Option<u64>) -> Result<Fetched> {
        self.get_object("status list", "/status-list", current)
    }

    fn status_delta(&mut self, from: u64) -> Result<Fetched> {
        self.get_object(
            "status delta",
            &format!("/status-list/delta?from={from}"),
            Some(from),
        )
    }

    fn service_rules(&mut self) -> Result<Vec<u8>> {
        Self::must_body(
            "service rules",
            self.get_object("service rules", "/service-rules", None)?,
        )
    }

    fn register(&mut self, admin_token: &str, req: &Registration<'_>) -> Result<Registered> {
        let mut resp = self
            .agent
            .post(self.url("/terminals"))
            .header("Authorization", format!("Bearer {admin_token}"))
            .send_json(req)
            .with_context(|| format!("registration: cannot reach the server at {}", self.api))?;
        if resp.status().as_u16() != 201 && resp.status().as_u16() != 200 {
            return Err(Self::refusal("registration", &mut resp));
        }
        resp.body_mut()
            .with_config()
            .limit(64 << 10)
            .read_json()
            .context("registration: the answer is not the expected JSON")
    }

    fn upload_logs(&mut self, key_id_hex: &str, batch: &[u8]) -> Result<UploadAnswer> {
        let mut resp = self
            .agent
            .post(self.url(&format!("/terminals/{key_id_hex}/logs")))
            .header("Content-Type", "application/octet-stream")
            .send(batch)
            .with_context(|| format!("log upload: cannot reach the server at {}", self.api))?;
        if !resp.status().is_success() {
            return Err(Self::refusal("log upload", &mut resp));
        }
        resp.body_mut()
            .with_config()
            .limit(64 << 10)
            .read_json()
            .context("log upload: the answer is not the expected JSON")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_are_accepted_and_normalized() {
        for (url, base) in [
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
            ("http://localhost:3000", "http://localhost:3000"),
            ("http://[::1]:3000/", "http://[::1]:3000"),
            ("http://127.1.2.3", "http://127.1.2.3"),
        ] {
            assert_eq!(loopback_base(url).unwrap(), base);
        }
    }

    #[test]
    fn remote_or_tls_urls_are_refused() {
        for url in [
            "https://127.0.0.1:8080",
            "http://10.0.0.1:8080",
            "http://example.org",
            "http://127.0.0.1.example.org",
            "http://[2001:db8::1]:80",
            "127.0.0.1:8080",
            "http://",
        ] {
            assert!(loopback_base(url).is_err(), "{url}");
        }
    }
}
