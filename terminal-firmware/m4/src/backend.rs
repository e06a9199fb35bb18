//! The accelerated P-256 backend (`p256-cortex-m4`, assembly) behind the core's `Verifier` and
//! shared-crypto's `Signer`.
//!
//! The wrapper of `p256-cortex-m4` 0.1.0-alpha.6 range-checks `r` twice and `s` never when it
//! parses a signature, so both are checked here before it sees them (`1 <= r, s < n`).

use core::cell::RefCell;

use card_applet::sim::TestRng;
use rand_core::Rng;
use shared_crypto::sig::{key_id_of, sha256_parts, KeyId, SignError, Signer};
use terminal_core::Verifier;

/// The group order n of P-256, big-endian.
const N: [u8; 32] = [
    0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    0xBC, 0xE6, 0xFA, 0xAD, 0xA7, 0x17, 0x9E, 0x84, 0xF3, 0xB9, 0xCA, 0xC2, 0xFC, 0x63, 0x25, 0x51,
];

/// Whether `1 <= x < n` (big-endian).
fn in_range(x: &[u8]) -> bool {
    x.iter().any(|&b| b != 0) && x < &N[..]
}

/// n - x for `0 < x < n` (big-endian).
fn n_minus(x: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = i16::from(N[i]) - i16::from(x[i]) - borrow;
        borrow = 0;
        if d < 0 {
            d += 256;
            borrow = 1;
        }
        out[i] = d as u8;
    }
    out
}

/// Verification with the assembly implementation.
#[derive(Clone, Copy, Debug, Default)]
pub struct AsmVerifier;

impl Verifier for AsmVerifier {
    type Key = p256_cortex_m4::PublicKey;

    fn parse_key(&self, sec1: &[u8; 33]) -> Option<Self::Key> {
        if sec1[0] != 0x02 && sec1[0] != 0x03 {
            return None;
        }
        p256_cortex_m4::PublicKey::from_sec1_bytes(sec1).ok()
    }

    fn verify_prehash(&self, key: &Self::Key, prehash: &[u8; 32], sig: &[u8; 64]) -> bool {
        if !in_range(&sig[..32]) || !in_range(&sig[32..]) {
            return false;
        }
        match p256_cortex_m4::Signature::from_untagged_bytes(sig) {
            Ok(s) => key.verify_prehashed(prehash, &s),
            Err(_) => false,
        }
    }
}

/// rand_core 0.10 generator seen through the rand_core 0.6 traits `p256-cortex-m4` asks for.
struct Rng06<'a>(&'a mut TestRng);

impl rand_core06::RngCore for Rng06<'_> {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core06::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core06::CryptoRng for Rng06<'_> {}

/// The terminal key in the assembly implementation. The nonce `k` comes from the generator: on
/// QEMU the emulation-only DRBG, on a device its hardware RNG.
pub struct AsmSigner {
    secret: p256_cortex_m4::SecretKey,
    key_id: KeyId,
    rng: RefCell<TestRng>,
}

impl AsmSigner {
    /// Imports a 32-byte scalar.
    pub fn new(secret: &[u8; 32], rng: TestRng) -> Option<Self> {
        let secret = p256_cortex_m4::SecretKey::from_bytes(secret).ok()?;
        let key_id = key_id_of(&secret.public_key().to_compressed_sec1_bytes());
        Some(AsmSigner {
            secret,
            key_id,
            rng: RefCell::new(rng),
        })
    }

    /// The compressed public key.
    pub fn public_key(&self) -> [u8; 33] {
        self.secret.public_key().to_compressed_sec1_bytes()
    }
}

impl Signer for AsmSigner {
    fn key_id(&self) -> KeyId {
        self.key_id
    }

    fn sign_parts(&self, parts: &[&[u8]]) -> Result<[u8; 64], SignError> {
        let digest = sha256_parts(parts);
        let mut rng = self.rng.try_borrow_mut().map_err(|_| SignError)?;
        let sig = self.secret.sign_prehashed(&digest, Rng06(&mut rng));
        let mut out = sig.to_untagged_bytes();
        // Low-S, as every signer of the platform emits (docs/protocol.md §2).
        let mut s = [0u8; 32];
        s.copy_from_slice(&out[32..]);
        let mut half = [0u8; 32];
        let mut carry = 0u8;
        for (h, n) in half.iter_mut().zip(N.iter()) {
            *h = (n >> 1) | carry;
            carry = (n & 1) << 7;
        }
        if s > half {
            out[32..].copy_from_slice(&n_minus(&s));
        }
        Ok(out)
    }
}

/// Range helpers for the cross-check.
pub fn is_low_s(sig: &[u8; 64]) -> bool {
    let mut s = [0u8; 32];
    s.copy_from_slice(&sig[32..]);
    n_minus(&s) >= s
}

/// `(r, n - s)`: the other valid encoding of the same signature.
pub fn high_s_twin(sig: &[u8; 64]) -> [u8; 64] {
    let mut s = [0u8; 32];
    s.copy_from_slice(&sig[32..]);
    let mut out = *sig;
    out[32..].copy_from_slice(&n_minus(&s));
    out
}
