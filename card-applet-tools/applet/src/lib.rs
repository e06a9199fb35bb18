//! The disability-certificate card applet (`no_std`, no allocation; builds for
//! `thumbv7em-none-eabihf`).
//!
//! The byte-level protocol (every command, P1/P2, data, answer and status word; the SCP03 usage and
//! the key diversification; the store's record layout) is `docs/protocol-card.md`.
//!
//! # Public API (stable; the virtual card, card-tool, the terminal tests and the M4 image use it)
//!
//! **The card** ([`Applet`]`<S: Store, R: rand_core::CryptoRng>`):
//! ```text
//! Applet::new(store, rng) -> Applet                  // a card that exists (its state is in store)
//! Applet::new_blank(store, rng, &StaticKeys, div_data: [u8; 10]) -> Result<Applet, StoreError>
//!                                                    // factory: formats store, life cycle BLANK
//! applet.power_on()                // power-up: clears all RAM state (session, chaining, cert cache,
//!                                  // public-key op count)
//! applet.reset()                   // warm reset: clears selection and sessions, keeps the cache
//! applet.process(&cmd, &mut rsp) -> usize   // one APDU in, data || SW1 SW2 out, returns length;
//!                                           // never panics; rsp should hold MAX_RESPONSE (258)
//! applet.life_cycle() -> Option<LifeCycle>  // None: store not formatted / unreadable
//! applet.balance() / counter() / voucher_seq() -> Option<u32>   // None before PUT DATA purse
//! applet.card_public_key() -> Option<PublicKey>   applet.last_seen_time() -> u64
//! applet.public_key_ops() -> u32            // verifications + signatures since power_on
//! applet.store() -> &S   store_mut() -> &mut S   into_store() -> S
//! consts: APPLET_VERSION (0x10), KVN (0x30), MAX_RESPONSE (258), CERT_CACHE_ENTRIES (4)
//! ```
//! **Storage** ([`store`]): `trait Store { fn capacity(&self) -> usize; fn read(&self, offset,
//! &mut [u8]) -> Result<(), StoreError>; fn write(&mut self, offset, &[u8]) -> Result<(),
//! StoreError> }` is raw non-volatile memory where a write may be torn by power loss; the applet
//! keeps every record in two slots with a sequence number and a checksum, so a torn write leaves
//! the old or the new value. [`RamStore`] (`new()`, `as_bytes() -> &[u8]`, `from_bytes(&[u8])`
//! (`RamStore::SIZE` = 4352 bytes, or an applet 1.0 image of 3584, moved to this layout),
//! `cut_power_at(n, torn_bytes)`, `restore_power()`,
//! `power_lost()`, `writes()`; `Clone`) is the RAM-backed store with a power-cut injector.
//!
//! **Host side** ([`host`], `no_std`, generic over [`shared_crypto::apdu::Transport`]):
//! ```text
//! host::select(t) -> Result<SelectResponse, HostError<E>>            // BLOCKED: Status(0x6283)
//! host::read_div_data(t) -> Result<[u8; 10], HostError<E>>           // SELECT + GET DATA 'CF'
//! host::begin_personalization(t, &mut rng, &StaticKeys) -> Result<(PersoSession, PublicKey), _>
//!        // SELECT (BLANK), INITIALIZE UPDATE, EXTERNAL AUTHENTICATE 0x33, GENERATE KEY PAIR
//! session.finish(t, &PersoData { credential: &[u8] (Signed<CredentialBody> wire),
//!        disclosures: &[Disclosure], root_key: PublicKey, initial_points: u32 }) -> Result<(), _>
//!        // PUT DATA credential, disclosures, root key, purse; SET STATUS (lock)
//! session.div_data(), session.card_key()
//! host::personalize(t, &mut rng, &StaticKeys, &issuer_signer, &CardProfile) -> Result<PublicKey, _>
//!        // both phases with a local issuer key (tests)
//! host::encode_disclosures(&[Disclosure], &mut out) -> Result<usize, shared_crypto::Error>
//! host::transmit(t, &cmd, &mut out) -> Result<(usize, u16), HostError<E>>   // one raw APDU
//! HostError<E> = Transport(E) | Status(u16) | Scp(Scp03Error) | Malformed | NotBlank(LifeCycle)
//!              | Encoding | Sign          (Display + core::error::Error when E: Debug)
//! ```
//! **Simulation** ([`sim`]):
//! ```text
//! sim::InMemoryCard<R>: Transport<Error = CardGone>   new(applet), blank(rng, &factory_master,
//!        div_data), applet(), applet_mut(), into_applet(), remove(), insert() (power returns +
//!        power_on), is_present(). A power cut injected in the store makes transceive fail with
//!        CardGone (no answer) until insert().
//! sim::personalize_in_memory(&mut card, &mut host_rng, &StaticKeys, &issuer, &CardProfile)
//! sim::TestRng::new(seed: u64) / from_seed([u8; 32])  // deterministic, tests and emulation ONLY
//! ```
//! Command constants beyond those of [`shared_crypto::apdu`] are in [`ins`], [`tag`] and [`sw`].
#![no_std]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod applet;
pub mod host;
pub mod sim;
pub mod store;

pub use applet::{Applet, APPLET_VERSION, CERT_CACHE_ENTRIES, KVN, MAX_RESPONSE};
pub use shared_crypto::scp03::StaticKeys;
pub use store::{RamStore, Store, StoreError};

/// Instruction bytes of the commands this applet adds to those in [`shared_crypto::apdu`].
pub mod ins {
    /// GlobalPlatform INITIALIZE UPDATE (`80 50 kvn 00 08 <host challenge> 00`).
    pub const INITIALIZE_UPDATE: u8 = 0x50;
    /// GlobalPlatform EXTERNAL AUTHENTICATE (`84 82 33 00 10 ...`); told apart from TERMINAL
    /// AUTHENTICATE (same INS) by CLA 84.
    pub const EXTERNAL_AUTHENTICATE: u8 = 0x82;
    /// GENERATE ASYMMETRIC KEY PAIR (ISO 7816-8; `84 47 80 00`, under SCP03).
    pub const GENERATE_KEY_PAIR: u8 = 0x47;
    /// PUT DATA (ISO 7816-4; `84 DA DF tag`, under SCP03; see [`crate::tag`]).
    pub const PUT_DATA: u8 = 0xDA;
    /// GET DATA (`80 CA 00 CF 00`: key diversification data, BLANK cards only).
    pub const GET_DATA: u8 = 0xCA;
    /// GlobalPlatform SET STATUS (`84 F0 40 0F`: lock, i.e. BLANK -> PERSONALIZED, under SCP03).
    pub const SET_STATUS: u8 = 0xF0;
    /// BLOCK (`80 1E 00 00 Lc <BlockCommand>`): an Issuer-signed order -> BLOCKED.
    pub const BLOCK: u8 = 0x1E;
}

/// PUT DATA tags (P1 = 0xDF, P2 = the tag below) and the GET DATA tag.
pub mod tag {
    /// P1 of every PUT DATA of this applet.
    pub const PUT_DATA_P1: u8 = 0xDF;
    /// The issuer-signed credential: wire bytes of `Signed<CredentialBody>`.
    pub const CREDENTIAL: u8 = 0x01;
    /// Every attribute's disclosure: `postcard(Items<Disclosure>)`, in attribute-id order.
    pub const DISCLOSURES: u8 = 0x02;
    /// The root public key: 33 bytes compressed SEC1.
    pub const ROOT_KEY: u8 = 0x03;
    /// The purse: initial points, u32 big-endian.
    pub const PURSE: u8 = 0x04;
    /// GET DATA P2 for the key diversification data (GP tag 'CF'; P1 = 00).
    pub const DIV_DATA: u8 = 0xCF;
    /// SET STATUS P1: application life cycle.
    pub const SET_STATUS_P1: u8 = 0x40;
    /// SET STATUS P2: locked as personalized.
    pub const SET_STATUS_PERSONALIZED: u8 = 0x0F;
    /// GENERATE KEY PAIR P1: generate.
    pub const GENERATE_P1: u8 = 0x80;
}

/// Status words this applet adds to [`shared_crypto::apdu::sw`].
pub mod sw {
    /// Memory failure (ISO 7816-4 §5.6): a store write failed; the command had no effect or
    /// its effect is complete (records are atomic).
    pub const MEMORY_FAILURE: u16 = 0x6581;
    /// Command chaining not supported for this instruction.
    pub const CHAINING_NOT_SUPPORTED: u16 = 0x6884;
    /// Data too long for the applet's buffers (ISO: not enough memory space).
    pub const NOT_ENOUGH_MEMORY: u16 = 0x6A84;
}
