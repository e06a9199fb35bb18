//! Wycheproof ECDSA P-256 / SHA-256 (IEEE P1363 signatures) through the platform's one verify path.
//!
//! Vectors: ../shared/vectors/wycheproof/ecdsa_secp256r1_sha256_p1363_test.json
//! (C2SP/wycheproof, Apache-2.0). Keys are re-encoded in the compressed form the wire carries and
//! parsed by `PublicKey::from_sec1`, exactly as a terminal parses a key certificate's key.
#![allow(clippy::unwrap_used)]

use shared_crypto::PublicKey;

/// Every test in `ecdsa_secp256r1_sha256_p1363_test.json` (its `numberOfTests`), the one place
/// of this test that states the count: a truncated or replaced file fails here.
const VECTORS: u64 = 262;

fn vectors() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/vectors/wycheproof/ecdsa_secp256r1_sha256_p1363_test.json"
    );
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {path}: {e} (../shared must sit beside the repo)"));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn wycheproof_p1363_all_vectors() {
    let v = vectors();
    assert_eq!(
        v["numberOfTests"].as_u64(),
        Some(VECTORS),
        "the vector file changed"
    );
    let (mut total, mut valid, mut invalid, mut acceptable) = (0u64, 0u64, 0u64, 0u64);
    let mut failures = Vec::new();
    for group in v["testGroups"].as_array().unwrap() {
        assert_eq!(group["sha"], "SHA-256");
        let uncompressed =
            hex::decode(group["publicKey"]["uncompressed"].as_str().unwrap()).unwrap();
        let compressed = PublicKey::from_sec1_any(&uncompressed).unwrap().to_sec1();
        let key = PublicKey::from_sec1(&compressed).unwrap();
        for t in group["tests"].as_array().unwrap() {
            total += 1;
            let msg = hex::decode(t["msg"].as_str().unwrap()).unwrap();
            let sig = hex::decode(t["sig"].as_str().unwrap()).unwrap();
            let got = key.verify_parts(&[&msg], &sig);
            let id = t["tcId"].as_u64().unwrap();
            match t["result"].as_str().unwrap() {
                "valid" => {
                    valid += 1;
                    if got.is_err() {
                        failures.push(format!("tcId {id} valid but rejected: {}", t["comment"]));
                    }
                }
                "invalid" => {
                    invalid += 1;
                    if got.is_ok() {
                        failures.push(format!("tcId {id} invalid but accepted: {}", t["comment"]));
                    }
                }
                // "acceptable" cases may go either way by Wycheproof's rules; record what we do.
                _ => acceptable += 1,
            }
        }
    }
    println!("wycheproof p1363: {total} vectors ({valid} valid, {invalid} invalid, {acceptable} acceptable)");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(total, VECTORS, "every vector of the file was checked");
}
