//! Non-volatile storage: a raw memory trait, the RAM-backed store with a power-cut injector, and
//! the record layer that makes every record survive power loss at any write.
//!
//! **Record layer.** Each record has two slots. A slot is a 16-byte header followed by the payload:
//! `A5 || id || len (u16 BE) || seq (u32 BE) || check (8 bytes)` with
//! `check = SHA-256(A5 || id || len || seq || payload)[..8]`. A valid slot has the magic, its own
//! id, `len` within the record's capacity and a matching check; the record's value is the valid slot
//! with the higher `seq`. A commit writes header and payload of the *other* slot with `seq + 1` in
//! one write, so a write torn anywhere leaves that slot invalid and the old value in force, and a
//! completed write makes the new value win. Erasing zeroes both slots.
//! The layout (record ids, capacities, offsets) is in `docs/protocol-card.md`.

use shared_crypto::sig::sha256_parts;

/// Why the store failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// An access outside the memory.
    OutOfRange,
    /// Power was lost (injected by [`RamStore::cut_power_at`]); nothing works until power returns.
    PowerLost,
    /// A memory image of the wrong size ([`RamStore::from_bytes`]).
    BadImage,
    /// A record payload exceeds its capacity.
    TooLarge,
    /// The memory is too small for the applet's layout.
    TooSmall,
}

impl core::fmt::Display for StoreError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            StoreError::OutOfRange => "store access out of range",
            StoreError::PowerLost => "power lost",
            StoreError::BadImage => "store image has the wrong size",
            StoreError::TooLarge => "record larger than its capacity",
            StoreError::TooSmall => "store smaller than the applet layout",
        })
    }
}

impl core::error::Error for StoreError {}

/// Raw non-volatile memory (EEPROM or flash behind a driver). A write may be torn by power loss:
/// then any prefix of it may have reached the memory. The record layer above copes with that.
pub trait Store {
    /// Size in bytes.
    fn capacity(&self) -> usize;
    /// Reads `buf.len()` bytes at `offset`.
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), StoreError>;
    /// Writes `data` at `offset`.
    fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), StoreError>;
}

impl<S: Store + ?Sized> Store for &mut S {
    fn capacity(&self) -> usize {
        (**self).capacity()
    }
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), StoreError> {
        (**self).read(offset, buf)
    }
    fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), StoreError> {
        (**self).write(offset, data)
    }
}

/// The records of the applet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum RecordId {
    /// Written at the factory: kvn, static keys, key diversification data.
    Factory = 0,
    /// Life cycle.
    State = 1,
    /// Personalization generation, card private and public key.
    CardKey = 2,
    /// Generation, credential wire bytes.
    Credential = 3,
    /// Generation, disclosures list.
    Disclosures = 4,
    /// Generation, root public key.
    RootKey = 5,
    /// Generation, balance, counter, last voucher seq, last debit and its receipt.
    Purse = 6,
    /// Last seen authenticated time.
    Clock = 7,
}

/// Payload capacities, indexed by record id.
const CAPACITY: [usize; 8] = [64, 8, 80, 520, 648, 40, PURSE_CAPACITY, 8];

/// Payload capacity of the purse record (its balance, counter and the receipts of its last
/// debits, see the applet's `RECENT_DEBITS`).
pub(crate) const PURSE_CAPACITY: usize = 568;

/// Bytes of a slot header.
pub(crate) const HEADER_LEN: usize = 16;
const MAGIC: u8 = 0xA5;

/// Largest payload of any record.
pub(crate) const MAX_PAYLOAD: usize = 648;

const fn layout_size() -> usize {
    let mut total = 0;
    let mut i = 0;
    while i < CAPACITY.len() {
        total += 2 * (HEADER_LEN + CAPACITY[i]);
        i += 1;
    }
    total
}

/// Bytes of memory the applet's records occupy (from offset 0).
pub const LAYOUT_SIZE: usize = layout_size();

impl RecordId {
    pub(crate) const ALL: [RecordId; 8] = [
        RecordId::Factory,
        RecordId::State,
        RecordId::CardKey,
        RecordId::Credential,
        RecordId::Disclosures,
        RecordId::RootKey,
        RecordId::Purse,
        RecordId::Clock,
    ];

    pub(crate) fn capacity(self) -> usize {
        CAPACITY[self as usize]
    }

    fn slot_offset(self, slot: usize) -> usize {
        let mut off = 0;
        for id in RecordId::ALL {
            if id == self {
                return off + slot * (HEADER_LEN + id.capacity());
            }
            off += 2 * (HEADER_LEN + id.capacity());
        }
        off
    }
}

fn check(id: RecordId, len: u16, seq: u32, payload: &[u8]) -> [u8; 8] {
    let d = sha256_parts(&[
        &[MAGIC, id as u8],
        &len.to_be_bytes(),
        &seq.to_be_bytes(),
        payload,
    ]);
    let mut c = [0u8; 8];
    c.copy_from_slice(&d[..8]);
    c
}

/// Reads slot `slot` of `id` into `buf`; returns `(seq, len)` if the slot is valid.
fn read_slot<S: Store + ?Sized>(
    store: &S,
    id: RecordId,
    slot: usize,
    buf: &mut [u8],
) -> Result<Option<(u32, usize)>, StoreError> {
    let off = id.slot_offset(slot);
    let mut h = [0u8; HEADER_LEN];
    store.read(off, &mut h)?;
    if h[0] != MAGIC || h[1] != id as u8 {
        return Ok(None);
    }
    let len = u16::from_be_bytes([h[2], h[3]]);
    let seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let n = len as usize;
    if n > id.capacity() || n > buf.len() {
        return Ok(None);
    }
    store.read(off + HEADER_LEN, &mut buf[..n])?;
    if check(id, len, seq, &buf[..n]) != h[8..16] {
        return Ok(None);
    }
    Ok(Some((seq, n)))
}

/// The valid slot with the highest sequence number: `(slot, seq)`.
fn current<S: Store + ?Sized>(
    store: &S,
    id: RecordId,
    buf: &mut [u8],
) -> Result<Option<(usize, u32, usize)>, StoreError> {
    let a = read_slot(store, id, 0, buf)?;
    let b = read_slot(store, id, 1, buf)?;
    Ok(match (a, b) {
        (Some((sa, la)), Some((sb, _))) if sa > sb => Some((0, sa, la)),
        (_, Some((sb, lb))) => Some((1, sb, lb)),
        (Some((sa, la)), None) => Some((0, sa, la)),
        (None, None) => None,
    })
}

/// Loads record `id` into `buf` (at least its capacity), returning the payload length, or `None`
/// when the record was never written (or erased).
pub(crate) fn load<S: Store + ?Sized>(
    store: &S,
    id: RecordId,
    buf: &mut [u8],
) -> Result<Option<usize>, StoreError> {
    match current(store, id, buf)? {
        // The second read above may have overwritten buf with the other slot: read the winner again.
        Some((slot, _, _)) => Ok(read_slot(store, id, slot, buf)?.map(|(_, n)| n)),
        None => Ok(None),
    }
}

/// Atomically replaces record `id` with `payload` (one write of the other slot).
pub(crate) fn commit<S: Store + ?Sized>(
    store: &mut S,
    id: RecordId,
    payload: &[u8],
) -> Result<(), StoreError> {
    if payload.len() > id.capacity() {
        return Err(StoreError::TooLarge);
    }
    let mut scratch = [0u8; MAX_PAYLOAD];
    let (slot, seq) = match current(store, id, &mut scratch)? {
        Some((slot, seq, _)) => (1 - slot, seq.wrapping_add(1)),
        None => (0, 1),
    };
    let len = payload.len() as u16;
    let mut image = [0u8; HEADER_LEN + MAX_PAYLOAD];
    image[0] = MAGIC;
    image[1] = id as u8;
    image[2..4].copy_from_slice(&len.to_be_bytes());
    image[4..8].copy_from_slice(&seq.to_be_bytes());
    image[8..16].copy_from_slice(&check(id, len, seq, payload));
    image[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
    store.write(id.slot_offset(slot), &image[..HEADER_LEN + payload.len()])
}

/// Erases record `id`: zeroes both slots, header and payload (two writes; each leaves its slot
/// invalid, or untouched if torn before its first byte).
pub(crate) fn erase<S: Store + ?Sized>(store: &mut S, id: RecordId) -> Result<(), StoreError> {
    let zero = [0u8; HEADER_LEN + MAX_PAYLOAD];
    let n = HEADER_LEN + id.capacity();
    store.write(id.slot_offset(0), &zero[..n])?;
    store.write(id.slot_offset(1), &zero[..n])
}

/// Payload capacities of the first layout (applet 1.0): the purse was smaller.
const V1_CAPACITY: [usize; 8] = [64, 8, 80, 520, 648, 40, 200, 8];

/// Size of a [`RamStore`] image of the first layout.
pub const V1_STORE_SIZE: usize = 3584;

// Each slot of the first layout fits its place in this one, and the first layout's size is its
// records' rounded up to 256 as [`RAM_STORE_SIZE`] is.
const _: () = {
    let (mut i, mut v1) = (0, 0);
    while i < CAPACITY.len() {
        assert!(V1_CAPACITY[i] <= CAPACITY[i]);
        v1 += 2 * (HEADER_LEN + V1_CAPACITY[i]);
        i += 1;
    }
    assert!(v1.div_ceil(256) * 256 == V1_STORE_SIZE);
};

/// An image of the first layout in this one. A slot's header and check do not depend on where
/// it lies, and every capacity is at least what it was, so each slot moves as it is; the rest
/// stays erased.
fn from_v1(image: &[u8]) -> [u8; RAM_STORE_SIZE] {
    let mut mem = [0xFF; RAM_STORE_SIZE];
    let mut from = 0;
    for id in RecordId::ALL {
        let old = HEADER_LEN + V1_CAPACITY[id as usize];
        for slot in 0..2 {
            let to = id.slot_offset(slot);
            mem[to..to + old].copy_from_slice(&image[from..from + old]);
            from += old;
        }
    }
    mem
}

/// Size of a [`RamStore`] (the layout rounded up to 256 bytes).
pub const RAM_STORE_SIZE: usize = LAYOUT_SIZE.div_ceil(256) * 256;

/// A RAM-backed [`Store`] with a power-cut injector, for the virtual card, the in-memory card and
/// tests. A fresh store is erased (0xFF). Its image ([`RamStore::as_bytes`]) can be saved to a file
/// and loaded back with [`RamStore::from_bytes`].
#[derive(Clone)]
pub struct RamStore {
    mem: [u8; RAM_STORE_SIZE],
    writes: u32,
    /// `(writes left before the torn one, bytes of the torn write that land)`.
    cut: Option<(u32, usize)>,
    dead: bool,
}

impl core::fmt::Debug for RamStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RamStore")
            .field("size", &RAM_STORE_SIZE)
            .field("writes", &self.writes)
            .field("cut", &self.cut)
            .field("dead", &self.dead)
            .finish()
    }
}

impl Default for RamStore {
    fn default() -> Self {
        Self::new()
    }
}

impl RamStore {
    /// Size of the memory in bytes.
    pub const SIZE: usize = RAM_STORE_SIZE;

    /// An erased store.
    pub fn new() -> Self {
        RamStore {
            mem: [0xFF; RAM_STORE_SIZE],
            writes: 0,
            cut: None,
            dead: false,
        }
    }

    /// The memory image (for saving the card's state).
    pub fn as_bytes(&self) -> &[u8] {
        &self.mem
    }

    /// A store from a saved image: of exactly [`RamStore::SIZE`] bytes, or of the first
    /// layout's [`V1_STORE_SIZE`] (applet 1.0, whose purse kept one debit), whose slots are
    /// moved to this layout's offsets.
    pub fn from_bytes(image: &[u8]) -> Result<Self, StoreError> {
        let mem: [u8; RAM_STORE_SIZE] = if image.len() == V1_STORE_SIZE {
            from_v1(image)
        } else {
            image.try_into().map_err(|_| StoreError::BadImage)?
        };
        Ok(RamStore {
            mem,
            writes: 0,
            cut: None,
            dead: false,
        })
    }

    /// Arms a power cut: the write `n` writes from now (0 = the next one) lands only its first
    /// `torn` bytes (all of them if `torn` is larger) and fails with [`StoreError::PowerLost`];
    /// every access after it fails too, until [`RamStore::restore_power`].
    pub fn cut_power_at(&mut self, n: u32, torn: usize) {
        self.cut = Some((n, torn));
    }

    /// Power is back: accesses work again and no cut is armed.
    pub fn restore_power(&mut self) {
        self.cut = None;
        self.dead = false;
    }

    /// Whether an injected power cut happened and power was not restored yet.
    pub fn power_lost(&self) -> bool {
        self.dead
    }

    /// Writes attempted since the store was created or loaded (torn ones included).
    pub fn writes(&self) -> u32 {
        self.writes
    }
}

impl Store for RamStore {
    fn capacity(&self) -> usize {
        RAM_STORE_SIZE
    }

    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), StoreError> {
        if self.dead {
            return Err(StoreError::PowerLost);
        }
        let end = offset
            .checked_add(buf.len())
            .ok_or(StoreError::OutOfRange)?;
        let src = self.mem.get(offset..end).ok_or(StoreError::OutOfRange)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), StoreError> {
        if self.dead {
            return Err(StoreError::PowerLost);
        }
        let end = offset
            .checked_add(data.len())
            .ok_or(StoreError::OutOfRange)?;
        let dst = self
            .mem
            .get_mut(offset..end)
            .ok_or(StoreError::OutOfRange)?;
        self.writes = self.writes.wrapping_add(1);
        match self.cut {
            Some((0, torn)) => {
                let n = torn.min(data.len());
                dst[..n].copy_from_slice(&data[..n]);
                self.dead = true;
                self.cut = None;
                Err(StoreError::PowerLost)
            }
            Some((left, torn)) => {
                self.cut = Some((left - 1, torn));
                dst.copy_from_slice(data);
                Ok(())
            }
            None => {
                dst.copy_from_slice(data);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_fits_ram_store() {
        const { assert!(LAYOUT_SIZE <= RAM_STORE_SIZE) };
        let last = RecordId::Clock;
        assert_eq!(
            last.slot_offset(1) + HEADER_LEN + last.capacity(),
            LAYOUT_SIZE
        );
        assert_eq!(
            MAX_PAYLOAD,
            *CAPACITY.iter().max().unwrap(),
            "MAX_PAYLOAD must be the largest capacity"
        );
    }

    #[test]
    fn layout_offsets_match_the_documentation() {
        // docs/protocol-card.md, section 6.
        let expect = [
            (0x0000, 0x0050),
            (0x00A0, 0x00B8),
            (0x00D0, 0x0130),
            (0x0190, 0x03A8),
            (0x05C0, 0x0858),
            (0x0AF0, 0x0B28),
            (0x0B60, 0x0DA8),
            (0x0FF0, 0x1008),
        ];
        for (id, slots) in RecordId::ALL.iter().zip(expect) {
            assert_eq!((id.slot_offset(0), id.slot_offset(1)), slots, "{id:?}");
        }
        assert_eq!(RAM_STORE_SIZE, 4352);
    }

    #[test]
    fn commit_load_alternates_slots() {
        let mut s = RamStore::new();
        let mut buf = [0u8; MAX_PAYLOAD];
        assert_eq!(load(&s, RecordId::Purse, &mut buf).unwrap(), None);
        for i in 0..5u8 {
            commit(&mut s, RecordId::Purse, &[i; 10]).unwrap();
            let n = load(&s, RecordId::Purse, &mut buf).unwrap().unwrap();
            assert_eq!(&buf[..n], &[i; 10]);
        }
        assert_eq!(s.writes(), 5);
        assert_eq!(
            commit(&mut s, RecordId::Purse, &[0; PURSE_CAPACITY + 1]),
            Err(StoreError::TooLarge)
        );
    }

    #[test]
    fn torn_commit_keeps_old_or_new_value() {
        let mut buf = [0u8; MAX_PAYLOAD];
        for torn in 0..=(HEADER_LEN + 12) {
            let mut s = RamStore::new();
            commit(&mut s, RecordId::Clock, &[1; 8]).unwrap();
            commit(&mut s, RecordId::Clock, &[2; 8]).unwrap();
            s.cut_power_at(0, torn);
            assert_eq!(
                commit(&mut s, RecordId::Clock, &[3; 8]),
                Err(StoreError::PowerLost)
            );
            assert!(s.power_lost());
            assert_eq!(
                load(&s, RecordId::Clock, &mut buf),
                Err(StoreError::PowerLost)
            );
            s.restore_power();
            let n = load(&s, RecordId::Clock, &mut buf).unwrap().unwrap();
            let v = &buf[..n];
            if torn >= HEADER_LEN + 8 {
                assert_eq!(v, &[3; 8], "complete write must win (torn {torn})");
            } else {
                assert_eq!(v, &[2; 8], "torn write must leave old value (torn {torn})");
            }
        }
    }

    #[test]
    fn erase_and_image_round_trip() {
        let mut s = RamStore::new();
        let mut buf = [0u8; MAX_PAYLOAD];
        commit(&mut s, RecordId::RootKey, &[9; 33]).unwrap();
        let copy = RamStore::from_bytes(s.as_bytes()).unwrap();
        assert_eq!(load(&copy, RecordId::RootKey, &mut buf).unwrap(), Some(33));
        erase(&mut s, RecordId::RootKey).unwrap();
        assert_eq!(load(&s, RecordId::RootKey, &mut buf).unwrap(), None);
        assert_eq!(
            RamStore::from_bytes(&[0u8; 10]).unwrap_err(),
            StoreError::BadImage
        );
        assert_eq!(
            s.read(RAM_STORE_SIZE, &mut [0u8; 1]),
            Err(StoreError::OutOfRange)
        );
    }

    #[test]
    fn cut_after_n_writes() {
        let mut s = RamStore::new();
        s.cut_power_at(2, 0);
        commit(&mut s, RecordId::Clock, &[1; 8]).unwrap();
        commit(&mut s, RecordId::Clock, &[2; 8]).unwrap();
        assert!(commit(&mut s, RecordId::Clock, &[3; 8]).is_err());
        assert!(commit(&mut s, RecordId::Clock, &[4; 8]).is_err());
        s.restore_power();
        let mut buf = [0u8; MAX_PAYLOAD];
        assert_eq!(load(&s, RecordId::Clock, &mut buf).unwrap(), Some(8));
        assert_eq!(&buf[..8], &[2; 8]);
    }
}
