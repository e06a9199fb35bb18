//! Index sets (status-list deltas) from arbitrary bytes: parsing never panics; what it accepts
//! iterates exactly `len` strictly increasing values and is the encoder's own output; applying it
//! to a fixed list either refuses with the right reason or equals encoding the union.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared_crypto::status_list::{
    apply_delta, encode, encode_index_set, EncodeError, IndexSetView, StatusListError,
    StatusListView,
};

const BASE_SIZE: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    let Ok(set) = IndexSetView::parse(data) else {
        return;
    };
    assert_eq!(set.as_bytes(), data);
    let items: Vec<u32> = set.iter().collect();
    assert_eq!(items.len(), set.len() as usize);
    assert_eq!(set.is_empty(), items.is_empty());
    assert!(items.windows(2).all(|w| w[0] < w[1]), "not increasing");
    assert_eq!(encode_index_set(items.iter().copied()).unwrap(), data);

    // A fixed old list: every 7th index revoked.
    let old: Vec<u32> = (0..BASE_SIZE).filter(|i| i % 7 == 3).collect();
    let old_bytes = encode(BASE_SIZE, old.iter().copied()).unwrap();
    let old_view = StatusListView::parse(&old_bytes).unwrap();
    let mut out = Vec::new();
    match apply_delta(&old_view, &set, &mut out) {
        Ok(n) => {
            assert_eq!(n, out.len());
            let mut union: Vec<u32> = old.iter().chain(&items).copied().collect();
            union.sort_unstable();
            assert_eq!(out, encode(BASE_SIZE, union).unwrap());
        }
        Err(EncodeError::Codec(StatusListError::AlreadyRevoked { index })) => {
            assert!(out.is_empty());
            assert!(index % 7 == 3 && items.contains(&index));
        }
        Err(EncodeError::Codec(StatusListError::IndexOutOfRange { index, size })) => {
            assert!(out.is_empty());
            assert!(size == BASE_SIZE && index >= size && items.contains(&index));
        }
        Err(e) => panic!("unexpected refusal: {e:?}"),
    }
});
