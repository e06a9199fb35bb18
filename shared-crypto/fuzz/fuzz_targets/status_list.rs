//! Status lists from arbitrary bytes: parsing, lookups, iteration and validation never panic;
//! what `validate` accepts answers every lookup without error, agrees with its own iteration and
//! is exactly what the encoder writes for that set (one set, one encoding).
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared_crypto::status_list::{StatusListEncoder, StatusListError, StatusListView};

/// Iteration is bounded: a complement-stored list of size 2^32 - 1 fits in a few bytes.
const MAX_ITEMS: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    // Without the block-index check (a terminal's own, already validated flash slot), lookups
    // on any bytes must still not panic; with a sound index they agree with the checked view.
    let installed = StatusListView::parse_installed(data).ok();
    if let Some(v) = &installed {
        let size = v.size();
        for i in [0, 1, size / 2, size.saturating_sub(1), size, u32::MAX] {
            let _ = v.is_revoked(i);
        }
        for c in data.chunks_exact(4).take(32) {
            let _ = v.is_revoked(u32::from_le_bytes([c[0], c[1], c[2], c[3]]) % size.max(1));
        }
    }
    let Ok(view) = StatusListView::parse(data) else {
        return;
    };
    let Some(installed) = installed else {
        panic!("parse accepted what parse_installed refused");
    };
    let size = view.size();
    assert!(view.revoked_count() <= size);
    assert_eq!(view.as_bytes(), data);

    // Lookups at the edges and at positions taken from the input.
    let mut probes = vec![0, 1, size / 2, size.saturating_sub(1), size, u32::MAX];
    probes.extend(
        data.chunks_exact(4)
            .take(64)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) % size.max(1)),
    );
    let answers: Vec<_> = probes.iter().map(|&i| (i, view.is_revoked(i))).collect();
    for (i, r) in &answers {
        assert_eq!(installed.is_revoked(*i), *r, "parse_installed disagrees at {i}");
    }
    for (i, r) in &answers {
        if *i >= size {
            assert_eq!(
                *r,
                Err(StatusListError::IndexOutOfRange { index: *i, size })
            );
        }
    }

    let mut items = Vec::new();
    let mut failure = None;
    for r in view.iter_revoked().take(MAX_ITEMS) {
        match r {
            Ok(v) => {
                assert!(v < size);
                assert!(items.last().is_none_or(|&l| l < v), "not increasing");
                items.push(v);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }

    if view.validate().is_err() {
        return;
    }
    assert_eq!(failure, None, "validate accepted what iteration refused");
    for (i, r) in &answers {
        if *i < size {
            let r = r.unwrap_or_else(|e| panic!("lookup {i} failed on a valid list: {e}"));
            if items.len() == view.revoked_count() as usize {
                assert_eq!(r, items.binary_search(i).is_ok(), "lookup {i}");
            }
        }
    }
    for &v in items.iter().take(256) {
        assert_eq!(view.is_revoked(v), Ok(true));
    }
    if items.len() == view.revoked_count() as usize {
        let Some(block_len) = core::num::NonZeroU16::new(view.block_len()) else {
            panic!("parse accepted block_len 0");
        };
        let again = StatusListEncoder::new(size)
            .with_block_len(block_len)
            .encode(items.iter().copied())
            .unwrap();
        assert_eq!(
            again, data,
            "a validated list is not the canonical encoding"
        );
    }
});
