//! Counters in flash that wrap: the slot generation (`slots.rs`) and the log's sector sequence
//! (`log.rs`) are compared in serial-number order, so the object or sector written after
//! 0xFFFF_FFFF (numbered 0) is the newer one at the next mount. Both were found by the fuzz
//! targets `slot_header` and `tap_log` (terminal-firmware/fuzz): before, a reboot put the previous
//! object back in force and lost the newest log records.
#![allow(clippy::unwrap_used)]

use terminal_core::crc::crc32;
use terminal_core::log::TapLog;
use terminal_core::ram_flash::RamFlash;
use terminal_core::slots::{SlotHeader, SlotPair, SLOT_HEADER_LEN};
use terminal_core::{MappedFlash, UpdateKind};

type Flash = RamFlash<Vec<u8>, 4, 512>;

/// A slot committed by someone at generation `generation`.
fn committed_slot(generation: u32, payload: &[u8]) -> Flash {
    let header = SlotHeader {
        kind: UpdateKind::StatusList as u8,
        generation,
        payload_len: payload.len() as u32,
        view_off: 0,
        view_len: payload.len() as u32,
        epoch: 9,
        issued_at: 1,
        digest: SlotHeader::digest_of(payload),
    };
    let mut b = vec![0xFFu8; 1024];
    b[..SLOT_HEADER_LEN].copy_from_slice(&header.encode());
    b[SLOT_HEADER_LEN..SLOT_HEADER_LEN + payload.len()].copy_from_slice(payload);
    Flash::new(b)
}

#[test]
fn a_header_built_by_encode_is_the_one_a_commit_writes() {
    // What the tests build with `SlotHeader::encode` is byte for byte what `SlotPair::commit`
    // writes, and `decode` reads it back.
    let erased = || Flash::erased(vec![0u8; 1024]);
    let mut pair = SlotPair::mount([erased(), erased()], UpdateKind::StatusList);
    pair.begin().unwrap();
    pair.write(b"a list").unwrap();
    assert_eq!(pair.staged().unwrap(), b"a list");
    pair.commit(6, 1, 4, 3, 2).unwrap();
    let written: [u8; SLOT_HEADER_LEN] = pair.slots()[0].mapped()[..SLOT_HEADER_LEN]
        .try_into()
        .unwrap();
    let h = *pair.active().unwrap();
    assert_eq!(h.encode(), written);
    assert_eq!(SlotHeader::decode(&written), Some(h));
    assert_eq!(h.digest, SlotHeader::digest_of(b"a list"));
    let mut torn = written;
    torn[20] ^= 1;
    assert_eq!(SlotHeader::decode(&torn), None, "the CRC covers the fields");
}

#[test]
fn a_commit_after_generation_u32_max_is_in_force_after_a_remount() {
    for last in [u32::MAX - 1, u32::MAX, 0, 7] {
        let erased = Flash::erased(vec![0u8; 1024]);
        let mut pair = SlotPair::mount(
            [committed_slot(last, b"old list"), erased],
            UpdateKind::StatusList,
        );
        assert_eq!(pair.active().unwrap().generation, last);
        assert_eq!(pair.view(), Some(&b"old list"[..]));
        pair.begin().unwrap();
        pair.write(b"new list").unwrap();
        assert_eq!(pair.staged().unwrap(), b"new list");
        pair.commit(8, 0, 8, 10, 2).unwrap();
        let pair = SlotPair::mount(pair.into_inner(), UpdateKind::StatusList);
        let h = pair.active().unwrap();
        assert_eq!(
            (h.generation, h.epoch),
            (last.wrapping_add(1), 10),
            "after {last}"
        );
        assert_eq!(pair.view(), Some(&b"new list"[..]), "after {last}");
    }
}

/// A log whose head sector was opened as number `sector_seq` (layout: `log.rs` documentation).
fn log_with_head(sector_seq: u32) -> TapLog<Flash> {
    let mut b = vec![0xFFu8; 512 * 4];
    b[0..4].copy_from_slice(b"TLG1");
    b[4..8].copy_from_slice(&sector_seq.to_le_bytes());
    b[8..12].copy_from_slice(&100u32.to_le_bytes());
    let crc = crc32(&[&b[..12]]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    TapLog::mount(Flash::new(b)).unwrap()
}

#[test]
fn records_in_the_sector_after_sector_seq_u32_max_survive_a_remount() {
    for head in [u32::MAX, u32::MAX - 1, 5] {
        let mut log = log_with_head(head);
        assert_eq!(log.next_seq(), 100);
        // Enough records to fill the head and open the next sector (numbered head + 1).
        let mut last = 0;
        for i in 0..40u8 {
            last = log.append(&[i; 20]).unwrap();
        }
        assert!(log.state().used_sectors >= 2, "the head moved on");
        let log = TapLog::mount(log.into_inner()).unwrap();
        assert_eq!(log.next_seq(), last + 1, "head {head}");
        let seqs: Vec<u32> = log.records().map(|r| r.seq).collect();
        assert_eq!(seqs, (100..=last).collect::<Vec<_>>(), "head {head}");
    }
}
