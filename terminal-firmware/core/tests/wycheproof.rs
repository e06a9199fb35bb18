//! Wycheproof ECDSA P-256 / SHA-256 (IEEE P1363 signatures) through the terminal's own verify
//! path: the key is parsed by [`Key::parse`] with the terminal's backend, exactly as a key
//! certificate's key is at install, and each signature goes through [`Verifier::verify_prehash`]
//! with the SHA-256 prehash, exactly as [`terminal_core::verify::verify`] calls it.
//!
//! Vectors: ../shared/vectors/wycheproof/ecdsa_secp256r1_sha256_p1363_test.json beside the
//! repository (C2SP/wycheproof, Apache-2.0); read in place, never copied into the repository.
//! The same file is embedded in the Cortex-M4 image, which runs it through the assembly backend
//! and the portable one (terminal-firmware/m4).
#![allow(clippy::unwrap_used)]

use shared_crypto::sig::sha256_parts;
use terminal_core::verify::Key;
use terminal_core::{P256Verifier, Verifier};

/// Every test in `ecdsa_secp256r1_sha256_p1363_test.json` (its `numberOfTests`), the one place
/// of this test that states the count: a truncated or replaced file fails here. The m4 image
/// states the same count in its build.rs (no crate depends on another for it).
const VECTORS: u64 = 262;

fn vectors() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/vectors/wycheproof/ecdsa_secp256r1_sha256_p1363_test.json"
    );
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {path}: {e} (../shared must sit beside the repo)"));
    serde_json::from_str(&text).unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length: {s}");
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// The compressed form the wire carries (`02`/`03` by the parity of y, then x).
fn compress(uncompressed: &[u8]) -> [u8; 33] {
    assert_eq!(uncompressed.len(), 65, "an uncompressed SEC1 point");
    assert_eq!(uncompressed[0], 0x04);
    let mut key = [0u8; 33];
    key[0] = 0x02 | (uncompressed[64] & 1);
    key[1..].copy_from_slice(&uncompressed[1..33]);
    key
}

/// What the terminal decides for one vector: refused when the signature cannot even travel (the
/// wire format has exactly 64 bytes for `r || s`), else the backend's answer.
fn terminal_verdict<V: Verifier>(verifier: &V, key: &Key<V::Key>, msg: &[u8], sig: &[u8]) -> bool {
    let Ok(sig) = <&[u8; 64]>::try_from(sig) else {
        return false;
    };
    verifier.verify_prehash(&key.key, &sha256_parts(&[msg]), sig)
}

#[test]
fn wycheproof_p1363_all_vectors_through_the_terminal_verifier() {
    let v = vectors();
    assert_eq!(v["numberOfTests"].as_u64(), Some(VECTORS));
    let verifier = P256Verifier;
    let (mut checked, mut valid, mut invalid, mut acceptable, mut not_64) = (0u64, 0, 0, 0, 0);
    let mut failures = Vec::new();
    for group in v["testGroups"].as_array().unwrap() {
        assert_eq!(group["sha"], "SHA-256");
        let sec1 = compress(&unhex(group["publicKey"]["uncompressed"].as_str().unwrap()));
        let key = Key::parse(&verifier, &sec1)
            .unwrap_or_else(|| panic!("the terminal refuses the group key {sec1:02x?}"));
        for t in group["tests"].as_array().unwrap() {
            let id = t["tcId"].as_u64().unwrap();
            let msg = unhex(t["msg"].as_str().unwrap());
            let sig = unhex(t["sig"].as_str().unwrap());
            if sig.len() != 64 {
                not_64 += 1;
            }
            let got = terminal_verdict(&verifier, &key, &msg, &sig);
            checked += 1;
            match t["result"].as_str().unwrap() {
                "valid" => {
                    valid += 1;
                    if !got {
                        failures.push(format!("tcId {id} valid but rejected: {}", t["comment"]));
                    }
                }
                "invalid" => {
                    invalid += 1;
                    if got {
                        failures.push(format!("tcId {id} invalid but accepted: {}", t["comment"]));
                    }
                }
                // Wycheproof lets an implementation go either way on these; none are in this
                // file, and counting them keeps the total honest if a new version adds some.
                "acceptable" => acceptable += 1,
                other => panic!("tcId {id}: unknown result {other:?}"),
            }
        }
    }
    println!(
        "wycheproof p1363 via the terminal verifier: {checked} checked ({valid} valid, {invalid} \
         invalid, {acceptable} acceptable; {not_64} without a 64-byte signature)"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked, VECTORS, "every vector of the file was checked");
    assert_eq!(valid + invalid + acceptable, VECTORS);
    // Both outcomes must occur, or a verifier that always says yes (or no) could pass.
    assert!(valid > 0 && invalid > 0, "{valid} valid, {invalid} invalid");
}

/// The verdict function is not a constant: a valid vector becomes invalid when one bit of its
/// message, its signature or its key changes.
#[test]
fn a_valid_vector_fails_when_altered() {
    let v = vectors();
    let verifier = P256Verifier;
    let group = &v["testGroups"][0];
    let uncompressed = unhex(group["publicKey"]["uncompressed"].as_str().unwrap());
    let sec1 = compress(&uncompressed);
    let key = Key::parse(&verifier, &sec1).unwrap();
    let t = group["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["result"] == "valid" && t["sig"].as_str().unwrap().len() == 128)
        .unwrap();
    let msg = unhex(t["msg"].as_str().unwrap());
    let sig = unhex(t["sig"].as_str().unwrap());
    assert!(terminal_verdict(&verifier, &key, &msg, &sig));
    let mut bad_msg = msg.clone();
    bad_msg.push(0);
    assert!(!terminal_verdict(&verifier, &key, &bad_msg, &sig));
    let mut bad_sig = sig.clone();
    bad_sig[40] ^= 1;
    assert!(!terminal_verdict(&verifier, &key, &msg, &bad_sig));
    // The other point with the same x (y negated) is another key.
    let mut other = sec1;
    other[0] ^= 1;
    let other = Key::parse(&verifier, &other).unwrap();
    assert!(!terminal_verdict(&verifier, &other, &msg, &sig));
    // A 65-byte signature (r || s || one more byte) does not travel.
    let mut long = sig.clone();
    long.push(0);
    assert!(!terminal_verdict(&verifier, &key, &msg, &long));
}
