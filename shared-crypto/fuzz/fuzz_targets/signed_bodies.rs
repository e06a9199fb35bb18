//! Every signed body decoder (the step after verification), fed arbitrary bytes: the first byte
//! picks the kind, the rest is the body. Nothing may panic; decoded lists are walked to the end.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared_crypto::model::*;
use shared_crypto::wire::decode_versioned;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 12 {
        0 => {
            if let Ok(c) = decode_versioned::<CredentialBody>(body) {
                let _ = c.check_structure();
                let _ = c.card_public_key();
                let _ = c.digests.iter().count();
                let _ = c.check_time(1_800_000_000);
            }
        }
        1 => {
            if let Ok(c) = decode_versioned::<KeyCertificateBody>(body) {
                let _ = KeyCertificate::from_trusted_body(c, [0; 8]);
            }
        }
        2 => {
            if let Ok(b) = decode_versioned::<TrustBundleBody>(body) {
                let _ = b.certs.iter().count();
            }
        }
        3 => {
            let _ = decode_versioned::<StatusListBody>(body);
        }
        4 => {
            if let Ok(d) = decode_versioned::<StatusDeltaBody>(body) {
                let _ = d.check_continues(3);
            }
        }
        5 => {
            let _ = decode_versioned::<TapRequestBody>(body);
        }
        6 => {
            if let Ok(r) = decode_versioned::<TapResponseBody>(body) {
                for d in r.disclosures.iter() {
                    let _ = d.typed_value();
                }
            }
        }
        7 => {
            let _ = decode_versioned::<ReceiptBody>(body);
        }
        8 => {
            let _ = decode_versioned::<VoucherBody>(body);
        }
        9 => {
            if let Ok(b) = decode_versioned::<LogBatchBody>(body) {
                let _ = b.check_sequence();
                let _ = b.records.iter().count();
            }
        }
        10 => {
            let _ = decode_versioned::<ServiceRulesBody>(body);
        }
        _ => {
            let _ = decode_versioned::<CardBlockBody>(body);
        }
    }
});
