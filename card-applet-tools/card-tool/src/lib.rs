//! card-tool: personalization and diagnostics of disability-certificate cards over PC/SC.
//!
//! The binary is a thin clap front end ([`cli`]); the pieces are usable on their own:
//! * [`reader`]: PC/SC readers and a [`shared_crypto::apdu::Transport`] over a connected card;
//! * [`server`]: a blocking client of the issuance server's `/api/v1`;
//! * [`personalize`]: the resumable personalization flow (server job + SCP03 on the card);
//! * [`tap`]: the terminal side of a tap (and CREDIT), verifying every answer;
//! * [`journal`]: what lets a rerun finish a job whose card was locked but not confirmed;
//! * [`keys`]: terminal keys for diagnostics;
//! * [`i18n`]: every message in Simplified Chinese and English (`--lang`).
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod batch;
pub mod cli;
pub mod i18n;
pub mod journal;
pub mod keys;
pub mod personalize;
pub mod reader;
pub mod server;
pub mod tap;

/// The current Unix time in seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
