//! Every signed kind against every way it can be wrong: valid, wrong key, substituted signer, wrong
//! domain tag, wrong context, each flipped bit of the body, every truncation, a trailing byte
//! outside and inside the signed body, an unknown version; plus validity windows, epochs and
//! disclosures where the kind has them.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use shared_crypto::model::*;
use shared_crypto::sig::{sign_body, Domain};
use shared_crypto::wire::Versioned;
use shared_crypto::{Error, P256Signer, PublicKey, Signed};

const ALL_DOMAINS: [Domain; 12] = [
    Domain::Credential,
    Domain::KeyCertificate,
    Domain::TrustBundle,
    Domain::StatusList,
    Domain::StatusDelta,
    Domain::TapRequest,
    Domain::TapResponse,
    Domain::Receipt,
    Domain::Voucher,
    Domain::LogBatch,
    Domain::ServiceRules,
    Domain::CardBlock,
];

/// Runs the whole refusal matrix on one signed object of kind `T`.
fn matrix<'a, T>(wire: &'a [u8], signer: &P256Signer, context: &[u8], other: &P256Signer)
where
    T: Versioned<'a> + PartialEq + core::fmt::Debug,
{
    let key = signer.public_key();
    let signed = Signed::decode(wire).unwrap();
    assert_eq!(signed.signer, key.key_id());

    // Valid.
    let body: T = signed.open(context, &key).unwrap();
    let again: T = Signed::decode(wire).unwrap().open(context, &key).unwrap();
    assert_eq!(body, again);

    // Wrong key: refused before any curve work because the signer id differs.
    assert!(matches!(
        signed.open::<T>(context, &other.public_key()),
        Err(Error::WrongSigner { .. })
    ));

    // A substituted signer id (claiming the other key) does not verify under the other key.
    let mut forged = signed;
    forged.signer = other.public_key().key_id();
    assert_eq!(
        forged.open::<T>(context, &other.public_key()),
        Err(Error::Signature)
    );

    // Wrong domain tag: the same bytes presented as any other kind fail.
    for d in ALL_DOMAINS {
        if d != T::KIND {
            assert_eq!(
                signed.verify(d, context, &key),
                Err(Error::Signature),
                "{d:?}"
            );
        }
    }

    // Wrong context (another challenge or transcript).
    let mut ctx2 = context.to_vec();
    ctx2.push(0);
    assert_eq!(signed.open::<T>(&ctx2, &key), Err(Error::Signature));

    // Every flipped bit of the body (one per byte, rotating bit position) fails verification.
    for i in 0..signed.body.len() {
        let mut b = signed.body.to_vec();
        b[i] ^= 1 << (i % 8);
        let b: &'static [u8] = Box::leak(b.into_boxed_slice());
        let s = Signed { body: b, ..signed };
        assert_eq!(
            s.open::<T>(context, &key),
            Err(Error::Signature),
            "byte {i}"
        );
    }
    // And a flipped bit of the signature.
    let mut s2 = signed;
    s2.sig.0[10] ^= 0x20;
    assert_eq!(s2.open::<T>(context, &key), Err(Error::Signature));

    // Every truncation of the wire form is refused by the envelope decoder.
    for n in 0..wire.len() {
        assert!(Signed::decode(&wire[..n]).is_err(), "truncated to {n}");
    }

    // A trailing byte after the envelope.
    let mut long = wire.to_vec();
    long.push(0);
    assert!(matches!(
        Signed::decode(&long),
        Err(Error::TrailingBytes { count: 1, .. })
    ));

    // A trailing byte inside a correctly signed body: verified, then refused when decoded.
    let mut body_long = signed.body.to_vec();
    body_long.push(0);
    let body_long: &'static [u8] = Box::leak(body_long.into_boxed_slice());
    let s = sign_body(signer, T::KIND, context, body_long).unwrap();
    assert!(matches!(
        s.open::<T>(context, &key),
        Err(Error::TrailingBytes { count: 1, .. })
    ));

    // A truncated body, correctly signed, is refused as truncated (or malformed), never decoded.
    let s = sign_body(
        signer,
        T::KIND,
        context,
        &signed.body[..signed.body.len() - 1],
    )
    .unwrap();
    assert!(matches!(
        s.open::<T>(context, &key),
        Err(Error::Truncated { .. } | Error::Malformed { .. } | Error::TrailingBytes { .. })
    ));

    // An unknown version, correctly signed, is refused with the version named.
    let mut v2 = signed.body.to_vec();
    v2[0] = T::VERSION + 1;
    let v2: &'static [u8] = Box::leak(v2.into_boxed_slice());
    let s = sign_body(signer, T::KIND, context, v2).unwrap();
    assert_eq!(
        s.open::<T>(context, &key),
        Err(Error::UnknownVersion {
            kind: T::KIND,
            expected: T::VERSION,
            found: T::VERSION + 1
        })
    );
    // An empty body.
    let s = sign_body(signer, T::KIND, context, &[]).unwrap();
    assert_eq!(
        s.open::<T>(context, &key),
        Err(Error::Truncated { kind: T::KIND })
    );
}

#[test]
fn credential_matrix_and_rules() {
    let k = keys();
    let h = holder();
    let wire = credential(&k, &h);
    matrix::<CredentialBody>(&wire, &k.issuer, &[], &k.stranger);

    let c: CredentialBody = Signed::decode(&wire)
        .unwrap()
        .open(&[], &pk(&k.issuer))
        .unwrap();
    c.check_structure().unwrap();
    assert_eq!(c.card_public_key().unwrap(), pk(&k.card));
    // Validity window, both edges.
    assert_eq!(c.check_time(T0), Ok(()));
    assert_eq!(c.check_time(T0 + 5 * YEAR), Ok(()));
    assert_eq!(
        c.check_time(T0 - 1),
        Err(Error::NotYetValid {
            valid_from: T0,
            now: T0 - 1
        })
    );
    assert_eq!(
        c.check_time(T0 + 5 * YEAR + 1),
        Err(Error::Expired {
            valid_until: T0 + 5 * YEAR,
            now: T0 + 5 * YEAR + 1
        })
    );
}

#[test]
fn disclosures_checked_against_digests() {
    let k = keys();
    let h = holder();
    let wire = credential(&k, &h);
    let c: CredentialBody = Signed::decode(&wire)
        .unwrap()
        .open(&[], &pk(&k.issuer))
        .unwrap();

    let all = h.disclosures(AttributeSet::ALL);
    assert_eq!(c.check_disclosures(&all.as_items()), Ok(AttributeSet::ALL));
    let transit = h.disclosures(Service::Transit.release_policy());
    assert_eq!(
        c.check_disclosures(&transit.as_items()),
        Ok(Service::Transit.release_policy())
    );

    // A changed value (level 2 claimed as level 1) does not match its digest.
    let mut b = shared_crypto::wire::ItemsBuf::new();
    b.push(&Disclosure {
        attribute: AttributeId::Level,
        salt: h.salts[3],
        value: &[1],
    });
    assert_eq!(
        c.check_disclosures(&b.as_items()),
        Err(Error::DisclosureMismatch { attribute: 4 })
    );
    // A wrong salt.
    let mut b = shared_crypto::wire::ItemsBuf::new();
    b.push(&Disclosure {
        attribute: AttributeId::Level,
        salt: [0; 16],
        value: &h.values[3].1,
    });
    assert_eq!(
        c.check_disclosures(&b.as_items()),
        Err(Error::DisclosureMismatch { attribute: 4 })
    );
    // The right salt and value moved to another attribute id.
    let mut b = shared_crypto::wire::ItemsBuf::new();
    b.push(&Disclosure {
        attribute: AttributeId::Category,
        salt: h.salts[3],
        value: &h.values[3].1,
    });
    assert!(matches!(
        c.check_disclosures(&b.as_items()),
        Err(Error::DisclosureMismatch { attribute: 3 })
    ));
    // The same attribute twice.
    let mut b = shared_crypto::wire::ItemsBuf::new();
    for _ in 0..2 {
        b.push(&Disclosure {
            attribute: AttributeId::Level,
            salt: h.salts[3],
            value: &h.values[3].1,
        });
    }
    assert_eq!(
        c.check_disclosures(&b.as_items()),
        Err(Error::UnexpectedDisclosure { attribute: 4 })
    );
}

#[test]
fn key_certificate_matrix_and_rules() {
    let k = keys();
    let wire = cert(
        &k.root,
        &k.terminal,
        Role::Terminal,
        "bus 42",
        ServiceSet::of(&[Service::Transit]),
    );
    matrix::<KeyCertificateBody>(&wire, &k.root, &[], &k.stranger);
    let s = Signed::decode(&wire).unwrap();
    let root = pk(&k.root);
    let c = KeyCertificate::verify(&s, &root, Role::Terminal, T0 + 1).unwrap();
    assert!(c.body.services.contains(Service::Transit));
    assert!(!c.body.services.contains(Service::Employment));
    assert_eq!(
        KeyCertificate::verify(&s, &root, Role::Issuer, T0 + 1).unwrap_err(),
        Error::WrongRole {
            expected: Role::Issuer,
            found: Role::Terminal
        }
    );
    assert!(matches!(
        KeyCertificate::verify(&s, &root, Role::Terminal, T0 - 1),
        Err(Error::NotYetValid { .. })
    ));
    assert!(matches!(
        KeyCertificate::verify(&s, &root, Role::Terminal, T0 + 5 * YEAR + 1),
        Err(Error::Expired { .. })
    ));
    // A certificate signed by a non-root key is refused.
    let rogue = cert(
        &k.stranger,
        &k.terminal,
        Role::Terminal,
        "rogue",
        ServiceSet(1),
    );
    assert!(KeyCertificate::verify(
        &Signed::decode(&rogue).unwrap(),
        &root,
        Role::Terminal,
        T0 + 1
    )
    .is_err());
    // A certificate whose key id is not its key's hash is refused even when root-signed.
    let body = KeyCertificateBody {
        key_id: [9; 8],
        role: Role::Terminal,
        subject: "liar",
        region: 110105,
        services: ServiceSet(1),
        public_key: k.terminal.public_key().to_bytes(),
        valid_from: T0,
        valid_until: T0 + YEAR,
    };
    let bad = shared_crypto::sig::sign(&body, &[], &k.root).unwrap();
    assert_eq!(
        KeyCertificate::verify(
            &Signed::decode(&bad).unwrap(),
            &root,
            Role::Terminal,
            T0 + 1
        ),
        Err(Error::KeyIdMismatch)
    );
}

#[test]
fn trust_bundle_matrix_epochs_and_lookup() {
    let k = keys();
    let wire = trust_bundle(&k, 5);
    matrix::<TrustBundleBody>(&wire, &k.root, &[], &k.stranger);
    let root = pk(&k.root);
    let b = TrustBundle::verify(&wire, &root, None).unwrap();
    assert_eq!(b.body.epoch, 5);
    assert!(TrustBundle::verify(&wire, &root, Some(4)).is_ok());
    assert_eq!(
        TrustBundle::verify(&wire, &root, Some(5)).unwrap_err(),
        Error::StaleEpoch {
            installed: 5,
            offered: 5
        }
    );
    assert!(matches!(
        TrustBundle::verify(&wire, &root, Some(9)),
        Err(Error::StaleEpoch { .. })
    ));
    let issuer = b
        .find(&pk(&k.issuer).key_id(), Role::Issuer, T0 + 10)
        .unwrap();
    assert_eq!(issuer.key, pk(&k.issuer));
    assert!(matches!(
        b.find(&pk(&k.issuer).key_id(), Role::Voucher, T0 + 10),
        Err(Error::WrongRole { .. })
    ));
    assert_eq!(
        b.find(&pk(&k.stranger).key_id(), Role::Issuer, T0 + 10)
            .unwrap_err(),
        Error::UnknownKey {
            key_id: pk(&k.stranger).key_id()
        }
    );
    assert!(matches!(
        b.find(&pk(&k.issuer).key_id(), Role::Issuer, T0 + 6 * YEAR),
        Err(Error::Expired { .. })
    ));
    // A bundle that smuggles in a certificate not signed by the root is refused as a whole.
    let certs: shared_crypto::wire::ItemsBuf = [cert(
        &k.stranger,
        &k.issuer,
        Role::Issuer,
        "x",
        ServiceSet::NONE,
    )]
    .iter()
    .map(|c| Signed::decode(c).unwrap())
    .collect();
    let bad = shared_crypto::sig::sign(
        &TrustBundleBody {
            epoch: 6,
            issued_at: T0,
            certs: certs.as_items(),
        },
        &[],
        &k.root,
    )
    .unwrap();
    assert!(TrustBundle::verify(&bad, &root, Some(5)).is_err());
}

#[test]
fn status_list_and_delta_matrix_and_epochs() {
    let k = keys();
    matrix::<StatusListBody>(&status_list(&k, 3), &k.status, &[], &k.stranger);
    let d = status_delta(&k);
    matrix::<StatusDeltaBody>(&d, &k.status, &[], &k.stranger);
    let d: StatusDeltaBody = Signed::decode(&d)
        .unwrap()
        .open(&[], &pk(&k.status))
        .unwrap();
    assert_eq!(d.check_continues(1), Ok(()));
    assert_eq!(
        d.check_continues(2),
        Err(Error::EpochMismatch {
            installed: 2,
            from: 1
        })
    );
    assert_eq!(
        d.check_continues(0),
        Err(Error::EpochMismatch {
            installed: 0,
            from: 1
        })
    );
}

#[test]
fn tap_request_and_response_matrix() {
    let k = keys();
    matrix::<TapRequestBody>(&tap_request(&k), &k.terminal, &CHALLENGE, &k.stranger);
    let h = holder();
    let ctx = transcript_hash(&CHALLENGE, &terminal_auth(&k));
    let resp = tap_response(&k, &h);
    matrix::<TapResponseBody>(&resp, &k.card, &ctx, &k.stranger);

    // A response replayed into another session (other challenge) fails.
    let other_ctx = transcript_hash(&[0xDD; 16], &terminal_auth(&k));
    assert_eq!(
        Signed::decode(&resp)
            .unwrap()
            .open::<TapResponseBody>(&other_ctx, &pk(&k.card)),
        Err(Error::Signature)
    );
    // A copied credential presented with a transcript signed by another key (a clone) fails
    // against the card key the credential names.
    let body: TapResponseBody = Signed::decode(&resp)
        .unwrap()
        .open(&ctx, &pk(&k.card))
        .unwrap();
    let cred: CredentialBody = body.credential.open(&[], &pk(&k.issuer)).unwrap();
    let clone = shared_crypto::sig::sign(&body, &ctx, &k.stranger).unwrap();
    let clone = Signed::decode(&clone).unwrap();
    assert!(clone
        .open::<TapResponseBody>(&ctx, &cred.card_public_key().unwrap())
        .is_err());
    // The disclosures are exactly the employment policy.
    assert_eq!(
        cred.check_disclosures(&body.disclosures),
        Ok(Service::Employment.release_policy())
    );
}

#[test]
fn receipt_voucher_rules_block_batch_matrix() {
    let k = keys();
    matrix::<ReceiptBody>(&receipt(&k), &k.card, &[], &k.stranger);
    matrix::<VoucherBody>(&voucher(&k), &k.voucher, &[], &k.stranger);
    matrix::<ServiceRulesBody>(&service_rules(&k), &k.status, &[], &k.stranger);
    matrix::<CardBlockBody>(&card_block(&k), &k.issuer, &[], &k.stranger);
    let batch = log_batch(&k);
    matrix::<LogBatchBody>(&batch, &k.terminal, &[], &k.stranger);
    let b: LogBatchBody = Signed::decode(&batch)
        .unwrap()
        .open(&[], &pk(&k.terminal))
        .unwrap();
    b.check_sequence().unwrap();
    let recs: Vec<_> = b.records.iter().collect();
    assert_eq!(recs.len(), 3);
    let r: ReceiptBody = recs[1].receipt.unwrap().open(&[], &pk(&k.card)).unwrap();
    assert_eq!(r, receipt_body());
}

#[test]
fn log_batch_sequence_rules() {
    let k = keys();
    let records: shared_crypto::wire::ItemsBuf =
        [10u32, 12].iter().map(|s| tap_record(*s, None)).collect();
    let b = LogBatchBody {
        terminal: k.terminal.public_key().key_id(),
        first_seq: 10,
        last_seq: 11,
        created_at: T0,
        records: records.as_items(),
    };
    assert!(b.check_sequence().is_err(), "a gap inside a batch");
    let records: shared_crypto::wire::ItemsBuf =
        [10u32, 11].iter().map(|s| tap_record(*s, None)).collect();
    let b = LogBatchBody {
        last_seq: 12,
        records: records.as_items(),
        ..b
    };
    assert!(b.check_sequence().is_err(), "last_seq beyond the records");
    let empty = shared_crypto::wire::ItemsBuf::new();
    let b = LogBatchBody {
        records: empty.as_items(),
        ..b
    };
    assert!(b.check_sequence().is_err(), "an empty batch");
}

#[test]
fn command_data_rejects_bad_versions_and_trailing_bytes() {
    let k = keys();
    type Decoder = fn(&[u8]) -> Result<(), Error>;
    let cases: Vec<(Vec<u8>, Decoder)> = vec![
        (select_response(), |b| {
            decode_command::<SelectResponse>(b).map(|_| ())
        }),
        (terminal_auth(&k), |b| {
            decode_command::<TerminalAuth>(b).map(|_| ())
        }),
        (debit_request(), |b| {
            decode_command::<DebitRequest>(b).map(|_| ())
        }),
        (credit_command(&k), |b| {
            decode_command::<CreditCommand>(b).map(|_| ())
        }),
        (block_command(&k), |b| {
            decode_command::<BlockCommand>(b).map(|_| ())
        }),
    ];
    for (bytes, decode) in cases {
        decode(&bytes).unwrap();
        let mut v = bytes.clone();
        v[0] = 9;
        assert!(matches!(
            decode(&v),
            Err(Error::UnknownVersion { found: 9, .. })
        ));
        let mut t = bytes.clone();
        t.push(0);
        assert!(matches!(decode(&t), Err(Error::TrailingBytes { .. })));
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "truncated to {n}");
        }
    }
}

#[test]
fn enum_codes_outside_the_known_set_are_refused() {
    // A SelectResponse whose life-cycle byte is unknown.
    let mut b = select_response();
    b[2] = 0x7F;
    assert!(matches!(
        decode_command::<SelectResponse>(&b),
        Err(Error::Malformed { .. })
    ));
    // Attribute values are checked by type.
    assert!(AttributeValue::parse(AttributeId::Category, &[8]).is_err());
    assert!(AttributeValue::parse(AttributeId::Level, &[0]).is_err());
    assert!(AttributeValue::parse(AttributeId::Level, &[1, 2]).is_err());
    assert!(AttributeValue::parse(AttributeId::Region, &12u32.to_be_bytes()).is_err());
    assert!(AttributeValue::parse(AttributeId::Entitlements, &[0x80]).is_err());
    assert!(AttributeValue::parse(AttributeId::Name, &[0xFF, 0xFE]).is_err());
    assert!(AttributeValue::parse(AttributeId::Name, &[]).is_err());
    assert!(
        AttributeValue::parse(AttributeId::CertificateNumber, b"11010519491231002X82").is_err()
    );
    assert_eq!(
        AttributeValue::parse(AttributeId::CertificateNumber, b"11010519491231002X42")
            .unwrap()
            .id(),
        AttributeId::CertificateNumber
    );
}

#[test]
fn public_keys_only_compressed_on_the_wire() {
    let k = keys();
    let c = pk(&k.card).to_sec1();
    assert!(PublicKey::from_sec1(&c).is_ok());
    assert_eq!(PublicKey::from_sec1(&c[..32]), Err(Error::BadPublicKey));
    let mut bad = c;
    bad[0] = 0x04;
    assert_eq!(PublicKey::from_sec1(&bad), Err(Error::BadPublicKey));
    // x not on the curve for either parity: find one by trying.
    let mut x = c;
    let mut found = false;
    for i in 0..=255u8 {
        x[32] = i;
        let mut y = x;
        y[0] = 0x02;
        let mut z = x;
        z[0] = 0x03;
        if PublicKey::from_sec1(&y).is_err() && PublicKey::from_sec1(&z).is_err() {
            found = true;
            break;
        }
    }
    assert!(found, "some x coordinate is not on the curve");
}

#[test]
fn rejects_non_canonical_encodings() {
    // Found by the `envelope` fuzz target: postcard alone accepts over-long varints, which would give
    // one object several encodings. The body length 0x54 written as `d4 00` must be refused.
    let k = keys();
    let wire = receipt(&k);
    let s = Signed::decode(&wire).unwrap();
    assert!(s.body.len() < 0x80, "fixture assumption: one-byte length");
    let mut long = wire[..8].to_vec();
    long.push(s.body.len() as u8 | 0x80);
    long.push(0x00);
    long.extend_from_slice(&wire[9..]);
    assert!(matches!(
        Signed::decode(&long),
        Err(Error::Malformed { .. })
    ));
    // The same inside a signed body: the counter 3 written as `83 00`.
    let body = receipt_body();
    let mut b = shared_crypto::wire::encode_versioned(&body);
    let pos = 1 + 8; // version, card_serial
    assert_eq!(b[pos], 3);
    b.splice(pos..pos + 1, [0x83, 0x00]);
    let b: &'static [u8] = Box::leak(b.into_boxed_slice());
    let s = sign_body(&k.card, Domain::Receipt, &[], b).unwrap();
    assert!(matches!(
        s.open::<ReceiptBody>(&[], &pk(&k.card)),
        Err(Error::Malformed { .. })
    ));
}

#[test]
fn signing_input_is_what_signer_and_verifier_use() {
    use shared_crypto::sig::SigningInput;
    let k = keys();
    let wire = receipt(&k);
    let s = Signed::decode(&wire).unwrap();
    let key = pk(&k.card);
    let input = s.signing_input(Domain::Receipt, &[]);
    // The documented layout: tag || signer || context || body.
    let mut expected = vec![Domain::Receipt as u8];
    expected.extend_from_slice(&key.key_id());
    expected.extend_from_slice(s.body);
    assert_eq!(input.to_vec(), expected);
    assert_eq!(input.len(), expected.len());
    assert_eq!(input.parts().concat(), expected);
    // The signature verifies over the one concatenated string as well as over the parts...
    key.verify_parts(&[&expected], &s.sig.0).unwrap();
    key.verify_parts(&input.parts(), &s.sig.0).unwrap();
    // ...and not over the input of another kind or context.
    let other = s.signing_input(Domain::Voucher, &[]);
    assert_eq!(
        key.verify_parts(&other.parts(), &s.sig.0),
        Err(Error::Signature)
    );
    let ctx = s.signing_input(Domain::Receipt, b"x");
    assert_eq!(ctx.to_vec()[9], b'x');
    assert_eq!(
        key.verify_parts(&ctx.parts(), &s.sig.0),
        Err(Error::Signature)
    );
    // A context sits between the signer and the body.
    let with_ctx = SigningInput::new(Domain::TapRequest, [1; 8], &[9, 9], &[5]);
    assert_eq!(with_ctx.to_vec(), [0x06, 1, 1, 1, 1, 1, 1, 1, 1, 9, 9, 5]);
    assert!(!with_ctx.is_empty());
    // What sign_body signs is exactly this input.
    let signed = sign_body(&k.stranger, Domain::LogBatch, b"ctx", b"body").unwrap();
    let input = SigningInput::new(Domain::LogBatch, signed.signer, b"ctx", b"body");
    pk(&k.stranger)
        .verify_parts(&[&input.to_vec()], &signed.sig.0)
        .unwrap();
}

#[test]
fn uncompressed_keys_decode_to_the_same_key() {
    let k = keys();
    for signer in [&k.card, &k.terminal, &k.root] {
        let key = pk(signer);
        let u = key.to_sec1_uncompressed();
        assert_eq!(u[0], 0x04);
        assert_eq!(&u[1..33], &key.to_sec1()[1..]);
        // The parity of y is what the compressed prefix says.
        assert_eq!(u[64] & 1, key.to_sec1()[0] & 1);
        assert_eq!(PublicKey::from_sec1_any(&u).unwrap(), key);
    }
}
