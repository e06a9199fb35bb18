//! The personalization journal: which card key each unfinished job bound, kept on the desk PC.
//!
//! Once a card is locked it answers no personalization command again, not even the one that reads
//! its diversification data, and it never reveals its public key without a terminal
//! authentication. If the lock went through but its answer was lost (the card was torn away) or
//! the server was down for the confirmation, the server still waits for `confirm` with the card's
//! public key. The journal remembers that key from just before the card is written and locked
//! (phase 2) until the server confirmed, so the rerun of the same command finishes the job instead
//! of leaving a locked card the server does not know as active. If phase 2 fails before the lock
//! command went out, the card is certainly still BLANK and the entry is removed at once, so it
//! can never be matched with some other, already locked card.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::Result;
use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};

use crate::i18n::{creating, reading, Text, WithText};

/// One unfinished job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The server's base URL.
    pub server: String,
    /// The application.
    pub application_id: i64,
    /// The job.
    pub job_id: i64,
    /// The card key bound to the job (hex, 33 bytes).
    pub card_public_key: String,
    /// The card's diversification data (hex, 10 bytes).
    pub div_data: String,
    /// The card serial the server assigned (hex).
    pub card_serial: String,
}

/// The journal file.
#[derive(Clone, Debug)]
pub struct Journal {
    path: PathBuf,
}

fn key(server: &str, application_id: i64) -> String {
    format!("{server}#{application_id}")
}

impl Journal {
    /// The journal at `path` (created on first write).
    pub fn new(path: PathBuf) -> Self {
        Journal { path }
    }

    /// The default location: `$CARD_TOOL_JOURNAL`, else `$XDG_STATE_HOME/card-tool/journal.json`,
    /// else `~/.local/state/card-tool/journal.json`.
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os("CARD_TOOL_JOURNAL") {
            return PathBuf::from(p);
        }
        let state = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(std::env::temp_dir);
        state.join("card-tool").join("journal.json")
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the entries under an exclusive lock (several card-tool processes, or batch
    /// threads, may share one journal) and writes them back atomically if `f` changed them.
    fn update<T>(&self, f: impl FnOnce(&mut BTreeMap<String, Entry>) -> T) -> Result<T> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).with_text(|| creating(dir))?;
        }
        let lock_path = self.path.with_extension("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_text(|| {
                let p = lock_path.display();
                Text::new(format!("opening {p}"), format!("打开 {p} 时出错"))
            })?;
        FileExt::lock_exclusive(&lock).with_text(|| {
            let p = lock_path.display();
            Text::new(format!("locking {p}"), format!("给 {p} 加锁时出错"))
        })?;
        let mut entries: BTreeMap<String, Entry> = match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_text(|| {
                let p = self.path.display();
                Text::new(
                    format!("the journal {p} is damaged; move it away to start a new one"),
                    format!("日志文件 {p} 已损坏；请把它移到别处，工具会重新建立一个新的日志"),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_text(|| reading(&self.path)),
        };
        let before = entries.clone();
        let out = f(&mut entries);
        if entries != before {
            let tmp = self.path.with_extension("json.tmp");
            let text = serde_json::to_vec_pretty(&entries)?;
            write_synced(&tmp, &text)?;
            fs::rename(&tmp, &self.path).with_text(|| {
                let p = self.path.display();
                Text::new(format!("replacing {p}"), format!("替换 {p} 时出错"))
            })?;
        }
        let _ = FileExt::unlock(&lock);
        Ok(out)
    }

    /// Records (or replaces) the unfinished job of an application.
    pub fn record(&self, entry: Entry) -> Result<()> {
        self.update(|m| {
            m.insert(key(&entry.server, entry.application_id), entry);
        })
    }

    /// The unfinished job of an application, if any.
    pub fn pending(&self, server: &str, application_id: i64) -> Result<Option<Entry>> {
        self.update(|m| m.get(&key(server, application_id)).cloned())
    }

    /// Forgets an application's job (it was confirmed).
    pub fn remove(&self, server: &str, application_id: i64) -> Result<()> {
        self.update(|m| {
            m.remove(&key(server, application_id));
        })
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = File::create(path).with_text(|| creating(path))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(app: i64) -> Entry {
        Entry {
            server: "http://s".into(),
            application_id: app,
            job_id: app * 10,
            card_public_key: "02aa".into(),
            div_data: "00".into(),
            card_serial: "11".into(),
        }
    }

    #[test]
    fn records_finds_and_forgets_per_server_and_application() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("sub/journal.json"));
        assert_eq!(j.pending("http://s", 1).unwrap(), None);
        j.record(entry(1)).unwrap();
        j.record(entry(2)).unwrap();
        assert_eq!(j.pending("http://s", 1).unwrap(), Some(entry(1)));
        assert_eq!(j.pending("http://other", 1).unwrap(), None);
        j.remove("http://s", 1).unwrap();
        assert_eq!(j.pending("http://s", 1).unwrap(), None);
        // A second handle (another process) sees the same state.
        let j2 = Journal::new(dir.path().join("sub/journal.json"));
        assert_eq!(j2.pending("http://s", 2).unwrap(), Some(entry(2)));
    }

    #[test]
    fn a_damaged_journal_is_reported_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal.json");
        fs::write(&p, "{not json").unwrap();
        let e = Journal::new(p.clone()).record(entry(1)).unwrap_err();
        assert!(format!("{e:#}").contains("damaged"));
        let zh = crate::i18n::error_text(&e, crate::i18n::Lang::Zh);
        assert!(zh.starts_with("日志文件") && zh.contains("已损坏"), "{zh}");
        assert_eq!(fs::read_to_string(&p).unwrap(), "{not json");
    }
}
