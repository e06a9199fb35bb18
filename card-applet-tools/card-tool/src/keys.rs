//! Terminal keys for diagnostics: generation, storage (mode 0600) and loading, and the terminal
//! certificate file.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Result;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use shared_crypto::sig::{KeyId, SignError};
use shared_crypto::{P256Signer, PublicKey, Signer};

use crate::i18n::{reading, writing, Text, WithText};

/// How a key file stores the private key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyFormat {
    /// PKCS#8 DER (what ring and most tools exchange).
    Pkcs8,
    /// The 32-byte private scalar as 64 hex digits.
    Hex,
}

/// A terminal's signing key.
pub enum TerminalKey {
    /// Loaded from PKCS#8 (signed with ring).
    Ring {
        /// The key pair.
        pair: EcdsaKeyPair,
        /// Its public key.
        public: PublicKey,
        /// ring's RNG (ECDSA nonces).
        rng: SystemRandom,
    },
    /// Loaded from a raw scalar (signed with p256, RFC 6979).
    Raw(P256Signer),
}

impl std::fmt::Debug for TerminalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private half.
        write!(
            f,
            "TerminalKey({})",
            hex::encode(self.public_key().to_sec1())
        )
    }
}

impl TerminalKey {
    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        match self {
            TerminalKey::Ring { public, .. } => *public,
            TerminalKey::Raw(s) => s.public_key(),
        }
    }

    /// Parses a key file's contents: PKCS#8 DER, or 64 hex digits (surrounding white space
    /// allowed).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if let Ok(text) = std::str::from_utf8(bytes) {
            let t = text.trim();
            if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
                let mut secret = [0u8; 32];
                hex::decode_to_slice(t, &mut secret)
                    .with_text(|| Text::new("decoding the hex key", "解码十六进制密钥时出错"))?;
                let signer = P256Signer::from_bytes(&secret).map_err(|e| {
                    Text::new(
                        format!("not a P-256 private key: {e}"),
                        format!("不是 P-256 私钥：{e}"),
                    )
                })?;
                return Ok(TerminalKey::Raw(signer));
            }
        }
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, bytes, &rng)
            .map_err(|e| {
                Text::new(
                    format!(
                        "the key file is neither 64 hex digits nor a P-256 PKCS#8 key ({e}); \
                         make one with `card-tool keygen --out FILE`"
                    ),
                    format!(
                        "密钥文件既不是 64 位十六进制数字，也不是 P-256 PKCS#8 密钥（{e}）；\
                         请用 `card-tool keygen --out FILE` 生成一个"
                    ),
                )
            })?;
        let public = PublicKey::from_sec1_any(pair.public_key().as_ref()).map_err(|e| {
            Text::new(
                format!("bad public key in PKCS#8: {e}"),
                format!("PKCS#8 中的公钥无效：{e}"),
            )
        })?;
        Ok(TerminalKey::Ring { pair, public, rng })
    }

    /// Loads a key file.
    pub fn load(path: &Path) -> Result<Self> {
        let p = path.display();
        let bytes = fs::read(path).with_text(|| {
            Text::new(
                format!("reading the key file {p}"),
                format!("读取密钥文件 {p} 时出错"),
            )
        })?;
        Self::parse(&bytes).with_text(|| Text::new(format!("in {p}"), format!("密钥文件 {p} 有误")))
    }

    /// Generates a key and writes it to `path` (created, never overwritten, mode 0600).
    pub fn generate(path: &Path, format: KeyFormat) -> Result<Self> {
        let rng = SystemRandom::new();
        let (bytes, key) = match format {
            KeyFormat::Pkcs8 => {
                let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| Text::new("the system RNG failed", "系统随机数发生器出错"))?;
                let key = Self::parse(doc.as_ref())?;
                (doc.as_ref().to_vec(), key)
            }
            KeyFormat::Hex => {
                let mut rng = rand_core::UnwrapErr(getrandom::SysRng);
                let signer = P256Signer::generate(&mut rng).map_err(|e| {
                    Text::new(
                        format!("generating a key: {e}"),
                        format!("生成密钥时出错：{e}"),
                    )
                })?;
                let mut text = hex::encode(signer.secret_bytes());
                text.push('\n');
                (text.into_bytes(), TerminalKey::Raw(signer))
            }
        };
        write_secret(path, &bytes)?;
        Ok(key)
    }
}

impl Signer for TerminalKey {
    fn key_id(&self) -> KeyId {
        self.public_key().key_id()
    }

    fn sign_parts(&self, parts: &[&[u8]]) -> Result<[u8; 64], SignError> {
        match self {
            TerminalKey::Ring { pair, rng, .. } => {
                let msg = parts.concat();
                let sig = pair.sign(rng, &msg).map_err(|_| SignError)?;
                sig.as_ref().try_into().map_err(|_| SignError)
            }
            TerminalKey::Raw(s) => s.sign_parts(parts),
        }
    }
}

/// Writes a secret to a new file readable only by its owner.
fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_text(|| {
            let p = path.display();
            Text::new(
                format!(
                    "creating {p} (an existing key file is never overwritten: choose another name)"
                ),
                format!("创建 {p} 时出错（已有的密钥文件永远不会被覆盖：请换一个文件名）"),
            )
        })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_text(|| writing(path))
}

/// Reads a file of wire bytes written as hex text (white space ignored) or raw binary.
pub fn read_wire_file(path: &Path) -> Result<Vec<u8>> {
    let p = path.display();
    let bytes = fs::read(path).with_text(|| reading(path))?;
    if let Ok(text) = std::str::from_utf8(&bytes) {
        let compact: String = text.split_whitespace().collect();
        if !compact.is_empty() && compact.bytes().all(|b| b.is_ascii_hexdigit()) {
            return hex::decode(&compact).with_text(|| {
                Text::new(format!("hex in {p}"), format!("{p} 中的十六进制数据有误"))
            });
        }
    }
    if bytes.is_empty() {
        return Err(Text::new(format!("{p} is empty"), format!("{p} 是空文件")).into());
    }
    Ok(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_keys_load_back_sign_and_are_private() {
        let dir = tempfile::tempdir().unwrap();
        for format in [KeyFormat::Pkcs8, KeyFormat::Hex] {
            let p = dir.path().join(format!("{format:?}.key"));
            let k = TerminalKey::generate(&p, format).unwrap();
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let loaded = TerminalKey::load(&p).unwrap();
            assert_eq!(loaded.public_key(), k.public_key());
            let sig = loaded.sign_parts(&[b"a", b"bc"]).unwrap();
            k.public_key().verify_parts(&[b"ab", b"c"], &sig).unwrap();
            assert!(k.public_key().verify_parts(&[b"abd"], &sig).is_err());
            let again = TerminalKey::generate(&p, format).unwrap_err();
            assert!(format!("{again:#}").contains("never overwritten"));
        }
    }

    #[test]
    fn garbage_is_not_a_key() {
        let e = TerminalKey::parse(b"hello").err().unwrap();
        assert!(e.to_string().contains("card-tool keygen"), "{e}");
        let zh = crate::i18n::error_text(&e, crate::i18n::Lang::Zh);
        crate::i18n::check_pair("garbage", &e.to_string(), &zh);
        // 64 hex digits of zeros is not a valid scalar.
        assert!(TerminalKey::parse(&[b'0'; 64]).is_err());
    }

    #[test]
    fn wire_files_may_be_hex_or_binary() {
        let dir = tempfile::tempdir().unwrap();
        let h = dir.path().join("c.hex");
        fs::write(&h, "0a0b\n0c\n").unwrap();
        assert_eq!(read_wire_file(&h).unwrap(), vec![10, 11, 12]);
        let b = dir.path().join("c.bin");
        fs::write(&b, [0xFFu8, 0, 1]).unwrap();
        assert_eq!(read_wire_file(&b).unwrap(), vec![0xFF, 0, 1]);
        fs::write(&b, []).unwrap();
        assert!(read_wire_file(&b).is_err());
    }
}
