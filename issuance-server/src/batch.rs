//! Batch issuance: re-signing the credentials of every active card (a new validity period, or a
//! new Issuer key) as fast as the machine allows.
//!
//! Three stages run at once, each a page of cards ahead of the next: a reader pages through the
//! active cards, a signer signs each page on every core (ring, one `std::thread` per core), and
//! the writer writes each signed page in one transaction of multi-row INSERTs with one audit
//! entry. Signing is most of the work (about four fifths of the CPU time of a run in a profile
//! on the 2-core machine, the SQLite threads about one sixth), so the stages are arranged to keep
//! the signing threads busy: the next page is already read when a page's signatures are done,
//! and the writer's transaction overlaps the next page's signing. A crash loses at most the page
//! being written, and running the command again simply re-issues again (the newest credential of
//! a card is its current one).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use shared_crypto::Signer;
use sqlx::Row;

use crate::db::{get_array, get_u64, i64_of, Backend, Db};
use crate::jobs::{sign_credential, CredentialFields};
use crate::keys::{random_bytes, OfficeKeys};
use crate::AppState;

/// Rows per multi-row INSERT. Each row binds two values (card id and credential), so this is
/// 8,000 bound values: below SQLite's limit of 32,766 variables and PostgreSQL's 65,535.
const ROWS_PER_INSERT: usize = 4000;

/// How to re-issue.
#[derive(Debug, Clone, Copy)]
pub struct ReissueOptions {
    /// Validity of the new credentials from now, in seconds.
    pub validity_s: u64,
    /// Cards per page (one transaction each).
    pub page: usize,
    /// Signing threads (0 = one per core).
    pub threads: usize,
}

impl Default for ReissueOptions {
    fn default() -> Self {
        ReissueOptions {
            validity_s: 5 * 365 * 86_400,
            page: 20_000,
            threads: 0,
        }
    }
}

/// What a re-issue did.
#[derive(Debug, Clone, Copy)]
pub struct ReissueReport {
    /// Credentials signed and committed.
    pub credentials: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Wall time the signer spent signing pages (summed over pages).
    pub signing: Duration,
    /// Wall time the writer spent in its transactions (summed over pages).
    pub writing: Duration,
}

impl ReissueReport {
    /// Credentials per second.
    pub fn rate(&self) -> f64 {
        self.credentials as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

struct CardToSign {
    card_id: i64,
    serial: [u8; 8],
    status_index: u32,
    card_key: [u8; 33],
    digests: Vec<u8>,
}

/// A page of cards as read, in id order.
struct CardPage {
    first: i64,
    last: i64,
    cards: Vec<CardToSign>,
}

struct SignedPage {
    first: i64,
    last: i64,
    rows: Vec<(i64, Vec<u8>)>,
}

/// The number of signing threads for `requested` (0 = one per core).
pub fn thread_count(requested: usize) -> usize {
    if requested > 0 {
        requested
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }
}

fn sign_page(
    keys: &OfficeKeys,
    cards: &[CardToSign],
    valid_from: u64,
    valid_until: u64,
    threads: usize,
) -> Result<Vec<(i64, Vec<u8>)>> {
    let per = cards.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = cards
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|c| {
                            sign_credential(
                                &keys.issuer,
                                &CredentialFields {
                                    serial: c.serial,
                                    status_index: c.status_index,
                                    valid_from,
                                    valid_until,
                                    card_key: c.card_key,
                                    digests: &c.digests,
                                },
                            )
                            .map(|w| (c.card_id, w))
                        })
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(cards.len());
        for h in handles {
            out.extend(
                h.join()
                    .map_err(|_| anyhow!("a signing thread panicked"))??,
            );
        }
        Ok(out)
    })
}

/// Multi-row INSERT statements by row count, for one run.
///
/// Only `card_id` and `wire` differ between rows; the issuer key id, the validity and the
/// creation time are the same for the whole run and are written into the statement text as
/// literals (numbers, and hex of our own key id: nothing from outside reaches the SQL). That binds
/// two values per row instead of six: each bound value costs a conversion through sqlx's `Any`
/// driver and a bind call on the writer's thread, and the writer is the one stage that cannot
/// run on more than one core. The text is the same for every page of a run, so each size is
/// prepared once and then reused from sqlx's statement cache.
struct InsertSql {
    /// `$N` (PostgreSQL) or `?` (SQLite). sqlx's SQLite driver looks each `$N` up by name in a
    /// list, which makes a statement with thousands of parameters cost time quadratic in its
    /// size; plain `?` placeholders are bound by position.
    numbered: bool,
    /// The literal columns of every row: `,<key id>,<valid_from>,<valid_until>,`.
    middle: String,
    created_at: i64,
    by_rows: HashMap<usize, String>,
}

impl InsertSql {
    fn new(
        backend: Backend,
        issuer_key_id: &[u8],
        valid_from: u64,
        valid_until: u64,
        created_at: i64,
    ) -> Self {
        let hex = hex::encode(issuer_key_id);
        let key = match backend {
            Backend::Sqlite => format!("X'{hex}'"),
            Backend::Postgres => format!("'\\x{hex}'::bytea"),
        };
        InsertSql {
            numbered: backend == Backend::Postgres,
            middle: format!(",{key},{},{},", i64_of(valid_from), i64_of(valid_until)),
            created_at,
            by_rows: HashMap::new(),
        }
    }

    fn get(&mut self, rows: usize) -> String {
        let InsertSql {
            numbered,
            middle,
            created_at,
            by_rows,
        } = self;
        by_rows
            .entry(rows)
            .or_insert_with(|| {
                let mut sql = String::from(
                    "INSERT INTO credentials (card_id, issuer_key_id, valid_from, valid_until, \
                     wire, created_at) VALUES ",
                );
                for r in 0..rows {
                    if r > 0 {
                        sql.push(',');
                    }
                    // Writing into a String cannot fail.
                    let _ = if *numbered {
                        write!(sql, "(${}{middle}${},{created_at})", 2 * r + 1, 2 * r + 2)
                    } else {
                        write!(sql, "(?{middle}?,{created_at})")
                    };
                }
                sql
            })
            .clone()
    }
}

async fn write_page(
    db: &Db,
    sql: &mut InsertSql,
    actor: &str,
    page: SignedPage,
    valid_until: u64,
) -> Result<u64> {
    let SignedPage { first, last, rows } = page;
    let n = rows.len() as u64;
    let mut tx = db.begin_write().await?;
    let mut rows = rows.into_iter();
    loop {
        let chunk: Vec<_> = rows.by_ref().take(ROWS_PER_INSERT).collect();
        if chunk.is_empty() {
            break;
        }
        let text = sql.get(chunk.len());
        let mut q = sqlx::query(sqlx::AssertSqlSafe(text));
        // The credential moves into the query: no copy of its bytes on this side.
        for (card_id, wire) in chunk {
            q = q.bind(card_id).bind(wire);
        }
        q.execute(tx.conn()).await?;
    }
    tx.audit(
        actor,
        "credential.reissue",
        format!("cards:{first}..{last}"),
        serde_json::json!({"count": n, "valid_until": valid_until}),
    );
    tx.commit().await?;
    Ok(n)
}

/// Reads the active cards after `after` in id order, at most `limit` of them.
async fn read_page(db: &Db, after: i64, limit: i64) -> Result<Option<CardPage>> {
    let rows = sqlx::query(
        "SELECT id, serial, status_index, card_key, digests FROM cards \
         WHERE state = 'active' AND id > $1 ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    let mut cards = Vec::with_capacity(rows.len());
    for r in &rows {
        cards.push(CardToSign {
            card_id: r.try_get("id")?,
            serial: get_array(r, "serial")?,
            status_index: u32::try_from(get_u64(r, "status_index")?)
                .map_err(|_| anyhow!("status index out of range"))?,
            card_key: get_array(r, "card_key")?,
            digests: r.try_get("digests")?,
        });
    }
    let (Some(first), Some(last)) = (cards.first(), cards.last()) else {
        return Ok(None);
    };
    Ok(Some(CardPage {
        first: first.card_id,
        last: last.card_id,
        cards,
    }))
}

/// Re-issues the credential of every active card (see the module documentation).
///
/// Every new credential of the run carries the same `valid_from`, `valid_until` and
/// `created_at`: the time the run started.
pub async fn reissue_all(
    state: &AppState,
    actor: &str,
    opts: ReissueOptions,
) -> Result<ReissueReport> {
    let start = Instant::now();
    let valid_from = crate::now();
    let valid_until = valid_from + opts.validity_s;
    let threads = thread_count(opts.threads);
    let page_size = i64::try_from(opts.page.max(1)).unwrap_or(i64::MAX);

    // Reader: one page ahead of the signer, so that the signing threads never wait for a read.
    let (read_send, mut read_recv) = tokio::sync::mpsc::channel::<CardPage>(1);
    let reader_db = state.db.clone();
    let reader = tokio::spawn(async move {
        let mut after = 0i64;
        while let Some(page) = read_page(&reader_db, after, page_size).await? {
            after = page.last;
            if read_send.send(page).await.is_err() {
                break; // the signer stopped; its error is reported there
            }
        }
        Ok::<_, anyhow::Error>(())
    });

    // Signer: one page ahead of the writer.
    let (sign_send, mut sign_recv) = tokio::sync::mpsc::channel::<SignedPage>(1);
    let keys = state.keys.clone();
    let signer = tokio::spawn(async move {
        let mut busy = Duration::ZERO;
        while let Some(page) = read_recv.recv().await {
            let k = keys.clone();
            let t = Instant::now();
            let CardPage { first, last, cards } = page;
            let rows = tokio::task::spawn_blocking(move || {
                sign_page(&k, &cards, valid_from, valid_until, threads)
            })
            .await
            .context("signing task")??;
            busy += t.elapsed();
            if sign_send
                .send(SignedPage { first, last, rows })
                .await
                .is_err()
            {
                break; // the writer stopped; its error is reported there
            }
        }
        Ok::<_, anyhow::Error>(busy)
    });

    let mut sql = InsertSql::new(
        state.db.backend(),
        &state.keys.issuer.key_id(),
        valid_from,
        valid_until,
        i64_of(valid_from),
    );
    let mut total = 0u64;
    let mut writing = Duration::ZERO;
    let mut write_error = None;
    while let Some(page) = sign_recv.recv().await {
        let t = Instant::now();
        match write_page(&state.db, &mut sql, actor, page, valid_until).await {
            Ok(n) => total += n,
            Err(e) => {
                write_error = Some(e);
                break;
            }
        }
        writing += t.elapsed();
    }
    // Dropping the receiver stops the signer, whose dropped receiver stops the reader.
    drop(sign_recv);
    let signed = signer.await.context("signing task")?;
    let read = reader.await.context("reader task")?;
    if let Some(e) = write_error {
        return Err(e);
    }
    let signing = signed?;
    read?;
    Ok(ReissueReport {
        credentials: total,
        elapsed: start.elapsed(),
        signing,
        writing,
    })
}

/// Adds `n` synthetic active cards (for benchmarks and load tests only): one synthetic
/// application, and for each card a completed job and a card row with random serial, random
/// 33-byte key bytes and nine random attribute digests. Written with multi-row INSERTs.
pub async fn seed_synthetic_cards(state: &AppState, n: usize) -> Result<()> {
    let db = &state.db;
    let mut tx = db.begin_write().await?;
    let user: i64 = sqlx::query_scalar("SELECT MIN(id) FROM users")
        .fetch_one(tx.conn())
        .await?;
    let now = i64_of(crate::now());
    let blind = random_bytes::<32>()?.to_vec();
    let seal = |field: &str, v: &[u8]| {
        state
            .keys
            .data
            .seal(&crate::applications::seal_context(field, &blind), v)
    };
    let app_id: i64 = sqlx::query_scalar(
        "INSERT INTO applications (blind_index, kind, name_enc, resident_id_enc, category, level, \
         region, birth_year, entitlements, state, submitted_by, decided_by, created_at, \
         updated_at) VALUES ($1, 'new', $2, $3, 4, 2, 110105, 1949, 31, 'approved', $4, $5, $6, \
         $7) RETURNING id",
    )
    .bind(blind.clone())
    .bind(seal("name", "Synthetic holder".as_bytes())?)
    .bind(seal("resident_id", b"11010519491231002X")?)
    .bind(user)
    .bind(user)
    .bind(now)
    .bind(now)
    .fetch_one(tx.conn())
    .await?;
    let n64 = i64::try_from(n).map_err(|_| anyhow!("too many cards"))?;
    let next: i64 = sqlx::query_scalar(
        "UPDATE counters SET value = value + $1 WHERE name = 'next_status_index' RETURNING value",
    )
    .bind(n64)
    .fetch_one(tx.conn())
    .await?;
    let first_index = next - n64;
    let size = u64::try_from(next)
        .unwrap_or(0)
        .div_ceil(crate::status::SIZE_STEP)
        * crate::status::SIZE_STEP;
    crate::status::new_epoch(&mut tx, size).await?;
    let max_job: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM personalization_jobs")
        .fetch_one(tx.conn())
        .await?;
    let max_card: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM cards")
        .fetch_one(tx.conn())
        .await?;
    let (job0, card0) = (max_job.unwrap_or(0) + 1, max_card.unwrap_or(0) + 1);
    let attrs = state.keys.data.seal(b"synthetic", b"[]")?;
    let valid_until = now + 5 * 365 * 86_400;
    const CHUNK: usize = 500;
    let mut i = 0usize;
    while i < n {
        let m = CHUNK.min(n - i);
        let mut jobs_sql = String::from(
            "INSERT INTO personalization_jobs (id, application_id, state, card_serial, \
             status_index, div_data, valid_from, valid_until, attributes_enc, digests, \
             initial_points, card_key, created_by, created_at, updated_at) VALUES ",
        );
        let mut cards_sql = String::from(
            "INSERT INTO cards (id, serial, application_id, blind_index, job_id, status_index, \
             card_key, digests, state, voucher_seq, activated_at) VALUES ",
        );
        for r in 0..m {
            let b = r * 5;
            if r > 0 {
                jobs_sql.push(',');
                cards_sql.push(',');
            }
            jobs_sql.push_str(&format!(
                "(${},$1,'completed',${},${},$2,$3,$4,$5,${},0,${},$6,$3,$3)",
                7 + b,
                8 + b,
                9 + b,
                10 + b,
                11 + b
            ));
            cards_sql.push_str(&format!(
                "(${},${},$1,${},${},${},${},${},'active',0,$2)",
                3 + r * 7,
                4 + r * 7,
                5 + r * 7,
                6 + r * 7,
                7 + r * 7,
                8 + r * 7,
                9 + r * 7
            ));
        }
        let mut rows = Vec::with_capacity(m);
        for r in 0..m {
            let k = i64::try_from(i + r).unwrap_or(i64::MAX);
            let mut key = [0u8; 33];
            key[0] = 2;
            key[1..].copy_from_slice(&random_bytes::<32>()?);
            let mut digests = Vec::with_capacity(9 * 17);
            for id in 1u8..=9 {
                digests.push(id);
                digests.extend_from_slice(&random_bytes::<16>()?);
            }
            rows.push((
                job0 + k,
                card0 + k,
                random_bytes::<8>()?.to_vec(),
                first_index + k,
                key.to_vec(),
                digests,
                random_bytes::<32>()?.to_vec(),
            ));
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(jobs_sql))
            .bind(app_id)
            .bind(vec![0u8; 10])
            .bind(now)
            .bind(valid_until)
            .bind(attrs.clone())
            .bind(user);
        for (job_id, _, serial, index, key, digests, _) in &rows {
            q = q
                .bind(*job_id)
                .bind(serial.clone())
                .bind(*index)
                .bind(digests.clone())
                .bind(key.clone());
        }
        q.execute(tx.conn()).await?;
        let mut q = sqlx::query(sqlx::AssertSqlSafe(cards_sql))
            .bind(app_id)
            .bind(now);
        for (job_id, card_id, serial, index, key, digests, blind) in &rows {
            q = q
                .bind(*card_id)
                .bind(serial.clone())
                .bind(blind.clone())
                .bind(*job_id)
                .bind(*index)
                .bind(key.clone())
                .bind(digests.clone());
        }
        q.execute(tx.conn()).await?;
        i += m;
    }
    if db.backend() == Backend::Postgres {
        // Explicit ids do not move PostgreSQL's identity sequences.
        for table in ["personalization_jobs", "cards"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                 (SELECT MAX(id) FROM {table}))"
            )))
            .execute(tx.conn())
            .await?;
        }
    }
    tx.audit(
        "cli",
        "bench.seed",
        format!("application:{app_id}"),
        serde_json::json!({"cards": n}),
    );
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::office::{init, open, InitOptions};
    use shared_crypto::model::CredentialBody;
    use shared_crypto::Signed;

    /// The constant columns are literals in the statement text, spelled per backend: check what
    /// lands in the table, over pages that take more than one INSERT and a short last page.
    async fn reissue_writes_the_runs_columns(url: Option<String>) {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("office");
        init(&InitOptions {
            data: data.clone(),
            database_url: url.clone(),
            office: "Test office".into(),
            region: 110105,
            admin: "admin".into(),
        })
        .await
        .unwrap();
        let state = open(&data, url.as_deref()).await.unwrap();
        // Two pages of 5,000 rows (an INSERT of 4,000 and one of 1,000 each), then one of 2,345.
        let (cards, page) = (ROWS_PER_INSERT * 3 + 345, ROWS_PER_INSERT + 1_000);
        seed_synthetic_cards(&state, cards).await.unwrap();
        let before = crate::now();
        let report = reissue_all(
            &state,
            "test",
            ReissueOptions {
                validity_s: 86_400,
                page,
                threads: 2,
            },
        )
        .await
        .unwrap();
        let after = crate::now();
        assert_eq!(report.credentials, cards as u64);
        let pool = state.db.pool();
        let (n, distinct, from_min, from_max, created_min, created_max): (
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
        ) = sqlx::query_as(
            "SELECT COUNT(*), COUNT(DISTINCT card_id), MIN(valid_from), MAX(valid_from), \
             MIN(created_at), MAX(created_at) FROM credentials",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!((n, distinct), (cards as i64, cards as i64));
        assert_eq!(from_min, from_max, "one valid_from for the run");
        assert_eq!((created_min, created_max), (from_min, from_max));
        let from = u64::try_from(from_min).unwrap();
        assert!(before <= from && from <= after);
        let same: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM credentials WHERE issuer_key_id = $1 AND valid_until = $2",
        )
        .bind(state.keys.issuer.key_id().to_vec())
        .bind(from_min + 86_400)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(same, cards as i64, "issuer key id or valid_until mangled");
        // Every row's credential is the one signed for its own card (card_id and wire bound in
        // step), with the stored validity.
        let rows = sqlx::query(
            "SELECT c.serial, c.status_index, r.wire FROM credentials r \
             JOIN cards c ON c.id = r.card_id",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        assert_eq!(rows.len(), cards);
        let issuer = state.keys.issuer.public_key();
        for r in rows.iter().step_by(97) {
            let wire: Vec<u8> = r.try_get("wire").unwrap();
            let body: CredentialBody<'_> =
                Signed::decode(&wire).unwrap().open(&[], &issuer).unwrap();
            let serial: [u8; 8] = get_array(r, "serial").unwrap();
            assert_eq!(body.card_serial, serial);
            assert_eq!(
                u64::from(body.status_index),
                get_u64(r, "status_index").unwrap()
            );
            assert_eq!((body.valid_from, body.valid_until), (from, from + 86_400));
        }
        // One audit entry per page, and the chain verifies.
        let pages: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit_log WHERE action = 'credential.reissue'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(pages, cards.div_ceil(page) as i64);
        assert!(crate::audit::verify(pool).await.unwrap().is_ok());
        state.db.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reissue_writes_the_runs_columns_on_sqlite() {
        reissue_writes_the_runs_columns(None).await;
    }

    /// Runs when `DATABASE_TEST_URL` names a PostgreSQL server (as `cargo xtask test` sets it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reissue_writes_the_runs_columns_on_postgres() {
        let Some(admin) = std::env::var("DATABASE_TEST_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            return;
        };
        let name = format!(
            "isrv_batch_{}_{}",
            std::process::id(),
            hex::encode(random_bytes::<4>().unwrap())
        );
        let mut conn = crate::db::pg_admin_connection(&admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let (base, query) = admin.split_once('?').unwrap_or((admin.as_str(), ""));
        let server = base.rsplit_once('/').map_or(base, |(s, _)| s);
        let url = if query.is_empty() {
            format!("{server}/{name}")
        } else {
            format!("{server}/{name}?{query}")
        };
        let outcome = tokio::spawn(reissue_writes_the_runs_columns(Some(url))).await;
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
        outcome.unwrap();
    }
}
