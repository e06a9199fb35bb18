//! The card's persistent memory as a file: written whole, atomically, whenever it changed.
//!
//! A write goes to a temporary file next to the target and is renamed over it, so a virtual card
//! killed at any moment leaves either the old or the new state, never a mix (rename is atomic on
//! one file system). The file stands in for the card's EEPROM, which keeps a committed write
//! through any power loss, so the host's crash must not lose it either: the temporary file is
//! fsync'ed before the rename (else the rename can land before the data and leave an empty or
//! short file) and the directory after it (else the rename itself can be lost). Writes happen only
//! when a command changed the store: DEBIT, CREDIT, BLOCK, personalization, and most taps
//! (TERMINAL AUTHENTICATE moves the card's clock on when the terminal's time is later); a SELECT,
//! a read or a refused command pays no fsync.

use std::fs;
use std::io::{self, Write};
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
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            // The data must be durable before the rename makes it the card's state.
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        sync_dir(&self.path)?;
        self.written.clear();
        self.written.extend_from_slice(bytes);
        Ok(())
    }
}

/// Makes the rename of `path` durable by fsyncing the directory that holds it (POSIX: a rename is
/// an update of the directory, which has its own metadata to flush).
#[cfg(unix)]
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        // A bare file name lives in the current directory.
        _ => Path::new("."),
    };
    fs::File::open(dir)?.sync_all()
}

/// Elsewhere a directory cannot be opened as a file; the rename is as durable as the platform
/// makes it.
#[cfg(not(unix))]
fn sync_dir(_path: &Path) -> io::Result<()> {
    Ok(())
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

    #[cfg(unix)]
    #[test]
    fn a_bare_file_name_syncs_the_current_directory() {
        // `--state card.bin` has an empty parent; the directory fsync must not fail on it.
        sync_dir(Path::new("card.bin")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = sync_dir(&dir.path().join("missing").join("card.bin")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
