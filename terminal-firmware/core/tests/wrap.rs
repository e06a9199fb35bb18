//! Counters in flash that wrap: the slot generation (`slots.rs`) and the log's sector sequence
//! (`log.rs`) are compared in serial-number order, so the object or sector written after
//! 0xFFFF_FFFF (numbered 0) is the newer one at the next mount. Both were found by the fuzz
//! targets `slot_header` and `tap_log` (terminal-firmware/fuzz): before, a reboot put the previous
//! object back in force and lost the newest log records.
#![allow(clippy::unwrap_used)]

use shared_crypto::sig::sha256_parts;
use terminal_core::crc::crc32;
use terminal_core::log::TapLog;
use terminal_core::ram_flash::RamFlash;
use terminal_core::slots::{SlotPair, SLOT_HEADER_LEN};
use terminal_core::UpdateKind;

type Flash = RamFlash<Vec<u8>, 4, 512>;

/// A slot committed by someone at generation `generation` (layout: `slots.rs` documentation).
fn committed_slot(generation: u32, payload: &[u8]) -> Flash {
    let mut b = vec![0xFFu8; 1024];
    b[0..4].copy_from_slice(b"TSL1");
    b[4] = UpdateKind::StatusList as u8;
    b[5..8].fill(0);
    b[8..12].copy_from_slice(&generation.to_le_bytes());
    b[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    b[16..20].copy_from_slice(&0u32.to_le_bytes());
    b[20..24].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    b[24..32].copy_from_slice(&9u64.to_le_bytes());
    b[32..40].copy_from_slice(&1u64.to_le_bytes());
    b[40..56].copy_from_slice(&sha256_parts(&[payload])[..16]);
    b[56..60].fill(0xFF);
    let crc = crc32(&[&b[..60]]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    b[SLOT_HEADER_LEN..SLOT_HEADER_LEN + payload.len()].copy_from_slice(payload);
    Flash::new(b)
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
