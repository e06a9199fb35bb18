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

/// Checks that `url` is one the terminal may talk to and returns it without a trailing `/`:
/// `https://` to any host, or plain `http://` to this machine only.
///
/// Plain HTTP is acceptable on loopback only: every object is signed, but the admin token of
/// `init` is not, and the tap log names cards and places.
pub fn server_base(url: &str) -> Result<String> {
    if let Some(rest) = url.strip_prefix("https://") {
        let host = host_of(rest);
        if host.is_empty() {
            bail!("server URL {url:?} names no host");
        }
        return Ok(url.trim_end_matches('/').to_owned());
    }
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        anyhow!(
            "server URL {url:?} must start with https:// (or http:// for a server on this \
             machine, 127.0.0.1)"
        )
    })?;
    let host = host_of(rest);
    let loopback = host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback());
    if !loopback {
        bail!(
            "server URL {url:?} is plain HTTP to another machine: use https:// (with \
             --ca-cert for the office's own CA), or http:// only to a server on this machine \
             (127.0.0.1, ::1 or localhost)"
        );
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// The host of `authority[/path]` (without port or IPv6 brackets).
fn host_of(rest: &str) -> &str {
    let authority = rest.split('/').next().unwrap_or("");
    if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    }
}

/// Parses the office CA's PEM file (one or more certificates), for `init --ca-cert`.
pub fn parse_ca(pem: &[u8]) -> Result<Vec<ureq::tls::Certificate<'static>>> {
    let certs = ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c.to_owned())),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("the CA file is not valid PEM: {e}"))?;
    if certs.is_empty() {
        bail!("the CA file holds no certificate (expected -----BEGIN CERTIFICATE-----)");
    }
    Ok(certs)
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
    /// A client for the server at `base` ([`server_base`] rules). With `ca_pem` an `https://`
    /// server must present a certificate from that CA (the office's own) and no other; without,
    /// one from the public CAs built into this program.
    pub fn new(base: &str, ca_pem: Option<&[u8]>) -> Result<Self> {
        use ureq::tls::{RootCerts, TlsConfig};
        let base = server_base(base)?;
        let tls = base.starts_with("https://");
        if ca_pem.is_some() && !tls {
            bail!("a CA certificate is only used with an https:// server, not {base}");
        }
        let roots = match ca_pem {
            Some(pem) => RootCerts::new_with_certs(&parse_ca(pem)?),
            None => RootCerts::WebPki,
        };
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .tls_config(TlsConfig::builder().root_certs(roots).build());
        if !tls {
            // Never through a proxy from the environment: the server is on this machine.
            config = config.proxy(None);
        }
        let agent: ureq::Agent = config.build().into();
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
    fn https_anywhere_and_http_on_loopback_are_accepted_and_normalized() {
        for (url, base) in [
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
            ("http://localhost:3000", "http://localhost:3000"),
            ("http://[::1]:3000/", "http://[::1]:3000"),
            ("http://127.1.2.3", "http://127.1.2.3"),
            ("https://127.0.0.1:8443", "https://127.0.0.1:8443"),
            ("https://office.example.org/", "https://office.example.org"),
            ("https://[2001:db8::1]:443", "https://[2001:db8::1]:443"),
        ] {
            assert_eq!(server_base(url).unwrap(), base);
        }
    }

    #[test]
    fn plain_http_off_loopback_and_malformed_urls_are_refused() {
        for url in [
            "http://10.0.0.1:8080",
            "http://example.org",
            "http://127.0.0.1.example.org",
            "http://[2001:db8::1]:80",
            "127.0.0.1:8080",
            "ftp://127.0.0.1",
            "http://",
            "https://",
            "https://:8443",
        ] {
            assert!(server_base(url).is_err(), "{url}");
        }
        let e = server_base("http://10.0.0.1:8080").unwrap_err().to_string();
        assert!(e.contains("https://") && e.contains("--ca-cert"), "{e}");
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate_and_needs_https() {
        assert!(parse_ca(b"not pem").is_err());
        let key_only =
            b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
        let e = parse_ca(key_only).unwrap_err().to_string();
        assert!(e.contains("no certificate"), "{e}");
        let e = HttpServer::new("http://127.0.0.1:1", Some(b"x"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("only used with an https://"), "{e}");
    }
}
