//! Double-buffered objects in flash (trust bundle, status list, service rules): two partitions per
//! object, an update is written into the one not in force and becomes the one in force only when its
//! header — written last, in one write, CRC-protected — is complete.
//!
//! Slot layout (`docs/terminal.md` §Flash): bytes `0..64` header, payload from byte 64.
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `TSL1` |
//! | 4 | object kind ([`UpdateKind`] code) |
//! | 5..8 | zero |
//! | 8..12 | generation (u32 LE; the valid slot with the higher one is in force) |
//! | 12..16 | payload length |
//! | 16..20, 20..24 | offset and length, inside the payload, of the part the terminal uses |
//! | 24..32 | epoch (u64 LE) |
//! | 32..40 | issued_at (u64 LE) |
//! | 40..56 | first 16 bytes of SHA-256 of the payload |
//! | 56..60 | `FF` |
//! | 60..64 | CRC-32 of bytes 0..60 (last, so that a write torn anywhere fails it) |
//!
//! A power cut while the payload is written leaves a slot without a valid header; one while the
//! header is written leaves a header whose CRC fails. Either way the other slot stays in force.
//! The payload hash is checked at mount, so a slot whose payload changed afterwards is not used.

use embedded_storage::nor_flash::NorFlash;
use shared_crypto::sig::sha256_parts;
use shared_crypto::status_list::ByteSink;

use crate::crc::crc32;
use crate::platform::MappedFlash;
use crate::terminal::UpdateKind;

/// Bytes reserved for the slot header; the payload starts here.
pub const SLOT_HEADER_LEN: usize = 64;
const MAGIC: [u8; 4] = *b"TSL1";
/// Largest write unit supported (the header and the write buffer are multiples of it).
pub const MAX_WRITE_SIZE: usize = 64;

/// The header of a committed slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotHeader {
    /// Which object.
    pub kind: u8,
    /// Commit counter.
    pub generation: u32,
    /// Bytes of payload.
    pub payload_len: u32,
    /// Offset of the used part in the payload.
    pub view_off: u32,
    /// Length of the used part.
    pub view_len: u32,
    /// The object's epoch.
    pub epoch: u64,
    /// When the object was signed.
    pub issued_at: u64,
    /// Truncated SHA-256 of the payload.
    pub digest: [u8; 16],
}

impl SlotHeader {
    /// The truncated SHA-256 of `payload`, as [`SlotHeader::digest`] holds it.
    pub fn digest_of(payload: &[u8]) -> [u8; 16] {
        let d = sha256_parts(&[payload]);
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&d[..16]);
        digest
    }

    /// The header as it is written to bytes `0..64` of a slot (layout in the module
    /// documentation): magic, fields, `FF` filler and the CRC over bytes `0..60`. A slot whose
    /// first bytes are these, followed by a payload matching `payload_len` and `digest`, mounts
    /// with this header in force (if its generation is the newer and `kind` is the pair's).
    pub fn encode(&self) -> [u8; SLOT_HEADER_LEN] {
        let mut h = [0u8; SLOT_HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC);
        h[4] = self.kind;
        h[8..12].copy_from_slice(&self.generation.to_le_bytes());
        h[12..16].copy_from_slice(&self.payload_len.to_le_bytes());
        h[16..20].copy_from_slice(&self.view_off.to_le_bytes());
        h[20..24].copy_from_slice(&self.view_len.to_le_bytes());
        h[24..32].copy_from_slice(&self.epoch.to_le_bytes());
        h[32..40].copy_from_slice(&self.issued_at.to_le_bytes());
        h[40..56].copy_from_slice(&self.digest);
        h[56..60].fill(0xFF);
        let crc = crc32(&[&h[..60]]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Reads a header from the first [`SLOT_HEADER_LEN`] bytes of `h`: `None` when they are
    /// fewer, or the magic, the zero bytes or the CRC do not match. (Kind, view bounds and payload
    /// digest are checked by [`SlotPair::mount`].)
    pub fn decode(h: &[u8]) -> Option<Self> {
        let h: &[u8; SLOT_HEADER_LEN] = h.get(..SLOT_HEADER_LEN)?.try_into().ok()?;
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | (u64::from(u32_at(i + 4)) << 32);
        if h[0..4] != MAGIC || h[5..8] != [0, 0, 0] || u32_at(60) != crc32(&[&h[..60]]) {
            return None;
        }
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&h[40..56]);
        Some(SlotHeader {
            kind: h[4],
            generation: u32_at(8),
            payload_len: u32_at(12),
            view_off: u32_at(16),
            view_len: u32_at(20),
            epoch: u64_at(24),
            issued_at: u64_at(32),
            digest,
        })
    }
}

/// Why a slot operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotError<E> {
    /// The flash failed (the slot in force is untouched).
    Flash(E),
    /// The object does not fit the slot.
    TooLarge,
    /// No update is being staged.
    NotStaging,
}

/// Writes a byte stream to flash in whole write units, buffering the remainder.
#[derive(Clone, Copy, Debug)]
pub struct AlignedWriter {
    /// Next flash offset to write.
    pos: u32,
    /// Limit (exclusive).
    end: u32,
    pending: [u8; MAX_WRITE_SIZE],
    npending: usize,
    /// Bytes accepted so far.
    written: u32,
}

impl AlignedWriter {
    /// A writer from `start` (aligned) up to `end`.
    pub fn new(start: u32, end: u32) -> Self {
        AlignedWriter {
            pos: start,
            end,
            pending: [0xFF; MAX_WRITE_SIZE],
            npending: 0,
            written: 0,
        }
    }

    /// Bytes accepted so far.
    pub fn written(&self) -> u32 {
        self.written
    }

    /// Appends `data`.
    pub fn write<F: NorFlash>(
        &mut self,
        flash: &mut F,
        mut data: &[u8],
    ) -> Result<(), SlotError<F::Error>> {
        let room = (self.end - self.pos) as usize - self.npending;
        if data.len() > room {
            return Err(SlotError::TooLarge);
        }
        self.written += data.len() as u32;
        while !data.is_empty() {
            let take = (MAX_WRITE_SIZE - self.npending).min(data.len());
            self.pending[self.npending..self.npending + take].copy_from_slice(&data[..take]);
            self.npending += take;
            data = &data[take..];
            if self.npending == MAX_WRITE_SIZE {
                self.flush_full(flash)?;
            }
        }
        Ok(())
    }

    fn flush_full<F: NorFlash>(&mut self, flash: &mut F) -> Result<(), SlotError<F::Error>> {
        flash
            .write(self.pos, &self.pending)
            .map_err(SlotError::Flash)?;
        self.pos += MAX_WRITE_SIZE as u32;
        self.npending = 0;
        self.pending = [0xFF; MAX_WRITE_SIZE];
        Ok(())
    }

    /// Writes what is buffered, padded with `FF` to a whole write unit.
    pub fn finish<F: NorFlash>(&mut self, flash: &mut F) -> Result<(), SlotError<F::Error>> {
        if self.npending == 0 {
            return Ok(());
        }
        let n = self.npending.div_ceil(F::WRITE_SIZE) * F::WRITE_SIZE;
        flash
            .write(self.pos, &self.pending[..n])
            .map_err(SlotError::Flash)?;
        self.pos += n as u32;
        self.npending = 0;
        self.pending = [0xFF; MAX_WRITE_SIZE];
        Ok(())
    }
}

/// A [`ByteSink`] writing through an [`AlignedWriter`] into a flash partition.
pub struct FlashSink<'f, F: NorFlash> {
    /// The partition.
    pub flash: &'f mut F,
    /// The writer state.
    pub writer: AlignedWriter,
}

impl<F: NorFlash> ByteSink for FlashSink<'_, F> {
    type Error = SlotError<F::Error>;
    fn write(&mut self, data: &[u8]) -> Result<(), Self::Error> {
        self.writer.write(self.flash, data)
    }
}

/// The object in force and a sink into the spare slot (see [`SlotPair::derive`]).
pub type Derived<'s, F> = (&'s [u8], FlashSink<'s, F>);

/// Two partitions holding one object, double-buffered.
#[derive(Debug)]
pub struct SlotPair<F> {
    slots: [F; 2],
    kind: UpdateKind,
    active: Option<(usize, SlotHeader)>,
    staging: Option<AlignedWriter>,
}

impl<F: NorFlash + MappedFlash> SlotPair<F> {
    /// Reads both slots and puts the valid one with the higher generation in force.
    pub fn mount(slots: [F; 2], kind: UpdateKind) -> Self {
        let mut active: Option<(usize, SlotHeader)> = None;
        for (i, slot) in slots.iter().enumerate() {
            let Some(h) = Self::valid_header(slot, kind) else {
                continue;
            };
            // Serial-number order: the generation wraps, and a commit after 0xFFFF_FFFF
            // (generation 0) must win over it at the next mount (found by fuzz/slot_header).
            if active.is_none_or(|(_, a)| crate::log::seq_after(h.generation, a.generation)) {
                active = Some((i, h));
            }
        }
        SlotPair {
            slots,
            kind,
            active,
            staging: None,
        }
    }

    fn valid_header(slot: &F, kind: UpdateKind) -> Option<SlotHeader> {
        let bytes = slot.mapped();
        let h = SlotHeader::decode(bytes)?;
        let payload = bytes
            .get(SLOT_HEADER_LEN..)?
            .get(..h.payload_len as usize)?;
        let view_end = h.view_off.checked_add(h.view_len)?;
        if h.kind != kind as u8 || view_end > h.payload_len {
            return None;
        }
        (SlotHeader::digest_of(payload) == h.digest).then_some(h)
    }

    /// The header of the object in force.
    pub fn active(&self) -> Option<&SlotHeader> {
        self.active.as_ref().map(|(_, h)| h)
    }

    /// The used part of the object in force.
    pub fn view(&self) -> Option<&[u8]> {
        let (i, h) = self.active.as_ref()?;
        let start = SLOT_HEADER_LEN + h.view_off as usize;
        self.slots[*i]
            .mapped()
            .get(start..start + h.view_len as usize)
    }

    fn spare(&self) -> usize {
        match self.active {
            Some((i, _)) => 1 - i,
            None => 0,
        }
    }

    /// Erases the spare slot and starts staging an object into it.
    pub fn begin(&mut self) -> Result<(), SlotError<F::Error>> {
        self.staging = None;
        let spare = &mut self.slots[self.spare()];
        let cap = spare.capacity() as u32;
        spare.erase(0, cap).map_err(SlotError::Flash)?;
        self.staging = Some(AlignedWriter::new(SLOT_HEADER_LEN as u32, cap));
        Ok(())
    }

    /// Appends to the staged object.
    pub fn write(&mut self, data: &[u8]) -> Result<(), SlotError<F::Error>> {
        let spare = self.spare();
        let w = self.staging.as_mut().ok_or(SlotError::NotStaging)?;
        w.write(&mut self.slots[spare], data)
    }

    /// Flushes the staged object and returns its bytes as they are in flash.
    pub fn staged(&mut self) -> Result<&[u8], SlotError<F::Error>> {
        let spare = self.spare();
        let w = self.staging.as_mut().ok_or(SlotError::NotStaging)?;
        w.finish(&mut self.slots[spare])?;
        let len = w.written() as usize;
        self.slots[spare]
            .mapped()
            .get(SLOT_HEADER_LEN..SLOT_HEADER_LEN + len)
            .ok_or(SlotError::TooLarge)
    }

    /// Drops the staged object (the spare slot is left without a valid header).
    pub fn abort(&mut self) {
        self.staging = None;
    }

    /// Whether an object is being staged.
    pub fn is_staging(&self) -> bool {
        self.staging.is_some()
    }

    /// The object in force (read side) and a sink into the erased spare slot (write side), for
    /// building the next version from the current one (a status-list delta). Returns `None` when
    /// nothing is in force.
    pub fn derive(&mut self) -> Result<Option<Derived<'_, F>>, SlotError<F::Error>> {
        let Some((active, h)) = self.active else {
            return Ok(None);
        };
        self.begin()?;
        self.staging = None;
        let cap = self.slots[1 - active].capacity() as u32;
        let [a, b] = &mut self.slots;
        let (cur, spare) = if active == 0 { (a, b) } else { (b, a) };
        let start = SLOT_HEADER_LEN + h.view_off as usize;
        let view = cur
            .mapped()
            .get(start..start + h.view_len as usize)
            .unwrap_or(&[]);
        Ok(Some((
            view,
            FlashSink {
                flash: spare,
                writer: AlignedWriter::new(SLOT_HEADER_LEN as u32, cap),
            },
        )))
    }

    /// Commits what the spare slot holds (`payload_len` bytes after the header) as the object in
    /// force: one header write. Until it completes the previous object stays in force.
    pub fn commit(
        &mut self,
        payload_len: u32,
        view_off: u32,
        view_len: u32,
        epoch: u64,
        issued_at: u64,
    ) -> Result<(), SlotError<F::Error>> {
        self.staging = None;
        let spare = self.spare();
        let generation = self.active.map_or(1, |(_, h)| h.generation.wrapping_add(1));
        let payload = self.slots[spare]
            .mapped()
            .get(SLOT_HEADER_LEN..SLOT_HEADER_LEN + payload_len as usize)
            .ok_or(SlotError::TooLarge)?;
        let digest = SlotHeader::digest_of(payload);
        let header = SlotHeader {
            kind: self.kind as u8,
            generation,
            payload_len,
            view_off,
            view_len,
            epoch,
            issued_at,
            digest,
        };
        self.slots[spare]
            .write(0, &header.encode())
            .map_err(SlotError::Flash)?;
        self.active = Some((spare, header));
        Ok(())
    }

    /// The partitions.
    pub fn into_inner(self) -> [F; 2] {
        self.slots
    }

    /// The partitions, for inspection.
    pub fn slots(&self) -> &[F; 2] {
        &self.slots
    }

    /// The partitions, for tests that cut the power or corrupt flash.
    pub fn slots_mut(&mut self) -> &mut [F; 2] {
        &mut self.slots
    }
}
