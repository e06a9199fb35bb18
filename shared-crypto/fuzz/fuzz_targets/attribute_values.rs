//! Attribute value parsing and certificate numbers: parse, and re-encode what parsed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared_crypto::certno::CertificateNumber;
use shared_crypto::model::{AttributeId, AttributeValue, MAX_VALUE_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&id, value)) = data.split_first() else {
        return;
    };
    if let Ok(id) = AttributeId::try_from(id) {
        if let Ok(v) = AttributeValue::parse(id, value) {
            let mut buf = [0u8; MAX_VALUE_LEN];
            assert_eq!(v.encode(&mut buf), value, "canonical encoding");
        }
    }
    if let Ok(s) = core::str::from_utf8(data) {
        if let Ok(c) = CertificateNumber::parse(s) {
            assert_eq!(&c.as_bytes()[..], data);
        }
    }
});
