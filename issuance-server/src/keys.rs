//! The office's keys and the data directory that holds them.
//!
//! ```text
//! DIR/
//!   config.json             settings (validity periods, office name, ...), see crate::config
//!   issuance.db             the SQLite database (absent when DATABASE_URL names PostgreSQL)
//!   keys/root.p8            root key (ECDSA P-256, PKCS#8); a real office keeps it offline
//!   keys/issuer.p8          signs credentials and card block orders
//!   keys/status-signer.p8   signs status lists, deltas and service rules
//!   keys/voucher.p8         signs welfare-point grants
//!   keys/scp03-master.key   16 bytes: master key of the per-card SCP03 key diversification
//!   keys/data.key           32 bytes: personal-data key (AES-256-GCM and blind index via HKDF)
//!   certs/*.cert            root-signed key certificates of the three office keys
//!   trust-bundle.bin        root-signed trust bundle of those certificates
//! ```
//!
//! Every secret file is created with mode 0600 inside a 0700 directory. Signing uses `ring`
//! (ECDSA_P256_SHA256_FIXED_SIGNING); personal data is sealed with `ring`'s AES-256-GCM.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use shared_crypto::model::{KeyCertificateBody, Role, ServiceSet, TrustBundleBody};
use shared_crypto::scp03::{diversify, StaticKeys};
use shared_crypto::wire::ItemsBuf;
use shared_crypto::{KeyId, PublicKey, SignError, Signed, Signer};

/// Fills `buf` from the operating system's CSPRNG.
pub fn random_fill(buf: &mut [u8]) -> Result<()> {
    SystemRandom::new()
        .fill(buf)
        .map_err(|_| anyhow!("the operating system's random number generator failed"))
}

/// `N` random bytes.
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    random_fill(&mut b)?;
    Ok(b)
}

/// An ECDSA P-256 key held by `ring`, usable wherever shared-crypto wants a [`Signer`].
pub struct RingSigner {
    pair: EcdsaKeyPair,
    public: PublicKey,
}

impl std::fmt::Debug for RingSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RingSigner({})", hex::encode(self.public.key_id()))
    }
}

impl RingSigner {
    /// Generates a key; returns it and its PKCS#8 document (to be stored by the caller).
    pub fn generate() -> Result<(Self, Vec<u8>)> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow!("generating a P-256 key failed"))?;
        let pkcs8 = doc.as_ref().to_vec();
        Ok((Self::from_pkcs8(&pkcs8)?, pkcs8))
    }

    /// Loads a PKCS#8 (v1 or v2) P-256 key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|e| anyhow!("not a PKCS#8 ECDSA P-256 key: {e}"))?;
        // ring gives the uncompressed point; the platform speaks compressed SEC1.
        let public = PublicKey::from_sec1_any(pair.public_key().as_ref())
            .map_err(|e| anyhow!("ring produced an unusable public key: {e}"))?;
        Ok(RingSigner { pair, public })
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }
}

impl Signer for RingSigner {
    fn key_id(&self) -> KeyId {
        self.public.key_id()
    }

    fn sign_parts(&self, parts: &[&[u8]]) -> Result<[u8; 64], SignError> {
        // ring hashes the message itself, so the parts are joined first (they are small).
        let msg = parts.concat();
        let sig = self
            .pair
            .sign(&SystemRandom::new(), &msg)
            .map_err(|_| SignError)?;
        sig.as_ref().try_into().map_err(|_| SignError)
    }
}

/// The personal-data key: AES-256-GCM for the fields, HMAC-SHA256 for the blind index. Both are
/// derived from the 32-byte `data.key` with HKDF-SHA256, so one file is the one secret to back up.
pub struct DataKey {
    aead: LessSafeKey,
    index: hmac::Key,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// Format byte of sealed fields (`1 || nonce || ciphertext || tag`).
const SEALED_VERSION: u8 = 1;

impl DataKey {
    /// Derives the two keys from the 32-byte master.
    pub fn from_master(master: &[u8; 32]) -> Result<Self> {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"issuance-server data key v1");
        let prk = salt.extract(master);
        let aead_key: UnboundKey = prk
            .expand(&[b"pii aes-256-gcm"], &AES_256_GCM)
            .map_err(|_| anyhow!("HKDF failed"))?
            .into();
        let index: hmac::Key = prk
            .expand(&[b"blind index hmac-sha256"], hmac::HMAC_SHA256)
            .map_err(|_| anyhow!("HKDF failed"))?
            .into();
        Ok(DataKey {
            aead: LessSafeKey::new(aead_key),
            index,
        })
    }

    /// The blind index of a resident ID: equal IDs give equal indexes, and without the key the
    /// index says nothing about the ID (the ID space is small enough to enumerate, hence a key).
    pub fn blind_index(&self, resident_id: &str) -> [u8; 32] {
        let tag = hmac::sign(&self.index, resident_id.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Seals `plaintext` with a fresh random nonce. `context` (the field's name and the row it
    /// belongs to) is authenticated, so a sealed value cannot be moved to another field or person.
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let nonce_bytes: [u8; NONCE_LEN] = random_bytes()?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + 16);
        out.push(SEALED_VERSION);
        out.extend_from_slice(&nonce_bytes);
        let mut body = plaintext.to_vec();
        self.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(context),
                &mut body,
            )
            .map_err(|_| anyhow!("sealing personal data failed"))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens a value sealed by [`DataKey::seal`] with the same `context`.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        let (&version, rest) = sealed
            .split_first()
            .ok_or_else(|| anyhow!("sealed field is empty"))?;
        if version != SEALED_VERSION || rest.len() < NONCE_LEN + aead::AES_256_GCM.tag_len() {
            bail!("sealed field has an unknown format");
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| anyhow!("sealed field has a bad nonce"))?;
        let mut buf = ct.to_vec();
        let plain = self
            .aead
            .open_in_place(nonce, Aad::from(context), &mut buf)
            .map_err(|_| {
                anyhow!(
                    "a sealed personal-data field does not open: wrong data key or tampered row"
                )
            })?;
        let n = plain.len();
        buf.truncate(n);
        Ok(buf)
    }
}

/// Paths inside a data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }

    /// The SQLite database file.
    pub fn sqlite(&self) -> PathBuf {
        self.root.join("issuance.db")
    }

    /// `keys/<name>`.
    pub fn key(&self, name: &str) -> PathBuf {
        self.root.join("keys").join(name)
    }

    /// `certs/<name>.cert`.
    pub fn cert(&self, name: &str) -> PathBuf {
        self.root.join("certs").join(format!("{name}.cert"))
    }

    /// `trust-bundle.bin`.
    pub fn trust_bundle(&self) -> PathBuf {
        self.root.join("trust-bundle.bin")
    }

    /// The default database URL: the SQLite file, created if missing.
    pub fn sqlite_url(&self) -> String {
        format!("sqlite://{}?mode=rwc", self.sqlite().display())
    }
}

/// Writes a new secret file with mode 0600 (refusing to overwrite).
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    write_new(path, bytes, 0o600)
}

/// Writes a new public file with mode 0644 (refusing to overwrite).
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<()> {
    write_new(path, bytes, 0o644)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads a secret file, refusing one that others may read (a copied key file often loses its
/// mode; the message says how to fix it).
pub fn read_secret(path: &Path) -> Result<Vec<u8>> {
    let meta = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "{} is readable by other users (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        );
    }
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn read_fixed<const N: usize>(path: &Path) -> Result<[u8; N]> {
    let v = read_secret(path)?;
    v.try_into().map_err(|v: Vec<u8>| {
        anyhow!(
            "{} must hold {N} bytes, it holds {}",
            path.display(),
            v.len()
        )
    })
}

/// Everything the running server signs or decrypts with.
#[derive(Debug)]
pub struct OfficeKeys {
    /// Root key (certifies terminals; a real office keeps it offline, see docs/server.md).
    pub root: RingSigner,
    /// Issuer key: credentials, card block orders.
    pub issuer: RingSigner,
    /// StatusSigner key: status lists, deltas, service rules.
    pub status: RingSigner,
    /// Voucher key: welfare-point grants.
    pub voucher: RingSigner,
    /// Root-signed certificate of the Issuer key (wire bytes).
    pub issuer_cert: Vec<u8>,
    /// Root-signed certificate of the StatusSigner key.
    pub status_cert: Vec<u8>,
    /// Root-signed certificate of the Voucher key.
    pub voucher_cert: Vec<u8>,
    /// Root-signed trust bundle (wire bytes).
    pub trust_bundle: Vec<u8>,
    /// SCP03 diversification master key.
    scp03_master: [u8; 16],
    /// Personal-data key.
    pub data: DataKey,
}

/// What [`OfficeKeys::generate`] needs to know about the office.
#[derive(Debug, Clone)]
pub struct OfficeIdentity {
    /// Office name (key-certificate subject), at most 40 bytes.
    pub office: String,
    /// 6-digit administrative division code of the office (0 = national).
    pub region: u32,
    /// Validity of the office key certificates, in days.
    pub key_validity_days: u32,
}

const KEY_FILES: [&str; 4] = ["root.p8", "issuer.p8", "status-signer.p8", "voucher.p8"];

impl OfficeKeys {
    /// Generates every key of a new office into `dir` (whose `keys/` and `certs/` must not exist)
    /// and certifies the office keys with the new root.
    pub fn generate(dir: &DataDir, who: &OfficeIdentity, now: u64) -> Result<Self> {
        for sub in ["keys", "certs"] {
            let p = dir.root().join(sub);
            fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
            let mode = if sub == "keys" { 0o700 } else { 0o755 };
            fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        }
        let mut signers = Vec::new();
        for name in KEY_FILES {
            let (signer, pkcs8) = RingSigner::generate()?;
            write_secret(&dir.key(name), &pkcs8)?;
            signers.push(signer);
        }
        write_secret(&dir.key("scp03-master.key"), &random_bytes::<16>()?)?;
        write_secret(&dir.key("data.key"), &random_bytes::<32>()?)?;

        let [root, issuer, status, voucher] = <[RingSigner; 4]>::try_from(signers)
            .map_err(|_| anyhow!("four keys were generated"))?;
        let until = now + u64::from(who.key_validity_days) * 86_400;
        let subject = |what: &str| -> String {
            let mut s = format!("{} {what}", who.office);
            while s.len() > shared_crypto::model::MAX_SUBJECT_LEN {
                s.pop();
            }
            s
        };
        let certs = [
            ("issuer", &issuer, Role::Issuer),
            ("status-signer", &status, Role::StatusSigner),
            ("voucher", &voucher, Role::Voucher),
        ];
        let mut wires = Vec::new();
        for (name, key, role) in certs {
            let wire = certify(
                &root,
                &CertRequest {
                    role,
                    subject: &subject(name),
                    region: who.region,
                    services: ServiceSet::NONE,
                    public: key.public_key(),
                    valid_from: now,
                    valid_until: until,
                },
            )?;
            write_public(&dir.cert(name), &wire)?;
            wires.push(wire);
        }
        let bundle = trust_bundle(&root, 1, now, &wires)?;
        write_public(&dir.trust_bundle(), &bundle)?;
        Self::load(dir)
    }

    /// Loads the keys of an existing data directory.
    pub fn load(dir: &DataDir) -> Result<Self> {
        let load = |name: &str| -> Result<RingSigner> {
            RingSigner::from_pkcs8(&read_secret(&dir.key(name))?)
                .with_context(|| format!("loading {}", dir.key(name).display()))
        };
        let read_pub =
            |p: PathBuf| fs::read(&p).with_context(|| format!("reading {}", p.display()));
        let keys = OfficeKeys {
            root: load(KEY_FILES[0])?,
            issuer: load(KEY_FILES[1])?,
            status: load(KEY_FILES[2])?,
            voucher: load(KEY_FILES[3])?,
            issuer_cert: read_pub(dir.cert("issuer"))?,
            status_cert: read_pub(dir.cert("status-signer"))?,
            voucher_cert: read_pub(dir.cert("voucher"))?,
            trust_bundle: read_pub(dir.trust_bundle())?,
            scp03_master: read_fixed(&dir.key("scp03-master.key"))?,
            data: DataKey::from_master(&read_fixed(&dir.key("data.key"))?)?,
        };
        keys.check()?;
        Ok(keys)
    }

    /// Checks that the certificates and the bundle belong to these keys (a mixed-up data
    /// directory must not start).
    fn check(&self) -> Result<()> {
        let root = self.root.public_key();
        for (wire, key, role) in [
            (&self.issuer_cert, &self.issuer, Role::Issuer),
            (&self.status_cert, &self.status, Role::StatusSigner),
            (&self.voucher_cert, &self.voucher, Role::Voucher),
        ] {
            let signed = Signed::decode(wire).map_err(|e| anyhow!("certificate: {e}"))?;
            let cert = shared_crypto::model::KeyCertificate::verify_untimed(&signed, &root)
                .map_err(|e| anyhow!("certificate does not verify under the root key: {e}"))?;
            cert.check_role(role).map_err(|e| anyhow!("{e}"))?;
            if cert.key != key.public_key() {
                bail!("the {role:?} certificate is for another key than keys/ holds");
            }
        }
        shared_crypto::model::TrustBundle::verify(&self.trust_bundle, &root, None)
            .map_err(|e| anyhow!("trust-bundle.bin does not verify under the root key: {e}"))?;
        Ok(())
    }

    /// The card's static SCP03 keys for its key diversification data.
    pub fn card_keys(&self, div_data: &[u8; 10]) -> StaticKeys {
        diversify(&self.scp03_master, div_data)
    }

    /// Hex key id of the root key: names the office in the database's `meta` table.
    pub fn office_id(&self) -> String {
        hex::encode(self.root.public_key().key_id())
    }
}

/// The fields of a key certificate to sign.
#[derive(Debug, Clone, Copy)]
pub struct CertRequest<'a> {
    /// Role.
    pub role: Role,
    /// Subject (at most 48 bytes).
    pub subject: &'a str,
    /// Region code.
    pub region: u32,
    /// Services (terminals only).
    pub services: ServiceSet,
    /// The certified key.
    pub public: PublicKey,
    /// Start of validity.
    pub valid_from: u64,
    /// End of validity.
    pub valid_until: u64,
}

/// Signs a key certificate with the root key; returns the wire bytes.
pub fn certify(root: &RingSigner, req: &CertRequest<'_>) -> Result<Vec<u8>> {
    let body = KeyCertificateBody {
        key_id: req.public.key_id(),
        role: req.role,
        subject: req.subject,
        region: req.region,
        services: req.services,
        public_key: req.public.to_bytes(),
        valid_from: req.valid_from,
        valid_until: req.valid_until,
    };
    shared_crypto::sig::sign(&body, &[], root).map_err(|_| anyhow!("signing failed"))
}

/// Signs a trust bundle of `certs` (wire bytes of key certificates) with the root key.
pub fn trust_bundle(
    root: &RingSigner,
    epoch: u64,
    issued_at: u64,
    certs: &[Vec<u8>],
) -> Result<Vec<u8>> {
    let mut items = ItemsBuf::new();
    for c in certs {
        let signed = Signed::decode(c).map_err(|e| anyhow!("certificate: {e}"))?;
        items.push(&signed);
    }
    let body = TrustBundleBody {
        epoch,
        issued_at,
        certs: items.as_items(),
    };
    shared_crypto::sig::sign(&body, &[], root).map_err(|_| anyhow!("signing failed"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use shared_crypto::model::{KeyCertificate, TrustBundle};

    #[test]
    fn ring_signatures_verify_with_shared_crypto() {
        let (signer, pkcs8) = RingSigner::generate().unwrap();
        let again = RingSigner::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(signer.public_key(), again.public_key());
        let sig = signer.sign_parts(&[b"ab", b"", b"cd"]).unwrap();
        signer.public_key().verify_parts(&[b"abcd"], &sig).unwrap();
        assert!(signer.public_key().verify_parts(&[b"abce"], &sig).is_err());
        assert!(RingSigner::from_pkcs8(b"not a key").is_err());
    }

    #[test]
    fn sealed_fields_open_only_in_their_context() {
        let key = DataKey::from_master(&[7u8; 32]).unwrap();
        let sealed = key.seal(b"name|1", "张三".as_bytes()).unwrap();
        assert_eq!(key.open(b"name|1", &sealed).unwrap(), "张三".as_bytes());
        assert!(key.open(b"name|2", &sealed).is_err());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(key.open(b"name|1", &tampered).is_err());
        assert!(key.open(b"name|1", &[]).is_err());
        assert!(key.open(b"name|1", &sealed[..10]).is_err());
        // Fresh nonce every time: the same value seals differently.
        assert_ne!(key.seal(b"c", b"x").unwrap(), key.seal(b"c", b"x").unwrap());
        let other = DataKey::from_master(&[8u8; 32]).unwrap();
        assert!(other.open(b"name|1", &sealed).is_err());
    }

    #[test]
    fn blind_index_is_keyed_and_deterministic() {
        let a = DataKey::from_master(&[1u8; 32]).unwrap();
        let b = DataKey::from_master(&[2u8; 32]).unwrap();
        let id = "11010519491231002X";
        assert_eq!(a.blind_index(id), a.blind_index(id));
        assert_ne!(a.blind_index(id), b.blind_index(id));
        assert_ne!(a.blind_index(id), a.blind_index("110105194912310029"));
    }

    #[test]
    fn generated_office_verifies_and_refuses_a_second_generation() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let who = OfficeIdentity {
            office: "Test office with a very long name that will be cut".into(),
            region: 110105,
            key_validity_days: 10,
        };
        let keys = OfficeKeys::generate(&dir, &who, 1_000).unwrap();
        let root = keys.root.public_key();
        let signed = Signed::decode(&keys.issuer_cert).unwrap();
        let cert = KeyCertificate::verify(&signed, &root, Role::Issuer, 1_000).unwrap();
        assert_eq!(cert.key, keys.issuer.public_key());
        assert_eq!(cert.body.valid_until, 1_000 + 10 * 86_400);
        let bundle = TrustBundle::verify(&keys.trust_bundle, &root, None).unwrap();
        assert_eq!(bundle.body.certs.len(), 3);
        bundle
            .find(&keys.voucher.public_key().key_id(), Role::Voucher, 2_000)
            .unwrap();
        let mode = fs::metadata(dir.key("root.p8"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(OfficeKeys::generate(&dir, &who, 1_000).is_err());
        // A loosened key file is refused with the fix in the message.
        fs::set_permissions(dir.key("issuer.p8"), fs::Permissions::from_mode(0o644)).unwrap();
        let e = OfficeKeys::load(&dir).unwrap_err();
        assert!(format!("{e:#}").contains("chmod 600"), "{e:#}");
    }

    #[test]
    fn mixed_up_certificates_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let who = OfficeIdentity {
            office: "A".into(),
            region: 0,
            key_validity_days: 10,
        };
        OfficeKeys::generate(&dir, &who, 1_000).unwrap();
        // Swap two certificates.
        let issuer = fs::read(dir.cert("issuer")).unwrap();
        let voucher = fs::read(dir.cert("voucher")).unwrap();
        fs::write(dir.cert("issuer"), voucher).unwrap();
        fs::write(dir.cert("voucher"), issuer).unwrap();
        assert!(OfficeKeys::load(&dir).is_err());
    }
}
