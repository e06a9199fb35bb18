//! Domain-separated ECDSA P-256 / SHA-256 signatures over exact body bytes.
//!
//! Every signed object travels as a [`Signed`] envelope `{ signer, body, sig }`. The signature covers
//! `tag || signer || context || body`, where `tag` is the one-byte [`Domain`] of the kind of object,
//! `signer` the 8-byte key id of the signing key, and `context` bytes both sides know but that are not
//! sent (the card challenge for a tap request, the transcript hash for a tap response; empty for every
//! other kind). So no signature of one kind can be replayed as another, a signer cannot be
//! substituted, and a tap answer cannot be replayed into another tap.
//!
//! The API only hands out a decoded body after its signature verified ([`Signed::open`]).

use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::wire::{decode_exact, decode_versioned, ByteArray, Versioned};

/// 8-byte key identifier: the first 8 bytes of SHA-256 over the compressed SEC1 public key.
pub type KeyId = [u8; 8];

/// A 64-byte `r || s` ECDSA signature as it travels.
pub type SignatureBytes = ByteArray<64>;

/// A 33-byte compressed SEC1 public key as it travels.
pub type PublicKeyBytes = ByteArray<33>;

/// The kind of a signed object; its value is the one-byte domain tag in the signature input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Domain {
    /// Not a signed kind: envelopes, lists and command data.
    None = 0x00,
    /// [`crate::model::CredentialBody`], signed by an Issuer.
    Credential = 0x01,
    /// [`crate::model::KeyCertificateBody`], signed by the root.
    KeyCertificate = 0x02,
    /// [`crate::model::TrustBundleBody`], signed by the root.
    TrustBundle = 0x03,
    /// [`crate::model::StatusListBody`], signed by a StatusSigner.
    StatusList = 0x04,
    /// [`crate::model::StatusDeltaBody`], signed by a StatusSigner.
    StatusDelta = 0x05,
    /// [`crate::model::TapRequestBody`], signed by a Terminal (context: card challenge).
    TapRequest = 0x06,
    /// [`crate::model::TapResponseBody`], signed by the card (context: transcript hash).
    TapResponse = 0x07,
    /// [`crate::model::ReceiptBody`], signed by the card.
    Receipt = 0x08,
    /// [`crate::model::VoucherBody`], signed by a Voucher key.
    Voucher = 0x09,
    /// [`crate::model::LogBatchBody`], signed by a Terminal.
    LogBatch = 0x0A,
    /// [`crate::model::ServiceRulesBody`], signed by a StatusSigner.
    ServiceRules = 0x0B,
    /// [`crate::model::CardBlockBody`], signed by an Issuer.
    CardBlock = 0x0C,
}

/// A verified P-256 public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicKey {
    key: p256::ecdsa::VerifyingKey,
    sec1: [u8; 33],
}

impl PublicKey {
    /// Parses a compressed SEC1 point (33 bytes), rejecting anything else.
    pub fn from_sec1(bytes: &[u8]) -> Result<Self, Error> {
        let sec1: [u8; 33] = bytes.try_into().map_err(|_| Error::BadPublicKey)?;
        if sec1[0] != 0x02 && sec1[0] != 0x03 {
            return Err(Error::BadPublicKey);
        }
        let key =
            p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| Error::BadPublicKey)?;
        Ok(PublicKey { key, sec1 })
    }

    /// Parses a SEC1 point in any encoding (uncompressed 65 bytes or compressed 33), for importing
    /// keys from other tools and test vectors; the wire always carries the compressed form.
    pub fn from_sec1_any(bytes: &[u8]) -> Result<Self, Error> {
        let key =
            p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes).map_err(|_| Error::BadPublicKey)?;
        Self::from_verifying_key(key)
    }

    /// Wraps a p256 verifying key.
    pub fn from_verifying_key(key: p256::ecdsa::VerifyingKey) -> Result<Self, Error> {
        let point = key.to_sec1_point(true);
        let sec1: [u8; 33] = point
            .as_bytes()
            .try_into()
            .map_err(|_| Error::BadPublicKey)?;
        Ok(PublicKey { key, sec1 })
    }

    /// The compressed SEC1 encoding.
    pub fn to_sec1(&self) -> [u8; 33] {
        self.sec1
    }

    /// The wire form.
    pub fn to_bytes(&self) -> PublicKeyBytes {
        ByteArray(self.sec1)
    }

    /// The key id (first 8 bytes of SHA-256 of the compressed point).
    pub fn key_id(&self) -> KeyId {
        key_id_of(&self.sec1)
    }

    /// The uncompressed SEC1 encoding (`04 || x || y`, 65 bytes): the form verifiers that do not
    /// decompress points themselves take (ring's `ECDSA_P256_SHA256_FIXED` on the server). The
    /// wire always carries the compressed form.
    pub fn to_sec1_uncompressed(&self) -> [u8; 65] {
        let point = self.key.to_sec1_point(false);
        // A valid key's uncompressed encoding is always 65 bytes; all zeros (never a valid
        // encoding, so every verification with it fails) cannot happen.
        <[u8; 65]>::try_from(point.as_bytes()).unwrap_or([0u8; 65])
    }

    /// Verifies `sig` (64 bytes `r || s`) over the concatenation of `parts`, hashed with SHA-256.
    ///
    /// This is the single verification path of the platform: the domain-tagged API below and the
    /// Wycheproof tests both go through it. Any failure is the opaque [`Error::Signature`].
    pub fn verify_parts(&self, parts: &[&[u8]], sig: &[u8]) -> Result<(), Error> {
        let sig = p256::ecdsa::Signature::from_slice(sig).map_err(|_| Error::Signature)?;
        let digest = sha256_parts(parts);
        self.key
            .verify_prehash(&digest, &sig)
            .map_err(|_| Error::Signature)
    }
}

/// The key id of a compressed SEC1 public key.
pub fn key_id_of(sec1: &[u8; 33]) -> KeyId {
    let d = sha256_parts(&[sec1]);
    let mut id = [0u8; 8];
    id.copy_from_slice(&d[..8]);
    id
}

/// SHA-256 over the concatenation of `parts`.
pub fn sha256_parts(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Something that signs with a P-256 key: `ring` on the server, the card's key store on the card,
/// [`P256Signer`] in `no_std` code and tests.
pub trait Signer {
    /// Key id of the signing key.
    fn key_id(&self) -> KeyId;
    /// Signs the concatenation of `parts` (ECDSA P-256 over SHA-256 of it), returning `r || s`.
    fn sign_parts(&self, parts: &[&[u8]]) -> Result<[u8; 64], SignError>;
}

/// A signer failed (key store unavailable, hardware fault); no detail leaves the key store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignError;

impl core::fmt::Display for SignError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("signing failed")
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SignError {}

/// A [`Signer`] over a p256 signing key (RFC 6979 deterministic nonces, so no RNG is needed to sign;
/// the key itself comes from the caller's RNG).
#[derive(Clone)]
pub struct P256Signer {
    key: p256::ecdsa::SigningKey,
    public: PublicKey,
}

impl P256Signer {
    /// Wraps a signing key.
    pub fn new(key: p256::ecdsa::SigningKey) -> Result<Self, Error> {
        let public = PublicKey::from_verifying_key(*key.verifying_key())?;
        Ok(P256Signer { key, public })
    }

    /// Imports a 32-byte big-endian private scalar.
    pub fn from_bytes(secret: &[u8; 32]) -> Result<Self, Error> {
        let key = p256::ecdsa::SigningKey::from_slice(secret).map_err(|_| Error::BadPublicKey)?;
        Self::new(key)
    }

    /// Generates a fresh key from the caller's RNG.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Result<Self, Error> {
        // Rejection sampling: a 32-byte string is a valid scalar with overwhelming probability.
        loop {
            let mut secret = [0u8; 32];
            rng.fill_bytes(&mut secret);
            if let Ok(s) = Self::from_bytes(&secret) {
                return Ok(s);
            }
        }
    }

    /// The 32-byte private scalar (for the card's own store; never logged or sent).
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes().into()
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }
}

impl Signer for P256Signer {
    fn key_id(&self) -> KeyId {
        self.public.key_id()
    }

    fn sign_parts(&self, parts: &[&[u8]]) -> Result<[u8; 64], SignError> {
        let digest = sha256_parts(parts);
        let sig: p256::ecdsa::Signature = self.key.sign_prehash(&digest).map_err(|_| SignError)?;
        // Low-S form so that one message has one encoding on our side (verifiers accept both).
        let sig = sig.normalize_s();
        Ok(sig.to_bytes().into())
    }
}

/// The exact message a signature covers: `tag || signer || context || body`.
///
/// The one definition of the signature input, used by [`Signed::verify`] and [`sign_body`] here
/// and by verifiers elsewhere (the server checks receipts and log batches with ring over
/// [`SigningInput::to_vec`]), so that signer and verifiers cannot drift apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SigningInput<'a> {
    tag: [u8; 1],
    signer: KeyId,
    context: &'a [u8],
    body: &'a [u8],
}

impl<'a> SigningInput<'a> {
    /// The input for a signature of kind `domain` by key `signer` with `context` over `body`.
    pub fn new(domain: Domain, signer: KeyId, context: &'a [u8], body: &'a [u8]) -> Self {
        SigningInput {
            tag: [domain as u8],
            signer,
            context,
            body,
        }
    }

    /// The four parts in order: the one-byte domain tag, the signer's key id, the context and
    /// the body. SHA-256 over their concatenation is what ECDSA signs.
    pub fn parts(&self) -> [&[u8]; 4] {
        [&self.tag, &self.signer, self.context, self.body]
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        1 + self.signer.len() + self.context.len() + self.body.len()
    }

    /// Whether the input is empty (never: the tag and signer are always there).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The concatenated message, for verifiers that take one byte string.
    #[cfg(feature = "alloc")]
    pub fn to_vec(&self) -> alloc::vec::Vec<u8> {
        let mut v = alloc::vec::Vec::with_capacity(self.len());
        for p in self.parts() {
            v.extend_from_slice(p);
        }
        v
    }
}

/// A signed object as it travels: `postcard({ signer: [u8; 8], body: bytes, sig: [u8; 64] })`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed<'a> {
    /// Key id of the signing key (bound by the signature).
    pub signer: KeyId,
    /// The exact body bytes: `version || postcard(fields)`.
    #[serde(borrow)]
    pub body: &'a [u8],
    /// `r || s` over `tag || signer || context || body`.
    pub sig: SignatureBytes,
}

impl<'a> Signed<'a> {
    /// Parses an envelope that must use every byte of `wire`.
    pub fn decode(wire: &'a [u8]) -> Result<Self, Error> {
        decode_exact(Domain::None, wire)
    }

    /// Verifies the envelope as kind `domain` under `key` with `context`, returning the body bytes.
    pub fn verify(
        &self,
        domain: Domain,
        context: &[u8],
        key: &PublicKey,
    ) -> Result<&'a [u8], Error> {
        let expected = key.key_id();
        if self.signer != expected {
            return Err(Error::WrongSigner {
                expected,
                found: self.signer,
            });
        }
        key.verify_parts(&self.signing_input(domain, context).parts(), &self.sig.0)?;
        Ok(self.body)
    }

    /// What the signature covers if this envelope is of kind `domain` with `context`: the input
    /// for verifying it with another library. The envelope's own `signer` is part of it, so the
    /// caller must still check that `signer` is the id of the key it verifies with (as
    /// [`Signed::verify`] does).
    pub fn signing_input<'c>(&self, domain: Domain, context: &'c [u8]) -> SigningInput<'c>
    where
        'a: 'c,
    {
        SigningInput::new(domain, self.signer, context, self.body)
    }

    /// Verifies, then decodes the body as `T` (version checked first, trailing bytes refused).
    pub fn open<T: Versioned<'a>>(&self, context: &[u8], key: &PublicKey) -> Result<T, Error> {
        let body = self.verify(T::KIND, context, key)?;
        decode_versioned(body)
    }

    /// Decodes the body WITHOUT verifying: only for bodies whose signature was checked before
    /// (entries of a verified trust bundle, a credential stored by the card that issued it).
    pub fn decode_trusted<T: Versioned<'a>>(&self) -> Result<T, Error> {
        decode_versioned(self.body)
    }

    /// Encodes the envelope into `buf`.
    pub fn encode_into<'b>(&self, buf: &'b mut [u8]) -> Result<&'b mut [u8], Error> {
        crate::wire::encode_into(self, buf)
    }

    /// Encodes the envelope into a new vector.
    #[cfg(feature = "alloc")]
    pub fn to_vec(&self) -> alloc::vec::Vec<u8> {
        crate::wire::encode(self)
    }
}

/// Signs `body` (already encoded with its version) as kind `domain` with `context`.
pub fn sign_body<'a, S: Signer + ?Sized>(
    signer: &S,
    domain: Domain,
    context: &[u8],
    body: &'a [u8],
) -> Result<Signed<'a>, SignError> {
    let id = signer.key_id();
    let sig = signer.sign_parts(&SigningInput::new(domain, id, context, body).parts())?;
    Ok(Signed {
        signer: id,
        body,
        sig: ByteArray(sig),
    })
}

/// Encodes `value` and signs it, returning the wire bytes of the [`Signed`] envelope.
#[cfg(feature = "alloc")]
pub fn sign<'a, T: Versioned<'a>, S: Signer + ?Sized>(
    value: &T,
    context: &[u8],
    signer: &S,
) -> Result<alloc::vec::Vec<u8>, SignError> {
    let body = crate::wire::encode_versioned(value);
    let signed = sign_body(signer, T::KIND, context, &body)?;
    Ok(signed.to_vec())
}

/// Encodes `value` into `scratch`, signs it and writes the envelope into `out` (no allocation).
pub fn sign_into<'o, 'a, T: Versioned<'a>, S: Signer + ?Sized>(
    value: &T,
    context: &[u8],
    signer: &S,
    scratch: &mut [u8],
    out: &'o mut [u8],
) -> Result<&'o mut [u8], Error> {
    let body = crate::wire::encode_versioned_into(value, scratch)?;
    let signed = sign_body(signer, T::KIND, context, body).map_err(|_| Error::Signature)?;
    signed.encode_into(out)
}
