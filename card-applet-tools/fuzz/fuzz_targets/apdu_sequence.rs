//! Arbitrary APDU sequences against an in-memory card (personalized or blank), mixed with valid
//! moves the fuzzer could not forge (a terminal's signed request for the current challenge, a
//! voucher (sequence numbers 0 to 4: 0 must never be credited), an SCP03 session with the right
//! keys), power cuts at any write and resets.
//!
//! Nothing may panic; every answer carries a status word; and the purse adds up: balance = points
//! minted (initial and credited grants) minus the amounts of the debits, each debit being a
//! returned receipt (checked against the debit asked for) or, when the answer was lost to a power
//! cut, the debit whose commit raised the counter; the counter and the accepted voucher number
//! never go down.
#![no_main]

use std::sync::OnceLock;

use card_applet::sim::TestRng;
use card_applet::{Applet, RamStore, KVN};
use libfuzzer_sys::fuzz_target;
use shared_crypto::model::{
    AttributeId, AttributeSet, CreditCommand, DebitIntent, DebitRequest, Disclosure,
    KeyCertificateBody, ReceiptBody, Role, SelectResponse, Service, ServiceSet, TapRequestBody,
    TerminalAuth, VoucherBody,
};
use shared_crypto::scp03::{diversify, HostInit, HostSession, KeySet, StaticKeys};
use shared_crypto::sig::{sign, P256Signer, Signed};
use shared_crypto::wire::{decode_versioned, encode_versioned};

const NOW: u64 = 1_790_000_000;
const SERIAL: [u8; 8] = [7; 8];
const INITIAL: u32 = 1000;

struct Fixture {
    blank: RamStore,
    personalized: RamStore,
    keys: StaticKeys,
    terminals: Vec<(P256Signer, Vec<u8>)>,
    /// CREDIT data of grant number `i` (0 to 4), worth [`voucher_amount`]`(i)`.
    vouchers: Vec<Vec<u8>>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let k = |s: u64| P256Signer::generate(&mut TestRng::new(s)).unwrap();
        let (root, issuer, voucher) = (k(1), k(2), k(3));
        let cert = |key: &P256Signer, role, services| {
            let body = KeyCertificateBody {
                key_id: key.public_key().key_id(),
                role,
                subject: "fuzz",
                region: 110_000,
                services,
                public_key: key.public_key().to_bytes(),
                valid_from: 0,
                valid_until: u64::MAX,
            };
            sign(&body, &[], &root).unwrap()
        };
        let terminals = Service::ALL
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let t = k(10 + i as u64);
                let c = cert(&t, Role::Terminal, ServiceSet::of(&[*s]));
                (t, c)
            })
            .collect();
        let vcert = cert(&voucher, Role::Voucher, ServiceSet::NONE);
        let vouchers = (0..=4u32)
            .map(|seq| {
                let amount = voucher_amount(seq);
                let v = VoucherBody {
                    card_serial: SERIAL,
                    seq,
                    amount,
                    issued_at: NOW,
                    valid_until: NOW + 86_400,
                };
                let v = sign(&v, &[], &voucher).unwrap();
                encode_versioned(&CreditCommand {
                    voucher_cert: Signed::decode(&vcert).unwrap(),
                    voucher: Signed::decode(&v).unwrap(),
                })
            })
            .collect();
        let div = [5u8; 10];
        let master = [9u8; 16];
        let keys = diversify(&master, &div);
        let mut card =
            card_applet::sim::InMemoryCard::blank(TestRng::new(4), &master, div).unwrap();
        let blank = card.applet().store().clone();
        let salts = [[1u8; 16], [2u8; 16]];
        let disc = [
            Disclosure {
                attribute: AttributeId::Level,
                salt: salts[0],
                value: &[2],
            },
            Disclosure {
                attribute: AttributeId::Entitlements,
                salt: salts[1],
                value: &[0x1F],
            },
        ];
        let profile = card_applet::host::CardProfile {
            card_serial: SERIAL,
            status_index: 1,
            valid_from: 0,
            valid_until: u64::MAX,
            disclosures: &disc,
            root_key: root.public_key(),
            initial_points: INITIAL,
        };
        card_applet::sim::personalize_in_memory(
            &mut card,
            &mut TestRng::new(5),
            &keys,
            &issuer,
            &profile,
        )
        .unwrap();
        Fixture {
            blank,
            personalized: card.applet().store().clone(),
            keys,
            terminals,
            vouchers,
        }
    })
}

/// Points of the fixture's voucher number `seq` (never 0: a grant numbered 0 must be refused for
/// its number, not for its amount).
fn voucher_amount(seq: u32) -> u32 {
    100 * (seq + 1)
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

fn send(card: &mut Applet<RamStore, TestRng>, cmd: &[u8]) -> Vec<u8> {
    let mut rsp = [0u8; 258];
    let n = card.process(cmd, &mut rsp);
    assert!((2..=258).contains(&n), "every answer has a status word");
    rsp[..n].to_vec()
}

/// Sends data with chaining and GET RESPONSE, like a terminal.
fn exchange(card: &mut Applet<RamStore, TestRng>, ins: u8, data: &[u8]) -> Vec<u8> {
    let chunks: Vec<&[u8]> = data.chunks(255).collect();
    let mut last = vec![];
    for (i, c) in chunks.iter().enumerate() {
        let end = i + 1 == chunks.len();
        let mut cmd = vec![if end { 0x80 } else { 0x90 }, ins, 0, 0, c.len() as u8];
        cmd.extend_from_slice(c);
        if end {
            cmd.push(0);
        }
        last = send(card, &cmd);
    }
    let mut answer = last[..last.len() - 2].to_vec();
    while last.len() >= 2 && last[last.len() - 2] == 0x61 {
        last = send(card, &[0x00, 0xC0, 0x00, 0x00, last[last.len() - 1]]);
        answer.extend_from_slice(&last[..last.len() - 2]);
    }
    answer
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut input = Input(data);
    let Some(mode) = input.byte() else { return };
    let image = if mode & 1 == 0 {
        f.personalized.clone()
    } else {
        f.blank.clone()
    };
    let mut card = Applet::new(image, TestRng::new(u64::from(mode)));
    card.power_on();
    let mut challenge: Option<[u8; 16]> = None;
    let mut scp: Option<HostSession> = None;
    let mut minted = if mode & 1 == 0 { INITIAL } else { 0 };
    // Debited points and the counter they account for; a debit whose answer was lost.
    let mut debited: u64 = 0;
    let mut counted: u32 = 0;
    let mut lost: Option<u32> = None;
    let mut intent: Option<DebitIntent> = None;
    // (counter, accepted voucher number) at the last check: the personalized image's to start.
    let mut last_seen: (u32, u32) = (0, 0);
    let mut steps = 0;
    while let Some(op) = input.byte() {
        steps += 1;
        if steps > 64 {
            break;
        }
        match op % 10 {
            0 | 1 => {
                let n = input.byte().unwrap_or(0) as usize;
                let cmd = input.take(n).to_vec();
                send(&mut card, &cmd);
            }
            2 => {
                let r = send(
                    &mut card,
                    &[
                        0x00, 0xA4, 0x04, 0x00, 0x06, 0xF0, 0x43, 0x44, 0x50, 0x46, 0x01, 0x00,
                    ],
                );
                challenge = decode_versioned::<SelectResponse>(&r[..r.len() - 2])
                    .ok()
                    .map(|s| s.challenge);
                scp = None;
                intent = None;
            }
            3 => {
                let s = Service::ALL[(input.byte().unwrap_or(0) % 4) as usize];
                let requested = AttributeSet(u16::from_be_bytes([
                    input.byte().unwrap_or(0xFF),
                    input.byte().unwrap_or(0xFF),
                ]));
                let (key, cert) = &f.terminals[s as usize];
                // Sometimes a debit intent, also where the card must refuse one (not welfare,
                // zero points).
                let flags = input.byte().unwrap_or(0);
                let debit = (flags & 1 == 1).then(|| DebitIntent {
                    amount: u32::from(flags >> 1) * 7,
                    reference: [input.byte().unwrap_or(0); 16],
                });
                let req = TapRequestBody {
                    terminal_nonce: [3; 16],
                    service: s,
                    requested,
                    time: NOW,
                    debit,
                };
                let req = sign(&req, &challenge.unwrap_or([0; 16]), key).unwrap();
                let data = encode_versioned(&TerminalAuth {
                    terminal_cert: Signed::decode(cert).unwrap(),
                    request: Signed::decode(&req).unwrap(),
                });
                exchange(&mut card, 0x82, &data);
                intent = debit;
            }
            4 => {
                // The announced debit (an honest terminal) or a fuzzed one (a relay).
                let choice = input.byte().unwrap_or(0);
                let asked = match intent {
                    Some(i) if choice & 1 == 0 => i,
                    _ => DebitIntent {
                        amount: u32::from(input.byte().unwrap_or(1)) * 7,
                        reference: [input.byte().unwrap_or(0); 16],
                    },
                };
                let time = if choice & 2 == 0 { NOW } else { NOW + 1 };
                let counter_before = card.counter();
                let powered = !card.store().power_lost();
                let answer = exchange(
                    &mut card,
                    0x30,
                    &encode_versioned(&DebitRequest {
                        amount: asked.amount,
                        reference: asked.reference,
                        time,
                    }),
                );
                if let Ok(r) =
                    Signed::decode(&answer).and_then(|s| s.decode_trusted::<ReceiptBody>())
                {
                    // A receipt is for exactly what was asked and signed into the session, at
                    // the session's time; a new counter is a new debit, an old one a retry.
                    assert_eq!(Some(asked), intent, "a receipt for an unannounced debit");
                    assert_eq!(
                        (r.amount, r.reference, r.time),
                        (asked.amount, asked.reference, NOW)
                    );
                    if counter_before.is_some_and(|c| r.counter > c) {
                        assert_eq!(r.counter, counter_before.unwrap_or(0) + 1);
                        debited += u64::from(r.amount);
                        counted = r.counter;
                    } else {
                        assert!(r.counter <= counted, "a retry returns an older receipt");
                    }
                } else if powered {
                    // No receipt: if the commit landed before the power went, the counter
                    // moves and this debit is counted at the next check. (Without power no
                    // debit can commit.)
                    lost = Some(asked.amount);
                }
            }
            5 => {
                // What it mints is counted from the accepted number at the next check (an
                // answer lost to a power cut may hide a credit that landed).
                let v = &f.vouchers[(input.byte().unwrap_or(0) % 5) as usize];
                exchange(&mut card, 0x32, v);
            }
            6 => {
                let n = u32::from(input.byte().unwrap_or(0) % 8);
                let torn = input.byte().unwrap_or(0) as usize;
                card.store_mut().cut_power_at(n, torn);
            }
            7 => {
                card.store_mut().restore_power();
                if input.byte().unwrap_or(0) & 1 == 0 {
                    card.power_on();
                } else {
                    card.reset();
                }
                challenge = None;
                scp = None;
                intent = None;
            }
            8 => {
                // Open SCP03 with the right keys (only a blank card accepts).
                let init = HostInit::new(KVN, [input.byte().unwrap_or(0); 8]);
                let r = send(&mut card, &init.command());
                let keys = KeySet::from_static(KVN, &f.keys);
                if let Ok((s, _, ext)) = init.authenticate(&keys, &r[..r.len() - 2], 0x33) {
                    let r = send(&mut card, &ext);
                    scp = (r == [0x90, 0x00]).then_some(s);
                }
            }
            _ => {
                // A protected command with fuzzed header and data.
                if let Some(s) = scp.as_mut() {
                    let header = [
                        0x80,
                        input.byte().unwrap_or(0),
                        input.byte().unwrap_or(0),
                        input.byte().unwrap_or(0),
                    ];
                    let n = (input.byte().unwrap_or(0) as usize).min(239);
                    let mut plain = header.to_vec();
                    let body = input.take(n).to_vec();
                    if !body.is_empty() {
                        plain.push(body.len() as u8);
                        plain.extend_from_slice(&body);
                    }
                    let mut wrapped = [0u8; 262];
                    if let Ok(wn) = s.wrap_command(&plain, &mut wrapped) {
                        let r = send(&mut card, &wrapped[..wn]);
                        let sw = u16::from_be_bytes([r[r.len() - 2], r[r.len() - 1]]);
                        let mut out = [0u8; 258];
                        let _ = s.unwrap_response(&r[..r.len() - 2], sw, &mut out);
                    }
                }
            }
        }
        if !card.store().power_lost() && mode & 1 == 0 {
            if let (Some(b), Some(c), Some(v)) =
                (card.balance(), card.counter(), card.voucher_seq())
            {
                if c > counted {
                    // Only a debit whose answer was lost can have moved the counter unseen,
                    // and only by one.
                    assert_eq!(c, counted + 1, "counter jumped");
                    let amount = lost.take().expect("a debit without an attempt");
                    debited += u64::from(amount);
                    counted = c;
                }
                let (c0, v0) = last_seen;
                assert!(c >= c0 && v >= v0, "counter or voucher number went down");
                if v > v0 {
                    // One CREDIT per step and none without power: exactly grant `v` landed.
                    minted += voucher_amount(v);
                }
                let expected = i64::from(minted) - debited as i64;
                assert_eq!(
                    i64::from(b),
                    expected,
                    "balance {b} != minted {minted} - debited {debited}"
                );
                last_seen = (c, v);
            }
        }
    }
});
