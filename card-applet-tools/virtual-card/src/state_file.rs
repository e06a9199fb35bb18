//! The card's persistent memory as a file: written whole, atomically, whenever it changed.
//!
//! A write goes to a temporary file next to the target and is renamed over it, so a virtual card
//! killed at any moment leaves either the old or the new state, never a mix (rename is atomic on
//! one file system). The data is not fsync'ed: the file stands in for the card's EEPROM across
//! process restarts, not across machine crashes, and an fsync per APDU would cost more than the
//! APDU itself.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// A state file and the bytes last written to it.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    written: Vec<u8>,
}

impl StateFile {
    /// Opens an existing state file and returns it with its contents.
    pub fn open(path: &Path) -> io::Result<(Self, Vec<u8>)> {
        let bytes = fs::read(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot read the card state {}: {e}. Make a blank card first with \
                     `virtual-card init --state {}`",
                    path.display(),
                    path.display()
                ),
            )
        })?;
        Ok((
            StateFile {
                path: path.to_owned(),
                written: bytes.clone(),
            },
            bytes,
        ))
    }

    /// Creates a state file with `bytes`; refuses to overwrite one unless `force`.
    pub fn create(path: &Path, bytes: &[u8], force: bool) -> io::Result<Self> {
        if !force && path.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} already holds a card; give --force to replace it with a blank card",
                    path.display()
                ),
            ));
        }
        let mut f = StateFile {
            path: path.to_owned(),
            written: Vec::new(),
        };
        f.write(bytes)?;
        Ok(f)
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `bytes` if they differ from what was last written.
    pub fn save_if_changed(&mut self, bytes: &[u8]) -> io::Result<bool> {
        if bytes == self.written.as_slice() {
            return Ok(false);
        }
        self.write(bytes)?;
        Ok(true)
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        fs::write(&tmp, bytes)?;
        fs::rename(&tmp, &self.path)?;
        self.written.clear();
        self.written.extend_from_slice(bytes);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_changes_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("card.bin");
        assert!(StateFile::open(&p)
            .unwrap_err()
            .to_string()
            .contains("virtual-card init"));
        let mut f = StateFile::create(&p, b"one", false).unwrap();
        assert!(!f.save_if_changed(b"one").unwrap());
        assert!(f.save_if_changed(b"two").unwrap());
        let (_, bytes) = StateFile::open(&p).unwrap();
        assert_eq!(bytes, b"two");
        assert!(!dir.path().join("card.bin.tmp").exists());
        let err = StateFile::create(&p, b"x", false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        StateFile::create(&p, b"x", true).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"x");
    }
}
