//! The virtual card: the certificate applet behind the real pcscd through the vpcd driver.
//!
//! * [`vpcd`]: the vpcd link (vpicc framing, `TCP_QUICKACK`, tearing, reconnection);
//! * [`state_file`]: the card's non-volatile memory as a file, written atomically;
//! * [`atr`]: the answer to reset;
//! * [`card`]: the applet as a [`vpcd::SimulatedCard`].
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod atr;
pub mod card;
pub mod state_file;
pub mod vpcd;
