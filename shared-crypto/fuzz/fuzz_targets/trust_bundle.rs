//! The installed-bundle reader and its key look-up (the terminal re-reads its bundle from flash).
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared_crypto::model::{Role, TrustBundle};

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = TrustBundle::from_installed(data) {
        for role in Role::ALL {
            let _ = b.find(&[1; 8], *role, 1_800_000_000);
        }
    }
});
