//! The revocation status list: a compressed bitstring over `status_index` (bit 1 = revoked) that a
//! terminal keeps in flash and queries in place, plus the sorted index sets that carry deltas.
//!
//! The byte layout is specified in `docs/protocol-status-list.md` (merged into `docs/protocol.md`);
//! this summary is for orientation only.
//!
//! * **Status list v1**: a 16-byte header (version, flags, size, revoked count, block length, data
//!   length), a block index of fixed-width bit-packed entries, then the data: the gaps between
//!   consecutive stored indices, Rice-coded, MSB first. The stored indices are grouped into blocks
//!   of `block_len` indices; each block index entry holds the block's first index, the bit offset of
//!   its codes and its own Rice parameter, so a lookup is a binary search over the entries followed
//!   by decoding one block. When more than half of the indices are revoked, the complement (the
//!   indices still valid) is stored instead, so the all-revoked list is as small as the empty one.
//! * **Index set v1**: a 6-byte header (version, Rice parameter, count) and the Rice-coded gaps of
//!   a strictly increasing set of `u32`; used for the indices newly revoked between two epochs.
//!
//! Every encoder here is deterministic (the same set and block length give the same bytes), writes
//! its output once, in order, into a [`ByteSink`] and needs O(1) RAM: it reads its input several
//! times instead (hence the `Clone` bound on input iterators), which is cheap for a slice or for a
//! view in flash and lets it validate the whole input before the first byte is written. So
//! [`apply_delta`] can stream `old ∪ added` straight into flash, and writes nothing at all when the
//! delta does not apply.
//!
//! Parsing is split by cost: [`StatusListView::parse`] checks the header and the whole block index
//! (O(number of blocks)); the Rice data is checked as it is decoded — by every lookup for the part it
//! reads, completely by [`StatusListView::validate`] and [`StatusListView::iter_revoked`].
//! [`IndexSetView::parse`] checks everything (deltas are small). No input makes any of this panic or
//! read out of bounds.

use core::fmt;
use core::num::NonZeroU16;

#[cfg(feature = "alloc")]
use alloc::vec::Vec;

/// First byte of a status list in the format this module reads and writes.
pub const STATUS_LIST_VERSION: u8 = 1;
/// First byte of an index set in the format this module reads and writes.
pub const INDEX_SET_VERSION: u8 = 1;
/// Length of the fixed status-list header in bytes.
pub const HEADER_LEN: usize = 16;
/// Length of the fixed index-set header in bytes.
pub const INDEX_SET_HEADER_LEN: usize = 6;
/// Block length (stored indices per block) used unless the encoder is told otherwise. With it the
/// block index is 1.1 %, 1.5 % and 1.8 % of the list at 0.5 %, 2 % and 5 % revoked, and a lookup
/// decodes at most 511 Rice codes (256 on average).
pub const DEFAULT_BLOCK_LEN: NonZeroU16 = match NonZeroU16::new(512) {
    Some(n) => n,
    None => NonZeroU16::MIN,
};
/// Largest Rice parameter: gaps are below 2^32, so a larger one never helps.
pub const MAX_RICE_K: u32 = 31;

/// Width of the Rice-parameter field of a block index entry.
const K_FIELD_BITS: u32 = 5;
/// Header flag: the data holds the indices that are NOT revoked.
const FLAG_COMPLEMENT: u8 = 0x01;
/// Largest blob the encoders produce and the parsers accept, so that every length fits `usize`
/// on 32-bit terminals.
const MAX_BLOB_LEN: u64 = u32::MAX as u64;

// ---------------------------------------------------------------------------------------------
// Errors

/// Why a status list or index set was refused, or could not be built or updated.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusListError {
    /// The bytes end before the structure does.
    Truncated {
        /// Bytes needed (at least this many, when the end was found while decoding bits).
        needed: u64,
        /// Bytes present.
        available: u64,
    },
    /// The first byte names a format version this code does not know.
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// A header field has a value the format does not allow.
    BadHeader {
        /// Which field.
        field: &'static str,
    },
    /// A block index entry is out of range or out of order (first index, bit offset, or the
    /// index's padding bits).
    BadBlockIndex {
        /// The entry's position in the block index.
        block: u32,
    },
    /// The Rice data of a block does not decode to what the block index promises (runs past the
    /// block, leaves bits over, leaves the range of the block, or has non-zero padding). For an
    /// index set, the whole set is block 0.
    Corrupt {
        /// The block whose data is bad.
        block: u32,
    },
    /// Bytes follow the end of the structure.
    TrailingBytes {
        /// How many bytes are left over.
        extra: u64,
    },
    /// An index is not below the list size (a lookup, an encoder input or a delta entry).
    IndexOutOfRange {
        /// The index given.
        index: u32,
        /// The list size.
        size: u32,
    },
    /// Encoder input was not strictly increasing.
    NotIncreasing {
        /// The earlier index.
        previous: u32,
        /// The index that followed it.
        next: u32,
    },
    /// A delta adds an index that the old list already has as revoked: the delta was not made
    /// against this list.
    AlreadyRevoked {
        /// The index.
        index: u32,
    },
    /// An input iterator yielded different items when read again (the encoders read their input
    /// several times; see the module documentation).
    InconsistentInput,
    /// The encoding would be longer than 4 GiB - 1 bytes.
    TooLarge,
    /// A delta asked to shrink the list.
    SizeShrinks {
        /// The old list's size.
        old: u32,
        /// The size asked for.
        new: u32,
    },
}

impl fmt::Display for StatusListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated { needed, available } => {
                write!(f, "truncated: {needed} bytes needed, {available} present")
            }
            Self::UnsupportedVersion { found } => write!(f, "unsupported format version {found}"),
            Self::BadHeader { field } => write!(f, "bad header field `{field}`"),
            Self::BadBlockIndex { block } => write!(f, "bad block index entry {block}"),
            Self::Corrupt { block } => write!(f, "corrupt data in block {block}"),
            Self::TrailingBytes { extra } => write!(f, "{extra} trailing bytes"),
            Self::IndexOutOfRange { index, size } => {
                write!(f, "index {index} out of range for a list of size {size}")
            }
            Self::NotIncreasing { previous, next } => {
                write!(
                    f,
                    "indices not strictly increasing: {next} after {previous}"
                )
            }
            Self::AlreadyRevoked { index } => write!(f, "index {index} is already revoked"),
            Self::InconsistentInput => f.write_str("input changed between passes"),
            Self::TooLarge => f.write_str("encoding larger than 4 GiB"),
            Self::SizeShrinks { old, new } => {
                write!(f, "list size cannot shrink from {old} to {new}")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for StatusListError {}

/// Why an encoder stopped: the sink refused a write, or the input was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError<E> {
    /// The sink's error. Part of the output may have been written.
    Sink(E),
    /// The input was refused. When this is found before the first write (bad, out-of-range or
    /// non-increasing input, a delta that does not apply) nothing has been written.
    Codec(StatusListError),
}

impl<E> From<StatusListError> for EncodeError<E> {
    fn from(e: StatusListError) -> Self {
        Self::Codec(e)
    }
}

impl<E: fmt::Display> fmt::Display for EncodeError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sink(e) => write!(f, "sink: {e}"),
            Self::Codec(e) => e.fmt(f),
        }
    }
}

#[cfg(feature = "std")]
impl<E: fmt::Debug + fmt::Display> std::error::Error for EncodeError<E> {}

// ---------------------------------------------------------------------------------------------
// Sinks

/// Where an encoder writes its output, in order, once (a flash region, a buffer, a file).
pub trait ByteSink {
    /// The sink's own error.
    type Error;
    /// Appends `data`.
    fn write(&mut self, data: &[u8]) -> Result<(), Self::Error>;
}

impl<S: ByteSink + ?Sized> ByteSink for &mut S {
    type Error = S::Error;
    fn write(&mut self, data: &[u8]) -> Result<(), Self::Error> {
        (**self).write(data)
    }
}

#[cfg(feature = "alloc")]
impl ByteSink for Vec<u8> {
    type Error = core::convert::Infallible;
    fn write(&mut self, data: &[u8]) -> Result<(), Self::Error> {
        self.extend_from_slice(data);
        Ok(())
    }
}

/// A [`ByteSink`] over a caller's buffer, for `no_std` callers without a flash driver at hand.
#[derive(Debug)]
pub struct SliceSink<'b> {
    buf: &'b mut [u8],
    len: usize,
}

/// The [`SliceSink`] buffer is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceFull;

impl fmt::Display for SliceFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("output buffer full")
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SliceFull {}

impl<'b> SliceSink<'b> {
    /// A sink that fills `buf` from its start.
    pub fn new(buf: &'b mut [u8]) -> Self {
        Self { buf, len: 0 }
    }
    /// The bytes written so far.
    pub fn written(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

impl ByteSink for SliceSink<'_> {
    type Error = SliceFull;
    fn write(&mut self, data: &[u8]) -> Result<(), SliceFull> {
        let end = self.len.checked_add(data.len()).ok_or(SliceFull)?;
        let dst = self.buf.get_mut(self.len..end).ok_or(SliceFull)?;
        dst.copy_from_slice(data);
        self.len = end;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Bit-level helpers (MSB first: bit position p is bit 7 - p % 8 of byte p / 8)

/// Number of bits needed to write `x` (0 for 0).
fn bit_width(x: u64) -> u32 {
    64 - x.leading_zeros()
}

fn low_mask(width: u32) -> u64 {
    if width >= 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    }
}

/// The 64 bits starting at bit `pos`, left-aligned; at least the first 57 are the blob's bits
/// (bits past the end of `bytes` read as zero, so callers bound reads by their own limits).
#[inline]
fn window(bytes: &[u8], pos: u64) -> u64 {
    let Ok(start) = usize::try_from(pos / 8) else {
        return 0;
    };
    let word = match bytes.get(start..start.saturating_add(8)) {
        Some(b) => <[u8; 8]>::try_from(b).unwrap_or([0; 8]),
        None => {
            let mut buf = [0u8; 8];
            if let Some(rest) = bytes.get(start..) {
                let n = rest.len().min(8);
                if let (Some(d), Some(s)) = (buf.get_mut(..n), rest.get(..n)) {
                    d.copy_from_slice(s);
                }
            }
            buf
        }
    };
    u64::from_be_bytes(word) << (pos % 8)
}

/// `width` (at most 57) bits at bit `pos`, as an integer.
#[inline]
fn read_bits(bytes: &[u8], pos: u64, width: u32) -> u64 {
    if width == 0 {
        0
    } else {
        window(bytes, pos) >> (64 - width)
    }
}

/// Reads Rice codes between `pos` and `end` (absolute bit positions in the blob).
#[derive(Clone, Copy, Debug)]
struct BitReader<'a> {
    bytes: &'a [u8],
    pos: u64,
    end: u64,
}

impl BitReader<'_> {
    /// One Rice code with parameter `k`: `q` zero bits, a one bit, then `k` bits of remainder;
    /// the value is `q * 2^k + remainder`. `None` if the code does not end by `self.end` or its
    /// value exceeds what a `u32` gap can be.
    #[inline]
    fn rice(&mut self, k: u32) -> Option<u64> {
        let mut q: u64 = 0;
        loop {
            let avail = self.end.checked_sub(self.pos)?.min(57);
            if avail == 0 {
                return None;
            }
            let w = window(self.bytes, self.pos);
            let zeros = u64::from(w.leading_zeros());
            if zeros < avail {
                q += zeros;
                let used = zeros + 1;
                if q > u64::from(u32::MAX) {
                    return None;
                }
                // Fast path: the remainder lies in the same window.
                if k > 0 && used + u64::from(k) <= avail {
                    let r = (w << used) >> (64 - k);
                    self.pos += used + u64::from(k);
                    return Some((q << k) | r);
                }
                self.pos += used;
                break;
            }
            q += avail;
            self.pos += avail;
            if q > u64::from(u32::MAX) {
                return None;
            }
        }
        if k == 0 {
            return Some(q);
        }
        if self.end - self.pos < u64::from(k) {
            // Out of bits: leave the reader at the end so callers can tell this from a bad code.
            self.pos = self.end;
            return None;
        }
        let r = read_bits(self.bytes, self.pos, k);
        self.pos += u64::from(k);
        Some((q << k) | r)
    }
}

/// Buffers bits and hands whole bytes to a sink in chunks.
struct BitWriter<'s, S: ByteSink + ?Sized> {
    sink: &'s mut S,
    acc: u64,
    nbits: u32,
    buf: [u8; 64],
    len: usize,
    total: u64,
}

impl<'s, S: ByteSink + ?Sized> BitWriter<'s, S> {
    fn new(sink: &'s mut S) -> Self {
        Self {
            sink,
            acc: 0,
            nbits: 0,
            buf: [0; 64],
            len: 0,
            total: 0,
        }
    }

    /// Appends the low `width` (at most 56) bits of `value`, most significant first.
    fn put(&mut self, value: u64, width: u32) -> Result<(), S::Error> {
        if width == 0 {
            return Ok(());
        }
        self.acc = (self.acc << width) | (value & low_mask(width));
        self.nbits += width;
        while self.nbits >= 8 {
            self.nbits -= 8;
            let byte = (self.acc >> self.nbits) as u8;
            self.push(byte)?;
        }
        self.acc &= low_mask(self.nbits);
        Ok(())
    }

    fn put_zeros(&mut self, mut n: u64) -> Result<(), S::Error> {
        while n > 0 {
            let w = n.min(32) as u32;
            self.put(0, w)?;
            n -= u64::from(w);
        }
        Ok(())
    }

    fn put_rice(&mut self, value: u64, k: u32) -> Result<(), S::Error> {
        self.put_zeros(value >> k)?;
        self.put(1, 1)?;
        self.put(value, k)
    }

    fn put_bytes(&mut self, bytes: &[u8]) -> Result<(), S::Error> {
        for &b in bytes {
            self.put(u64::from(b), 8)?;
        }
        Ok(())
    }

    /// Pads with zero bits to the next byte boundary.
    fn align(&mut self) -> Result<(), S::Error> {
        if self.nbits > 0 {
            self.put(0, 8 - self.nbits)?;
        }
        Ok(())
    }

    fn push(&mut self, byte: u8) -> Result<(), S::Error> {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
        self.total += 1;
        if self.len == self.buf.len() {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), S::Error> {
        if self.len > 0 {
            self.sink.write(self.buf.get(..self.len).unwrap_or(&[]))?;
            self.len = 0;
        }
        Ok(())
    }

    /// Aligns, flushes, and returns the number of bytes written.
    fn finish(mut self) -> Result<u64, S::Error> {
        self.align()?;
        self.flush()?;
        Ok(self.total)
    }
}

/// Optimal Rice parameter for gaps whose sums `Σ g >> k` are `shifted[k]`, `n` gaps in all:
/// the cost is `n * (1 + k) + shifted[k]` bits; ties go to the smaller `k` (determinism).
fn best_k(n: u64, shifted: &[u64; 32]) -> (u32, u64) {
    let mut best = (0u32, u64::MAX);
    for (k, &s) in (0u32..).zip(shifted.iter()) {
        let cost = n * u64::from(1 + k) + s;
        if cost < best.1 {
            best = (k, cost);
        }
    }
    best
}

#[inline]
fn add_gap(shifted: &mut [u64; 32], gap: u32) {
    for (k, s) in (0u32..).zip(shifted.iter_mut()) {
        *s += u64::from(gap >> k);
    }
}

// ---------------------------------------------------------------------------------------------
// Status list view

/// The parsed header and derived layout of a status list.
#[derive(Clone, Copy)]
struct Layout<'a> {
    bytes: &'a [u8],
    size: u32,
    revoked: u32,
    complement: bool,
    block_len: u32,
    /// Number of indices held in the data (revoked ones, or valid ones when `complement`).
    stored: u32,
    blocks: u32,
    first_bits: u32,
    offset_bits: u32,
    entry_bits: u64,
    /// Absolute bit position of the data section.
    data_base: u64,
    /// Length of the data section in bits (a multiple of 8).
    data_bits: u64,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    first: u32,
    /// Bit offset relative to the data section.
    offset: u64,
    k: u32,
}

impl<'a> Layout<'a> {
    fn entry_pos(&self, block: u32) -> u64 {
        HEADER_LEN as u64 * 8 + u64::from(block) * self.entry_bits
    }

    /// Only the first index of a block's entry (the binary search needs nothing else).
    fn first_of(&self, block: u32) -> u32 {
        read_bits(self.bytes, self.entry_pos(block), self.first_bits) as u32
    }

    fn entry(&self, block: u32) -> Entry {
        let pos = self.entry_pos(block);
        let first = read_bits(self.bytes, pos, self.first_bits) as u32;
        let offset = read_bits(
            self.bytes,
            pos + u64::from(self.first_bits),
            self.offset_bits,
        );
        let k = read_bits(
            self.bytes,
            pos + u64::from(self.first_bits) + u64::from(self.offset_bits),
            K_FIELD_BITS,
        ) as u32;
        Entry { first, offset, k }
    }

    /// Number of stored indices in `block`.
    fn block_count(&self, block: u32) -> u32 {
        if block + 1 < self.blocks {
            self.block_len
        } else {
            self.stored - (self.blocks - 1) * self.block_len
        }
    }

    /// End of the block's codes (relative bit offset; for the last block the end of the data
    /// section, padding included) and the exclusive upper bound on its values.
    fn block_bounds(&self, block: u32) -> (u64, u64) {
        if block + 1 < self.blocks {
            let next = self.entry(block + 1);
            (next.offset, u64::from(next.first))
        } else {
            (self.data_bits, u64::from(self.size))
        }
    }

    fn stored_contains(&self, index: u32) -> Result<bool, StatusListError> {
        // Binary search for the last block whose first index is <= index.
        let (mut lo, mut hi) = (0u32, self.blocks);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.first_of(mid) <= index {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let Some(block) = lo.checked_sub(1) else {
            return Ok(false);
        };
        let e = self.entry(block);
        if e.first == index {
            return Ok(true);
        }
        let (end, limit) = self.block_bounds(block);
        let end = self.data_base + end;
        let corrupt = StatusListError::Corrupt { block };
        let target = u64::from(index);
        let mut value = u64::from(e.first);
        let mut scan = Scanner::new(self.bytes, self.data_base + e.offset);
        for _ in 1..self.block_count(block) {
            let gap = match scan.rice(e.k) {
                Some(gap) => gap,
                None => {
                    // A code longer than the register: decode it the slow way, then resume.
                    let mut reader = BitReader {
                        bytes: self.bytes,
                        pos: scan.pos(),
                        end,
                    };
                    let gap = reader.rice(e.k).ok_or(corrupt)?;
                    scan = Scanner::new(self.bytes, reader.pos);
                    gap
                }
            };
            value += gap + 1;
            if value >= limit {
                return Err(corrupt);
            }
            if value >= target {
                break;
            }
        }
        // The scanner does not stop at the block's end; check once that it stayed inside.
        if scan.pos() > end {
            return Err(corrupt);
        }
        Ok(value == target)
    }
}

/// Sequential Rice decoding from a 64-bit register refilled a word at a time: the inner loop of
/// a lookup. It may read past the block (reads stay in bounds, bits past the blob are zero), so
/// its user checks [`Scanner::pos`] against the block's end.
struct Scanner<'a> {
    bytes: &'a [u8],
    /// Next byte to load into the register.
    next_byte: u64,
    /// Stream bits, left-aligned; the first `n` are valid.
    buf: u64,
    n: u32,
}

impl<'a> Scanner<'a> {
    fn new(bytes: &'a [u8], pos: u64) -> Self {
        let mut s = Self {
            bytes,
            next_byte: pos / 8,
            buf: 0,
            n: 0,
        };
        s.refill();
        let skip = (pos % 8) as u32;
        s.buf <<= skip;
        s.n -= skip;
        s
    }

    /// Tops the register up to at least 56 valid bits. Every bit of the loaded word lands at
    /// its own stream position, so bits beyond `n` are either zero or the right stream bits.
    #[inline]
    fn refill(&mut self) {
        let word = window(self.bytes, self.next_byte * 8);
        self.buf |= word >> self.n;
        let take = (63 - self.n) / 8;
        self.next_byte += u64::from(take);
        self.n += take * 8;
    }

    fn pos(&self) -> u64 {
        self.next_byte * 8 - u64::from(self.n)
    }

    /// One Rice code if it lies within the register (unary run under ~56 bits), else `None`
    /// with nothing consumed.
    #[inline]
    fn rice(&mut self, k: u32) -> Option<u64> {
        if self.n < 56 {
            self.refill();
        }
        let zeros = self.buf.leading_zeros();
        let len = zeros + 1 + k;
        if len > self.n {
            return None;
        }
        let rest = self.buf << zeros << 1;
        let r = if k == 0 { 0 } else { rest >> (64 - k) };
        self.buf = rest << k;
        self.n -= len;
        Some((u64::from(zeros) << k) | r)
    }
}

/// A status list held as bytes (e.g. memory-mapped flash), answering lookups in place.
#[derive(Clone, Copy)]
pub struct StatusListView<'a> {
    layout: Layout<'a>,
}

impl fmt::Debug for StatusListView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusListView")
            .field("size", &self.layout.size)
            .field("revoked", &self.layout.revoked)
            .field("block_len", &self.layout.block_len)
            .field("len", &self.layout.bytes.len())
            .finish()
    }
}

impl<'a> StatusListView<'a> {
    /// Checks the header and every block index entry (O(number of blocks), no Rice decoding) and
    /// returns a view. The Rice data is checked as it is decoded; see [`Self::validate`].
    pub fn parse(bytes: &'a [u8]) -> Result<Self, StatusListError> {
        let view = Self::parse_installed(bytes)?;
        check_block_index(&view.layout)?;
        Ok(view)
    }

    /// Like [`Self::parse`] but checks only the header and the length (O(1)), not the block
    /// index. For a list that passed [`Self::parse`] and [`Self::validate`] when it was installed
    /// and has not been rewritten since: a terminal's own flash slot, looked up at every tap.
    /// There the index check is the largest part of a tap's list work (about 0.26 M Cortex-M4
    /// instructions for 38 M entries, against 0.03 M for the lookup itself), and it would only
    /// re-prove what the install already proved. On bytes whose index is corrupt, lookups still
    /// never panic and never read outside `bytes` (bits past the end read as zero); they may
    /// give a wrong answer or [`StatusListError::Corrupt`], which is why untrusted input goes
    /// through [`Self::parse`].
    pub fn parse_installed(bytes: &'a [u8]) -> Result<Self, StatusListError> {
        let available = bytes.len() as u64;
        let version = *bytes.first().ok_or(StatusListError::Truncated {
            needed: HEADER_LEN as u64,
            available,
        })?;
        if version != STATUS_LIST_VERSION {
            return Err(StatusListError::UnsupportedVersion { found: version });
        }
        let header: [u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(StatusListError::Truncated {
                needed: HEADER_LEN as u64,
                available,
            })?;
        let flags = header[1];
        let size = u32::from_le_bytes([header[2], header[3], header[4], header[5]]);
        let revoked = u32::from_le_bytes([header[6], header[7], header[8], header[9]]);
        let block_len = u32::from(u16::from_le_bytes([header[10], header[11]]));
        let data_len = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);

        if flags & !FLAG_COMPLEMENT != 0 {
            return Err(StatusListError::BadHeader { field: "flags" });
        }
        if revoked > size {
            return Err(StatusListError::BadHeader {
                field: "revoked_count",
            });
        }
        let complement = flags & FLAG_COMPLEMENT != 0;
        if complement != stores_complement(size, revoked) {
            return Err(StatusListError::BadHeader { field: "flags" });
        }
        if block_len == 0 {
            return Err(StatusListError::BadHeader { field: "block_len" });
        }
        let stored = if complement { size - revoked } else { revoked };
        if stored == 0 && data_len != 0 {
            return Err(StatusListError::BadHeader { field: "data_len" });
        }
        let shape = Shape::new(size, stored, block_len, data_len);
        let total = shape.total_len();
        if available < total {
            return Err(StatusListError::Truncated {
                needed: total,
                available,
            });
        }
        if available > total {
            return Err(StatusListError::TrailingBytes {
                extra: available - total,
            });
        }
        let layout = Layout {
            bytes,
            size,
            revoked,
            complement,
            block_len,
            stored,
            blocks: shape.blocks,
            first_bits: shape.first_bits,
            offset_bits: shape.offset_bits,
            entry_bits: shape.entry_bits(),
            data_base: (HEADER_LEN as u64 + shape.index_len()) * 8,
            data_bits: u64::from(data_len) * 8,
        };
        Ok(Self { layout })
    }

    /// Number of status indices the list covers: valid indices are `0..size`.
    pub fn size(&self) -> u32 {
        self.layout.size
    }

    /// Number of revoked indices (from the header, checked against the block index at parse and
    /// against the data by [`Self::validate`]).
    pub fn revoked_count(&self) -> u32 {
        self.layout.revoked
    }

    /// Stored indices per block (a header field chosen by the encoder).
    pub fn block_len(&self) -> u16 {
        self.layout.block_len as u16
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.layout.bytes
    }

    /// Whether `index` is revoked. Decodes at most one block; an error if `index >= size` or if
    /// the part of the block read is corrupt.
    pub fn is_revoked(&self, index: u32) -> Result<bool, StatusListError> {
        if index >= self.layout.size {
            return Err(StatusListError::IndexOutOfRange {
                index,
                size: self.layout.size,
            });
        }
        let stored = self.layout.stored_contains(index)?;
        Ok(stored != self.layout.complement)
    }

    /// All revoked indices in increasing order. On corrupt data it yields one error and stops.
    pub fn iter_revoked(&self) -> RevokedIter<'a> {
        let stored = StoredIter::new(self.layout);
        RevokedIter {
            inner: if self.layout.complement {
                RevokedInner::Complement(Complement::new(stored, self.layout.size))
            } else {
                RevokedInner::Direct(stored)
            },
        }
    }

    /// Decodes all the data and checks it exactly (each block ends where the next begins, values
    /// stay inside their block, the padding is zero, each block's Rice parameter is the one the
    /// encoder chooses): O(stored indices). A list that passes has exactly the bytes the encoder
    /// writes for its set and block length.
    pub fn validate(&self) -> Result<(), StatusListError> {
        let l = self.layout;
        let mut it = StoredIter::new(l);
        let mut shifted = [0u64; 32];
        let (mut block, mut gaps, mut prev) = (None::<u32>, 0u64, 0u32);
        let check_k = |block: u32, gaps: u64, shifted: &[u64; 32]| {
            if best_k(gaps, shifted).0 == l.entry(block).k {
                Ok(())
            } else {
                Err(StatusListError::BadBlockIndex { block })
            }
        };
        while let Some(r) = it.next() {
            let v = r?;
            if block == Some(it.block) {
                // StoredIter has checked v > prev.
                add_gap(&mut shifted, v - prev - 1);
                gaps += 1;
            } else {
                if let Some(b) = block {
                    check_k(b, gaps, &shifted)?;
                }
                block = Some(it.block);
                shifted = [0; 32];
                gaps = 0;
            }
            prev = v;
        }
        match block {
            Some(b) => check_k(b, gaps, &shifted),
            None => Ok(()),
        }
    }
}

/// Whether a list of `size` indices with `revoked` revoked stores the complement.
fn stores_complement(size: u32, revoked: u32) -> bool {
    revoked > size - revoked
}

/// Sizes derived from the header fields.
struct Shape {
    blocks: u32,
    first_bits: u32,
    offset_bits: u32,
    data_len: u32,
}

impl Shape {
    fn new(size: u32, stored: u32, block_len: u32, data_len: u32) -> Self {
        Self {
            blocks: stored.div_ceil(block_len),
            first_bits: bit_width(u64::from(size.saturating_sub(1))),
            offset_bits: bit_width(u64::from(data_len) * 8),
            data_len,
        }
    }
    fn entry_bits(&self) -> u64 {
        u64::from(self.first_bits + self.offset_bits + K_FIELD_BITS)
    }
    fn index_len(&self) -> u64 {
        (u64::from(self.blocks) * self.entry_bits()).div_ceil(8)
    }
    fn total_len(&self) -> u64 {
        HEADER_LEN as u64 + self.index_len() + u64::from(self.data_len)
    }
}

fn check_block_index(l: &Layout<'_>) -> Result<(), StatusListError> {
    let mut prev: Option<(Entry, u32)> = None;
    for block in 0..l.blocks {
        let bad = StatusListError::BadBlockIndex { block };
        let e = l.entry(block);
        let count = l.block_count(block);
        // The block's `count` distinct values start at `first` and stay below `size`.
        if u64::from(e.first) + u64::from(count) > u64::from(l.size) {
            return Err(bad);
        }
        let min_bits = u64::from(count - 1) * u64::from(e.k + 1);
        match prev {
            None if e.offset != 0 => return Err(bad),
            None => {}
            Some((p, p_count)) => {
                if u64::from(p.first) + u64::from(p_count) > u64::from(e.first) {
                    return Err(bad);
                }
                if p.offset + u64::from(p_count - 1) * u64::from(p.k + 1) > e.offset {
                    return Err(bad);
                }
            }
        }
        if e.offset + min_bits > l.data_bits {
            return Err(bad);
        }
        prev = Some((e, count));
    }
    if l.blocks > 0 {
        let used = HEADER_LEN as u64 * 8 + u64::from(l.blocks) * l.entry_bits;
        let pad = (l.data_base - used) as u32;
        if read_bits(l.bytes, used, pad) != 0 {
            return Err(StatusListError::BadBlockIndex {
                block: l.blocks - 1,
            });
        }
    }
    Ok(())
}

/// Decodes the stored indices block by block, checking each block exactly.
#[derive(Clone)]
struct StoredIter<'a> {
    layout: Layout<'a>,
    /// Next block to open.
    next_block: u32,
    /// Codes left in the open block.
    left: u32,
    block: u32,
    k: u32,
    value: u64,
    limit: u64,
    block_end: u64,
    reader: BitReader<'a>,
    done: bool,
}

impl<'a> StoredIter<'a> {
    fn new(layout: Layout<'a>) -> Self {
        Self {
            layout,
            next_block: 0,
            left: 0,
            block: 0,
            k: 0,
            value: 0,
            limit: 0,
            block_end: 0,
            reader: BitReader {
                bytes: layout.bytes,
                pos: 0,
                end: 0,
            },
            done: false,
        }
    }

    fn fail(&mut self) -> Option<Result<u32, StatusListError>> {
        self.done = true;
        Some(Err(StatusListError::Corrupt { block: self.block }))
    }

    /// Checks that the open block's codes end exactly where they should.
    fn block_ends_cleanly(&self) -> bool {
        let l = &self.layout;
        let pos = self.reader.pos;
        if self.block + 1 < l.blocks {
            pos == self.block_end
        } else {
            // Last block: only zero padding to the end of the data, less than a byte of it.
            let end = l.data_base + l.data_bits;
            pos <= end && end - pos < 8 && read_bits(l.bytes, pos, (end - pos) as u32) == 0
        }
    }
}

impl Iterator for StoredIter<'_> {
    type Item = Result<u32, StatusListError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.left > 0 {
            self.left -= 1;
            let Some(gap) = self.reader.rice(self.k) else {
                return self.fail();
            };
            self.value += gap + 1;
            if self.value >= self.limit {
                return self.fail();
            }
            return Some(Ok(self.value as u32));
        }
        // The open block (if any) is exhausted: check its end, then open the next one.
        if self.next_block > 0 && !self.block_ends_cleanly() {
            return self.fail();
        }
        let l = self.layout;
        if self.next_block >= l.blocks {
            self.done = true;
            return None;
        }
        self.block = self.next_block;
        self.next_block += 1;
        let e = l.entry(self.block);
        let (end, limit) = l.block_bounds(self.block);
        self.left = l.block_count(self.block) - 1;
        self.k = e.k;
        self.value = u64::from(e.first);
        self.limit = limit;
        self.block_end = l.data_base + end;
        self.reader = BitReader {
            bytes: l.bytes,
            pos: l.data_base + e.offset,
            end: self.block_end,
        };
        Some(Ok(e.first))
    }
}

/// The indices of `0..size` that an increasing inner iterator does not yield.
#[derive(Clone)]
struct Complement<I> {
    inner: I,
    size: u32,
    next: u64,
    /// The next index the inner iterator excludes (`size` once it is exhausted).
    upcoming: Option<u64>,
    failed: bool,
}

impl<I> Complement<I> {
    fn new(inner: I, size: u32) -> Self {
        Self {
            inner,
            size,
            next: 0,
            upcoming: None,
            failed: false,
        }
    }
}

impl<I: Iterator<Item = Result<u32, StatusListError>>> Iterator for Complement<I> {
    type Item = Result<u32, StatusListError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.failed && self.next < u64::from(self.size) {
            let upcoming = match self.upcoming {
                Some(u) => u,
                None => {
                    let u = match self.inner.next() {
                        None => u64::from(self.size),
                        Some(Ok(v)) if u64::from(v) >= self.next => u64::from(v),
                        Some(Ok(v)) => {
                            self.failed = true;
                            return Some(Err(StatusListError::NotIncreasing {
                                previous: self.next.saturating_sub(1) as u32,
                                next: v,
                            }));
                        }
                        Some(Err(e)) => {
                            self.failed = true;
                            return Some(Err(e));
                        }
                    };
                    self.upcoming = Some(u);
                    u
                }
            };
            let candidate = self.next;
            self.next += 1;
            if candidate < upcoming {
                return Some(Ok(candidate as u32));
            }
            self.upcoming = None;
        }
        None
    }
}

/// Iterator over the revoked indices of a [`StatusListView`], in increasing order. Yields
/// `Err` once and stops if the data is corrupt. Cloning it is cheap.
#[derive(Clone)]
pub struct RevokedIter<'a> {
    inner: RevokedInner<'a>,
}

#[derive(Clone)]
enum RevokedInner<'a> {
    Direct(StoredIter<'a>),
    Complement(Complement<StoredIter<'a>>),
}

impl Iterator for RevokedIter<'_> {
    type Item = Result<u32, StatusListError>;
    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            RevokedInner::Direct(it) => it.next(),
            RevokedInner::Complement(it) => it.next(),
        }
    }
}

impl fmt::Debug for RevokedIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RevokedIter")
    }
}

// ---------------------------------------------------------------------------------------------
// Status list encoder

/// Checks that an input is strictly increasing and below `limit`.
#[derive(Clone)]
struct Checked<I> {
    inner: I,
    limit: u64,
    size: u32,
    prev: Option<u32>,
    failed: bool,
}

impl<I> Checked<I> {
    fn new(inner: I, limit: u64, size: u32) -> Self {
        Self {
            inner,
            limit,
            size,
            prev: None,
            failed: false,
        }
    }
}

impl<I: Iterator<Item = Result<u32, StatusListError>>> Iterator for Checked<I> {
    type Item = Result<u32, StatusListError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = match self.inner.next()? {
            Ok(v) if u64::from(v) >= self.limit => Err(StatusListError::IndexOutOfRange {
                index: v,
                size: self.size,
            }),
            Ok(v) => match self.prev {
                Some(p) if v <= p => Err(StatusListError::NotIncreasing {
                    previous: p,
                    next: v,
                }),
                _ => {
                    self.prev = Some(v);
                    Ok(v)
                }
            },
            Err(e) => Err(e),
        };
        self.failed = item.is_err();
        Some(item)
    }
}

/// The indices the data section holds: the revoked ones, or their complement.
#[derive(Clone)]
enum Stored<I> {
    Direct(Checked<I>),
    Complement(Complement<Checked<I>>),
}

impl<I: Iterator<Item = Result<u32, StatusListError>>> Iterator for Stored<I> {
    type Item = Result<u32, StatusListError>;
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Direct(it) => it.next(),
            Self::Complement(it) => it.next(),
        }
    }
}

/// What one block will look like.
struct BlockPlan {
    first: u32,
    count: u32,
    k: u32,
    bits: u64,
}

/// Reads up to `block_len` indices and chooses the block's Rice parameter.
fn plan_block<I>(it: &mut I, block_len: u32) -> Result<Option<BlockPlan>, StatusListError>
where
    I: Iterator<Item = Result<u32, StatusListError>>,
{
    let first = match it.next() {
        None => return Ok(None),
        Some(r) => r?,
    };
    let mut shifted = [0u64; 32];
    let (mut prev, mut count) = (first, 1u32);
    while count < block_len {
        let Some(r) = it.next() else { break };
        let v = r?;
        let gap = v
            .checked_sub(prev)
            .and_then(|d| d.checked_sub(1))
            .ok_or(StatusListError::InconsistentInput)?;
        add_gap(&mut shifted, gap);
        prev = v;
        count += 1;
    }
    let (k, bits) = best_k(u64::from(count - 1), &shifted);
    Ok(Some(BlockPlan {
        first,
        count,
        k,
        bits,
    }))
}

/// The whole list's parameters, from the first two passes over the input.
struct ListPlan {
    size: u32,
    revoked: u32,
    complement: bool,
    block_len: u32,
    shape: Shape,
    data_bits: u64,
}

/// Encodes a status list of `size` indices. Deterministic: the same set and block length always
/// give the same bytes. Reads its input up to five times and needs O(1) RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusListEncoder {
    size: u32,
    block_len: NonZeroU16,
}

impl StatusListEncoder {
    /// An encoder for indices `0..size` with [`DEFAULT_BLOCK_LEN`].
    pub const fn new(size: u32) -> Self {
        Self {
            size,
            block_len: DEFAULT_BLOCK_LEN,
        }
    }

    /// The same encoder with another block length: shorter blocks make lookups faster and the
    /// block index larger.
    pub const fn with_block_len(self, block_len: NonZeroU16) -> Self {
        Self { block_len, ..self }
    }

    /// The length in bytes of the encoding of `revoked` (strictly increasing, each `< size`),
    /// without writing it: e.g. to reserve flash first.
    pub fn encoded_len<I>(&self, revoked: I) -> Result<usize, StatusListError>
    where
        I: IntoIterator<Item = u32>,
        I::IntoIter: Clone,
    {
        let plan = self.plan(revoked.into_iter().map(Ok))?;
        Ok(plan.shape.total_len() as usize)
    }

    /// Writes the encoding of `revoked` (strictly increasing, each `< size`) to `sink` and
    /// returns its length. Bad input is found before anything is written.
    pub fn write<I, S>(&self, revoked: I, sink: &mut S) -> Result<usize, EncodeError<S::Error>>
    where
        I: IntoIterator<Item = u32>,
        I::IntoIter: Clone,
        S: ByteSink + ?Sized,
    {
        self.write_source(revoked.into_iter().map(Ok), sink)
    }

    /// Encodes `revoked` (strictly increasing, each `< size`; any iterator: it is collected
    /// first) into a new `Vec`.
    #[cfg(feature = "alloc")]
    pub fn encode<I>(&self, revoked: I) -> Result<Vec<u8>, StatusListError>
    where
        I: IntoIterator<Item = u32>,
    {
        let indices: Vec<u32> = revoked.into_iter().collect();
        let mut out = Vec::new();
        match self.write(indices.iter().copied(), &mut out) {
            Ok(_) => Ok(out),
            Err(EncodeError::Codec(e)) => Err(e),
            Err(EncodeError::Sink(never)) => match never {},
        }
    }

    fn stored<I>(&self, revoked: I, complement: bool) -> Stored<I>
    where
        I: Iterator<Item = Result<u32, StatusListError>> + Clone,
    {
        let checked = Checked::new(revoked, u64::from(self.size), self.size);
        if complement {
            Stored::Complement(Complement::new(checked, self.size))
        } else {
            Stored::Direct(checked)
        }
    }

    fn plan<I>(&self, revoked: I) -> Result<ListPlan, StatusListError>
    where
        I: Iterator<Item = Result<u32, StatusListError>> + Clone,
    {
        let size = self.size;
        let block_len = u32::from(self.block_len.get());
        // Pass 1: validate the input and count it.
        let mut count: u32 = 0;
        for r in Checked::new(revoked.clone(), u64::from(size), size) {
            r?;
            count += 1;
        }
        let complement = stores_complement(size, count);
        let stored_count = if complement { size - count } else { count };
        // Pass 2: the length of the data.
        let mut stored = self.stored(revoked, complement);
        let mut data_bits: u64 = 0;
        let mut seen: u64 = 0;
        while let Some(b) = plan_block(&mut stored, block_len)? {
            data_bits += b.bits;
            seen += u64::from(b.count);
        }
        if seen != u64::from(stored_count) {
            return Err(StatusListError::InconsistentInput);
        }
        let data_len =
            u32::try_from(data_bits.div_ceil(8)).map_err(|_| StatusListError::TooLarge)?;
        let shape = Shape::new(size, stored_count, block_len, data_len);
        if shape.total_len() > MAX_BLOB_LEN {
            return Err(StatusListError::TooLarge);
        }
        Ok(ListPlan {
            size,
            revoked: count,
            complement,
            block_len,
            shape,
            data_bits,
        })
    }

    fn write_source<I, S>(&self, revoked: I, sink: &mut S) -> Result<usize, EncodeError<S::Error>>
    where
        I: Iterator<Item = Result<u32, StatusListError>> + Clone,
        S: ByteSink + ?Sized,
    {
        let plan = self.plan(revoked.clone())?;
        let inconsistent = || EncodeError::Codec(StatusListError::InconsistentInput);
        let mut w = BitWriter::new(sink);

        // Header (all integers little-endian).
        let mut header = [0u8; HEADER_LEN];
        header[0] = STATUS_LIST_VERSION;
        header[1] = if plan.complement { FLAG_COMPLEMENT } else { 0 };
        header[2..6].copy_from_slice(&plan.size.to_le_bytes());
        header[6..10].copy_from_slice(&plan.revoked.to_le_bytes());
        header[10..12].copy_from_slice(&self.block_len.get().to_le_bytes());
        header[12..16].copy_from_slice(&plan.shape.data_len.to_le_bytes());
        w.put_bytes(&header).map_err(EncodeError::Sink)?;

        // Pass 3: the block index.
        let mut stored = self.stored(revoked.clone(), plan.complement);
        let mut offset: u64 = 0;
        for _ in 0..plan.shape.blocks {
            let b = plan_block(&mut stored, plan.block_len)?.ok_or_else(inconsistent)?;
            w.put(u64::from(b.first), plan.shape.first_bits)
                .and_then(|()| w.put(offset, plan.shape.offset_bits))
                .and_then(|()| w.put(u64::from(b.k), K_FIELD_BITS))
                .map_err(EncodeError::Sink)?;
            offset += b.bits;
        }
        if stored.next().is_some() || offset != plan.data_bits {
            return Err(inconsistent());
        }
        w.align().map_err(EncodeError::Sink)?;

        // Passes 4 and 5: per block, look ahead for the parameter, then write the codes.
        let mut stored = self.stored(revoked, plan.complement);
        let mut written: u64 = 0;
        for _ in 0..plan.shape.blocks {
            let mut ahead = stored.clone();
            let b = plan_block(&mut ahead, plan.block_len)?.ok_or_else(inconsistent)?;
            let mut prev = match stored.next() {
                Some(r) => r?,
                None => return Err(inconsistent()),
            };
            for _ in 1..b.count {
                let v = match stored.next() {
                    Some(r) => r?,
                    None => return Err(inconsistent()),
                };
                let gap = v
                    .checked_sub(prev)
                    .and_then(|d| d.checked_sub(1))
                    .ok_or_else(inconsistent)?;
                w.put_rice(u64::from(gap), b.k).map_err(EncodeError::Sink)?;
                prev = v;
            }
            written += b.bits;
        }
        if stored.next().is_some() || written != plan.data_bits {
            return Err(inconsistent());
        }
        let total = w.finish().map_err(EncodeError::Sink)?;
        if total != plan.shape.total_len() {
            return Err(inconsistent());
        }
        Ok(total as usize)
    }
}

/// Encodes a status list of `size` indices with the default block length; `revoked` must be
/// strictly increasing and each `< size`.
#[cfg(feature = "alloc")]
pub fn encode<I>(size: u32, revoked: I) -> Result<Vec<u8>, StatusListError>
where
    I: IntoIterator<Item = u32>,
{
    StatusListEncoder::new(size).encode(revoked)
}

// ---------------------------------------------------------------------------------------------
// Index sets

/// A strictly increasing set of `u32` (the indices newly revoked by a delta), fully validated at
/// parse.
#[derive(Clone, Copy)]
pub struct IndexSetView<'a> {
    bytes: &'a [u8],
    k: u32,
    count: u32,
}

impl fmt::Debug for IndexSetView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IndexSetView")
            .field("len", &self.count)
            .finish()
    }
}

impl<'a> IndexSetView<'a> {
    /// Checks the header and decodes every code (O(len)): values fit `u32` (so they are strictly
    /// increasing by construction), the codes end in the last byte, the padding is zero, and the
    /// Rice parameter is the one the encoder chooses (one set, one encoding).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, StatusListError> {
        let available = bytes.len() as u64;
        let version = *bytes.first().ok_or(StatusListError::Truncated {
            needed: INDEX_SET_HEADER_LEN as u64,
            available,
        })?;
        if version != INDEX_SET_VERSION {
            return Err(StatusListError::UnsupportedVersion { found: version });
        }
        let header: [u8; INDEX_SET_HEADER_LEN] = bytes
            .get(..INDEX_SET_HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(StatusListError::Truncated {
                needed: INDEX_SET_HEADER_LEN as u64,
                available,
            })?;
        let k = u32::from(header[1]);
        if k > MAX_RICE_K {
            return Err(StatusListError::BadHeader { field: "k" });
        }
        let count = u32::from_le_bytes([header[2], header[3], header[4], header[5]]);
        if available > MAX_BLOB_LEN {
            return Err(StatusListError::TooLarge);
        }
        let end = available * 8;
        let mut reader = BitReader {
            bytes,
            pos: INDEX_SET_HEADER_LEN as u64 * 8,
            end,
        };
        let mut next: u64 = 0; // smallest value the next element may take
        let mut shifted = [0u64; 32];
        for _ in 0..count {
            let Some(gap) = reader.rice(k) else {
                // Either the bits ran out, or the code is absurd; tell them apart for the caller.
                return Err(if reader.pos >= end {
                    StatusListError::Truncated {
                        needed: available + 1,
                        available,
                    }
                } else {
                    StatusListError::Corrupt { block: 0 }
                });
            };
            let value = next + gap;
            if value > u64::from(u32::MAX) {
                return Err(StatusListError::Corrupt { block: 0 });
            }
            add_gap(&mut shifted, gap as u32);
            next = value + 1;
        }
        // Only the encoder's parameter is accepted, so that one set has one encoding.
        let canonical_k = if count == 0 {
            0
        } else {
            best_k(u64::from(count), &shifted).0
        };
        if k != canonical_k {
            return Err(StatusListError::BadHeader { field: "k" });
        }
        let used_bytes = reader.pos.div_ceil(8);
        if used_bytes < available {
            return Err(StatusListError::TrailingBytes {
                extra: available - used_bytes,
            });
        }
        let pad = (end - reader.pos) as u32;
        if read_bits(bytes, reader.pos, pad) != 0 {
            return Err(StatusListError::Corrupt { block: 0 });
        }
        Ok(Self { bytes, k, count })
    }

    /// Number of indices in the set.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The indices in increasing order.
    pub fn iter(&self) -> IndexSetIter<'a> {
        IndexSetIter {
            reader: BitReader {
                bytes: self.bytes,
                pos: INDEX_SET_HEADER_LEN as u64 * 8,
                end: self.bytes.len() as u64 * 8,
            },
            k: self.k,
            left: self.count,
            next: 0,
        }
    }
}

impl<'a> IntoIterator for &IndexSetView<'a> {
    type Item = u32;
    type IntoIter = IndexSetIter<'a>;
    fn into_iter(self) -> IndexSetIter<'a> {
        self.iter()
    }
}

/// Iterator over an [`IndexSetView`]. Cloning it is cheap.
#[derive(Clone, Debug)]
pub struct IndexSetIter<'a> {
    reader: BitReader<'a>,
    k: u32,
    left: u32,
    next: u64,
}

impl Iterator for IndexSetIter<'_> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The view was validated at parse; a failure here cannot happen, so it just ends.
        let Some(value) = self
            .reader
            .rice(self.k)
            .map(|gap| self.next + gap)
            .filter(|&v| v <= u64::from(u32::MAX))
        else {
            self.left = 0;
            return None;
        };
        self.next = value + 1;
        Some(value as u32)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left as usize))
    }
}

/// Writes the index-set encoding of `indices` (strictly increasing) to `sink` and returns its
/// length. Reads the input twice; bad input is found before anything is written.
pub fn write_index_set<I, S>(indices: I, sink: &mut S) -> Result<usize, EncodeError<S::Error>>
where
    I: IntoIterator<Item = u32>,
    I::IntoIter: Clone,
    S: ByteSink + ?Sized,
{
    let input = indices.into_iter();
    let checked = |it| Checked::new(it, 1u64 << 32, u32::MAX);
    // Pass 1: validate, count, and choose the Rice parameter over all gaps (the first gap is
    // the first index itself).
    let mut shifted = [0u64; 32];
    let mut count: u64 = 0;
    let mut next: u32 = 0;
    for r in checked(input.clone().map(Ok)) {
        let v = r?;
        add_gap(&mut shifted, v - next);
        next = v.wrapping_add(1);
        count += 1;
    }
    let count32 = u32::try_from(count).map_err(|_| StatusListError::TooLarge)?;
    let (k, bits) = if count == 0 {
        (0, 0)
    } else {
        best_k(count, &shifted)
    };
    if INDEX_SET_HEADER_LEN as u64 + bits.div_ceil(8) > MAX_BLOB_LEN {
        return Err(StatusListError::TooLarge.into());
    }
    let mut w = BitWriter::new(sink);
    let mut header = [0u8; INDEX_SET_HEADER_LEN];
    header[0] = INDEX_SET_VERSION;
    header[1] = k as u8;
    header[2..6].copy_from_slice(&count32.to_le_bytes());
    w.put_bytes(&header).map_err(EncodeError::Sink)?;
    // Pass 2: the codes.
    let mut next: u64 = 0;
    let mut seen: u64 = 0;
    for r in checked(input.map(Ok)) {
        let v = u64::from(r?);
        if v < next {
            return Err(StatusListError::InconsistentInput.into());
        }
        w.put_rice(v - next, k).map_err(EncodeError::Sink)?;
        next = v + 1;
        seen += 1;
    }
    if seen != count {
        return Err(StatusListError::InconsistentInput.into());
    }
    let total = w.finish().map_err(EncodeError::Sink)?;
    Ok(total as usize)
}

/// Encodes `indices` (strictly increasing; any iterator: it is collected first) as an index set.
#[cfg(feature = "alloc")]
pub fn encode_index_set<I>(indices: I) -> Result<Vec<u8>, StatusListError>
where
    I: IntoIterator<Item = u32>,
{
    let indices: Vec<u32> = indices.into_iter().collect();
    let mut out = Vec::new();
    match write_index_set(indices.iter().copied(), &mut out) {
        Ok(_) => Ok(out),
        Err(EncodeError::Codec(e)) => Err(e),
        Err(EncodeError::Sink(never)) => match never {},
    }
}

// ---------------------------------------------------------------------------------------------
// Deltas

/// `old`'s revoked indices merged with a delta's; an index in both is an error, and so is a
/// delta index at or beyond `size`.
#[derive(Clone)]
struct Union<'a> {
    old: RevokedIter<'a>,
    added: IndexSetIter<'a>,
    size: u32,
    peek_old: Option<Option<u32>>,
    peek_added: Option<Option<u32>>,
    failed: bool,
}

impl Iterator for Union<'_> {
    type Item = Result<u32, StatusListError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let old = match self.peek_old {
            Some(o) => o,
            None => {
                let o = match self.old.next() {
                    None => None,
                    Some(Ok(v)) => Some(v),
                    Some(Err(e)) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                };
                self.peek_old = Some(o);
                o
            }
        };
        let added = match self.peek_added {
            Some(a) => a,
            None => {
                let a = self.added.next();
                self.peek_added = Some(a);
                a
            }
        };
        let take_old = match (old, added) {
            (None, None) => return None,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(o), Some(a)) if o == a => {
                self.failed = true;
                return Some(Err(StatusListError::AlreadyRevoked { index: a }));
            }
            (Some(o), Some(a)) => o < a,
        };
        if take_old {
            self.peek_old = None;
            old.map(Ok)
        } else {
            self.peek_added = None;
            let a = added?;
            if a >= self.size {
                self.failed = true;
                return Some(Err(StatusListError::IndexOutOfRange {
                    index: a,
                    size: self.size,
                }));
            }
            Some(Ok(a))
        }
    }
}

/// Streams `old ∪ added` into `sink` as a status list of the same size and block length, and
/// returns its length. The result is byte-for-byte what [`StatusListEncoder`] writes for the
/// merged set. Every index of `added` must be below the size and not yet revoked (a delta is
/// exact); a refused delta or a corrupt `old` is found before anything is written. No `alloc`.
pub fn apply_delta<S>(
    old: &StatusListView<'_>,
    added: &IndexSetView<'_>,
    sink: &mut S,
) -> Result<usize, EncodeError<S::Error>>
where
    S: ByteSink + ?Sized,
{
    apply_delta_resized(old, added, old.size(), sink)
}

/// Like [`apply_delta`], but the new list covers `new_size >= old.size()` indices (certificates
/// issued since `old` get indices beyond its size; they start as not revoked).
pub fn apply_delta_resized<S>(
    old: &StatusListView<'_>,
    added: &IndexSetView<'_>,
    new_size: u32,
    sink: &mut S,
) -> Result<usize, EncodeError<S::Error>>
where
    S: ByteSink + ?Sized,
{
    let (encoder, union) = delta_parts(old, added, new_size)?;
    encoder.write_source(union, sink)
}

/// The length [`apply_delta_resized`] (or, with `new_size == old.size()`, [`apply_delta`]) would
/// write, without writing: e.g. to reserve flash first.
pub fn applied_len(
    old: &StatusListView<'_>,
    added: &IndexSetView<'_>,
    new_size: u32,
) -> Result<usize, StatusListError> {
    let (encoder, union) = delta_parts(old, added, new_size)?;
    Ok(encoder.plan(union)?.shape.total_len() as usize)
}

fn delta_parts<'a>(
    old: &StatusListView<'a>,
    added: &IndexSetView<'a>,
    new_size: u32,
) -> Result<(StatusListEncoder, Union<'a>), StatusListError> {
    if new_size < old.size() {
        return Err(StatusListError::SizeShrinks {
            old: old.size(),
            new: new_size,
        });
    }
    let block_len = NonZeroU16::new(old.block_len())
        .ok_or(StatusListError::BadHeader { field: "block_len" })?;
    let encoder = StatusListEncoder::new(new_size).with_block_len(block_len);
    let union = Union {
        old: old.iter_revoked(),
        added: added.iter(),
        size: new_size,
        peek_old: None,
        peek_added: None,
        failed: false,
    };
    Ok((encoder, union))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    extern crate std;

    use super::*;
    use std::collections::BTreeSet;
    use std::vec;
    use std::vec::Vec;

    /// xorshift64* (Vigna 2016): tiny, seeded, good enough to draw test sets.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        /// True with probability `per_million` / 1e6.
        fn chance(&mut self, per_million: u64) -> bool {
            self.next() % 1_000_000 < per_million
        }
    }

    fn random_set(size: u32, per_million: u64, seed: u64) -> Vec<u32> {
        let mut rng = Rng(seed);
        (0..size).filter(|_| rng.chance(per_million)).collect()
    }

    fn nz(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).unwrap()
    }

    fn encode_with(size: u32, set: &[u32], block_len: u16) -> Vec<u8> {
        StatusListEncoder::new(size)
            .with_block_len(nz(block_len))
            .encode(set.iter().copied())
            .unwrap()
    }

    /// Encodes `set`, then checks every observable property against a plain bitset.
    fn check_round_trip(size: u32, set: &[u32], block_len: u16) -> Vec<u8> {
        let encoder = StatusListEncoder::new(size).with_block_len(nz(block_len));
        let bytes = encoder.encode(set.iter().copied()).unwrap();
        assert_eq!(
            encoder.encoded_len(set.iter().copied()).unwrap(),
            bytes.len()
        );
        // Deterministic, and the no_std sink path writes the same bytes.
        assert_eq!(encoder.encode(set.iter().copied()).unwrap(), bytes);
        let mut buf = vec![0u8; bytes.len()];
        let mut sink = SliceSink::new(&mut buf);
        assert_eq!(
            encoder.write(set.iter().copied(), &mut sink).unwrap(),
            bytes.len()
        );
        assert_eq!(sink.written(), &bytes[..]);

        let view = StatusListView::parse(&bytes).unwrap();
        assert_eq!(view.size(), size);
        assert_eq!(view.revoked_count() as usize, set.len());
        assert_eq!(view.block_len(), block_len);
        assert_eq!(view.as_bytes(), &bytes[..]);
        view.validate().unwrap();
        let listed: Vec<u32> = view.iter_revoked().map(|r| r.unwrap()).collect();
        assert_eq!(listed, set);
        let mut bitset = vec![false; size as usize];
        for &i in set {
            bitset[i as usize] = true;
        }
        for (i, &expected) in bitset.iter().enumerate() {
            assert_eq!(view.is_revoked(i as u32).unwrap(), expected, "index {i}");
        }
        assert_eq!(
            view.is_revoked(size),
            Err(StatusListError::IndexOutOfRange { index: size, size })
        );
        bytes
    }

    /// Overwrites `width` bits at bit `pos` with `value` (MSB first), to forge malformed input.
    fn set_bits(bytes: &mut [u8], pos: u64, width: u32, value: u64) {
        for i in 0..u64::from(width) {
            let bit = (value >> (u64::from(width) - 1 - i)) & 1;
            let p = pos + i;
            let byte = &mut bytes[(p / 8) as usize];
            let mask = 0x80u8 >> (p % 8);
            if bit == 1 {
                *byte |= mask;
            } else {
                *byte &= !mask;
            }
        }
    }

    /// Bit positions of the three fields of a block index entry.
    fn entry_fields(bytes: &[u8], block: u32) -> (u64, u32, u64, u32, u64) {
        let l = StatusListView::parse(bytes).unwrap().layout;
        let pos = l.entry_pos(block);
        (
            pos,
            l.first_bits,
            pos + u64::from(l.first_bits),
            l.offset_bits,
            pos + u64::from(l.first_bits + l.offset_bits),
        )
    }

    /// A list with several blocks to corrupt: size 1000, 21 revoked, blocks of 4.
    fn sample() -> (Vec<u32>, Vec<u8>) {
        let set = random_set(1000, 20_000, 7);
        assert!(set.len() > 12, "the sample needs at least 4 blocks");
        let bytes = encode_with(1000, &set, 4);
        (set, bytes)
    }

    // -- round trips -----------------------------------------------------------------------

    #[test]
    fn round_trips_at_many_densities() {
        let size = 20_000;
        for (per_million, seed) in [
            (0, 1),
            (100, 2),
            (5_000, 3),
            (20_000, 4),
            (50_000, 5),
            (300_000, 6),
            (500_000, 7),
            (700_000, 8),
            (990_000, 9),
            (1_000_000, 10),
        ] {
            let set = random_set(size, per_million, seed);
            for block_len in [1, 2, 7, 64, 512] {
                check_round_trip(size, &set, block_len);
            }
        }
    }

    #[test]
    fn round_trips_tiny_and_edge_sets() {
        let cases: &[(u32, &[u32])] = &[
            (0, &[]),
            (1, &[]),
            (1, &[0]),
            (2, &[0]),
            (2, &[1]),
            (2, &[0, 1]),
            (3, &[1]),
            (3, &[0, 2]),
            (10, &[0, 9]),
            (10, &[9]),
            (10, &[0, 1, 2, 3, 4]),    // exactly half: stored directly
            (10, &[0, 1, 2, 3, 4, 5]), // one more than half: the complement is stored
            (65_537, &[65_536]),
        ];
        for &(size, set) in cases {
            for block_len in [1, 2, 3, 512, u16::MAX] {
                check_round_trip(size, set, block_len);
            }
        }
    }

    #[test]
    fn empty_and_all_revoked_lists_are_header_only() {
        for size in [0u32, 1, 1000, 38_000_000] {
            let empty = encode(size, []).unwrap();
            assert_eq!(empty.len(), HEADER_LEN);
            let view = StatusListView::parse(&empty).unwrap();
            assert_eq!(view.revoked_count(), 0);
            assert_eq!(view.iter_revoked().count(), 0);
            if size > 0 {
                assert!(!view.is_revoked(size - 1).unwrap());
            }
        }
        let size = 100_000;
        let all = encode(size, 0..size).unwrap();
        assert_eq!(all.len(), HEADER_LEN);
        let view = StatusListView::parse(&all).unwrap();
        assert_eq!(all[1], FLAG_COMPLEMENT);
        assert_eq!(view.revoked_count(), size);
        assert!(view.is_revoked(0).unwrap() && view.is_revoked(size - 1).unwrap());
        assert!(view.iter_revoked().map(|r| r.unwrap()).eq(0..size));
    }

    #[test]
    fn complement_is_chosen_only_above_half() {
        let size = 11;
        let half: Vec<u32> = (0..5).collect();
        let more: Vec<u32> = (0..6).collect();
        assert_eq!(encode(size, half.iter().copied()).unwrap()[1], 0);
        assert_eq!(
            encode(size, more.iter().copied()).unwrap()[1],
            FLAG_COMPLEMENT
        );
    }

    #[test]
    fn lookups_at_every_block_edge() {
        let size = 5000;
        let set = random_set(size, 30_000, 11);
        for block_len in [1u16, 2, 5, 16] {
            let bytes = encode_with(size, &set, block_len);
            let view = StatusListView::parse(&bytes).unwrap();
            let members: BTreeSet<u32> = set.iter().copied().collect();
            for block in set.chunks(block_len as usize) {
                let (first, last) = (block[0], block[block.len() - 1]);
                for i in [
                    first.wrapping_sub(1),
                    first,
                    first + 1,
                    last.wrapping_sub(1),
                    last,
                    last + 1,
                ] {
                    if i < size {
                        assert_eq!(view.is_revoked(i).unwrap(), members.contains(&i), "{i}");
                    }
                }
            }
            assert_eq!(view.is_revoked(0).unwrap(), members.contains(&0));
            assert_eq!(
                view.is_revoked(size - 1).unwrap(),
                members.contains(&(size - 1))
            );
        }
    }

    #[test]
    fn largest_size_and_indices() {
        let size = u32::MAX;
        let set = [0, 1, 1 << 20, u32::MAX / 2, u32::MAX - 2, u32::MAX - 1];
        for block_len in [1, 2, 512] {
            let bytes = encode_with(size, &set, block_len);
            let view = StatusListView::parse(&bytes).unwrap();
            view.validate().unwrap();
            assert!(view
                .iter_revoked()
                .map(|r| r.unwrap())
                .eq(set.iter().copied()));
            for &i in &set {
                assert!(view.is_revoked(i).unwrap());
                assert!(!view.is_revoked(i + 1).unwrap_or(false) || set.contains(&(i + 1)));
            }
            assert!(!view.is_revoked(2).unwrap());
            assert!(!view.is_revoked(u32::MAX - 3).unwrap());
            assert!(matches!(
                view.is_revoked(u32::MAX),
                Err(StatusListError::IndexOutOfRange { .. })
            ));
        }
    }

    #[test]
    fn clustered_revocations_get_their_own_rice_parameters() {
        // Dense at the start (old cards), sparse later: blocks must pick different parameters.
        let size = 200_000;
        let mut rng = Rng(99);
        let set: Vec<u32> = (0..size)
            .filter(|&i| rng.chance(if i < 20_000 { 200_000 } else { 2_000 }))
            .collect();
        let bytes = check_round_trip(size, &set, 256);
        let view = StatusListView::parse(&bytes).unwrap();
        let ks: BTreeSet<u32> = (0..view.layout.blocks)
            .map(|b| view.layout.entry(b).k)
            .collect();
        assert!(ks.len() >= 2, "parameters {ks:?}");
    }

    #[test]
    fn long_unary_runs_take_the_slow_path_correctly() {
        // 511 consecutive indices then a far one: the block's best parameter is small, so the
        // last gap's unary part is longer than the lookup register holds.
        let mut set: Vec<u32> = (1000..1511).collect();
        set.push(250_000);
        set.push(250_001);
        let bytes = check_round_trip(300_000, &set, 512);
        let view = StatusListView::parse(&bytes).unwrap();
        let k = view.layout.entry(0).k;
        assert!(
            (250_000 - 1511) >> k > 64,
            "k = {k}: the run must exceed the register"
        );
        for i in [1510, 1511, 1512, 249_999, 250_000, 250_001, 250_002] {
            assert_eq!(view.is_revoked(i).unwrap(), set.contains(&i), "{i}");
        }
    }

    #[test]
    fn worked_example_from_the_protocol_document() {
        // docs/protocol-status-list.md, "Worked example", derived by hand from the specification.
        let bytes = encode_with(20, &[3, 4, 10, 17], 2);
        let expected = [
            0x01, 0x00, 0x14, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01, 0x00,
            0x00, 0x00, 0x18, 0x01, 0x42, 0x20, 0xB0,
        ];
        assert_eq!(bytes, expected);
        let set = encode_index_set([5, 6, 19]).unwrap();
        assert_eq!(set, [0x01, 0x02, 0x03, 0x00, 0x00, 0x00, 0x58, 0x20]);
    }

    #[test]
    fn size_stays_within_five_percent_of_the_information_bound() {
        let size = 1_000_000u32;
        for (per_million, seed) in [(5_000, 21), (20_000, 22), (50_000, 23)] {
            let set = random_set(size, per_million, seed);
            let p = set.len() as f64 / f64::from(size);
            let bound = f64::from(size) * (-p * p.log2() - (1.0 - p) * (1.0 - p).log2()) / 8.0;
            let len = encode(size, set.iter().copied()).unwrap().len() as f64;
            assert!(len <= 1.05 * bound, "p {p}: {len} bytes vs bound {bound}");
        }
    }

    // -- encoder refusals ------------------------------------------------------------------

    #[test]
    fn rejects_input_not_increasing() {
        assert_eq!(
            encode(10, [1, 3, 3]),
            Err(StatusListError::NotIncreasing {
                previous: 3,
                next: 3
            })
        );
        assert_eq!(
            encode(10, [4, 2]),
            Err(StatusListError::NotIncreasing {
                previous: 4,
                next: 2
            })
        );
        assert_eq!(
            encode_index_set([7, 7]),
            Err(StatusListError::NotIncreasing {
                previous: 7,
                next: 7
            })
        );
    }

    #[test]
    fn rejects_input_out_of_range() {
        assert_eq!(
            encode(10, [2, 10]),
            Err(StatusListError::IndexOutOfRange {
                index: 10,
                size: 10
            })
        );
        assert_eq!(
            encode(0, [0]),
            Err(StatusListError::IndexOutOfRange { index: 0, size: 0 })
        );
    }

    #[test]
    fn rejects_bad_input_before_writing_anything() {
        let mut out = Vec::new();
        let r = StatusListEncoder::new(100).write([1u32, 50, 40], &mut out);
        assert!(matches!(
            r,
            Err(EncodeError::Codec(StatusListError::NotIncreasing { .. }))
        ));
        assert!(out.is_empty());
        let r = write_index_set([9u32, 8], &mut out);
        assert!(matches!(
            r,
            Err(EncodeError::Codec(StatusListError::NotIncreasing { .. }))
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn rejects_a_full_sink() {
        let set = random_set(10_000, 20_000, 3);
        let len = StatusListEncoder::new(10_000)
            .encoded_len(set.iter().copied())
            .unwrap();
        let mut buf = vec![0u8; len - 1];
        let mut sink = SliceSink::new(&mut buf);
        assert_eq!(
            StatusListEncoder::new(10_000).write(set.iter().copied(), &mut sink),
            Err(EncodeError::Sink(SliceFull))
        );
        let mut small = [0u8; 3];
        assert_eq!(
            write_index_set([1u32, 2, 3], &mut SliceSink::new(&mut small)),
            Err(EncodeError::Sink(SliceFull))
        );
    }

    /// An iterator whose clones after the first `honest` ones yield one extra index, to test
    /// that an input changing between passes is refused without a panic.
    #[derive(Debug)]
    struct Flaky {
        clones: std::rc::Rc<core::cell::Cell<u32>>,
        honest: u32,
        items: std::vec::IntoIter<u32>,
    }
    impl Clone for Flaky {
        fn clone(&self) -> Self {
            let n = self.clones.get() + 1;
            self.clones.set(n);
            let mut items: Vec<u32> = self.items.clone().collect();
            if n > self.honest {
                items.push(items.last().map_or(0, |l| l + 1));
            }
            Self {
                clones: self.clones.clone(),
                honest: self.honest,
                items: items.into_iter(),
            }
        }
    }
    impl Iterator for Flaky {
        type Item = u32;
        fn next(&mut self) -> Option<u32> {
            self.items.next()
        }
    }

    #[test]
    fn rejects_input_that_changes_between_passes() {
        let base: Vec<u32> = random_set(5000, 20_000, 5);
        for honest in 0..8 {
            let flaky = Flaky {
                clones: Default::default(),
                honest,
                items: base.clone().into_iter(),
            };
            let mut out = Vec::new();
            let r = StatusListEncoder::new(5000)
                .with_block_len(nz(16))
                .write(flaky, &mut out);
            if let Err(e) = r {
                assert_eq!(e, EncodeError::Codec(StatusListError::InconsistentInput));
            } else {
                // Only possible if every pass saw the same items.
                assert_eq!(out, encode_with(5000, &base, 16));
            }
        }
        // The index-set writer reads a clone, then the original: make the clone differ.
        let flaky = Flaky {
            clones: Default::default(),
            honest: 0,
            items: vec![1, 2, 3].into_iter(),
        };
        assert_eq!(
            write_index_set(flaky, &mut Vec::new()),
            Err(EncodeError::Codec(StatusListError::InconsistentInput))
        );
    }

    // -- parser refusals: header -----------------------------------------------------------

    #[test]
    fn rejects_empty_and_short_input() {
        assert_eq!(
            StatusListView::parse(&[]).unwrap_err(),
            StatusListError::Truncated {
                needed: 16,
                available: 0
            }
        );
        let (_, bytes) = sample();
        for n in 1..HEADER_LEN {
            assert_eq!(
                StatusListView::parse(&bytes[..n]).unwrap_err(),
                StatusListError::Truncated {
                    needed: 16,
                    available: n as u64
                }
            );
        }
    }

    #[test]
    fn rejects_every_truncation() {
        let (_, bytes) = sample();
        for n in HEADER_LEN..bytes.len() {
            assert_eq!(
                StatusListView::parse(&bytes[..n]).unwrap_err(),
                StatusListError::Truncated {
                    needed: bytes.len() as u64,
                    available: n as u64
                }
            );
        }
    }

    #[test]
    fn rejects_trailing_bytes() {
        let (_, mut bytes) = sample();
        bytes.push(0);
        assert_eq!(
            StatusListView::parse(&bytes).unwrap_err(),
            StatusListError::TrailingBytes { extra: 1 }
        );
    }

    #[test]
    fn rejects_unknown_versions() {
        let (_, mut bytes) = sample();
        for v in [0u8, 2, 0xFF] {
            bytes[0] = v;
            assert_eq!(
                StatusListView::parse(&bytes).unwrap_err(),
                StatusListError::UnsupportedVersion { found: v }
            );
        }
    }

    #[test]
    fn rejects_unknown_flags() {
        let (_, mut bytes) = sample();
        bytes[1] = 0x02;
        assert_eq!(
            StatusListView::parse(&bytes).unwrap_err(),
            StatusListError::BadHeader { field: "flags" }
        );
    }

    #[test]
    fn rejects_a_complement_flag_that_disagrees_with_the_count() {
        let (_, mut bytes) = sample();
        bytes[1] = FLAG_COMPLEMENT;
        assert_eq!(
            StatusListView::parse(&bytes).unwrap_err(),
            StatusListError::BadHeader { field: "flags" }
        );
        let mut all = encode(10, 0..10).unwrap();
        all[1] = 0;
        assert_eq!(
            StatusListView::parse(&all).unwrap_err(),
            StatusListError::BadHeader { field: "flags" }
        );
    }

    #[test]
    fn rejects_more_revoked_than_size() {
        let mut bytes = encode(10, []).unwrap();
        bytes[6] = 11;
        assert_eq!(
            StatusListView::parse(&bytes).unwrap_err(),
            StatusListError::BadHeader {
                field: "revoked_count"
            }
        );
    }

    #[test]
    fn rejects_zero_block_len() {
        let (_, mut bytes) = sample();
        bytes[10] = 0;
        bytes[11] = 0;
        assert_eq!(
            StatusListView::parse(&bytes).unwrap_err(),
            StatusListError::BadHeader { field: "block_len" }
        );
    }

    #[test]
    fn rejects_data_in_an_empty_list() {
        let mut bytes = encode(10, []).unwrap();
        bytes[12] = 1;
        bytes.push(0);
        assert_eq!(
            StatusListView::parse(&bytes).unwrap_err(),
            StatusListError::BadHeader { field: "data_len" }
        );
    }

    #[test]
    fn rejects_a_changed_count_or_length() {
        // Header fields that change the layout make the length disagree.
        let (_, bytes) = sample();
        let mut more = bytes.clone();
        more[6] += 4; // one more block
        assert!(matches!(
            StatusListView::parse(&more).unwrap_err(),
            StatusListError::Truncated { .. }
        ));
        let mut longer = bytes.clone();
        longer[12] += 1; // data_len
        assert!(matches!(
            StatusListView::parse(&longer).unwrap_err(),
            StatusListError::Truncated { .. }
        ));
        let mut shorter = bytes;
        shorter[12] -= 1;
        assert!(matches!(
            StatusListView::parse(&shorter).unwrap_err(),
            StatusListError::TrailingBytes { .. } | StatusListError::BadBlockIndex { .. }
        ));
    }

    // -- parser refusals: block index ------------------------------------------------------

    #[test]
    fn parse_installed_agrees_on_a_sound_list_and_survives_a_corrupt_index() {
        let (set, bytes) = sample();
        let checked = StatusListView::parse(&bytes).unwrap();
        let installed = StatusListView::parse_installed(&bytes).unwrap();
        for i in 0..=checked.size() {
            assert_eq!(installed.is_revoked(i), checked.is_revoked(i), "index {i}");
        }
        assert!(set.iter().all(|&i| installed.is_revoked(i) == Ok(true)));
        // Header and length are still checked.
        assert_eq!(
            StatusListView::parse_installed(&bytes[..bytes.len() - 1]).unwrap_err(),
            checked_truncation(&bytes)
        );
        // Every single-entry corruption of the index: `parse` refuses it; the installed view
        // answers every lookup without panicking (right, wrong or `Corrupt`).
        let blocks = checked.layout.blocks;
        for block in 0..blocks {
            let (first_pos, first_width, off, ow, k_pos) = entry_fields(&bytes, block);
            for (pos, width, value) in [
                (k_pos, K_FIELD_BITS, (1u64 << K_FIELD_BITS) - 1),
                (k_pos, K_FIELD_BITS, 0),
                (off, ow, (1u64 << ow) - 1),
                (off, ow, 0),
                (first_pos, first_width, (1u64 << first_width) - 1),
                (first_pos, first_width, 0),
            ] {
                let mut bad = bytes.clone();
                set_bits(&mut bad, pos, width, value);
                if bad == bytes {
                    continue;
                }
                let view = StatusListView::parse_installed(&bad).unwrap();
                for i in (0..checked.size()).step_by(7) {
                    let _ = view.is_revoked(i);
                }
            }
        }
    }

    fn checked_truncation(bytes: &[u8]) -> StatusListError {
        StatusListView::parse(&bytes[..bytes.len() - 1]).unwrap_err()
    }

    #[test]
    fn rejects_a_first_block_not_at_offset_zero() {
        let (_, mut bytes) = sample();
        let (_, _, off, ow, _) = entry_fields(&bytes, 0);
        set_bits(&mut bytes, off, ow, 1);
        assert_eq!(
            StatusListView::parse(&bytes).unwrap_err(),
            StatusListError::BadBlockIndex { block: 0 }
        );
    }

    #[test]
    fn rejects_offsets_going_backwards() {
        let (_, mut bytes) = sample();
        let (_, _, off1, ow, _) = entry_fields(&bytes, 1);
        let (_, _, off2, _, _) = entry_fields(&bytes, 2);
        let o1 = read_bits(&bytes, off1, ow);
        set_bits(&mut bytes, off2, ow, o1 - 1);
        assert_eq!(
            StatusListView::parse(&bytes).unwrap_err(),
            StatusListError::BadBlockIndex { block: 2 }
        );
    }

    #[test]
    fn rejects_an_offset_past_the_data() {
        let (_, mut bytes) = sample();
        let view = StatusListView::parse(&bytes).unwrap();
        let last = view.layout.blocks - 1;
        let data_bits = view.layout.data_bits;
        let (_, _, off, ow, _) = entry_fields(&bytes, last);
        set_bits(&mut bytes, off, ow, data_bits);
        assert_eq!(
            StatusListView::parse(&bytes).unwrap_err(),
            StatusListError::BadBlockIndex { block: last }
        );
    }

    #[test]
    fn rejects_first_indices_not_increasing() {
        let (_, mut bytes) = sample();
        let (f1, fw, _, _, _) = entry_fields(&bytes, 1);
        let (f2, _, _, _, _) = entry_fields(&bytes, 2);
        let first1 = read_bits(&bytes, f1, fw);
        set_bits(&mut bytes, f2, fw, first1);
        assert_eq!(
            StatusListView::parse(&bytes).unwrap_err(),
            StatusListError::BadBlockIndex { block: 2 }
        );
    }

    #[test]
    fn rejects_blocks_closer_than_their_length() {
        // Blocks of 4: the next block's first index must be at least 4 above this one's.
        let (set, mut bytes) = sample();
        let (f1, fw, _, _, _) = entry_fields(&bytes, 1);
        set_bits(&mut bytes, f1, fw, u64::from(set[0] + 3));
        assert_eq!(
            StatusListView::parse(&bytes).unwrap_err(),
            StatusListError::BadBlockIndex { block: 1 }
        );
    }

    #[test]
    fn rejects_a_first_index_beyond_size() {
        let (_, mut bytes) = sample();
        let last = StatusListView::parse(&bytes).unwrap().layout.blocks - 1;
        let (f, fw, _, _, _) = entry_fields(&bytes, last);
        set_bits(&mut bytes, f, fw, 1000); // size is 1000; the 10-bit field holds up to 1023
        assert_eq!(
            StatusListView::parse(&bytes).unwrap_err(),
            StatusListError::BadBlockIndex { block: last }
        );
    }

    #[test]
    fn rejects_non_zero_block_index_padding() {
        let (set, _) = sample();
        // Pick a block length whose index does not end on a byte boundary.
        let mut bytes = (1..16)
            .map(|b| encode_with(1000, &set, b))
            .find(|bytes| {
                let l = StatusListView::parse(bytes).unwrap().layout;
                l.data_base > l.entry_pos(l.blocks)
            })
            .unwrap();
        let l = StatusListView::parse(&bytes).unwrap().layout;
        let (used, data_base, blocks) = (l.entry_pos(l.blocks), l.data_base, l.blocks);
        assert!(data_base > used, "the sample must have index padding");
        set_bits(&mut bytes, data_base - 1, 1, 1);
        assert_eq!(
            StatusListView::parse(&bytes).unwrap_err(),
            StatusListError::BadBlockIndex { block: blocks - 1 }
        );
    }

    // -- corrupt data ----------------------------------------------------------------------

    #[test]
    fn rejects_a_block_whose_codes_run_past_it() {
        let (set, mut bytes) = sample();
        let data_base = StatusListView::parse(&bytes).unwrap().layout.data_base as usize / 8;
        for b in &mut bytes[data_base..] {
            *b = 0; // no terminating one bits: the first code never ends
        }
        let view = StatusListView::parse(&bytes).unwrap();
        assert_eq!(view.validate(), Err(StatusListError::Corrupt { block: 0 }));
        assert_eq!(
            view.is_revoked(set[1]),
            Err(StatusListError::Corrupt { block: 0 })
        );
        let items: Vec<_> = view.iter_revoked().collect();
        assert_eq!(
            items,
            [Ok(set[0]), Err(StatusListError::Corrupt { block: 0 })]
        );
    }

    #[test]
    fn rejects_a_block_whose_codes_end_early() {
        let (set, mut bytes) = sample();
        let l = StatusListView::parse(&bytes).unwrap().layout;
        let (start, end) = (
            l.data_base + l.entry(0).offset,
            l.data_base + l.entry(1).offset,
        );
        // Fill block 0 with ones: every code is as short as it can be, so the block ends early.
        for bit in start..end {
            set_bits(&mut bytes, bit, 1, 1);
        }
        let view = StatusListView::parse(&bytes).unwrap();
        let r = view.validate();
        assert_eq!(r, Err(StatusListError::Corrupt { block: 0 }));
        assert_eq!(view.iter_revoked().filter(|r| r.is_err()).count(), 1);
        assert_eq!(view.iter_revoked().next(), Some(Ok(set[0])));
    }

    #[test]
    fn rejects_values_leaving_their_block() {
        // Lower block 1's first index so that block 0's values reach it.
        let (set, mut bytes) = sample();
        let (f1, fw, _, _, _) = entry_fields(&bytes, 1);
        set_bits(&mut bytes, f1, fw, u64::from(set[3]));
        let view = StatusListView::parse(&bytes).unwrap();
        assert_eq!(view.validate(), Err(StatusListError::Corrupt { block: 0 }));
        assert!(view.is_revoked(set[3]).unwrap()); // block 1 starts there now
        assert_eq!(
            view.is_revoked(set[3] - 1),
            Err(StatusListError::Corrupt { block: 0 })
        );
    }

    #[test]
    fn rejects_non_zero_data_padding() {
        let (_, mut bytes) = sample();
        let blocks = StatusListView::parse(&bytes).unwrap().layout.blocks;
        let last = bytes.len() - 1;
        assert!(bytes[last] & 1 == 0, "the sample must end with padding");
        bytes[last] |= 1;
        let view = StatusListView::parse(&bytes).unwrap();
        assert_eq!(
            view.validate(),
            Err(StatusListError::Corrupt { block: blocks - 1 })
        );
    }

    #[test]
    fn rejects_a_whole_spare_byte_in_the_data() {
        // data_len one byte longer than the codes need (and the blob one byte longer).
        let (_, bytes) = sample();
        let l = StatusListView::parse(&bytes).unwrap().layout;
        let data_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
        let new_len = data_len + 1;
        // Rebuild the index with the (possibly wider) offset field.
        let mut out = Vec::new();
        let mut w = BitWriter::new(&mut out);
        let mut header = bytes[..16].to_vec();
        header[12..16].copy_from_slice(&new_len.to_le_bytes());
        w.put_bytes(&header).unwrap();
        let ow = bit_width(u64::from(new_len) * 8);
        for b in 0..l.blocks {
            let e = l.entry(b);
            w.put(u64::from(e.first), l.first_bits).unwrap();
            w.put(e.offset, ow).unwrap();
            w.put(u64::from(e.k), K_FIELD_BITS).unwrap();
        }
        w.align().unwrap();
        w.put_bytes(&bytes[(l.data_base / 8) as usize..]).unwrap();
        w.put(0, 8).unwrap();
        w.finish().unwrap();
        let view = StatusListView::parse(&out).unwrap();
        assert_eq!(
            view.validate(),
            Err(StatusListError::Corrupt {
                block: l.blocks - 1
            })
        );
    }

    /// Builds a one-block list by hand with the Rice parameter `k` (not necessarily optimal).
    fn one_block_list(size: u32, set: &[u32], k: u32) -> Vec<u8> {
        let bits: u64 = set
            .windows(2)
            .map(|w| u64::from((w[1] - w[0] - 1) >> k) + 1 + u64::from(k))
            .sum();
        let data_len = bits.div_ceil(8) as u32;
        let mut out = Vec::new();
        let mut w = BitWriter::new(&mut out);
        w.put_bytes(&[1, 0]).unwrap();
        w.put_bytes(&size.to_le_bytes()).unwrap();
        w.put_bytes(&(set.len() as u32).to_le_bytes()).unwrap();
        w.put_bytes(&512u16.to_le_bytes()).unwrap();
        w.put_bytes(&data_len.to_le_bytes()).unwrap();
        w.put(u64::from(set[0]), bit_width(u64::from(size - 1)))
            .unwrap();
        w.put(0, bit_width(u64::from(data_len) * 8)).unwrap();
        w.put(u64::from(k), K_FIELD_BITS).unwrap();
        w.align().unwrap();
        for pair in set.windows(2) {
            w.put_rice(u64::from(pair[1] - pair[0] - 1), k).unwrap();
        }
        w.finish().unwrap();
        out
    }

    #[test]
    fn rejects_a_rice_parameter_the_encoder_would_not_choose() {
        let set = random_set(20_000, 20_000, 31);
        assert!(set.len() > 100 && set.len() <= 512);
        let canonical = encode(20_000, set.iter().copied()).unwrap();
        let k = StatusListView::parse(&canonical).unwrap().layout.entry(0).k;
        // The hand-built list with the encoder's parameter is the encoder's output...
        assert_eq!(one_block_list(20_000, &set, k), canonical);
        // ...and with any other it decodes to the same set but is refused by `validate`.
        for other in [0, k - 1, k + 1, MAX_RICE_K] {
            let bytes = one_block_list(20_000, &set, other);
            let view = StatusListView::parse(&bytes).unwrap();
            assert!(view
                .iter_revoked()
                .map(|r| r.unwrap())
                .eq(set.iter().copied()));
            assert_eq!(
                view.validate(),
                Err(StatusListError::BadBlockIndex { block: 0 })
            );
        }
    }

    #[test]
    fn rejects_an_index_set_rice_parameter_the_encoder_would_not_choose() {
        let set = [5u32, 6, 19];
        for k in 0..=MAX_RICE_K {
            let mut out = Vec::new();
            let mut w = BitWriter::new(&mut out);
            w.put_bytes(&[1, k as u8, 3, 0, 0, 0]).unwrap();
            let mut next = 0;
            for &v in &set {
                w.put_rice(u64::from(v - next), k).unwrap();
                next = v + 1;
            }
            w.finish().unwrap();
            if k == 2 {
                assert_eq!(out, encode_index_set(set).unwrap());
                IndexSetView::parse(&out).unwrap();
            } else {
                assert_eq!(
                    IndexSetView::parse(&out).unwrap_err(),
                    StatusListError::BadHeader { field: "k" }
                );
            }
        }
        assert_eq!(
            IndexSetView::parse(&[1, 3, 0, 0, 0, 0]).unwrap_err(),
            StatusListError::BadHeader { field: "k" }
        );
    }

    #[test]
    fn survives_every_single_bit_flip() {
        // No checksum here (signatures protect the bytes), so some flips go unnoticed; what
        // matters is that nothing panics and every answer is well formed.
        let (_, bytes) = sample();
        let complement = encode_with(100, &random_set(100, 800_000, 4), 3);
        for original in [bytes, complement] {
            for bit in 0..original.len() * 8 {
                let mut b = original.clone();
                b[bit / 8] ^= 0x80 >> (bit % 8);
                let Ok(view) = StatusListView::parse(&b) else {
                    continue;
                };
                let _ = view.validate();
                let n = view.iter_revoked().take(2000).count();
                assert!(n <= view.size() as usize + 1);
                for i in 0..view.size().min(1000) {
                    let _ = view.is_revoked(i);
                }
            }
        }
    }

    // -- index sets ------------------------------------------------------------------------

    #[test]
    fn index_sets_round_trip() {
        let cases: Vec<Vec<u32>> = vec![
            vec![],
            vec![0],
            vec![u32::MAX],
            vec![0, u32::MAX],
            vec![0, 1, 2, 3],
            random_set(100_000, 1_000, 3),
            random_set(100_000, 300_000, 4),
        ];
        for set in cases {
            let bytes = encode_index_set(set.iter().copied()).unwrap();
            let mut buf = vec![0u8; bytes.len()];
            let mut sink = SliceSink::new(&mut buf);
            assert_eq!(
                write_index_set(set.iter().copied(), &mut sink).unwrap(),
                bytes.len()
            );
            assert_eq!(sink.written(), &bytes[..]);
            let view = IndexSetView::parse(&bytes).unwrap();
            assert_eq!(view.len() as usize, set.len());
            assert_eq!(view.is_empty(), set.is_empty());
            assert_eq!(view.as_bytes(), &bytes[..]);
            assert!(view.iter().eq(set.iter().copied()));
            assert!((&view).into_iter().eq(set.iter().copied()));
        }
    }

    #[test]
    fn rejects_index_set_bad_headers() {
        assert_eq!(
            IndexSetView::parse(&[]).unwrap_err(),
            StatusListError::Truncated {
                needed: 6,
                available: 0
            }
        );
        assert_eq!(
            IndexSetView::parse(&[1, 0, 0]).unwrap_err(),
            StatusListError::Truncated {
                needed: 6,
                available: 3
            }
        );
        assert_eq!(
            IndexSetView::parse(&[2, 0, 0, 0, 0, 0]).unwrap_err(),
            StatusListError::UnsupportedVersion { found: 2 }
        );
        assert_eq!(
            IndexSetView::parse(&[1, 32, 0, 0, 0, 0]).unwrap_err(),
            StatusListError::BadHeader { field: "k" }
        );
    }

    #[test]
    fn rejects_index_set_truncation_and_trailing_bytes() {
        let bytes = encode_index_set(random_set(10_000, 10_000, 8)).unwrap();
        for n in INDEX_SET_HEADER_LEN..bytes.len() {
            assert!(matches!(
                IndexSetView::parse(&bytes[..n]).unwrap_err(),
                StatusListError::Truncated { .. }
            ));
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            IndexSetView::parse(&longer).unwrap_err(),
            StatusListError::TrailingBytes { extra: 1 }
        );
        // A count of zero with data left over.
        assert_eq!(
            IndexSetView::parse(&[1, 0, 0, 0, 0, 0, 0x80]).unwrap_err(),
            StatusListError::TrailingBytes { extra: 1 }
        );
    }

    #[test]
    fn rejects_index_set_non_zero_padding() {
        // [5, 6, 19] with k = 2 takes 13 bits: 3 bits of padding.
        let mut bytes = encode_index_set([5, 6, 19]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] |= 1;
        assert_eq!(
            IndexSetView::parse(&bytes).unwrap_err(),
            StatusListError::Corrupt { block: 0 }
        );
    }

    #[test]
    fn rejects_index_set_values_beyond_u32() {
        // k = 31, two codes: gap 2^32 - 1 (value u32::MAX), then gap 0 (value 2^32).
        let mut out = Vec::new();
        let mut w = BitWriter::new(&mut out);
        w.put_bytes(&[1, 31, 2, 0, 0, 0]).unwrap();
        w.put_rice(u64::from(u32::MAX), 31).unwrap();
        w.put_rice(0, 31).unwrap();
        w.finish().unwrap();
        assert_eq!(
            IndexSetView::parse(&out).unwrap_err(),
            StatusListError::Corrupt { block: 0 }
        );
    }

    #[test]
    fn rejects_index_set_gap_beyond_u32() {
        // k = 31, quotient 2: a single gap of 2^32.
        let mut out = Vec::new();
        let mut w = BitWriter::new(&mut out);
        w.put_bytes(&[1, 31, 1, 0, 0, 0]).unwrap();
        w.put_rice(1 << 32, 31).unwrap();
        w.finish().unwrap();
        assert_eq!(
            IndexSetView::parse(&out).unwrap_err(),
            StatusListError::Corrupt { block: 0 }
        );
    }

    #[test]
    fn survives_every_index_set_bit_flip() {
        let bytes = encode_index_set(random_set(2000, 20_000, 9)).unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 0x80 >> (bit % 8);
            if let Ok(view) = IndexSetView::parse(&b) {
                // A valid view always iterates exactly `len` strictly increasing values.
                let v: Vec<u32> = view.iter().collect();
                assert_eq!(v.len(), view.len() as usize);
                assert!(v.windows(2).all(|w| w[0] < w[1]));
            }
        }
    }

    // -- deltas ----------------------------------------------------------------------------

    fn apply(old: &[u8], added: &[u8]) -> Result<Vec<u8>, EncodeError<core::convert::Infallible>> {
        let old = StatusListView::parse(old).unwrap();
        let added = IndexSetView::parse(added).unwrap();
        let mut out = Vec::new();
        apply_delta(&old, &added, &mut out)?;
        Ok(out)
    }

    #[test]
    fn delta_then_apply_equals_encoding_the_union() {
        let size = 30_000;
        for (a_rate, b_rate, block_len, seed) in [
            (20_000, 1_000, 512, 1),
            (5_000, 5_000, 64, 2),
            (0, 20_000, 16, 3),
            (50_000, 0, 512, 4),
            (450_000, 150_000, 100, 5), // the union crosses one half: complement
            (600_000, 300_000, 7, 6),   // both complements
            (900_000, 1_000_000, 512, 7), // to all revoked
        ] {
            let a = random_set(size, a_rate, seed);
            let b = random_set(size, b_rate, seed + 100);
            let a_set: BTreeSet<u32> = a.iter().copied().collect();
            let added: Vec<u32> = b.iter().copied().filter(|i| !a_set.contains(i)).collect();
            let union: Vec<u32> = a_set.union(&b.iter().copied().collect()).copied().collect();
            let old = encode_with(size, &a, block_len);
            let delta = encode_index_set(added.iter().copied()).unwrap();
            let merged = apply(&old, &delta).unwrap();
            assert_eq!(merged, encode_with(size, &union, block_len), "seed {seed}");
            let old_view = StatusListView::parse(&old).unwrap();
            let delta_view = IndexSetView::parse(&delta).unwrap();
            assert_eq!(
                applied_len(&old_view, &delta_view, size).unwrap(),
                merged.len()
            );
        }
    }

    #[test]
    fn empty_delta_reproduces_the_list() {
        let a = random_set(10_000, 20_000, 12);
        let old = encode(10_000, a.iter().copied()).unwrap();
        let delta = encode_index_set([]).unwrap();
        assert_eq!(apply(&old, &delta).unwrap(), old);
    }

    #[test]
    fn delta_may_grow_the_list() {
        let a = random_set(10_000, 20_000, 13);
        let old = encode(10_000, a.iter().copied()).unwrap();
        let added = [10_000u32, 14_999];
        let delta = encode_index_set(added).unwrap();
        let (old_v, delta_v) = (
            StatusListView::parse(&old).unwrap(),
            IndexSetView::parse(&delta).unwrap(),
        );
        let mut out = Vec::new();
        apply_delta_resized(&old_v, &delta_v, 15_000, &mut out).unwrap();
        let union: Vec<u32> = a.iter().copied().chain(added).collect();
        assert_eq!(out, encode(15_000, union.iter().copied()).unwrap());
        // Without growing, the new indices are out of range.
        assert_eq!(
            apply(&old, &delta),
            Err(EncodeError::Codec(StatusListError::IndexOutOfRange {
                index: 10_000,
                size: 10_000
            }))
        );
    }

    #[test]
    fn rejects_a_delta_shrinking_the_list() {
        let old = encode(100, [5]).unwrap();
        let delta = encode_index_set([]).unwrap();
        let (o, d) = (
            StatusListView::parse(&old).unwrap(),
            IndexSetView::parse(&delta).unwrap(),
        );
        assert_eq!(
            apply_delta_resized(&o, &d, 99, &mut Vec::new()),
            Err(EncodeError::Codec(StatusListError::SizeShrinks {
                old: 100,
                new: 99
            }))
        );
        assert_eq!(
            applied_len(&o, &d, 99),
            Err(StatusListError::SizeShrinks { old: 100, new: 99 })
        );
    }

    #[test]
    fn rejects_a_delta_revoking_twice_and_writes_nothing() {
        let a = random_set(10_000, 20_000, 14);
        let old = encode(10_000, a.iter().copied()).unwrap();
        let late = a[a.len() - 1];
        let delta =
            encode_index_set([0, late]).unwrap_or_else(|_| encode_index_set([late]).unwrap());
        let (o, d) = (
            StatusListView::parse(&old).unwrap(),
            IndexSetView::parse(&delta).unwrap(),
        );
        let mut out = Vec::new();
        let r = apply_delta(&o, &d, &mut out);
        assert_eq!(
            r,
            Err(EncodeError::Codec(StatusListError::AlreadyRevoked {
                index: late
            }))
        );
        assert!(out.is_empty());
        // The same with a complement-stored old list.
        let dense: Vec<u32> = (0..100).filter(|i| i % 5 != 0).collect();
        let old = encode(100, dense.iter().copied()).unwrap();
        let delta = encode_index_set([5, 6]).unwrap();
        assert_eq!(
            apply(&old, &delta),
            Err(EncodeError::Codec(StatusListError::AlreadyRevoked {
                index: 6
            }))
        );
    }

    #[test]
    fn rejects_a_delta_on_a_corrupt_list_and_writes_nothing() {
        let (_, mut bytes) = sample();
        let data_base = StatusListView::parse(&bytes).unwrap().layout.data_base as usize / 8;
        for b in &mut bytes[data_base..] {
            *b = 0;
        }
        let delta = encode_index_set([999]).unwrap();
        let (o, d) = (
            StatusListView::parse(&bytes).unwrap(),
            IndexSetView::parse(&delta).unwrap(),
        );
        let mut out = Vec::new();
        assert_eq!(
            apply_delta(&o, &d, &mut out),
            Err(EncodeError::Codec(StatusListError::Corrupt { block: 0 }))
        );
        assert!(out.is_empty());
    }

    // -- golden files ----------------------------------------------------------------------

    fn golden_path(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("golden")
            .join(name)
    }

    /// Compares `bytes` with the golden file `name`; with `UPDATE_GOLDEN=1`, writes it instead.
    fn golden(name: &str, bytes: &[u8]) -> Vec<u8> {
        let path = golden_path(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
        }
        std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (regenerate with UPDATE_GOLDEN=1)", path.display()))
    }

    /// The golden list: 1000 indices, about 2 % revoked (seed 2024), blocks of 8 so that the
    /// block index has several entries.
    fn golden_sets() -> (Vec<u32>, Vec<u32>) {
        let list = random_set(1000, 20_000, 2024);
        let more: Vec<u32> = random_set(1000, 10_000, 2025)
            .into_iter()
            .filter(|i| !list.contains(i))
            .collect();
        (list, more)
    }

    #[test]
    fn golden_status_list() {
        let (list, _) = golden_sets();
        assert!((10..=40).contains(&list.len()));
        let fresh = encode_with(1000, &list, 8);
        let stored = golden("status_list.bin", &fresh);
        let view = StatusListView::parse(&stored).unwrap();
        view.validate().unwrap();
        assert_eq!(view.size(), 1000);
        assert_eq!(view.block_len(), 8);
        assert!(view
            .iter_revoked()
            .map(|r| r.unwrap())
            .eq(list.iter().copied()));
        // Re-encoding what was decoded gives the same bytes.
        let decoded: Vec<u32> = view.iter_revoked().map(|r| r.unwrap()).collect();
        assert_eq!(encode_with(1000, &decoded, 8), stored);
        assert_eq!(fresh, stored);
    }

    #[test]
    fn golden_index_set() {
        let (list, more) = golden_sets();
        assert!(!more.is_empty());
        let fresh = encode_index_set(more.iter().copied()).unwrap();
        let stored = golden("index_set.bin", &fresh);
        let view = IndexSetView::parse(&stored).unwrap();
        assert!(view.iter().eq(more.iter().copied()));
        assert_eq!(encode_index_set(view.iter()).unwrap(), stored);
        assert_eq!(fresh, stored);
        // The golden delta applies to the golden list.
        let old = golden("status_list.bin", &encode_with(1000, &list, 8));
        let mut union: Vec<u32> = list.iter().chain(&more).copied().collect();
        union.sort_unstable();
        assert_eq!(apply(&old, &stored).unwrap(), encode_with(1000, &union, 8));
    }

    #[test]
    fn errors_display() {
        let cases = [
            (
                StatusListError::Truncated {
                    needed: 16,
                    available: 3,
                },
                "16",
            ),
            (StatusListError::UnsupportedVersion { found: 9 }, "9"),
            (StatusListError::BadHeader { field: "flags" }, "flags"),
            (StatusListError::BadBlockIndex { block: 4 }, "4"),
            (StatusListError::Corrupt { block: 5 }, "5"),
            (StatusListError::TrailingBytes { extra: 2 }, "2"),
            (StatusListError::IndexOutOfRange { index: 7, size: 3 }, "7"),
            (
                StatusListError::NotIncreasing {
                    previous: 8,
                    next: 1,
                },
                "8",
            ),
            (StatusListError::AlreadyRevoked { index: 6 }, "6"),
            (StatusListError::InconsistentInput, "input"),
            (StatusListError::TooLarge, "4 GiB"),
            (StatusListError::SizeShrinks { old: 10, new: 5 }, "10"),
        ];
        for (e, needle) in cases {
            assert!(std::format!("{e}").contains(needle), "{e}");
        }
        let e: EncodeError<SliceFull> = EncodeError::Sink(SliceFull);
        assert_eq!(std::format!("{e}"), "sink: output buffer full");
    }
}
