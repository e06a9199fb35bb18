//! The data model: every object that crosses a boundary between server, card and terminal.
//!
//! Bodies borrow from the bytes they were decoded from (no allocation), travel as
//! `version || postcard(fields)` (see [`Versioned`]) and, when signed, inside a [`Signed`] envelope
//! with the body's [`Domain`] as tag. Times are Unix seconds (UTC). The byte layout is described in
//! `docs/protocol.md`.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::certno::{Category, CertificateNumber, Level};
use crate::error::Error;
use crate::sig::{sha256_parts, Domain, KeyId, PublicKey, PublicKeyBytes, Signed};
use crate::wire::{decode_exact, decode_versioned, Items, Versioned};

/// 8-byte card serial number, assigned by the server at personalization.
pub type CardSerial = [u8; 8];

/// Length of the truncated attribute digests (bytes). See [`attribute_digest`].
pub const DIGEST_LEN: usize = 16;

/// Length of salts, nonces, challenges and transaction references (bytes).
pub const NONCE_LEN: usize = 16;

/// Longest holder name accepted (UTF-8 bytes); long enough for transliterated minority names.
pub const MAX_NAME_LEN: usize = 64;

/// Longest key-certificate subject (UTF-8 bytes).
pub const MAX_SUBJECT_LEN: usize = 48;

macro_rules! u8_enum {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $v:ident = $n:expr,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(into = "u8", try_from = "u8")]
        #[repr(u8)]
        pub enum $name { $($(#[$vm])* $v = $n,)* }

        impl From<$name> for u8 {
            fn from(v: $name) -> u8 { v as u8 }
        }

        impl TryFrom<u8> for $name {
            type Error = UnknownValue;
            fn try_from(v: u8) -> Result<Self, UnknownValue> {
                match v {
                    $($n => Ok($name::$v),)*
                    _ => Err(UnknownValue(v)),
                }
            }
        }

        impl $name {
            /// Every value, in code order.
            pub const ALL: &'static [$name] = &[$($name::$v,)*];
        }
    };
}

/// An enum code that this version does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownValue(pub u8);

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown code {}", self.0)
    }
}

u8_enum! {
    /// What a certified key may do.
    pub enum Role {
        /// An office key that signs credentials and card block commands.
        Issuer = 1,
        /// Signs status lists, status deltas and service rules for terminals.
        StatusSigner = 2,
        /// One per terminal: signs tap requests and log batches.
        Terminal = 3,
        /// Signs welfare-point grants.
        Voucher = 4,
    }
}

u8_enum! {
    /// The services a terminal performs.
    pub enum Service {
        /// Bus or metro gate: free or discounted ride, companion.
        Transit = 0,
        /// Employer checking quota employment: identity shown to the officer.
        Employment = 1,
        /// Rehabilitation centre checking subsidy eligibility.
        Rehab = 2,
        /// Welfare-point shop or volunteer time bank debiting points.
        Welfare = 3,
    }
}

impl Service {
    /// The bit of this service in a [`ServiceSet`].
    pub const fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// Stable lower-case name (`transit`, `employment`, `rehab`, `welfare`).
    pub const fn name(self) -> &'static str {
        match self {
            Service::Transit => "transit",
            Service::Employment => "employment",
            Service::Rehab => "rehab",
            Service::Welfare => "welfare",
        }
    }

    /// Parses a [`Service::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.name() == s)
    }

    /// The attributes a terminal performing this service may read (minimum disclosure).
    pub const fn release_policy(self) -> AttributeSet {
        use AttributeId::*;
        match self {
            Service::Transit => AttributeSet::of(&[Entitlements, CertificateExpiry]),
            Service::Employment => AttributeSet::of(&[
                Name,
                CertificateNumber,
                Category,
                Level,
                Entitlements,
                CertificateExpiry,
                PhotoDigest,
            ]),
            Service::Rehab => AttributeSet::of(&[
                Category,
                Level,
                Region,
                BirthYear,
                Entitlements,
                CertificateExpiry,
            ]),
            Service::Welfare => AttributeSet::of(&[Entitlements, CertificateExpiry, Region]),
        }
    }
}

/// A set of services (bit `1 << service`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceSet(pub u8);

impl ServiceSet {
    /// No service.
    pub const NONE: ServiceSet = ServiceSet(0);

    /// The set of the given services.
    pub const fn of(services: &[Service]) -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < services.len() {
            bits |= services[i].bit();
            i += 1;
        }
        ServiceSet(bits)
    }

    /// Whether `s` is in the set.
    pub const fn contains(self, s: Service) -> bool {
        self.0 & s.bit() != 0
    }

    /// Whether the set holds only known services.
    pub const fn is_known(self) -> bool {
        self.0 & !0x0F == 0
    }
}

u8_enum! {
    /// The separately disclosable attributes of a credential.
    pub enum AttributeId {
        /// Holder's name (UTF-8, 1..=64 bytes).
        Name = 1,
        /// The 20-character certificate number.
        CertificateNumber = 2,
        /// Disability category (1..=7).
        Category = 3,
        /// Disability level (1..=4, 1 the most severe).
        Level = 4,
        /// 6-digit administrative division code of the issuing region.
        Region = 5,
        /// Year of birth.
        BirthYear = 6,
        /// Entitlement flags ([`Entitlements`]).
        Entitlements = 7,
        /// SHA-256 of the holder's photo held by the office.
        PhotoDigest = 8,
        /// Expiry of the certificate itself (Unix seconds).
        CertificateExpiry = 9,
    }
}

/// A set of attributes (bit `1 << id`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttributeSet(pub u16);

impl AttributeSet {
    /// No attribute.
    pub const NONE: AttributeSet = AttributeSet(0);

    /// The set of the given attributes.
    pub const fn of(ids: &[AttributeId]) -> Self {
        let mut bits = 0u16;
        let mut i = 0;
        while i < ids.len() {
            bits |= 1 << (ids[i] as u8);
            i += 1;
        }
        AttributeSet(bits)
    }

    /// Every defined attribute.
    pub const ALL: AttributeSet = AttributeSet(0b11_1111_1110);

    /// Whether `id` is in the set.
    pub const fn contains(self, id: AttributeId) -> bool {
        self.0 & (1 << (id as u8)) != 0
    }

    /// Intersection.
    pub const fn intersect(self, other: AttributeSet) -> AttributeSet {
        AttributeSet(self.0 & other.0)
    }

    /// Whether every member is in `other`.
    pub const fn is_subset_of(self, other: AttributeSet) -> bool {
        self.0 & !other.0 == 0
    }

    /// The members, in id order.
    pub fn iter(self) -> impl Iterator<Item = AttributeId> {
        AttributeId::ALL
            .iter()
            .copied()
            .filter(move |id| self.contains(*id))
    }
}

/// Entitlement flags carried by the [`AttributeId::Entitlements`] attribute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Entitlements(pub u8);

impl Entitlements {
    /// Free public transit.
    pub const FREE_TRANSIT: u8 = 0x01;
    /// A companion rides free too.
    pub const COMPANION: u8 = 0x02;
    /// Rehabilitation subsidy.
    pub const REHAB_SUBSIDY: u8 = 0x04;
    /// Counts towards an employer's disability employment quota.
    pub const QUOTA_EMPLOYMENT: u8 = 0x08;
    /// Member of the welfare-points programme.
    pub const WELFARE_POINTS: u8 = 0x10;
    /// Every defined flag.
    pub const ALL: u8 = 0x1F;

    /// Whether `flag` is set.
    pub const fn has(self, flag: u8) -> bool {
        self.0 & flag == flag
    }
}

/// A typed attribute value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttributeValue<'a> {
    /// Holder's name.
    Name(&'a str),
    /// Certificate number.
    CertificateNumber(CertificateNumber),
    /// Disability category.
    Category(Category),
    /// Disability level.
    Level(Level),
    /// 6-digit administrative division code.
    Region(u32),
    /// Year of birth.
    BirthYear(u16),
    /// Entitlement flags.
    Entitlements(Entitlements),
    /// SHA-256 of the photo.
    PhotoDigest([u8; 32]),
    /// Certificate expiry (Unix seconds).
    CertificateExpiry(u64),
}

/// Longest canonical value encoding of any attribute.
pub const MAX_VALUE_LEN: usize = MAX_NAME_LEN;

impl<'a> AttributeValue<'a> {
    /// The attribute this value belongs to.
    pub fn id(&self) -> AttributeId {
        match self {
            AttributeValue::Name(_) => AttributeId::Name,
            AttributeValue::CertificateNumber(_) => AttributeId::CertificateNumber,
            AttributeValue::Category(_) => AttributeId::Category,
            AttributeValue::Level(_) => AttributeId::Level,
            AttributeValue::Region(_) => AttributeId::Region,
            AttributeValue::BirthYear(_) => AttributeId::BirthYear,
            AttributeValue::Entitlements(_) => AttributeId::Entitlements,
            AttributeValue::PhotoDigest(_) => AttributeId::PhotoDigest,
            AttributeValue::CertificateExpiry(_) => AttributeId::CertificateExpiry,
        }
    }

    /// The canonical value bytes (what is hashed and disclosed): name as UTF-8; certificate number
    /// as its 20 ASCII characters; category, level, entitlements one byte; region u32 big-endian;
    /// birth year u16 big-endian; photo digest 32 bytes; expiry u64 big-endian.
    pub fn encode<'b>(&self, buf: &'b mut [u8; MAX_VALUE_LEN]) -> &'b [u8] {
        let n = match self {
            AttributeValue::Name(s) => {
                let b = s.as_bytes();
                let n = b.len().min(MAX_NAME_LEN);
                buf[..n].copy_from_slice(&b[..n]);
                n
            }
            AttributeValue::CertificateNumber(c) => {
                buf[..20].copy_from_slice(&c.as_bytes());
                20
            }
            AttributeValue::Category(c) => {
                buf[0] = c.code();
                1
            }
            AttributeValue::Level(l) => {
                buf[0] = l.get();
                1
            }
            AttributeValue::Region(r) => {
                buf[..4].copy_from_slice(&r.to_be_bytes());
                4
            }
            AttributeValue::BirthYear(y) => {
                buf[..2].copy_from_slice(&y.to_be_bytes());
                2
            }
            AttributeValue::Entitlements(e) => {
                buf[0] = e.0;
                1
            }
            AttributeValue::PhotoDigest(d) => {
                buf[..32].copy_from_slice(d);
                32
            }
            AttributeValue::CertificateExpiry(t) => {
                buf[..8].copy_from_slice(&t.to_be_bytes());
                8
            }
        };
        &buf[..n]
    }

    /// Parses canonical value bytes of attribute `id`, checking the value's rules.
    pub fn parse(id: AttributeId, bytes: &'a [u8]) -> Result<Self, Error> {
        let bad = Error::BadAttributeValue {
            attribute: id as u8,
        };
        Ok(match id {
            AttributeId::Name => {
                if bytes.is_empty() || bytes.len() > MAX_NAME_LEN {
                    return Err(bad);
                }
                AttributeValue::Name(core::str::from_utf8(bytes).map_err(|_| bad)?)
            }
            AttributeId::CertificateNumber => {
                let s = core::str::from_utf8(bytes).map_err(|_| bad)?;
                AttributeValue::CertificateNumber(CertificateNumber::parse(s).map_err(|_| bad)?)
            }
            AttributeId::Category => match bytes {
                [c] => AttributeValue::Category(Category::from_digit(*c).ok_or(bad)?),
                _ => return Err(bad),
            },
            AttributeId::Level => match bytes {
                [l] => AttributeValue::Level(Level::new(*l).ok_or(bad)?),
                _ => return Err(bad),
            },
            AttributeId::Region => {
                let r = u32::from_be_bytes(bytes.try_into().map_err(|_| bad)?);
                if !(100_000..=999_999).contains(&r) {
                    return Err(bad);
                }
                AttributeValue::Region(r)
            }
            AttributeId::BirthYear => {
                AttributeValue::BirthYear(u16::from_be_bytes(bytes.try_into().map_err(|_| bad)?))
            }
            AttributeId::Entitlements => match bytes {
                [e] if e & !Entitlements::ALL == 0 => {
                    AttributeValue::Entitlements(Entitlements(*e))
                }
                _ => return Err(bad),
            },
            AttributeId::PhotoDigest => {
                AttributeValue::PhotoDigest(bytes.try_into().map_err(|_| bad)?)
            }
            AttributeId::CertificateExpiry => AttributeValue::CertificateExpiry(
                u64::from_be_bytes(bytes.try_into().map_err(|_| bad)?),
            ),
        })
    }
}

/// `SHA-256(salt || attribute id || value bytes)` truncated to [`DIGEST_LEN`] bytes.
///
/// Truncation to 128 bits keeps the credential inside the tap's byte budget; a forger needs a
/// second preimage of a salted 128-bit digest, which stays at 2^128 work.
pub fn attribute_digest(salt: &[u8; NONCE_LEN], id: AttributeId, value: &[u8]) -> [u8; DIGEST_LEN] {
    let full = sha256_parts(&[salt, &[id as u8], value]);
    let mut d = [0u8; DIGEST_LEN];
    d.copy_from_slice(&full[..DIGEST_LEN]);
    d
}

/// One attribute's digest inside a credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributeDigest {
    /// Which attribute.
    pub attribute: AttributeId,
    /// [`attribute_digest`] of its salted value.
    pub digest: [u8; DIGEST_LEN],
}

/// One disclosed attribute: the salt and value whose digest the credential holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disclosure<'a> {
    /// Which attribute.
    pub attribute: AttributeId,
    /// The 16-byte salt.
    pub salt: [u8; NONCE_LEN],
    /// Canonical value bytes ([`AttributeValue::encode`]).
    #[serde(borrow)]
    pub value: &'a [u8],
}

impl<'a> Disclosure<'a> {
    /// The digest this disclosure should match.
    pub fn digest(&self) -> [u8; DIGEST_LEN] {
        attribute_digest(&self.salt, self.attribute, self.value)
    }

    /// The typed value.
    pub fn typed_value(&self) -> Result<AttributeValue<'a>, Error> {
        AttributeValue::parse(self.attribute, self.value)
    }
}

/// The credential the issuer signs (domain [`Domain::Credential`], signed by an Issuer key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialBody<'a> {
    /// The card's serial number.
    pub card_serial: CardSerial,
    /// Position of this credential in the status list.
    pub status_index: u32,
    /// Start of validity.
    pub valid_from: u64,
    /// End of validity.
    pub valid_until: u64,
    /// The card's public key (generated on the card).
    pub card_key: PublicKeyBytes,
    /// One digest per attribute, in attribute-id order, each id at most once.
    #[serde(borrow)]
    pub digests: Items<'a, AttributeDigest>,
}

impl<'a> Versioned<'a> for CredentialBody<'a> {
    const KIND: Domain = Domain::Credential;
    const VERSION: u8 = 1;
}

impl<'a> CredentialBody<'a> {
    /// Checks the validity window against `now`.
    pub fn check_time(&self, now: u64) -> Result<(), Error> {
        check_window(self.valid_from, self.valid_until, now)
    }

    /// The signed digest of attribute `id`, if the credential covers it.
    pub fn digest_of(&self, id: AttributeId) -> Option<[u8; DIGEST_LEN]> {
        self.digests
            .iter()
            .find(|d| d.attribute == id)
            .map(|d| d.digest)
    }

    /// The card's public key.
    pub fn card_public_key(&self) -> Result<PublicKey, Error> {
        PublicKey::from_sec1(&self.card_key.0)
    }

    /// Checks the structural rules: digests strictly ascending by attribute id (so each once).
    pub fn check_structure(&self) -> Result<(), Error> {
        let mut last = 0u8;
        for d in self.digests.iter() {
            let id = d.attribute as u8;
            if id <= last {
                return Err(Error::UnexpectedDisclosure { attribute: id });
            }
            last = id;
        }
        Ok(())
    }

    /// Checks every disclosure against its digest; each attribute at most once. Returns the set of
    /// attributes disclosed.
    pub fn check_disclosures(
        &self,
        disclosures: &Items<'a, Disclosure<'a>>,
    ) -> Result<AttributeSet, Error> {
        let mut seen = AttributeSet::NONE;
        for d in disclosures.iter() {
            let id = d.attribute;
            if seen.contains(id) {
                return Err(Error::UnexpectedDisclosure {
                    attribute: id as u8,
                });
            }
            seen.0 |= 1 << (id as u8);
            let expected = self.digest_of(id).ok_or(Error::UnexpectedDisclosure {
                attribute: id as u8,
            })?;
            if !ct_eq(&expected, &d.digest()) {
                return Err(Error::DisclosureMismatch {
                    attribute: id as u8,
                });
            }
            d.typed_value()?;
        }
        Ok(seen)
    }
}

/// Constant-time comparison of digests (the card compares secrets-derived values with it too).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn check_window(valid_from: u64, valid_until: u64, now: u64) -> Result<(), Error> {
    if now < valid_from {
        return Err(Error::NotYetValid { valid_from, now });
    }
    if now > valid_until {
        return Err(Error::Expired { valid_until, now });
    }
    Ok(())
}

/// A key certificate (domain [`Domain::KeyCertificate`], signed by the root; the envelope's signer
/// id is the parent key id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCertificateBody<'a> {
    /// Key id of `public_key` (checked).
    pub key_id: KeyId,
    /// What the key may do.
    pub role: Role,
    /// Who holds it (office, terminal or service name), at most 48 bytes.
    #[serde(borrow)]
    pub subject: &'a str,
    /// 6-digit administrative division code (0 = national).
    pub region: u32,
    /// Services a Terminal key may perform (empty for other roles).
    pub services: ServiceSet,
    /// The certified key.
    pub public_key: PublicKeyBytes,
    /// Start of validity.
    pub valid_from: u64,
    /// End of validity.
    pub valid_until: u64,
}

impl<'a> Versioned<'a> for KeyCertificateBody<'a> {
    const KIND: Domain = Domain::KeyCertificate;
    const VERSION: u8 = 1;
}

/// A key certificate whose signature, key id and structure were checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyCertificate<'a> {
    /// The decoded body.
    pub body: KeyCertificateBody<'a>,
    /// The certified key, parsed.
    pub key: PublicKey,
    /// Key id of the signer (the root).
    pub parent: KeyId,
}

impl<'a> KeyCertificate<'a> {
    /// Verifies `cert` under `root`, checks the key id, the subject length and the role, and the
    /// validity at `now`.
    pub fn verify(
        cert: &Signed<'a>,
        root: &PublicKey,
        role: Role,
        now: u64,
    ) -> Result<Self, Error> {
        let c = Self::verify_untimed(cert, root)?;
        c.check_role(role)?;
        c.check_time(now)?;
        Ok(c)
    }

    /// Verifies signature and structure only (time and role are checked by the caller).
    pub fn verify_untimed(cert: &Signed<'a>, root: &PublicKey) -> Result<Self, Error> {
        let body: KeyCertificateBody<'a> = cert.open(&[], root)?;
        Self::from_trusted_body(body, cert.signer)
    }

    /// Checks the structure of a body whose signature was already verified (a trust-bundle entry).
    pub fn from_trusted_body(body: KeyCertificateBody<'a>, parent: KeyId) -> Result<Self, Error> {
        let key = PublicKey::from_sec1(&body.public_key.0)?;
        if key.key_id() != body.key_id {
            return Err(Error::KeyIdMismatch);
        }
        if body.subject.len() > MAX_SUBJECT_LEN || !body.services.is_known() {
            return Err(Error::Malformed {
                kind: Domain::KeyCertificate,
            });
        }
        Ok(KeyCertificate { body, key, parent })
    }

    /// Requires role `role`.
    pub fn check_role(&self, role: Role) -> Result<(), Error> {
        if self.body.role != role {
            return Err(Error::WrongRole {
                expected: role,
                found: self.body.role,
            });
        }
        Ok(())
    }

    /// Checks the validity window.
    pub fn check_time(&self, now: u64) -> Result<(), Error> {
        check_window(self.body.valid_from, self.body.valid_until, now)
    }
}

/// The trust bundle (domain [`Domain::TrustBundle`], signed by the root): every current key
/// certificate of the roles Issuer, StatusSigner and Voucher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustBundleBody<'a> {
    /// Monotonic epoch; an older epoch never replaces a newer one.
    pub epoch: u64,
    /// When the root signed it.
    pub issued_at: u64,
    /// Root-signed key certificates.
    #[serde(borrow)]
    pub certs: Items<'a, Signed<'a>>,
}

impl<'a> Versioned<'a> for TrustBundleBody<'a> {
    const KIND: Domain = Domain::TrustBundle;
    const VERSION: u8 = 1;
}

/// A verified trust bundle that answers key look-ups.
#[derive(Clone, Copy, Debug)]
pub struct TrustBundle<'a> {
    /// The decoded body.
    pub body: TrustBundleBody<'a>,
}

impl<'a> TrustBundle<'a> {
    /// Verifies the bundle under `root` and checks every entry (signed by the root, well formed).
    /// `installed_epoch` is the epoch in force (None on a fresh device): the offered one must be newer.
    pub fn verify(
        wire: &'a [u8],
        root: &PublicKey,
        installed_epoch: Option<u64>,
    ) -> Result<Self, Error> {
        let signed = Signed::decode(wire)?;
        let body: TrustBundleBody<'a> = signed.open(&[], root)?;
        if let Some(installed) = installed_epoch {
            if body.epoch <= installed {
                return Err(Error::StaleEpoch {
                    installed,
                    offered: body.epoch,
                });
            }
        }
        for cert in body.certs.iter() {
            KeyCertificate::verify_untimed(&cert, root)?;
        }
        Ok(TrustBundle { body })
    }

    /// Wraps a bundle that was verified when it was installed (read back from own storage).
    pub fn from_installed(wire: &'a [u8]) -> Result<Self, Error> {
        let signed = Signed::decode(wire)?;
        Ok(TrustBundle {
            body: signed.decode_trusted()?,
        })
    }

    /// Finds key `key_id` with role `role`, valid at `now`.
    pub fn find(&self, key_id: &KeyId, role: Role, now: u64) -> Result<KeyCertificate<'a>, Error> {
        for cert in self.body.certs.iter() {
            let Ok(body) = cert.decode_trusted::<KeyCertificateBody<'a>>() else {
                continue;
            };
            if &body.key_id != key_id {
                continue;
            }
            let c = KeyCertificate::from_trusted_body(body, cert.signer)?;
            c.check_role(role)?;
            c.check_time(now)?;
            return Ok(c);
        }
        Err(Error::UnknownKey { key_id: *key_id })
    }
}

/// The full status list (domain [`Domain::StatusList`], signed by a StatusSigner).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusListBody<'a> {
    /// Monotonic epoch.
    pub epoch: u64,
    /// When it was signed; terminals show its age and ask staff when it is too old.
    pub issued_at: u64,
    /// The compressed list ([`crate::status_list`] codec).
    #[serde(borrow)]
    pub list: &'a [u8],
}

impl<'a> Versioned<'a> for StatusListBody<'a> {
    const KIND: Domain = Domain::StatusList;
    const VERSION: u8 = 1;
}

/// The change between two status-list epochs (domain [`Domain::StatusDelta`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusDeltaBody<'a> {
    /// Epoch the delta applies to.
    pub from_epoch: u64,
    /// Epoch after applying it.
    pub to_epoch: u64,
    /// When it was signed.
    pub issued_at: u64,
    /// Number of entries of the list after applying it (lists only grow).
    pub size: u32,
    /// Newly revoked indices ([`crate::status_list`] index-set codec).
    #[serde(borrow)]
    pub added: &'a [u8],
}

impl<'a> Versioned<'a> for StatusDeltaBody<'a> {
    const KIND: Domain = Domain::StatusDelta;
    const VERSION: u8 = 1;
}

impl StatusDeltaBody<'_> {
    /// Checks that the delta continues the installed epoch.
    pub fn check_continues(&self, installed_epoch: u64) -> Result<(), Error> {
        if self.from_epoch != installed_epoch {
            return Err(Error::EpochMismatch {
                installed: installed_epoch,
                from: self.from_epoch,
            });
        }
        if self.to_epoch <= self.from_epoch {
            return Err(Error::StaleEpoch {
                installed: installed_epoch,
                offered: self.to_epoch,
            });
        }
        Ok(())
    }
}

/// Terminal service rules (domain [`Domain::ServiceRules`], signed by a StatusSigner).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRulesBody {
    /// Monotonic epoch.
    pub epoch: u64,
    /// When it was signed.
    pub issued_at: u64,
    /// A status list older than this makes the terminal ask staff instead of deciding.
    pub max_status_age_s: u32,
    /// Transit: after a holder with the companion entitlement passes, a second passage is allowed
    /// within this many seconds.
    pub companion_window_s: u32,
    /// Transit: the same card is refused again within this many seconds (anti-passback).
    pub passback_s: u32,
    /// Welfare: largest debit in one tap.
    pub max_debit_points: u32,
    /// Rehab: minimum time between two recorded sessions of one card.
    pub rehab_min_interval_s: u32,
}

impl Versioned<'_> for ServiceRulesBody {
    const KIND: Domain = Domain::ServiceRules;
    const VERSION: u8 = 1;
}

u8_enum! {
    /// Life-cycle state of the card applet.
    pub enum LifeCycle {
        /// Not personalized: only personalization commands under SCP03 work.
        Blank = 1,
        /// Personalized and locked: personalization commands are refused forever.
        Personalized = 2,
        /// Blocked by a signed block command: only SELECT answers.
        Blocked = 3,
    }
}

/// The answer to SELECT: nothing about the holder, not even the serial.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelectResponse {
    /// Applet version (major * 16 + minor).
    pub applet_version: u8,
    /// Life-cycle state.
    pub life_cycle: LifeCycle,
    /// Fresh card challenge for this session.
    pub challenge: [u8; NONCE_LEN],
}

impl Versioned<'_> for SelectResponse {
    const KIND: Domain = Domain::None;
    const VERSION: u8 = 1;
}

/// The one welfare debit a terminal announces in its signed tap request.
///
/// The terminal knows the amount before the card is presented, so it signs it over the card
/// challenge together with the rest of the request; the card then debits exactly this amount
/// under exactly this reference, at most once in the session. A relay on the NFC link can no
/// longer change what is debited (`docs/protocol-card.md` §3, DEBIT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebitIntent {
    /// Points to debit (> 0).
    pub amount: u32,
    /// Terminal's transaction reference; a retry after tearing announces the same one.
    pub reference: [u8; NONCE_LEN],
}

/// What the terminal asks for (domain [`Domain::TapRequest`], signed by the Terminal key with the
/// card challenge as context).
///
/// Format version 2 added `debit`. Version 1 bodies are refused as an unknown version: no card or
/// terminal speaking version 1 was ever deployed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapRequestBody {
    /// Fresh terminal nonce.
    pub terminal_nonce: [u8; NONCE_LEN],
    /// The service performed (must be in the terminal certificate's services).
    pub service: Service,
    /// Attributes asked for; the card releases the intersection with the service's policy.
    pub requested: AttributeSet,
    /// Terminal's time. The card also writes it into a receipt of this session.
    pub time: u64,
    /// Welfare only: the debit this session may perform (`None`: no debit).
    pub debit: Option<DebitIntent>,
}

impl Versioned<'_> for TapRequestBody {
    const KIND: Domain = Domain::TapRequest;
    const VERSION: u8 = 2;
}

/// Data of TERMINAL AUTHENTICATE (CLA 80 INS 82): `version || postcard(this)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalAuth<'a> {
    /// The terminal's root-signed key certificate.
    #[serde(borrow)]
    pub terminal_cert: Signed<'a>,
    /// The signed [`TapRequestBody`].
    #[serde(borrow)]
    pub request: Signed<'a>,
}

impl<'a> Versioned<'a> for TerminalAuth<'a> {
    const KIND: Domain = Domain::None;
    const VERSION: u8 = 1;
}

/// The context of the card's transcript signature: `SHA-256(card challenge || TERMINAL AUTHENTICATE
/// data)`, binding the answer to this session and this exact request.
pub fn transcript_hash(challenge: &[u8; NONCE_LEN], terminal_auth_data: &[u8]) -> [u8; 32] {
    sha256_parts(&[challenge, terminal_auth_data])
}

/// The purse as the card reports it inside its signed tap answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurseState {
    /// Points on the card.
    pub balance: u32,
    /// Debits so far (the counter of the last receipt).
    pub counter: u32,
}

/// The card's answer to TERMINAL AUTHENTICATE (domain [`Domain::TapResponse`], signed by the card
/// key with [`transcript_hash`] as context).
///
/// Format version 2 added `purse`; version 1 answers are refused as an unknown version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapResponseBody<'a> {
    /// The issuer-signed credential.
    #[serde(borrow)]
    pub credential: Signed<'a>,
    /// The released attributes.
    #[serde(borrow)]
    pub disclosures: Items<'a, Disclosure<'a>>,
    /// Welfare sessions: the purse before any debit of this session, covered by the card's
    /// transcript signature (so a relay cannot alter it as it could GET BALANCE's answer).
    /// `None` for the other services.
    pub purse: Option<PurseState>,
}

impl<'a> Versioned<'a> for TapResponseBody<'a> {
    const KIND: Domain = Domain::TapResponse;
    const VERSION: u8 = 2;
}

/// Data of DEBIT (CLA 80 INS 30): `version || postcard(this)`, inside an authenticated session.
///
/// Not signed: the card debits only when all three fields equal the session's signed
/// [`DebitIntent`] and request time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebitRequest {
    /// Points to debit (> 0); must equal the intent's amount.
    pub amount: u32,
    /// Terminal's transaction reference; must equal the intent's. A retry with the same reference
    /// returns the same receipt.
    pub reference: [u8; NONCE_LEN],
    /// Terminal's time; must equal the signed tap request's `time`.
    pub time: u64,
}

impl Versioned<'_> for DebitRequest {
    const KIND: Domain = Domain::None;
    const VERSION: u8 = 1;
}

/// A card-signed debit receipt (domain [`Domain::Receipt`], signed by the card key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptBody {
    /// The card.
    pub card_serial: CardSerial,
    /// The purse counter after this debit (strictly increasing by one per debit).
    pub counter: u32,
    /// Points debited.
    pub amount: u32,
    /// Balance after the debit.
    pub balance_after: u32,
    /// Key id of the terminal the card authenticated.
    pub terminal: KeyId,
    /// The `time` of the signed tap request of the session in which the card debited.
    pub time: u64,
    /// Terminal's transaction reference.
    pub reference: [u8; NONCE_LEN],
}

impl Versioned<'_> for ReceiptBody {
    const KIND: Domain = Domain::Receipt;
    const VERSION: u8 = 1;
}

/// A welfare-point grant (domain [`Domain::Voucher`], signed by a Voucher key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoucherBody {
    /// The card it is for.
    pub card_serial: CardSerial,
    /// Per-card grant sequence number; the card accepts only a number above the last it accepted,
    /// so each grant is credited once.
    pub seq: u32,
    /// Points granted (> 0).
    pub amount: u32,
    /// When it was signed.
    pub issued_at: u64,
    /// Last moment it may be credited.
    pub valid_until: u64,
}

impl Versioned<'_> for VoucherBody {
    const KIND: Domain = Domain::Voucher;
    const VERSION: u8 = 1;
}

/// Data of CREDIT: the Voucher key's certificate and the signed grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditCommand<'a> {
    /// Root-signed certificate of the Voucher key.
    #[serde(borrow)]
    pub voucher_cert: Signed<'a>,
    /// The signed [`VoucherBody`].
    #[serde(borrow)]
    pub voucher: Signed<'a>,
}

impl<'a> Versioned<'a> for CreditCommand<'a> {
    const KIND: Domain = Domain::None;
    const VERSION: u8 = 1;
}

/// An office's order to block a card (domain [`Domain::CardBlock`], signed by an Issuer key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardBlockBody {
    /// The card to block.
    pub card_serial: CardSerial,
    /// When it was ordered.
    pub time: u64,
    /// Reason code (1 lost, 2 stolen, 3 replaced, 4 deceased, 5 certificate withdrawn).
    pub reason: u8,
}

impl Versioned<'_> for CardBlockBody {
    const KIND: Domain = Domain::CardBlock;
    const VERSION: u8 = 1;
}

/// Data of the block command: the Issuer's certificate and the signed order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockCommand<'a> {
    /// Root-signed certificate of the Issuer key.
    #[serde(borrow)]
    pub issuer_cert: Signed<'a>,
    /// The signed [`CardBlockBody`].
    #[serde(borrow)]
    pub order: Signed<'a>,
}

impl<'a> Versioned<'a> for BlockCommand<'a> {
    const KIND: Domain = Domain::None;
    const VERSION: u8 = 1;
}

u8_enum! {
    /// What a person at the terminal is told.
    pub enum Outcome {
        /// The benefit is granted.
        Accepted = 0,
        /// The benefit is refused (see the reason).
        Refused = 1,
        /// The terminal cannot decide alone: a member of staff must look.
        AskStaff = 2,
    }
}

u8_enum! {
    /// Why a tap ended as it did: one code per decision path, shared by terminal and server.
    pub enum Reason {
        /// Accepted.
        Ok = 0,
        /// Accepted: the companion's passage after an entitled holder.
        CompanionPassage = 1,
        /// No card answered, or it left the field.
        NoCard = 10,
        /// The card does not have the applet or answered outside the protocol.
        NotOurCard = 11,
        /// The card is blocked.
        CardBlocked = 12,
        /// The card refused the terminal (certificate or service not accepted).
        TerminalRejected = 13,
        /// The credential's issuer key is not in the trust bundle (or not an Issuer).
        UnknownIssuer = 20,
        /// The credential's signature is invalid (forged or altered).
        ForgedCredential = 21,
        /// The card's transcript signature is invalid (a copied credential without the card key).
        ClonedCard = 22,
        /// The credential has expired.
        Expired = 23,
        /// The credential is not valid yet.
        NotYetValid = 24,
        /// The card is revoked in the status list.
        Revoked = 25,
        /// A disclosure does not match its signed digest.
        DisclosureMismatch = 26,
        /// The card's answer is malformed.
        Malformed = 27,
        /// The certificate itself (attribute) has expired.
        CertificateExpired = 28,
        /// The holder lacks the entitlement this service needs.
        NotEntitled = 30,
        /// This terminal is not certified for the service.
        ServiceNotAllowed = 31,
        /// Not enough points on the card.
        PurseEmpty = 32,
        /// The same card passed moments ago (anti-passback).
        Passback = 33,
        /// A rehab session was recorded too recently.
        TooSoon = 34,
        /// The debit amount is over the rules' limit.
        AmountOverLimit = 35,
        /// The status list is older than the rules allow.
        StatusListOutdated = 40,
        /// No trust bundle, status list or rules installed.
        NotProvisioned = 41,
        /// The tap log is full of records not yet uploaded.
        LogFull = 42,
        /// The terminal's clock is not set.
        ClockUnset = 43,
        /// The card failed in the middle of a debit: retry the tap.
        DebitInterrupted = 44,
    }
}

impl Reason {
    /// Stable lower-case name for logs, statistics and APIs.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Ok => "ok",
            Reason::CompanionPassage => "companion_passage",
            Reason::NoCard => "no_card",
            Reason::NotOurCard => "not_our_card",
            Reason::CardBlocked => "card_blocked",
            Reason::TerminalRejected => "terminal_rejected",
            Reason::UnknownIssuer => "unknown_issuer",
            Reason::ForgedCredential => "forged_credential",
            Reason::ClonedCard => "cloned_card",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::Revoked => "revoked",
            Reason::DisclosureMismatch => "disclosure_mismatch",
            Reason::Malformed => "malformed",
            Reason::CertificateExpired => "certificate_expired",
            Reason::NotEntitled => "not_entitled",
            Reason::ServiceNotAllowed => "service_not_allowed",
            Reason::PurseEmpty => "purse_empty",
            Reason::Passback => "passback",
            Reason::TooSoon => "too_soon",
            Reason::AmountOverLimit => "amount_over_limit",
            Reason::StatusListOutdated => "status_list_outdated",
            Reason::NotProvisioned => "not_provisioned",
            Reason::LogFull => "log_full",
            Reason::ClockUnset => "clock_unset",
            Reason::DebitInterrupted => "debit_interrupted",
        }
    }
}

/// One record of a terminal's tap log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapRecord<'a> {
    /// Terminal's record sequence number (strictly increasing by one).
    pub seq: u32,
    /// Terminal's time of the tap.
    pub time: u64,
    /// Service performed.
    pub service: Service,
    /// What the person was told.
    pub outcome: Outcome,
    /// Why.
    pub reason: Reason,
    /// The card, when its credential could be read.
    pub card_serial: Option<CardSerial>,
    /// The card's status index, when its credential could be read.
    pub status_index: Option<u32>,
    /// Epoch of the status list the decision used.
    pub status_epoch: u64,
    /// Issue time of that status list (lets the server see how old it was).
    pub status_issued_at: u64,
    /// The card-signed receipt of a welfare debit.
    #[serde(borrow)]
    pub receipt: Option<Signed<'a>>,
}

impl<'a> Versioned<'a> for TapRecord<'a> {
    const KIND: Domain = Domain::None;
    const VERSION: u8 = 1;
}

/// A batch of tap-log records for upload (domain [`Domain::LogBatch`], signed by the Terminal key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBatchBody<'a> {
    /// Key id of the terminal.
    pub terminal: KeyId,
    /// Sequence number of the first record.
    pub first_seq: u32,
    /// Sequence number of the last record.
    pub last_seq: u32,
    /// Terminal's time when it made the batch (clock-drift signal).
    pub created_at: u64,
    /// The records, in sequence order.
    #[serde(borrow)]
    pub records: Items<'a, TapRecord<'a>>,
}

impl<'a> Versioned<'a> for LogBatchBody<'a> {
    const KIND: Domain = Domain::LogBatch;
    const VERSION: u8 = 1;
}

impl LogBatchBody<'_> {
    /// Checks that the records run `first_seq..=last_seq` without gap or repeat.
    pub fn check_sequence(&self) -> Result<(), Error> {
        let mut expected = self.first_seq;
        let mut n = 0u32;
        for r in self.records.iter() {
            if r.seq != expected {
                return Err(Error::Malformed {
                    kind: Domain::LogBatch,
                });
            }
            expected = expected.wrapping_add(1);
            n += 1;
        }
        if n == 0 || self.last_seq != self.first_seq.wrapping_add(n - 1) {
            return Err(Error::Malformed {
                kind: Domain::LogBatch,
            });
        }
        Ok(())
    }
}

/// Decodes unsigned command data (`version || postcard(T)`), refusing unknown versions and trailing
/// bytes.
pub fn decode_command<'a, T: Versioned<'a>>(data: &'a [u8]) -> Result<T, Error> {
    decode_versioned(data)
}

/// Decodes a plain postcard value (a list item, an envelope) using every byte.
pub fn decode_plain<'a, T: Deserialize<'a> + Serialize>(bytes: &'a [u8]) -> Result<T, Error> {
    decode_exact(Domain::None, bytes)
}
