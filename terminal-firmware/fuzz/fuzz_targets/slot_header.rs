//! The slot headers of the double-buffered objects (trust bundle, status list, rules) from
//! arbitrary flash contents: mounting a pair never panics; a slot is put in force only when its
//! header is whole and of this kind and its view lies inside its payload; and from whatever was
//! found, an update committed is the one in force, also after a remount (`core/src/slots.rs`).
//!
//! The first input byte chooses what this target repairs before mounting (magic and kind, the
//! header CRC, the payload digest), so the checks behind each one are reached too.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared_crypto::sig::sha256_parts;
use terminal_core::crc::crc32;
use terminal_core::ram_flash::RamFlash;
use terminal_core::slots::{SlotPair, SLOT_HEADER_LEN};
use terminal_core::UpdateKind;

type Flash = RamFlash<Vec<u8>, 8, 256>;
const SLOT: usize = 1024;
const KIND: UpdateKind = UpdateKind::StatusList;

const MAGIC_AND_KIND: u8 = 1;
const FIX_DIGEST: u8 = 2;
const FIX_CRC: u8 = 4;

/// Repairs what `mode` says in one slot (layout: `core/src/slots.rs` module documentation).
fn repair(slot: &mut [u8], mode: u8) {
    if mode & MAGIC_AND_KIND != 0 {
        slot[0..4].copy_from_slice(b"TSL1");
        slot[4] = KIND as u8;
        slot[5..8].fill(0);
    }
    if mode & FIX_DIGEST != 0 {
        let len = u32::from_le_bytes([slot[12], slot[13], slot[14], slot[15]]) as usize;
        let len = len % (SLOT - SLOT_HEADER_LEN + 1);
        slot[12..16].copy_from_slice(&(len as u32).to_le_bytes());
        let d = sha256_parts(&[&slot[SLOT_HEADER_LEN..SLOT_HEADER_LEN + len]]);
        slot[40..56].copy_from_slice(&d[..16]);
    }
    if mode & FIX_CRC != 0 {
        let crc = crc32(&[&slot[..60]]);
        slot[60..64].copy_from_slice(&crc.to_le_bytes());
    }
}

fn slot(bytes: &[u8], mode: u8) -> Flash {
    let mut b = vec![0xFFu8; SLOT];
    let n = bytes.len().min(SLOT);
    b[..n].copy_from_slice(&bytes[..n]);
    repair(&mut b, mode);
    Flash::new(b)
}

/// What a pair in force must satisfy, whatever the flash held.
fn check(pair: &SlotPair<Flash>) {
    let Some(h) = pair.active() else {
        assert!(pair.view().is_none());
        return;
    };
    assert_eq!(h.kind, KIND as u8);
    assert!(SLOT_HEADER_LEN + h.payload_len as usize <= SLOT);
    assert!(h.view_off as u64 + h.view_len as u64 <= h.payload_len as u64);
    let view = pair.view().expect("a slot in force has its view");
    assert_eq!(view.len(), h.view_len as usize);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (a, b) = rest.split_at(rest.len().min(SLOT));
    let mut pair = SlotPair::mount([slot(a, mode), slot(b, mode >> 4)], KIND);
    check(&pair);
    let before = pair.active().copied();

    // An update from here: the spare slot is erased, the payload written, the header committed.
    let payload: Vec<u8> = rest
        .iter()
        .rev()
        .take(SLOT - SLOT_HEADER_LEN)
        .copied()
        .collect();
    let len = payload.len() as u32;
    let view_off = len / 3;
    pair.begin().expect("erase the spare slot");
    pair.write(&payload).expect("write the payload");
    let staged = pair.staged().expect("the staged bytes").to_vec();
    assert_eq!(staged, payload);
    let epoch = before.map_or(1, |h| h.epoch.wrapping_add(1));
    pair.commit(len, view_off, len - view_off, epoch, 7)
        .expect("commit");
    let expect_view = payload[view_off as usize..].to_vec();
    assert_eq!(pair.view(), Some(&expect_view[..]));
    check(&pair);

    // After a power cycle the committed update is the one in force, not the one before it.
    let pair = SlotPair::mount(pair.into_inner(), KIND);
    check(&pair);
    let h = pair.active().expect("the committed slot is found again");
    assert_eq!((h.epoch, h.issued_at, h.payload_len), (epoch, 7, len));
    assert_eq!(pair.view(), Some(&expect_view[..]));
});
