//! The terminal core on a PC: a PC/SC reader as the card interface, a file as the flash, the
//! system clock and the OS RNG, and HTTP to the issuance server for updates and log upload.
//!
//! Service points with a desktop reader use it as it is (`docs/terminal-sim.md`); tests use it
//! as the terminal of the end-to-end flows. Every decision is the core's ([`terminal_core`]):
//! this crate only provides the seams and the command-line front end.
//!
//! * [`flash`]: `flash.bin`, a file-backed NOR flash with the device's partition layout.
//! * [`datadir`]: the data directory (key, certificate, pinned root key, settings).
//! * [`platform`]: clock, RNG, feedback recorder.
//! * [`reader`]: PC/SC reader selection and the card transport.
//! * [`server`]: the issuance server's API ([`server::Distribution`], [`server::HttpServer`]).
//! * [`sim`]: the commands' logic: init, sync, tap, upload, status.
//! * [`report`]: what the service point sees and hears, as text and JSON.
//! * [`i18n`]: the operator's languages (Chinese, English) and errors in either.
//! * [`msg`]: every operator message in both languages.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod datadir;
pub mod flash;
pub mod i18n;
pub mod msg;
pub mod platform;
pub mod reader;
pub mod report;
pub mod server;
pub mod sim;
