//! Power cut at every single store write of personalization, DEBIT, CREDIT (and the clock writes
//! of TERMINAL AUTHENTICATE), with torn writes of several lengths. After each cut the card is
//! powered up again and checked: balance, counter and accepted voucher number must describe a
//! state reachable without the cut (no point created or lost), and retrying the interrupted step
//! must finish the script with exactly one receipt per debit, counters in sequence.
#![allow(clippy::unwrap_used)]

mod common;

use card_applet::sim::{personalize_in_memory, CardGone, InMemoryCard, TestRng};
use card_applet::{Applet, RamStore};
use common::*;
use shared_crypto::apdu::ExchangeError;
use shared_crypto::model::{AttributeSet, DebitIntent, LifeCycle, ReceiptBody, Service};
use shared_crypto::sig::{PublicKey, Signed};

/// Bytes of a torn write that land: nothing, part of the header, the header, part of the
/// payload, everything (the write completed but the answer never left the card).
const TORN: [usize; 5] = [0, 5, 16, 30, usize::MAX];

#[derive(Clone, Copy, Debug)]
enum Step {
    Debit { amount: u32, reference: [u8; 16] },
    Credit { seq: u32, amount: u32 },
}

const SCRIPT: [Step; 5] = [
    Step::Debit {
        amount: 100,
        reference: [1; 16],
    },
    Step::Credit { seq: 1, amount: 50 },
    Step::Debit {
        amount: 30,
        reference: [2; 16],
    },
    Step::Credit {
        seq: 2,
        amount: 200,
    },
    Step::Debit {
        amount: 600,
        reference: [3; 16],
    },
];

fn gone<T>(r: Result<T, ExchangeError<CardGone>>) -> Result<T, CardGone> {
    match r {
        Ok(v) => Ok(v),
        Err(ExchangeError::Transport(g)) => Err(g),
        Err(e) => panic!("unexpected refusal {e:?}"),
    }
}

/// One attempt of step `i`; the terminal's clock moves on with every step so that the card's
/// last-seen time is written too.
fn attempt(
    w: &World,
    card: &mut InMemoryCard<TestRng>,
    i: usize,
    step: Step,
) -> Result<Option<Vec<u8>>, CardGone> {
    let time = NOW + 100 * i as u64;
    let sel = gone(card_select(card))?;
    match step {
        Step::Debit { amount, reference } => {
            // A retry announces the same intent again (a new session, a new request time).
            let data = terminal_auth_with(
                &sel,
                w.terminal(Service::Welfare),
                Service::Welfare,
                AttributeSet::NONE,
                time,
                Some(DebitIntent { amount, reference }),
            );
            gone(call(card, 0x82, &data))?;
            let r = gone(call(card, 0x30, &debit_data_at(amount, reference, time)))?;
            Ok(Some(r))
        }
        Step::Credit { seq, amount } => {
            gone(call(
                card,
                0x32,
                &w.voucher(seq, amount, time, time + 86_400),
            ))?;
            Ok(None)
        }
    }
}

fn card_select(card: &mut InMemoryCard<TestRng>) -> Result<[u8; 16], ExchangeError<CardGone>> {
    card_applet::host::select(card)
        .map(|s| s.challenge)
        .map_err(|e| match e {
            card_applet::host::HostError::Transport(g) => ExchangeError::Transport(g),
            card_applet::host::HostError::Status(sw) => ExchangeError::Status(sw),
            e => panic!("{e:?}"),
        })
}

/// The balance a card with `counter` debits and vouchers up to `voucher_seq` must hold.
fn expected_balance(counter: u32, voucher_seq: u32) -> u32 {
    let mut b = INITIAL_POINTS as i64;
    let mut debits = 0;
    for s in SCRIPT {
        match s {
            Step::Debit { amount, .. } => {
                if debits < counter {
                    b -= amount as i64;
                }
                debits += 1;
            }
            Step::Credit { seq, amount } => {
                if seq <= voucher_seq {
                    b += amount as i64;
                }
            }
        }
    }
    b as u32
}

fn check_consistent(card: &InMemoryCard<TestRng>, ctx: &str) {
    let a = card.applet();
    let (bal, ctr, vs) = (
        a.balance().unwrap(),
        a.counter().unwrap(),
        a.voucher_seq().unwrap(),
    );
    assert_eq!(
        bal,
        expected_balance(ctr, vs),
        "{ctx}: balance {bal}, counter {ctr}, voucher {vs}"
    );
}

/// Runs the script, retrying a step after each power loss, and checks the receipts.
fn run_script(w: &World, card: &mut InMemoryCard<TestRng>, pk: &PublicKey, ctx: &str) -> u32 {
    let mut cuts = 0;
    let mut receipts = vec![];
    for (i, step) in SCRIPT.iter().enumerate() {
        loop {
            match attempt(w, card, i, *step) {
                Ok(r) => {
                    if let Some(r) = r {
                        receipts.push((i, r));
                    }
                    break;
                }
                Err(CardGone) => {
                    cuts += 1;
                    card.insert();
                    check_consistent(card, &format!("{ctx}, after a cut in step {i}"));
                }
            }
        }
    }
    let a = card.applet();
    assert_eq!(a.counter(), Some(3), "{ctx}");
    assert_eq!(a.voucher_seq(), Some(2), "{ctx}");
    assert_eq!(
        a.balance(),
        Some(INITIAL_POINTS - 100 + 50 - 30 + 200 - 600),
        "{ctx}"
    );
    for (k, (i, r)) in receipts.iter().enumerate() {
        let body: ReceiptBody = Signed::decode(r).unwrap().open(&[], pk).unwrap();
        assert_eq!(
            body.counter,
            k as u32 + 1,
            "{ctx}: receipts in sequence, each once"
        );
        // The signed request's time of the step, whichever attempt's session signed it.
        assert_eq!(body.time, NOW + 100 * *i as u64, "{ctx}: receipt time");
    }
    cuts
}

#[test]
fn power_cut_at_every_write_of_debit_credit_and_tap() {
    let w = World::new();
    let base = w.personalized_card(20);
    let pk = base.applet().card_public_key().unwrap();
    let image: RamStore = base.applet().store().clone();

    // Dry run: how many writes the script makes.
    let mut dry = InMemoryCard::new(Applet::new(image.clone(), TestRng::new(21)));
    let before = dry.applet().store().writes();
    assert_eq!(run_script(&w, &mut dry, &pk, "dry run"), 0);
    let writes = dry.applet().store().writes() - before;
    assert!(
        writes >= 5 + 3,
        "each debit, credit and clock change writes ({writes})"
    );

    let mut runs = 0;
    for n in 0..writes {
        for torn in TORN {
            let mut card = InMemoryCard::new(Applet::new(image.clone(), TestRng::new(22)));
            card.applet_mut().store_mut().cut_power_at(n, torn);
            let cuts = run_script(
                &w,
                &mut card,
                &pk,
                &format!("cut at write {n}, {torn} bytes"),
            );
            assert_eq!(cuts, 1, "write {n} must be reached");
            runs += 1;
        }
    }
    println!(
        "{writes} writes x {} tear lengths = {runs} power cuts, all consistent",
        TORN.len()
    );
}

#[test]
fn power_cut_at_every_write_of_personalization() {
    let w = World::new();
    let attrs = attributes();
    let disc = disclosures(&attrs);
    let profile = w.profile(&disc);
    let blank: RamStore = w.blank_card(30).applet().store().clone();

    let mut dry = InMemoryCard::new(Applet::new(blank.clone(), TestRng::new(31)));
    let before = dry.applet().store().writes();
    personalize_in_memory(
        &mut dry,
        &mut TestRng::new(32),
        &w.keys,
        &w.issuer,
        &profile,
    )
    .unwrap();
    let writes = dry.applet().store().writes() - before;
    assert!(writes >= 6, "key, 4 PUT DATA, lock ({writes})");

    let (mut completed, mut restarted) = (0, 0);
    for n in 0..writes {
        for torn in TORN {
            let ctx = format!("cut at write {n}, {torn} bytes");
            let mut card = InMemoryCard::new(Applet::new(blank.clone(), TestRng::new(33)));
            card.applet_mut().store_mut().cut_power_at(n, torn);
            let r = personalize_in_memory(
                &mut card,
                &mut TestRng::new(34),
                &w.keys,
                &w.issuer,
                &profile,
            );
            assert!(r.is_err(), "{ctx}: the cut must interrupt personalization");
            card.insert();
            match card.applet().life_cycle() {
                Some(LifeCycle::Personalized) => {
                    // Only the lock itself, completed, may leave a personalized card.
                    assert_eq!(n, writes - 1, "{ctx}");
                    completed += 1;
                }
                Some(LifeCycle::Blank) => {
                    // A half-personalized card answers no tap...
                    card_select(&mut card).unwrap();
                    assert!(
                        matches!(
                            call(&mut card, 0x82, &[1]),
                            Err(ExchangeError::Status(0x6985))
                        ),
                        "{ctx}"
                    );
                    // ...and personalizes again from the start.
                    personalize_in_memory(
                        &mut card,
                        &mut TestRng::new(35),
                        &w.keys,
                        &w.issuer,
                        &profile,
                    )
                    .unwrap_or_else(|e| panic!("{ctx}: restart failed: {e:?}"));
                    restarted += 1;
                }
                other => panic!("{ctx}: life cycle {other:?}"),
            }
            assert_eq!(card.applet().balance(), Some(INITIAL_POINTS), "{ctx}");
            let pk = card.applet().card_public_key().unwrap();
            let t = tap(&w, &mut card, Service::Employment, AttributeSet::ALL).unwrap();
            assert_eq!(
                check_tap(&w, &pk, &t),
                Service::Employment.release_policy(),
                "{ctx}"
            );
        }
    }
    println!("personalization: {writes} writes x {} tear lengths: {restarted} restarted, {completed} completed by the cut write", TORN.len());
    assert!(completed >= 1 && restarted >= 1);
}

#[test]
fn power_cut_during_block_leaves_old_or_new_state() {
    let w = World::new();
    let image: RamStore = w.personalized_card(40).applet().store().clone();
    for torn in TORN {
        let mut card = InMemoryCard::new(Applet::new(image.clone(), TestRng::new(41)));
        card_select(&mut card).unwrap();
        card.applet_mut().store_mut().cut_power_at(0, torn);
        assert!(matches!(
            call(&mut card, 0x1E, &w.block_order(SERIAL, NOW)),
            Err(ExchangeError::Transport(_))
        ));
        card.insert();
        let lc = card.applet().life_cycle().unwrap();
        // The state record is a 16-byte header and one byte: 17 bytes landed = the write completed.
        if torn >= 17 {
            assert_eq!(lc, LifeCycle::Blocked);
        } else {
            assert_eq!(lc, LifeCycle::Personalized);
            tap(&w, &mut card, Service::Transit, AttributeSet::ALL).unwrap();
        }
    }
}
