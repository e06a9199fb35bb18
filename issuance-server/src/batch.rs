//! Batch issuance: re-signing the credentials of every active card (a new validity period, or a
//! new Issuer key) as fast as the machine allows.
//!
//! A reader pages through the active cards; each page is signed on every core (ring, one
//! `std::thread` per core) while the previous page is written; a page is written in one
//! transaction of multi-row INSERTs with one audit entry. A crash loses at most the page being
//! written, and running the command again simply re-issues again (the newest credential of a
//! card is its current one).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use shared_crypto::Signer;
use sqlx::Row;

use crate::db::{get_array, get_u64, i64_of, Backend, Db};
use crate::jobs::{sign_credential, CredentialFields};
use crate::keys::{random_bytes, OfficeKeys};
use crate::AppState;

/// Rows per multi-row INSERT (6 parameters each: far below both databases' limits).
const ROWS_PER_INSERT: usize = 1000;

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

/// Multi-row INSERT statements by row count, with the placeholders of the backend.
struct InsertSql {
    /// `$N` (PostgreSQL) or `?` (SQLite). sqlx's SQLite driver looks each `$N` up by name in a
    /// list, which makes a 6,000-parameter statement cost time quadratic in its size; plain `?`
    /// placeholders are bound by position.
    numbered: bool,
    by_rows: HashMap<usize, String>,
}

impl InsertSql {
    fn new(backend: Backend) -> Self {
        InsertSql {
            numbered: backend == Backend::Postgres,
            by_rows: HashMap::new(),
        }
    }

    fn get(&mut self, rows: usize) -> String {
        let numbered = self.numbered;
        self.by_rows
            .entry(rows)
            .or_insert_with(|| {
                let mut sql = String::from(
                    "INSERT INTO credentials (card_id, issuer_key_id, valid_from, valid_until, \
                     wire, created_at) VALUES ",
                );
                for r in 0..rows {
                    let b = r * 6;
                    if r > 0 {
                        sql.push(',');
                    }
                    if numbered {
                        sql.push_str(&format!(
                            "(${},${},${},${},${},${})",
                            b + 1,
                            b + 2,
                            b + 3,
                            b + 4,
                            b + 5,
                            b + 6
                        ));
                    } else {
                        sql.push_str("(?,?,?,?,?,?)");
                    }
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
    issuer_key_id: &[u8],
    page: SignedPage,
    valid_from: u64,
    valid_until: u64,
) -> Result<u64> {
    let now = i64_of(crate::now());
    let mut tx = db.begin_write().await?;
    for chunk in page.rows.chunks(ROWS_PER_INSERT) {
        let text = sql.get(chunk.len());
        let mut q = sqlx::query(sqlx::AssertSqlSafe(text));
        for (card_id, wire) in chunk {
            q = q
                .bind(*card_id)
                .bind(issuer_key_id.to_vec())
                .bind(i64_of(valid_from))
                .bind(i64_of(valid_until))
                .bind(wire.clone())
                .bind(now);
        }
        q.execute(tx.conn()).await?;
    }
    let n = page.rows.len() as u64;
    tx.audit(
        actor,
        "credential.reissue",
        format!("cards:{}..{}", page.first, page.last),
        serde_json::json!({"count": n, "valid_until": valid_until}),
    );
    tx.commit().await?;
    Ok(n)
}

/// Re-issues the credential of every active card (see the module documentation).
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
    let (send, mut recv) = tokio::sync::mpsc::channel::<SignedPage>(2);
    let reader_db = state.db.clone();
    let keys = state.keys.clone();
    let producer = tokio::spawn(async move {
        let mut after = 0i64;
        loop {
            let rows = sqlx::query(
                "SELECT id, serial, status_index, card_key, digests FROM cards \
                 WHERE state = 'active' AND id > $1 ORDER BY id LIMIT $2",
            )
            .bind(after)
            .bind(page_size)
            .fetch_all(reader_db.pool())
            .await?;
            if rows.is_empty() {
                return Ok::<_, anyhow::Error>(());
            }
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
            let first = cards.first().map(|c| c.card_id).unwrap_or(0);
            let last = cards.last().map(|c| c.card_id).unwrap_or(0);
            after = last;
            let k = keys.clone();
            let signed = tokio::task::spawn_blocking(move || {
                sign_page(&k, &cards, valid_from, valid_until, threads)
            })
            .await
            .context("signing task")??;
            if send
                .send(SignedPage {
                    first,
                    last,
                    rows: signed,
                })
                .await
                .is_err()
            {
                return Ok(()); // the writer stopped; its error is reported there
            }
        }
    });
    let mut sql = InsertSql::new(state.db.backend());
    let issuer_key_id = state.keys.issuer.key_id().to_vec();
    let mut total = 0u64;
    let mut write_error = None;
    while let Some(page) = recv.recv().await {
        match write_page(
            &state.db,
            &mut sql,
            actor,
            &issuer_key_id,
            page,
            valid_from,
            valid_until,
        )
        .await
        {
            Ok(n) => total += n,
            Err(e) => {
                write_error = Some(e);
                break;
            }
        }
    }
    drop(recv);
    let produced = producer.await.context("reader task")?;
    if let Some(e) = write_error {
        return Err(e);
    }
    produced?;
    Ok(ReissueReport {
        credentials: total,
        elapsed: start.elapsed(),
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
