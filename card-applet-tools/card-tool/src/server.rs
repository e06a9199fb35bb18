//! A blocking client of the issuance server's HTTP API (`/api/v1`, see docs/protocol.md).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shared_crypto::PublicKey;

use crate::i18n::{Lang, Localized, Text};

/// Why a call to the server failed.
///
/// `Display` is the English message; [`Localized::localized`] gives it in either language. The
/// server's own `code` and `message` are shown as the server sent them (English): they name the
/// server's rule, and the office's administrator looks them up as they are.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServerError {
    /// The server could not be reached.
    Unreachable {
        /// The URL called.
        url: String,
        /// What the HTTP client said.
        detail: String,
    },
    /// The call needs a staff token and none (or an invalid one) was given.
    Unauthorized {
        /// 401 or 403.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The server answered with an error.
    Api {
        /// HTTP status.
        status: u16,
        /// Machine-readable code.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// Plain `http://` to another machine: tokens, personal data and card keys would cross the
    /// network in clear.
    PlainHttp {
        /// The URL given.
        url: String,
    },
    /// The URL is not `https://HOST` or `http://HOST`.
    BadUrl {
        /// The URL given.
        url: String,
    },
    /// The `--ca-cert` file cannot be read or holds no certificate.
    BadCa {
        /// The file.
        path: String,
        /// What was wrong.
        detail: String,
    },
    /// The answer does not have the contract's form.
    BadResponse {
        /// Which call.
        what: String,
        /// What was wrong.
        detail: Text,
    },
}

/// The message of [`ServerError::Unauthorized`] when this tool had no token to send (the only
/// message there that is the tool's own, not the server's).
const NO_TOKEN: &str = "no token given";

impl Localized for ServerError {
    fn localized(&self, lang: Lang) -> String {
        use Lang::{En, Zh};
        match (self, lang) {
            (ServerError::Unreachable { url, detail }, En) => format!(
                "cannot reach the issuance server at {url}: {detail}. Is it running \
                 (`issuance-server serve`) and is --server right?"
            ),
            (ServerError::Unreachable { url, detail }, Zh) => format!(
                "无法连接位于 {url} 的发证服务器：{detail}。请确认服务器正在运行\
                 （`issuance-server serve`），并检查 --server 是否填写正确"
            ),
            (ServerError::Unauthorized { status, message }, En) => format!(
                "the server refused the token ({status}: {message}); give a valid staff token \
                 with --token or the CARD_TOOL_TOKEN environment variable"
            ),
            (ServerError::Unauthorized { status, message }, Zh) => {
                let message = if message == NO_TOKEN {
                    "未提供令牌"
                } else {
                    message
                };
                format!(
                    "服务器拒绝了令牌（{status}：{message}）；请用 --token 或环境变量 \
                     CARD_TOOL_TOKEN 提供有效的工作人员令牌"
                )
            }
            (
                ServerError::Api {
                    status,
                    code,
                    message,
                },
                En,
            ) => format!("the server refused the request ({status} {code}): {message}"),
            (
                ServerError::Api {
                    status,
                    code,
                    message,
                },
                Zh,
            ) => format!("服务器拒绝了该请求（{status} {code}）：{message}"),
            (ServerError::PlainHttp { url }, En) => format!(
                "{url} is plain HTTP to another machine: staff tokens, personal data and card \
                 keys would cross the network in clear. Use the server's https:// address (with \
                 --ca-cert for the office's own CA), or http:// only to a server on this machine \
                 (127.0.0.1)"
            ),
            (ServerError::PlainHttp { url }, Zh) => format!(
                "{url} 是通往另一台机器的明文 HTTP：工作人员令牌、个人信息和卡片密钥会以明文在\
                 网络上传输。请使用服务器的 https:// 地址（办公室自建 CA 时加 --ca-cert），\
                 http:// 只能用于本机上的服务器（127.0.0.1）"
            ),
            (ServerError::BadUrl { url }, En) => format!(
                "--server {url:?} is not a server address: give https://HOST[:PORT] (or \
                 http://127.0.0.1:PORT for a server on this machine)"
            ),
            (ServerError::BadUrl { url }, Zh) => format!(
                "--server {url:?} 不是服务器地址：请填写 https://HOST[:PORT]（HOST 为服务器主机名，\
                 PORT 为端口；本机上的服务器可用 http://127.0.0.1:PORT）"
            ),
            (ServerError::BadCa { path, detail }, En) => format!(
                "the CA certificate {path} cannot be used ({detail}); give the office's CA \
                 certificate as a PEM file (-----BEGIN CERTIFICATE-----) with --ca-cert"
            ),
            (ServerError::BadCa { path, detail }, Zh) => format!(
                "CA 证书 {path} 无法使用（{detail}）；请用 --ca-cert 指定办公室 CA 证书的 PEM \
                 文件（-----BEGIN CERTIFICATE-----）"
            ),
            (ServerError::BadResponse { what, detail }, En) => format!(
                "the server's answer to {what} is not what this card-tool expects: {}",
                detail.en
            ),
            (ServerError::BadResponse { what, detail }, Zh) => format!(
                "服务器对 {what} 的应答与本 card-tool 所要求的格式不符：{}",
                detail.zh
            ),
        }
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.localized(Lang::En))
    }
}

impl std::error::Error for ServerError {}

impl ServerError {
    /// Whether retrying later could help (the server is down or overloaded), as opposed to a
    /// refusal that needs a person to act.
    pub fn is_transient(&self) -> bool {
        match self {
            ServerError::Unreachable { .. } => true,
            ServerError::Api { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// Life-cycle state of a personalization job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Created, no card key yet.
    Created,
    /// A card key was bound and a credential issued; not confirmed yet.
    KeyBound,
    /// The card is locked and the job confirmed.
    Completed,
}

/// The card's static SCP03 keys (diversified from the office master key for this card).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scp03Keys {
    /// Key version number.
    pub kvn: u8,
    /// Encryption key (hex).
    pub enc: String,
    /// MAC key (hex).
    pub mac: String,
    /// Data-encryption key (hex).
    pub dek: String,
}

/// One attribute to write onto the card.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobAttribute {
    /// Attribute id.
    pub attribute: u8,
    /// 16-byte salt (hex).
    pub salt: String,
    /// Canonical value bytes (hex).
    pub value: String,
}

/// A personalization job as the server describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonalizationJob {
    /// Job id.
    pub job_id: i64,
    /// State.
    pub state: JobState,
    /// The card's serial (hex, 8 bytes).
    pub card_serial: String,
    /// Position in the status list.
    pub status_index: u32,
    /// The card's static keys.
    pub scp03: Scp03Keys,
    /// Root public key (hex, 33 bytes).
    pub root_key: String,
    /// Start of validity.
    pub valid_from: u64,
    /// End of validity.
    pub valid_until: u64,
    /// The attributes.
    pub attributes: Vec<JobAttribute>,
    /// Welfare points on the new card.
    pub initial_points: u32,
}

/// A welfare-point grant for one card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoucherGrant {
    /// Wire bytes of the signed voucher.
    pub voucher: Vec<u8>,
    /// Wire bytes of the Voucher key's certificate.
    pub voucher_cert: Vec<u8>,
    /// The grant's sequence number.
    pub seq: u32,
}

/// A terminal registered with the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisteredTerminal {
    /// The server's id.
    pub terminal_id: i64,
    /// Key id (hex).
    pub key_id: String,
    /// Wire bytes of the root-signed certificate.
    pub certificate: Vec<u8>,
}

#[derive(Deserialize)]
struct ApiErrorBody {
    code: String,
    message: String,
}

/// The client.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// Whether `url` (`scheme://authority[/path]`) is plain HTTP to this machine, HTTPS, or neither;
/// `None` when it names no host.
fn scheme_of(url: &str) -> Option<(bool, bool)> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        (false, url.strip_prefix("http://")?)
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    if host.is_empty() {
        return None;
    }
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback());
    Some((tls, loopback))
}

/// The certificates of a PEM file given with `--ca-cert`.
fn read_ca(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, ServerError> {
    let bad = |detail: String| ServerError::BadCa {
        path: path.display().to_string(),
        detail,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item.map_err(|e| bad(e.to_string()))? {
            ureq::tls::PemItem::Certificate(c) => certs.push(c.to_owned()),
            // A key or a CRL next to the certificate is not ours to use.
            _ => continue,
        }
    }
    if certs.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    Ok(certs)
}

impl Client {
    /// A client for the server at `base`, with an optional staff bearer token: `https://` to
    /// any host, trusting only the CA certificates in `ca` (PEM) when given and the public CAs
    /// built into this program otherwise, or plain `http://` to this machine only (a server on
    /// 127.0.0.1, or a TLS-terminating proxy there).
    pub fn new(base: &str, token: Option<String>, ca: Option<&Path>) -> Result<Self, ServerError> {
        use ureq::tls::{RootCerts, TlsConfig};
        let (tls, loopback) = scheme_of(base).ok_or_else(|| ServerError::BadUrl {
            url: base.to_owned(),
        })?;
        if !tls && !loopback {
            return Err(ServerError::PlainHttp {
                url: base.to_owned(),
            });
        }
        let roots = match ca {
            Some(path) => RootCerts::new_with_certs(&read_ca(path)?),
            None => RootCerts::WebPki,
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            // 4xx/5xx answers carry a JSON reason we want to show.
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            .build()
            .into();
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            token,
            agent,
        })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
        auth: bool,
    ) -> Result<ureq::http::Response<ureq::Body>, ServerError> {
        let url = self.url(path);
        let unreachable = |e: ureq::Error| ServerError::Unreachable {
            url: url.clone(),
            detail: e.to_string(),
        };
        let bearer = match (&self.token, auth) {
            (Some(t), true) => Some(format!("Bearer {t}")),
            (None, true) => {
                return Err(ServerError::Unauthorized {
                    status: 401,
                    message: NO_TOKEN.into(),
                })
            }
            _ => None,
        };
        let mut response = match method {
            "GET" => {
                let mut r = self.agent.get(&url);
                if let Some(b) = &bearer {
                    r = r.header("Authorization", b);
                }
                r.call().map_err(unreachable)?
            }
            _ => {
                let mut r = self.agent.post(&url);
                if let Some(b) = &bearer {
                    r = r.header("Authorization", b);
                }
                match body {
                    Some(b) => r.send_json(b).map_err(unreachable)?,
                    None => r.send_empty().map_err(unreachable)?,
                }
            }
        };
        let status = response.status().as_u16();
        if status < 400 {
            return Ok(response);
        }
        let (code, message) = match response.body_mut().read_json::<ApiErrorBody>() {
            Ok(e) => (e.code, e.message),
            Err(_) => (String::from("unknown"), format!("HTTP {status} from {url}")),
        };
        if status == 401 || status == 403 {
            return Err(ServerError::Unauthorized { status, message });
        }
        Err(ServerError::Api {
            status,
            code,
            message,
        })
    }

    fn json<T: DeserializeOwned>(
        &self,
        what: &str,
        mut response: ureq::http::Response<ureq::Body>,
    ) -> Result<T, ServerError> {
        response
            .body_mut()
            .read_json::<T>()
            .map_err(|e| ServerError::BadResponse {
                what: what.into(),
                detail: Text::same(e.to_string()),
            })
    }

    fn bytes(
        &self,
        what: &str,
        mut response: ureq::http::Response<ureq::Body>,
    ) -> Result<Vec<u8>, ServerError> {
        response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .map_err(|e| ServerError::BadResponse {
                what: what.into(),
                detail: Text::same(e.to_string()),
            })
    }

    /// Creates the personalization job of an approved application, or resumes its unfinished
    /// one. Returns the job and whether it is new.
    pub fn create_job(
        &self,
        application_id: i64,
        div_data: &[u8; 10],
    ) -> Result<(PersonalizationJob, bool), ServerError> {
        let body = serde_json::json!({
            "application_id": application_id,
            "card_div_data": hex::encode(div_data),
        });
        let r = self.call("POST", "/personalization-jobs", Some(&body), true)?;
        let created = r.status().as_u16() == 201;
        Ok((self.json("POST personalization-jobs", r)?, created))
    }

    /// Reads a job.
    pub fn job(&self, job_id: i64) -> Result<PersonalizationJob, ServerError> {
        let r = self.call(
            "GET",
            &format!("/personalization-jobs/{job_id}"),
            None,
            true,
        )?;
        self.json("GET personalization-jobs/{id}", r)
    }

    /// Binds the card's public key to the job; returns the credential's wire bytes.
    pub fn bind_card_key(&self, job_id: i64, card_key: &[u8; 33]) -> Result<Vec<u8>, ServerError> {
        #[derive(Deserialize)]
        struct R {
            credential: String,
        }
        let body = serde_json::json!({ "card_public_key": hex::encode(card_key) });
        let r = self.call(
            "POST",
            &format!("/personalization-jobs/{job_id}/card-key"),
            Some(&body),
            true,
        )?;
        let r: R = self.json("POST card-key", r)?;
        decode_hex("credential", &r.credential)
    }

    /// Confirms the job after the card was locked.
    pub fn confirm(
        &self,
        job_id: i64,
        card_key: &[u8; 33],
    ) -> Result<PersonalizationJob, ServerError> {
        let body = serde_json::json!({ "card_public_key": hex::encode(card_key) });
        let r = self.call(
            "POST",
            &format!("/personalization-jobs/{job_id}/confirm"),
            Some(&body),
            true,
        )?;
        self.json("POST confirm", r)
    }

    /// Asks for a welfare-point voucher for the card `serial`.
    pub fn voucher(&self, serial: &[u8; 8], amount: u32) -> Result<VoucherGrant, ServerError> {
        #[derive(Deserialize)]
        struct R {
            voucher: String,
            voucher_cert: String,
            seq: u32,
        }
        let body = serde_json::json!({ "amount": amount });
        let r = self.call(
            "POST",
            &format!("/cards/{}/vouchers", hex::encode(serial)),
            Some(&body),
            true,
        )?;
        let r: R = self.json("POST vouchers", r)?;
        Ok(VoucherGrant {
            voucher: decode_hex("voucher", &r.voucher)?,
            voucher_cert: decode_hex("voucher_cert", &r.voucher_cert)?,
            seq: r.seq,
        })
    }

    /// Registers a terminal key (admin) and returns its root-signed certificate.
    pub fn register_terminal(
        &self,
        subject: &str,
        public_key: &[u8; 33],
        services: &[&str],
        region: u32,
    ) -> Result<RegisteredTerminal, ServerError> {
        #[derive(Deserialize)]
        struct R {
            terminal_id: i64,
            key_id: String,
            certificate: String,
        }
        let body = serde_json::json!({
            "subject": subject,
            "public_key": hex::encode(public_key),
            "services": services,
            "region": region,
        });
        let r = self.call("POST", "/terminals", Some(&body), true)?;
        let r: R = self.json("POST terminals", r)?;
        Ok(RegisteredTerminal {
            terminal_id: r.terminal_id,
            key_id: r.key_id,
            certificate: decode_hex("certificate", &r.certificate)?,
        })
    }

    /// The root public key (trust on first use: for diagnostics; a terminal has it built in).
    pub fn root_key(&self) -> Result<PublicKey, ServerError> {
        #[derive(Deserialize)]
        struct R {
            public_key: String,
        }
        let r = self.call("GET", "/root-key", None, false)?;
        let r: R = self.json("GET root-key", r)?;
        let bytes = decode_hex("public_key", &r.public_key)?;
        PublicKey::from_sec1(&bytes).map_err(|e| ServerError::BadResponse {
            what: "GET root-key".into(),
            detail: Text::same(e.to_string()),
        })
    }

    /// The trust bundle's wire bytes.
    pub fn trust_bundle(&self) -> Result<Vec<u8>, ServerError> {
        let r = self.call("GET", "/trust-bundle", None, false)?;
        self.bytes("GET trust-bundle", r)
    }

    /// The full status list's wire bytes.
    pub fn status_list(&self) -> Result<Vec<u8>, ServerError> {
        let r = self.call("GET", "/status-list", None, false)?;
        self.bytes("GET status-list", r)
    }
}

fn decode_hex(what: &str, s: &str) -> Result<Vec<u8>, ServerError> {
    hex::decode(s).map_err(|e| ServerError::BadResponse {
        what: what.into(),
        detail: Text::new(format!("not hex: {e}"), format!("不是十六进制数据：{e}")),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn job_json_of_the_contract_parses() {
        let j = r#"{"job_id": 7, "state": "key_bound", "card_serial": "0102030405060708",
            "status_index": 42, "scp03": {"kvn": 48, "enc": "00112233445566778899aabbccddeeff",
            "mac": "00112233445566778899aabbccddeeff", "dek": "00112233445566778899aabbccddeeff"},
            "root_key": "02aa", "valid_from": 1, "valid_until": 2,
            "attributes": [{"attribute": 1, "salt": "00", "value": "41"}], "initial_points": 100}"#;
        let job: PersonalizationJob = serde_json::from_str(j).unwrap();
        assert_eq!(job.state, JobState::KeyBound);
        assert_eq!(job.scp03.kvn, 48);
        assert_eq!(job.attributes.len(), 1);
        let bad = j.replace("key_bound", "half_done");
        assert!(serde_json::from_str::<PersonalizationJob>(&bad).is_err());
    }

    #[test]
    fn an_unreachable_server_says_what_to_do() {
        // Port 9 (discard) is closed on loopback here; the connection is refused at once.
        let c = Client::new("http://127.0.0.1:9", Some("t".into()), None).unwrap();
        let e = c.job(1).unwrap_err();
        assert!(e.is_transient());
        assert!(e.to_string().contains("issuance-server serve"), "{e}");
    }

    #[test]
    fn every_server_error_speaks_both_languages_and_keeps_the_servers_words() {
        let all = [
            ServerError::Unreachable {
                url: "http://127.0.0.1:9/api/v1/cards".into(),
                detail: "Connection refused".into(),
            },
            ServerError::Unauthorized {
                status: 401,
                message: NO_TOKEN.into(),
            },
            ServerError::Unauthorized {
                status: 403,
                message: "the role clerk may not do this".into(),
            },
            ServerError::Api {
                status: 409,
                code: "not_approved".into(),
                message: "application 12 is not approved".into(),
            },
            ServerError::BadResponse {
                what: "POST confirm".into(),
                detail: Text::same("missing field `job_id`"),
            },
            ServerError::BadResponse {
                what: "credential".into(),
                detail: Text::new(
                    "not hex: Odd number of digits",
                    "不是十六进制数据：Odd number of digits",
                ),
            },
            ServerError::PlainHttp {
                url: "http://192.0.2.7:8080".into(),
            },
            ServerError::BadUrl {
                url: "192.0.2.7:8080".into(),
            },
            ServerError::BadCa {
                path: "/etc/office-ca.pem".into(),
                detail: "no certificate in it".into(),
            },
        ];
        for e in &all {
            match e {
                ServerError::Unreachable { .. }
                | ServerError::Unauthorized { .. }
                | ServerError::Api { .. }
                | ServerError::PlainHttp { .. }
                | ServerError::BadUrl { .. }
                | ServerError::BadCa { .. }
                | ServerError::BadResponse { .. } => crate::i18n::check(&format!("{e:?}"), e),
            }
        }
        // A refusal: the server's code and message as it sent them, the lead-in in Chinese.
        let zh = all[3].localized(Lang::Zh);
        assert_eq!(
            zh,
            "服务器拒绝了该请求（409 not_approved）：application 12 is not approved"
        );
        assert!(all[2]
            .localized(Lang::Zh)
            .contains("the role clerk may not do this"));
        assert!(all[1].localized(Lang::Zh).contains("未提供令牌"));
    }

    #[test]
    fn https_anywhere_plain_http_only_on_this_machine() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:8080/",
            "http://[::1]:8080",
            "https://office.example:8443",
            "https://192.0.2.7/",
            "https://[2001:db8::1]:8443",
        ] {
            assert!(Client::new(ok, None, None).is_ok(), "{ok}");
        }
        for plain in [
            "http://192.0.2.7:8080",
            "http://office.example",
            "http://[2001:db8::1]",
        ] {
            let e = Client::new(plain, None, None).err().unwrap();
            assert!(matches!(e, ServerError::PlainHttp { .. }), "{plain}: {e}");
            assert!(e.to_string().contains("https://"), "{e}");
        }
        for bad in [
            "192.0.2.7:8080",
            "ftp://127.0.0.1",
            "https://",
            "http://:80",
            "",
        ] {
            let e = Client::new(bad, None, None).err().unwrap();
            assert!(matches!(e, ServerError::BadUrl { .. }), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.pem");
        let e = Client::new("https://office.example", None, Some(&missing))
            .err()
            .unwrap();
        assert!(matches!(e, ServerError::BadCa { .. }), "{e}");
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let e = Client::new("https://office.example", None, Some(&not_pem))
            .err()
            .unwrap();
        assert!(e.to_string().contains("no certificate in it"), "{e}");
    }

    #[test]
    fn a_call_that_needs_a_token_refuses_without_one() {
        let c = Client::new("http://127.0.0.1:9", None, None).unwrap();
        let e = c.job(1).unwrap_err();
        assert!(matches!(e, ServerError::Unauthorized { .. }));
        assert!(e.to_string().contains("CARD_TOOL_TOKEN"), "{e}");
        assert!(!e.is_transient());
    }
}
