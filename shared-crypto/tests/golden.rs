//! Golden files: one encoded example of every format, checked in under `shared-crypto/golden/`.
//!
//! Each file is decoded (and, when signed, verified) by this test, and today's encoder must produce
//! it byte for byte, so any format change shows up as a changed file in review. To accept a
//! deliberate change: `UPDATE_GOLDEN=1 cargo test -p shared-crypto --test golden`, then bump the
//! format version if old data can no longer be read. `UPDATE_GOLDEN=tap_request,tap_response`
//! rewrites only the named files (so one format's change leaves the others' files alone).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use shared_crypto::model::*;
use shared_crypto::Signed;

fn golden(name: &str, fresh: &[u8]) -> Vec<u8> {
    let path = format!("{}/golden/{name}.bin", env!("CARGO_MANIFEST_DIR"));
    let update = std::env::var("UPDATE_GOLDEN").ok();
    let selected = update
        .as_deref()
        .is_some_and(|v| v == "1" || v.split(',').any(|n| n.trim() == name));
    if selected {
        std::fs::create_dir_all(format!("{}/golden", env!("CARGO_MANIFEST_DIR"))).unwrap();
        std::fs::write(&path, fresh).unwrap();
    }
    let stored = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}; run with UPDATE_GOLDEN=1 to create it"));
    assert_eq!(
        stored, fresh,
        "{name}: the encoder no longer produces the golden bytes (a format change?)"
    );
    stored
}

#[test]
fn every_format_matches_its_golden_file() {
    let k = keys();
    let h = holder();

    let b = golden("credential", &credential(&k, &h));
    let c: CredentialBody = Signed::decode(&b)
        .unwrap()
        .open(&[], &pk(&k.issuer))
        .unwrap();
    assert_eq!(c.status_index, 42);

    let b = golden(
        "key_certificate",
        &cert(
            &k.root,
            &k.terminal,
            Role::Terminal,
            "bus 42",
            ServiceSet(1),
        ),
    );
    let s = Signed::decode(&b).unwrap();
    KeyCertificate::verify(&s, &pk(&k.root), Role::Terminal, T0 + 1).unwrap();

    let b = golden("trust_bundle", &trust_bundle(&k, 5));
    assert_eq!(
        TrustBundle::verify(&b, &pk(&k.root), None)
            .unwrap()
            .body
            .certs
            .len(),
        3
    );

    let b = golden("status_list_signed", &status_list(&k, 3));
    let l: StatusListBody = Signed::decode(&b)
        .unwrap()
        .open(&[], &pk(&k.status))
        .unwrap();
    assert_eq!(l.list, LIST_BYTES);
    // The payload is a real list, not opaque bytes: it parses and answers look-ups.
    let view = shared_crypto::status_list::StatusListView::parse(l.list).unwrap();
    view.validate().unwrap();
    assert_eq!(view.size(), 1000);
    let first_revoked = view.iter_revoked().next().unwrap().unwrap();
    assert!(view.is_revoked(first_revoked).unwrap());

    let b = golden("status_delta", &status_delta(&k));
    let d: StatusDeltaBody = Signed::decode(&b)
        .unwrap()
        .open(&[], &pk(&k.status))
        .unwrap();
    let added = shared_crypto::status_list::IndexSetView::parse(d.added).unwrap();
    assert!(!added.is_empty());
    // The signed delta applies to the signed list and revokes exactly what it adds.
    let mut applied = Vec::new();
    shared_crypto::status_list::apply_delta(&view, &added, &mut applied).unwrap();
    let after = shared_crypto::status_list::StatusListView::parse(&applied).unwrap();
    assert_eq!(after.revoked_count(), view.revoked_count() + added.len());
    for i in added.iter() {
        assert!(!view.is_revoked(i).unwrap() && after.is_revoked(i).unwrap());
    }

    let b = golden("tap_request", &tap_request(&k));
    let r: TapRequestBody = Signed::decode(&b)
        .unwrap()
        .open(&CHALLENGE, &pk(&k.terminal))
        .unwrap();
    assert_eq!(r.debit, None);
    let b = golden("tap_request_welfare", &tap_request_welfare(&k));
    let r: TapRequestBody = Signed::decode(&b)
        .unwrap()
        .open(&CHALLENGE, &pk(&k.terminal))
        .unwrap();
    assert_eq!((r.service, r.debit), (Service::Welfare, Some(INTENT)));
    // The body ends with the intent: `01` (some), amount 20, the 16-byte reference.
    let body = Signed::decode(&b).unwrap().body;
    assert_eq!(body[0], 2, "format version 2");
    assert_eq!(&body[body.len() - 18..body.len() - 16], &[0x01, 20]);
    assert_eq!(&body[body.len() - 16..], &[0x5A; 16]);
    // A version-1 body (the same fields before `debit`) is an unknown version, not a bad one.
    let mut v1 = Signed::decode(&golden("tap_request", &tap_request(&k)))
        .unwrap()
        .body
        .to_vec();
    v1.pop();
    v1[0] = 1;
    assert!(matches!(
        shared_crypto::wire::decode_versioned::<TapRequestBody>(&v1),
        Err(shared_crypto::Error::UnknownVersion {
            expected: 2,
            found: 1,
            ..
        })
    ));

    let auth = golden("terminal_auth", &terminal_auth(&k));
    decode_command::<TerminalAuth>(&auth).unwrap();

    let b = golden("tap_response", &tap_response(&k, &h));
    let ctx = transcript_hash(&CHALLENGE, &auth);
    let r: TapResponseBody = Signed::decode(&b)
        .unwrap()
        .open(&ctx, &pk(&k.card))
        .unwrap();
    assert_eq!(r.purse, None);

    let auth = golden("terminal_auth_welfare", &terminal_auth_welfare(&k));
    decode_command::<TerminalAuth>(&auth).unwrap();
    let b = golden("tap_response_welfare", &tap_response_welfare(&k, &h));
    let ctx = transcript_hash(&CHALLENGE, &auth);
    let r: TapResponseBody = Signed::decode(&b)
        .unwrap()
        .open(&ctx, &pk(&k.card))
        .unwrap();
    assert_eq!(r.purse, Some(PURSE));

    let b = golden("receipt", &receipt(&k));
    let r: ReceiptBody = Signed::decode(&b).unwrap().open(&[], &pk(&k.card)).unwrap();
    assert_eq!(r, receipt_body());

    let b = golden("voucher", &voucher(&k));
    let _: VoucherBody = Signed::decode(&b)
        .unwrap()
        .open(&[], &pk(&k.voucher))
        .unwrap();

    let b = golden("service_rules", &service_rules(&k));
    let _: ServiceRulesBody = Signed::decode(&b)
        .unwrap()
        .open(&[], &pk(&k.status))
        .unwrap();

    let b = golden("card_block", &card_block(&k));
    let _: CardBlockBody = Signed::decode(&b)
        .unwrap()
        .open(&[], &pk(&k.issuer))
        .unwrap();

    let b = golden("log_batch", &log_batch(&k));
    let lb: LogBatchBody = Signed::decode(&b)
        .unwrap()
        .open(&[], &pk(&k.terminal))
        .unwrap();
    lb.check_sequence().unwrap();

    let b = golden("select_response", &select_response());
    assert_eq!(
        decode_command::<SelectResponse>(&b).unwrap().life_cycle,
        LifeCycle::Personalized
    );
    let b = golden("debit_request", &debit_request());
    assert_eq!(decode_command::<DebitRequest>(&b).unwrap().amount, 20);
    let b = golden("credit_command", &credit_command(&k));
    decode_command::<CreditCommand>(&b).unwrap();
    let b = golden("block_command", &block_command(&k));
    decode_command::<BlockCommand>(&b).unwrap();
    let b = golden("tap_record", &tap_record_plain());
    assert_eq!(decode_plain::<TapRecord>(&b).unwrap().seq, 5);
}
