//! Puts `memory.x` where the linker finds it, and makes the data the image carries in flash:
//!
//! * the Wycheproof ECDSA P-256/SHA-256 P1363 vectors (C2SP/wycheproof, Apache-2.0, in
//!   `../shared/vectors` of the repository's parent) as a compact binary table for the backend
//!   cross-check. Without them the build fails: a cross-check over an empty table would pass
//!   while checking nothing.
//!
//!   Table entry: `key (33, compressed) || sig_len (1) || sig || msg_len (2, LE) || msg ||
//!   expected (1: 0 invalid, 1 valid, 2 acceptable)`.
//! * a national-scale status list (38 M entries, 2 % revoked at random, seeded), encoded by
//!   shared-crypto's encoder and signed by the testkit's StatusSigner of the image's demo
//!   authority, as the `Signed<StatusListBody>` wire bytes a terminal downloads; the image installs
//!   it and measures taps against it (docs/terminal.md §6). `status_list_38m.rs` holds the
//!   figures the image needs to use it (seed, epoch, time, a valid and a revoked index).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use shared_crypto::model::StatusListBody;
use shared_crypto::status_list::StatusListEncoder;
use terminal_core::testkit::Authority;

/// Vectors in the Wycheproof file `ecdsa_secp256r1_sha256_p1363_test.json` (its
/// `numberOfTests`): the one place of this crate that states the count. The build fails when the
/// file holds another number; the image gets it in `wycheproof_p256.rs` and checks it ran this
/// many.
const WYCHEPROOF_VECTORS: usize = 262;

/// The seed of the image's demo authority (`Authority::new` in `src/main.rs` takes it from the
/// generated file, so the list is signed by the key the image's trust bundle certifies).
const AUTHORITY_SEED: u64 = 2024;
/// The national scale (README: about 38 million certified people).
const LIST_SIZE: u32 = 38_000_000;
/// Revocation rate, as in shared-crypto's status-list benchmark.
const REVOKED_RATE: f64 = 0.02;
const LIST_SEED: u64 = 0x5EED_2024_0038_0002;
/// Epoch of the large list: after the image's small list (1) and its delta (2).
const LIST_EPOCH: u64 = 3;
/// Signed 30 days after the image's start time T0 = 1_750_000_000.
const LIST_ISSUED_AT: u64 = 1_750_000_000 + 30 * 86_400;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect()
}

fn wycheproof_table(path: &Path) -> Vec<u8> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "the Wycheproof vectors are needed for the backend cross-check and were not found at \
             {} ({e}); ../shared must sit beside the repository",
            path.display()
        )
    });
    let json: serde_json::Value = serde_json::from_str(&text).expect("wycheproof json");
    let mut table = Vec::new();
    let mut n = 0usize;
    for group in json["testGroups"].as_array().into_iter().flatten() {
        let pk = unhex(group["publicKey"]["uncompressed"].as_str().unwrap_or(""));
        assert_eq!(
            pk.len(),
            65,
            "a Wycheproof group key is not an uncompressed point"
        );
        let mut key = [0u8; 33];
        key[0] = 0x02 | (pk[64] & 1);
        key[1..].copy_from_slice(&pk[1..33]);
        for t in group["tests"].as_array().into_iter().flatten() {
            let sig = unhex(t["sig"].as_str().unwrap_or(""));
            let msg = unhex(t["msg"].as_str().unwrap_or(""));
            assert!(
                sig.len() <= 255 && msg.len() <= 65535,
                "a Wycheproof vector does not fit the table"
            );
            let expected = match t["result"].as_str() {
                Some("valid") => 1u8,
                Some("acceptable") => 2,
                Some("invalid") => 0,
                other => panic!("a Wycheproof result {other:?}"),
            };
            table.extend_from_slice(&key);
            table.push(sig.len() as u8);
            table.extend_from_slice(&sig);
            table.extend_from_slice(&(msg.len() as u16).to_le_bytes());
            table.extend_from_slice(&msg);
            table.push(expected);
            n += 1;
        }
    }
    assert_eq!(
        json["numberOfTests"].as_u64(),
        Some(WYCHEPROOF_VECTORS as u64),
        "the Wycheproof file changed"
    );
    assert_eq!(
        n, WYCHEPROOF_VECTORS,
        "not every Wycheproof vector was read"
    );
    table
}

/// xorshift64* (Vigna 2016), seeded: the same list on every build.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// The signed list and the Rust constants describing it.
fn status_list() -> (Vec<u8>, String) {
    let mut rng = Rng(LIST_SEED);
    let threshold = (REVOKED_RATE * 2f64.powi(64)) as u64;
    let revoked: Vec<u32> = (0..LIST_SIZE).filter(|_| rng.next() < threshold).collect();
    // Cards in the middle of the list, so the lookup is not a first-block special case: the
    // first valid and the first revoked index from there.
    let middle = LIST_SIZE / 2 + 12_345;
    let at = revoked.partition_point(|&i| i < middle);
    let revoked_index = revoked[at];
    let valid_index = (middle..LIST_SIZE)
        .find(|i| revoked.binary_search(i).is_err())
        .expect("a valid index");
    let list = StatusListEncoder::new(LIST_SIZE)
        .encode(revoked.iter().copied())
        .expect("encode the status list");
    let body = StatusListBody {
        epoch: LIST_EPOCH,
        issued_at: LIST_ISSUED_AT,
        list: &list,
    };
    let auth = Authority::new(AUTHORITY_SEED, 0, u64::MAX).expect("demo authority");
    let wire = shared_crypto::sig::sign(&body, &[], &auth.status_signer).expect("sign the list");
    let consts = format!(
        "/// Seed of the demo authority whose StatusSigner signed the large list.\n\
         pub const AUTHORITY_SEED: u64 = {AUTHORITY_SEED};\n\
         /// Entries of the large list.\n\
         pub const LIST38M_SIZE: u32 = {LIST_SIZE};\n\
         /// Revoked entries in it.\n\
         pub const LIST38M_REVOKED: u32 = {};\n\
         /// Bytes of the encoded list (inside the signed object).\n\
         pub const LIST38M_LIST_BYTES: usize = {};\n\
         /// Bytes of the signed object (`Signed<StatusListBody>` wire).\n\
         pub const LIST38M_WIRE_BYTES: usize = {};\n\
         /// Its epoch.\n\
         pub const LIST38M_EPOCH: u64 = {LIST_EPOCH};\n\
         /// When it was signed.\n\
         pub const LIST38M_ISSUED_AT: u64 = {LIST_ISSUED_AT};\n\
         /// An index not revoked in it (middle of the list).\n\
         pub const LIST38M_VALID_INDEX: u32 = {valid_index};\n\
         /// An index revoked in it (middle of the list).\n\
         pub const LIST38M_REVOKED_INDEX: u32 = {revoked_index};\n",
        revoked.len(),
        list.len(),
        wire.len(),
    );
    (wire, consts)
}

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    fs::copy("memory.x", out.join("memory.x")).expect("copy memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=build.rs");

    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let path =
        manifest.join("../../../shared/vectors/wycheproof/ecdsa_secp256r1_sha256_p1363_test.json");
    println!("cargo:rerun-if-changed={}", path.display());
    fs::write(out.join("wycheproof_p256.bin"), wycheproof_table(&path)).expect("write table");
    fs::write(
        out.join("wycheproof_p256.rs"),
        format!(
            "/// Vectors in the Wycheproof table (build.rs refuses to build without all of them).\n\
             const WYCHEPROOF_VECTORS: u32 = {WYCHEPROOF_VECTORS};\n"
        ),
    )
    .expect("write the vector count");

    let (wire, consts) = status_list();
    fs::write(out.join("status_list_38m.bin"), wire).expect("write the status list");
    fs::write(out.join("status_list_38m.rs"), consts).expect("write its constants");
}
