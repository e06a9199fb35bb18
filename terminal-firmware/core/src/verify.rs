//! Signature checks through the pluggable [`Verifier`] backend.
//!
//! The same rules as `shared_crypto::sig` (signature over `tag || signer || context || body`,
//! verify first, decode second), but the elliptic-curve work goes through the terminal's backend,
//! so the Cortex-M4 image can use its assembly implementation and link no portable arithmetic.

use shared_crypto::model::{KeyCertificateBody, Role, TrustBundleBody, MAX_SUBJECT_LEN};
use shared_crypto::sig::{key_id_of, sha256_parts, Domain, KeyId, Signed};
use shared_crypto::wire::{decode_versioned, Versioned};
use shared_crypto::Error;

use crate::platform::Verifier;

/// A parsed public key with its key id.
#[derive(Clone, Debug)]
pub struct Key<K> {
    /// Key id (first 8 bytes of SHA-256 of the compressed point).
    pub id: KeyId,
    /// The parsed key.
    pub key: K,
}

impl<K> Key<K> {
    /// Parses `sec1` with `verifier`.
    pub fn parse<V: Verifier<Key = K>>(verifier: &V, sec1: &[u8; 33]) -> Option<Self> {
        Some(Key {
            id: key_id_of(sec1),
            key: verifier.parse_key(sec1)?,
        })
    }
}

/// The SHA-256 prehash of a signed object of kind `domain`.
pub fn prehash(domain: Domain, signer: &KeyId, context: &[u8], body: &[u8]) -> [u8; 32] {
    sha256_parts(&[&[domain as u8], signer, context, body])
}

/// Verifies `signed` as kind `domain` with `context` under `key`; returns the body bytes.
pub fn verify<'a, V: Verifier>(
    verifier: &V,
    signed: &Signed<'a>,
    domain: Domain,
    context: &[u8],
    key: &Key<V::Key>,
) -> Result<&'a [u8], Error> {
    if signed.signer != key.id {
        return Err(Error::WrongSigner {
            expected: key.id,
            found: signed.signer,
        });
    }
    let digest = prehash(domain, &signed.signer, context, signed.body);
    if verifier.verify_prehash(&key.key, &digest, &signed.sig.0) {
        Ok(signed.body)
    } else {
        Err(Error::Signature)
    }
}

/// Verifies, then decodes the body as `T`.
pub fn open<'a, T: Versioned<'a>, V: Verifier>(
    verifier: &V,
    signed: &Signed<'a>,
    context: &[u8],
    key: &Key<V::Key>,
) -> Result<T, Error> {
    let body = verify(verifier, signed, T::KIND, context, key)?;
    decode_versioned(body)
}

/// Checks a key certificate's structure (the signature was checked by the caller): the key id is
/// the hash of the key, the key is a curve point, the subject and the services are well formed.
pub fn check_certificate<V: Verifier>(
    verifier: &V,
    body: &KeyCertificateBody<'_>,
) -> Result<Key<V::Key>, Error> {
    if key_id_of(&body.public_key.0) != body.key_id {
        return Err(Error::KeyIdMismatch);
    }
    if body.subject.len() > MAX_SUBJECT_LEN || !body.services.is_known() {
        return Err(Error::Malformed {
            kind: Domain::KeyCertificate,
        });
    }
    Key::parse(verifier, &body.public_key.0).ok_or(Error::BadPublicKey)
}

/// Verifies a root-signed key certificate and its structure.
pub fn verify_certificate<'a, V: Verifier>(
    verifier: &V,
    cert: &Signed<'a>,
    root: &Key<V::Key>,
) -> Result<(KeyCertificateBody<'a>, Key<V::Key>), Error> {
    let body: KeyCertificateBody<'a> = open(verifier, cert, &[], root)?;
    let key = check_certificate(verifier, &body)?;
    Ok((body, key))
}

/// Verifies a trust bundle (`Signed<TrustBundleBody>` wire bytes) under the root: the envelope and
/// every entry, each root-signed and well formed. The epoch is checked by the caller.
pub fn verify_bundle<'a, V: Verifier>(
    verifier: &V,
    wire: &'a [u8],
    root: &Key<V::Key>,
) -> Result<TrustBundleBody<'a>, Error> {
    let signed = Signed::decode(wire)?;
    let body: TrustBundleBody<'a> = open(verifier, &signed, &[], root)?;
    for cert in body.certs.iter() {
        verify_certificate(verifier, &cert, root)?;
    }
    Ok(body)
}

/// Decodes a bundle that was verified when it was installed (read back from own flash).
pub fn installed_bundle(wire: &[u8]) -> Result<TrustBundleBody<'_>, Error> {
    Signed::decode(wire)?.decode_trusted()
}

/// Why a key was not found in the bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupError {
    /// No entry with this key id.
    Unknown,
    /// The entry has another role.
    WrongRole,
    /// The entry is not valid at this time.
    OutOfValidity,
    /// The entry does not parse (cannot happen for a bundle verified at install).
    Malformed,
}

/// Finds key `key_id` with role `role`, valid at `now`, in an installed bundle, and parses its key.
pub fn find_key<V: Verifier>(
    verifier: &V,
    bundle: &TrustBundleBody<'_>,
    key_id: &KeyId,
    role: Role,
    now: u64,
) -> Result<(Key<V::Key>, u64, u64), LookupError> {
    for cert in bundle.certs.iter() {
        let Ok(body) = cert.decode_trusted::<KeyCertificateBody<'_>>() else {
            continue;
        };
        if &body.key_id != key_id {
            continue;
        }
        if body.role != role {
            return Err(LookupError::WrongRole);
        }
        if now < body.valid_from || now > body.valid_until {
            return Err(LookupError::OutOfValidity);
        }
        let key = Key::parse(verifier, &body.public_key.0).ok_or(LookupError::Malformed)?;
        return Ok((key, body.valid_from, body.valid_until));
    }
    Err(LookupError::Unknown)
}
