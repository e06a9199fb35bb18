//! The issuance server as the terminal sees it: signed objects to download, its own registration,
//! and log upload (the HTTP API of `docs/protocol.md`, under `/api/v1`).
//!
//! [`Distribution`] is the seam: [`HttpServer`] talks to a real server; tests put an in-memory
//! authority behind it. Nothing fetched is trusted: the core verifies every object before it is
//! installed.

use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::i18n::TextContext;
use crate::msg::{self, Label};

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
            return Err(msg::url_no_host(url).into());
        }
        return Ok(url.trim_end_matches('/').to_owned());
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| msg::url_scheme(url))?;
    let host = host_of(rest);
    let loopback = host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback());
    if !loopback {
        return Err(msg::url_plain_http(url).into());
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
        .map_err(|e| msg::ca_not_pem(&e))?;
    if certs.is_empty() {
        return Err(msg::ca_empty().into());
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
            return Err(msg::ca_needs_https(&base).into());
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
    fn refusal(what: Label, resp: &mut ureq::http::Response<ureq::Body>) -> anyhow::Error {
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 10)
            .read_to_string()
            .unwrap_or_default();
        match serde_json::from_str::<ApiError>(&text) {
            Ok(e) => msg::server_refused(what, status, &e.code, &e.message).into(),
            Err(_) => msg::server_refused_raw(what, status, text.trim()).into(),
        }
    }

    fn get_object(&self, what: Label, path: &str, etag: Option<u64>) -> Result<Fetched> {
        let mut req = self.agent.get(self.url(path));
        if let Some(e) = etag {
            req = req.header("If-None-Match", format!("\"{e}\""));
        }
        let mut resp = req.call().with_text(|| msg::unreachable(what, &self.api))?;
        match resp.status().as_u16() {
            200 => Ok(Fetched::Body(
                resp.body_mut()
                    .with_config()
                    .limit(MAX_OBJECT)
                    .read_to_vec()
                    .with_text(|| msg::reading_answer(what))?,
            )),
            304 => Ok(Fetched::NotModified),
            410 => Ok(Fetched::Gone),
            _ => Err(Self::refusal(what, &mut resp)),
        }
    }

    fn must_body(what: Label, f: Fetched) -> Result<Vec<u8>> {
        match f {
            Fetched::Body(b) => Ok(b),
            other => Err(msg::unexpected_answer(what, &other).into()),
        }
    }
}

impl Distribution for HttpServer {
    fn root_key(&mut self) -> Result<RootKey> {
        let mut resp = self
            .agent
            .get(self.url("/root-key"))
            .call()
            .with_text(|| msg::unreachable(msg::ROOT_KEY, &self.api))?;
        if resp.status().as_u16() != 200 {
            return Err(Self::refusal(msg::ROOT_KEY, &mut resp));
        }
        resp.body_mut()
            .with_config()
            .limit(64 << 10)
            .read_json()
            .with_text(|| msg::answer_not_json(msg::ROOT_KEY))
    }

    fn trust_bundle(&mut self) -> Result<Vec<u8>> {
        Self::must_body(
            msg::TRUST_BUNDLE,
            self.get_object(msg::TRUST_BUNDLE, "/trust-bundle", None)?,
        )
    }

    fn status_list(&mut self, current: Option<u64>) -> Result<Fetched> {
        self.get_object(msg::STATUS_LIST, "/status-list", current)
    }

    fn status_delta(&mut self, from: u64) -> Result<Fetched> {
        self.get_object(
            msg::STATUS_DELTA,
            &format!("/status-list/delta?from={from}"),
            Some(from),
        )
    }

    fn service_rules(&mut self) -> Result<Vec<u8>> {
        Self::must_body(
            msg::SERVICE_RULES,
            self.get_object(msg::SERVICE_RULES, "/service-rules", None)?,
        )
    }

    fn register(&mut self, admin_token: &str, req: &Registration<'_>) -> Result<Registered> {
        let mut resp = self
            .agent
            .post(self.url("/terminals"))
            .header("Authorization", format!("Bearer {admin_token}"))
            .send_json(req)
            .with_text(|| msg::unreachable(msg::REGISTRATION, &self.api))?;
        if resp.status().as_u16() != 201 && resp.status().as_u16() != 200 {
            return Err(Self::refusal(msg::REGISTRATION, &mut resp));
        }
        resp.body_mut()
            .with_config()
            .limit(64 << 10)
            .read_json()
            .with_text(|| msg::answer_not_json(msg::REGISTRATION))
    }

    fn upload_logs(&mut self, key_id_hex: &str, batch: &[u8]) -> Result<UploadAnswer> {
        let mut resp = self
            .agent
            .post(self.url(&format!("/terminals/{key_id_hex}/logs")))
            .header("Content-Type", "application/octet-stream")
            .send(batch)
            .with_text(|| msg::unreachable(msg::LOG_UPLOAD, &self.api))?;
        if !resp.status().is_success() {
            return Err(Self::refusal(msg::LOG_UPLOAD, &mut resp));
        }
        resp.body_mut()
            .with_config()
            .limit(64 << 10)
            .read_json()
            .with_text(|| msg::answer_not_json(msg::LOG_UPLOAD))
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
