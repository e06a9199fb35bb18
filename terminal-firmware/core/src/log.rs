//! The tap log: append-only records in a ring of flash sectors.
//!
//! * **Sector header** (16 bytes, then padding to the write unit): magic `TLG1`, `sector_seq` (u32 LE,
//!   +1 for each sector opened), `first_seq` (the record sequence number the sector starts with),
//!   CRC-32 of the 12 bytes before it. A sector is opened by erasing it and writing its header; the
//!   sector with the highest `sector_seq` is the head, the only one written to.
//! * **Record**: `len u16 LE, !len u16 LE, seq u32 LE, payload (len bytes), FF padding to 4 bytes,
//!   CRC-32 of everything before it`, padded with `FF` to the write unit, then a **commit unit**
//!   (one write unit, at least 4 bytes) programmed to `00` by a second write. The payload is the
//!   postcard encoding of a [`shared_crypto::model::TapRecord`] (a log-batch list item).
//!
//! A record is committed once its commit unit is all zero; [`TapLog::append`] returns only after
//! that write. At mount the head is scanned: the first record that is not complete and committed
//! (bad length check, CRC or sequence, or a commit unit not all zero) ends the sector, and the head
//! is *closed* — the next record opens a new sector, so nothing is ever programmed over a torn
//! write. Sequence numbers never repeat: each sector's header carries the number it starts with,
//! and the head is never erased.
//!
//! Space is reclaimed only for records the server acknowledged ([`TapLog::acknowledge`]): a sector
//! is erased when every record in it is acknowledged, oldest first, never the head. When the next
//! sector still holds records not acknowledged, the log is full ([`LogError::Full`]) and the
//! terminal asks staff instead of overwriting them. The acknowledgement lives in RAM: after a
//! restart, records not yet reclaimed are exported again (the server answers `duplicate`).

use embedded_storage::nor_flash::NorFlash;

use crate::crc::crc32;
use crate::platform::MappedFlash;

const SECTOR_MAGIC: [u8; 4] = *b"TLG1";
const SECTOR_HEADER_LEN: usize = 16;
const RECORD_HEADER_LEN: usize = 8;
/// Largest record payload.
pub const MAX_RECORD_LEN: usize = 256;
/// Largest write unit the log supports.
pub const MAX_WRITE_SIZE: usize = 64;

/// Why a log operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogError<E> {
    /// The flash failed (a record being appended is not committed).
    Flash(E),
    /// Every sector holds records not yet acknowledged: upload first.
    Full,
    /// The record is longer than [`MAX_RECORD_LEN`].
    TooLong,
    /// The partition has fewer than two sectors, a sector too small for a record, or a write unit
    /// the log does not support.
    BadGeometry,
    /// The acknowledged sequence number is not one the log has exported.
    BadAcknowledge,
    /// The output buffer is too small for even one record.
    BufferTooSmall,
}

impl<E: core::fmt::Debug> core::fmt::Display for LogError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LogError::Flash(e) => write!(f, "flash failed ({e:?}); the record is not committed"),
            LogError::Full => {
                f.write_str("the log is full of records not yet uploaded: upload first")
            }
            LogError::TooLong => f.write_str("record too long"),
            LogError::BadGeometry => f.write_str("log partition geometry not supported"),
            LogError::BadAcknowledge => {
                f.write_str("acknowledged sequence number was never exported")
            }
            LogError::BufferTooSmall => f.write_str("buffer too small for one record"),
        }
    }
}

#[cfg(feature = "std")]
impl<E: core::fmt::Debug> std::error::Error for LogError<E> {}

/// Usage figures for a staff screen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogState {
    /// Sequence number the next record will get.
    pub next_seq: u32,
    /// Highest acknowledged sequence number (since start-up).
    pub acknowledged: Option<u32>,
    /// Records in flash.
    pub records: u32,
    /// Records in flash not acknowledged.
    pub pending: u32,
    /// Sectors in the partition.
    pub sectors: u32,
    /// Sectors holding records (the head included).
    pub used_sectors: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SectorHeader {
    sector_seq: u32,
    first_seq: u32,
}

/// One committed record as it lies in flash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawRecord<'a> {
    /// Its sequence number.
    pub seq: u32,
    /// The payload (postcard `TapRecord`).
    pub payload: &'a [u8],
}

/// The append-only tap log over one flash partition.
#[derive(Debug)]
pub struct TapLog<F> {
    flash: F,
    sectors: u32,
    sector_size: u32,
    /// Head sector index, its header, write offset inside it, and whether it is closed.
    head: Option<Head>,
    next_seq: u32,
    acked: Option<u32>,
}

#[derive(Clone, Copy, Debug)]
struct Head {
    index: u32,
    header: SectorHeader,
    pos: u32,
    closed: bool,
}

const fn align(n: usize, unit: usize) -> usize {
    n.div_ceil(unit) * unit
}

fn data_start<F: NorFlash>() -> usize {
    align(SECTOR_HEADER_LEN, F::WRITE_SIZE)
}

fn commit_len<F: NorFlash>() -> usize {
    align(4, F::WRITE_SIZE)
}

/// Bytes before the commit unit of a record with `len` payload bytes.
fn body_len<F: NorFlash>(len: usize) -> usize {
    align(align(RECORD_HEADER_LEN + len, 4) + 4, F::WRITE_SIZE)
}

impl<F: NorFlash + MappedFlash> TapLog<F> {
    /// Mounts the log: finds the head, drops a torn tail, recovers the next sequence number.
    pub fn mount(flash: F) -> Result<Self, LogError<F::Error>> {
        let sector_size = F::ERASE_SIZE as u32;
        let sectors = (flash.capacity() / F::ERASE_SIZE) as u32;
        let unit_ok = F::WRITE_SIZE <= MAX_WRITE_SIZE && MAX_WRITE_SIZE % F::WRITE_SIZE == 0;
        let fits =
            data_start::<F>() + body_len::<F>(MAX_RECORD_LEN) + commit_len::<F>() <= F::ERASE_SIZE;
        if sectors < 2 || !unit_ok || !fits {
            return Err(LogError::BadGeometry);
        }
        let mut log = TapLog {
            flash,
            sectors,
            sector_size,
            head: None,
            next_seq: 0,
            acked: None,
        };
        let mut head: Option<(u32, SectorHeader)> = None;
        for i in 0..sectors {
            if let Some(h) = log.sector_header(i) {
                // Serial-number order: `sector_seq` wraps, and the sector opened after
                // 0xFFFF_FFFF (numbered 0) is the newer one (found by fuzz/tap_log).
                if head.is_none_or(|(_, best)| seq_after(h.sector_seq, best.sector_seq)) {
                    head = Some((i, h));
                }
            }
        }
        if let Some((index, header)) = head {
            let mut pos = data_start::<F>() as u32;
            let mut seq = header.first_seq;
            let mut iter = log.sector_records(index, header);
            for r in iter.by_ref() {
                seq = r.seq.wrapping_add(1);
            }
            pos = pos.max(iter.pos);
            let closed = !iter.clean_end || !log.is_erased(index, pos);
            log.head = Some(Head {
                index,
                header,
                pos,
                closed,
            });
            log.next_seq = seq;
        }
        Ok(log)
    }

    fn sector_bytes(&self, index: u32) -> &[u8] {
        let start = (index * self.sector_size) as usize;
        self.flash
            .mapped()
            .get(start..start + self.sector_size as usize)
            .unwrap_or(&[])
    }

    fn is_erased(&self, index: u32, from: u32) -> bool {
        self.sector_bytes(index)
            .get(from as usize..)
            .is_some_and(|rest| rest.iter().all(|&b| b == 0xFF))
    }

    fn sector_header(&self, index: u32) -> Option<SectorHeader> {
        let b = self.sector_bytes(index).get(..SECTOR_HEADER_LEN)?;
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        if b[..4] != SECTOR_MAGIC || word(12) != crc32(&[&b[..12]]) {
            return None;
        }
        Some(SectorHeader {
            sector_seq: word(4),
            first_seq: word(8),
        })
    }

    fn sector_records(&self, index: u32, header: SectorHeader) -> SectorRecords<'_> {
        SectorRecords {
            bytes: self.sector_bytes(index),
            pos: data_start::<F>() as u32,
            expect: header.first_seq,
            unit: F::WRITE_SIZE,
            clean_end: true,
            done: false,
        }
    }

    /// The sectors of the ring from the oldest to the head (consecutive `sector_seq`).
    fn ring(&self) -> RingIter {
        let Some(head) = self.head else {
            return RingIter {
                start: 0,
                sectors: self.sectors,
                n: 0,
                i: 0,
            };
        };
        // Walk back from the head while the previous sector continues the sequence.
        let mut n = 1;
        let mut idx = head.index;
        let mut seq = head.header.sector_seq;
        while n < self.sectors {
            let prev = (idx + self.sectors - 1) % self.sectors;
            match self.sector_header(prev) {
                Some(h) if h.sector_seq == seq.wrapping_sub(1) => {
                    n += 1;
                    idx = prev;
                    seq = h.sector_seq;
                }
                _ => break,
            }
        }
        RingIter {
            start: idx,
            sectors: self.sectors,
            n,
            i: 0,
        }
    }

    /// The committed records from the oldest, each with its sequence number.
    pub fn records(&self) -> impl Iterator<Item = RawRecord<'_>> + '_ {
        self.ring().flat_map(move |index| {
            let header = self.sector_header(index);
            header
                .map(|h| self.sector_records(index, h))
                .into_iter()
                .flatten()
        })
    }

    /// The committed records not yet acknowledged, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = RawRecord<'_>> + '_ {
        let acked = self.acked;
        self.records()
            .filter(move |r| acked.is_none_or(|a| seq_after(r.seq, a)))
    }

    /// Sequence number of the next record.
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// Whether a record of the largest size can be appended without overwriting records that were
    /// not acknowledged.
    pub fn has_room(&self) -> bool {
        self.head_room(MAX_RECORD_LEN) || self.next_sector_free()
    }

    fn head_room(&self, len: usize) -> bool {
        self.head.is_some_and(|h| {
            !h.closed
                && h.pos as usize + body_len::<F>(len) + commit_len::<F>()
                    <= self.sector_size as usize
        })
    }

    /// The sector after the head holds nothing that is not acknowledged.
    fn next_sector_free(&self) -> bool {
        let Some(head) = self.head else {
            return true;
        };
        // The sector after the head is the oldest of the ring when the ring covers every sector;
        // otherwise it is erased, torn, or left over from before a gap, and holds nothing that
        // can still be exported.
        let ring = self.ring();
        if ring.n < self.sectors {
            return true;
        }
        let oldest = (head.index + 1) % self.sectors;
        match self.sector_header(oldest) {
            None => true,
            Some(h) => self.sector_acknowledged(oldest, h),
        }
    }

    /// Every record of sector `index` (not the head) is acknowledged.
    fn sector_acknowledged(&self, index: u32, header: SectorHeader) -> bool {
        let last = self.sector_records(index, header).last().map(|r| r.seq);
        match (last, self.acked) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(l), Some(a)) => !seq_after(l, a),
        }
    }

    /// Appends a record with the next sequence number and returns that number once the record is
    /// committed.
    pub fn append(&mut self, payload: &[u8]) -> Result<u32, LogError<F::Error>> {
        if payload.len() > MAX_RECORD_LEN {
            return Err(LogError::TooLong);
        }
        if !self.head_room(payload.len()) {
            self.open_sector()?;
        }
        let Some(mut head) = self.head else {
            return Err(LogError::Full);
        };
        let seq = self.next_seq;
        let len = payload.len();
        let mut buf = [0xFFu8; RECORD_HEADER_LEN + MAX_RECORD_LEN + 4 + 3 + MAX_WRITE_SIZE];
        buf[0..2].copy_from_slice(&(len as u16).to_le_bytes());
        buf[2..4].copy_from_slice(&(!(len as u16)).to_le_bytes());
        buf[4..8].copy_from_slice(&seq.to_le_bytes());
        buf[8..8 + len].copy_from_slice(payload);
        let crc_at = align(RECORD_HEADER_LEN + len, 4);
        let crc = crc32(&[&buf[..crc_at]]);
        buf[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
        let body = body_len::<F>(len);
        let at = head.index * self.sector_size + head.pos;
        // From here on, a failure leaves bytes that are not erased after the last committed
        // record: the head is closed so that nothing is programmed over them.
        head.closed = true;
        self.head = Some(head);
        self.flash
            .write(at, &buf[..body])
            .map_err(LogError::Flash)?;
        let zeros = [0u8; MAX_WRITE_SIZE];
        self.flash
            .write(at + body as u32, &zeros[..commit_len::<F>()])
            .map_err(LogError::Flash)?;
        head.pos += (body + commit_len::<F>()) as u32;
        head.closed = false;
        self.head = Some(head);
        self.next_seq = seq.wrapping_add(1);
        Ok(seq)
    }

    fn open_sector(&mut self) -> Result<(), LogError<F::Error>> {
        if !self.next_sector_free() {
            return Err(LogError::Full);
        }
        let (index, sector_seq) = match self.head {
            Some(h) => (
                (h.index + 1) % self.sectors,
                h.header.sector_seq.wrapping_add(1),
            ),
            None => (0, 0),
        };
        let start = index * self.sector_size;
        if !self.is_erased(index, 0) {
            self.flash
                .erase(start, start + self.sector_size)
                .map_err(LogError::Flash)?;
        }
        let header = SectorHeader {
            sector_seq,
            first_seq: self.next_seq,
        };
        let mut h = [0xFFu8; MAX_WRITE_SIZE];
        h[..4].copy_from_slice(&SECTOR_MAGIC);
        h[4..8].copy_from_slice(&sector_seq.to_le_bytes());
        h[8..12].copy_from_slice(&header.first_seq.to_le_bytes());
        let crc = crc32(&[&h[..12]]);
        h[12..16].copy_from_slice(&crc.to_le_bytes());
        self.flash
            .write(start, &h[..data_start::<F>()])
            .map_err(LogError::Flash)?;
        self.head = Some(Head {
            index,
            header,
            pos: data_start::<F>() as u32,
            closed: false,
        });
        Ok(())
    }

    /// Records that the server accepted every record up to `last_seq`, and erases the sectors
    /// whose records are now all acknowledged (oldest first; never the head).
    pub fn acknowledge(&mut self, last_seq: u32) -> Result<(), LogError<F::Error>> {
        let newest = self.next_seq.wrapping_sub(1);
        let known = self.records().any(|r| r.seq == last_seq);
        if !known || seq_after(last_seq, newest) {
            return Err(LogError::BadAcknowledge);
        }
        if self.acked.is_none_or(|a| seq_after(last_seq, a)) {
            self.acked = Some(last_seq);
        }
        self.reclaim()
    }

    /// Erases fully acknowledged sectors, oldest first.
    pub fn reclaim(&mut self) -> Result<(), LogError<F::Error>> {
        let Some(head) = self.head else {
            return Ok(());
        };
        let ring = self.ring();
        for index in ring {
            if index == head.index {
                break;
            }
            let Some(h) = self.sector_header(index) else {
                break;
            };
            if !self.sector_acknowledged(index, h) {
                break;
            }
            let start = index * self.sector_size;
            self.flash
                .erase(start, start + self.sector_size)
                .map_err(LogError::Flash)?;
        }
        Ok(())
    }

    /// Usage figures.
    pub fn state(&self) -> LogState {
        let mut s = LogState {
            next_seq: self.next_seq,
            acknowledged: self.acked,
            sectors: self.sectors,
            used_sectors: self.ring().count() as u32,
            ..LogState::default()
        };
        for r in self.records() {
            s.records += 1;
            if self.acked.is_none_or(|a| seq_after(r.seq, a)) {
                s.pending += 1;
            }
        }
        s
    }

    /// The partition.
    pub fn flash(&self) -> &F {
        &self.flash
    }

    /// The partition, for tests that cut the power.
    pub fn flash_mut(&mut self) -> &mut F {
        &mut self.flash
    }

    /// The partition.
    pub fn into_inner(self) -> F {
        self.flash
    }
}

/// Whether `a` comes after `b` in sequence-number order (wrapping).
pub fn seq_after(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000_0000
}

struct RingIter {
    start: u32,
    sectors: u32,
    n: u32,
    i: u32,
}

impl Iterator for RingIter {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        if self.i >= self.n {
            return None;
        }
        let idx = (self.start + self.i) % self.sectors;
        self.i += 1;
        Some(idx)
    }
}

/// The committed records of one sector, stopping at the first that is not.
struct SectorRecords<'a> {
    bytes: &'a [u8],
    pos: u32,
    expect: u32,
    unit: usize,
    /// False when the scan stopped at something other than erased flash.
    clean_end: bool,
    done: bool,
}

impl<'a> Iterator for SectorRecords<'a> {
    type Item = RawRecord<'a>;
    fn next(&mut self) -> Option<RawRecord<'a>> {
        if self.done {
            return None;
        }
        let r = self.parse();
        if r.is_none() {
            self.done = true;
        }
        r
    }
}

impl<'a> SectorRecords<'a> {
    fn parse(&mut self) -> Option<RawRecord<'a>> {
        let at = self.pos as usize;
        let h = self.bytes.get(at..at + RECORD_HEADER_LEN)?;
        if h.iter().all(|&b| b == 0xFF) {
            return None;
        }
        // Anything but a complete, committed record from here on is a torn tail.
        self.clean_end = false;
        let len = u16::from_le_bytes([h[0], h[1]]);
        let check = u16::from_le_bytes([h[2], h[3]]);
        let seq = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if check != !len || len as usize > MAX_RECORD_LEN || seq != self.expect {
            return None;
        }
        let len = len as usize;
        let crc_at = at + align(RECORD_HEADER_LEN + len, 4);
        let body = align(align(RECORD_HEADER_LEN + len, 4) + 4, self.unit);
        let commit = align(4, self.unit);
        let stored = self.bytes.get(crc_at..crc_at + 4)?;
        let stored = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]);
        if stored != crc32(&[self.bytes.get(at..crc_at)?]) {
            return None;
        }
        let marker = self.bytes.get(at + body..at + body + commit)?;
        if marker.iter().any(|&b| b != 0) {
            return None;
        }
        self.clean_end = true;
        self.pos = (at + body + commit) as u32;
        self.expect = seq.wrapping_add(1);
        Some(RawRecord {
            seq,
            payload: self
                .bytes
                .get(at + RECORD_HEADER_LEN..at + RECORD_HEADER_LEN + len)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ram_flash::{RamFlash, Tear};
    use std::vec::Vec;

    type Flash<const W: usize> = RamFlash<Vec<u8>, W, 512>;

    fn payload(seq: u32) -> Vec<u8> {
        // Lengths vary so that records straddle write units differently.
        let len = 20 + (seq as usize * 37) % 200;
        (0..len)
            .map(|i| (seq as u8).wrapping_add(i as u8))
            .collect()
    }

    fn contents<F: NorFlash + MappedFlash>(log: &TapLog<F>) -> Vec<(u32, Vec<u8>)> {
        log.records().map(|r| (r.seq, r.payload.to_vec())).collect()
    }

    fn remount<const W: usize>(log: TapLog<Flash<W>>) -> TapLog<Flash<W>> {
        let mut f = log.into_inner();
        f.restore_power();
        TapLog::mount(f).unwrap()
    }

    fn filled<const W: usize>(sectors: usize, n: u32) -> TapLog<Flash<W>> {
        let mut log = TapLog::mount(Flash::<W>::erased(std::vec![0u8; 512 * sectors])).unwrap();
        for seq in 0..n {
            assert_eq!(log.append(&payload(seq)).unwrap(), seq);
        }
        log
    }

    /// A power cut at every flash operation of an append, after every number of prior records
    /// (so appends that open a sector are covered): committed records are never lost, the torn
    /// one is dropped, and sequence numbers continue without repeating.
    fn append_cuts<const W: usize>() {
        for prior in 0..14u32 {
            let twin = filled::<W>(16, prior);
            let mut twin = twin;
            let before_ops = twin.flash().ops();
            twin.append(&payload(prior)).unwrap();
            let ops = twin.flash().ops() - before_ops;
            for n in 0..ops {
                for tear in [Tear::Nothing, Tear::Half, Tear::AllButLast] {
                    let mut log = filled::<W>(16, prior);
                    let committed = contents(&log);
                    log.flash_mut().cut_after(n, tear);
                    assert!(log.append(&payload(prior)).is_err());
                    let mut log = remount(log);
                    assert_eq!(
                        contents(&log),
                        committed,
                        "W={W} prior={prior} n={n} {tear:?}"
                    );
                    assert_eq!(log.next_seq(), prior);
                    // Appending goes on from there, and survives another restart.
                    assert_eq!(log.append(&payload(prior)).unwrap(), prior);
                    assert_eq!(log.append(&payload(prior + 1)).unwrap(), prior + 1);
                    let log = remount(log);
                    let all = contents(&log);
                    assert_eq!(all.len() as u32, prior + 2);
                    for (i, (seq, p)) in all.iter().enumerate() {
                        assert_eq!((*seq, p), (i as u32, &payload(i as u32)));
                    }
                }
            }
        }
    }

    #[test]
    fn append_survives_a_power_cut_at_every_write() {
        append_cuts::<1>();
        append_cuts::<4>();
        append_cuts::<16>();
    }

    #[test]
    fn full_log_refuses_and_keeps_everything_until_acknowledged() {
        let mut log = filled::<4>(3, 0);
        let mut n = 0u32;
        while log.has_room() {
            log.append(&payload(n)).unwrap();
            n += 1;
        }
        // `has_room` is conservative (a record of the largest size); small records may still fit,
        // but at some point the log refuses instead of overwriting.
        loop {
            match log.append(&payload(n)) {
                Ok(_) => n += 1,
                Err(e) => {
                    assert_eq!(e, LogError::Full);
                    break;
                }
            }
        }
        assert_eq!(contents(&log).len() as u32, n);
        assert_eq!(log.state().pending, n);
        // Acknowledging part frees the sectors holding only acknowledged records.
        let first_sector_last = {
            let head_first = log.sector_header(1).unwrap().first_seq;
            head_first - 1
        };
        log.acknowledge(first_sector_last).unwrap();
        assert!(log.has_room());
        let seq = log.append(&payload(n)).unwrap();
        assert_eq!(seq, n);
        // The records after the acknowledgement are all still there.
        let left: Vec<u32> = log.records().map(|r| r.seq).collect();
        assert_eq!(left, (first_sector_last + 1..=n).collect::<Vec<_>>());
        assert_eq!(
            log.pending().map(|r| r.seq).collect::<Vec<_>>(),
            (first_sector_last + 1..=n).collect::<Vec<_>>()
        );
    }

    #[test]
    fn reclaim_survives_a_power_cut_at_every_erase() {
        for acked_upto in [5u32, 20, 30] {
            let mut twin = filled::<4>(16, 32);
            let ops_before = twin.flash().ops();
            twin.acknowledge(acked_upto).unwrap();
            let ops = twin.flash().ops() - ops_before;
            for n in 0..ops.max(1) {
                for tear in [Tear::Nothing, Tear::Half, Tear::AllButLast] {
                    let mut log = filled::<4>(16, 32);
                    let before = contents(&log);
                    log.flash_mut().cut_after(n, tear);
                    let _ = log.acknowledge(acked_upto);
                    let mut log = remount(log);
                    let after = contents(&log);
                    // Every record not acknowledged is still there, unchanged; what remains is a
                    // run of consecutive records ending with the newest.
                    let kept: Vec<_> = before
                        .iter()
                        .filter(|(s, _)| *s > acked_upto)
                        .cloned()
                        .collect();
                    assert!(after.ends_with(&kept), "acked {acked_upto} n={n} {tear:?}");
                    for w in after.windows(2) {
                        assert_eq!(w[0].0 + 1, w[1].0);
                    }
                    assert_eq!(log.next_seq(), 32);
                    assert_eq!(log.append(&payload(32)).unwrap(), 32);
                }
            }
        }
    }

    #[test]
    fn sequence_numbers_survive_reclaiming_everything() {
        let mut log = filled::<4>(6, 10);
        log.acknowledge(9).unwrap();
        let mut log = remount(log);
        assert_eq!(log.next_seq(), 10);
        // Fill past the head and reclaim again, twice round the ring.
        for seq in 10..60 {
            if !log.has_room() {
                log.acknowledge(seq - 1).unwrap();
            }
            assert_eq!(log.append(&payload(seq)).unwrap(), seq);
        }
        let log = remount(log);
        assert_eq!(log.next_seq(), 60);
        let seqs: Vec<u32> = log.records().map(|r| r.seq).collect();
        assert_eq!(*seqs.last().unwrap(), 59);
    }

    #[test]
    fn acknowledging_unknown_records_is_refused() {
        let mut log = filled::<4>(2, 3);
        assert_eq!(log.acknowledge(3), Err(LogError::BadAcknowledge));
        assert_eq!(log.acknowledge(100), Err(LogError::BadAcknowledge));
        log.acknowledge(1).unwrap();
        assert_eq!(log.pending().map(|r| r.seq).collect::<Vec<_>>(), [2]);
        // An older acknowledgement does not move the watermark back.
        log.acknowledge(0).unwrap();
        assert_eq!(log.state().acknowledged, Some(1));
    }

    #[test]
    fn corrupted_records_end_the_scan_and_are_not_reused() {
        let mut log = filled::<4>(3, 4);
        let before = contents(&log);
        // Flip a payload byte of record 2: records 2 and 3 are dropped at mount, and nothing is
        // written over them.
        let offset = {
            let mut at = 16usize;
            for p in before.iter().take(2) {
                at += body_len::<Flash<4>>(p.1.len()) + commit_len::<Flash<4>>();
            }
            at + RECORD_HEADER_LEN + 3
        };
        log.flash_mut().as_bytes_mut()[offset] ^= 0x10;
        let mut log = remount(log);
        assert_eq!(contents(&log), before[..2].to_vec());
        assert_eq!(log.next_seq(), 2);
        assert_eq!(log.append(&payload(2)).unwrap(), 2);
        let log = remount(log);
        assert_eq!(log.records().count(), 3);
    }

    #[test]
    fn bad_geometry_is_refused() {
        let f = RamFlash::<Vec<u8>, 4, 512>::erased(std::vec![0u8; 512]);
        assert!(matches!(TapLog::mount(f), Err(LogError::BadGeometry)));
        let f = RamFlash::<Vec<u8>, 4, 256>::erased(std::vec![0u8; 1024]);
        assert!(matches!(TapLog::mount(f), Err(LogError::BadGeometry)));
        let f = RamFlash::<Vec<u8>, 128, 4096>::erased(std::vec![0u8; 8192]);
        assert!(matches!(TapLog::mount(f), Err(LogError::BadGeometry)));
    }
}
