//! The formats every part of the disability-certificate platform speaks.
//!
//! * [`certno`]: the 20-character certificate number (GB 11643-1999 resident ID + category + level).
//! * [`model`]: credentials, disclosures, key certificates, trust bundles, taps, receipts, vouchers,
//!   tap-log records and batches, all encoded with postcard and starting with a format version.
//! * [`sig`]: domain-separated ECDSA P-256 signatures: verify first, decode second.
//! * [`status_list`]: the compressed revocation bitstring with a block index and signed deltas.
//!
//! `no_std` always; `alloc` adds encoders that return `Vec`s, `std` adds `std::error::Error`.
//! The byte-level description of every format is `docs/protocol.md`.
#![no_std]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod apdu;
pub mod certno;
pub mod error;
pub mod model;
#[cfg(feature = "scp03")]
pub mod scp03;
pub mod sig;
pub mod status_list;
pub mod wire;

pub use error::Error;
pub use sig::{KeyId, P256Signer, PublicKey, SignError, Signed, Signer};
pub use wire::{Items, Versioned};
