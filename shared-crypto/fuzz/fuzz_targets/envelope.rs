//! The `Signed` envelope decoder, and verification of whatever it yields under a fixed key.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared_crypto::sig::Domain;
use shared_crypto::{P256Signer, Signed};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Signed::decode(data) {
        let key = P256Signer::from_bytes(&[7; 32]).map(|k| k.public_key());
        if let Ok(key) = key {
            // Must refuse (the fuzzer cannot forge), and must not panic on any body.
            assert!(s.verify(Domain::Credential, &[], &key).is_err());
        }
        // Re-encoding what was decoded gives the input back: the decoder is canonical.
        assert_eq!(s.to_vec(), data);
    }
});
