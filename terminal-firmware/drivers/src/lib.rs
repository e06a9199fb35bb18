//! Terminal drivers on embedded-hal 1.0 (`no_std`, no allocation).
//!
//! * [`pn532`]: the PN532 NFC front end over SPI or I2C as the card transport
//!   ([`shared_crypto::apdu::Transport`]): ISO 14443-4 data exchange with MI chaining.
//! * [`feedback`]: buzzer and LEDs playing the terminal's signal patterns.
//! * [`voice`]: the voice-prompt module ([`voice::VoicePlayer`], a DFPlayer-style UART module).
//!
//! The terminal core depends on traits only; these are the implementations for real hardware.
#![no_std]
#![cfg_attr(test, allow(clippy::unwrap_used))]

#[cfg(test)]
extern crate std;

pub mod feedback;
pub mod pn532;
pub mod voice;
