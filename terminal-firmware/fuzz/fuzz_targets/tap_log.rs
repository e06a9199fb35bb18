//! The tap log's mount from arbitrary flash contents (a partition torn, worn or written by
//! someone else): mounting, reading, appending and remounting never panic. When the sectors'
//! numbering is one the log can have written (distinct `sector_seq`s within a window of as many
//! numbers as there are sectors, in serial-number order: sectors are opened one after the other),
//! whatever the records hold, the log keeps its promises from there on: a record appended is the
//! last one after a remount, with the next sequence number, and every record read before is still
//! there (`core/src/log.rs`). Sector numbers no run of the log produces (two sectors with the same
//! number, or numbers 2^31 apart) have no newest sector to find; they only must not crash it.
//!
//! Random bytes almost never carry a right CRC, so the first input byte chooses which parts of
//! the layout this target repairs before mounting (sector header CRCs, record length checks and
//! CRCs, sequence numbers, commit units): the parser is reached past each check as well as at it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use terminal_core::crc::crc32;
use terminal_core::log::{LogError, TapLog, MAX_RECORD_LEN};
use terminal_core::ram_flash::RamFlash;

const WRITE: usize = 4;
const SECTOR: usize = 512;
const SECTORS: usize = 4;
type Flash = RamFlash<Vec<u8>, WRITE, SECTOR>;

/// Layout constants of `core/src/log.rs` (its module documentation).
const SECTOR_HEADER_LEN: usize = 16;
const RECORD_HEADER_LEN: usize = 8;

const FIX_SECTOR_CRC: u8 = 1;
const FIX_RECORD: u8 = 2;
const FIX_SEQ: u8 = 4;
const COMMIT: u8 = 8;
const MAGIC: u8 = 16;

fn align(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Repairs what `mode` says in one sector, walking its records as the parser would.
fn repair(sector: &mut [u8], mode: u8) {
    if mode & MAGIC != 0 {
        sector[..4].copy_from_slice(b"TLG1");
    }
    if mode & FIX_SECTOR_CRC != 0 {
        let crc = crc32(&[&sector[..12]]);
        put_u32(sector, 12, crc);
    }
    let mut seq = u32::from_le_bytes([sector[8], sector[9], sector[10], sector[11]]);
    let mut at = align(SECTOR_HEADER_LEN, WRITE);
    while at + RECORD_HEADER_LEN <= sector.len() {
        let len =
            usize::from(u16::from_le_bytes([sector[at], sector[at + 1]])) % (MAX_RECORD_LEN + 1);
        let crc_at = at + align(RECORD_HEADER_LEN + len, 4);
        let body = align(align(RECORD_HEADER_LEN + len, 4) + 4, WRITE);
        let commit = align(4, WRITE);
        if at + body + commit > sector.len() {
            break;
        }
        if mode & FIX_RECORD != 0 {
            sector[at..at + 2].copy_from_slice(&(len as u16).to_le_bytes());
            sector[at + 2..at + 4].copy_from_slice(&(!(len as u16)).to_le_bytes());
        }
        if mode & FIX_SEQ != 0 {
            put_u32(sector, at + 4, seq);
        }
        if mode & FIX_RECORD != 0 {
            let crc = crc32(&[&sector[at..crc_at]]);
            put_u32(sector, crc_at, crc);
        }
        if mode & COMMIT != 0 {
            sector[at + body..at + body + commit].fill(0);
        }
        seq = seq.wrapping_add(1);
        at += body + commit;
    }
}

/// Whether the valid sector headers are numbered as the log numbers them (see the top).
fn plausible_numbering(bytes: &[u8]) -> bool {
    let seqs: Vec<u32> = bytes
        .chunks(SECTOR)
        .filter(|b| &b[..4] == b"TLG1" && crc32(&[&b[..12]]).to_le_bytes() == b[12..16])
        .map(|b| u32::from_le_bytes([b[4], b[5], b[6], b[7]]))
        .collect();
    let Some(&first) = seqs.first() else {
        return true;
    };
    // Offsets from the first header, as signed serial-number distances.
    let mut offsets: Vec<i64> = seqs
        .iter()
        .map(|s| i64::from(s.wrapping_sub(first) as i32))
        .collect();
    offsets.sort_unstable();
    offsets.dedup();
    let (lo, hi) = (offsets[0], offsets[offsets.len() - 1]);
    offsets.len() == seqs.len() && hi - lo < SECTORS as i64
}

fn remount(log: TapLog<Flash>) -> TapLog<Flash> {
    match TapLog::mount(log.into_inner()) {
        Ok(log) => log,
        Err(e) => panic!("a log that mounted once no longer mounts: {e:?}"),
    }
}

fn records(log: &TapLog<Flash>) -> Vec<(u32, Vec<u8>)> {
    log.records().map(|r| (r.seq, r.payload.to_vec())).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // Unwritten flash reads FF; the input overwrites it from the first sector on.
    let mut bytes = vec![0xFFu8; SECTOR * SECTORS];
    let n = rest.len().min(bytes.len());
    bytes[..n].copy_from_slice(&rest[..n]);
    for sector in bytes.chunks_mut(SECTOR) {
        repair(sector, mode);
    }
    let appended: Vec<u8> = rest.iter().rev().take(MAX_RECORD_LEN).copied().collect();
    let plausible = plausible_numbering(&bytes);

    let Ok(mut log) = TapLog::mount(Flash::new(bytes)) else {
        // The geometry is fixed and supported: mounting may only fail on it.
        panic!("the log refused a supported geometry");
    };
    let before = records(&log);
    let state = log.state();
    assert_eq!(state.records as usize, before.len());
    let next = log.next_seq();

    let result = log.append(&appended);
    if !plausible {
        // Nothing is promised about which sector is the newest: it only must not crash.
        let log = remount(log);
        let _ = records(&log);
        return;
    }
    match result {
        Ok(seq) => {
            assert_eq!(seq, next, "the record got the announced sequence number");
            let log = remount(log);
            let after = records(&log);
            assert_eq!(
                after.last(),
                Some(&(seq, appended.clone())),
                "the appended record is the last one after a remount"
            );
            assert_eq!(log.next_seq(), seq.wrapping_add(1));
            for r in &before {
                assert!(after.contains(r), "record {} was lost by an append", r.0);
            }
        }
        // Every sector holds records not acknowledged: nothing may have changed.
        Err(LogError::Full) => {
            let log = remount(log);
            assert_eq!(records(&log), before);
        }
        Err(e) => panic!("append failed on working flash: {e:?}"),
    }
});
