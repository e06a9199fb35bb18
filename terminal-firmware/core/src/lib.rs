//! The terminal's verification core (`no_std`, no chip, no allocation): the offline tap decision,
//! verified updates, and the tap log in flash.
//!
//! # Public API (stable; the drivers, `terminal-sim` and the Cortex-M4 image build on it)
//!
//! **Seams** ([`platform`]): everything device-specific comes in through small traits.
//!
//! | seam | trait |
//! |---|---|
//! | card | [`shared_crypto::apdu::Transport`] (one APDU in, its answer out), passed to each [`Terminal::tap`] |
//! | clock | [`Clock`]: `fn now(&self) -> Option<u64>` (Unix seconds; `None` = not set) |
//! | flash | [`embedded_storage::nor_flash::NorFlash`] + [`MappedFlash`] (`fn mapped(&self) -> &[u8]`), one value per partition, grouped in [`Storage`] |
//! | feedback | [`Feedback`]: `fn show(&mut self, signal: &Signal)` |
//! | randomness | [`rand_core::CryptoRng`] (terminal nonces, debit references) |
//! | terminal key | [`shared_crypto::Signer`] (signs tap requests and log batches) |
//! | ECDSA verify | [`Verifier`] (`parse_key`, `verify_prehash`); [`P256Verifier`] is the portable backend |
//!
//! **The terminal** ([`Terminal`]):
//! * [`Terminal::mount`]`(config, storage, verifier, signer, clock, rng, feedback)` reads what is
//!   installed (torn updates fall back to the previous version, torn log records are dropped) and
//!   checks the terminal's own certificate against the root key in [`TerminalConfig`].
//! * [`Terminal::tap`]`(&mut card, ServiceRequest)` → [`Decision`]: runs the tap (SELECT,
//!   TERMINAL AUTHENTICATE, and DEBIT for welfare), decides offline, shows the [`Signal`], appends
//!   the [`shared_crypto::model::TapRecord`] to the log, and returns the decision (outcome, reason,
//!   what the officer may see, the debit).
//! * Updates, each verified before install, epoch checked, torn-safe:
//!   [`Terminal::install_trust_bundle`], [`Terminal::install_status_list`],
//!   [`Terminal::apply_status_delta`], [`Terminal::install_service_rules`] (wire bytes of the
//!   `Signed<…>` the server serves), or streamed for large objects: [`Terminal::begin_update`],
//!   [`Terminal::write_update`], [`Terminal::finish_update`].
//! * Log upload: [`Terminal::export_log_batch`] writes a terminal-signed `Signed<LogBatchBody>`;
//!   [`Terminal::acknowledge_upload`]`(last_seq)` after the server accepted it, which reclaims the
//!   flash sectors holding only acknowledged records.
//! * [`Terminal::state`] (epochs, status-list age, log usage) for a staff screen;
//!   [`Terminal::log`] to read the records; [`Terminal::wire_stats`] (APDUs and bytes);
//!   [`Terminal::into_storage`] to shut down and keep the partitions.
//!
//! **Feedback** ([`feedback`]): [`Signal`] = outcome + reason + [`LightPattern`] + [`SoundPattern`] +
//! [`PromptId`]; [`PromptId::text`]`(Lang::ZhCn | Lang::En)`. [`Signal::new`]`(service, reason)`.
//!
//! **Flash for tests and the host** ([`ram_flash`]): [`RamFlash`], a RAM-backed NOR flash with NOR
//! semantics (program only clears bits, erase sets a sector to `FF`) and power-cut injection.
//!
//! **Test and emulation support** (feature `testkit`, never in a terminal): `testkit::Authority`
//! (demo keys and every signed object), `issue_card` / `forge_card` (the real applet in memory),
//! `EmulatedCard` / `clone_card` / `lying_card` (an attacker's card), `TestClock`,
//! `RecordingFeedback`, `Tamper` (a transport that edits answers).
//!
//! The flash layout, the log format and the decision table with every prompt are in
//! `docs/terminal.md`.
//!
//! # What a tap checks, in order (`docs/terminal.md` has the full table with the prompts)
//! Provisioned, clock set, room in the log, service in the terminal certificate → SELECT (blocked,
//! not our card) → TERMINAL AUTHENTICATE (card refused the terminal) → the credential's Issuer key
//! from the trust bundle → the credential's signature → the card's transcript signature (a copied
//! credential without the card key fails) → validity against the clock → the status list (revoked;
//! too old → ask staff) → each disclosure against its digest → certificate expiry → the service rule
//! (transit with companion and anti-passback; employment; rehab with a minimum interval; welfare with
//! a DEBIT whose card-signed receipt is verified and kept).
#![no_std]
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![forbid(unsafe_code)]

#[cfg(any(feature = "std", test))]
extern crate std;

pub mod crc;
pub mod feedback;
pub mod log;
pub mod platform;
pub mod ram_flash;
pub mod slots;
pub mod terminal;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod verify;

pub use feedback::{Color, Lang, LightPattern, PromptId, Signal, SoundPattern, Tone};
pub use log::{LogError, LogState};
pub use platform::{Clock, Feedback, MappedFlash, P256Verifier, Verifier};
pub use ram_flash::{RamFlash, RamFlashError};
pub use terminal::{
    Debit, Decision, ExportedBatch, Holder, MountError, ServiceRequest, Storage, Terminal,
    TerminalConfig, TerminalState, UpdateError, UpdateKind,
};
