//! The terminal's flash as a file: `flash.bin` in the data directory, the size of the device's
//! flash, cut into the same partitions.
//!
//! Each partition is a [`FileFlash`]: a [`RamFlash`] (so writes follow NOR rules exactly as on the
//! device: programming only clears bits, erase sets a sector to `FF`, alignment is enforced) whose
//! every write and erase is written through to the file at the partition's offset. The core reads
//! partitions in place ([`MappedFlash`]) from the RAM copy. A crash of the PC in the middle of a
//! write leaves the file as a power cut leaves a flash chip, and the core's torn-write recovery
//! handles both the same way.
//!
//! The file is locked while a `terminal-sim` process uses it, so two commands on one data
//! directory never interleave their writes.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use fs4::fs_std::FileExt as _;
use terminal_core::{MappedFlash, RamFlash, RamFlashError, Storage};

/// Write unit (bytes): a word, as on the Cortex-M4's internal flash.
pub const WRITE_SIZE: usize = 4;
/// Erase unit (bytes): the sector of common SPI NOR chips.
pub const SECTOR_SIZE: usize = 4096;

const KIB: usize = 1024;

/// The partition sizes of the terminal's flash (one slot of each double-buffered object).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// One trust-bundle slot (a bundle of a few dozen certificates needs about 10 KiB).
    pub bundle: usize,
    /// One status-list slot: the list for 38 million credentials at 2 % revoked compresses to
    /// about 0.9 MiB plus its block index; 2 MiB leaves room to grow.
    pub status: usize,
    /// One service-rules slot.
    pub rules: usize,
    /// The tap-log ring (a record is about 100 bytes: some 2,500 taps between uploads).
    pub log: usize,
}

/// The layout of the terminal's flash, in this order: bundle ×2, status ×2, rules ×2, log.
pub const LAYOUT: Layout = Layout {
    bundle: 32 * KIB,
    status: 2048 * KIB,
    rules: 8 * KIB,
    log: 256 * KIB,
};

impl Layout {
    /// Bytes of the whole flash.
    pub const fn total(&self) -> usize {
        2 * self.bundle + 2 * self.status + 2 * self.rules + self.log
    }

    /// `(name, offset, size)` of every partition, in flash order.
    pub fn partitions(&self) -> [(&'static str, usize, usize); 7] {
        let sizes = [
            ("bundle-a", self.bundle),
            ("bundle-b", self.bundle),
            ("status-a", self.status),
            ("status-b", self.status),
            ("rules-a", self.rules),
            ("rules-b", self.rules),
            ("log", self.log),
        ];
        let mut at = 0;
        sizes.map(|(name, size)| {
            let p = (name, at, size);
            at += size;
            p
        })
    }
}

/// Why a flash operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FileFlashError {
    /// The NOR rules were broken (out of bounds, not aligned).
    #[error("flash: {0}")]
    Cells(RamFlashError),
    /// The file could not be written.
    #[error("flash file: {0}")]
    Io(io::ErrorKind),
}

impl NorFlashError for FileFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            FileFlashError::Cells(e) => e.kind(),
            FileFlashError::Io(_) => NorFlashErrorKind::Other,
        }
    }
}

/// One partition of `flash.bin`.
#[derive(Debug)]
pub struct FileFlash {
    cells: RamFlash<Vec<u8>, WRITE_SIZE, SECTOR_SIZE>,
    file: Arc<File>,
    base: u64,
}

impl FileFlash {
    /// Writes `range` of the cells through to the file.
    fn persist(&self, start: usize, end: usize) -> Result<(), FileFlashError> {
        let bytes = self
            .cells
            .as_bytes()
            .get(start..end)
            .ok_or(FileFlashError::Cells(RamFlashError::OutOfBounds))?;
        self.file
            .write_all_at(bytes, self.base + start as u64)
            .map_err(|e| FileFlashError::Io(e.kind()))
    }
}

impl ErrorType for FileFlash {
    type Error = FileFlashError;
}

impl ReadNorFlash for FileFlash {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.cells
            .read(offset, bytes)
            .map_err(FileFlashError::Cells)
    }

    fn capacity(&self) -> usize {
        self.cells.capacity()
    }
}

impl NorFlash for FileFlash {
    const WRITE_SIZE: usize = WRITE_SIZE;
    const ERASE_SIZE: usize = SECTOR_SIZE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        self.cells.erase(from, to).map_err(FileFlashError::Cells)?;
        self.persist(from as usize, to as usize)
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        self.cells
            .write(offset, bytes)
            .map_err(FileFlashError::Cells)?;
        self.persist(offset as usize, offset as usize + bytes.len())
    }
}

impl MappedFlash for FileFlash {
    fn mapped(&self) -> &[u8] {
        self.cells.as_bytes()
    }
}

/// `flash.bin`, opened and locked.
#[derive(Debug)]
pub struct FlashFile {
    file: Arc<File>,
}

/// Why the flash file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FlashFileError {
    /// I/O on the file failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Another process holds the lock.
    #[error("another terminal-sim is using this data directory; wait for it to finish")]
    Busy,
    /// The file has the wrong size.
    #[error(
        "flash.bin has {found} bytes but this terminal-sim lays out {expected}: it was made by \
         another version; initialize a new data directory"
    )]
    WrongSize {
        /// Bytes found.
        found: u64,
        /// Bytes expected.
        expected: u64,
    },
}

impl FlashFile {
    /// Creates `path` as erased flash (all `FF`) of the layout's size. Refuses to overwrite.
    pub fn create(path: &Path, layout: &Layout) -> Result<(), FlashFileError> {
        let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
        let sector = [0xFFu8; SECTOR_SIZE];
        for _ in 0..layout.total() / SECTOR_SIZE {
            f.write_all(&sector)?;
        }
        f.sync_all()?;
        Ok(())
    }

    /// Opens and locks `path`, and reads it into partitions.
    pub fn open(
        path: &Path,
        layout: &Layout,
    ) -> Result<(Self, Storage<FileFlash>), FlashFileError> {
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        if !file.try_lock_exclusive()? {
            return Err(FlashFileError::Busy);
        }
        let found = file.metadata()?.len();
        let expected = layout.total() as u64;
        if found != expected {
            return Err(FlashFileError::WrongSize { found, expected });
        }
        file.seek(SeekFrom::Start(0))?;
        let mut all = Vec::with_capacity(layout.total());
        file.read_to_end(&mut all)?;
        let file = Arc::new(file);
        let mut parts = layout
            .partitions()
            .into_iter()
            .map(|(_, at, size)| FileFlash {
                cells: RamFlash::new(all[at..at + size].to_vec()),
                file: file.clone(),
                base: at as u64,
            });
        let mut next = || {
            parts
                .next()
                .ok_or_else(|| io::Error::other("layout has 7 parts"))
        };
        let storage = Storage {
            bundle: [next()?, next()?],
            status: [next()?, next()?],
            rules: [next()?, next()?],
            log: next()?,
        };
        Ok((FlashFile { file }, storage))
    }

    /// Makes everything written so far durable (called at the end of each command and after
    /// each tap).
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Layout {
        Layout {
            bundle: SECTOR_SIZE,
            status: 2 * SECTOR_SIZE,
            rules: SECTOR_SIZE,
            log: 2 * SECTOR_SIZE,
        }
    }

    #[test]
    fn partitions_tile_the_flash_in_sector_units() {
        for layout in [LAYOUT, small()] {
            let parts = layout.partitions();
            let mut at = 0;
            for (_, off, size) in parts {
                assert_eq!(off, at);
                assert_eq!(size % SECTOR_SIZE, 0);
                at += size;
            }
            assert_eq!(at, layout.total());
        }
    }

    #[test]
    fn writes_follow_nor_rules_and_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flash.bin");
        let layout = small();
        FlashFile::create(&path, &layout).unwrap();
        {
            let (f, mut s) = FlashFile::open(&path, &layout).unwrap();
            // Programming clears bits only: 0x0F over 0xF0 gives 0x00, never 0xFF.
            s.log.write(4, &[0xF0, 0xF0, 0xF0, 0xF0]).unwrap();
            s.log.write(4, &[0x0F, 0xFF, 0x0F, 0xFF]).unwrap();
            assert_eq!(&s.log.mapped()[4..8], &[0x00, 0xF0, 0x00, 0xF0]);
            // Unaligned writes are refused, as the chip would.
            assert_eq!(
                s.log.write(5, &[0; 4]),
                Err(FileFlashError::Cells(RamFlashError::NotAligned))
            );
            s.rules[1].write(0, b"RULE").unwrap();
            f.sync().unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        let parts = layout.partitions();
        let log_at = parts[6].1;
        assert_eq!(&bytes[log_at + 4..log_at + 8], &[0x00, 0xF0, 0x00, 0xF0]);
        assert_eq!(&bytes[parts[5].1..parts[5].1 + 4], b"RULE");
        // Reopened, the partitions hold what was written; an erase sets FF again.
        let (_f, mut s) = FlashFile::open(&path, &layout).unwrap();
        assert_eq!(&s.rules[1].mapped()[..4], b"RULE");
        s.rules[1].erase(0, SECTOR_SIZE as u32).unwrap();
        assert!(
            std::fs::read(&path).unwrap()[parts[5].1..parts[5].1 + SECTOR_SIZE]
                .iter()
                .all(|b| *b == 0xFF)
        );
    }

    #[test]
    fn a_second_user_of_the_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flash.bin");
        FlashFile::create(&path, &small()).unwrap();
        let _first = FlashFile::open(&path, &small()).unwrap();
        assert!(matches!(
            FlashFile::open(&path, &small()),
            Err(FlashFileError::Busy)
        ));
    }

    #[test]
    fn a_file_of_another_size_is_refused_and_create_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flash.bin");
        FlashFile::create(&path, &small()).unwrap();
        assert!(matches!(
            FlashFile::open(&path, &LAYOUT),
            Err(FlashFileError::WrongSize { .. })
        ));
        assert!(matches!(
            FlashFile::create(&path, &small()),
            Err(FlashFileError::Io(_))
        ));
    }
}
