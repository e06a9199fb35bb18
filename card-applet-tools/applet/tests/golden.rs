//! Saved card state must keep loading: `tests/golden/personalized-v1.bin` is the store image of a
//! card personalized (and debited once) by applet version 1.0. A later version must still tap,
//! debit and answer a torn-debit retry from it.
#![allow(clippy::unwrap_used)]

mod common;

use card_applet::sim::{InMemoryCard, TestRng};
use card_applet::{Applet, RamStore};
use common::*;
use shared_crypto::model::{AttributeSet, LifeCycle, ReceiptBody, Service};
use shared_crypto::sig::Signed;

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/golden/personalized-v1.bin"
);

#[test]
fn v1_personalized_image_still_loads() {
    let w = World::new();
    let image = std::fs::read(GOLDEN).unwrap();
    let mut card = InMemoryCard::new(Applet::new(
        RamStore::from_bytes(&image).unwrap(),
        TestRng::new(2),
    ));
    assert_eq!(card.applet().life_cycle(), Some(LifeCycle::Personalized));
    assert_eq!(card.applet().balance(), Some(INITIAL_POINTS - 25));
    assert_eq!(card.applet().counter(), Some(1));
    let pk = card.applet().card_public_key().unwrap();
    let t = tap(&w, &mut card, Service::Employment, AttributeSet::ALL).unwrap();
    assert_eq!(check_tap(&w, &pk, &t), Service::Employment.release_policy());
    // The stored receipt of the v1 debit answers its retry (announced again, as terminals do).
    welfare_tap(&w, &mut card, 25, [0x77; 16], NOW).unwrap();
    let r = call(&mut card, 0x30, &debit_data(25, [0x77; 16])).unwrap();
    let body: ReceiptBody = Signed::decode(&r).unwrap().open(&[], &pk).unwrap();
    assert_eq!(
        (body.counter, body.amount, body.balance_after),
        (1, 25, INITIAL_POINTS - 25)
    );
    welfare_tap(&w, &mut card, 5, [0x78; 16], NOW).unwrap();
    let r = call(&mut card, 0x30, &debit_data(5, [0x78; 16])).unwrap();
    let body: ReceiptBody = Signed::decode(&r).unwrap().open(&[], &pk).unwrap();
    assert_eq!(body.counter, 2);
}

/// Writes the golden image (run once per released version with `--ignored`).
#[test]
#[ignore]
fn regenerate_golden_image() {
    let w = World::new();
    let mut card = w.personalized_card(90);
    welfare_tap(&w, &mut card, 25, [0x77; 16], NOW).unwrap();
    call(&mut card, 0x30, &debit_data(25, [0x77; 16])).unwrap();
    std::fs::write(GOLDEN, card.applet().store().as_bytes()).unwrap();
}
