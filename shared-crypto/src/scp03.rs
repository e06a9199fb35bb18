//! GlobalPlatform Secure Channel Protocol '03' (GP Card Specification v2.3, Amendment D v1.2):
//! key derivation, cryptograms, command and response protection, and per-card key diversification.
//!
//! `no_std`, no allocation: every output goes into a caller's buffer. Both ends are here so that the
//! host (card-tool) and the card (the applet) share one implementation, tested against the
//! GlobalPlatform vectors in `../shared/vectors/scp03.json` from both sides.
//!
//! * [`kdf`]: the NIST SP 800-108 counter-mode KDF with AES-CMAC, laid out as in Amendment D §6.2.1
//!   (11 zero bytes, derivation constant, separation byte 00, L in bits on two bytes, counter i, context).
//! * Session keys S-ENC, S-MAC, S-RMAC (§6.2.1, constants 04, 06, 07), card and host cryptograms
//!   (§6.2.2.2, §6.2.2.3, constants 00 and 01), pseudo-random card challenge (§6.2.2.1, constant 02).
//! * C-MAC with the 16-byte MAC chaining value (§6.2.4), C-DECRYPTION with the encryption counter as
//!   ICV (§6.2.6), R-MAC over chaining value, response data and status word (§6.2.5), R-ENCRYPTION with
//!   the counter ICV whose first byte is 0x80 (§6.2.7).
//! * [`HostInit`] -> [`HostSession`] (off-card entity) and [`CardInit`] -> [`CardSession`] (card):
//!   typestates, so a session cannot wrap before mutual authentication succeeded.
//! * [`diversify`]: this platform's derivation of a card's static keys from an office master key and
//!   the card's 10-byte key diversification data (documented in `docs/protocol-card.md`).
//!
//! Keys of 128, 192 and 256 bits are supported (the GlobalPlatform vectors use all three); the keys
//! of this platform's cards are AES-128.

use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use aes::{Aes128, Aes192, Aes256};
use cmac::{Cmac, Mac};

/// AES block length.
pub const BLOCK_LEN: usize = 16;
/// Length of host and card challenges and cryptograms (S8 mode).
pub const CHALLENGE_LEN: usize = 8;
/// Length of the key diversification data returned by INITIALIZE UPDATE.
pub const DIV_DATA_LEN: usize = 10;
/// Length of the C-MAC and R-MAC appended to an APDU (S8 mode).
pub const MAC_LEN: usize = 8;
/// The Secure Channel Protocol identifier in the key information of INITIALIZE UPDATE.
pub const SCP_ID: u8 = 0x03;
/// Class byte bit that marks secure messaging (GP Card Spec §11.1.4).
pub const CLA_SECURE_MESSAGING: u8 = 0x04;
/// INS of INITIALIZE UPDATE.
pub const INS_INITIALIZE_UPDATE: u8 = 0x50;
/// INS of EXTERNAL AUTHENTICATE.
pub const INS_EXTERNAL_AUTHENTICATE: u8 = 0x82;
/// Length of the INITIALIZE UPDATE answer with a random card challenge (no sequence counter).
pub const INIT_UPDATE_RESPONSE_LEN: usize = 29;
/// Length of the INITIALIZE UPDATE answer with a pseudo-random card challenge (sequence counter).
pub const INIT_UPDATE_RESPONSE_LEN_SEQ: usize = 32;
/// Longest plain command data that still fits one short APDU once padded, encrypted and MACed:
/// `pad16(n + 1) + 8 <= 255`.
pub const MAX_PLAIN_DATA: usize = 239;

/// Security level bits (EXTERNAL AUTHENTICATE P1, Amendment D §5.1 / Table 7-3).
pub mod level {
    /// Command MAC.
    pub const C_MAC: u8 = 0x01;
    /// Command data decryption (requires C-MAC).
    pub const C_DECRYPTION: u8 = 0x02;
    /// Response MAC.
    pub const R_MAC: u8 = 0x10;
    /// Response data encryption (requires R-MAC and C-DECRYPTION).
    pub const R_ENCRYPTION: u8 = 0x20;
    /// Everything: the level this platform personalizes at.
    pub const FULL: u8 = 0x33;

    /// Whether `l` is a level Amendment D allows with a C-MAC (we refuse "no security").
    pub const fn is_valid(l: u8) -> bool {
        matches!(l, 0x01 | 0x03 | 0x11 | 0x13 | 0x31 | 0x33)
    }
}

/// Bits of the "i" parameter of the key information (Amendment D §5.1, Table 5-1).
pub mod i_param {
    /// The card challenge is pseudo-random (computed from a sequence counter), which the answer
    /// then carries.
    pub const PSEUDO_RANDOM_CHALLENGE: u8 = 0x10;
    /// The card supports R-MAC.
    pub const R_MAC: u8 = 0x20;
    /// The card supports R-ENCRYPTION.
    pub const R_ENCRYPTION: u8 = 0x40;
}

/// Why an SCP03 step failed. The card answers any of them with a security status word and closes
/// the session; a host drops the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scp03Error {
    /// A key is not 16, 24 or 32 bytes long.
    KeyLength,
    /// An APDU or an INITIALIZE UPDATE answer does not have the expected structure.
    Malformed,
    /// The card cryptogram (host side) or host cryptogram (card side) is wrong.
    Cryptogram,
    /// A C-MAC or R-MAC does not verify.
    Mac,
    /// Decrypted data does not end in ISO 9797-1 method 2 padding.
    Padding,
    /// The output buffer is too small.
    BufferTooSmall,
    /// The requested security level is invalid or not supported by the card.
    SecurityLevel,
    /// The protected command would not fit a short APDU (more than [`MAX_PLAIN_DATA`] bytes).
    TooLong,
    /// The key version number or the protocol in the answer is not the one asked for.
    KeyVersion,
    /// The encryption counter is exhausted (2^32 commands in one session).
    CounterExhausted,
}

impl core::fmt::Display for Scp03Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = match self {
            Scp03Error::KeyLength => "AES key must be 16, 24 or 32 bytes",
            Scp03Error::Malformed => "malformed SCP03 message",
            Scp03Error::Cryptogram => "SCP03 cryptogram mismatch (wrong static keys?)",
            Scp03Error::Mac => "SCP03 MAC mismatch",
            Scp03Error::Padding => "SCP03 padding error",
            Scp03Error::BufferTooSmall => "output buffer too small",
            Scp03Error::SecurityLevel => "SCP03 security level invalid or unsupported",
            Scp03Error::TooLong => "command data too long for one protected short APDU",
            Scp03Error::KeyVersion => "SCP03 key version or protocol mismatch",
            Scp03Error::CounterExhausted => "SCP03 encryption counter exhausted",
        };
        f.write_str(s)
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Scp03Error {}

/// An AES key of 128, 192 or 256 bits. Its `Debug` shows the length only.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AesKey {
    bytes: [u8; 32],
    len: u8,
}

impl core::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "AesKey({} bits)", self.len as usize * 8)
    }
}

impl From<[u8; 16]> for AesKey {
    fn from(k: [u8; 16]) -> Self {
        let mut bytes = [0u8; 32];
        bytes[..16].copy_from_slice(&k);
        AesKey { bytes, len: 16 }
    }
}

enum Cipher {
    A128(Aes128),
    A192(Aes192),
    A256(Aes256),
}

impl Cipher {
    fn encrypt(&self, block: &mut [u8; BLOCK_LEN]) {
        let mut b = aes::Block::from(*block);
        match self {
            Cipher::A128(c) => c.encrypt_block(&mut b),
            Cipher::A192(c) => c.encrypt_block(&mut b),
            Cipher::A256(c) => c.encrypt_block(&mut b),
        }
        *block = b.into();
    }

    fn decrypt(&self, block: &mut [u8; BLOCK_LEN]) {
        let mut b = aes::Block::from(*block);
        match self {
            Cipher::A128(c) => c.decrypt_block(&mut b),
            Cipher::A192(c) => c.decrypt_block(&mut b),
            Cipher::A256(c) => c.decrypt_block(&mut b),
        }
        *block = b.into();
    }
}

impl AesKey {
    /// Wraps a 16-, 24- or 32-byte key.
    pub fn new(key: &[u8]) -> Result<Self, Scp03Error> {
        if !matches!(key.len(), 16 | 24 | 32) {
            return Err(Scp03Error::KeyLength);
        }
        let mut bytes = [0u8; 32];
        bytes[..key.len()].copy_from_slice(key);
        Ok(AesKey {
            bytes,
            len: key.len() as u8,
        })
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// Key length in bytes.
    #[allow(clippy::len_without_is_empty)] // a key is never empty
    pub fn len(&self) -> usize {
        self.len as usize
    }

    fn cipher(&self) -> Cipher {
        // The length was checked in the constructors, so each arm's slice has the exact size.
        let k = self.as_bytes();
        match self.len {
            24 => Cipher::A192(Aes192::new(&aes::cipher::Key::<Aes192>::from(arr::<24>(k)))),
            32 => Cipher::A256(Aes256::new(&aes::cipher::Key::<Aes256>::from(arr::<32>(k)))),
            _ => Cipher::A128(Aes128::new(&aes::cipher::Key::<Aes128>::from(arr::<16>(k)))),
        }
    }

    /// Encrypts one block (AES-ECB).
    pub fn encrypt_block(&self, block: &mut [u8; BLOCK_LEN]) {
        self.cipher().encrypt(block);
    }

    /// AES-CMAC (NIST SP 800-38B) over the concatenation of `parts`.
    pub fn cmac(&self, parts: &[&[u8]]) -> [u8; BLOCK_LEN] {
        fn run<M: Mac>(mut m: M, parts: &[&[u8]]) -> [u8; BLOCK_LEN] {
            for p in parts {
                m.update(p);
            }
            let tag = m.finalize().into_bytes();
            let mut out = [0u8; BLOCK_LEN];
            out.copy_from_slice(&tag[..BLOCK_LEN]);
            out
        }
        let k = self.as_bytes();
        match self.len {
            24 => run(
                <Cmac<Aes192> as cmac::KeyInit>::new(&arr::<24>(k).into()),
                parts,
            ),
            32 => run(
                <Cmac<Aes256> as cmac::KeyInit>::new(&arr::<32>(k).into()),
                parts,
            ),
            _ => run(
                <Cmac<Aes128> as cmac::KeyInit>::new(&arr::<16>(k).into()),
                parts,
            ),
        }
    }

    /// AES-CBC encryption in place of `data` (a multiple of 16 bytes) with initial vector `iv`.
    fn cbc_encrypt(&self, iv: [u8; BLOCK_LEN], data: &mut [u8]) {
        let c = self.cipher();
        let mut prev = iv;
        for chunk in data.chunks_exact_mut(BLOCK_LEN) {
            let mut b = arr::<BLOCK_LEN>(chunk);
            xor_into(&mut b, &prev);
            c.encrypt(&mut b);
            chunk.copy_from_slice(&b);
            prev = b;
        }
    }

    /// AES-CBC decryption in place of `data` (a multiple of 16 bytes) with initial vector `iv`.
    fn cbc_decrypt(&self, iv: [u8; BLOCK_LEN], data: &mut [u8]) {
        let c = self.cipher();
        let mut prev = iv;
        for chunk in data.chunks_exact_mut(BLOCK_LEN) {
            let ct = arr::<BLOCK_LEN>(chunk);
            let mut b = ct;
            c.decrypt(&mut b);
            xor_into(&mut b, &prev);
            chunk.copy_from_slice(&b);
            prev = ct;
        }
    }
}

/// AES-CMAC of `msg` under a 16-, 24- or 32-byte `key` (the Wycheproof tests use this).
pub fn aes_cmac(key: &[u8], msg: &[u8]) -> Result<[u8; BLOCK_LEN], Scp03Error> {
    Ok(AesKey::new(key)?.cmac(&[msg]))
}

/// Copies the first `N` bytes of `s` (callers pass slices of at least `N` bytes).
fn arr<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    let n = s.len().min(N);
    a[..n].copy_from_slice(&s[..n]);
    a
}

fn xor_into(a: &mut [u8; BLOCK_LEN], b: &[u8; BLOCK_LEN]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

/// Constant-time equality (MACs and cryptograms).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Derivation constants of Amendment D §6.2.1 (Table 6-1).
pub mod constant {
    /// Card cryptogram.
    pub const CARD_CRYPTOGRAM: u8 = 0x00;
    /// Host cryptogram.
    pub const HOST_CRYPTOGRAM: u8 = 0x01;
    /// Pseudo-random card challenge.
    pub const CARD_CHALLENGE: u8 = 0x02;
    /// S-ENC.
    pub const S_ENC: u8 = 0x04;
    /// S-MAC.
    pub const S_MAC: u8 = 0x06;
    /// S-RMAC.
    pub const S_RMAC: u8 = 0x07;
    /// This platform's card static ENC key from the office master key (outside GP's range).
    pub const DIV_ENC: u8 = 0x81;
    /// This platform's card static MAC key.
    pub const DIV_MAC: u8 = 0x82;
    /// This platform's card static DEK.
    pub const DIV_DEK: u8 = 0x83;
}

/// The SP 800-108 counter-mode KDF with AES-CMAC as PRF, in the layout of Amendment D §6.2.1:
/// for i = 1, 2, ...: `CMAC(key, 00*11 || constant || 00 || L(2 bytes, bits) || i || context)`,
/// concatenated and truncated to `out.len()` bytes (at most 64; L = 8 * out.len()).
pub fn kdf(key: &AesKey, constant: u8, context: &[u8], out: &mut [u8]) {
    let l_bits = ((out.len() * 8) as u16).to_be_bytes();
    for (i, chunk) in out.chunks_mut(BLOCK_LEN).enumerate() {
        let mut label = [0u8; 16];
        label[11] = constant;
        label[12] = 0x00;
        label[13] = l_bits[0];
        label[14] = l_bits[1];
        label[15] = (i + 1) as u8;
        let block = key.cmac(&[&label, context]);
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
}

fn derive_key(key: &AesKey, constant: u8, context: &[u8], len: usize) -> AesKey {
    let mut out = [0u8; 32];
    kdf(key, constant, context, &mut out[..len]);
    // len is the length of an existing AesKey, so 16, 24 or 32.
    AesKey {
        bytes: out,
        len: len as u8,
    }
}

/// A card's static AES-128 keys (Key-ENC, Key-MAC, Key-DEK).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StaticKeys {
    /// Key-ENC: source of S-ENC and of the pseudo-random card challenge.
    pub enc: [u8; 16],
    /// Key-MAC: source of S-MAC and S-RMAC.
    pub mac: [u8; 16],
    /// Key-DEK: data encryption key (sensitive data; not used by this platform's commands).
    pub dek: [u8; 16],
}

impl core::fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("StaticKeys(..)")
    }
}

/// This platform's key diversification: the card's static keys from the office SCP03 master key
/// and the card's 10-byte key diversification data (the first 10 bytes of its INITIALIZE UPDATE
/// answer). Each key is `KDF(master, constant, div_data)` with [`kdf`], L = 128 and the constants
/// 0x81 (ENC), 0x82 (MAC), 0x83 (DEK), which lie outside the constants GlobalPlatform defines, so
/// no diversified key equals a session key or cryptogram of the master.
pub fn diversify(master: &[u8; 16], div_data: &[u8; 10]) -> StaticKeys {
    let m = AesKey::from(*master);
    let mut enc = [0u8; 16];
    let mut mac = [0u8; 16];
    let mut dek = [0u8; 16];
    kdf(&m, constant::DIV_ENC, div_data, &mut enc);
    kdf(&m, constant::DIV_MAC, div_data, &mut mac);
    kdf(&m, constant::DIV_DEK, div_data, &mut dek);
    StaticKeys { enc, mac, dek }
}

/// A static key set with its key version number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeySet {
    /// Key version number (INITIALIZE UPDATE P1).
    pub kvn: u8,
    /// Key-ENC.
    pub enc: AesKey,
    /// Key-MAC.
    pub mac: AesKey,
    /// Key-DEK.
    pub dek: AesKey,
}

impl KeySet {
    /// An AES-128 key set from [`StaticKeys`].
    pub fn from_static(kvn: u8, keys: &StaticKeys) -> Self {
        KeySet {
            kvn,
            enc: AesKey::from(keys.enc),
            mac: AesKey::from(keys.mac),
            dek: AesKey::from(keys.dek),
        }
    }
}

/// The session keys of one secure channel session (Amendment D §6.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionKeys {
    /// S-ENC: command and response encryption.
    pub s_enc: AesKey,
    /// S-MAC: C-MAC and the cryptograms.
    pub s_mac: AesKey,
    /// S-RMAC: R-MAC.
    pub s_rmac: AesKey,
}

impl SessionKeys {
    /// Derives the session keys with context `host challenge || card challenge`.
    pub fn derive(keys: &KeySet, host_challenge: &[u8; 8], card_challenge: &[u8; 8]) -> Self {
        let mut ctx = [0u8; 16];
        ctx[..8].copy_from_slice(host_challenge);
        ctx[8..].copy_from_slice(card_challenge);
        SessionKeys {
            s_enc: derive_key(&keys.enc, constant::S_ENC, &ctx, keys.enc.len()),
            s_mac: derive_key(&keys.mac, constant::S_MAC, &ctx, keys.mac.len()),
            s_rmac: derive_key(&keys.mac, constant::S_RMAC, &ctx, keys.mac.len()),
        }
    }

    fn cryptogram(&self, constant: u8, host: &[u8; 8], card: &[u8; 8]) -> [u8; 8] {
        let mut ctx = [0u8; 16];
        ctx[..8].copy_from_slice(host);
        ctx[8..].copy_from_slice(card);
        let mut out = [0u8; 8];
        kdf(&self.s_mac, constant, &ctx, &mut out);
        out
    }

    /// The card cryptogram (§6.2.2.2).
    pub fn card_cryptogram(&self, host_challenge: &[u8; 8], card_challenge: &[u8; 8]) -> [u8; 8] {
        self.cryptogram(constant::CARD_CRYPTOGRAM, host_challenge, card_challenge)
    }

    /// The host cryptogram (§6.2.2.3).
    pub fn host_cryptogram(&self, host_challenge: &[u8; 8], card_challenge: &[u8; 8]) -> [u8; 8] {
        self.cryptogram(constant::HOST_CRYPTOGRAM, host_challenge, card_challenge)
    }
}

/// The pseudo-random card challenge (§6.2.2.1): `KDF(Key-ENC, 02, sequence counter || AID)`, 64 bits.
pub fn pseudo_random_card_challenge(enc: &AesKey, sequence: &[u8; 3], aid: &[u8]) -> [u8; 8] {
    let mut ctx = [0u8; 3 + 16];
    let n = aid.len().min(16);
    ctx[..3].copy_from_slice(sequence);
    ctx[3..3 + n].copy_from_slice(&aid[..n]);
    let mut out = [0u8; 8];
    kdf(enc, constant::CARD_CHALLENGE, &ctx[..3 + n], &mut out);
    out
}

/// The answer to INITIALIZE UPDATE (Amendment D §7.1.1.6, S8 mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitUpdateResponse {
    /// Key diversification data.
    pub div_data: [u8; DIV_DATA_LEN],
    /// Key version number.
    pub kvn: u8,
    /// Protocol identifier (03).
    pub scp_id: u8,
    /// The "i" parameter ([`i_param`]).
    pub i_param: u8,
    /// Card challenge.
    pub card_challenge: [u8; CHALLENGE_LEN],
    /// Card cryptogram.
    pub card_cryptogram: [u8; CHALLENGE_LEN],
    /// Sequence counter, present when the card challenge is pseudo-random.
    pub sequence: Option<[u8; 3]>,
}

impl InitUpdateResponse {
    /// Parses the 29- or 32-byte answer (S16 mode is not supported).
    pub fn parse(data: &[u8]) -> Result<Self, Scp03Error> {
        if data.len() != INIT_UPDATE_RESPONSE_LEN && data.len() != INIT_UPDATE_RESPONSE_LEN_SEQ {
            return Err(Scp03Error::Malformed);
        }
        Ok(InitUpdateResponse {
            div_data: arr(&data[..10]),
            kvn: data[10],
            scp_id: data[11],
            i_param: data[12],
            card_challenge: arr(&data[13..21]),
            card_cryptogram: arr(&data[21..29]),
            sequence: if data.len() == INIT_UPDATE_RESPONSE_LEN_SEQ {
                Some(arr(&data[29..32]))
            } else {
                None
            },
        })
    }

    /// Encodes the answer into `out`, returning its length (29 or 32).
    pub fn encode(&self, out: &mut [u8; INIT_UPDATE_RESPONSE_LEN_SEQ]) -> usize {
        out[..10].copy_from_slice(&self.div_data);
        out[10] = self.kvn;
        out[11] = self.scp_id;
        out[12] = self.i_param;
        out[13..21].copy_from_slice(&self.card_challenge);
        out[21..29].copy_from_slice(&self.card_cryptogram);
        match self.sequence {
            Some(s) => {
                out[29..32].copy_from_slice(&s);
                INIT_UPDATE_RESPONSE_LEN_SEQ
            }
            None => INIT_UPDATE_RESPONSE_LEN,
        }
    }
}

/// A short command APDU split into its fields (ISO 7816-4 §5.1, cases 1 to 4, no extended length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShortApdu<'a> {
    /// CLA, INS, P1, P2.
    pub header: [u8; 4],
    /// Command data (empty if absent).
    pub data: &'a [u8],
    /// Le byte if present (0x00 means 256).
    pub le: Option<u8>,
}

impl<'a> ShortApdu<'a> {
    /// Parses a short APDU; `Lc = 0` and any length inconsistency are refused.
    pub fn parse(apdu: &'a [u8]) -> Result<Self, Scp03Error> {
        if apdu.len() < 4 {
            return Err(Scp03Error::Malformed);
        }
        let header = arr(&apdu[..4]);
        let body = &apdu[4..];
        match body.len() {
            0 => Ok(ShortApdu {
                header,
                data: &[],
                le: None,
            }),
            1 => Ok(ShortApdu {
                header,
                data: &[],
                le: Some(body[0]),
            }),
            n => {
                let lc = body[0] as usize;
                if lc == 0 {
                    return Err(Scp03Error::Malformed);
                }
                if n == 1 + lc {
                    Ok(ShortApdu {
                        header,
                        data: &body[1..],
                        le: None,
                    })
                } else if n == 2 + lc {
                    Ok(ShortApdu {
                        header,
                        data: &body[1..1 + lc],
                        le: Some(body[1 + lc]),
                    })
                } else {
                    Err(Scp03Error::Malformed)
                }
            }
        }
    }

    /// Encodes header, data and Le into `out`, returning the length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, Scp03Error> {
        let need =
            4 + if self.data.is_empty() {
                0
            } else {
                1 + self.data.len()
            } + self.le.map_or(0, |_| 1);
        if self.data.len() > 255 {
            return Err(Scp03Error::TooLong);
        }
        let out = out.get_mut(..need).ok_or(Scp03Error::BufferTooSmall)?;
        out[..4].copy_from_slice(&self.header);
        let mut n = 4;
        if !self.data.is_empty() {
            out[4] = self.data.len() as u8;
            out[5..5 + self.data.len()].copy_from_slice(self.data);
            n += 1 + self.data.len();
        }
        if let Some(le) = self.le {
            out[n] = le;
            n += 1;
        }
        Ok(n)
    }
}

/// ISO 9797-1 padding method 2 of `len` bytes already in `buf`: appends 0x80 and zeros up to the next
/// multiple of 16 (a full block when `len` already is one), returning the padded length.
fn pad80(buf: &mut [u8], len: usize) -> Result<usize, Scp03Error> {
    let padded = (len / BLOCK_LEN + 1) * BLOCK_LEN;
    let tail = buf.get_mut(len..padded).ok_or(Scp03Error::BufferTooSmall)?;
    tail.fill(0);
    tail[0] = 0x80;
    Ok(padded)
}

/// Removes ISO 9797-1 method 2 padding; everything after the last 0x80 must be zero, and the 0x80
/// must lie in the last block.
fn unpad80(data: &[u8]) -> Result<usize, Scp03Error> {
    let mut i = data.len();
    while i > 0 {
        i -= 1;
        match data[i] {
            0x00 if data.len() - i < BLOCK_LEN => continue,
            0x80 => return Ok(i),
            _ => return Err(Scp03Error::Padding),
        }
    }
    Err(Scp03Error::Padding)
}

/// The state both ends keep after mutual authentication.
#[derive(Clone, Copy, Debug)]
struct Channel {
    keys: SessionKeys,
    level: u8,
    /// MAC chaining value: the full 16-byte C-MAC of the last command (§6.2.4).
    chain: [u8; BLOCK_LEN],
    /// Encryption counter of the last protected command (§6.2.6); 0 until the first one.
    counter: u32,
}

impl Channel {
    fn counter_block(&self, response: bool) -> [u8; BLOCK_LEN] {
        let mut b = [0u8; BLOCK_LEN];
        b[12..].copy_from_slice(&self.counter.to_be_bytes());
        if response {
            b[0] = 0x80;
        }
        self.keys.s_enc.encrypt_block(&mut b);
        b
    }

    /// C-MAC over the modified header and `data`, updating the chaining value.
    fn c_mac(&mut self, header: &[u8; 4], lc: u8, data: &[u8]) -> [u8; BLOCK_LEN] {
        let mac = self.keys.s_mac.cmac(&[&self.chain, header, &[lc], data]);
        self.chain = mac;
        mac
    }

    fn r_mac(&self, data: &[u8], sw: u16) -> [u8; BLOCK_LEN] {
        self.keys
            .s_rmac
            .cmac(&[&self.chain, data, &sw.to_be_bytes()])
    }

    fn next_counter(&mut self) -> Result<(), Scp03Error> {
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or(Scp03Error::CounterExhausted)?;
        Ok(())
    }
}

/// Whether a status word gets response protection: GP protects answers of processed commands
/// (9000 and the warnings 61xx, 62xx, 63xx), never a bare error status.
pub fn sw_is_protected(sw: u16) -> bool {
    sw == 0x9000 || matches!(sw >> 8, 0x61..=0x63)
}

/// The host side before mutual authentication: holds the host challenge of INITIALIZE UPDATE.
#[derive(Clone, Copy, Debug)]
pub struct HostInit {
    kvn: u8,
    host_challenge: [u8; CHALLENGE_LEN],
}

impl HostInit {
    /// Starts with key version `kvn` (0 = the card's default) and a fresh random host challenge.
    pub fn new(kvn: u8, host_challenge: [u8; CHALLENGE_LEN]) -> Self {
        HostInit {
            kvn,
            host_challenge,
        }
    }

    /// The INITIALIZE UPDATE command `80 50 kvn 00 08 <host challenge> 00`.
    pub fn command(&self) -> [u8; 14] {
        let mut c = [0u8; 14];
        c[..5].copy_from_slice(&[0x80, INS_INITIALIZE_UPDATE, self.kvn, 0x00, 0x08]);
        c[5..13].copy_from_slice(&self.host_challenge);
        c
    }

    /// Checks the card's INITIALIZE UPDATE answer (protocol, key version, card cryptogram) with the
    /// static `keys`, and builds EXTERNAL AUTHENTICATE for security `level`
    /// (`84 82 level 00 10 <host cryptogram> <C-MAC>`). The session is usable once the card
    /// answered 9000 to that command.
    pub fn authenticate(
        self,
        keys: &KeySet,
        response: &[u8],
        level: u8,
    ) -> Result<(HostSession, InitUpdateResponse, [u8; 21]), Scp03Error> {
        if !level::is_valid(level) {
            return Err(Scp03Error::SecurityLevel);
        }
        let r = InitUpdateResponse::parse(response)?;
        if r.scp_id != SCP_ID || (self.kvn != 0 && r.kvn != self.kvn) {
            return Err(Scp03Error::KeyVersion);
        }
        if (level & level::R_MAC != 0 && r.i_param & i_param::R_MAC == 0)
            || (level & level::R_ENCRYPTION != 0 && r.i_param & i_param::R_ENCRYPTION == 0)
        {
            return Err(Scp03Error::SecurityLevel);
        }
        let sk = SessionKeys::derive(keys, &self.host_challenge, &r.card_challenge);
        let expected = sk.card_cryptogram(&self.host_challenge, &r.card_challenge);
        if !ct_eq(&expected, &r.card_cryptogram) {
            return Err(Scp03Error::Cryptogram);
        }
        let host_cryptogram = sk.host_cryptogram(&self.host_challenge, &r.card_challenge);
        let mut ch = Channel {
            keys: sk,
            level,
            chain: [0u8; BLOCK_LEN],
            counter: 0,
        };
        let header = [
            0x80 | CLA_SECURE_MESSAGING,
            INS_EXTERNAL_AUTHENTICATE,
            level,
            0x00,
        ];
        let mac = ch.c_mac(&header, 0x10, &host_cryptogram);
        let mut cmd = [0u8; 21];
        cmd[..4].copy_from_slice(&header);
        cmd[4] = 0x10;
        cmd[5..13].copy_from_slice(&host_cryptogram);
        cmd[13..21].copy_from_slice(&mac[..MAC_LEN]);
        Ok((HostSession { ch }, r, cmd))
    }
}

/// An authenticated session on the host side.
#[derive(Clone, Copy, Debug)]
pub struct HostSession {
    ch: Channel,
}

impl HostSession {
    /// The security level.
    pub fn level(&self) -> u8 {
        self.ch.level
    }

    /// Protects one plain short command APDU (CLA without the secure-messaging bit; the chaining
    /// bit is kept) into `out`: encrypts the data under C-DECRYPTION, sets CLA bit 0x04, appends the
    /// C-MAC and keeps Le. Returns the protected APDU's length.
    pub fn wrap_command(&mut self, apdu: &[u8], out: &mut [u8]) -> Result<usize, Scp03Error> {
        let a = ShortApdu::parse(apdu)?;
        if a.data.len() > MAX_PLAIN_DATA {
            return Err(Scp03Error::TooLong);
        }
        let mut ch = self.ch;
        ch.next_counter()?;
        let mut buf = [0u8; 256];
        buf[..a.data.len()].copy_from_slice(a.data);
        let mut n = a.data.len();
        if ch.level & level::C_DECRYPTION != 0 && n > 0 {
            n = pad80(&mut buf, n)?;
            let iv = ch.counter_block(false);
            ch.keys.s_enc.cbc_encrypt(iv, &mut buf[..n]);
        }
        let mut header = a.header;
        header[0] |= CLA_SECURE_MESSAGING;
        let lc = (n + MAC_LEN) as u8;
        let mac = ch.c_mac(&header, lc, &buf[..n]);
        buf[n..n + MAC_LEN].copy_from_slice(&mac[..MAC_LEN]);
        let len = ShortApdu {
            header,
            data: &buf[..n + MAC_LEN],
            le: a.le,
        }
        .encode(out)?;
        self.ch = ch;
        Ok(len)
    }

    /// Checks and removes the protection of the answer to the last wrapped command: verifies the
    /// R-MAC and decrypts under R-ENCRYPTION. `data` is the answer without its status word `sw`.
    /// Answers with an error status carry no protection and pass through unchanged (they must be
    /// empty). Returns the plain data length in `out`.
    pub fn unwrap_response(
        &mut self,
        data: &[u8],
        sw: u16,
        out: &mut [u8],
    ) -> Result<usize, Scp03Error> {
        if !sw_is_protected(sw) || self.ch.level & level::R_MAC == 0 {
            let o = out
                .get_mut(..data.len())
                .ok_or(Scp03Error::BufferTooSmall)?;
            o.copy_from_slice(data);
            return Ok(data.len());
        }
        let body_len = data
            .len()
            .checked_sub(MAC_LEN)
            .ok_or(Scp03Error::Malformed)?;
        let (body, mac) = data.split_at(body_len);
        let expected = self.ch.r_mac(body, sw);
        if !ct_eq(&expected[..MAC_LEN], mac) {
            return Err(Scp03Error::Mac);
        }
        let o = out
            .get_mut(..body.len())
            .ok_or(Scp03Error::BufferTooSmall)?;
        o.copy_from_slice(body);
        if self.ch.level & level::R_ENCRYPTION != 0 && !body.is_empty() {
            if body.len() % BLOCK_LEN != 0 {
                return Err(Scp03Error::Malformed);
            }
            let iv = self.ch.counter_block(true);
            self.ch.keys.s_enc.cbc_decrypt(iv, o);
            return unpad80(o);
        }
        Ok(body.len())
    }
}

/// The card side between INITIALIZE UPDATE and EXTERNAL AUTHENTICATE.
#[derive(Clone, Copy, Debug)]
pub struct CardInit {
    keys: SessionKeys,
    response: InitUpdateResponse,
    host_challenge: [u8; CHALLENGE_LEN],
}

impl CardInit {
    /// Answers INITIALIZE UPDATE with host challenge `host_challenge`: derives the session keys from
    /// the static `keys` and the card challenge (random, or pseudo-random with `sequence`), and
    /// computes the card cryptogram. `i_param` is announced as is.
    pub fn new(
        keys: &KeySet,
        div_data: [u8; DIV_DATA_LEN],
        i_param: u8,
        host_challenge: [u8; CHALLENGE_LEN],
        card_challenge: [u8; CHALLENGE_LEN],
        sequence: Option<[u8; 3]>,
    ) -> Self {
        let sk = SessionKeys::derive(keys, &host_challenge, &card_challenge);
        let card_cryptogram = sk.card_cryptogram(&host_challenge, &card_challenge);
        CardInit {
            keys: sk,
            host_challenge,
            response: InitUpdateResponse {
                div_data,
                kvn: keys.kvn,
                scp_id: SCP_ID,
                i_param,
                card_challenge,
                card_cryptogram,
                sequence,
            },
        }
    }

    /// The answer to send.
    pub fn response(&self) -> InitUpdateResponse {
        self.response
    }

    /// Checks EXTERNAL AUTHENTICATE (`84 82 level 00 10 <host cryptogram> <C-MAC>`, Le allowed):
    /// header, security level (must be one the card announced support for), host cryptogram and
    /// C-MAC. On success the session is open; the answer is a bare 9000.
    pub fn external_authenticate(self, apdu: &[u8]) -> Result<CardSession, Scp03Error> {
        let a = ShortApdu::parse(apdu)?;
        let [cla, ins, lvl, p2] = a.header;
        if cla != 0x80 | CLA_SECURE_MESSAGING
            || ins != INS_EXTERNAL_AUTHENTICATE
            || p2 != 0x00
            || a.data.len() != 16
        {
            return Err(Scp03Error::Malformed);
        }
        if !level::is_valid(lvl)
            || (lvl & level::R_MAC != 0 && self.response.i_param & i_param::R_MAC == 0)
            || (lvl & level::R_ENCRYPTION != 0
                && self.response.i_param & i_param::R_ENCRYPTION == 0)
        {
            return Err(Scp03Error::SecurityLevel);
        }
        let mut ch = Channel {
            keys: self.keys,
            level: lvl,
            chain: [0u8; BLOCK_LEN],
            counter: 0,
        };
        let mac = ch.c_mac(&a.header, 0x10, &a.data[..8]);
        // Check the MAC first (it authenticates the level), then the cryptogram; both are
        // constant-time and the caller sees one opaque failure either way.
        let mac_ok = ct_eq(&mac[..MAC_LEN], &a.data[8..]);
        let expected = self
            .keys
            .host_cryptogram(&self.host_challenge, &self.response.card_challenge);
        let crypto_ok = ct_eq(&expected, &a.data[..8]);
        if !mac_ok {
            return Err(Scp03Error::Mac);
        }
        if !crypto_ok {
            return Err(Scp03Error::Cryptogram);
        }
        Ok(CardSession { ch })
    }
}

/// An authenticated session on the card side.
#[derive(Clone, Copy, Debug)]
pub struct CardSession {
    ch: Channel,
}

impl CardSession {
    /// The security level.
    pub fn level(&self) -> u8 {
        self.ch.level
    }

    /// Checks and removes the protection of a command APDU (CLA bit 0x04 set): verifies the
    /// C-MAC, decrypts the data under C-DECRYPTION, and writes the plain APDU (CLA bit 0x04
    /// cleared, original Lc, Le kept) into `out`, returning its length. On failure the session
    /// state is unchanged and the caller must close the session (GP §10.8).
    pub fn unwrap_command(&mut self, apdu: &[u8], out: &mut [u8]) -> Result<usize, Scp03Error> {
        let a = ShortApdu::parse(apdu)?;
        if a.header[0] & CLA_SECURE_MESSAGING == 0 {
            return Err(Scp03Error::Mac);
        }
        let body_len = a
            .data
            .len()
            .checked_sub(MAC_LEN)
            .ok_or(Scp03Error::Malformed)?;
        let (body, mac) = a.data.split_at(body_len);
        let mut ch = self.ch;
        ch.next_counter()?;
        let full = ch.c_mac(&a.header, a.data.len() as u8, body);
        if !ct_eq(&full[..MAC_LEN], mac) {
            return Err(Scp03Error::Mac);
        }
        let mut buf = [0u8; 256];
        buf[..body.len()].copy_from_slice(body);
        let mut n = body.len();
        if ch.level & level::C_DECRYPTION != 0 && n > 0 {
            if n % BLOCK_LEN != 0 {
                return Err(Scp03Error::Malformed);
            }
            let iv = ch.counter_block(false);
            ch.keys.s_enc.cbc_decrypt(iv, &mut buf[..n]);
            n = unpad80(&buf[..n])?;
        }
        let mut header = a.header;
        header[0] &= !CLA_SECURE_MESSAGING;
        let len = ShortApdu {
            header,
            data: &buf[..n],
            le: a.le,
        }
        .encode(out)?;
        self.ch = ch;
        Ok(len)
    }

    /// Protects the answer `data` with status `sw` to the last unwrapped command into `out`
    /// (without the status word): R-ENCRYPTION of non-empty data, then the R-MAC over chaining
    /// value, data and status. Error statuses are not protected ([`sw_is_protected`]).
    pub fn wrap_response(&self, data: &[u8], sw: u16, out: &mut [u8]) -> Result<usize, Scp03Error> {
        let mut n = data.len();
        {
            let o = out.get_mut(..n).ok_or(Scp03Error::BufferTooSmall)?;
            o.copy_from_slice(data);
        }
        if !sw_is_protected(sw) || self.ch.level & level::R_MAC == 0 {
            return Ok(n);
        }
        if self.ch.level & level::R_ENCRYPTION != 0 && n > 0 {
            n = pad80(out, n)?;
            let iv = self.ch.counter_block(true);
            self.ch.keys.s_enc.cbc_encrypt(iv, &mut out[..n]);
        }
        let mac = self.ch.r_mac(&out[..n], sw);
        out.get_mut(n..n + MAC_LEN)
            .ok_or(Scp03Error::BufferTooSmall)?
            .copy_from_slice(&mac[..MAC_LEN]);
        Ok(n + MAC_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_round_trip_and_rejects() {
        for len in 0..40 {
            let mut buf = [0xAAu8; 64];
            let p = pad80(&mut buf, len).unwrap();
            assert_eq!(p % 16, 0);
            assert!(p > len);
            assert_eq!(unpad80(&buf[..p]).unwrap(), len);
        }
        assert_eq!(unpad80(&[0u8; 16]), Err(Scp03Error::Padding));
        let mut bad = [0u8; 16];
        bad[3] = 0x80;
        bad[10] = 0x01;
        assert_eq!(unpad80(&bad), Err(Scp03Error::Padding));
        // The 0x80 may not lie before the last block.
        let mut early = [0u8; 32];
        early[8] = 0x80;
        assert_eq!(unpad80(&early), Err(Scp03Error::Padding));
    }

    #[test]
    fn short_apdu_cases() {
        let c1 = ShortApdu::parse(&[0x80, 0xF2, 0x20, 0x02]).unwrap();
        assert!(c1.data.is_empty() && c1.le.is_none());
        let c2 = ShortApdu::parse(&[0x80, 0xCA, 0x00, 0x66, 0x00]).unwrap();
        assert_eq!(c2.le, Some(0));
        let c3 = ShortApdu::parse(&[0x80, 0xF2, 0x20, 0x02, 0x01, 0xAA]).unwrap();
        assert_eq!(c3.data, &[0xAA]);
        let c4 = ShortApdu::parse(&[0x80, 0xF2, 0x20, 0x02, 0x01, 0xAA, 0x00]).unwrap();
        assert_eq!((c4.data, c4.le), (&[0xAA][..], Some(0)));
        assert!(ShortApdu::parse(&[0x80, 0xF2, 0x20]).is_err());
        assert!(ShortApdu::parse(&[0x80, 0xF2, 0x20, 0x02, 0x02, 0xAA]).is_err());
        assert!(ShortApdu::parse(&[0x80, 0xF2, 0x20, 0x02, 0x00, 0xAA]).is_err());
        let mut out = [0u8; 8];
        assert_eq!(c4.encode(&mut out), Ok(7));
        assert_eq!(c4.encode(&mut out[..6]), Err(Scp03Error::BufferTooSmall));
    }

    #[test]
    fn key_lengths() {
        assert!(AesKey::new(&[0u8; 15]).is_err());
        assert!(AesKey::new(&[0u8; 16]).is_ok());
        assert!(AesKey::new(&[0u8; 24]).is_ok());
        assert!(AesKey::new(&[0u8; 32]).is_ok());
        assert!(AesKey::new(&[0u8; 33]).is_err());
        assert_eq!(
            std::format!("{:?}", AesKey::new(&[7u8; 24]).unwrap()),
            "AesKey(192 bits)"
        );
    }
}
