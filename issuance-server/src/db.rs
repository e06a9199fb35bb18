//! The database: one sqlx `Any` pool over SQLite (default) or PostgreSQL, the embedded
//! migrations, and [`WriteTx`], the only way the server changes anything.
//!
//! SQL is written once for both backends: `$1` placeholders (SQLite accepts them), BIGINT, TEXT
//! and BLOB/BYTEA columns only, no backend-specific functions. The two migration folders differ
//! in two spellings only (see `migrations/sqlite/0001_initial.sql`).
//!
//! Writers are serialized: within a process by an in-process gate on both backends (a writer
//! waiting for its turn holds no connection and no open transaction); across processes on
//! SQLite by `BEGIN IMMEDIATE` (so a transaction never has to upgrade its lock and fail with
//! SQLITE_BUSY halfway), on PostgreSQL by locking the audit chain's head row first. Every
//! writing transaction appends to the audit chain anyway, so it would serialize on the head at
//! commit; taking the lock first makes the read-check-write logic of each request behave the
//! same on both backends.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::AnyConnection;
use sqlx::{Any, AnyPool, Connection, Executor, Row, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::audit::{self, AuditEntry, Head};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite (a file in the data directory, WAL mode).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl Backend {
    /// The backend a URL names.
    pub fn of_url(url: &str) -> Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            bail!("DATABASE_URL must start with sqlite: or postgres:// (it starts otherwise)")
        }
    }
}

/// The connection pool and what it takes to write safely.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    /// SQLite: a pool of one connection that every writing transaction uses. SQLite drops a
    /// connection's page cache whenever another connection has written, so writers taking turns
    /// on the reading pool's connections would each start cold; one writer keeps the pages its
    /// transactions touch (indexes, the audit head) cached from one transaction to the next.
    writer: Option<AnyPool>,
    backend: Backend,
    gate: Arc<Mutex<()>>,
    /// What tap-log ingestion memoizes about this database's cards (see
    /// [`crate::ingest::CardMemo`]): per database, since a process may open several.
    card_memo: Arc<crate::ingest::CardMemo>,
    /// Ingestion's memo of `card_points` rows, valid as of one audit head (see [`RowMemo`]).
    row_memo: Arc<std::sync::Mutex<RowMemo>>,
}

/// The `card_points` rows ingestion has read or written, as they stand in the database when the
/// audit chain's head is `valid_at`.
///
/// Why this is sound: every change to the database is a [`WriteTx`], writing transactions are
/// serialized (module documentation), and each one appends to the audit chain, so the head
/// names the database state exactly: if a new writing transaction finds the head at `valid_at`,
/// no transaction of any process has committed since the memo was last brought up to date. A
/// commit of this process moves `valid_at` on (its own row changes applied); a head the memo
/// does not know, or a commit whose outcome is unknown, empties it. Only ingestion writes
/// `card_points`, so the other writers of this process carry no row changes. Migrations write
/// without an audit entry: a migration that changes `card_points` must be applied with every
/// server stopped (they run at start-up, before any memo exists).
#[derive(Debug, Default)]
pub(crate) struct RowMemo {
    valid_at: Option<Head>,
    rows: std::collections::HashMap<[u8; 8], crate::ledger::CardRow>,
}

/// Bound of the row memo (about 100 bytes each); emptied when a commit would pass it.
const ROW_MEMO_ENTRIES: usize = 1_000_000;

impl Db {
    /// Connects to `url` and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let db = Self::connect_only(url).await?;
        db.migrate().await?;
        Ok(db)
    }

    /// Connects without migrating.
    pub async fn connect_only(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url)?;
        let sqlite = |max: u32| {
            AnyPoolOptions::new()
                .max_connections(max)
                .min_connections(1)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        // FULL: a commit is on disk before the client hears of it. WAL makes
                        // that one fsync of the log per transaction.
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        // 64 MiB of page cache instead of 2: a log batch's inserts touch
                        // thousands of index pages, which would otherwise spill and be read back
                        // within the one transaction.
                        conn.execute("PRAGMA cache_size = -65536").await?;
                        // Checkpoint the WAL every 64 MiB rather than every 4: a page written
                        // by many transactions in between is copied into the database once.
                        conn.execute("PRAGMA wal_autocheckpoint = 16384").await?;
                        Ok(())
                    })
                })
        };
        let options = match backend {
            Backend::Sqlite => sqlite(8),
            Backend::Postgres => AnyPoolOptions::new().max_connections(16),
        };
        let pool = options
            .acquire_timeout(Duration::from_secs(30))
            .connect(url)
            .await
            .with_context(|| format!("connecting to the {backend:?} database"))?;
        if backend == Backend::Sqlite {
            // Persistent in the file; set once here rather than on every connection, because
            // changing it needs a lock that busy_timeout does not wait for.
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode = WAL")
                .fetch_one(&pool)
                .await?;
            if !mode.eq_ignore_ascii_case("wal") {
                bail!("SQLite refused WAL mode (journal_mode is {mode})");
            }
        }
        let writer = match backend {
            Backend::Sqlite => Some(
                sqlite(1)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect(url)
                    .await
                    .context("connecting the SQLite writer")?,
            ),
            Backend::Postgres => None,
        };
        Ok(Db {
            pool,
            writer,
            backend,
            gate: Arc::new(Mutex::new(())),
            card_memo: Arc::default(),
            row_memo: Arc::default(),
        })
    }

    /// Applies the embedded migrations that are not applied yet.
    pub async fn migrate(&self) -> Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&self.pool)
            .await
            .context("applying the database migrations")
    }

    /// The pool, for reads.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Ingestion's card memo.
    pub(crate) fn card_memo(&self) -> &crate::ingest::CardMemo {
        &self.card_memo
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        if let Some(w) = &self.writer {
            w.close().await;
        }
        self.pool.close().await;
    }

    /// Starts a writing transaction (see the module documentation).
    pub async fn begin_write(&self) -> Result<WriteTx, sqlx::Error> {
        // Also on PostgreSQL, where the head's row lock alone would serialize writers: there the
        // waiting ones held a pooled connection and an open transaction each (and sqlx logged
        // each wait as a slow statement), and the row memo is brought up to date under the gate.
        let gate = self.gate.clone().lock_owned().await;
        let mut tx = match self.backend {
            Backend::Sqlite => {
                let writer = self.writer.as_ref().unwrap_or(&self.pool);
                writer.begin_with("BEGIN IMMEDIATE").await?
            }
            Backend::Postgres => self.pool.begin().await?,
        };
        let head_sql = match self.backend {
            Backend::Sqlite => "SELECT seq, hash FROM audit_head WHERE id = 1",
            Backend::Postgres => "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE",
        };
        let row = sqlx::query(head_sql).fetch_optional(&mut *tx).await?;
        let head = match row {
            Some(row) => Head::from_row(&row)?,
            // Only `init` writes before the head exists: it creates it.
            None => Head::genesis(),
        };
        Ok(WriteTx {
            tx,
            _gate: gate,
            head,
            entries: Vec::new(),
            row_memo: self.row_memo.clone(),
            row_changes: Vec::new(),
        })
    }
}

/// A writing transaction: the change and its audit entries commit together or not at all.
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    _gate: OwnedMutexGuard<()>,
    head: Head,
    entries: Vec<AuditEntry>,
    row_memo: Arc<std::sync::Mutex<RowMemo>>,
    /// `card_points` rows as this transaction leaves them, for the memo once it commits.
    row_changes: Vec<([u8; 8], crate::ledger::CardRow)>,
}

impl WriteTx {
    /// The connection, for queries inside the transaction.
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// Records an audit entry, written when the transaction commits. `details` must not hold
    /// personal data (ids, states and reasons only).
    pub fn audit(
        &mut self,
        actor: &str,
        action: &str,
        object: impl std::fmt::Display,
        details: serde_json::Value,
    ) {
        self.entries.push(AuditEntry {
            at: crate::now(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            object: object.to_string(),
            details: details.to_string(),
        });
    }

    /// The memoized `card_points` rows of `serials` (see [`RowMemo`]) as they stood when this
    /// transaction began, if the memo is valid then (rows this transaction has changed since are
    /// not seen: ingestion reads the rows once, before it writes them); the serials not found are
    /// for the caller to read.
    pub(crate) fn memoized_rows<'a>(
        &self,
        serials: impl IntoIterator<Item = &'a [u8; 8]>,
    ) -> (
        std::collections::HashMap<[u8; 8], crate::ledger::CardRow>,
        Vec<[u8; 8]>,
    ) {
        debug_assert!(
            self.row_changes.is_empty(),
            "card_points rows read after this transaction wrote some"
        );
        let memo = self.row_memo.lock().unwrap_or_else(|e| e.into_inner());
        let valid = memo.valid_at == Some(self.head);
        let mut found = std::collections::HashMap::new();
        let mut missing = Vec::new();
        for s in serials {
            match memo.rows.get(s).filter(|_| valid) {
                Some(row) => {
                    found.insert(*s, *row);
                }
                None => missing.push(*s),
            }
        }
        (found, missing)
    }

    /// Records `card_points` rows as this transaction leaves them (read or written in it), for
    /// the memo if it commits.
    pub(crate) fn remember_rows(
        &mut self,
        rows: impl IntoIterator<Item = ([u8; 8], crate::ledger::CardRow)>,
    ) {
        self.row_changes.extend(rows);
    }

    /// Appends the audit entries to the chain and commits. A transaction without an audit entry
    /// is a bug and is rolled back.
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        if self.entries.is_empty() {
            return Err(sqlx::Error::Protocol(
                "a writing transaction must record an audit entry".into(),
            ));
        }
        let entries = std::mem::take(&mut self.entries);
        let start = self.head;
        let end = audit::append(&mut self.tx, start, &entries).await?;
        let committed = self.tx.commit().await;
        // Still holding the gate: the next writer of this process sees the memo as this commit
        // left it.
        let mut memo = self.row_memo.lock().unwrap_or_else(|e| e.into_inner());
        if committed.is_err() {
            // Committed or not, nobody can tell: forget everything.
            *memo = RowMemo::default();
        } else {
            if memo.valid_at != Some(start)
                || memo.rows.len() + self.row_changes.len() > ROW_MEMO_ENTRIES
            {
                // Another process committed in between (or the memo is full): what this
                // transaction read and wrote is still exact as of its own commit.
                memo.rows.clear();
            }
            memo.rows.extend(self.row_changes.drain(..));
            memo.valid_at = Some(end);
        }
        committed
    }
}

/// Whether `e` says the database was busy (retrying may succeed): SQLite's BUSY/LOCKED, a pool
/// timeout, or a PostgreSQL lock, serialization or deadlock failure.
pub fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(d) => {
            let code = d.code().unwrap_or_default();
            matches!(
                &*code,
                "5" | "6" | "517" | "261" | "55P03" | "40001" | "40P01"
            ) || d.message().contains("database is locked")
        }
        _ => false,
    }
}

/// Whether `e` is a unique-constraint violation (a race lost to another request).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Reads a non-null BIGINT column as `u64`, refusing negative values.
pub fn get_u64(row: &sqlx::any::AnyRow, col: &str) -> Result<u64, sqlx::Error> {
    let v: i64 = row.try_get(col)?;
    u64::try_from(v).map_err(|_| sqlx::Error::Decode(format!("{col} is negative").into()))
}

/// Reads a BLOB column of exactly `N` bytes.
pub fn get_array<const N: usize>(
    row: &sqlx::any::AnyRow,
    col: &str,
) -> Result<[u8; N], sqlx::Error> {
    let v: Vec<u8> = row.try_get(col)?;
    v.try_into()
        .map_err(|_| sqlx::Error::Decode(format!("{col} does not have {N} bytes").into()))
}

/// Converts a `u64` to the BIGINT the databases store (times, epochs, counts stay far below).
pub fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Opens a plain connection to the PostgreSQL server of `url` (for creating and dropping test
/// and bench databases).
pub async fn pg_admin_connection(url: &str) -> Result<AnyConnection> {
    sqlx::any::install_default_drivers();
    AnyConnection::connect(url)
        .await
        .with_context(|| "connecting to PostgreSQL".to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Migrations that change the storage of SQLite only; their PostgreSQL file is a no-op.
    const SQLITE_ONLY: &[&str] = &["0004_clustered.sql"];

    /// The two migration folders must say the same thing: the PostgreSQL file is the SQLite
    /// file with the two documented spellings changed (comments aside), or, for a migration of
    /// [`SQLITE_ONLY`], a statement that changes nothing.
    #[test]
    fn migrations_are_the_same_on_both_backends() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut names: Vec<_> = std::fs::read_dir(dir.join("sqlite"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        let mut pg_names: Vec<_> = std::fs::read_dir(dir.join("postgres"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        pg_names.sort();
        assert_eq!(names, pg_names);
        assert!(!names.is_empty());
        let strip = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| !l.trim_start().starts_with("--") && !l.trim().is_empty())
                .map(str::to_owned)
                .collect()
        };
        for name in names {
            let sqlite = std::fs::read_to_string(dir.join("sqlite").join(&name)).unwrap();
            let pg = std::fs::read_to_string(dir.join("postgres").join(&name)).unwrap();
            if SQLITE_ONLY.iter().any(|n| name == *n) {
                assert_eq!(strip(&pg), ["SELECT 1;"], "{name:?} is SQLite only");
                continue;
            }
            let translated = sqlite
                .replace(
                    "INTEGER PRIMARY KEY",
                    "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
                )
                .replace("BLOB", "BYTEA");
            assert_eq!(strip(&translated), strip(&pg), "{name:?} differs");
        }
    }

    /// Every tap, card row, index and foreign key of a database made before 0004 is there after
    /// it, in the clustered tables (with foreign keys enforced, as the server runs it).
    #[tokio::test]
    async fn clustering_keeps_every_tap_and_card_row() {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
        let mut c = sqlx::AnyConnection::connect(&url).await.unwrap();
        SQLITE_MIGRATIONS.run_to(3, &mut c).await.unwrap();
        // Terminals and batches without their users: only what the taps refer to.
        c.execute("PRAGMA foreign_keys = OFF").await.unwrap();
        for t in 1..=3 {
            c.execute(sqlx::AssertSqlSafe(format!(
                "INSERT INTO terminals (id, key_id, subject, public_key, services, region, \
                 certificate, valid_until, created_by, created_at) VALUES ({t}, x'0{t}', 'T', \
                 x'02', 15, 110105, x'00', 9, 1, 1); INSERT INTO log_batches (id, terminal_id, \
                 first_seq, last_seq, terminal_time, wire, received_at) VALUES ({t}, {t}, 0, \
                 99, 5, x'00', 6)"
            )))
            .await
            .unwrap();
        }
        for i in 0..60 {
            let t = i % 3 + 1;
            let card = if i % 7 == 0 {
                "NULL".to_owned()
            } else {
                format!("x'00000000000000{:02x}'", i % 11)
            };
            c.execute(sqlx::AssertSqlSafe(format!(
                "INSERT INTO taps (terminal_id, seq, time, service, outcome, reason, card_serial, \
                 status_index, status_epoch, batch_id, record_hash, status_issued_at) VALUES \
                 ({t}, {i}, {}, {}, {}, {}, {card}, {}, 3, {t}, {}, {})",
                1_000 + i * 13 % 17,
                i % 4,
                i % 2,
                i % 5,
                if i % 3 == 0 {
                    "NULL".to_owned()
                } else {
                    i.to_string()
                },
                if i % 5 == 0 {
                    "NULL".to_owned()
                } else {
                    format!("x'{:064x}'", i)
                },
                if i % 6 == 0 {
                    "NULL".to_owned()
                } else {
                    (900 + i).to_string()
                },
            )))
            .await
            .unwrap();
        }
        for k in 0..11 {
            let last = if k == 4 {
                "NULL, NULL, NULL".to_owned()
            } else {
                format!("{}, {}, {}", 1_000 + k, k % 3 + 1, k)
            };
            c.execute(sqlx::AssertSqlSafe(format!(
                "INSERT INTO card_points (card_serial, receipts, debited, top_counter, \
                 top_balance, last_tap_time, last_tap_terminal, last_tap_seq) VALUES \
                 (x'00000000000000{k:02x}', {k}, {}, {k}, {}, {last})",
                k * 10,
                100 - k
            )))
            .await
            .unwrap();
        }
        async fn dump(c: &mut sqlx::AnyConnection, table: &str, key: &str) -> Vec<String> {
            let columns: Vec<String> = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(
                format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid"),
            ))
            .fetch_all(&mut *c)
            .await
            .unwrap();
            let row = columns
                .iter()
                .map(|n| format!("quote({n})"))
                .collect::<Vec<_>>()
                .join(" || '|' || ");
            let mut out = vec![columns.join("|")];
            out.extend(
                sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!(
                    "SELECT {row} FROM {table} ORDER BY {key}"
                )))
                .fetch_all(&mut *c)
                .await
                .unwrap(),
            );
            out
        }
        let taps = dump(&mut c, "taps", "terminal_id, seq").await;
        let cards = dump(&mut c, "card_points", "card_serial").await;
        assert_eq!((taps.len(), cards.len()), (61, 12));
        c.execute("PRAGMA foreign_keys = ON").await.unwrap();
        SQLITE_MIGRATIONS.run(&mut c).await.unwrap();
        assert_eq!(dump(&mut c, "taps", "terminal_id, seq").await, taps);
        assert_eq!(dump(&mut c, "card_points", "card_serial").await, cards);
        for table in ["taps", "card_points"] {
            let sql: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = '{table}'"
            )))
            .fetch_one(&mut c)
            .await
            .unwrap();
            assert!(sql.ends_with("WITHOUT ROWID"), "{sql}");
        }
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'taps' \
             AND sql IS NOT NULL ORDER BY name",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        assert_eq!(indexes, ["taps_by_card", "taps_by_time"]);
        let references: Vec<String> =
            sqlx::query_scalar("SELECT \"table\" FROM pragma_foreign_key_list('taps') ORDER BY 1")
                .fetch_all(&mut c)
                .await
                .unwrap();
        assert_eq!(references, ["log_batches", "terminals"]);
        // Enforced: a tap of a terminal that does not exist is refused.
        assert!(c
            .execute(
                "INSERT INTO taps (terminal_id, seq, time, service, outcome, reason, \
                 status_epoch, batch_id) VALUES (99, 0, 1, 0, 0, 0, 1, 1)"
            )
            .await
            .is_err());
    }

    #[test]
    fn urls_name_their_backend() {
        assert_eq!(
            Backend::of_url("sqlite:///tmp/x.db").unwrap(),
            Backend::Sqlite
        );
        assert_eq!(
            Backend::of_url("postgres://root@127.0.0.1/test").unwrap(),
            Backend::Postgres
        );
        assert!(Backend::of_url("mysql://x").is_err());
    }
}
