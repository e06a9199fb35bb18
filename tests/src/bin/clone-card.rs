//! TEST AND ATTACK SIMULATION ONLY: an attacker's card emulator behind vpcd, for the cloned-card
//! test (`tests/tests/e2e_attacks.rs`).
//!
//! The attacker dumped what a genuine card released to a terminal at one tap (the issuer-signed
//! credential and the disclosures, i.e. the card's TERMINAL AUTHENTICATE answer) and loads it
//! into a programmable card. That card answers like the applet (SELECT, TERMINAL AUTHENTICATE
//! with chaining and GET RESPONSE, DEBIT), but it lacks the genuine card's private key, which
//! never left the card. Two strategies:
//!
//! * `sign` (default): present the dumped credential and disclosures, signing this tap's
//!   transcript and any receipt with the clone's own key;
//! * `replay`: answer with the dumped response byte for byte (the genuine card's signature over
//!   an old transcript).
//!
//! A terminal must refuse both (reason `cloned_card`). This program is not part of the platform
//! and must never be shipped with it.
//!
//! Usage: `clone-card --dump FILE --reader-index N [--mode sign|replay]`; FILE holds the hex of
//! the dumped `Signed<TapResponseBody>`.
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::io;
use std::process::ExitCode;

use shared_crypto::apdu::{
    sw, CLA_CHAINING, INS_DEBIT, INS_GET_RESPONSE, INS_SELECT, INS_TERMINAL_AUTHENTICATE,
};
use shared_crypto::model::{
    transcript_hash, CredentialBody, DebitIntent, DebitRequest, KeyCertificateBody, LifeCycle,
    ReceiptBody, SelectResponse, TapRequestBody, TapResponseBody, TerminalAuth, NONCE_LEN,
};
use shared_crypto::wire::{decode_versioned, encode_versioned};
use shared_crypto::{KeyId, P256Signer, Signed};
use virtual_card::vpcd::{self, RunOptions, SimulatedCard, VPCD_PORT};

/// What the emulator presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Sign,
    Replay,
}

struct Clone {
    mode: Mode,
    /// The dumped TERMINAL AUTHENTICATE answer.
    dump: Vec<u8>,
    key: P256Signer,
    challenge: Option<[u8; NONCE_LEN]>,
    chain: Vec<u8>,
    /// Answer bytes still to be fetched with GET RESPONSE.
    pending: Vec<u8>,
    /// The terminal of this session (for receipts).
    terminal: Option<KeyId>,
    /// The signed request's time and debit intent of this session (for receipts).
    request: Option<(u64, Option<DebitIntent>)>,
    counter: u32,
    atr: [u8; virtual_card::atr::ATR_LEN],
}

fn with_sw(mut data: Vec<u8>, status: u16) -> Vec<u8> {
    data.extend_from_slice(&status.to_be_bytes());
    data
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // A clone with a broken RNG still answers; the test only needs fresh-looking challenges.
    let _ = getrandom::fill(&mut b);
    b
}

impl Clone {
    fn new(mode: Mode, dump: Vec<u8>) -> Result<Self, String> {
        let secret = random::<32>();
        let key = P256Signer::from_bytes(&secret).map_err(|e| format!("clone key: {e}"))?;
        Ok(Clone {
            mode,
            dump,
            key,
            challenge: None,
            chain: Vec::new(),
            pending: Vec::new(),
            terminal: None,
            request: None,
            counter: 0,
            atr: virtual_card::atr::atr(),
        })
    }

    fn session_reset(&mut self) {
        self.challenge = None;
        self.chain.clear();
        self.pending.clear();
        self.terminal = None;
        self.request = None;
    }

    /// Sends `answer`, 256 bytes at a time with `61xx` for the rest (ISO 7816-4 §7.1.3).
    fn answer(&mut self, mut answer: Vec<u8>) -> Vec<u8> {
        if answer.len() <= 256 {
            return with_sw(answer, sw::OK);
        }
        let rest = answer.split_off(256);
        let next = rest.len().min(256) as u8; // 00 means 256 or more
        self.pending = rest;
        with_sw(answer, 0x6100 | u16::from(next))
    }

    fn terminal_authenticate(&mut self, data: &[u8]) -> Vec<u8> {
        let Some(challenge) = self.challenge.take() else {
            return with_sw(Vec::new(), sw::SECURITY_STATUS);
        };
        if self.mode == Mode::Replay {
            let dump = self.dump.clone();
            return self.answer(dump);
        }
        // Remember the terminal, the request time and the announced debit for a receipt, as
        // the applet would.
        let auth = decode_versioned::<TerminalAuth>(data).ok();
        self.terminal = auth.and_then(|a| {
            a.terminal_cert
                .decode_trusted::<KeyCertificateBody>()
                .ok()
                .map(|c| c.key_id)
        });
        self.request = auth.and_then(|a| {
            a.request
                .decode_trusted::<TapRequestBody>()
                .ok()
                .map(|r| (r.time, r.debit))
        });
        let transcript = transcript_hash(&challenge, data);
        let signed = Signed::decode(&self.dump)
            .ok()
            .and_then(|s| s.decode_trusted::<TapResponseBody>().ok())
            .and_then(|body| shared_crypto::sig::sign(&body, &transcript, &self.key).ok());
        match signed {
            Some(answer) => self.answer(answer),
            None => with_sw(Vec::new(), sw::UNKNOWN),
        }
    }

    fn debit(&mut self, data: &[u8]) -> Vec<u8> {
        let (Ok(req), Some(terminal), Some((time, intent))) = (
            decode_versioned::<DebitRequest>(data),
            self.terminal,
            self.request,
        ) else {
            return with_sw(Vec::new(), sw::SECURITY_STATUS);
        };
        // Like the applet: only the debit the terminal announced.
        let asked = DebitIntent {
            amount: req.amount,
            reference: req.reference,
        };
        if intent != Some(asked) {
            return with_sw(Vec::new(), sw::SECURITY_STATUS);
        }
        let serial = Signed::decode(&self.dump)
            .ok()
            .and_then(|s| s.decode_trusted::<TapResponseBody>().ok())
            .and_then(|b| b.credential.decode_trusted::<CredentialBody>().ok())
            .map(|c| c.card_serial);
        let Some(card_serial) = serial else {
            return with_sw(Vec::new(), sw::UNKNOWN);
        };
        self.counter += 1;
        // The attacker's best receipt: every field right, signed with the only key it has.
        let receipt = ReceiptBody {
            card_serial,
            counter: self.counter,
            amount: req.amount,
            balance_after: 10_000,
            terminal,
            time,
            reference: req.reference,
        };
        match shared_crypto::sig::sign(&receipt, &[], &self.key) {
            Ok(r) => self.answer(r),
            Err(_) => with_sw(Vec::new(), sw::UNKNOWN),
        }
    }
}

impl SimulatedCard for Clone {
    fn atr(&self) -> &[u8] {
        &self.atr
    }

    fn power_on(&mut self) {
        self.session_reset();
    }

    fn reset(&mut self) {
        self.session_reset();
    }

    fn power_off(&mut self) {
        self.session_reset();
    }

    fn process(&mut self, command: &[u8]) -> Vec<u8> {
        let [cla, ins, _p1, _p2, rest @ ..] = command else {
            return with_sw(Vec::new(), sw::WRONG_LENGTH);
        };
        // Case 3/4 short APDUs: Lc, data, optional Le.
        let data: &[u8] = match rest {
            [] | [_] => &[],
            [lc, tail @ ..] => tail.get(..usize::from(*lc)).unwrap_or(&[]),
        };
        match (*cla & !CLA_CHAINING, *ins) {
            (0x00, INS_SELECT) => {
                self.session_reset();
                let challenge = random::<NONCE_LEN>();
                self.challenge = Some(challenge);
                let select = SelectResponse {
                    applet_version: 0x10,
                    life_cycle: LifeCycle::Personalized,
                    challenge,
                };
                with_sw(encode_versioned(&select), sw::OK)
            }
            (0x00, INS_GET_RESPONSE) => {
                let pending = std::mem::take(&mut self.pending);
                self.answer(pending)
            }
            (0x80, INS_TERMINAL_AUTHENTICATE) => {
                self.chain.extend_from_slice(data);
                if *cla & CLA_CHAINING != 0 {
                    return with_sw(Vec::new(), sw::OK);
                }
                let all = std::mem::take(&mut self.chain);
                self.terminal_authenticate(&all)
            }
            (0x80, INS_DEBIT) => self.debit(data),
            _ => with_sw(Vec::new(), sw::INS_NOT_SUPPORTED),
        }
    }

    fn persist(&mut self) -> io::Result<bool> {
        // An emulator with no memory worth keeping.
        Ok(false)
    }
}

fn run() -> Result<(), String> {
    let mut dump_file = None;
    let mut index = 0u16;
    let mut mode = Mode::Sign;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dump" => dump_file = args.next(),
            "--reader-index" => {
                index = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|i| *i < 2)
                    .ok_or("--reader-index takes 0 or 1")?;
            }
            "--mode" => {
                mode = match args.next().as_deref() {
                    Some("sign") => Mode::Sign,
                    Some("replay") => Mode::Replay,
                    _ => return Err("--mode takes sign or replay".into()),
                }
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let path = dump_file.ok_or("--dump FILE is required")?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    let dump = hex::decode(text.trim()).map_err(|e| format!("{path} is not hex: {e}"))?;
    Signed::decode(&dump)
        .ok()
        .and_then(|s| s.decode_trusted::<TapResponseBody>().ok())
        .ok_or_else(|| format!("{path} does not hold a TERMINAL AUTHENTICATE answer"))?;
    let mut card = Clone::new(mode, dump)?;
    eprintln!("clone-card (attack simulation, {mode:?}) in vpcd reader {index}");
    vpcd::run(&mut card, &RunOptions::new(VPCD_PORT + index))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clone-card: {e}");
            ExitCode::FAILURE
        }
    }
}
