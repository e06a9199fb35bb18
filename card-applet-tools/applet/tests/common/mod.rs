//! Fixtures shared by the applet's tests: a root, an issuer, a voucher key and one terminal per
//! service, a personalized in-memory card, and helpers that speak the card's commands.
#![allow(dead_code, clippy::unwrap_used)]

use card_applet::host::{self, CardProfile};
use card_applet::sim::{personalize_in_memory, InMemoryCard, TestRng};
use shared_crypto::apdu::{exchange, ExchangeError, WireStats};
use shared_crypto::model::{
    transcript_hash, AttributeId, AttributeSet, BlockCommand, CardBlockBody, CredentialBody,
    CreditCommand, DebitIntent, DebitRequest, Disclosure, KeyCertificateBody, Role, SelectResponse,
    Service, ServiceSet, TapRequestBody, TapResponseBody, TerminalAuth, VoucherBody,
};
use shared_crypto::scp03::{diversify, StaticKeys};
use shared_crypto::sig::{sign, P256Signer, PublicKey, Signed};
use shared_crypto::wire::encode_versioned;

/// The tests' "now" (2026-09-21).
pub const NOW: u64 = 1_790_000_000;
pub const YEAR: u64 = 365 * 24 * 3600;
pub const SERIAL: [u8; 8] = [0xC4, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07];
pub const DIV: [u8; 10] = [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99];
pub const MASTER: [u8; 16] = [0x4D; 16];
pub const INITIAL_POINTS: u32 = 500;

pub fn key(seed: u64) -> P256Signer {
    P256Signer::generate(&mut TestRng::new(seed)).unwrap()
}

pub fn cert(
    root: &P256Signer,
    key: &PublicKey,
    role: Role,
    services: ServiceSet,
    from: u64,
    until: u64,
) -> Vec<u8> {
    let body = KeyCertificateBody {
        key_id: key.key_id(),
        role,
        subject: "test key",
        region: 110_000,
        services,
        public_key: key.to_bytes(),
        valid_from: from,
        valid_until: until,
    };
    sign(&body, &[], root).unwrap()
}

pub struct Terminal {
    pub key: P256Signer,
    pub cert: Vec<u8>,
}

pub struct World {
    pub root: P256Signer,
    pub issuer: P256Signer,
    pub issuer_cert: Vec<u8>,
    pub voucher: P256Signer,
    pub voucher_cert: Vec<u8>,
    /// One terminal per service, in `Service::ALL` order.
    pub terminals: Vec<Terminal>,
    pub keys: StaticKeys,
}

impl World {
    pub fn new() -> Self {
        let root = key(1);
        let issuer = key(2);
        let voucher = key(3);
        let issuer_cert = cert(
            &root,
            &issuer.public_key(),
            Role::Issuer,
            ServiceSet::NONE,
            NOW - YEAR,
            NOW + YEAR,
        );
        let voucher_cert = cert(
            &root,
            &voucher.public_key(),
            Role::Voucher,
            ServiceSet::NONE,
            NOW - YEAR,
            NOW + YEAR,
        );
        let terminals = Service::ALL
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let k = key(10 + i as u64);
                let c = cert(
                    &root,
                    &k.public_key(),
                    Role::Terminal,
                    ServiceSet::of(&[*s]),
                    NOW - YEAR,
                    NOW + YEAR,
                );
                Terminal { key: k, cert: c }
            })
            .collect();
        World {
            root,
            issuer,
            issuer_cert,
            voucher,
            voucher_cert,
            terminals,
            keys: diversify(&MASTER, &DIV),
        }
    }

    pub fn terminal(&self, s: Service) -> &Terminal {
        &self.terminals[s as usize]
    }

    pub fn blank_card(&self, seed: u64) -> InMemoryCard<TestRng> {
        InMemoryCard::blank(TestRng::new(seed), &MASTER, DIV).unwrap()
    }

    pub fn profile<'a>(&self, disclosures: &'a [Disclosure<'a>]) -> CardProfile<'a> {
        CardProfile {
            card_serial: SERIAL,
            status_index: 42,
            valid_from: NOW - YEAR,
            valid_until: NOW + 5 * YEAR,
            disclosures,
            root_key: self.root.public_key(),
            initial_points: INITIAL_POINTS,
        }
    }

    pub fn personalized_card(&self, seed: u64) -> InMemoryCard<TestRng> {
        let mut card = self.blank_card(seed);
        let attrs = attributes();
        let disc = disclosures(&attrs);
        personalize_in_memory(
            &mut card,
            &mut TestRng::new(seed + 1000),
            &self.keys,
            &self.issuer,
            &self.profile(&disc),
        )
        .unwrap();
        card
    }

    pub fn voucher(&self, seq: u32, amount: u32, issued_at: u64, valid_until: u64) -> Vec<u8> {
        self.voucher_for(SERIAL, seq, amount, issued_at, valid_until)
    }

    pub fn voucher_for(
        &self,
        serial: [u8; 8],
        seq: u32,
        amount: u32,
        issued_at: u64,
        valid_until: u64,
    ) -> Vec<u8> {
        let v = VoucherBody {
            card_serial: serial,
            seq,
            amount,
            issued_at,
            valid_until,
        };
        let wire = sign(&v, &[], &self.voucher).unwrap();
        credit_data(&self.voucher_cert, &wire)
    }

    pub fn block_order(&self, serial: [u8; 8], time: u64) -> Vec<u8> {
        let order = sign(
            &CardBlockBody {
                card_serial: serial,
                time,
                reason: 1,
            },
            &[],
            &self.issuer,
        )
        .unwrap();
        encode_versioned(&BlockCommand {
            issuer_cert: Signed::decode(&self.issuer_cert).unwrap(),
            order: Signed::decode(&order).unwrap(),
        })
    }
}

pub fn credit_data(cert: &[u8], voucher: &[u8]) -> Vec<u8> {
    encode_versioned(&CreditCommand {
        voucher_cert: Signed::decode(cert).unwrap(),
        voucher: Signed::decode(voucher).unwrap(),
    })
}

/// The holder's attributes: (id, salt, canonical value).
pub fn attributes() -> Vec<(AttributeId, [u8; 16], Vec<u8>)> {
    use AttributeId::*;
    vec![
        (Name, [1; 16], "张三".as_bytes().to_vec()),
        (CertificateNumber, [2; 16], b"11010519491231002X42".to_vec()),
        (Category, [3; 16], vec![4]),
        (Level, [4; 16], vec![2]),
        (Region, [5; 16], 110_105u32.to_be_bytes().to_vec()),
        (BirthYear, [6; 16], 1949u16.to_be_bytes().to_vec()),
        (Entitlements, [7; 16], vec![0x1F]),
        (PhotoDigest, [8; 16], vec![0xAB; 32]),
        (
            CertificateExpiry,
            [9; 16],
            (NOW + 5 * YEAR).to_be_bytes().to_vec(),
        ),
    ]
}

pub fn disclosures(attrs: &[(AttributeId, [u8; 16], Vec<u8>)]) -> Vec<Disclosure<'_>> {
    attrs
        .iter()
        .map(|(a, s, v)| Disclosure {
            attribute: *a,
            salt: *s,
            value: v,
        })
        .collect()
}

/// Sends one raw APDU given in hex; returns the answer in hex (data and SW), upper case.
pub fn raw<T: shared_crypto::apdu::Transport>(card: &mut T, hex_cmd: &str) -> String
where
    T::Error: core::fmt::Debug,
{
    let cmd = hex::decode(hex_cmd.replace(' ', "")).unwrap();
    let mut rsp = [0u8; 258];
    let n = card.transceive(&cmd, &mut rsp).unwrap();
    hex::encode_upper(&rsp[..n])
}

pub fn sw_of(answer_hex: &str) -> &str {
    &answer_hex[answer_hex.len() - 4..]
}

pub fn select(card: &mut InMemoryCard<TestRng>) -> SelectResponse {
    host::select(card).unwrap()
}

pub fn terminal_auth(
    challenge: &[u8; 16],
    t: &Terminal,
    service: Service,
    requested: AttributeSet,
    time: u64,
) -> Vec<u8> {
    terminal_auth_with(challenge, t, service, requested, time, None)
}

/// TERMINAL AUTHENTICATE data whose signed request announces `debit`.
pub fn terminal_auth_with(
    challenge: &[u8; 16],
    t: &Terminal,
    service: Service,
    requested: AttributeSet,
    time: u64,
    debit: Option<DebitIntent>,
) -> Vec<u8> {
    let req = TapRequestBody {
        terminal_nonce: [0x5A; 16],
        service,
        requested,
        time,
        debit,
    };
    let req_wire = sign(&req, challenge, &t.key).unwrap();
    encode_versioned(&TerminalAuth {
        terminal_cert: Signed::decode(&t.cert).unwrap(),
        request: Signed::decode(&req_wire).unwrap(),
    })
}

/// A logical exchange (chaining and GET RESPONSE handled) with CLA 80.
pub fn call(
    card: &mut InMemoryCard<TestRng>,
    ins: u8,
    data: &[u8],
) -> Result<Vec<u8>, ExchangeError<card_applet::sim::CardGone>> {
    let mut out = vec![0u8; 4096];
    let mut stats = WireStats::default();
    let n = exchange(card, 0x80, ins, 0, 0, data, true, &mut out, &mut stats)?;
    out.truncate(n);
    Ok(out)
}

pub struct Tap {
    pub challenge: [u8; 16],
    pub data: Vec<u8>,
    pub answer: Vec<u8>,
}

/// SELECT + TERMINAL AUTHENTICATE by the terminal of `service`.
pub fn tap(
    w: &World,
    card: &mut InMemoryCard<TestRng>,
    service: Service,
    requested: AttributeSet,
) -> Result<Tap, ExchangeError<card_applet::sim::CardGone>> {
    let sel = select(card);
    let data = terminal_auth(&sel.challenge, w.terminal(service), service, requested, NOW);
    let answer = call(card, 0x82, &data)?;
    Ok(Tap {
        challenge: sel.challenge,
        data,
        answer,
    })
}

/// SELECT + TERMINAL AUTHENTICATE by the welfare terminal at `time`, announcing `amount` under
/// `reference`.
pub fn welfare_tap(
    w: &World,
    card: &mut InMemoryCard<TestRng>,
    amount: u32,
    reference: [u8; 16],
    time: u64,
) -> Result<Tap, ExchangeError<card_applet::sim::CardGone>> {
    let sel = select(card);
    let data = terminal_auth_with(
        &sel.challenge,
        w.terminal(Service::Welfare),
        Service::Welfare,
        AttributeSet::NONE,
        time,
        Some(DebitIntent { amount, reference }),
    );
    let answer = call(card, 0x82, &data)?;
    Ok(Tap {
        challenge: sel.challenge,
        data,
        answer,
    })
}

/// The purse a tap answer reports (verified under the card key), if any.
pub fn tap_purse(card_key: &PublicKey, t: &Tap) -> Option<(u32, u32)> {
    let body: TapResponseBody<'_> = Signed::decode(&t.answer)
        .unwrap()
        .open(&transcript_hash(&t.challenge, &t.data), card_key)
        .unwrap();
    body.purse.map(|p| (p.balance, p.counter))
}

/// Verifies a tap answer like a terminal would and returns the disclosed attribute set.
pub fn check_tap(w: &World, card_key: &PublicKey, t: &Tap) -> AttributeSet {
    let signed = Signed::decode(&t.answer).unwrap();
    let body: TapResponseBody<'_> = signed
        .open(&transcript_hash(&t.challenge, &t.data), card_key)
        .unwrap();
    let cred: CredentialBody<'_> = body.credential.open(&[], &w.issuer.public_key()).unwrap();
    assert_eq!(cred.card_serial, SERIAL);
    assert_eq!(cred.card_key.0, card_key.to_sec1());
    cred.check_disclosures(&body.disclosures).unwrap()
}

/// DEBIT data for a session whose request was made at [`NOW`] (what [`tap`] and the tests'
/// welfare taps use).
pub fn debit_data(amount: u32, reference: [u8; 16]) -> Vec<u8> {
    debit_data_at(amount, reference, NOW)
}

/// DEBIT data naming `time` (must equal the session's request time).
pub fn debit_data_at(amount: u32, reference: [u8; 16], time: u64) -> Vec<u8> {
    encode_versioned(&DebitRequest {
        amount,
        reference,
        time,
    })
}

/// Sends `data` with INS `ins` (CLA 80) as raw chained APDUs, checking that every block but the
/// last is answered by a bare 9000. Returns the raw answer to the last block (data and SW).
pub fn call_raw(card: &mut InMemoryCard<TestRng>, ins: u8, p1: u8, data: &[u8]) -> Vec<u8> {
    use shared_crypto::apdu::Transport;
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[][..]]
    } else {
        data.chunks(255).collect()
    };
    let mut rsp = [0u8; 258];
    for (i, c) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let mut cmd = vec![if last { 0x80 } else { 0x90 }, ins, p1, 0];
        if !c.is_empty() {
            cmd.push(c.len() as u8);
            cmd.extend_from_slice(c);
        }
        if last {
            cmd.push(0);
        }
        let n = card.transceive(&cmd, &mut rsp).unwrap();
        if !last {
            assert_eq!(&rsp[..n], &[0x90, 0x00], "block {i} of a chain");
        } else {
            return rsp[..n].to_vec();
        }
    }
    unreachable!()
}
