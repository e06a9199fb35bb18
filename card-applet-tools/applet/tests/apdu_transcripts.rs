//! Golden transcripts (`tests/apdu_transcripts.json`): one card's whole life as the raw command and
//! response APDUs in hex, from the factory-fresh BLANK card to BLOCKED: the SCP03 personalization
//! at level 0x33, one tap per service (the welfare one with a DEBIT and GET BALANCE), a CREDIT with
//! a voucher, the recorded personalization sent again to the PERSONALIZED card (refused at every
//! step), and a BLOCK.
//!
//! The test replays the file's commands byte for byte against a fresh applet and fails on the first
//! response that differs, naming the session, the step and both hex strings; so a change to any
//! answer (an encoding, a status word, a signature's input, the store's effect on a later command)
//! shows up as a changed file in review. Nothing is masked: the card's challenges and key pair come
//! from its `TestRng` seeded with the file's `card_seed`, the host's SCP03 challenge from a seeded
//! `TestRng`, and every signature (card and host) is ECDSA with RFC 6979 nonces.
//!
//! The same run records the transcript afresh through the host-side code (`host::personalize`,
//! the terminal's TERMINAL AUTHENTICATE, vouchers and block orders from `common`), checking each
//! answer's meaning (signatures verify, disclosures match the release policy, balances add up) and
//! requiring the fresh recording to equal the file. To accept a deliberate change:
//! `UPDATE_GOLDEN=1 cargo test -p card-applet --test apdu_transcripts` (or
//! `UPDATE_GOLDEN=apdu_transcripts`) rewrites the file; without it the test only compares.
#![allow(clippy::unwrap_used)]

mod common;

use card_applet::host;
use card_applet::sim::{CardGone, InMemoryCard, TestRng};
use common::*;
use serde_json::Value;
use shared_crypto::apdu::{exchange, Transport, WireStats};
use shared_crypto::model::{DebitIntent, LifeCycle, ReceiptBody, SelectResponse, Service};
use shared_crypto::sig::{PublicKey, Signed};

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apdu_transcripts.json");
/// The golden file's name for `UPDATE_GOLDEN=<name,...>`.
const NAME: &str = "apdu_transcripts";
/// Seed of the card's random source (challenges, the card key pair).
const CARD_SEED: u64 = 0x7C;
/// Seed of the host's random source (the SCP03 host challenge).
const HOST_SEED: u64 = 0x7D;
const DEBIT: u32 = 25;
const DEBIT_REF: [u8; 16] = [0x77; 16];
const CREDIT: u32 = 100;
const DAY: u64 = 86_400;

/// One recorded step: what it is, the command, the response (data and SW), all hex upper case.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Step {
    label: String,
    command: String,
    response: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Session {
    name: String,
    about: String,
    steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Transcript {
    card_seed: u64,
    sessions: Vec<Session>,
}

/// A transport that records every APDU of the current session under the current label.
struct Recorder {
    card: InMemoryCard<TestRng>,
    sessions: Vec<Session>,
    label: String,
}

impl Recorder {
    /// A new session: the card leaves the field and comes back (RAM state gone, nothing selected).
    fn session(&mut self, name: &str, about: &str) {
        self.card.insert();
        self.sessions.push(Session {
            name: name.into(),
            about: about.into(),
            steps: Vec::new(),
        });
    }

    fn label(&mut self, label: &str) {
        self.label = label.into();
    }

    /// One logical command (chaining and GET RESPONSE handled) with CLA 80; `Err` is the status.
    fn call(&mut self, note: &str, ins: u8, data: &[u8]) -> Result<Vec<u8>, u16> {
        self.label(note);
        let mut out = vec![0u8; 4096];
        let mut stats = WireStats::default();
        match exchange(self, 0x80, ins, 0, 0, data, true, &mut out, &mut stats) {
            Ok(n) => {
                out.truncate(n);
                Ok(out)
            }
            Err(shared_crypto::apdu::ExchangeError::Status(sw)) => Err(sw),
            Err(e) => panic!("INS {ins:02X} {note}: {e:?}"),
        }
    }

    fn select(&mut self) -> SelectResponse {
        self.label("");
        host::select(self).unwrap()
    }

    /// Sends one raw APDU given in hex, recording it; returns the SW.
    fn raw(&mut self, note: &str, command_hex: &str) -> u16 {
        self.label(note);
        let cmd = hex::decode(command_hex).unwrap();
        let mut rsp = [0u8; 258];
        let n = self.transceive(&cmd, &mut rsp).unwrap();
        u16::from_be_bytes([rsp[n - 2], rsp[n - 1]])
    }
}

impl Transport for Recorder {
    type Error = CardGone;

    fn transceive(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, CardGone> {
        let n = self.card.transceive(command, response)?;
        let label = match (command_name(command), self.label.as_str()) {
            (name, "") => name,
            (name, note) => format!("{name}, {note}"),
        };
        self.sessions.last_mut().unwrap().steps.push(Step {
            label,
            command: hex::encode_upper(command),
            response: hex::encode_upper(&response[..n]),
        });
        Ok(n)
    }
}

/// What a command is, from its class and instruction bytes (for the file's readers and the
/// failure messages).
fn command_name(cmd: &[u8]) -> String {
    let (cla, ins) = match cmd {
        [cla, ins, ..] => (*cla, *ins),
        _ => return "malformed".into(),
    };
    let name = match (cla & !0x10, ins) {
        (0x00, 0xA4) => "SELECT",
        (0x00, 0xC0) => "GET RESPONSE",
        (0x80, 0x50) => "INITIALIZE UPDATE",
        (0x84, 0x82) => "EXTERNAL AUTHENTICATE",
        (0x80, 0x82) => "TERMINAL AUTHENTICATE",
        (0x84, 0x47) => "GENERATE KEY PAIR",
        (0x84, 0xDA) => match cmd.get(3) {
            Some(1) => "PUT DATA credential",
            Some(2) => "PUT DATA disclosures",
            Some(3) => "PUT DATA root key",
            Some(4) => "PUT DATA purse",
            _ => "PUT DATA",
        },
        (0x84, 0xF0) => "SET STATUS",
        (0x80, 0xCA) => "GET DATA",
        (0x80, 0x30) => "DEBIT",
        (0x80, 0x32) => "CREDIT",
        (0x80, 0x5C) => "GET BALANCE",
        (0x80, 0x1E) => "BLOCK",
        _ => "other",
    };
    if cla & 0x10 != 0 {
        format!("{name} (chained)")
    } else {
        name.into()
    }
}

/// A tap by the terminal of `service` requesting its release policy (the welfare one announcing
/// `debit`), checked like a terminal checks it.
fn tap(r: &mut Recorder, w: &World, pk: &PublicKey, service: Service, debit: Option<DebitIntent>) {
    let sel = r.select();
    assert_eq!(sel.life_cycle, LifeCycle::Personalized);
    let requested = service.release_policy();
    let data = terminal_auth_with(
        &sel.challenge,
        w.terminal(service),
        service,
        requested,
        NOW,
        debit,
    );
    let answer = r.call("", 0x82, &data).unwrap();
    let t = Tap {
        challenge: sel.challenge,
        data,
        answer,
    };
    assert_eq!(check_tap(w, pk, &t), requested, "{service:?}");
}

fn balance(r: &mut Recorder) -> (u32, u32) {
    let b = r.call("", 0x5C, &[]).unwrap();
    (
        u32::from_be_bytes(b[..4].try_into().unwrap()),
        u32::from_be_bytes(b[4..].try_into().unwrap()),
    )
}

/// Drives the card through its life with the host-side code, recording every APDU.
fn record() -> Transcript {
    let w = World::new();
    let mut r = Recorder {
        card: w.blank_card(CARD_SEED),
        sessions: Vec::new(),
        label: String::new(),
    };

    r.session(
        "personalize",
        "BLANK -> PERSONALIZED: SELECT, INITIALIZE UPDATE, EXTERNAL AUTHENTICATE at level 0x33, \
         GENERATE KEY PAIR, PUT DATA credential, disclosures, root key, purse, SET STATUS (lock), \
         all under SCP03 (C-DEC, C-MAC, R-ENC, R-MAC)",
    );
    r.label("");
    let attrs = attributes();
    let disc = disclosures(&attrs);
    let pk = host::personalize(
        &mut r,
        &mut TestRng::new(HOST_SEED),
        &w.keys,
        &w.issuer,
        &w.profile(&disc),
    )
    .unwrap();
    assert_eq!(r.card.applet().life_cycle(), Some(LifeCycle::Personalized));
    let perso_commands: Vec<String> = r.sessions[0].steps[1..]
        .iter()
        .map(|s| s.command.clone())
        .collect();

    for &service in Service::ALL {
        let name = format!("tap {service:?}");
        if service == Service::Welfare {
            r.session(
                &name,
                "SELECT, TERMINAL AUTHENTICATE announcing a debit, DEBIT (a signed receipt), \
                 GET BALANCE",
            );
            let intent = DebitIntent {
                amount: DEBIT,
                reference: DEBIT_REF,
            };
            tap(&mut r, &w, &pk, service, Some(intent));
            let receipt = r.call("", 0x30, &debit_data(DEBIT, DEBIT_REF)).unwrap();
            let body: ReceiptBody = Signed::decode(&receipt).unwrap().open(&[], &pk).unwrap();
            assert_eq!(
                (body.counter, body.amount, body.balance_after),
                (1, DEBIT, INITIAL_POINTS - DEBIT)
            );
            assert_eq!(balance(&mut r), (INITIAL_POINTS - DEBIT, 1));
        } else {
            r.session(
                &name,
                "SELECT, TERMINAL AUTHENTICATE for the service's attributes",
            );
            tap(&mut r, &w, &pk, service, None);
        }
    }

    r.session(
        "credit",
        "SELECT, a welfare TERMINAL AUTHENTICATE (the purse is read in a welfare session), \
         CREDIT with voucher 1, the same voucher again (a retry: the balance, nothing added), \
         GET BALANCE",
    );
    tap(&mut r, &w, &pk, Service::Welfare, None);
    let voucher = w.voucher(1, CREDIT, NOW, NOW + DAY);
    let after = INITIAL_POINTS - DEBIT + CREDIT;
    assert_eq!(r.call("", 0x32, &voucher), Ok(after.to_be_bytes().to_vec()));
    assert_eq!(
        r.call("the same voucher again", 0x32, &voucher),
        Ok(after.to_be_bytes().to_vec())
    );
    assert_eq!(balance(&mut r), (after, 1));

    r.session(
        "personalization refused once PERSONALIZED",
        "SELECT, GET DATA 'CF', then every command of the recorded personalization again: each \
         refused, nothing written",
    );
    assert_eq!(r.select().life_cycle, LifeCycle::Personalized);
    assert_eq!(r.raw("tag CF", "80CA00CF00"), 0x6985);
    let before = r.card.applet().store().as_bytes().to_vec();
    for cmd in &perso_commands {
        let sw = r.raw("sent again to the PERSONALIZED card", cmd);
        assert!(sw != 0x9000 && sw >> 8 != 0x61, "{cmd} -> {sw:04X}");
    }
    assert_eq!(r.card.applet().store().as_bytes(), &before[..]);

    r.session(
        "block",
        "SELECT, BLOCK with an issuer-signed order, then SELECT answers 6283 and GET BALANCE is \
         refused",
    );
    assert_eq!(r.select().life_cycle, LifeCycle::Personalized);
    assert_eq!(r.call("", 0x1E, &w.block_order(SERIAL, NOW)), Ok(vec![]));
    assert_eq!(r.raw("", "00A4040006F0434450460100"), 0x6283);
    assert_eq!(r.raw("", "805C000008"), 0x6985);

    // A terminal's command recorded earlier (the credit session's TERMINAL AUTHENTICATE).
    let auth = r
        .sessions
        .iter()
        .find(|s| s.name == "credit")
        .and_then(|s| {
            s.steps
                .iter()
                .find(|st| st.label == "TERMINAL AUTHENTICATE")
        })
        .map(|st| st.command.clone())
        .unwrap();
    r.session(
        "blocked",
        "After a power cycle the card stays BLOCKED: SELECT answers 6283, a TERMINAL \
         AUTHENTICATE is refused",
    );
    assert_eq!(r.raw("", "00A4040006F0434450460100"), 0x6283);
    assert_eq!(r.raw("", &auth), 0x6985);
    assert_eq!(r.card.applet().life_cycle(), Some(LifeCycle::Blocked));

    Transcript {
        card_seed: CARD_SEED,
        sessions: r.sessions,
    }
}

/// Replays `t`'s commands against a fresh BLANK card made with its seed; the number of steps
/// checked, or the first difference.
fn replay(t: &Transcript) -> Result<usize, String> {
    let w = World::new();
    let mut card = w.blank_card(t.card_seed);
    let mut n = 0;
    for s in &t.sessions {
        card.insert();
        for (i, step) in s.steps.iter().enumerate() {
            let cmd = hex::decode(&step.command)
                .map_err(|e| format!("session '{}', step {i}: bad command hex: {e}", s.name))?;
            let mut rsp = [0u8; 258];
            let got = match card.transceive(&cmd, &mut rsp) {
                Ok(k) => hex::encode_upper(&rsp[..k]),
                Err(e) => format!("<{e}>"),
            };
            if got != step.response {
                return Err(format!(
                    "session '{}', step {i} ({}): command {}\n  expected {}\n  got      {}",
                    s.name, step.label, step.command, step.response, got
                ));
            }
            n += 1;
        }
    }
    Ok(n)
}

/// The file, one step per line (like `apdu_table.json`) so that a diff shows the changed APDU.
fn to_json(t: &Transcript) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap();
    let mut out = String::from("{\n");
    out +=
        &format!(
        "  \"about\": {},\n",
        q("One card's life as raw APDUs in hex (command, response = data || SW), generated by \
           tests/apdu_transcripts.rs; do not edit by hand (UPDATE_GOLDEN=1 rewrites it). The card \
           is a fresh BLANK in-memory card: static keys diversified from 16 x 4D with \
           00112233445566778899, TestRng seeded with card_seed. Each session starts with a power \
           cycle (nothing selected). Steps: [label, command, response].")
    );
    out += &format!("  \"card_seed\": {},\n  \"sessions\": [\n", t.card_seed);
    for (si, s) in t.sessions.iter().enumerate() {
        out += &format!(
            "    {{\"name\": {}, \"about\": {}, \"steps\": [\n",
            q(&s.name),
            q(&s.about)
        );
        for (i, step) in s.steps.iter().enumerate() {
            out += &format!(
                "      [{}, {}, {}]{}\n",
                q(&step.label),
                q(&step.command),
                q(&step.response),
                if i + 1 < s.steps.len() { "," } else { "" }
            );
        }
        out += &format!(
            "    ]}}{}\n",
            if si + 1 < t.sessions.len() { "," } else { "" }
        );
    }
    out += "  ]\n}\n";
    out
}

fn from_json(text: &str) -> Transcript {
    let v: Value = serde_json::from_str(text).unwrap();
    let str_at = |v: &Value, i: usize| v[i].as_str().unwrap().to_string();
    Transcript {
        card_seed: v["card_seed"].as_u64().unwrap(),
        sessions: v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| Session {
                name: s["name"].as_str().unwrap().into(),
                about: s["about"].as_str().unwrap().into(),
                steps: s["steps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|st| Step {
                        label: str_at(st, 0),
                        command: str_at(st, 1),
                        response: str_at(st, 2),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The first step where two transcripts differ (commands or responses), for a readable failure.
fn first_difference(file: &Transcript, fresh: &Transcript) -> Option<String> {
    for (a, b) in file.sessions.iter().zip(&fresh.sessions) {
        if a.name != b.name {
            return Some(format!("session '{}' is now '{}'", a.name, b.name));
        }
        for (i, (x, y)) in a.steps.iter().zip(&b.steps).enumerate() {
            if x != y {
                return Some(format!(
                    "session '{}', step {i}:\n  file  {} {} -> {}\n  fresh {} {} -> {}",
                    a.name, x.label, x.command, x.response, y.label, y.command, y.response
                ));
            }
        }
        if a.steps.len() != b.steps.len() {
            return Some(format!(
                "session '{}': {} steps in the file, {} recorded",
                a.name,
                a.steps.len(),
                b.steps.len()
            ));
        }
    }
    (file.sessions.len() != fresh.sessions.len()).then(|| {
        format!(
            "{} sessions in the file, {} recorded",
            file.sessions.len(),
            fresh.sessions.len()
        )
    })
}

#[test]
fn golden_transcripts_replay_byte_for_byte() {
    let fresh = record();
    let update = std::env::var("UPDATE_GOLDEN").ok();
    if update
        .as_deref()
        .is_some_and(|v| v == "1" || v.split(',').any(|n| n.trim() == NAME))
    {
        std::fs::write(FILE, to_json(&fresh)).unwrap();
    }
    let text = std::fs::read_to_string(FILE)
        .unwrap_or_else(|e| panic!("{FILE}: {e}; run with UPDATE_GOLDEN=1 to create it"));
    let file = from_json(&text);
    let n = replay(&file).unwrap_or_else(|e| {
        panic!("{e}\n(a deliberate change? rerun with UPDATE_GOLDEN=1 and review the diff)")
    });
    println!("{n} recorded command/response pairs replayed");
    // The whole life is there: every session and more than a handful of APDUs each.
    assert_eq!(file.sessions.len(), Service::ALL.len() + 5);
    assert!(n >= 40, "{n}");
    if let Some(d) = first_difference(&file, &fresh) {
        panic!(
            "the host-side recording no longer matches {FILE}: {d}\n(a deliberate change? rerun \
             with UPDATE_GOLDEN=1 and review the diff)"
        );
    }
    // The file is exactly what the writer makes of it (no hand edits, no reformatting).
    assert_eq!(text, to_json(&file), "{FILE} was edited by hand");
}

#[test]
fn a_changed_byte_is_reported_with_session_step_and_both_answers() {
    let t = record();
    assert_eq!(
        replay(&t),
        Ok(t.sessions.iter().map(|s| s.steps.len()).sum())
    );
    // Flip one hex digit of the welfare DEBIT's answer (the receipt signature).
    let mut bad = t.clone();
    let s = bad
        .sessions
        .iter_mut()
        .find(|s| s.name == "tap Welfare")
        .unwrap();
    let i = s.steps.iter().position(|st| st.label == "DEBIT").unwrap();
    let good = s.steps[i].response.clone();
    let mut flipped = good.clone().into_bytes();
    flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
    let flipped = String::from_utf8(flipped).unwrap();
    s.steps[i].response = flipped.clone();
    let err = replay(&bad).unwrap_err();
    assert!(err.contains("session 'tap Welfare'"), "{err}");
    assert!(err.contains(&format!("step {i} (DEBIT)")), "{err}");
    assert!(err.contains(&flipped) && err.contains(&good), "{err}");
    // A changed command changes the card's answer too (here: a wrong SCP03 MAC closes the
    // channel, so the answer to the next protected command differs).
    let mut bad = t.clone();
    let perso = &mut bad.sessions[0];
    let ext = perso
        .steps
        .iter()
        .position(|st| st.command.starts_with("8482"))
        .unwrap();
    let last = perso.steps[ext].command.pop().unwrap();
    perso.steps[ext]
        .command
        .push(if last == '0' { '1' } else { '0' });
    let err = replay(&bad).unwrap_err();
    assert!(err.contains("session 'personalize'"), "{err}");
    // Another seed makes another card: the first challenge (SELECT's answer) differs.
    let mut bad = t;
    bad.card_seed += 1;
    let err = replay(&bad).unwrap_err();
    assert!(err.contains("step 0 (SELECT)"), "{err}");
}
