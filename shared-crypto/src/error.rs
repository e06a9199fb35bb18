//! The one error type of the format and signature layer.
//!
//! Signature failures are deliberately opaque ([`Error::Signature`]): a verifier learns nothing about
//! *why* a signature failed, so an attacker cannot use the answer as an oracle. Everything else says
//! what was expected and what arrived, so that an operator can act on it.

use core::fmt;

use crate::sig::Domain;

/// Why a signed object, a body or a piece of wire data was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The signature does not verify under the given key (deliberately no detail).
    Signature,
    /// A public key is not a valid compressed SEC1 P-256 point.
    BadPublicKey,
    /// The envelope names a signer other than the key we were told to verify with.
    WrongSigner {
        /// Key id of the key we verify with.
        expected: [u8; 8],
        /// Key id the envelope names.
        found: [u8; 8],
    },
    /// The body starts with a format version this implementation does not speak.
    UnknownVersion {
        /// Which kind of object.
        kind: Domain,
        /// The version we speak.
        expected: u8,
        /// The version found.
        found: u8,
    },
    /// The data ended before the object was complete.
    Truncated {
        /// Which kind of object (or [`Domain::None`] for the envelope and command data).
        kind: Domain,
    },
    /// The data does not decode as the object (bad enum value, bad varint, invalid UTF-8, ...).
    Malformed {
        /// Which kind of object.
        kind: Domain,
    },
    /// Bytes were left over after the object: never ignored.
    TrailingBytes {
        /// Which kind of object.
        kind: Domain,
        /// How many bytes were left.
        count: usize,
    },
    /// An output buffer is too small for the encoding.
    BufferTooSmall,
    /// A key certificate names a key id that is not the hash of its public key.
    KeyIdMismatch,
    /// A key certificate has a role other than the one this use requires.
    WrongRole {
        /// Role required.
        expected: crate::model::Role,
        /// Role found.
        found: crate::model::Role,
    },
    /// A key certificate does not allow the service asked for.
    ServiceNotAllowed,
    /// An object is used after its validity ended.
    Expired {
        /// End of validity (Unix seconds).
        valid_until: u64,
        /// The verifier's time.
        now: u64,
    },
    /// An object is used before its validity began.
    NotYetValid {
        /// Start of validity (Unix seconds).
        valid_from: u64,
        /// The verifier's time.
        now: u64,
    },
    /// A key id is not in the trust bundle (or not with the required role).
    UnknownKey {
        /// The key id looked up.
        key_id: [u8; 8],
    },
    /// An update carries an epoch that is not newer than the installed one.
    StaleEpoch {
        /// The epoch installed.
        installed: u64,
        /// The epoch offered.
        offered: u64,
    },
    /// A delta starts from another epoch than the installed one.
    EpochMismatch {
        /// The installed epoch.
        installed: u64,
        /// The epoch the delta starts from.
        from: u64,
    },
    /// A disclosure does not match the digest the issuer signed for it.
    DisclosureMismatch {
        /// Attribute id of the disclosure.
        attribute: u8,
    },
    /// A disclosure names an attribute the credential has no digest for, or appears twice.
    UnexpectedDisclosure {
        /// Attribute id of the disclosure.
        attribute: u8,
    },
    /// An attribute value does not have the form of its attribute.
    BadAttributeValue {
        /// Attribute id.
        attribute: u8,
    },
    /// A list holds more entries than the format allows.
    TooMany {
        /// Which kind of object.
        kind: Domain,
    },
}

impl Error {
    /// A stable machine-readable reason, for logs, HTTP bodies and terminal reason codes.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Signature => "bad_signature",
            Error::BadPublicKey => "bad_public_key",
            Error::WrongSigner { .. } => "wrong_signer",
            Error::UnknownVersion { .. } => "unknown_version",
            Error::Truncated { .. } => "truncated",
            Error::Malformed { .. } => "malformed",
            Error::TrailingBytes { .. } => "trailing_bytes",
            Error::BufferTooSmall => "buffer_too_small",
            Error::KeyIdMismatch => "key_id_mismatch",
            Error::WrongRole { .. } => "wrong_role",
            Error::ServiceNotAllowed => "service_not_allowed",
            Error::Expired { .. } => "expired",
            Error::NotYetValid { .. } => "not_yet_valid",
            Error::UnknownKey { .. } => "unknown_key",
            Error::StaleEpoch { .. } => "stale_epoch",
            Error::EpochMismatch { .. } => "epoch_mismatch",
            Error::DisclosureMismatch { .. } => "disclosure_mismatch",
            Error::UnexpectedDisclosure { .. } => "unexpected_disclosure",
            Error::BadAttributeValue { .. } => "bad_attribute_value",
            Error::TooMany { .. } => "too_many",
        }
    }

    /// Maps a postcard decoding error onto ours, keeping the kind of object.
    pub(crate) fn from_postcard(kind: Domain, e: postcard::Error) -> Self {
        match e {
            postcard::Error::DeserializeUnexpectedEnd => Error::Truncated { kind },
            _ => Error::Malformed { kind },
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Signature => f.write_str("signature does not verify"),
            Error::BadPublicKey => f.write_str("public key is not a compressed P-256 point"),
            Error::WrongSigner { expected, found } => write!(
                f,
                "object is signed by key {} but key {} was expected",
                Hex(found),
                Hex(expected)
            ),
            Error::UnknownVersion {
                kind,
                expected,
                found,
            } => write!(
                f,
                "{kind:?} has format version {found}, this software speaks version {expected}: update it"
            ),
            Error::Truncated { kind } => write!(f, "{kind:?} is truncated"),
            Error::Malformed { kind } => write!(f, "{kind:?} is malformed"),
            Error::TrailingBytes { kind, count } => {
                write!(f, "{count} unexpected bytes after the {kind:?}")
            }
            Error::BufferTooSmall => f.write_str("output buffer too small"),
            Error::KeyIdMismatch => {
                f.write_str("key certificate's key id is not the hash of its public key")
            }
            Error::WrongRole { expected, found } => {
                write!(f, "key has role {found:?}, {expected:?} is required")
            }
            Error::ServiceNotAllowed => {
                f.write_str("key certificate does not allow this service")
            }
            Error::Expired { valid_until, now } => {
                write!(f, "expired at {valid_until} (now {now})")
            }
            Error::NotYetValid { valid_from, now } => {
                write!(f, "not valid before {valid_from} (now {now})")
            }
            Error::UnknownKey { key_id } => {
                write!(f, "key {} is not in the trust bundle", Hex(key_id))
            }
            Error::StaleEpoch { installed, offered } => write!(
                f,
                "epoch {offered} is not newer than the installed epoch {installed}"
            ),
            Error::EpochMismatch { installed, from } => write!(
                f,
                "delta starts from epoch {from} but epoch {installed} is installed: fetch the full list"
            ),
            Error::DisclosureMismatch { attribute } => {
                write!(f, "disclosure of attribute {attribute} does not match its digest")
            }
            Error::UnexpectedDisclosure { attribute } => write!(
                f,
                "disclosure of attribute {attribute} is not covered by the credential or repeated"
            ),
            Error::BadAttributeValue { attribute } => {
                write!(f, "value of attribute {attribute} is malformed")
            }
            Error::TooMany { kind } => write!(f, "{kind:?} has too many entries"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

/// Lower-case hex of a short byte string, for messages.
pub(crate) struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}
