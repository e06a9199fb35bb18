//! A NOR flash partition in RAM, with NOR semantics and power-cut injection.
//!
//! Programming only clears bits (`new = old & data`), erasing sets a whole sector to `FF`, and the
//! `embedded-storage` alignment rules are enforced, so code that works here does not rely on
//! anything real NOR flash lacks. For tests, [`RamFlash::cut_after`] makes the N-th next write or
//! erase *tear* — only part of it reaches the cells, the last word partially programmed — and every
//! later operation fail until [`RamFlash::restore_power`], i.e. a power cut at that operation.
//!
//! The host terminal also uses it as its flash (saving [`RamFlash::as_bytes`] to a file).

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

use crate::platform::MappedFlash;

/// How much of the torn operation reaches the cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tear {
    /// Nothing.
    Nothing,
    /// The first half (a write also half-programs the byte at the cut).
    Half,
    /// All but the last byte of a write (which is half-programmed), all but the last write unit of
    /// an erase.
    AllButLast,
}

/// Why a [`RamFlash`] operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RamFlashError {
    /// Outside the partition.
    OutOfBounds,
    /// Offset or length not a multiple of the write or erase size.
    NotAligned,
    /// The power was cut (see [`RamFlash::cut_after`]).
    PowerCut,
}

impl NorFlashError for RamFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            RamFlashError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            RamFlashError::NotAligned => NorFlashErrorKind::NotAligned,
            RamFlashError::PowerCut => NorFlashErrorKind::Other,
        }
    }
}

impl core::fmt::Display for RamFlashError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            RamFlashError::OutOfBounds => "flash access out of bounds",
            RamFlashError::NotAligned => "flash access not aligned",
            RamFlashError::PowerCut => "power cut",
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for RamFlashError {}

/// A RAM-backed NOR partition over any byte buffer `B` (`Vec<u8>`, `&mut [u8]`, `[u8; N]`) with
/// write unit `WRITE` and sector size `ERASE` bytes.
#[derive(Debug)]
pub struct RamFlash<B, const WRITE: usize = 4, const ERASE: usize = 4096> {
    buf: B,
    ops: u32,
    cut: Option<(u32, Tear)>,
    dead: bool,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>, const WRITE: usize, const ERASE: usize>
    RamFlash<B, WRITE, ERASE>
{
    /// A partition over `buf` as it is (pass an `FF`-filled buffer for erased flash). Its length
    /// should be a multiple of `ERASE`.
    pub fn new(buf: B) -> Self {
        RamFlash {
            buf,
            ops: 0,
            cut: None,
            dead: false,
        }
    }

    /// A partition over `buf`, erased first.
    pub fn erased(mut buf: B) -> Self {
        buf.as_mut().fill(0xFF);
        Self::new(buf)
    }

    /// The contents.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.as_ref()
    }

    /// The contents, for tests that corrupt flash on purpose.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        self.buf.as_mut()
    }

    /// The buffer.
    pub fn into_inner(self) -> B {
        self.buf
    }

    /// Writes and erases attempted so far with power on (the torn one included; those refused
    /// after a cut are not counted).
    pub fn ops(&self) -> u32 {
        self.ops
    }

    /// Cuts the power at the write or erase after `n` more complete ones: that operation tears as
    /// `tear` says and fails, and so does every later one until [`Self::restore_power`].
    pub fn cut_after(&mut self, n: u32, tear: Tear) {
        self.cut = Some((self.ops + n, tear));
    }

    /// Whether the power was cut.
    pub fn is_cut(&self) -> bool {
        self.dead
    }

    /// Power comes back: operations work again (the contents stay as the cut left them).
    pub fn restore_power(&mut self) {
        self.dead = false;
        self.cut = None;
    }

    /// Counts an operation; `Some(tear)` when this one is the torn one.
    fn begin_op(&mut self) -> Result<Option<Tear>, RamFlashError> {
        if self.dead {
            return Err(RamFlashError::PowerCut);
        }
        let this = self.ops;
        self.ops += 1;
        match self.cut {
            Some((at, tear)) if at == this => {
                self.dead = true;
                Ok(Some(tear))
            }
            _ => Ok(None),
        }
    }

    fn check(&self, offset: u32, len: usize, unit: usize) -> Result<(usize, usize), RamFlashError> {
        let start = offset as usize;
        let end = start.checked_add(len).ok_or(RamFlashError::OutOfBounds)?;
        if end > self.buf.as_ref().len() {
            return Err(RamFlashError::OutOfBounds);
        }
        if start % unit != 0 || len % unit != 0 {
            return Err(RamFlashError::NotAligned);
        }
        Ok((start, end))
    }
}

impl<B, const WRITE: usize, const ERASE: usize> ErrorType for RamFlash<B, WRITE, ERASE> {
    type Error = RamFlashError;
}

impl<B: AsRef<[u8]> + AsMut<[u8]>, const WRITE: usize, const ERASE: usize> ReadNorFlash
    for RamFlash<B, WRITE, ERASE>
{
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let (start, end) = self.check(offset, bytes.len(), 1)?;
        bytes.copy_from_slice(&self.buf.as_ref()[start..end]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.buf.as_ref().len()
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>, const WRITE: usize, const ERASE: usize> NorFlash
    for RamFlash<B, WRITE, ERASE>
{
    const WRITE_SIZE: usize = WRITE;
    const ERASE_SIZE: usize = ERASE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        let len = to.checked_sub(from).ok_or(RamFlashError::OutOfBounds)? as usize;
        let (start, end) = self.check(from, len, ERASE)?;
        let tear = self.begin_op()?;
        let cells = &mut self.buf.as_mut()[start..end];
        match tear {
            None => {
                cells.fill(0xFF);
                Ok(())
            }
            Some(t) => {
                let n = match t {
                    Tear::Nothing => 0,
                    Tear::Half => len / 2,
                    Tear::AllButLast => len.saturating_sub(WRITE),
                };
                cells[..n].fill(0xFF);
                Err(RamFlashError::PowerCut)
            }
        }
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        let (start, end) = self.check(offset, bytes.len(), WRITE)?;
        let tear = self.begin_op()?;
        let cells = &mut self.buf.as_mut()[start..end];
        let n = match tear {
            None => bytes.len(),
            Some(Tear::Nothing) => 0,
            Some(Tear::Half) => bytes.len() / 2,
            Some(Tear::AllButLast) => bytes.len().saturating_sub(1),
        };
        for (c, b) in cells.iter_mut().zip(bytes).take(n) {
            *c &= *b;
        }
        if tear.is_none() {
            return Ok(());
        }
        // The cell at the cut is half programmed: only its low nibble's zeros landed.
        if let (Some(c), Some(b)) = (cells.get_mut(n), bytes.get(n)) {
            *c &= *b | 0xF0;
        }
        Err(RamFlashError::PowerCut)
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>, const WRITE: usize, const ERASE: usize> MappedFlash
    for RamFlash<B, WRITE, ERASE>
{
    fn mapped(&self) -> &[u8] {
        self.buf.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    type F = RamFlash<std::vec::Vec<u8>, 4, 64>;

    #[test]
    fn programs_like_nor() {
        let mut f = F::erased(vec![0u8; 256]);
        f.write(0, &[0x0F, 0xF0, 0xAA, 0x55]).unwrap();
        f.write(0, &[0xFF, 0x3C, 0xFF, 0xFF]).unwrap();
        assert_eq!(&f.as_bytes()[..4], &[0x0F, 0x30, 0xAA, 0x55]);
        assert_eq!(f.write(2, &[0; 4]), Err(RamFlashError::NotAligned));
        assert_eq!(f.write(250, &[0; 4]), Err(RamFlashError::NotAligned));
        assert_eq!(f.write(256, &[0; 4]), Err(RamFlashError::OutOfBounds));
        assert_eq!(f.write(256, &[0; 4]), Err(RamFlashError::OutOfBounds));
        assert_eq!(f.erase(0, 32), Err(RamFlashError::NotAligned));
        f.erase(0, 64).unwrap();
        assert!(f.as_bytes()[..64].iter().all(|&b| b == 0xFF));
    }

    #[test]
    fn a_cut_tears_one_operation_and_stops_the_rest() {
        let mut f = F::erased(vec![0u8; 256]);
        f.cut_after(1, Tear::Half);
        f.write(0, &[0; 8]).unwrap();
        assert_eq!(f.write(8, &[0; 8]), Err(RamFlashError::PowerCut));
        assert_eq!(&f.as_bytes()[8..13], &[0, 0, 0, 0, 0xF0]);
        assert_eq!(f.as_bytes()[13], 0xFF);
        assert_eq!(f.write(16, &[0; 4]), Err(RamFlashError::PowerCut));
        assert_eq!(f.as_bytes()[16], 0xFF);
        assert!(f.is_cut());
        f.restore_power();
        f.write(16, &[0; 4]).unwrap();
        assert_eq!(f.ops(), 3);
    }
}
