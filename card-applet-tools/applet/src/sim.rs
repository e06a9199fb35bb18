//! The card in memory: a [`Transport`] over an [`Applet`] on a [`RamStore`], the real SCP03
//! personalization against it, and a deterministic random source for tests and emulation.

use core::convert::Infallible;

use rand_core::{CryptoRng, TryCryptoRng, TryRng};
use shared_crypto::apdu::Transport;
use shared_crypto::scp03::{diversify, StaticKeys, DIV_DATA_LEN};
use shared_crypto::sig::{sha256_parts, PublicKey, Signer};

use crate::host::{self, CardProfile, HostError};
use crate::store::{RamStore, StoreError};
use crate::Applet;

/// The card is not in the field (removed, or its power was cut in the middle of a command: then
/// no answer ever left it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CardGone;

impl core::fmt::Display for CardGone {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("card not in the field")
    }
}

impl core::error::Error for CardGone {}

/// A card in memory, reachable through [`Transport`].
pub struct InMemoryCard<R: CryptoRng> {
    applet: Applet<RamStore, R>,
    present: bool,
}

impl<R: CryptoRng> core::fmt::Debug for InMemoryCard<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("InMemoryCard")
            .field("present", &self.present)
            .field("applet", &self.applet)
            .finish()
    }
}

impl<R: CryptoRng> InMemoryCard<R> {
    /// Puts `applet` in the field (powers it on).
    pub fn new(mut applet: Applet<RamStore, R>) -> Self {
        applet.power_on();
        InMemoryCard {
            applet,
            present: true,
        }
    }

    /// A factory-fresh BLANK card whose static keys are diversified from `factory_master` with
    /// [`diversify`] and `div_data` (what a card manufacturer does for an office).
    pub fn blank(
        rng: R,
        factory_master: &[u8; 16],
        div_data: [u8; DIV_DATA_LEN],
    ) -> Result<Self, StoreError> {
        let keys = diversify(factory_master, &div_data);
        Ok(Self::new(Applet::new_blank(
            RamStore::new(),
            rng,
            &keys,
            div_data,
        )?))
    }

    /// The applet.
    pub fn applet(&self) -> &Applet<RamStore, R> {
        &self.applet
    }

    /// The applet, mutably (tests arm power cuts through `applet_mut().store_mut()`).
    pub fn applet_mut(&mut self) -> &mut Applet<RamStore, R> {
        &mut self.applet
    }

    /// Takes the applet out.
    pub fn into_applet(self) -> Applet<RamStore, R> {
        self.applet
    }

    /// The card leaves the field.
    pub fn remove(&mut self) {
        self.present = false;
    }

    /// The card enters the field again: power returns, RAM state is gone.
    pub fn insert(&mut self) {
        self.applet.store_mut().restore_power();
        self.applet.power_on();
        self.present = true;
    }

    /// Whether the card is in the field.
    pub fn is_present(&self) -> bool {
        self.present
    }
}

impl<R: CryptoRng> Transport for InMemoryCard<R> {
    type Error = CardGone;

    fn transceive(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, CardGone> {
        if !self.present || response.len() < 2 {
            return Err(CardGone);
        }
        let n = self.applet.process(command, response);
        if self.applet.store().power_lost() {
            // Power was cut during this command: the card is gone and its answer never left it.
            self.present = false;
            return Err(CardGone);
        }
        Ok(n)
    }
}

/// Runs the real personalization ([`host::personalize`]: SCP03 at level 0x33, GENERATE KEY PAIR,
/// credential signed by `issuer`, PUT DATA, lock) against an in-memory card.
pub fn personalize_in_memory<R: CryptoRng, H: CryptoRng, S: Signer + ?Sized>(
    card: &mut InMemoryCard<R>,
    host_rng: &mut H,
    keys: &StaticKeys,
    issuer: &S,
    profile: &CardProfile<'_>,
) -> Result<PublicKey, HostError<CardGone>> {
    host::personalize(card, host_rng, keys, issuer, profile)
}

/// A deterministic random source: SHA-256 of `seed || block counter`.
///
/// **For tests and emulation only** (QEMU has no hardware RNG): anyone who knows the seed knows
/// every value. It implements `CryptoRng` so that it can stand in for a real source.
#[derive(Clone, Debug)]
pub struct TestRng {
    seed: [u8; 32],
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl TestRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self::from_seed(sha256_parts(&[b"card-applet TestRng", &seed.to_be_bytes()]))
    }

    /// A generator for a 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        TestRng {
            seed,
            counter: 0,
            block: [0u8; 32],
            used: 32,
        }
    }
}

impl TryRng for TestRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for byte in dst {
            if self.used == self.block.len() {
                self.block = sha256_parts(&[&self.seed, &self.counter.to_be_bytes()]);
                self.counter = self.counter.wrapping_add(1);
                self.used = 0;
            }
            *byte = self.block[self.used];
            self.used += 1;
        }
        Ok(())
    }
}

impl TryCryptoRng for TestRng {}
