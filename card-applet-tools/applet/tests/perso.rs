//! Personalization under SCP03: the driver's happy path, every refusal of the personalization
//! commands, and restarts from the start after a failure.
#![allow(clippy::unwrap_used)]

mod common;

use card_applet::host::{self, HostError, PersoData};
use card_applet::sim::{CardGone, InMemoryCard, TestRng};
use card_applet::KVN;
use common::*;
use rand_core::Rng;
use shared_crypto::apdu::Transport;
use shared_crypto::model::{AttributeId, AttributeSet, Disclosure, LifeCycle, Service};
use shared_crypto::scp03::{HostInit, HostSession, KeySet, Scp03Error};
use shared_crypto::sig::{PublicKey, Signed};

/// Opens a session by hand (independently of `host`) at `level`.
fn open(card: &mut InMemoryCard<TestRng>, w: &World, level: u8) -> Result<HostSession, u16> {
    select(card);
    let mut hc = [0u8; 8];
    TestRng::new(77).fill_bytes(&mut hc);
    let init = HostInit::new(KVN, hc);
    let mut rsp = [0u8; 258];
    let n = card.transceive(&init.command(), &mut rsp).unwrap();
    assert_eq!(&rsp[n - 2..n], &[0x90, 0x00]);
    let (s, _, ext) = init
        .authenticate(&KeySet::from_static(KVN, &w.keys), &rsp[..n - 2], level)
        .unwrap();
    let n = card.transceive(&ext, &mut rsp).unwrap();
    match u16::from_be_bytes([rsp[n - 2], rsp[n - 1]]) {
        0x9000 => Ok(s),
        sw => Err(sw),
    }
}

/// Sends a protected command (chained in 239-byte pieces); returns the plain answer and SW.
fn send(
    card: &mut InMemoryCard<TestRng>,
    s: &mut HostSession,
    ins: u8,
    p1: u8,
    p2: u8,
    data: &[u8],
) -> (Vec<u8>, u16) {
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[][..]]
    } else {
        data.chunks(239).collect()
    };
    for (i, c) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let mut plain = vec![if last { 0x80 } else { 0x90 }, ins, p1, p2];
        if !c.is_empty() {
            plain.push(c.len() as u8);
            plain.extend_from_slice(c);
        }
        if last {
            plain.push(0);
        }
        let mut wrapped = [0u8; 262];
        let wn = s.wrap_command(&plain, &mut wrapped).unwrap();
        let mut rsp = [0u8; 258];
        let n = card.transceive(&wrapped[..wn], &mut rsp).unwrap();
        let sw = u16::from_be_bytes([rsp[n - 2], rsp[n - 1]]);
        let mut out = [0u8; 258];
        let pn = s.unwrap_response(&rsp[..n - 2], sw, &mut out).unwrap();
        if !last && sw != 0x9000 {
            return (vec![], sw);
        }
        if last {
            return (out[..pn].to_vec(), sw);
        }
    }
    unreachable!()
}

fn credential_for(w: &World, card_key: &PublicKey, disc: &[Disclosure<'_>]) -> Vec<u8> {
    use shared_crypto::model::{AttributeDigest, CredentialBody};
    use shared_crypto::wire::ItemsBuf;
    let digests: ItemsBuf = AttributeId::ALL
        .iter()
        .flat_map(|id| disc.iter().filter(move |d| d.attribute == *id))
        .map(|d| AttributeDigest {
            attribute: d.attribute,
            digest: d.digest(),
        })
        .collect();
    let body = CredentialBody {
        card_serial: SERIAL,
        status_index: 42,
        valid_from: NOW - YEAR,
        valid_until: NOW + YEAR,
        card_key: card_key.to_bytes(),
        digests: digests.as_items(),
    };
    shared_crypto::sig::sign(&body, &[], &w.issuer).unwrap()
}

fn encode(disc: &[Disclosure<'_>]) -> Vec<u8> {
    let mut out = vec![0u8; 1024];
    let n = host::encode_disclosures(disc, &mut out).unwrap();
    out.truncate(n);
    out
}

#[test]
fn two_phase_driver_and_div_data() {
    let w = World::new();
    let mut card = w.blank_card(1);
    assert_eq!(host::read_div_data(&mut card).unwrap(), DIV);
    let (session, key) =
        host::begin_personalization(&mut card, &mut TestRng::new(2), &w.keys).unwrap();
    assert_eq!(session.div_data(), DIV);
    assert_eq!(Some(key), card.applet().card_public_key());
    // ... the caller talks to the server here ...
    let attrs = attributes();
    let disc = disclosures(&attrs);
    let cred = credential_for(&w, &key, &disc);
    session
        .finish(
            &mut card,
            &PersoData {
                credential: &cred,
                disclosures: &disc,
                root_key: w.root.public_key(),
                initial_points: 7,
            },
        )
        .unwrap();
    assert_eq!(card.applet().life_cycle(), Some(LifeCycle::Personalized));
    assert_eq!(card.applet().balance(), Some(7));
    let t = tap(&w, &mut card, Service::Rehab, AttributeSet::ALL).unwrap();
    assert_eq!(check_tap(&w, &key, &t), Service::Rehab.release_policy());
    // Once personalized: no second personalization, no div data.
    assert!(matches!(
        host::begin_personalization(&mut card, &mut TestRng::new(3), &w.keys),
        Err(HostError::NotBlank(LifeCycle::Personalized))
    ));
    assert!(matches!(
        host::read_div_data(&mut card),
        Err(HostError::NotBlank(LifeCycle::Personalized))
    ));
}

#[test]
fn wrong_static_keys_are_refused() {
    let w = World::new();
    let mut card = w.blank_card(4);
    let other = shared_crypto::scp03::diversify(&[0x4E; 16], &DIV);
    assert_eq!(
        host::begin_personalization(&mut card, &mut TestRng::new(5), &other).unwrap_err(),
        HostError::<CardGone>::Scp(Scp03Error::Cryptogram)
    );
    assert_eq!(card.applet().card_public_key(), None);
    // The right keys still work afterwards.
    host::begin_personalization(&mut card, &mut TestRng::new(6), &w.keys).unwrap();
}

#[test]
fn only_security_level_33_is_accepted() {
    let w = World::new();
    let mut card = w.blank_card(7);
    for level in [0x01, 0x03, 0x11, 0x13] {
        assert_eq!(
            open(&mut card, &w, level).unwrap_err(),
            0x6982,
            "level {level:02X}"
        );
    }
    assert!(open(&mut card, &w, 0x33).is_ok());
}

#[test]
fn put_data_refusals() {
    let w = World::new();
    let mut card = w.blank_card(8);
    let mut s = open(&mut card, &w, 0x33).unwrap();
    let attrs = attributes();
    let disc = disclosures(&attrs);
    // Nothing before the key pair.
    assert_eq!(
        send(
            &mut card,
            &mut s,
            0xDA,
            0xDF,
            0x03,
            &w.root.public_key().to_sec1()
        )
        .1,
        0x6985
    );
    assert_eq!(send(&mut card, &mut s, 0xF0, 0x40, 0x0F, &[]).1, 0x6985);
    assert_eq!(
        send(&mut card, &mut s, 0x47, 0x00, 0x00, &[]).1,
        0x6A86,
        "GENERATE P1"
    );
    assert_eq!(
        send(&mut card, &mut s, 0x47, 0x80, 0x00, &[1]).1,
        0x6700,
        "GENERATE takes no data"
    );
    let (pk, sw) = send(&mut card, &mut s, 0x47, 0x80, 0x00, &[]);
    assert_eq!(sw, 0x9000);
    let card_key = PublicKey::from_sec1(&pk).unwrap();
    // Disclosures need the credential first.
    assert_eq!(
        send(&mut card, &mut s, 0xDA, 0xDF, 0x02, &encode(&disc)).1,
        0x6985
    );
    // Credential: malformed, for another key, wrong P1, unknown tag.
    assert_eq!(
        send(&mut card, &mut s, 0xDA, 0xDF, 0x01, &[1, 2, 3]).1,
        0x6A80
    );
    assert_eq!(
        send(
            &mut card,
            &mut s,
            0xDA,
            0xDF,
            0x01,
            &credential_for(&w, &key(66).public_key(), &disc)
        )
        .1,
        0x6A80
    );
    let cred = credential_for(&w, &card_key, &disc);
    assert_eq!(send(&mut card, &mut s, 0xDA, 0x00, 0x01, &cred).1, 0x6A86);
    assert_eq!(send(&mut card, &mut s, 0xDA, 0xDF, 0x09, &cred).1, 0x6A88);
    assert_eq!(
        send(&mut card, &mut s, 0xDA, 0xDF, 0x01, &[0u8; 600]).1,
        0x6700,
        "longer than the record"
    );
    assert_eq!(send(&mut card, &mut s, 0xDA, 0xDF, 0x01, &cred).1, 0x9000);
    // Disclosures: altered value, one missing, one twice, out of order, garbage.
    let mut altered = disc.clone();
    altered[0].value = "李四".as_bytes();
    assert_eq!(
        send(&mut card, &mut s, 0xDA, 0xDF, 0x02, &encode(&altered)).1,
        0x6A80
    );
    assert_eq!(
        send(&mut card, &mut s, 0xDA, 0xDF, 0x02, &encode(&disc[1..])).1,
        0x6A80
    );
    let mut twice = disc.clone();
    twice.push(disc[3]);
    assert_eq!(
        send(&mut card, &mut s, 0xDA, 0xDF, 0x02, &encode(&twice)).1,
        0x6A80
    );
    let unordered: shared_crypto::wire::ItemsBuf = disc.iter().rev().collect();
    let unordered = shared_crypto::wire::encode(&unordered.as_items::<Disclosure<'_>>());
    assert_eq!(
        send(&mut card, &mut s, 0xDA, 0xDF, 0x02, &unordered).1,
        0x6A80
    );
    assert_eq!(send(&mut card, &mut s, 0xDA, 0xDF, 0x02, &[9, 9]).1, 0x6A80);
    assert_eq!(
        send(&mut card, &mut s, 0xDA, 0xDF, 0x02, &encode(&disc)).1,
        0x9000
    );
    // Root key and purse.
    assert_eq!(
        send(
            &mut card,
            &mut s,
            0xDA,
            0xDF,
            0x03,
            &[[2].as_slice(), &[0xFF; 32]].concat()
        )
        .1,
        0x6A80
    );
    assert_eq!(
        send(
            &mut card,
            &mut s,
            0xDA,
            0xDF,
            0x03,
            &w.root.public_key().to_sec1()
        )
        .1,
        0x9000
    );
    // Lock refused while the purse is missing; wrong P1/P2; data.
    assert_eq!(send(&mut card, &mut s, 0xF0, 0x40, 0x0F, &[]).1, 0x6985);
    assert_eq!(send(&mut card, &mut s, 0xF0, 0x40, 0x07, &[]).1, 0x6A86);
    assert_eq!(send(&mut card, &mut s, 0xF0, 0x40, 0x0F, &[0]).1, 0x6700);
    assert_eq!(send(&mut card, &mut s, 0xDA, 0xDF, 0x04, &[0, 1]).1, 0x6700);
    assert_eq!(
        send(&mut card, &mut s, 0xDA, 0xDF, 0x04, &[0, 0, 1, 0]).1,
        0x9000
    );
    assert_eq!(send(&mut card, &mut s, 0xF0, 0x40, 0x0F, &[]).1, 0x9000);
    assert_eq!(card.applet().life_cycle(), Some(LifeCycle::Personalized));
    assert_eq!(card.applet().balance(), Some(256));
    // The lock closed the secure channel.
    let mut wrapped = [0u8; 262];
    let n = s
        .wrap_command(&[0x80, 0xDA, 0xDF, 0x04, 0x04, 0, 0, 9, 9], &mut wrapped)
        .unwrap();
    let mut rsp = [0u8; 258];
    let m = card.transceive(&wrapped[..n], &mut rsp).unwrap();
    assert_eq!(&rsp[..m], &[0x69, 0x82]);
}

#[test]
fn secure_messaging_failures_close_the_channel() {
    let w = World::new();
    let mut card = w.blank_card(9);
    let mut s = open(&mut card, &w, 0x33).unwrap();
    let mut wrapped = [0u8; 262];
    let n = s
        .wrap_command(&[0x80, 0x47, 0x80, 0x00, 0x00], &mut wrapped)
        .unwrap();
    wrapped[n - 2] ^= 0x01; // a MAC byte
    let mut rsp = [0u8; 258];
    let m = card.transceive(&wrapped[..n], &mut rsp).unwrap();
    assert_eq!(&rsp[..m], &[0x69, 0x82]);
    // Even a correct command now fails: the session is gone.
    let mut s2 = s;
    let n = s2
        .wrap_command(&[0x80, 0x47, 0x80, 0x00, 0x00], &mut wrapped)
        .unwrap();
    let m = card.transceive(&wrapped[..n], &mut rsp).unwrap();
    assert_eq!(&rsp[..m], &[0x69, 0x82]);
    // A SELECT also ends a session.
    let mut s = open(&mut card, &w, 0x33).unwrap();
    select(&mut card);
    let n = s
        .wrap_command(&[0x80, 0x47, 0x80, 0x00, 0x00], &mut wrapped)
        .unwrap();
    let m = card.transceive(&wrapped[..n], &mut rsp).unwrap();
    assert_eq!(&rsp[..m], &[0x69, 0x82]);
    assert_eq!(card.applet().card_public_key(), None);
    // A replayed protected command is refused.
    let mut s = open(&mut card, &w, 0x33).unwrap();
    let n = s
        .wrap_command(&[0x80, 0x47, 0x80, 0x00, 0x00], &mut wrapped)
        .unwrap();
    let m = card.transceive(&wrapped[..n], &mut rsp).unwrap();
    assert_eq!(&rsp[m - 2..m], &[0x90, 0x00]);
    let first = card.applet().card_public_key();
    let m = card.transceive(&wrapped[..n], &mut rsp).unwrap();
    assert_eq!(&rsp[..m], &[0x69, 0x82]);
    assert_eq!(
        card.applet().card_public_key(),
        first,
        "replay generated nothing"
    );
}

#[test]
fn a_restart_wipes_the_earlier_attempt() {
    let w = World::new();
    let mut card = w.blank_card(10);
    let attrs = attributes();
    let disc = disclosures(&attrs);
    // First attempt: everything but the lock, then the card is pulled.
    let mut s = open(&mut card, &w, 0x33).unwrap();
    let (pk1, _) = send(&mut card, &mut s, 0x47, 0x80, 0x00, &[]);
    let key1 = PublicKey::from_sec1(&pk1).unwrap();
    let cred1 = credential_for(&w, &key1, &disc);
    for (tag, data) in [
        (1u8, cred1.clone()),
        (2, encode(&disc)),
        (3, w.root.public_key().to_sec1().to_vec()),
        (4, vec![0, 0, 0, 9]),
    ] {
        assert_eq!(send(&mut card, &mut s, 0xDA, 0xDF, tag, &data).1, 0x9000);
    }
    assert_eq!(card.applet().balance(), Some(9));
    card.remove();
    card.insert();
    assert_eq!(card.applet().life_cycle(), Some(LifeCycle::Blank));
    // Second attempt: a new key; the first attempt's data is gone and its credential refused.
    let (session, key2) =
        host::begin_personalization(&mut card, &mut TestRng::new(11), &w.keys).unwrap();
    assert_ne!(key1, key2);
    assert_eq!(card.applet().balance(), None, "purse wiped");
    let store = card.applet().store().as_bytes();
    assert!(
        !store.windows(32).any(|win| win == &cred1[20..52]),
        "credential bytes erased"
    );
    let r = session.finish(
        &mut card,
        &PersoData {
            credential: &cred1,
            disclosures: &disc,
            root_key: w.root.public_key(),
            initial_points: 1,
        },
    );
    assert_eq!(r.unwrap_err(), HostError::Status(0x6A80));
    // Lock without the data is refused, the card stays blank; a third attempt completes.
    let mut s = open(&mut card, &w, 0x33).unwrap();
    let (pk3, _) = send(&mut card, &mut s, 0x47, 0x80, 0x00, &[]);
    assert_eq!(send(&mut card, &mut s, 0xF0, 0x40, 0x0F, &[]).1, 0x6985);
    assert_eq!(card.applet().life_cycle(), Some(LifeCycle::Blank));
    let key3 = PublicKey::from_sec1(&pk3).unwrap();
    let cred3 = credential_for(&w, &key3, &disc);
    for (tag, data) in [
        (1u8, cred3),
        (2, encode(&disc)),
        (3, w.root.public_key().to_sec1().to_vec()),
        (4, vec![0, 0, 0, 9]),
    ] {
        assert_eq!(send(&mut card, &mut s, 0xDA, 0xDF, tag, &data).1, 0x9000);
    }
    assert_eq!(send(&mut card, &mut s, 0xF0, 0x40, 0x0F, &[]).1, 0x9000);
    let t = tap(&w, &mut card, Service::Transit, AttributeSet::ALL).unwrap();
    assert_eq!(check_tap(&w, &key3, &t), Service::Transit.release_policy());
    let _ = Signed::decode(&t.answer).unwrap();
}
