//! SCP03 against published vectors, from both ends of the channel.
//!
//! * `../shared/vectors/scp03.json`: GlobalPlatform SCP03 command-level vectors (AES-128/192/256 at
//!   security levels 11, 03 and 33), transcribed from the unit tests of osmocom pySim. Each case is
//!   replayed as the host (INITIALIZE UPDATE, card cryptogram check, EXTERNAL AUTHENTICATE, five
//!   wrapped commands, one unwrapped answer) and as the card (the INITIALIZE UPDATE answer, the
//!   EXTERNAL AUTHENTICATE check, five unwrapped commands, one wrapped answer), byte for byte.
//! * `../shared/vectors/wycheproof/aes_cmac_test.json`: C2SP Wycheproof AES-CMAC (every case; key
//!   sizes other than 128/192/256 bits must be refused by the key constructor).
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use shared_crypto::scp03::{
    self, aes_cmac, diversify, AesKey, CardInit, HostInit, KeySet, Scp03Error,
};

fn load(rel: &str) -> Value {
    let path = format!("{}/../../shared/vectors/{rel}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn h(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn keyset(case: &Value) -> KeySet {
    let k = &case["keyset"];
    KeySet {
        kvn: k["kvn"].as_u64().unwrap() as u8,
        enc: AesKey::new(&h(&k["enc"])).unwrap(),
        mac: AesKey::new(&h(&k["mac"])).unwrap(),
        dek: AesKey::new(&h(&k["dek"])).unwrap(),
    }
}

const COMMANDS: [&str; 5] = [
    "get_eid_cmd",
    "case_1_apdu",
    "case_2_apdu",
    "case_3_apdu",
    "case_4_apdu",
];

#[test]
fn scp03_host_side_matches_all_vector_sets() {
    let v = load("scp03.json");
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 9);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let keys = keyset(case);
        let init_cmd = h(&case["init_upd_cmd"]);
        let host_challenge: [u8; 8] = init_cmd[5..13].try_into().unwrap();
        let init = HostInit::new(init_cmd[2], host_challenge);
        assert_eq!(
            init.command().to_vec(),
            init_cmd,
            "{name}: INITIALIZE UPDATE"
        );

        let ext = h(&case["ext_auth_cmd"]);
        let level = ext[2];
        let (mut session, info, ext_cmd) = init
            .authenticate(&keys, &h(&case["init_upd_rsp"]), level)
            .unwrap();
        assert_eq!(ext_cmd.to_vec(), ext, "{name}: EXTERNAL AUTHENTICATE");
        assert_eq!(info.div_data, [0u8; 10]);
        assert_eq!(session.level(), level);

        // The wrapped GET EID, its answer, then the four ISO cases, in this order (the MAC
        // chaining value and the encryption counter run through the whole sequence).
        let mut out = [0u8; 300];
        let n = session
            .wrap_command(&h(&v["plain"]["get_eid_cmd"]), &mut out)
            .unwrap();
        assert_eq!(
            &out[..n],
            &h(&case["get_eid_cmd"])[..],
            "{name}: get_eid_cmd"
        );
        let rsp = h(&case["get_eid_rsp"]);
        let n = session.unwrap_response(&rsp, 0x9000, &mut out).unwrap();
        assert_eq!(
            &out[..n],
            &h(&v["plain"]["get_eid_rsp"])[..],
            "{name}: get_eid_rsp"
        );
        for cmd in &COMMANDS[1..] {
            let n = session
                .wrap_command(&h(&v["plain"][cmd]), &mut out)
                .unwrap();
            assert_eq!(&out[..n], &h(&case[cmd])[..], "{name}: {cmd}");
        }
        println!("host side {name}: ok");
    }
}

#[test]
fn scp03_card_side_matches_all_vector_sets() {
    let v = load("scp03.json");
    for case in v["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let keys = keyset(case);
        let init_cmd = h(&case["init_upd_cmd"]);
        let rsp = h(&case["init_upd_rsp"]);
        let parsed = scp03::InitUpdateResponse::parse(&rsp).unwrap();
        let card = CardInit::new(
            &keys,
            parsed.div_data,
            parsed.i_param,
            init_cmd[5..13].try_into().unwrap(),
            parsed.card_challenge,
            parsed.sequence,
        );
        let mut enc = [0u8; 32];
        let n = card.response().encode(&mut enc);
        assert_eq!(&enc[..n], &rsp[..], "{name}: INITIALIZE UPDATE answer");

        let mut session = card
            .external_authenticate(&h(&case["ext_auth_cmd"]))
            .unwrap();
        let mut out = [0u8; 300];
        for cmd in COMMANDS {
            let n = session.unwrap_command(&h(&case[cmd]), &mut out).unwrap();
            assert_eq!(&out[..n], &h(&v["plain"][cmd])[..], "{name}: {cmd}");
            if cmd == "get_eid_cmd" {
                let n = session
                    .wrap_response(&h(&v["plain"]["get_eid_rsp"]), 0x9000, &mut out)
                    .unwrap();
                assert_eq!(
                    &out[..n],
                    &h(&case["get_eid_rsp"])[..],
                    "{name}: get_eid_rsp"
                );
            }
        }
        println!("card side {name}: ok");
    }
}

#[test]
fn scp03_pseudo_random_challenge_is_consistent() {
    // The vectors' card uses a pseudo-random challenge (i = 70) from an AID we do not know, so
    // only check the derivation's shape: deterministic, and dependent on counter and AID.
    let k = AesKey::new(&[0x40; 16]).unwrap();
    let a = scp03::pseudo_random_card_challenge(&k, &[0, 0, 1], &[0xA0, 0, 0, 1, 0x51]);
    assert_eq!(
        a,
        scp03::pseudo_random_card_challenge(&k, &[0, 0, 1], &[0xA0, 0, 0, 1, 0x51])
    );
    assert_ne!(
        a,
        scp03::pseudo_random_card_challenge(&k, &[0, 0, 2], &[0xA0, 0, 0, 1, 0x51])
    );
    assert_ne!(
        a,
        scp03::pseudo_random_card_challenge(&k, &[0, 0, 1], &[0xA0, 0, 0, 1, 0x52])
    );
}

#[test]
fn scp03_refusals() {
    let v = load("scp03.json");
    let case = &v["cases"].as_array().unwrap()[2]; // AES-128, level 33
    let keys = keyset(case);
    let init_cmd = h(&case["init_upd_cmd"]);
    let hc: [u8; 8] = init_cmd[5..13].try_into().unwrap();
    let rsp = h(&case["init_upd_rsp"]);

    // Host: wrong static keys -> card cryptogram mismatch.
    let mut wrong = keys;
    wrong.mac = AesKey::new(&[0u8; 16]).unwrap();
    assert_eq!(
        HostInit::new(0x30, hc)
            .authenticate(&wrong, &rsp, 0x33)
            .unwrap_err(),
        Scp03Error::Cryptogram
    );
    // Host: a tampered cryptogram.
    let mut bad = rsp.clone();
    bad[25] ^= 1;
    assert_eq!(
        HostInit::new(0x30, hc)
            .authenticate(&keys, &bad, 0x33)
            .unwrap_err(),
        Scp03Error::Cryptogram
    );
    // Host: wrong length, wrong protocol, wrong kvn, invalid level, level the card cannot do.
    assert_eq!(
        HostInit::new(0x30, hc)
            .authenticate(&keys, &rsp[..30], 0x33)
            .unwrap_err(),
        Scp03Error::Malformed
    );
    let mut p02 = rsp.clone();
    p02[11] = 0x02;
    assert_eq!(
        HostInit::new(0x30, hc)
            .authenticate(&keys, &p02, 0x33)
            .unwrap_err(),
        Scp03Error::KeyVersion
    );
    assert_eq!(
        HostInit::new(0x31, hc)
            .authenticate(&keys, &rsp, 0x33)
            .unwrap_err(),
        Scp03Error::KeyVersion
    );
    assert_eq!(
        HostInit::new(0x30, hc)
            .authenticate(&keys, &rsp, 0x00)
            .unwrap_err(),
        Scp03Error::SecurityLevel
    );
    let mut no_renc = rsp.clone();
    no_renc[12] = 0x10 | 0x20; // pseudo-random + R-MAC only
    assert_eq!(
        HostInit::new(0x30, hc)
            .authenticate(&keys, &no_renc, 0x33)
            .unwrap_err(),
        Scp03Error::SecurityLevel
    );

    // Host: a tampered R-MAC or encrypted answer.
    let (mut s, _, _) = HostInit::new(0x30, hc)
        .authenticate(&keys, &rsp, 0x33)
        .unwrap();
    let mut out = [0u8; 300];
    s.wrap_command(&h(&v["plain"]["get_eid_cmd"]), &mut out)
        .unwrap();
    let mut r = h(&case["get_eid_rsp"]);
    let last = r.len() - 1;
    r[last] ^= 1;
    assert_eq!(
        s.unwrap_response(&r, 0x9000, &mut out).unwrap_err(),
        Scp03Error::Mac
    );
    assert_eq!(
        s.unwrap_response(&r[..12], 0x9000, &mut out).unwrap_err(),
        Scp03Error::Mac
    );
    assert_eq!(
        s.unwrap_response(&r[..7], 0x9000, &mut out).unwrap_err(),
        Scp03Error::Malformed
    );
    // An error status passes through unprotected.
    assert_eq!(s.unwrap_response(&[], 0x6982, &mut out), Ok(0));
    // Too long for one protected APDU.
    let mut long = vec![0x80, 0xDA, 0xDF, 0x01, 240];
    long.extend_from_slice(&[0u8; 240]);
    assert_eq!(
        s.wrap_command(&long, &mut out).unwrap_err(),
        Scp03Error::TooLong
    );

    // Card: wrong host cryptogram, wrong MAC, wrong header, unsupported level.
    let parsed = scp03::InitUpdateResponse::parse(&rsp).unwrap();
    let card = CardInit::new(
        &keys,
        [0; 10],
        parsed.i_param,
        hc,
        parsed.card_challenge,
        parsed.sequence,
    );
    let ext = h(&case["ext_auth_cmd"]);
    let mut e = ext.clone();
    e[5] ^= 1;
    assert!(card.external_authenticate(&e).is_err());
    let mut e = ext.clone();
    e[20] ^= 1;
    assert_eq!(card.external_authenticate(&e).unwrap_err(), Scp03Error::Mac);
    let mut e = ext.clone();
    e[0] = 0x80;
    assert_eq!(
        card.external_authenticate(&e).unwrap_err(),
        Scp03Error::Malformed
    );
    let mut e = ext.clone();
    e[2] = 0x13; // a different level than the MAC covers
    assert_eq!(card.external_authenticate(&e).unwrap_err(), Scp03Error::Mac);
    let weak = CardInit::new(
        &keys,
        [0; 10],
        0x10,
        hc,
        parsed.card_challenge,
        parsed.sequence,
    );
    assert_eq!(
        weak.external_authenticate(&ext).unwrap_err(),
        Scp03Error::SecurityLevel
    );

    // Card: a tampered command is refused and leaves the session state as it was.
    let mut session = card.external_authenticate(&ext).unwrap();
    let mut cmd = h(&case["get_eid_cmd"]);
    cmd[7] ^= 1;
    assert_eq!(
        session.unwrap_command(&cmd, &mut out).unwrap_err(),
        Scp03Error::Mac
    );
    // Missing the secure-messaging bit.
    assert_eq!(
        session
            .unwrap_command(&h(&v["plain"]["get_eid_cmd"]), &mut out)
            .unwrap_err(),
        Scp03Error::Mac
    );
    let n = session
        .unwrap_command(&h(&case["get_eid_cmd"]), &mut out)
        .unwrap();
    assert_eq!(&out[..n], &h(&v["plain"]["get_eid_cmd"])[..]);
    // A replayed command fails (the chaining value and counter moved on).
    assert_eq!(
        session
            .unwrap_command(&h(&case["get_eid_cmd"]), &mut out)
            .unwrap_err(),
        Scp03Error::Mac
    );
}

#[test]
fn diversification_is_keyed_and_separated() {
    let master = [0x11u8; 16];
    let a = diversify(&master, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    let b = diversify(&master, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 11]);
    let c = diversify(&[0x12u8; 16], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert_eq!(a, diversify(&master, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]));
    assert_ne!(a, b);
    assert_ne!(a, c);
    assert!(a.enc != a.mac && a.mac != a.dek && a.enc != a.dek);
    // Pinned so that the issuance server and the card factory agree forever (computed by this
    // implementation of the documented KDF; see docs/protocol-card.md).
    let z = diversify(&[0u8; 16], &[0u8; 10]);
    let mut expect_enc = [0u8; 16];
    scp03::kdf(
        &AesKey::new(&[0u8; 16]).unwrap(),
        0x81,
        &[0u8; 10],
        &mut expect_enc,
    );
    assert_eq!(z.enc, expect_enc);
    let label = {
        let mut l = [0u8; 16];
        l[11] = 0x82;
        l[13] = 0x00;
        l[14] = 0x80;
        l[15] = 0x01;
        l
    };
    let mut msg = label.to_vec();
    msg.extend_from_slice(&[0u8; 10]);
    assert_eq!(z.mac, aes_cmac(&[0u8; 16], &msg).unwrap());
    // Golden: cards already in the field were keyed with these; the function must never change.
    // (Cross-checked with Python's `cryptography` CMAC over the documented derivation data.)
    let g = diversify(
        &[0x4D; 16],
        &[0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99],
    );
    assert_eq!(
        (hex::encode(g.enc), hex::encode(g.mac), hex::encode(g.dek)),
        (
            "8a7358daf658b833082c8c0fffea865d".to_string(),
            "867c616e5a0fd179f97cea514013b8a0".to_string(),
            "e80394d20e38599365f491b13ed24191".to_string()
        )
    );
}

#[test]
fn wycheproof_aes_cmac() {
    let v = load("wycheproof/aes_cmac_test.json");
    let (mut passed, mut refused_keys, mut total) = (0, 0, 0);
    for group in v["testGroups"].as_array().unwrap() {
        let tag_bits = group["tagSize"].as_u64().unwrap() as usize;
        for t in group["tests"].as_array().unwrap() {
            total += 1;
            let key = h(&t["key"]);
            let msg = h(&t["msg"]);
            let tag = h(&t["tag"]);
            let valid = t["result"].as_str().unwrap() == "valid";
            let id = t["tcId"].as_u64().unwrap();
            match aes_cmac(&key, &msg) {
                Ok(mac) => {
                    let ok = mac[..tag_bits / 8] == tag[..];
                    assert_eq!(ok, valid, "tcId {id}");
                    passed += 1;
                }
                Err(Scp03Error::KeyLength) => {
                    assert!(![16, 24, 32].contains(&key.len()), "tcId {id}");
                    assert!(!valid, "tcId {id}: a valid case with an unsupported key");
                    refused_keys += 1;
                }
                Err(e) => panic!("tcId {id}: {e:?}"),
            }
        }
    }
    println!(
        "Wycheproof AES-CMAC: {passed} cases checked (128/192/256-bit keys), {refused_keys} refused \
         for their key size, {total} total"
    );
    assert_eq!(passed + refused_keys, total);
    assert_eq!(total, v["numberOfTests"].as_u64().unwrap() as usize);
    assert!(passed >= 200);
}
