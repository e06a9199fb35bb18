//! The data directory of one host terminal.
//!
//! | file | what |
//! |---|---|
//! | `terminal.json` | service, server, subject, region, the root key pinned at `init` |
//! | `terminal.key` | the terminal's private key (hex; owner-only permissions) |
//! | `terminal.cert` | its root-signed Terminal certificate (wire bytes), once registered |
//! | `flash.bin` | the terminal's flash: trust bundle, status list, rules, tap log |
//! | `uploaded.json` | the last tap-log sequence number the server accepted |

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use shared_crypto::model::Service;
use shared_crypto::{P256Signer, PublicKey, Signer};

use crate::i18n::TextContext;
use crate::msg;

/// Version of `terminal.json`.
pub const CONFIG_VERSION: u32 = 1;

/// `terminal.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Format version ([`CONFIG_VERSION`]).
    pub version: u32,
    /// The issuance server's base URL (loopback).
    pub server: String,
    /// The service this point performs (`transit`, `employment`, `rehab`, `welfare`).
    pub service: String,
    /// The certificate subject asked for at registration.
    pub subject: String,
    /// The 6-digit region code asked for at registration (0 = national).
    pub region: u32,
    /// The root public key (hex, 33 bytes compressed), fetched once at `init` and pinned.
    pub root_key: String,
    /// The terminal's public key (hex), for the admin who registers it.
    pub public_key: String,
}

impl SimConfig {
    /// The configured service.
    pub fn service(&self) -> Result<Service> {
        Service::from_name(&self.service).ok_or_else(|| msg::config_service(&self.service).into())
    }

    /// The pinned root key.
    pub fn root_key(&self) -> Result<[u8; 33]> {
        let bytes = hex::decode(&self.root_key).with_text(msg::config_root_not_hex)?;
        let key: [u8; 33] = bytes.try_into().map_err(|_| msg::config_root_length())?;
        PublicKey::from_sec1(&key).with_text(msg::config_root_not_p256)?;
        Ok(key)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Uploaded {
    last_seq: u32,
}

/// The directory and its files.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The directory at `root` (not touched yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `terminal.json`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join("terminal.json")
    }

    /// `terminal.key`.
    pub fn key_path(&self) -> PathBuf {
        self.root.join("terminal.key")
    }

    /// `terminal.cert`.
    pub fn cert_path(&self) -> PathBuf {
        self.root.join("terminal.cert")
    }

    /// `server-ca.pem`: the office CA an `https://` server's certificate must come from.
    pub fn ca_path(&self) -> PathBuf {
        self.root.join("server-ca.pem")
    }

    /// The pinned office CA (PEM), if `init --ca-cert` gave one.
    pub fn load_ca(&self) -> Result<Option<Vec<u8>>> {
        read_if_there(&self.ca_path())
    }

    /// Pins the office CA (PEM) for every later contact with the server.
    pub fn save_ca(&self, pem: &[u8]) -> Result<()> {
        write_atomically(&self.ca_path(), pem, 0o644)
    }

    /// `flash.bin`.
    pub fn flash_path(&self) -> PathBuf {
        self.root.join("flash.bin")
    }

    /// `uploaded.json`.
    pub fn uploaded_path(&self) -> PathBuf {
        self.root.join("uploaded.json")
    }

    /// The last log sequence number the server accepted, if any.
    ///
    /// The core keeps acknowledgements in RAM until a whole log sector can be erased, so after a
    /// restart records already uploaded would be exported again; this file carries the
    /// acknowledgement from one command to the next.
    pub fn load_uploaded(&self) -> Result<Option<u32>> {
        let p = self.uploaded_path();
        match fs::read_to_string(&p) {
            Ok(text) => {
                let v: Uploaded = serde_json::from_str(&text).with_text(|| msg::parsing(&p))?;
                Ok(Some(v.last_seq))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_text(|| msg::reading(&p)),
        }
    }

    /// Records that the server accepted every log record up to `last_seq`.
    pub fn save_uploaded(&self, last_seq: u32) -> Result<()> {
        let text = serde_json::to_string(&Uploaded { last_seq })?;
        write_atomically(&self.uploaded_path(), text.as_bytes(), 0o644)
    }

    /// Whether `init` created the terminal here.
    pub fn is_initialized(&self) -> bool {
        self.config_path().is_file() && self.key_path().is_file()
    }

    /// Reads `terminal.json`.
    pub fn load_config(&self) -> Result<SimConfig> {
        let p = self.config_path();
        let text = fs::read_to_string(&p).with_text(|| msg::reading_config(&p, &self.root))?;
        let c: SimConfig = serde_json::from_str(&text).with_text(|| msg::parsing(&p))?;
        if c.version != CONFIG_VERSION {
            return Err(msg::config_version(&p, c.version, CONFIG_VERSION).into());
        }
        Ok(c)
    }

    /// Writes `terminal.json` (through a temporary file, so a crash leaves the old or the new).
    pub fn save_config(&self, c: &SimConfig) -> Result<()> {
        let text = serde_json::to_string_pretty(c)?;
        write_atomically(&self.config_path(), text.as_bytes(), 0o644)
    }

    /// Writes a new private key. Refuses to replace one: a terminal's key is its identity.
    pub fn create_key(&self, key: &P256Signer) -> Result<()> {
        let p = self.key_path();
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .with_text(|| msg::creating(&p))?;
        f.write_all(hex::encode(key.secret_bytes()).as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        Ok(())
    }

    /// Reads the private key.
    pub fn load_key(&self) -> Result<P256Signer> {
        let p = self.key_path();
        let text = fs::read_to_string(&p).with_text(|| msg::reading(&p))?;
        let bytes: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| msg::key_file_bad(&p))?;
        P256Signer::from_bytes(&bytes).map_err(|e| msg::key_file_invalid(&p, &e).into())
    }

    /// Reads the certificate, if registered.
    pub fn load_certificate(&self) -> Result<Option<Vec<u8>>> {
        read_if_there(&self.cert_path())
    }

    /// Stores the certificate.
    pub fn save_certificate(&self, wire: &[u8]) -> Result<()> {
        write_atomically(&self.cert_path(), wire, 0o644)
    }

    /// The key id of the stored key (hex), for messages.
    pub fn key_id_hex(key: &P256Signer) -> String {
        hex::encode(key.key_id())
    }
}

/// The bytes of `p`, or `None` when it does not exist (a step not taken yet, not an error).
fn read_if_there(p: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_text(|| msg::reading(p)),
    }
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_text(|| msg::creating(&tmp))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path).with_text(|| msg::replacing(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config() -> SimConfig {
        SimConfig {
            version: CONFIG_VERSION,
            server: "http://127.0.0.1:8080".into(),
            service: "transit".into(),
            subject: "gate 1".into(),
            region: 110105,
            root_key: hex::encode([2u8; 33]),
            public_key: String::new(),
        }
    }

    #[test]
    fn key_is_private_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::new(dir.path());
        let key = P256Signer::from_bytes(&[7u8; 32]).unwrap();
        d.create_key(&key).unwrap();
        let mode = fs::metadata(d.key_path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
        assert_eq!(d.load_key().unwrap().key_id(), key.key_id());
        let other = P256Signer::from_bytes(&[8u8; 32]).unwrap();
        assert!(d.create_key(&other).is_err());
        assert_eq!(d.load_key().unwrap().key_id(), key.key_id());
    }

    #[test]
    fn config_round_trips_and_bad_contents_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::new(dir.path());
        assert!(d.load_config().is_err());
        d.save_config(&config()).unwrap();
        assert_eq!(d.load_config().unwrap(), config());
        let mut c = config();
        c.version = 2;
        d.save_config(&c).unwrap();
        assert!(d.load_config().unwrap_err().to_string().contains("version"));
        c = config();
        c.service = "parking".into();
        assert!(c.service().is_err());
        // A tag byte other than 02/03 is not a compressed point; short keys are refused too.
        c = config();
        c.root_key = hex::encode([5u8; 33]);
        assert!(c.root_key().is_err());
        c.root_key = hex::encode([2u8; 32]);
        assert!(c.root_key().is_err());
        c.root_key = "zz".into();
        assert!(c.root_key().is_err());
    }

    #[test]
    fn certificate_is_optional_until_registered() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::new(dir.path());
        assert_eq!(d.load_certificate().unwrap(), None);
        d.save_certificate(b"wire").unwrap();
        assert_eq!(d.load_certificate().unwrap().as_deref(), Some(&b"wire"[..]));
    }

    #[test]
    fn upload_mark_round_trips_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::new(dir.path());
        assert_eq!(d.load_uploaded().unwrap(), None);
        d.save_uploaded(41).unwrap();
        assert_eq!(d.load_uploaded().unwrap(), Some(41));
        fs::write(d.uploaded_path(), "{\"last\": 1}").unwrap();
        assert!(d.load_uploaded().is_err());
    }

    #[test]
    fn broken_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::new(dir.path());
        fs::write(d.key_path(), "not hex").unwrap();
        assert!(d.load_key().is_err());
    }
}
