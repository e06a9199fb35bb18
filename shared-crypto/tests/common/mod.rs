//! Deterministic fixtures: fixed keys (RFC 6979 signatures are deterministic too), so the same
//! objects come out byte for byte on every run and can be compared with the golden files.
#![allow(clippy::unwrap_used, dead_code)]

use shared_crypto::certno::CertificateNumber;
use shared_crypto::model::*;
use shared_crypto::sig::{sign, Signed};
use shared_crypto::wire::{encode, encode_versioned, ItemsBuf};
use shared_crypto::{P256Signer, PublicKey};

/// 2026-01-01T00:00:00Z.
pub const T0: u64 = 1_767_225_600;
/// One year.
pub const YEAR: u64 = 365 * 24 * 3600;

pub fn key(n: u8) -> P256Signer {
    let mut s = [n; 32];
    s[0] = 0x01; // keep the scalar far below the group order
    P256Signer::from_bytes(&s).unwrap()
}

pub struct Keys {
    pub root: P256Signer,
    pub issuer: P256Signer,
    pub status: P256Signer,
    pub voucher: P256Signer,
    pub terminal: P256Signer,
    pub card: P256Signer,
    pub stranger: P256Signer,
}

pub fn keys() -> Keys {
    Keys {
        root: key(0x10),
        issuer: key(0x20),
        status: key(0x30),
        voucher: key(0x40),
        terminal: key(0x50),
        card: key(0x60),
        stranger: key(0x70),
    }
}

pub fn pk(s: &P256Signer) -> PublicKey {
    s.public_key()
}

pub fn cert(
    root: &P256Signer,
    subject: &P256Signer,
    role: Role,
    name: &str,
    services: ServiceSet,
) -> Vec<u8> {
    let body = KeyCertificateBody {
        key_id: subject.public_key().key_id(),
        role,
        subject: name,
        region: 110105,
        services,
        public_key: subject.public_key().to_bytes(),
        valid_from: T0,
        valid_until: T0 + 5 * YEAR,
    };
    sign(&body, &[], root).unwrap()
}

/// The holder's attribute values with fixed salts.
pub struct Holder {
    pub salts: Vec<[u8; 16]>,
    pub values: Vec<(AttributeId, Vec<u8>)>,
}

pub fn holder() -> Holder {
    let certno = CertificateNumber::parse("11010519491231002X42").unwrap();
    let vals: Vec<AttributeValue<'static>> = vec![
        AttributeValue::Name("张三"),
        AttributeValue::CertificateNumber(certno),
        AttributeValue::Category(certno.category),
        AttributeValue::Level(certno.level),
        AttributeValue::Region(110105),
        AttributeValue::BirthYear(1949),
        AttributeValue::Entitlements(Entitlements(
            Entitlements::FREE_TRANSIT | Entitlements::COMPANION | Entitlements::WELFARE_POINTS,
        )),
        AttributeValue::PhotoDigest([0xAB; 32]),
        AttributeValue::CertificateExpiry(T0 + 10 * YEAR),
    ];
    let mut buf = [0u8; MAX_VALUE_LEN];
    let values: Vec<(AttributeId, Vec<u8>)> = vals
        .iter()
        .map(|v| (v.id(), v.encode(&mut buf).to_vec()))
        .collect();
    let salts = (0..values.len()).map(|i| [i as u8 + 1; 16]).collect();
    Holder { salts, values }
}

impl Holder {
    pub fn digests(&self) -> ItemsBuf {
        self.values
            .iter()
            .zip(&self.salts)
            .map(|((id, v), salt)| AttributeDigest {
                attribute: *id,
                digest: attribute_digest(salt, *id, v),
            })
            .collect()
    }

    pub fn disclosures(&self, set: AttributeSet) -> ItemsBuf {
        let mut b = ItemsBuf::new();
        for ((id, v), salt) in self.values.iter().zip(&self.salts) {
            if set.contains(*id) {
                b.push(&Disclosure {
                    attribute: *id,
                    salt: *salt,
                    value: v,
                });
            }
        }
        b
    }
}

pub fn credential(k: &Keys, h: &Holder) -> Vec<u8> {
    let digests = h.digests();
    let body = CredentialBody {
        card_serial: [0xC0, 1, 2, 3, 4, 5, 6, 7],
        status_index: 42,
        valid_from: T0,
        valid_until: T0 + 5 * YEAR,
        card_key: k.card.public_key().to_bytes(),
        digests: digests.as_items(),
    };
    sign(&body, &[], &k.issuer).unwrap()
}

pub const CHALLENGE: [u8; 16] = [0xCC; 16];

pub fn tap_request(k: &Keys) -> Vec<u8> {
    let body = TapRequestBody {
        terminal_nonce: [0x7E; 16],
        service: Service::Employment,
        requested: Service::Employment.release_policy(),
        time: T0 + 100,
        debit: None,
    };
    sign(&body, &CHALLENGE, &k.terminal).unwrap()
}

/// The debit a welfare shop announces in its request.
pub const INTENT: DebitIntent = DebitIntent {
    amount: 20,
    reference: [0x5A; 16],
};

/// A welfare-point shop's request, carrying the debit it will ask for.
pub fn tap_request_welfare(k: &Keys) -> Vec<u8> {
    let body = TapRequestBody {
        terminal_nonce: [0x7F; 16],
        service: Service::Welfare,
        requested: Service::Welfare.release_policy(),
        time: T0 + 200,
        debit: Some(INTENT),
    };
    sign(&body, &CHALLENGE, &k.terminal).unwrap()
}

fn terminal_auth_with(k: &Keys, service: Service, req: &[u8]) -> Vec<u8> {
    let cert = cert(
        &k.root,
        &k.terminal,
        Role::Terminal,
        "transit gate 1",
        ServiceSet::of(&[service]),
    );
    encode_versioned(&TerminalAuth {
        terminal_cert: Signed::decode(&cert).unwrap(),
        request: Signed::decode(req).unwrap(),
    })
}

pub fn terminal_auth(k: &Keys) -> Vec<u8> {
    terminal_auth_with(k, Service::Employment, &tap_request(k))
}

pub fn terminal_auth_welfare(k: &Keys) -> Vec<u8> {
    terminal_auth_with(k, Service::Welfare, &tap_request_welfare(k))
}

pub fn tap_response(k: &Keys, h: &Holder) -> Vec<u8> {
    let cred = credential(k, h);
    let disclosures = h.disclosures(Service::Employment.release_policy());
    let body = TapResponseBody {
        credential: Signed::decode(&cred).unwrap(),
        disclosures: disclosures.as_items(),
        purse: None,
    };
    let ctx = transcript_hash(&CHALLENGE, &terminal_auth(k));
    sign(&body, &ctx, &k.card).unwrap()
}

/// The purse a card reports in its welfare answer.
pub const PURSE: PurseState = PurseState {
    balance: 480,
    counter: 3,
};

/// The card's answer to [`terminal_auth_welfare`]: welfare attributes and the signed purse.
pub fn tap_response_welfare(k: &Keys, h: &Holder) -> Vec<u8> {
    let cred = credential(k, h);
    let disclosures = h.disclosures(Service::Welfare.release_policy());
    let body = TapResponseBody {
        credential: Signed::decode(&cred).unwrap(),
        disclosures: disclosures.as_items(),
        purse: Some(PURSE),
    };
    let ctx = transcript_hash(&CHALLENGE, &terminal_auth_welfare(k));
    sign(&body, &ctx, &k.card).unwrap()
}

pub fn trust_bundle(k: &Keys, epoch: u64) -> Vec<u8> {
    let certs: ItemsBuf = [
        cert(
            &k.root,
            &k.issuer,
            Role::Issuer,
            "Dongcheng DPF",
            ServiceSet::NONE,
        ),
        cert(
            &k.root,
            &k.status,
            Role::StatusSigner,
            "status",
            ServiceSet::NONE,
        ),
        cert(
            &k.root,
            &k.voucher,
            Role::Voucher,
            "welfare",
            ServiceSet::NONE,
        ),
    ]
    .iter()
    .map(|c| Signed::decode(c).unwrap())
    .collect();
    let body = TrustBundleBody {
        epoch,
        issued_at: T0,
        certs: certs.as_items(),
    };
    sign(&body, &[], &k.root).unwrap()
}

/// A real compressed list: the status-list codec's own golden file (1000 entries, about 2 %
/// revoked), so the signed envelope's golden file carries what a terminal really installs.
pub const LIST_BYTES: &[u8] = include_bytes!("../../golden/status_list.bin");

/// A real index set (the codec's golden delta, which applies to [`LIST_BYTES`]).
pub const DELTA_ADDED: &[u8] = include_bytes!("../../golden/index_set.bin");

pub fn status_list(k: &Keys, epoch: u64) -> Vec<u8> {
    sign(
        &StatusListBody {
            epoch,
            issued_at: T0 + epoch,
            list: LIST_BYTES,
        },
        &[],
        &k.status,
    )
    .unwrap()
}

pub fn status_delta(k: &Keys) -> Vec<u8> {
    sign(
        &StatusDeltaBody {
            from_epoch: 1,
            to_epoch: 2,
            issued_at: T0 + 2,
            size: 1000,
            added: DELTA_ADDED,
        },
        &[],
        &k.status,
    )
    .unwrap()
}

pub fn receipt_body() -> ReceiptBody {
    ReceiptBody {
        card_serial: [0xC0, 1, 2, 3, 4, 5, 6, 7],
        counter: 3,
        amount: 20,
        balance_after: 80,
        terminal: key(0x50).public_key().key_id(),
        time: T0 + 200,
        reference: [0x5A; 16],
    }
}

pub fn receipt(k: &Keys) -> Vec<u8> {
    sign(&receipt_body(), &[], &k.card).unwrap()
}

pub fn voucher(k: &Keys) -> Vec<u8> {
    sign(
        &VoucherBody {
            card_serial: [0xC0, 1, 2, 3, 4, 5, 6, 7],
            seq: 1,
            amount: 100,
            issued_at: T0 + 50,
            valid_until: T0 + YEAR,
        },
        &[],
        &k.voucher,
    )
    .unwrap()
}

pub fn service_rules(k: &Keys) -> Vec<u8> {
    sign(
        &ServiceRulesBody {
            epoch: 1,
            issued_at: T0,
            max_status_age_s: 3 * 24 * 3600,
            companion_window_s: 60,
            passback_s: 20,
            max_debit_points: 500,
            rehab_min_interval_s: 3600,
        },
        &[],
        &k.status,
    )
    .unwrap()
}

pub fn card_block(k: &Keys) -> Vec<u8> {
    sign(
        &CardBlockBody {
            card_serial: [0xC0, 1, 2, 3, 4, 5, 6, 7],
            time: T0 + 300,
            reason: 1,
        },
        &[],
        &k.issuer,
    )
    .unwrap()
}

pub fn tap_record<'a>(seq: u32, receipt: Option<Signed<'a>>) -> TapRecord<'a> {
    TapRecord {
        seq,
        time: T0 + 200 + seq as u64,
        service: Service::Welfare,
        outcome: Outcome::Accepted,
        reason: Reason::Ok,
        card_serial: Some([0xC0, 1, 2, 3, 4, 5, 6, 7]),
        status_index: Some(42),
        status_epoch: 7,
        status_issued_at: T0,
        receipt,
    }
}

pub fn log_batch(k: &Keys) -> Vec<u8> {
    let r = receipt(k);
    let records: ItemsBuf = (10..13)
        .map(|seq| tap_record(seq, (seq == 11).then(|| Signed::decode(&r).unwrap())))
        .collect();
    sign(
        &LogBatchBody {
            terminal: k.terminal.public_key().key_id(),
            first_seq: 10,
            last_seq: 12,
            created_at: T0 + 400,
            records: records.as_items(),
        },
        &[],
        &k.terminal,
    )
    .unwrap()
}

/// Plain (unsigned) encodings of the command-data formats.
pub fn select_response() -> Vec<u8> {
    encode_versioned(&SelectResponse {
        applet_version: 0x10,
        life_cycle: LifeCycle::Personalized,
        challenge: CHALLENGE,
    })
}

pub fn debit_request() -> Vec<u8> {
    encode_versioned(&DebitRequest {
        amount: 20,
        reference: [0x5A; 16],
        time: T0 + 200,
    })
}

pub fn credit_command(k: &Keys) -> Vec<u8> {
    let c = cert(
        &k.root,
        &k.voucher,
        Role::Voucher,
        "welfare",
        ServiceSet::NONE,
    );
    let v = voucher(k);
    encode_versioned(&CreditCommand {
        voucher_cert: Signed::decode(&c).unwrap(),
        voucher: Signed::decode(&v).unwrap(),
    })
}

pub fn block_command(k: &Keys) -> Vec<u8> {
    let c = cert(
        &k.root,
        &k.issuer,
        Role::Issuer,
        "Dongcheng DPF",
        ServiceSet::NONE,
    );
    let o = card_block(k);
    encode_versioned(&BlockCommand {
        issuer_cert: Signed::decode(&c).unwrap(),
        order: Signed::decode(&o).unwrap(),
    })
}

pub fn tap_record_plain() -> Vec<u8> {
    encode(&tap_record(5, None))
}
