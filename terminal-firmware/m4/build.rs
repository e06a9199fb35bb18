//! Puts `memory.x` where the linker finds it, and turns the Wycheproof ECDSA P-256/SHA-256 P1363
//! vectors (C2SP/wycheproof, Apache-2.0, in `../shared/vectors` of the repository's parent) into a
//! compact binary table the image embeds for the backend cross-check.
//!
//! Table entry: `key (33, compressed) || sig_len (1) || sig || msg_len (2, LE) || msg || expected (1:
//! 0 invalid, 1 valid, 2 acceptable)`.

use std::env;
use std::fs;
use std::path::PathBuf;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect()
}

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    fs::copy("memory.x", out.join("memory.x")).expect("copy memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");

    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let path =
        manifest.join("../../../shared/vectors/wycheproof/ecdsa_secp256r1_sha256_p1363_test.json");
    println!("cargo:rerun-if-changed={}", path.display());
    let mut table = Vec::new();
    match fs::read_to_string(&path) {
        Ok(text) => {
            let json: serde_json::Value = serde_json::from_str(&text).expect("wycheproof json");
            for group in json["testGroups"].as_array().into_iter().flatten() {
                let pk = unhex(group["publicKey"]["uncompressed"].as_str().unwrap_or(""));
                if pk.len() != 65 {
                    continue;
                }
                let mut key = [0u8; 33];
                key[0] = 0x02 | (pk[64] & 1);
                key[1..].copy_from_slice(&pk[1..33]);
                for t in group["tests"].as_array().into_iter().flatten() {
                    let sig = unhex(t["sig"].as_str().unwrap_or(""));
                    let msg = unhex(t["msg"].as_str().unwrap_or(""));
                    if sig.len() > 255 || msg.len() > 65535 {
                        continue;
                    }
                    let expected = match t["result"].as_str() {
                        Some("valid") => 1u8,
                        Some("acceptable") => 2,
                        _ => 0,
                    };
                    table.extend_from_slice(&key);
                    table.push(sig.len() as u8);
                    table.extend_from_slice(&sig);
                    table.extend_from_slice(&(msg.len() as u16).to_le_bytes());
                    table.extend_from_slice(&msg);
                    table.push(expected);
                }
            }
        }
        Err(e) => println!(
            "cargo:warning=Wycheproof vectors not found at {} ({e}): the cross-check uses generated signatures only",
            path.display()
        ),
    }
    fs::write(out.join("wycheproof_p256.bin"), table).expect("write table");
}
