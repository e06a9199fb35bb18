//! Every decision path of a tap, with the real applet in memory (and, for the attacker's cards the
//! applet refuses to become, the protocol emulator of `testkit`).
#![allow(clippy::unwrap_used)]

mod common;

use card_applet::sim::TestRng;
use common::*;
use shared_crypto::apdu::{Transport, INS_DEBIT, INS_SELECT};
use shared_crypto::certno::{Category, Level};
use shared_crypto::model::{
    decode_command, AttributeValue, DebitRequest, Entitlements, LogBatchBody, Outcome, Reason,
    ReceiptBody, Service, ServiceSet, TapRecord, TapResponseBody,
};
use shared_crypto::sig::Signed;
use shared_crypto::wire::{decode_versioned, encode_versioned_into};
use terminal_core::testkit::{
    block_card, forge_card, issue_card, lying_card, Attributes, CardSpec, EmulatedCard, Tamper,
};
use terminal_core::{PromptId, ServiceRequest};

const SERVICES: [ServiceRequest; 4] = [
    ServiceRequest::Transit,
    ServiceRequest::Employment,
    ServiceRequest::Rehab,
    ServiceRequest::Welfare { amount: 10 },
];

fn assert_decision(d: &terminal_core::Decision, outcome: Outcome, reason: Reason) {
    assert_eq!((d.outcome, d.reason), (outcome, reason), "{d:?}");
    assert_eq!(d.signal.reason, reason);
    assert_eq!(d.signal.outcome, outcome);
}

#[test]
fn a_valid_card_is_accepted_by_every_service() {
    let mut rig = Rig::new();
    for (i, req) in SERVICES.into_iter().enumerate() {
        let mut card = rig.card(1, 10);
        rig.clock().advance(1);
        let d = rig.t().tap(&mut card, req);
        assert_decision(&d, Outcome::Accepted, Reason::Ok);
        assert_eq!(d.card_serial, Some([0xC0, 0, 0, 0, 0, 0, 0, 1]));
        assert_eq!(d.status_index, Some(10));
        assert_eq!(d.log_seq, Some(i as u32));
        assert_eq!(rig.t().feedback().count, i as u32 + 1);
        assert_eq!(rig.t().feedback().last, Some(d.signal));
        match req {
            ServiceRequest::Employment => {
                assert_eq!(d.holder.name(), Some("张三"));
                assert_eq!(
                    d.holder.certificate_number.unwrap().as_bytes(),
                    *b"11010519491231002X42"
                );
                assert_eq!(d.holder.category, Some(Category::Physical));
                assert_eq!(d.holder.level, Level::new(2));
                assert_eq!(d.signal.prompt, PromptId::IdentityVerified);
            }
            ServiceRequest::Rehab => {
                assert_eq!(d.holder.category, Some(Category::Physical));
                assert_eq!(d.holder.name(), None, "rehab does not ask for the name");
                assert_eq!(d.signal.prompt, PromptId::RehabRecorded);
            }
            ServiceRequest::Transit => {
                assert_eq!(d.holder.name(), None, "transit asks for no identity");
                assert_eq!(d.holder.certificate_number, None);
                assert_eq!(d.holder.category, None);
                assert_eq!(d.signal.prompt, PromptId::PleasePass);
            }
            ServiceRequest::Welfare { amount } => {
                let debit = d.debit.unwrap();
                assert_eq!(debit.amount, amount);
                assert_eq!(debit.balance_after, 90);
                assert_eq!(debit.counter, 1);
                assert_eq!(card.applet().balance(), Some(90));
                // The kept receipt is the card's signature over exactly this debit.
                let receipt = Signed::decode(d.receipt().unwrap()).unwrap();
                let card_key = card.applet().card_public_key().unwrap();
                let body: shared_crypto::model::ReceiptBody = receipt.open(&[], &card_key).unwrap();
                assert_eq!(body.reference, debit.reference);
            }
        }
    }
    // Two logical exchanges per tap, three for the welfare debit.
    assert_eq!(rig.t().wire_stats().exchanges, 2 + 2 + 2 + 3);
}

#[test]
fn a_revoked_card_is_refused_by_every_service() {
    let mut rig = Rig::new();
    for req in SERVICES {
        let mut card = rig.card(2, REVOKED_INDEX);
        let d = rig.t().tap(&mut card, req);
        assert_decision(&d, Outcome::Refused, Reason::Revoked);
        assert_eq!(d.signal.prompt, PromptId::CardBlocked);
        assert!(d.debit.is_none());
        assert_eq!(card.applet().balance(), Some(100), "nothing debited");
    }
}

#[test]
fn validity_window_is_checked_against_the_clock() {
    let mut rig = Rig::new();
    let expired = CardSpec::entitled(3, 11, T0 - 2 * YEAR, T0 - DAY);
    let future = CardSpec::entitled(4, 12, T0 + DAY, T0 + YEAR);
    for req in SERVICES {
        let mut card = rig.card_with(&expired, 3);
        assert_decision(
            &rig.t().tap(&mut card, req),
            Outcome::Refused,
            Reason::Expired,
        );
        let mut card = rig.card_with(&future, 4);
        assert_decision(
            &rig.t().tap(&mut card, req),
            Outcome::Refused,
            Reason::NotYetValid,
        );
    }
    // The certificate attribute can expire before the credential does.
    let mut spec = CardSpec::entitled(5, 13, T0 - YEAR, T0 + YEAR);
    spec.certificate_expiry = T0 - 1;
    let mut card = rig.card_with(&spec, 5);
    let d = rig.t().tap(&mut card, ServiceRequest::Transit);
    assert_decision(&d, Outcome::Refused, Reason::CertificateExpired);
    assert_eq!(d.signal.prompt, PromptId::CardExpired);
}

#[test]
fn a_forged_credential_is_refused() {
    let mut rig = Rig::new();
    let spec = CardSpec::entitled(6, 14, T0 - YEAR, T0 + YEAR);
    for req in SERVICES {
        let mut card = forge_card(&rig.auth, &spec, 6).unwrap();
        let d = rig.t().tap(&mut card, req);
        assert_decision(&d, Outcome::Refused, Reason::ForgedCredential);
        assert_eq!(
            d.card_serial, None,
            "nothing of a forged credential is trusted"
        );
        assert_eq!(card.applet().balance(), Some(100));
    }
}

#[test]
fn a_credential_from_an_issuer_outside_the_bundle_is_refused() {
    let mut rig = Rig::new();
    let spec = CardSpec::entitled(7, 15, T0 - YEAR, T0 + YEAR);
    // An Issuer certified by the root but not in the bundle.
    let mut card = issue_card(&rig.auth, &spec, &rig.auth.other_issuer, 7).unwrap();
    assert_decision(
        &rig.t().tap(&mut card, ServiceRequest::Transit),
        Outcome::Refused,
        Reason::UnknownIssuer,
    );
    // A key in the bundle with another role (the StatusSigner) is not an Issuer.
    let mut card = issue_card(&rig.auth, &spec, &rig.auth.status_signer, 8).unwrap();
    assert_decision(
        &rig.t().tap(&mut card, ServiceRequest::Employment),
        Outcome::Refused,
        Reason::UnknownIssuer,
    );
}

/// Dumps what a card releases to a terminal (credential and disclosures) through a tap.
fn dump(rig: &mut Rig, card: &mut impl Transport, req: ServiceRequest) -> (Vec<u8>, Vec<u8>) {
    let mut answers: Vec<Vec<u8>> = Vec::new();
    let mut tap = Tamper {
        inner: card,
        edit: |_cmd: &[u8], rsp: &mut [u8], n: usize| {
            answers.push(rsp[..n].to_vec());
            n
        },
    };
    let d = rig.t().tap(&mut tap, req);
    assert!(d.accepted());
    // Reassemble the TERMINAL AUTHENTICATE answer: 61xx pieces and the final one.
    let mut ta = Vec::new();
    for a in answers.iter().skip(1) {
        let (data, sw) = a.split_at(a.len() - 2);
        if sw == [0x90, 0x00] && data.is_empty() {
            continue; // a chained block's acknowledgement
        }
        ta.extend_from_slice(data);
        if sw == [0x90, 0x00] {
            break;
        }
    }
    let response = Signed::decode(&ta).unwrap();
    let body: TapResponseBody<'_> = decode_versioned(response.body).unwrap();
    let mut cred = [0u8; 512];
    let cred = body.credential.encode_into(&mut cred).unwrap().to_vec();
    let disclosures = shared_crypto::wire::encode(&body.disclosures);
    (cred, disclosures)
}

#[test]
fn a_cloned_card_is_refused() {
    let mut rig = Rig::new();
    let mut original = rig.card(9, 16);
    for req in SERVICES {
        let (cred, disclosures) = dump(&mut rig, &mut original, req);
        let items: shared_crypto::Items<'_, shared_crypto::model::Disclosure<'_>> =
            shared_crypto::model::decode_plain(&disclosures).unwrap();
        let list: Vec<_> = items.iter().collect();
        let mut clone = EmulatedCard::clone_of(&cred, &list, 9).unwrap();
        rig.clock().advance(3600);
        let d = rig.t().tap(&mut clone, req);
        assert_decision(&d, Outcome::Refused, Reason::ClonedCard);
        assert!(d.debit.is_none());
    }
}

#[test]
fn a_replayed_answer_is_refused_as_a_clone() {
    // The original card's own answer, recorded and replayed into a later session.
    let mut rig = Rig::new();
    let mut original = rig.card(10, 17);
    let mut recorded: Vec<Vec<u8>> = Vec::new();
    {
        let mut rec = Tamper {
            inner: &mut original,
            edit: |_c: &[u8], rsp: &mut [u8], n: usize| {
                recorded.push(rsp[..n].to_vec());
                n
            },
        };
        assert!(rig.t().tap(&mut rec, ServiceRequest::Transit).accepted());
    }
    rig.clock().advance(3600);
    let mut i = 0;
    let mut replay = Tamper {
        inner: &mut original,
        edit: |_c: &[u8], rsp: &mut [u8], n: usize| {
            // SELECT answers live (fresh challenge); everything after is the old recording.
            i += 1;
            if i == 1 {
                return n;
            }
            let old = &recorded[i - 1];
            rsp[..old.len()].copy_from_slice(old);
            old.len()
        },
    };
    let d = rig.t().tap(&mut replay, ServiceRequest::Transit);
    assert_decision(&d, Outcome::Refused, Reason::ClonedCard);
}

#[test]
fn a_disclosure_that_does_not_match_its_digest_is_refused() {
    let mut rig = Rig::new();
    let spec = CardSpec::entitled(11, 18, T0 - YEAR, T0 + YEAR);
    // The attacker's own card, properly certified, lying about its entitlements.
    let mut card = lying_card(
        &rig.auth,
        &CardSpec {
            entitlements: 0,
            ..spec
        },
        AttributeValue::Entitlements(Entitlements(Entitlements::ALL)),
        11,
    )
    .unwrap();
    let d = rig.t().tap(&mut card, ServiceRequest::Transit);
    assert_decision(&d, Outcome::Refused, Reason::DisclosureMismatch);
    // And about the level, to an employer.
    let mut card = lying_card(
        &rig.auth,
        &spec,
        AttributeValue::Level(Level::new(1).unwrap()),
        12,
    )
    .unwrap();
    let d = rig.t().tap(&mut card, ServiceRequest::Employment);
    assert_decision(&d, Outcome::Refused, Reason::DisclosureMismatch);
    assert_eq!(
        d.holder.name(),
        None,
        "nothing disclosed is shown after a refusal"
    );
    // The emulator itself is sound: the same card telling the truth is accepted.
    let mut honest = lying_card(
        &rig.auth,
        &spec,
        AttributeValue::Level(Level::new(2).unwrap()),
        13,
    )
    .unwrap();
    let d = rig.t().tap(&mut honest, ServiceRequest::Employment);
    assert_decision(&d, Outcome::Accepted, Reason::Ok);
}

#[test]
fn an_outdated_status_list_makes_the_terminal_ask_staff() {
    let mut rig = Rig::new();
    rig.clock().advance(7 * DAY);
    let mut card = rig.card(12, 19);
    let d = rig.t().tap(&mut card, ServiceRequest::Transit);
    assert_decision(&d, Outcome::AskStaff, Reason::StatusListOutdated);
    assert_eq!(d.signal.prompt, PromptId::AskStaff);
    // A card the old list already revokes is still refused as revoked.
    let mut revoked = rig.card(13, REVOKED_INDEX);
    let d = rig.t().tap(&mut revoked, ServiceRequest::Transit);
    assert_decision(&d, Outcome::Refused, Reason::Revoked);
    // A fresh list restores normal decisions.
    let now = rig.clock().0.get().unwrap();
    let list = rig.status_list(2, now - 60, &[REVOKED_INDEX]);
    rig.t().install_status_list(&list).unwrap();
    let d = rig.t().tap(&mut card, ServiceRequest::Transit);
    assert_decision(&d, Outcome::Accepted, Reason::Ok);
}

#[test]
fn a_card_issued_after_the_list_is_not_in_it() {
    let mut rig = Rig::new();
    // Index beyond the list: issued after the list was signed -> not revoked.
    let spec = CardSpec::entitled(14, LIST_SIZE + 3, T0 - 60, T0 + YEAR);
    let mut card = rig.card_with(&spec, 14);
    assert!(rig.t().tap(&mut card, ServiceRequest::Transit).accepted());
    // Beyond the list but older than it: the list does not fit the credential.
    let spec = CardSpec::entitled(15, LIST_SIZE + 4, T0 - YEAR, T0 + YEAR);
    let mut card = rig.card_with(&spec, 15);
    let d = rig.t().tap(&mut card, ServiceRequest::Transit);
    assert_decision(&d, Outcome::AskStaff, Reason::StatusListOutdated);
}

#[test]
fn a_service_the_terminal_is_not_certified_for_is_refused_without_reading_the_card() {
    let mut rig = Rig::with(ServiceSet::of(&[Service::Transit]), 8);
    let mut card = rig.card(16, 20);
    for req in &SERVICES[1..] {
        let d = rig.t().tap(&mut card, *req);
        assert_decision(&d, Outcome::Refused, Reason::ServiceNotAllowed);
        assert_eq!(d.card_serial, None);
    }
    assert_eq!(rig.t().wire_stats().apdus, 0);
    assert!(rig.t().tap(&mut card, ServiceRequest::Transit).accepted());
}

#[test]
fn a_holder_without_the_entitlement_is_refused() {
    let mut rig = Rig::new();
    let mut spec = CardSpec::entitled(17, 21, T0 - YEAR, T0 + YEAR);
    spec.entitlements = 0;
    for req in SERVICES {
        let mut card = rig.card_with(&spec, 17);
        let d = rig.t().tap(&mut card, req);
        assert_decision(&d, Outcome::Refused, Reason::NotEntitled);
        assert_eq!(card.applet().balance(), Some(100));
    }
    // Each service needs its own flag.
    spec.entitlements = Entitlements::ALL & !Entitlements::REHAB_SUBSIDY;
    let mut card = rig.card_with(&spec, 18);
    let d = rig.t().tap(&mut card, ServiceRequest::Rehab);
    assert_decision(&d, Outcome::Refused, Reason::NotEntitled);
    assert!(rig
        .t()
        .tap(&mut card, ServiceRequest::Employment)
        .accepted());
}

#[test]
fn welfare_debits_within_the_purse_and_the_limit() {
    let mut rig = Rig::new();
    let mut card = rig.card(18, 22);
    let d = rig
        .t()
        .tap(&mut card, ServiceRequest::Welfare { amount: 51 });
    assert_decision(&d, Outcome::Refused, Reason::AmountOverLimit);
    let d = rig
        .t()
        .tap(&mut card, ServiceRequest::Welfare { amount: 0 });
    assert_decision(&d, Outcome::Refused, Reason::AmountOverLimit);
    for expected in [50, 0] {
        let d = rig
            .t()
            .tap(&mut card, ServiceRequest::Welfare { amount: 50 });
        assert_decision(&d, Outcome::Accepted, Reason::Ok);
        assert_eq!(d.debit.unwrap().balance_after, expected);
    }
    let d = rig
        .t()
        .tap(&mut card, ServiceRequest::Welfare { amount: 1 });
    assert_decision(&d, Outcome::Refused, Reason::PurseEmpty);
    assert_eq!(d.signal.prompt, PromptId::NotEnoughPoints);
    assert_eq!(card.applet().balance(), Some(0));
}

#[test]
fn an_interrupted_debit_is_retried_without_debiting_twice() {
    let mut rig = Rig::new();
    let mut card = rig.card(19, 23);
    // Store writes of a tap without a debit, measured on a twin card, to aim the cut at DEBIT.
    let mut probe = rig.card(19, 23);
    let before = probe.applet().store().writes();
    assert!(rig.t().tap(&mut probe, ServiceRequest::Transit).accepted());
    let tap_writes = probe.applet().store().writes() - before;
    let mut balance = 100;
    let mut interrupted = 0;
    for cut in 0.. {
        rig.clock().advance(120);
        card.applet_mut()
            .store_mut()
            .cut_power_at(tap_writes + cut, 0);
        let d = rig
            .t()
            .tap(&mut card, ServiceRequest::Welfare { amount: 7 });
        if d.accepted() {
            // The cut lies beyond the debit's writes: every write of DEBIT was covered.
            balance -= 7;
            assert_eq!(d.debit.unwrap().balance_after, balance);
            card.applet_mut().store_mut().restore_power();
            break;
        }
        assert_decision(&d, Outcome::Refused, Reason::DebitInterrupted);
        assert_eq!(d.signal.prompt, PromptId::TapAgain);
        interrupted += 1;
        card.insert();
        let d = rig
            .t()
            .tap(&mut card, ServiceRequest::Welfare { amount: 7 });
        assert_decision(&d, Outcome::Accepted, Reason::Ok);
        balance -= 7;
        assert_eq!(d.debit.unwrap().balance_after, balance, "debited once");
        assert_eq!(card.applet().balance(), Some(balance));
    }
    assert!(interrupted >= 1);
}

#[test]
fn transit_companion_and_passback() {
    let mut rig = Rig::new();
    let mut with = rig.card(20, 24);
    let mut spec = CardSpec::entitled(21, 25, T0 - YEAR, T0 + YEAR);
    spec.entitlements = Entitlements::FREE_TRANSIT;
    let mut without = rig.card_with(&spec, 21);

    let d = rig.t().tap(&mut with, ServiceRequest::Transit);
    assert_decision(&d, Outcome::Accepted, Reason::Ok);
    rig.clock().advance(10);
    let d = rig.t().tap(&mut with, ServiceRequest::Transit);
    assert_decision(&d, Outcome::Accepted, Reason::CompanionPassage);
    assert_eq!(d.signal.prompt, PromptId::CompanionPass);
    rig.clock().advance(10);
    let d = rig.t().tap(&mut with, ServiceRequest::Transit);
    assert_decision(&d, Outcome::Refused, Reason::Passback);

    let d = rig.t().tap(&mut without, ServiceRequest::Transit);
    assert_decision(&d, Outcome::Accepted, Reason::Ok);
    rig.clock().advance(10);
    let d = rig.t().tap(&mut without, ServiceRequest::Transit);
    assert_decision(&d, Outcome::Refused, Reason::Passback);
    rig.clock().advance(61);
    let d = rig.t().tap(&mut without, ServiceRequest::Transit);
    assert_decision(&d, Outcome::Accepted, Reason::Ok);

    // Outside the companion window, a companion card's second tap is a new passage after the
    // passback time, and the memory survives a restart (rebuilt from the log).
    rig.reboot();
    let d = rig.t().tap(&mut with, ServiceRequest::Transit);
    assert_decision(&d, Outcome::Accepted, Reason::Ok);
    rig.reboot();
    rig.clock().advance(5);
    let d = rig.t().tap(&mut with, ServiceRequest::Transit);
    assert_decision(&d, Outcome::Accepted, Reason::CompanionPassage);
    rig.reboot();
    let d = rig.t().tap(&mut with, ServiceRequest::Transit);
    assert_decision(&d, Outcome::Refused, Reason::Passback);
}

#[test]
fn rehab_sessions_keep_their_minimum_interval() {
    let mut rig = Rig::new();
    let mut card = rig.card(22, 26);
    assert!(rig.t().tap(&mut card, ServiceRequest::Rehab).accepted());
    rig.clock().advance(1800);
    let d = rig.t().tap(&mut card, ServiceRequest::Rehab);
    assert_decision(&d, Outcome::Refused, Reason::TooSoon);
    rig.reboot();
    let d = rig.t().tap(&mut card, ServiceRequest::Rehab);
    assert_decision(&d, Outcome::Refused, Reason::TooSoon);
    rig.clock().advance(1800);
    assert!(rig.t().tap(&mut card, ServiceRequest::Rehab).accepted());
}

#[test]
fn card_state_and_presence() {
    let mut rig = Rig::new();
    // Blocked by an Issuer-signed order.
    let mut card = rig.card(23, 27);
    block_card(&rig.auth, &mut card, [0xC0, 0, 0, 0, 0, 0, 0, 23], T0).unwrap();
    let d = rig.t().tap(&mut card, ServiceRequest::Transit);
    assert_decision(&d, Outcome::Refused, Reason::CardBlocked);
    // A blank card.
    let mut blank =
        card_applet::sim::InMemoryCard::blank(TestRng::new(5), &[7; 16], [1; 10]).unwrap();
    let d = rig.t().tap(&mut blank, ServiceRequest::Transit);
    assert_decision(&d, Outcome::Refused, Reason::NotOurCard);
    // Gone from the field.
    let mut gone = rig.card(24, 28);
    gone.remove();
    let d = rig.t().tap(&mut gone, ServiceRequest::Transit);
    assert_decision(&d, Outcome::Refused, Reason::NoCard);
    // Something that is not a card of ours at all.
    let mut other = Tamper {
        inner: rig.card(25, 29),
        edit: |_c: &[u8], rsp: &mut [u8], _n: usize| {
            rsp[..2].copy_from_slice(&[0x6A, 0x82]);
            2
        },
    };
    let d = rig.t().tap(&mut other, ServiceRequest::Transit);
    assert_decision(&d, Outcome::Refused, Reason::NotOurCard);
}

#[test]
fn a_card_that_refuses_the_terminal_makes_it_ask_staff() {
    // The terminal's certificate has expired: the card refuses it (6982).
    let mut rig = Rig::new();
    let mut card = rig.card(26, 30);
    rig.clock().set(Some(T0 + 5 * YEAR + 1));
    let d = rig.t().tap(&mut card, ServiceRequest::Transit);
    assert_decision(&d, Outcome::AskStaff, Reason::TerminalRejected);
}

#[test]
fn a_damaged_answer_is_refused() {
    let mut rig = Rig::new();
    // Truncated answer to TERMINAL AUTHENTICATE.
    let mut n_calls = 0;
    let mut card = Tamper {
        inner: rig.card(27, 31),
        edit: |_c: &[u8], rsp: &mut [u8], n: usize| {
            n_calls += 1;
            if n_calls == 2 && n > 40 {
                let sw = [rsp[n - 2], rsp[n - 1]];
                rsp[30..32].copy_from_slice(&sw);
                return 32;
            }
            n
        },
    };
    let d = rig.t().tap(&mut card, ServiceRequest::Transit);
    assert_decision(&d, Outcome::Refused, Reason::Malformed);
    // One flipped bit in the card's transcript signature (the end of the answer's last piece).
    let mut card = Tamper {
        inner: rig.card(28, 32),
        edit: |_c: &[u8], rsp: &mut [u8], n: usize| {
            if n > 40 && rsp[n - 2..n] == [0x90, 0x00] {
                rsp[n - 10] ^= 0x01;
            }
            n
        },
    };
    let d = rig.t().tap(&mut card, ServiceRequest::Transit);
    assert_decision(&d, Outcome::Refused, Reason::ClonedCard);
    // One flipped bit in the credential's issuer signature, which sits before the body of the
    // answer's disclosures: the credential is checked first.
    let mut card = Tamper {
        inner: rig.card(29, 34),
        edit: |c: &[u8], rsp: &mut [u8], n: usize| {
            if c[1] == 0x82 && c[0] & 0x10 == 0 && n > 40 {
                // The answer opens with signer(8), body length, body version, then the
                // credential envelope: its signer (8), body, sig. Flip a byte of the credential
                // body's card key (well inside the first 120 bytes).
                rsp[100] ^= 0x01;
            }
            n
        },
    };
    let d = rig.t().tap(&mut card, ServiceRequest::Transit);
    assert_decision(&d, Outcome::Refused, Reason::ForgedCredential);
}

#[test]
fn without_clock_or_provisioning_the_terminal_asks_staff() {
    let mut rig = Rig::new();
    let mut card = rig.card(29, 33);
    rig.clock().set(None);
    let d = rig.t().tap(&mut card, ServiceRequest::Transit);
    assert_decision(&d, Outcome::AskStaff, Reason::ClockUnset);
    assert_eq!(d.time, None);

    let mut bare = Rig::bare(all_services(), 8);
    let d = bare.t().tap(&mut card, ServiceRequest::Transit);
    assert_decision(&d, Outcome::AskStaff, Reason::NotProvisioned);
    // Bundle and list but no rules: still not provisioned.
    let b = bare.bundle(1);
    bare.t().install_trust_bundle(&b).unwrap();
    let l = bare.status_list(1, T0, &[]);
    bare.t().install_status_list(&l).unwrap();
    let d = bare.t().tap(&mut card, ServiceRequest::Transit);
    assert_decision(&d, Outcome::AskStaff, Reason::NotProvisioned);
    let r = bare.rules(1);
    bare.t().install_service_rules(&r).unwrap();
    assert!(bare.t().tap(&mut card, ServiceRequest::Transit).accepted());
}

#[test]
fn the_terminal_asks_only_for_what_the_service_needs() {
    use terminal_core::terminal::requested_attributes;
    for s in Service::ALL {
        let r = requested_attributes(*s);
        assert!(r.is_subset_of(s.release_policy()));
        assert!(r.contains(shared_crypto::model::AttributeId::Entitlements));
    }
    assert!(
        !requested_attributes(Service::Transit).contains(shared_crypto::model::AttributeId::Name)
    );
    assert!(!requested_attributes(Service::Rehab).contains(shared_crypto::model::AttributeId::Name));
    // The salts of an attribute set are what makes digests unlinkable across cards.
    let spec = CardSpec::entitled(1, 1, 0, 1);
    let a = Attributes::of(&spec, 1).unwrap();
    let b = Attributes::of(&spec, 2).unwrap();
    assert_ne!(a.disclosures()[0].digest(), b.disclosures()[0].digest());
}

#[test]
fn a_clone_that_refuses_the_debit_is_still_a_clone() {
    // Without a fresh receipt the transcript is checked: a clone answering "not enough points"
    // is refused as a clone, and a genuine card with an empty purse as an empty purse.
    let mut rig = Rig::new();
    let spec = CardSpec::entitled(30, 35, T0 - YEAR, T0 + YEAR);
    let original = rig.card_with(&spec, 30);
    let key = original.applet().card_public_key().unwrap().to_sec1();
    let clone = terminal_core::testkit::clone_card(&rig.auth, &spec, &key, 30).unwrap();
    let refuse_debit = |c: &[u8], rsp: &mut [u8], n: usize| {
        if c[1] == 0x30 {
            rsp[..2].copy_from_slice(&[0x69, 0x85]);
            return 2;
        }
        n
    };
    let mut clone = Tamper {
        inner: clone,
        edit: refuse_debit,
    };
    let d = rig
        .t()
        .tap(&mut clone, ServiceRequest::Welfare { amount: 5 });
    assert_decision(&d, Outcome::Refused, Reason::ClonedCard);
    let mut genuine = Tamper {
        inner: original,
        edit: refuse_debit,
    };
    let d = rig
        .t()
        .tap(&mut genuine, ServiceRequest::Welfare { amount: 5 });
    assert_decision(&d, Outcome::Refused, Reason::PurseEmpty);
}

/// A card whose DEBIT answer is lost on the way back (it left the field after debiting): the
/// terminal sees a transport failure, and the answer (the card-signed receipt and its SW) is kept
/// in `lost`, as an eavesdropper could have kept it.
struct LoseDebitAnswer<T> {
    inner: T,
    lost: Vec<u8>,
}

#[derive(Debug)]
struct Lost;

impl<T: Transport> Transport for LoseDebitAnswer<T> {
    type Error = Lost;
    fn transceive(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, Lost> {
        let n = self.inner.transceive(command, response).map_err(|_| Lost)?;
        if command[1] == INS_DEBIT {
            self.lost = response[..n].to_vec();
            return Err(Lost);
        }
        Ok(n)
    }
}

/// Forwards to `inner` with the time of the DEBIT command replaced by `redate(time)`: the
/// emulator signs its receipt with whatever time it is sent, so the receipt is card-signed (under
/// the key its credential certifies) but dated otherwise.
struct Redate<T, F> {
    inner: T,
    redate: F,
}

impl<T: Transport, F: FnMut(u64) -> u64> Transport for Redate<T, F> {
    type Error = T::Error;
    fn transceive(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, T::Error> {
        if command[1] != INS_DEBIT {
            return self.inner.transceive(command, response);
        }
        let lc = command[4] as usize;
        let mut req: DebitRequest = decode_command(&command[5..5 + lc]).unwrap();
        req.time = (self.redate)(req.time);
        let mut data = [0u8; 64];
        let data = encode_versioned_into(&req, &mut data).unwrap();
        let mut cmd = command[..4].to_vec();
        cmd.push(data.len() as u8);
        cmd.extend_from_slice(data);
        cmd.extend_from_slice(&command[5 + lc..]);
        self.inner.transceive(&cmd, response)
    }
}

/// A card of the attacker's own, certified by the real issuer, telling the truth (the level of
/// `CardSpec::entitled` is 2): it signs transcript and receipts with the key its credential
/// certifies.
fn honest_emulator(rig: &Rig, serial: u8, status_index: u32) -> EmulatedCard {
    let spec = CardSpec::entitled(serial, status_index, T0 - YEAR, T0 + YEAR);
    lying_card(
        &rig.auth,
        &spec,
        AttributeValue::Level(Level::new(2).unwrap()),
        u64::from(serial),
    )
    .unwrap()
}

/// (outcome, reason, receipt kept) of the last record in the terminal's log.
fn last_logged(rig: &mut Rig) -> (Outcome, Reason, bool) {
    let mut buf = [0u8; 4096];
    let batch = rig.t().export_log_batch(100, &mut buf).unwrap().unwrap();
    let signed = Signed::decode(batch.wire).unwrap();
    let body: LogBatchBody<'_> = signed.open(&[], &rig.auth.terminal.public_key()).unwrap();
    let last: TapRecord<'_> = body.records.iter().last().unwrap();
    (last.outcome, last.reason, last.receipt.is_some())
}

fn assert_no_debit(rig: &mut Rig, d: &terminal_core::Decision, reason: Reason) {
    assert_decision(d, Outcome::Refused, reason);
    assert!(d.debit.is_none());
    assert!(d.receipt().is_none(), "no receipt is kept");
    assert_eq!(last_logged(rig), (Outcome::Refused, reason, false));
}

#[test]
fn a_receipt_dated_outside_the_session_is_refused() {
    // A fresh debit: the receipt must carry this session's request time. Signed by the card's
    // own key, for the right amount, reference and terminal, but dated a second earlier (before
    // the debit was announced) or a second later (after the terminal's now), it is malformed.
    let mut rig = Rig::new();
    for (serial, shift) in [(31, -1), (32, 1), (33, -3600)] {
        let mut card = Redate {
            inner: honest_emulator(&rig, serial, 36),
            redate: move |t: u64| t.wrapping_add_signed(shift),
        };
        let d = rig
            .t()
            .tap(&mut card, ServiceRequest::Welfare { amount: 5 });
        assert_no_debit(&mut rig, &d, Reason::Malformed);
    }
    // The emulator and the rewriting are sound: the same card dating its receipt now is accepted.
    let mut card = Redate {
        inner: honest_emulator(&rig, 34, 37),
        redate: |t: u64| t,
    };
    let d = rig
        .t()
        .tap(&mut card, ServiceRequest::Welfare { amount: 5 });
    assert_decision(&d, Outcome::Accepted, Reason::Ok);
    assert_eq!(last_logged(&mut rig), (Outcome::Accepted, Reason::Ok, true));
}

/// Taps `card` for a welfare debit of `amount` whose answer is lost: refused as interrupted, the
/// terminal remembers the debit. Returns the lost receipt (with its SW).
fn interrupt_debit(
    rig: &mut Rig,
    card: &mut card_applet::sim::InMemoryCard<TestRng>,
    amount: u32,
) -> Vec<u8> {
    let mut lossy = LoseDebitAnswer {
        inner: card,
        lost: Vec::new(),
    };
    let d = rig.t().tap(&mut lossy, ServiceRequest::Welfare { amount });
    assert_decision(&d, Outcome::Refused, Reason::DebitInterrupted);
    assert_eq!(lossy.lost[lossy.lost.len() - 2..], [0x90, 0x00]);
    lossy.lost
}

#[test]
fn a_retry_answered_by_a_clone_holding_the_interrupted_receipt_is_refused() {
    // The receipt of an interrupted debit may have been picked up in the air. A clone of that card
    // (its credential and disclosures, the cloner's key) answers the retry with it: the receipt
    // verifies under the card key and matches the announced debit, so only the transcript
    // shows the clone.
    let mut rig = Rig::new();
    let spec = CardSpec::entitled(35, 38, T0 - YEAR, T0 + YEAR);
    let mut original = rig.card_with(&spec, 35);
    let key = original.applet().card_public_key().unwrap().to_sec1();
    let lost = interrupt_debit(&mut rig, &mut original, 7);
    assert_eq!(original.applet().balance(), Some(93), "the card debited");
    let receipt = &lost[..lost.len() - 2];

    rig.clock().advance(120);
    let clone = terminal_core::testkit::clone_card(&rig.auth, &spec, &key, 35).unwrap();
    let mut clone = Tamper {
        inner: clone,
        edit: |c: &[u8], rsp: &mut [u8], n: usize| {
            if c[1] == INS_DEBIT {
                rsp[..lost.len()].copy_from_slice(&lost);
                return lost.len();
            }
            n
        },
    };
    let d = rig
        .t()
        .tap(&mut clone, ServiceRequest::Welfare { amount: 7 });
    assert_no_debit(&mut rig, &d, Reason::ClonedCard);

    // The clone's attempt does not use up the retry: the card itself still gets exactly that
    // receipt accepted, debited once.
    let d = rig
        .t()
        .tap(&mut original, ServiceRequest::Welfare { amount: 7 });
    assert_decision(&d, Outcome::Accepted, Reason::Ok);
    assert_eq!(d.receipt(), Some(receipt), "the receipt the clone replayed");
    assert_eq!(d.debit.unwrap().balance_after, 93);
    assert_eq!(original.applet().balance(), Some(93));
}

#[test]
fn a_retry_answered_by_another_card_is_a_fresh_debit() {
    // Another holder taps for the same amount after an interrupted debit: the first session
    // announces the interrupted debit (the card is not known when it is announced); once the
    // answer shows another card, that session is dropped before DEBIT and a second one debits
    // this card like any fresh debit, under a reference of its own.
    let mut rig = Rig::new();
    let mut interrupted = rig.card(36, 39);
    let lost = interrupt_debit(&mut rig, &mut interrupted, 7);
    let lost = open_lost(&interrupted, &lost);

    rig.clock().advance(120);
    let now = rig.clock().0.get().unwrap();
    let mut other = rig.card(37, 40);
    let d = rig
        .t()
        .tap(&mut other, ServiceRequest::Welfare { amount: 7 });
    assert_decision(&d, Outcome::Accepted, Reason::Ok);
    assert_eq!(d.card_serial, Some([0xC0, 0, 0, 0, 0, 0, 0, 37]));
    let debit = d.debit.unwrap();
    assert_ne!(
        debit.reference, lost.reference,
        "a fresh debit, not the retry"
    );
    assert_eq!((debit.balance_after, debit.counter), (93, 1));
    assert_eq!(other.applet().balance(), Some(93));
    let receipt: ReceiptBody = Signed::decode(d.receipt().unwrap())
        .unwrap()
        .open(&[], &other.applet().card_public_key().unwrap())
        .unwrap();
    assert_eq!(
        (receipt.card_serial, receipt.time),
        (d.card_serial.unwrap(), now)
    );
    assert_eq!(last_logged(&mut rig), (Outcome::Accepted, Reason::Ok, true));
}

#[test]
fn a_retry_answered_by_another_card_needs_a_receipt_of_this_session() {
    // Only the interrupted card may answer the retry with a receipt of the interrupted session;
    // another card's receipt, even signed by its own certified key, must be dated now.
    let mut rig = Rig::new();
    let mut interrupted = rig.card(38, 41);
    let t1 = rig.clock().0.get().unwrap();
    interrupt_debit(&mut rig, &mut interrupted, 7);

    rig.clock().advance(120);
    let mut other = Redate {
        inner: honest_emulator(&rig, 39, 42),
        redate: |_| t1,
    };
    let d = rig
        .t()
        .tap(&mut other, ServiceRequest::Welfare { amount: 7 });
    assert_no_debit(&mut rig, &d, Reason::Malformed);
}

/// The receipt an interrupted debit lost, opened under `card`'s key.
fn open_lost(card: &card_applet::sim::InMemoryCard<TestRng>, lost: &[u8]) -> ReceiptBody {
    Signed::decode(&lost[..lost.len() - 2])
        .unwrap()
        .open(&[], &card.applet().card_public_key().unwrap())
        .unwrap()
}

#[test]
fn an_interrupted_debit_is_resolved_by_its_receipt_after_another_card_was_served() {
    // The interrupted card had debited (its receipt was lost). Another holder is served in
    // between, for the same amount and for another: the interrupted debit stays kept for its own
    // card, which is then resolved by its stored receipt and not debited a second time.
    let mut rig = Rig::new();
    let mut interrupted = rig.card(40, 43);
    let lost = interrupt_debit(&mut rig, &mut interrupted, 7);
    let lost_body = open_lost(&interrupted, &lost);
    assert_eq!(interrupted.applet().balance(), Some(93), "the card debited");

    let mut other = rig.card(41, 44);
    for (amount, balance) in [(7, 93), (5, 88)] {
        rig.clock().advance(120);
        let d = rig.t().tap(&mut other, ServiceRequest::Welfare { amount });
        assert_decision(&d, Outcome::Accepted, Reason::Ok);
        assert_eq!(d.debit.unwrap().balance_after, balance);
    }

    rig.clock().advance(120);
    let d = rig
        .t()
        .tap(&mut interrupted, ServiceRequest::Welfare { amount: 7 });
    assert_decision(&d, Outcome::Accepted, Reason::Ok);
    assert_eq!(
        d.receipt(),
        Some(&lost[..lost.len() - 2]),
        "resolved by the stored receipt"
    );
    assert_eq!(d.debit.unwrap().balance_after, 93);
    assert_eq!(interrupted.applet().balance(), Some(93), "debited once");
    assert_eq!(last_logged(&mut rig), (Outcome::Accepted, Reason::Ok, true));

    // Resolved: the card's next purchase is a fresh debit.
    rig.clock().advance(120);
    let d = rig
        .t()
        .tap(&mut interrupted, ServiceRequest::Welfare { amount: 7 });
    assert_decision(&d, Outcome::Accepted, Reason::Ok);
    assert_ne!(d.debit.unwrap().reference, lost_body.reference);
    assert_eq!(interrupted.applet().balance(), Some(86));
}

#[test]
fn other_cards_are_served_normally_while_an_interrupted_debit_is_kept() {
    // Another card tapping again and again for the amount of the kept debit is debited each
    // time (it is never handed the kept reference, whose stored receipt would make it pay
    // nothing), and the interrupted card still gets its retry.
    let mut rig = Rig::new();
    let mut interrupted = rig.card(42, 45);
    let lost = interrupt_debit(&mut rig, &mut interrupted, 7);
    let mut other = rig.card(43, 46);
    for balance in [93, 86, 79] {
        rig.clock().advance(120);
        let d = rig
            .t()
            .tap(&mut other, ServiceRequest::Welfare { amount: 7 });
        assert_decision(&d, Outcome::Accepted, Reason::Ok);
        assert_eq!(d.debit.unwrap().balance_after, balance);
        assert_eq!(other.applet().balance(), Some(balance));
    }
    rig.clock().advance(120);
    let d = rig
        .t()
        .tap(&mut interrupted, ServiceRequest::Welfare { amount: 7 });
    assert_decision(&d, Outcome::Accepted, Reason::Ok);
    assert_eq!(d.receipt(), Some(&lost[..lost.len() - 2]));
    assert_eq!(interrupted.applet().balance(), Some(93));
}

#[test]
fn a_second_interrupted_debit_does_not_displace_the_kept_one() {
    // One interrupted debit is kept (fixed memory). A second card interrupted meanwhile is
    // logged as interrupted but not kept; the first stays kept and is resolved by its receipt.
    let mut rig = Rig::new();
    let mut first = rig.card(44, 47);
    let lost = interrupt_debit(&mut rig, &mut first, 7);
    let mut second = rig.card(45, 48);
    rig.clock().advance(120);
    let lost_second = interrupt_debit(&mut rig, &mut second, 7);
    assert_ne!(
        open_lost(&second, &lost_second).reference,
        open_lost(&first, &lost).reference,
        "the second card was debited under a reference of its own"
    );
    rig.clock().advance(120);
    let d = rig
        .t()
        .tap(&mut first, ServiceRequest::Welfare { amount: 7 });
    assert_decision(&d, Outcome::Accepted, Reason::Ok);
    assert_eq!(d.receipt(), Some(&lost[..lost.len() - 2]));
    assert_eq!(first.applet().balance(), Some(93), "debited once");
}

/// The first card for the first session of a tap, the second from the next SELECT on (as if
/// one card left the field and another came between the two sessions of a tap).
struct SwapAtSecondSelect<A, B> {
    first: A,
    second: B,
    selects: u32,
}

impl<A: Transport, B: Transport> Transport for SwapAtSecondSelect<A, B> {
    type Error = Lost;
    fn transceive(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, Lost> {
        if command[1] == INS_SELECT {
            self.selects += 1;
        }
        if self.selects > 1 {
            self.second.transceive(command, response).map_err(|_| Lost)
        } else {
            self.first.transceive(command, response).map_err(|_| Lost)
        }
    }
}

#[test]
fn the_interrupted_card_is_not_debited_in_a_session_announcing_a_fresh_debit() {
    // The retry's session is answered by another card, so the second session announces a fresh
    // debit; if the interrupted card answers that one, it is not debited (that could debit it
    // twice): "tap again", and its next tap is the retry.
    let mut rig = Rig::new();
    let mut interrupted = rig.card(46, 49);
    let lost = interrupt_debit(&mut rig, &mut interrupted, 7);
    let mut other = rig.card(47, 50);
    rig.clock().advance(120);
    let mut swap = SwapAtSecondSelect {
        first: &mut other,
        second: &mut interrupted,
        selects: 0,
    };
    let d = rig
        .t()
        .tap(&mut swap, ServiceRequest::Welfare { amount: 7 });
    assert_eq!(swap.selects, 2, "two sessions");
    assert_no_debit(&mut rig, &d, Reason::DebitInterrupted);
    assert_eq!(d.card_serial, Some([0xC0, 0, 0, 0, 0, 0, 0, 46]));
    assert_eq!(interrupted.applet().balance(), Some(93));
    assert_eq!(other.applet().balance(), Some(100));
    rig.clock().advance(120);
    let d = rig
        .t()
        .tap(&mut interrupted, ServiceRequest::Welfare { amount: 7 });
    assert_decision(&d, Outcome::Accepted, Reason::Ok);
    assert_eq!(d.receipt(), Some(&lost[..lost.len() - 2]));
    assert_eq!(interrupted.applet().balance(), Some(93));
}

/// Counts the sessions (SELECTs) a tap opens.
struct CountSelects<'a> {
    inner: &'a mut card_applet::sim::InMemoryCard<TestRng>,
    selects: u32,
}

impl Transport for CountSelects<'_> {
    type Error = Lost;
    fn transceive(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, Lost> {
        if command[1] == INS_SELECT {
            self.selects += 1;
        }
        self.inner.transceive(command, response).map_err(|_| Lost)
    }
}

/// Taps `card` for `amount` and answers the decision and the sessions it took.
fn counted_tap(
    rig: &mut Rig,
    card: &mut card_applet::sim::InMemoryCard<TestRng>,
    amount: u32,
) -> (terminal_core::Decision, u32) {
    let mut counted = CountSelects {
        inner: card,
        selects: 0,
    };
    let d = rig
        .t()
        .tap(&mut counted, ServiceRequest::Welfare { amount });
    (d, counted.selects)
}

#[test]
fn an_interrupted_debit_stays_kept_when_its_card_pays_another_amount() {
    // The interrupted card pays another amount here before its retry: the retry stays kept (other
    // cards still take two sessions), and the card, which keeps the receipts of its last three
    // debits, resolves it by the stored receipt: debited once.
    let mut rig = Rig::new();
    let mut interrupted = rig.card(48, 51);
    let lost = interrupt_debit(&mut rig, &mut interrupted, 7);
    rig.clock().advance(60);
    let (d, _) = counted_tap(&mut rig, &mut interrupted, 5);
    assert_decision(&d, Outcome::Accepted, Reason::Ok);
    assert_eq!(interrupted.applet().balance(), Some(88));
    let mut other = rig.card(49, 52);
    rig.clock().advance(60);
    let (d, sessions) = counted_tap(&mut rig, &mut other, 7);
    assert_decision(&d, Outcome::Accepted, Reason::Ok);
    assert_eq!(sessions, 2, "still kept: the retry was announced first");
    rig.clock().advance(60);
    let (d, sessions) = counted_tap(&mut rig, &mut interrupted, 7);
    assert_decision(&d, Outcome::Accepted, Reason::Ok);
    assert_eq!(sessions, 1);
    assert_eq!(
        d.receipt(),
        Some(&lost[..lost.len() - 2]),
        "the stored receipt"
    );
    assert_eq!(interrupted.applet().balance(), Some(88), "debited once");
    // Resolved: other cards take one session again.
    rig.clock().advance(60);
    let (d, sessions) = counted_tap(&mut rig, &mut other, 7);
    assert_decision(&d, Outcome::Accepted, Reason::Ok);
    assert_eq!(sessions, 1);
}

#[test]
fn an_interrupted_debit_is_kept_for_ten_minutes() {
    // Kept for PENDING_DEBIT_KEPT_S: at that age the retry is still announced (and resolves by
    // the stored receipt); a second later it is given up and other cards' taps take one
    // session again.
    let mut rig = Rig::new();
    let window = terminal_core::terminal::PENDING_DEBIT_KEPT_S;
    let mut kept = rig.card(50, 53);
    let lost = interrupt_debit(&mut rig, &mut kept, 7);
    rig.clock().advance(window);
    let (d, sessions) = counted_tap(&mut rig, &mut kept, 7);
    assert_decision(&d, Outcome::Accepted, Reason::Ok);
    assert_eq!(sessions, 1);
    assert_eq!(d.receipt(), Some(&lost[..lost.len() - 2]), "still kept");
    assert_eq!(kept.applet().balance(), Some(93));

    let mut late = rig.card(51, 54);
    let lost = interrupt_debit(&mut rig, &mut late, 7);
    let mut other = rig.card(52, 55);
    rig.clock().advance(window + 1);
    let (d, sessions) = counted_tap(&mut rig, &mut other, 7);
    assert_decision(&d, Outcome::Accepted, Reason::Ok);
    assert_eq!(sessions, 1, "given up");
    let (d, _) = counted_tap(&mut rig, &mut late, 7);
    assert_decision(&d, Outcome::Accepted, Reason::Ok);
    assert_ne!(d.receipt(), Some(&lost[..lost.len() - 2]), "a fresh debit");
    assert_eq!(late.applet().balance(), Some(86));
}
