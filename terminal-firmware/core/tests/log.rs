//! The tap log seen from the terminal: every decision logged, exported as a terminal-signed batch,
//! kept until acknowledged, and a full log makes the terminal ask staff.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use shared_crypto::model::{LogBatchBody, Outcome, Reason, Service, TapRecord};
use shared_crypto::sig::Signed;
use terminal_core::log::LogError;
use terminal_core::ServiceRequest;

fn decode_batch(rig: &Rig, wire: &[u8]) -> Vec<(u32, Service, Outcome, Reason, bool)> {
    let signed = Signed::decode(wire).unwrap();
    let body: LogBatchBody<'_> = signed.open(&[], &rig.auth.terminal.public_key()).unwrap();
    body.check_sequence().unwrap();
    assert_eq!(body.terminal, rig.auth.terminal.public_key().key_id());
    body.records
        .iter()
        .map(|r: TapRecord<'_>| (r.seq, r.service, r.outcome, r.reason, r.receipt.is_some()))
        .collect()
}

#[test]
fn every_decision_is_exported_in_a_terminal_signed_batch() {
    let mut rig = Rig::new();
    let mut good = rig.card(60, 10);
    let mut revoked = rig.card(61, REVOKED_INDEX);
    let mut expected = Vec::new();
    for (which, req) in [
        (0, ServiceRequest::Welfare { amount: 5 }),
        (1, ServiceRequest::Transit),
        (0, ServiceRequest::Employment),
    ] {
        let d = if which == 0 {
            rig.t().tap(&mut good, req)
        } else {
            rig.t().tap(&mut revoked, req)
        };
        expected.push((
            d.log_seq.unwrap(),
            d.service,
            d.outcome,
            d.reason,
            d.receipt().is_some(),
        ));
    }
    rig.clock().set(None);
    let d = rig.t().tap(&mut good, ServiceRequest::Transit);
    expected.push((d.log_seq.unwrap(), d.service, d.outcome, d.reason, false));
    rig.clock().set(Some(T0 + 10));

    let mut buf = [0u8; 4096];
    let batch = rig.t().export_log_batch(100, &mut buf).unwrap().unwrap();
    assert_eq!((batch.first_seq, batch.last_seq, batch.records), (0, 3, 4));
    assert_eq!(decode_batch(&rig, batch.wire), expected);
    assert!(expected[0].4, "the welfare receipt travels in the batch");

    // A batch signed by the terminal does not verify under another key, and a changed byte
    // breaks it.
    let signed = Signed::decode(batch.wire).unwrap();
    assert!(signed
        .open::<LogBatchBody<'_>>(&[], &rig.auth.issuer.public_key())
        .is_err());
    let mut bad = batch.wire.to_vec();
    bad[20] ^= 1;
    let bad = Signed::decode(&bad).unwrap();
    assert!(bad
        .open::<LogBatchBody<'_>>(&[], &rig.auth.terminal.public_key())
        .is_err());

    // In small pieces: each batch continues where the last one stopped once acknowledged.
    let mut buf = [0u8; 4096];
    let first = rig.t().export_log_batch(2, &mut buf).unwrap().unwrap();
    assert_eq!((first.first_seq, first.last_seq), (0, 1));
    let last = first.last_seq;
    rig.t().acknowledge_upload(last).unwrap();
    let mut buf = [0u8; 4096];
    let second = rig.t().export_log_batch(2, &mut buf).unwrap().unwrap();
    assert_eq!((second.first_seq, second.last_seq), (2, 3));
    rig.t().acknowledge_upload(3).unwrap();
    let mut buf = [0u8; 4096];
    assert!(rig.t().export_log_batch(2, &mut buf).unwrap().is_none());
    // A buffer too small for one record.
    let d = rig.t().tap(&mut good, ServiceRequest::Employment);
    assert!(d.log_seq.is_some());
    let mut tiny = [0u8; 200];
    assert_eq!(
        rig.t().export_log_batch(10, &mut tiny),
        Err(LogError::BufferTooSmall)
    );
    assert_eq!(
        rig.t().acknowledge_upload(99),
        Err(LogError::BadAcknowledge)
    );
}

#[test]
fn a_full_log_makes_the_terminal_ask_staff_and_loses_nothing() {
    let mut rig = Rig::with(all_services(), 2);
    let mut card = rig.card(62, 10);
    let mut logged = Vec::new();
    let full = loop {
        rig.clock().advance(1);
        let d = rig.t().tap(&mut card, ServiceRequest::Employment);
        match d.log_seq {
            Some(seq) => {
                assert!(d.accepted());
                logged.push(seq);
            }
            None => break d,
        }
        assert!(logged.len() < 100, "the log never filled");
    };
    assert_eq!(
        (full.outcome, full.reason),
        (Outcome::AskStaff, Reason::LogFull)
    );
    assert_eq!(full.card_serial, None, "the card was not even read");
    assert_eq!(rig.t().wire_stats().exchanges as usize, 2 * logged.len());
    // After a restart still full, still everything there.
    rig.reboot();
    let d = rig.t().tap(&mut card, ServiceRequest::Transit);
    assert_eq!(d.reason, Reason::LogFull);
    let state = rig.t().state().log;
    assert_eq!(state.pending as usize, logged.len());
    // Upload everything; the space comes back and the sequence goes on.
    let mut buf = [0u8; 8192];
    let batch = rig.t().export_log_batch(1000, &mut buf).unwrap().unwrap();
    let seqs: Vec<u32> = decode_batch(&rig, batch.wire).iter().map(|r| r.0).collect();
    assert_eq!(seqs, logged);
    let last = batch.last_seq;
    rig.t().acknowledge_upload(last).unwrap();
    rig.clock().advance(100);
    let d = rig.t().tap(&mut card, ServiceRequest::Transit);
    assert!(d.accepted());
    assert_eq!(d.log_seq, Some(last + 1));
}

#[test]
fn a_power_cut_while_logging_a_tap_keeps_every_committed_record() {
    // Aim the cut at each flash operation of the record's append, for a log whose head has room
    // and for one whose next record opens a new sector.
    for prior in [3usize, 0] {
        let mut twin = Rig::new();
        let mut card = twin.card(63, 10);
        let fill = |rig: &mut Rig, card: &mut _| {
            // Fill until the head sector's next record needs a new sector, when prior == 0.
            let mut n = 0;
            loop {
                let before = rig.t().state().log.used_sectors;
                rig.clock().advance(1);
                let d = rig.t().tap(card, ServiceRequest::Employment);
                assert!(d.accepted());
                n += 1;
                let after = rig.t().state().log.used_sectors;
                if prior > 0 && n == prior {
                    break;
                }
                if prior == 0 && after > before && n > 1 {
                    break;
                }
            }
            n
        };
        let n = fill(&mut twin, &mut card);
        let ops_before = twin.t().partitions_mut().3.ops();
        twin.clock().advance(1);
        assert!(twin
            .t()
            .tap(&mut card, ServiceRequest::Employment)
            .accepted());
        let ops = twin.t().partitions_mut().3.ops() - ops_before;
        assert!(ops >= 2);
        for cut in 0..ops {
            let mut rig = Rig::new();
            let mut card = rig.card(63, 10);
            assert_eq!(fill(&mut rig, &mut card), n);
            let records: Vec<(u32, Vec<u8>)> = rig
                .t()
                .log()
                .records()
                .map(|r| (r.seq, r.payload.to_vec()))
                .collect();
            rig.t()
                .partitions_mut()
                .3
                .cut_after(cut, terminal_core::ram_flash::Tear::Half);
            rig.clock().advance(1);
            let d = rig.t().tap(&mut card, ServiceRequest::Employment);
            // The record could not be committed: never an unlogged acceptance.
            assert_eq!(
                (d.outcome, d.reason, d.log_seq),
                (Outcome::AskStaff, Reason::LogFull, None)
            );
            rig.reboot();
            let after: Vec<(u32, Vec<u8>)> = rig
                .t()
                .log()
                .records()
                .map(|r| (r.seq, r.payload.to_vec()))
                .collect();
            assert_eq!(after, records, "prior={prior} cut={cut}");
            rig.clock().advance(1);
            let d = rig.t().tap(&mut card, ServiceRequest::Employment);
            assert_eq!(d.log_seq, Some(records.len() as u32));
            let mut buf = [0u8; 8192];
            let batch = rig.t().export_log_batch(1000, &mut buf).unwrap().unwrap();
            assert_eq!(decode_batch(&rig, batch.wire).len(), records.len() + 1);
        }
    }
}
