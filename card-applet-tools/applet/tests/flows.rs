//! Whole flows on an in-memory card: personalization, a tap for each service, debit, credit,
//! block, every refusal of those commands, what a reader without a valid terminal certificate
//! learns, and the public-key operation bound of a tap.
#![allow(clippy::unwrap_used)]

mod common;

use card_applet::sim::TestRng;
use common::*;
use shared_crypto::apdu::{ExchangeError, Transport};
use shared_crypto::model::{
    AttributeSet, DebitIntent, LifeCycle, ReceiptBody, Role, Service, ServiceSet, TapRequestBody,
    TerminalAuth, VoucherBody,
};
use shared_crypto::sig::{sign, Signed};
use shared_crypto::wire::encode_versioned;

fn status<T>(r: Result<T, ExchangeError<card_applet::sim::CardGone>>) -> u16 {
    match r {
        Err(ExchangeError::Status(sw)) => sw,
        Ok(_) => 0x9000,
        Err(e) => panic!("{e:?}"),
    }
}

#[test]
fn personalize_then_tap_every_service() {
    let w = World::new();
    let mut card = w.personalized_card(1);
    assert_eq!(card.applet().life_cycle(), Some(LifeCycle::Personalized));
    assert_eq!(card.applet().balance(), Some(INITIAL_POINTS));
    let pk = card.applet().card_public_key().unwrap();
    for s in Service::ALL {
        // Asking for everything releases exactly the service's policy.
        let t = tap(&w, &mut card, *s, AttributeSet::ALL).unwrap();
        assert_eq!(check_tap(&w, &pk, &t), s.release_policy(), "{s:?}");
        // Asking for less releases less: requested ∩ policy.
        let one = AttributeSet::of(&[shared_crypto::model::AttributeId::Entitlements]);
        let t = tap(&w, &mut card, *s, one).unwrap();
        assert_eq!(
            check_tap(&w, &pk, &t),
            one.intersect(s.release_policy()),
            "{s:?}"
        );
        let t = tap(&w, &mut card, *s, AttributeSet::NONE).unwrap();
        assert_eq!(check_tap(&w, &pk, &t), AttributeSet::NONE);
    }
    assert_eq!(card.applet().last_seen_time(), NOW);
}

#[test]
fn a_terminal_certified_for_several_services_gets_each_policy() {
    let w = World::new();
    let mut card = w.personalized_card(2);
    let pk = card.applet().card_public_key().unwrap();
    let k = key(77);
    let multi = Terminal {
        cert: cert(
            &w.root,
            &k.public_key(),
            Role::Terminal,
            ServiceSet::of(&[Service::Transit, Service::Rehab]),
            NOW - 10,
            NOW + 10,
        ),
        key: k,
    };
    for s in [Service::Transit, Service::Rehab] {
        let sel = select(&mut card);
        let data = terminal_auth(&sel.challenge, &multi, s, AttributeSet::ALL, NOW);
        let answer = call(&mut card, 0x82, &data).unwrap();
        let t = Tap {
            challenge: sel.challenge,
            data,
            answer,
        };
        assert_eq!(check_tap(&w, &pk, &t), s.release_policy());
    }
    let sel = select(&mut card);
    let data = terminal_auth(
        &sel.challenge,
        &multi,
        Service::Employment,
        AttributeSet::ALL,
        NOW,
    );
    assert_eq!(call_raw(&mut card, 0x82, 0, &data), [0x69, 0x82]);
}

#[test]
fn terminal_authenticate_refusals_reveal_nothing() {
    let w = World::new();
    let mut card = w.personalized_card(3);
    let fake_root = key(99);
    let transit = w.terminal(Service::Transit);
    let other = key(98);
    type MakeData<'a> = Box<dyn Fn(&[u8; 16]) -> Vec<u8> + 'a>;
    let cases: Vec<(&str, MakeData<'_>, [u8; 2])> = vec![
        (
            "certificate from another root",
            Box::new(|c| {
                let t = Terminal {
                    cert: cert(
                        &fake_root,
                        &transit.key.public_key(),
                        Role::Terminal,
                        ServiceSet::of(&[Service::Employment]),
                        NOW - 10,
                        NOW + 10,
                    ),
                    key: transit.key.clone(),
                };
                terminal_auth(c, &t, Service::Employment, AttributeSet::ALL, NOW)
            }),
            [0x69, 0x82],
        ),
        (
            "certificate of another role",
            Box::new(|c| {
                let t = Terminal {
                    cert: w.issuer_cert.clone(),
                    key: w.issuer.clone(),
                };
                terminal_auth(c, &t, Service::Employment, AttributeSet::ALL, NOW)
            }),
            [0x69, 0x82],
        ),
        (
            "service not in the certificate",
            Box::new(|c| terminal_auth(c, transit, Service::Employment, AttributeSet::ALL, NOW)),
            [0x69, 0x82],
        ),
        (
            "certificate expired at the request's time",
            Box::new(|c| {
                terminal_auth(
                    c,
                    transit,
                    Service::Transit,
                    AttributeSet::ALL,
                    NOW + 2 * YEAR,
                )
            }),
            [0x69, 0x82],
        ),
        (
            "certificate not yet valid",
            Box::new(|c| {
                terminal_auth(
                    c,
                    transit,
                    Service::Transit,
                    AttributeSet::ALL,
                    NOW - 2 * YEAR,
                )
            }),
            [0x69, 0x82],
        ),
        (
            "request signed by another key",
            Box::new(|c| {
                let t = Terminal {
                    cert: transit.cert.clone(),
                    key: other.clone(),
                };
                terminal_auth(c, &t, Service::Transit, AttributeSet::ALL, NOW)
            }),
            [0x69, 0x82],
        ),
        (
            "request signed over another challenge (replay)",
            Box::new(|_| {
                terminal_auth(
                    &[0u8; 16],
                    transit,
                    Service::Transit,
                    AttributeSet::ALL,
                    NOW,
                )
            }),
            [0x69, 0x82],
        ),
        (
            "trailing byte",
            Box::new(|c| {
                let mut d = terminal_auth(c, transit, Service::Transit, AttributeSet::ALL, NOW);
                d.push(0);
                d
            }),
            [0x6A, 0x80],
        ),
        (
            "unknown version",
            Box::new(|c| {
                let mut d = terminal_auth(c, transit, Service::Transit, AttributeSet::ALL, NOW);
                d[0] = 2;
                d
            }),
            [0x6A, 0x80],
        ),
        (
            "request body with an unknown service",
            Box::new(|c| {
                let req = TapRequestBody {
                    terminal_nonce: [1; 16],
                    service: Service::Transit,
                    requested: AttributeSet::ALL,
                    time: NOW,
                    debit: None,
                };
                let mut body = encode_versioned(&req);
                body[17] = 9; // the service byte
                let s = shared_crypto::sig::sign_body(
                    &transit.key,
                    shared_crypto::sig::Domain::TapRequest,
                    c,
                    &body,
                )
                .unwrap();
                encode_versioned(&TerminalAuth {
                    terminal_cert: Signed::decode(&transit.cert).unwrap(),
                    request: s,
                })
            }),
            [0x6A, 0x80],
        ),
        (
            "request body of format version 1 (before the debit intent)",
            Box::new(|c| {
                let req = TapRequestBody {
                    terminal_nonce: [1; 16],
                    service: Service::Transit,
                    requested: AttributeSet::ALL,
                    time: NOW,
                    debit: None,
                };
                // Version 1 was the same fields without `debit`: drop its `00` and relabel.
                let mut body = encode_versioned(&req);
                assert_eq!(body.pop(), Some(0));
                body[0] = 1;
                let s = shared_crypto::sig::sign_body(
                    &transit.key,
                    shared_crypto::sig::Domain::TapRequest,
                    c,
                    &body,
                )
                .unwrap();
                encode_versioned(&TerminalAuth {
                    terminal_cert: Signed::decode(&transit.cert).unwrap(),
                    request: s,
                })
            }),
            [0x6A, 0x80],
        ),
        (
            "debit intent outside a welfare session",
            Box::new(|c| {
                terminal_auth_with(
                    c,
                    transit,
                    Service::Transit,
                    AttributeSet::ALL,
                    NOW,
                    Some(DebitIntent {
                        amount: 5,
                        reference: [1; 16],
                    }),
                )
            }),
            [0x6A, 0x80],
        ),
        (
            "debit intent of zero points",
            Box::new(|c| {
                terminal_auth_with(
                    c,
                    w.terminal(Service::Welfare),
                    Service::Welfare,
                    AttributeSet::ALL,
                    NOW,
                    Some(DebitIntent {
                        amount: 0,
                        reference: [1; 16],
                    }),
                )
            }),
            [0x6A, 0x80],
        ),
    ];
    for (name, make, sw) in &cases {
        let sel = select(&mut card);
        let answer = call_raw(&mut card, 0x82, 0, &make(&sel.challenge));
        assert_eq!(answer, sw, "{name}: only a status word");
        // The challenge is spent: even a correct request now needs a new SELECT.
        let good = terminal_auth(
            &sel.challenge,
            transit,
            Service::Transit,
            AttributeSet::ALL,
            NOW,
        );
        assert_eq!(
            call_raw(&mut card, 0x82, 0, &good),
            [0x69, 0x85],
            "{name}: challenge reuse"
        );
        assert_eq!(
            call_raw(&mut card, 0x5C, 0, &[]),
            [0x69, 0x82],
            "{name}: no session"
        );
    }
    // And the right request with a fresh challenge still works.
    tap(&w, &mut card, Service::Transit, AttributeSet::ALL).unwrap();
}

#[test]
fn a_reader_without_a_terminal_certificate_learns_nothing() {
    let w = World::new();
    let mut card = w.personalized_card(4);
    let pk = card.applet().card_public_key().unwrap().to_sec1();
    let mut rng = TestRng::new(5);
    use rand_core::Rng;
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    for round in 0..3 {
        let sel = raw(&mut card, "00A4040006F0434450460100");
        let sel = hex::decode(&sel).unwrap();
        // version 1, applet version, life cycle, 16-byte challenge, 9000: nothing else.
        assert_eq!(sel.len(), 3 + 16 + 2);
        assert!(!contains(&sel, &SERIAL[..4]) && !contains(&sel, &pk[1..9]));
        for cla in [0x00u8, 0x80, 0x84, 0x90, 0x94] {
            for ins in 0..=255u8 {
                if cla == 0x00 && ins == 0xA4 {
                    continue;
                }
                for len in [0usize, 1, 3, 40] {
                    let mut cmd = vec![cla, ins, round, 0];
                    if len > 0 {
                        let mut d = vec![0u8; len];
                        rng.fill_bytes(&mut d);
                        cmd.push(len as u8);
                        cmd.extend_from_slice(&d);
                    }
                    let mut rsp = [0u8; 258];
                    let n = card.transceive(&cmd, &mut rsp).unwrap();
                    let chained_block_ok = cla & 0x10 != 0 && rsp[..n] == [0x90, 0x00];
                    assert!(
                        n == 2 && (rsp[0] != 0x90 || chained_block_ok) && rsp[0] != 0x61,
                        "{cmd:02X?} -> {:02X?}",
                        &rsp[..n]
                    );
                }
            }
        }
    }
    // Nothing changed.
    assert_eq!(card.applet().life_cycle(), Some(LifeCycle::Personalized));
    assert_eq!(card.applet().balance(), Some(INITIAL_POINTS));
    assert_eq!(card.applet().counter(), Some(0));
}

#[test]
fn at_most_three_public_key_operations_per_tap() {
    let w = World::new();
    let mut card = w.personalized_card(5);
    card.insert(); // power-up: counter 0, empty certificate cache
    assert_eq!(card.applet().public_key_ops(), 0);
    tap(&w, &mut card, Service::Transit, AttributeSet::ALL).unwrap();
    assert_eq!(
        card.applet().public_key_ops(),
        3,
        "cert + request + transcript"
    );
    tap(&w, &mut card, Service::Transit, AttributeSet::ALL).unwrap();
    assert_eq!(
        card.applet().public_key_ops(),
        5,
        "cached certificate: request + transcript"
    );
    welfare_tap(&w, &mut card, 1, [9; 16], NOW).unwrap();
    assert_eq!(
        card.applet().public_key_ops(),
        8,
        "another terminal: 3 again (the intent costs no operation)"
    );
    call(&mut card, 0x30, &debit_data(1, [9; 16])).unwrap();
    assert_eq!(
        card.applet().public_key_ops(),
        9,
        "a debit signs its receipt"
    );
    card.applet_mut().reset(); // warm reset keeps the cache
    tap(&w, &mut card, Service::Transit, AttributeSet::ALL).unwrap();
    assert_eq!(card.applet().public_key_ops(), 11);
    // More terminals than cache entries: each still costs at most 3.
    for i in 0..6u64 {
        let k = key(200 + i);
        let t = Terminal {
            cert: cert(
                &w.root,
                &k.public_key(),
                Role::Terminal,
                ServiceSet::of(&[Service::Rehab]),
                NOW - 10,
                NOW + 10,
            ),
            key: k,
        };
        let before = card.applet().public_key_ops();
        let sel = select(&mut card);
        call(
            &mut card,
            0x82,
            &terminal_auth(&sel.challenge, &t, Service::Rehab, AttributeSet::ALL, NOW),
        )
        .unwrap();
        assert_eq!(card.applet().public_key_ops() - before, 3);
    }
    // A refused request stops early: a forged certificate costs one operation.
    let before = card.applet().public_key_ops();
    let fake = Terminal {
        cert: cert(
            &key(300),
            &key(301).public_key(),
            Role::Terminal,
            ServiceSet::of(&[Service::Rehab]),
            0,
            u64::MAX,
        ),
        key: key(301),
    };
    let sel = select(&mut card);
    assert_eq!(
        call_raw(
            &mut card,
            0x82,
            0,
            &terminal_auth(
                &sel.challenge,
                &fake,
                Service::Rehab,
                AttributeSet::ALL,
                NOW
            )
        ),
        [0x69, 0x82]
    );
    assert_eq!(card.applet().public_key_ops() - before, 1);
}

fn receipt(pk: &shared_crypto::sig::PublicKey, wire: &[u8]) -> ReceiptBody {
    Signed::decode(wire).unwrap().open(&[], pk).unwrap()
}

#[test]
fn debit_flow_and_refusals() {
    let w = World::new();
    let mut card = w.personalized_card(6);
    let pk = card.applet().card_public_key().unwrap();
    // Only in a Welfare session.
    tap(&w, &mut card, Service::Transit, AttributeSet::ALL).unwrap();
    assert_eq!(
        status(call(&mut card, 0x30, &debit_data(10, [1; 16]))),
        0x6982
    );
    assert_eq!(status(call(&mut card, 0x5C, &[])), 0x6982);
    welfare_tap(&w, &mut card, 120, [1; 16], NOW).unwrap();
    assert_eq!(
        status(call(&mut card, 0x30, &debit_data(0, [1; 16]))),
        0x6A80,
        "zero amount"
    );
    assert_eq!(
        status(call(&mut card, 0x30, &[1, 2, 3])),
        0x6A80,
        "malformed"
    );
    let mut trailing = debit_data(120, [1; 16]);
    trailing.push(0);
    assert_eq!(
        status(call(&mut card, 0x30, &trailing)),
        0x6A80,
        "trailing byte"
    );
    assert_eq!(
        call_raw(&mut card, 0x30, 1, &debit_data(120, [1; 16])),
        [0x6A, 0x86]
    );
    // None of these used the intent up.
    let r1 = call(&mut card, 0x30, &debit_data(120, [1; 16])).unwrap();
    let body = receipt(&pk, &r1);
    assert_eq!(
        (
            body.counter,
            body.amount,
            body.balance_after,
            body.card_serial
        ),
        (1, 120, 380, SERIAL)
    );
    assert_eq!(body.reference, [1; 16]);
    assert_eq!(
        body.terminal,
        w.terminal(Service::Welfare).key.public_key().key_id()
    );
    // The intent is spent: nothing more in this session, not even the same debit.
    assert_eq!(
        status(call(&mut card, 0x30, &debit_data(120, [1; 16]))),
        0x6982,
        "second DEBIT of the session"
    );
    assert_eq!(card.applet().balance(), Some(380));
    // A retry in a new session announcing the same debit: the same receipt, no second debit.
    welfare_tap(&w, &mut card, 120, [1; 16], NOW).unwrap();
    assert_eq!(
        call(&mut card, 0x30, &debit_data(120, [1; 16])).unwrap(),
        r1
    );
    assert_eq!(card.applet().balance(), Some(380));
    // A terminal that announces the same reference with another amount: refused as before.
    welfare_tap(&w, &mut card, 121, [1; 16], NOW).unwrap();
    assert_eq!(
        status(call(&mut card, 0x30, &debit_data(121, [1; 16]))),
        0x6A80,
        "same reference, other amount"
    );
    welfare_tap(&w, &mut card, 381, [2; 16], NOW).unwrap();
    assert_eq!(
        status(call(&mut card, 0x30, &debit_data(381, [2; 16]))),
        0x6985,
        "more than the balance"
    );
    welfare_tap(&w, &mut card, 380, [2; 16], NOW).unwrap();
    let r2 = call(&mut card, 0x30, &debit_data(380, [2; 16])).unwrap();
    let body = receipt(&pk, &r2);
    assert_eq!((body.counter, body.balance_after), (2, 0));
    assert_eq!(
        call(&mut card, 0x5C, &[]).unwrap(),
        [0, 0, 0, 0, 0, 0, 0, 2]
    );
    welfare_tap(&w, &mut card, 1, [3; 16], NOW).unwrap();
    assert_eq!(
        status(call(&mut card, 0x30, &debit_data(1, [3; 16]))),
        0x6985,
        "empty purse"
    );
    // A new SELECT ends the session.
    welfare_tap(&w, &mut card, 1, [4; 16], NOW).unwrap();
    select(&mut card);
    assert_eq!(
        status(call(&mut card, 0x30, &debit_data(1, [4; 16]))),
        0x6982
    );
    assert_eq!(
        call_raw(&mut card, 0x5C, 0, &[1]),
        [0x67, 0x00],
        "GET BALANCE takes no data"
    );
}

/// A relay between an honest terminal and the card (docs/protocol-card.md §9, formerly a known
/// limit): it cannot change what the genuine welfare session debits.
#[test]
fn a_retry_finds_any_of_the_last_three_debits() {
    // A debit whose answer was lost, then debits elsewhere: while it is one of the card's last
    // three, its retry gets the stored receipt and debits nothing; once three newer debits have
    // pushed it out, the same announcement is a new debit (docs/protocol-card.md section 9).
    let w = World::new();
    let mut card = w.personalized_card(7);
    let pk = card.applet().card_public_key().unwrap();
    let debit = |card: &mut _, amount: u32, reference: u8| {
        welfare_tap(&w, card, amount, [reference; 16], NOW).unwrap();
        call(card, 0x30, &debit_data(amount, [reference; 16])).unwrap()
    };
    let lost = debit(&mut card, 10, 1);
    assert_eq!(receipt(&pk, &lost).counter, 1);
    let second = debit(&mut card, 20, 2);
    let third = debit(&mut card, 30, 3);
    assert_eq!(card.applet().balance(), Some(440));
    // Each of the three answers its retry with its own receipt, in any order.
    for (amount, reference, stored) in [(10, 1, &lost), (30, 3, &third), (20, 2, &second)] {
        assert_eq!(
            &debit(&mut card, amount, reference),
            stored,
            "debit {reference}"
        );
    }
    assert_eq!(
        (card.applet().balance(), card.applet().counter()),
        (Some(440), Some(3))
    );
    // The same reference with another amount is refused, whichever debit it names.
    welfare_tap(&w, &mut card, 11, [1; 16], NOW).unwrap();
    assert_eq!(
        status(call(&mut card, 0x30, &debit_data(11, [1; 16]))),
        0x6A80
    );
    // A fourth debit forgets the first: announced again, it is debited again.
    let fourth = debit(&mut card, 5, 4);
    assert_eq!(receipt(&pk, &fourth).counter, 4);
    let again = receipt(&pk, &debit(&mut card, 10, 1));
    assert_eq!((again.counter, again.balance_after), (5, 425));
    // Remembered now: that new debit, the fourth and the third; the second is gone too.
    assert_eq!(debit(&mut card, 30, 3), third);
    assert_eq!(card.applet().balance(), Some(425));
    let gone = receipt(&pk, &debit(&mut card, 20, 2));
    assert_eq!((gone.counter, gone.balance_after), (6, 405));
}

#[test]
fn a_relay_cannot_change_the_debit_of_a_welfare_session() {
    let w = World::new();
    let mut card = w.personalized_card(14);
    let pk = card.applet().card_public_key().unwrap();
    let reference = [0x42; 16];
    let other = [0x43; 16];
    let cases: [(&str, Vec<u8>); 5] = [
        ("amount swapped", debit_data(300, reference)),
        ("smaller amount", debit_data(10, reference)),
        ("reference swapped", debit_data(30, other)),
        ("time swapped", debit_data_at(30, reference, NOW + 3600)),
        ("both swapped", debit_data(300, other)),
    ];
    for (name, swapped) in &cases {
        // The terminal signed "30 points under `reference`" into its request.
        welfare_tap(&w, &mut card, 30, reference, NOW).unwrap();
        assert_eq!(status(call(&mut card, 0x30, swapped)), 0x6982, "{name}");
        assert_eq!(card.applet().balance(), Some(INITIAL_POINTS), "{name}");
        assert_eq!(card.applet().counter(), Some(0), "{name}");
    }
    // A session that announced no debit takes none.
    let t = tap(&w, &mut card, Service::Welfare, AttributeSet::NONE).unwrap();
    assert_eq!(tap_purse(&pk, &t), Some((INITIAL_POINTS, 0)));
    assert_eq!(
        status(call(&mut card, 0x30, &debit_data(30, reference))),
        0x6982,
        "DEBIT without an intent"
    );
    assert_eq!(card.applet().balance(), Some(INITIAL_POINTS));
    // The honest DEBIT goes through; the receipt carries the signed request's time, not the
    // DEBIT's.
    let at = NOW + 7;
    let t = welfare_tap(&w, &mut card, 30, reference, at).unwrap();
    assert_eq!(
        tap_purse(&pk, &t),
        Some((INITIAL_POINTS, 0)),
        "purse before"
    );
    let r = receipt(
        &pk,
        &call(&mut card, 0x30, &debit_data_at(30, reference, at)).unwrap(),
    );
    assert_eq!((r.amount, r.reference, r.time), (30, reference, at));
    assert_eq!(r.balance_after, INITIAL_POINTS - 30);
    // The next welfare answer reports the purse after it, under the card's signature.
    let t = tap(&w, &mut card, Service::Welfare, AttributeSet::NONE).unwrap();
    assert_eq!(tap_purse(&pk, &t), Some((INITIAL_POINTS - 30, 1)));
    // Other services learn nothing about the purse.
    for s in [Service::Transit, Service::Employment, Service::Rehab] {
        let t = tap(&w, &mut card, s, AttributeSet::ALL).unwrap();
        assert_eq!(tap_purse(&pk, &t), None, "{s:?}");
    }
}

#[test]
fn credit_flow_and_refusals() {
    let w = World::new();
    let mut card = w.personalized_card(7);
    tap(&w, &mut card, Service::Welfare, AttributeSet::NONE).unwrap(); // last seen = NOW
    let day = 86_400;
    assert_eq!(
        call(&mut card, 0x32, &w.voucher(3, 100, NOW, NOW + day)).unwrap(),
        600u32.to_be_bytes()
    );
    // The same grant again (a retry after tearing): the balance, nothing added.
    assert_eq!(
        call(&mut card, 0x32, &w.voucher(3, 100, NOW, NOW + day)).unwrap(),
        600u32.to_be_bytes()
    );
    assert_eq!(card.applet().balance(), Some(600));
    assert_eq!(card.applet().voucher_seq(), Some(3));
    let refusals: Vec<(&str, Vec<u8>, u16)> = vec![
        ("older grant", w.voucher(2, 100, NOW, NOW + day), 0x6985),
        (
            "expired before the last time the card saw",
            w.voucher(4, 100, NOW - 2 * day, NOW - day),
            0x6985,
        ),
        (
            "another card",
            w.voucher_for([9; 8], 4, 100, NOW, NOW + day),
            0x6A88,
        ),
        ("zero amount", w.voucher(4, 0, NOW, NOW + day), 0x6A80),
        (
            "valid_until before issued_at",
            w.voucher(4, 1, NOW + day, NOW + day - 1),
            0x6A80,
        ),
        ("overflow", w.voucher(4, u32::MAX, NOW, NOW + day), 0x6985),
        (
            "issuer certificate instead of a voucher certificate",
            {
                let v = sign(
                    &VoucherBody {
                        card_serial: SERIAL,
                        seq: 4,
                        amount: 5,
                        issued_at: NOW,
                        valid_until: NOW + day,
                    },
                    &[],
                    &w.issuer,
                )
                .unwrap();
                credit_data(&w.issuer_cert, &v)
            },
            0x6982,
        ),
        (
            "voucher signed by another key",
            {
                let v = sign(
                    &VoucherBody {
                        card_serial: SERIAL,
                        seq: 4,
                        amount: 5,
                        issued_at: NOW,
                        valid_until: NOW + day,
                    },
                    &[],
                    &key(55),
                )
                .unwrap();
                credit_data(&w.voucher_cert, &v)
            },
            0x6982,
        ),
        (
            "voucher certificate from another root",
            {
                let c = cert(
                    &key(56),
                    &w.voucher.public_key(),
                    Role::Voucher,
                    ServiceSet::NONE,
                    0,
                    u64::MAX,
                );
                let v = sign(
                    &VoucherBody {
                        card_serial: SERIAL,
                        seq: 4,
                        amount: 5,
                        issued_at: NOW,
                        valid_until: NOW + day,
                    },
                    &[],
                    &w.voucher,
                )
                .unwrap();
                credit_data(&c, &v)
            },
            0x6982,
        ),
        (
            "voucher certificate not valid at issue time",
            {
                let c = cert(
                    &w.root,
                    &w.voucher.public_key(),
                    Role::Voucher,
                    ServiceSet::NONE,
                    NOW + day,
                    NOW + 2 * day,
                );
                let v = sign(
                    &VoucherBody {
                        card_serial: SERIAL,
                        seq: 4,
                        amount: 5,
                        issued_at: NOW,
                        valid_until: NOW + day,
                    },
                    &[],
                    &w.voucher,
                )
                .unwrap();
                credit_data(&c, &v)
            },
            0x6982,
        ),
        (
            "voucher signed as another kind",
            {
                let body = encode_versioned(&VoucherBody {
                    card_serial: SERIAL,
                    seq: 4,
                    amount: 5,
                    issued_at: NOW,
                    valid_until: NOW + day,
                });
                let s = shared_crypto::sig::sign_body(
                    &w.voucher,
                    shared_crypto::sig::Domain::Receipt,
                    &[],
                    &body,
                )
                .unwrap();
                credit_data(&w.voucher_cert, &s.to_vec())
            },
            0x6982,
        ),
        ("malformed", vec![1, 0, 0], 0x6A80),
        // The server numbers grants from 1; a 0 would be "not below the last" forever.
        (
            "sequence number 0",
            w.voucher(0, 100, NOW, NOW + day),
            0x6A80,
        ),
    ];
    for (name, data, sw) in refusals {
        assert_eq!(status(call(&mut card, 0x32, &data)), sw, "{name}");
        assert_eq!(card.applet().balance(), Some(600), "{name}");
    }
    // A later grant works, and an issued_at in the future raises the card's time.
    assert_eq!(
        call(
            &mut card,
            0x32,
            &w.voucher(9, 1, NOW + 5 * day, NOW + 9 * day)
        )
        .unwrap(),
        601u32.to_be_bytes()
    );
    assert_eq!(card.applet().last_seen_time(), NOW + 5 * day);
}

/// A grant numbered 0 on a card that never accepted one (voucher_seq 0) used to pass both "same
/// as the last: a retry" (skipped for 0) and "below the last" (0 < 0 is false): it was credited on
/// every attempt.
#[test]
fn a_voucher_numbered_zero_is_never_credited() {
    let w = World::new();
    let mut card = w.personalized_card(15);
    select(&mut card);
    let day = 86_400;
    let zero = w.voucher(0, 100, NOW, NOW + day);
    for attempt in 0..3 {
        assert_eq!(status(call(&mut card, 0x32, &zero)), 0x6A80, "{attempt}");
        assert_eq!(card.applet().balance(), Some(INITIAL_POINTS), "{attempt}");
        assert_eq!(card.applet().voucher_seq(), Some(0), "{attempt}");
    }
    // The first real grant still works, and 0 stays refused after it.
    assert_eq!(
        call(&mut card, 0x32, &w.voucher(1, 100, NOW, NOW + day)).unwrap(),
        (INITIAL_POINTS + 100).to_be_bytes()
    );
    assert_eq!(status(call(&mut card, 0x32, &zero)), 0x6A80);
    assert_eq!(card.applet().balance(), Some(INITIAL_POINTS + 100));
}

#[test]
fn block_flow_and_refusals() {
    let w = World::new();
    let mut card = w.personalized_card(8);
    select(&mut card);
    assert_eq!(
        status(call(&mut card, 0x1E, &w.block_order([1; 8], NOW))),
        0x6A88,
        "another card"
    );
    let voucher_as_issuer = {
        let order = sign(
            &shared_crypto::model::CardBlockBody {
                card_serial: SERIAL,
                time: NOW,
                reason: 1,
            },
            &[],
            &w.voucher,
        )
        .unwrap();
        encode_versioned(&shared_crypto::model::BlockCommand {
            issuer_cert: Signed::decode(&w.voucher_cert).unwrap(),
            order: Signed::decode(&order).unwrap(),
        })
    };
    assert_eq!(
        status(call(&mut card, 0x1E, &voucher_as_issuer)),
        0x6982,
        "not an issuer"
    );
    assert_eq!(
        status(call(
            &mut card,
            0x1E,
            &w.block_order(SERIAL, NOW + 3 * YEAR)
        )),
        0x6982,
        "issuer cert expired at order time"
    );
    assert_eq!(card.applet().life_cycle(), Some(LifeCycle::Personalized));
    call(&mut card, 0x1E, &w.block_order(SERIAL, NOW)).unwrap();
    assert_eq!(card.applet().life_cycle(), Some(LifeCycle::Blocked));
    card.insert();
    assert_eq!(raw(&mut card, "00A4040006F0434450460100"), "6283");
    let mut data = vec![];
    data.extend_from_slice(&[0u8; 0]);
    assert_eq!(
        status(call(
            &mut card,
            0x82,
            &terminal_auth(
                &[0; 16],
                w.terminal(Service::Transit),
                Service::Transit,
                AttributeSet::ALL,
                NOW
            )
        )),
        0x6985
    );
    assert_eq!(
        status(call(&mut card, 0x32, &w.voucher(1, 1, NOW, NOW + 1))),
        0x6985
    );
    assert_eq!(
        status(call(&mut card, 0x1E, &w.block_order(SERIAL, NOW))),
        0x6985
    );
}

#[test]
fn long_answers_follow_le_and_get_response() {
    let w = World::new();
    let mut card = w.personalized_card(9);
    let pk = card.applet().card_public_key().unwrap();
    let sel = select(&mut card);
    let data = terminal_auth(
        &sel.challenge,
        w.terminal(Service::Employment),
        Service::Employment,
        AttributeSet::ALL,
        NOW,
    );
    let first = call_raw(&mut card, 0x82, 0, &data);
    assert_eq!(first.len(), 258, "256 bytes and 61xx");
    assert_eq!(first[256], 0x61);
    let mut answer = first[..256].to_vec();
    let mut sw = [first[256], first[257]];
    let mut pieces = 0;
    while sw[0] == 0x61 {
        // Ask for 16 bytes at a time: the card honours Le and keeps announcing what is left.
        let mut rsp = [0u8; 258];
        let n = card
            .transceive(&[0x00, 0xC0, 0x00, 0x00, 0x10], &mut rsp)
            .unwrap();
        assert!(n <= 18);
        answer.extend_from_slice(&rsp[..n - 2]);
        sw = [rsp[n - 2], rsp[n - 1]];
        pieces += 1;
    }
    assert_eq!(sw, [0x90, 0x00]);
    assert!(pieces > 5);
    let t = Tap {
        challenge: sel.challenge,
        data,
        answer,
    };
    assert_eq!(check_tap(&w, &pk, &t), Service::Employment.release_policy());
    // Another command drops a pending answer.
    let sel = select(&mut card);
    let data = terminal_auth(
        &sel.challenge,
        w.terminal(Service::Employment),
        Service::Employment,
        AttributeSet::ALL,
        NOW,
    );
    assert_eq!(call_raw(&mut card, 0x82, 0, &data)[256], 0x61);
    assert_eq!(raw(&mut card, "805C000008"), "6982");
    assert_eq!(raw(&mut card, "00C0000000"), "6985");
    // A chain longer than the card's buffer.
    let mut last = String::new();
    for _ in 0..5 {
        last = raw(&mut card, &format!("90820000FF{}", "AB".repeat(255)));
    }
    assert_eq!(last, "6A84");
}
