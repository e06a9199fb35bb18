//! The seams between the core and the device: clock, feedback, flash read in place, and the
//! signature-verification backend. The card transport is [`shared_crypto::apdu::Transport`] and the
//! randomness a `rand_core` [`rand_core::CryptoRng`]; flash writes go through `embedded-storage`'s
//! [`NorFlash`].

use embedded_storage::nor_flash::NorFlash;

use crate::feedback::Signal;

/// The terminal's wall clock (Unix seconds, UTC).
pub trait Clock {
    /// The current time, or `None` while the clock is not set (after a battery loss): the terminal
    /// then asks staff ([`shared_crypto::model::Reason::ClockUnset`]) instead of deciding.
    fn now(&self) -> Option<u64>;
}

/// What the person at the terminal perceives: light, sound and a voice prompt, always together.
pub trait Feedback {
    /// Shows and sounds `signal` (an LED pattern, a buzzer pattern, the voice prompt and the same
    /// prompt's text on a display, if there is one).
    fn show(&mut self, signal: &Signal);
}

/// A NOR flash partition whose contents can also be read in place (memory-mapped internal flash,
/// XIP external flash, or a RAM-backed partition).
///
/// The status list and the trust bundle are looked up where they lie: a status list of millions of
/// entries never passes through RAM.
pub trait MappedFlash: NorFlash {
    /// The whole partition, `capacity()` bytes, as it is now.
    fn mapped(&self) -> &[u8];
}

/// An ECDSA P-256 verification backend: the portable `p256` crate on the host
/// ([`P256Verifier`]), the Cortex-M4 assembly backend in the M4 image.
///
/// Keys are parsed once ([`Verifier::parse_key`]) and may be cached by the core; verification takes
/// the SHA-256 prehash the core computed over `tag || signer || context || body`.
pub trait Verifier {
    /// A parsed public key (decompressed point).
    type Key: Clone;
    /// Parses a 33-byte compressed SEC1 point; `None` when it is not on the curve.
    fn parse_key(&self, sec1: &[u8; 33]) -> Option<Self::Key>;
    /// Whether `sig` (`r || s`, 32 bytes each, big-endian) is valid over `prehash` under `key`.
    /// Both low-S and high-S are accepted (FIPS 186); `r` or `s` outside `1..n` is invalid.
    fn verify_prehash(&self, key: &Self::Key, prehash: &[u8; 32], sig: &[u8; 64]) -> bool;
}

/// The portable verification backend (`p256`), the reference every other backend is checked
/// against.
#[derive(Clone, Copy, Debug, Default)]
pub struct P256Verifier;

impl Verifier for P256Verifier {
    type Key = p256::ecdsa::VerifyingKey;

    fn parse_key(&self, sec1: &[u8; 33]) -> Option<Self::Key> {
        if sec1[0] != 0x02 && sec1[0] != 0x03 {
            return None;
        }
        p256::ecdsa::VerifyingKey::from_sec1_bytes(sec1).ok()
    }

    fn verify_prehash(&self, key: &Self::Key, prehash: &[u8; 32], sig: &[u8; 64]) -> bool {
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        let Ok(sig) = p256::ecdsa::Signature::from_slice(sig) else {
            return false;
        };
        key.verify_prehash(prehash, &sig).is_ok()
    }
}

impl<V: Verifier + ?Sized> Verifier for &V {
    type Key = V::Key;
    fn parse_key(&self, sec1: &[u8; 33]) -> Option<Self::Key> {
        (**self).parse_key(sec1)
    }
    fn verify_prehash(&self, key: &Self::Key, prehash: &[u8; 32], sig: &[u8; 64]) -> bool {
        (**self).verify_prehash(key, prehash, sig)
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now(&self) -> Option<u64> {
        (**self).now()
    }
}

impl<F: Feedback + ?Sized> Feedback for &mut F {
    fn show(&mut self, signal: &Signal) {
        (**self).show(signal)
    }
}
