//! Tap-log ingestion benchmark (`cargo bench -p issuance-server --bench ingest`, or
//! `cargo xtask bench`).
//!
//! * `ring_verify_per_s`: ring ECDSA P-256 verifications of receipt-sized messages on all
//!   cores, in the same run: the ceiling of receipt verification on this machine
//!   (`ring_verify_per_s_one_core`: on one thread).
//! * `ingest_receipts_per_s_sqlite`, `ingest_receipts_per_s_postgres`: the real server binary
//!   on loopback takes terminal-signed batches of 1000 tap records, each with a card-signed
//!   receipt, from several concurrent uploaders (one terminal each). Every batch signature and
//!   every receipt is verified, and every record, receipt and check of the ledger, the anomaly
//!   rules and the audit chain is committed (fsync'd on SQLite) before the answer. Receipts
//!   stored per second of wall time, from the first upload to the last answer.
//!
//! The cards are seeded straight into the database with known keys (and enough initial points
//! that the ledger finds nothing wrong); the terminals are registered over HTTP. Batches are
//! built and signed before the clock starts.
//!
//! Prints a table and writes the numbers as a flat JSON object to `$BENCH_OUT` if set.
//! `BENCH_RECEIPTS` sets the number of receipts per database (default 200000);
//! `BENCH_DATABASES=sqlite` or `postgres` runs one database only.
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use issuance_server::keys::RingSigner;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use serde_json::{json, Value};
use shared_crypto::model::{LogBatchBody, Outcome, Reason, ReceiptBody, Service, TapRecord};
use shared_crypto::sig::Domain;
use shared_crypto::wire::ItemsBuf;
use shared_crypto::{Signed, Signer};

const BIN: &str = env!("CARGO_BIN_EXE_issuance-server");
const BATCH: usize = 1000;
const UPLOADERS: usize = 8;
const RECEIPTS_PER_CARD: usize = 10;
const INITIAL_POINTS: u32 = 1_000_000;

fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// ring verifications per second on `threads` threads, of a receipt's signing input.
fn ring_verify_rate(threads: usize, window: Duration) -> f64 {
    let (card, _) = RingSigner::generate().unwrap();
    let body = ReceiptBody {
        card_serial: [1; 8],
        counter: 7,
        amount: 10,
        balance_after: 90,
        terminal: [2; 8],
        time: 1_700_000_000,
        reference: [3; 16],
    };
    let wire = shared_crypto::sig::sign(&body, &[], &card).unwrap();
    let signed = Signed::decode(&wire).unwrap();
    let message = signed.signing_input(Domain::Receipt, &[]).to_vec();
    let key = card.public_key().to_sec1_uncompressed();
    let sig = signed.sig.0;
    let start = Instant::now();
    let counts: Vec<u64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                let (message, key, sig) = (&message, &key, &sig);
                s.spawn(move || {
                    let k = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key);
                    let mut n = 0u64;
                    while start.elapsed() < window {
                        for _ in 0..100 {
                            k.verify(message, sig).unwrap();
                        }
                        n += 100;
                    }
                    n
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    counts.iter().sum::<u64>() as f64 / start.elapsed().as_secs_f64()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

/// Runs the server's command line; answers the token it prints, if any.
fn cli(args: &[&str], url: Option<&str>) -> Option<String> {
    let mut c = Command::new(BIN);
    c.args(args).env_remove("DATABASE_URL");
    if let Some(u) = url {
        c.env("DATABASE_URL", u);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.split("): ").nth(1).map(|t| t.trim().to_owned()))
}

/// A seeded card: serial and key.
struct Card {
    serial: [u8; 8],
    key: RingSigner,
}

/// Seeds `n` active cards with fresh keys the benchmark holds.
async fn seed_cards(data: &Path, url: Option<&str>, n: usize) -> Vec<Card> {
    let state = issuance_server::office::open(data, url).await.unwrap();
    issuance_server::batch::seed_synthetic_cards(&state, n)
        .await
        .unwrap();
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as("SELECT id, serial FROM cards ORDER BY id")
        .fetch_all(state.db.pool())
        .await
        .unwrap();
    assert_eq!(rows.len(), n);
    let keys: Vec<RingSigner> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads())
            .map(|t| {
                s.spawn(move || {
                    (0..n)
                        .filter(|i| i % threads() == t)
                        .map(|_| RingSigner::generate().unwrap().0)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let mut tx = state.db.begin_write().await.unwrap();
    for (chunk, ks) in rows.chunks(500).zip(keys.chunks(500)) {
        let mut sql = String::from("UPDATE cards SET card_key = CASE id");
        for k in 0..chunk.len() {
            sql.push_str(&format!(" WHEN ${} THEN ${}", 2 * k + 1, 2 * k + 2));
        }
        sql.push_str(" END WHERE id IN (");
        sql.push_str(
            &(0..chunk.len())
                .map(|k| format!("${}", 2 * k + 1))
                .collect::<Vec<_>>()
                .join(","),
        );
        sql.push(')');
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for ((id, _), key) in chunk.iter().zip(ks) {
            q = q.bind(*id).bind(key.public_key().to_sec1().to_vec());
        }
        q.execute(tx.conn()).await.unwrap();
    }
    sqlx::query("UPDATE personalization_jobs SET initial_points = $1")
        .bind(i64::from(INITIAL_POINTS))
        .execute(tx.conn())
        .await
        .unwrap();
    tx.audit("bench", "bench.card_keys", "cards", json!({"cards": n}));
    tx.commit().await.unwrap();
    state.db.close().await;
    rows.into_iter()
        .zip(keys)
        .map(|((_, serial), key)| Card {
            serial: serial.try_into().unwrap(),
            key,
        })
        .collect()
}

/// A registered terminal.
struct Term {
    key: RingSigner,
    key_id: [u8; 8],
}

/// Builds the signed batches of every terminal. Card `k` shops at terminal `k % terminals`;
/// each terminal's log holds `RECEIPTS_PER_CARD` rounds over its cards (debit 1 of each, then
/// debit 2 of each, ...), cut into batches of `BATCH` records, so every card's counters arrive
/// in order and each terminal's sequence runs from 0 without gaps.
fn build_batches(terms: &[Term], cards: &[Card], t0: u64) -> Vec<Vec<Vec<u8>>> {
    let tn = terms.len();
    // Per terminal: its (card, counter) debits in log order.
    let logs: Vec<Vec<(usize, u32)>> = (0..tn)
        .map(|t| {
            let mine: Vec<usize> = (t..cards.len()).step_by(tn).collect();
            (1..=RECEIPTS_PER_CARD as u32)
                .flat_map(|c| mine.iter().map(move |&k| (k, c)))
                .collect()
        })
        .collect();
    let work: Vec<(usize, usize)> = logs
        .iter()
        .enumerate()
        .flat_map(|(t, log)| (0..log.len().div_ceil(BATCH)).map(move |b| (t, b)))
        .collect();
    let (logs, work) = (&logs, &work);
    let built: Vec<(usize, usize, Vec<u8>)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads())
            .map(|w| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    for &(t, b) in work.iter().skip(w).step_by(threads()) {
                        let term = &terms[t];
                        let first = b * BATCH;
                        let part = &logs[t][first..(first + BATCH).min(logs[t].len())];
                        let time = |j: usize| t0 + (first + j) as u64;
                        let receipts: Vec<Vec<u8>> = part
                            .iter()
                            .enumerate()
                            .map(|(j, &(k, counter))| {
                                let body = ReceiptBody {
                                    card_serial: cards[k].serial,
                                    counter,
                                    amount: 1,
                                    balance_after: INITIAL_POINTS - counter,
                                    terminal: term.key_id,
                                    time: time(j),
                                    reference: [(j % 251) as u8; 16],
                                };
                                shared_crypto::sig::sign(&body, &[], &cards[k].key).unwrap()
                            })
                            .collect();
                        let items: ItemsBuf = part
                            .iter()
                            .zip(&receipts)
                            .enumerate()
                            .map(|(j, (&(k, _), r))| TapRecord {
                                seq: (first + j) as u32,
                                time: time(j),
                                service: Service::Welfare,
                                outcome: Outcome::Accepted,
                                reason: Reason::Ok,
                                card_serial: Some(cards[k].serial),
                                status_index: Some(k as u32),
                                status_epoch: 1,
                                status_issued_at: t0,
                                receipt: Some(Signed::decode(r).unwrap()),
                            })
                            .collect();
                        let body = LogBatchBody {
                            terminal: term.key_id,
                            first_seq: first as u32,
                            last_seq: (first + part.len() - 1) as u32,
                            created_at: issuance_server::now(),
                            records: items.as_items(),
                        };
                        let wire = shared_crypto::sig::sign(&body, &[], &term.key).unwrap();
                        out.push((t, b, wire));
                    }
                    out
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let mut per_term: Vec<Vec<(usize, Vec<u8>)>> = (0..tn).map(|_| Vec::new()).collect();
    for (t, b, wire) in built {
        per_term[t].push((b, wire));
    }
    per_term
        .into_iter()
        .map(|mut v| {
            v.sort_by_key(|(b, _)| *b);
            v.into_iter().map(|(_, w)| w).collect()
        })
        .collect()
}

/// Kills the server process if the benchmark panics.
struct Reaper(std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Run {
    receipts: u64,
    rate: f64,
    seconds: f64,
    batch_p50_ms: f64,
    batch_max_ms: f64,
    anomalies: u64,
    seed_s: f64,
    build_s: f64,
}

/// One database: init, seed, start the server, register terminals, upload, stop.
fn ingest(rt: &tokio::runtime::Runtime, data: &Path, url: Option<&str>, receipts: usize) -> Run {
    let d = data.to_str().unwrap();
    let admin = cli(&["init", "--data", d], url).unwrap();
    let t = Instant::now();
    let cards = rt.block_on(seed_cards(data, url, (receipts / RECEIPTS_PER_CARD).max(1)));
    let seed_s = t.elapsed().as_secs_f64();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = Command::new(BIN);
    c.args([
        "serve",
        "--data",
        d,
        "--listen",
        &format!("127.0.0.1:{port}"),
    ])
    .env_remove("DATABASE_URL")
    .env("RUST_LOG", "warn")
    .stdout(Stdio::null());
    if let Some(u) = url {
        c.env("DATABASE_URL", u);
    }
    let mut server = Reaper(c.spawn().unwrap());
    let base = format!("http://127.0.0.1:{port}");
    let a = agent();
    let start = Instant::now();
    while a
        .get(format!("{base}/healthz"))
        .call()
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Terminals a few kilometres apart in one district, so the travel rule runs on locations.
    let terms: Vec<Term> = (0..UPLOADERS)
        .map(|i| {
            let (key, _) = RingSigner::generate().unwrap();
            let mut r = a
                .post(format!("{base}/api/v1/terminals"))
                .header("Authorization", &format!("Bearer {admin}"))
                .send_json(json!({
                    "subject": format!("Bench shop {i}"),
                    "public_key": hex::encode(key.public_key().to_sec1()),
                    "services": ["welfare"],
                    "region": 110105,
                    "location": {"latitude": 39_900_000 + 10_000 * i as i64,
                                 "longitude": 116_400_000},
                }))
                .unwrap();
            assert_eq!(
                r.status(),
                201,
                "{}",
                r.body_mut().read_to_string().unwrap()
            );
            let key_id = key.key_id();
            Term { key, key_id }
        })
        .collect();
    let t = Instant::now();
    let t0 = issuance_server::now() - 3 * 86_400;
    let batches = build_batches(&terms, &cards, t0);
    let build_s = t.elapsed().as_secs_f64();
    let batches = Arc::new(batches);

    let started = Instant::now();
    let answers: Vec<(f64, u64)> = std::thread::scope(|s| {
        let hs: Vec<_> = terms
            .iter()
            .enumerate()
            .map(|(i, term)| {
                let (base, batches) = (&base, batches.clone());
                let url = format!("{base}/api/v1/terminals/{}/logs", hex::encode(term.key_id));
                s.spawn(move || {
                    let a = agent();
                    batches[i]
                        .iter()
                        .map(|wire| {
                            let t = Instant::now();
                            let mut r = a
                                .post(&url)
                                .header("Content-Type", "application/octet-stream")
                                .send(&wire[..])
                                .unwrap();
                            let body = r.body_mut().read_to_string().unwrap();
                            assert_eq!(r.status(), 200, "{body}");
                            let v: Value = serde_json::from_str(&body).unwrap();
                            // Every record new, every receipt into the ledger.
                            let n = v["accepted"].as_u64().unwrap();
                            assert!(n > 0 && v["receipts"] == n && v["duplicates"] == 0, "{v}");
                            (t.elapsed().as_secs_f64() * 1e3, n)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let stored = answers.iter().map(|a| a.1).sum::<u64>() as f64;
    assert_eq!(stored as usize, cards.len() * RECEIPTS_PER_CARD);
    let mut lat: Vec<f64> = answers.iter().map(|a| a.0).collect();

    let mut r = a
        .get(format!("{base}/api/v1/stats"))
        .header("Authorization", &format!("Bearer {admin}"))
        .call()
        .unwrap();
    let st: Value = r.body_mut().read_json().unwrap();
    assert_eq!(st["receipts"].as_f64(), Some(stored), "{st}");
    let _ = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status();
    let _ = server.0.wait();
    lat.sort_by(f64::total_cmp);
    Run {
        receipts: stored as u64,
        rate: stored / seconds,
        seconds,
        batch_p50_ms: lat[lat.len() / 2],
        batch_max_ms: lat[lat.len() - 1],
        anomalies: st["anomalies"].as_u64().unwrap_or(0),
        seed_s,
        build_s,
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let receipts: usize = std::env::var("BENCH_RECEIPTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
        .max(BATCH);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut out: BTreeMap<&str, f64> = BTreeMap::new();
    let mut notes: Vec<String> = Vec::new();

    eprintln!("bench: ring verification ...");
    let verify = ring_verify_rate(threads(), Duration::from_secs(3));
    out.insert("ring_verify_per_s", round(verify, 0));
    let one = ring_verify_rate(1, Duration::from_secs(2));
    out.insert("ring_verify_per_s_one_core", round(one, 0));

    // `BENCH_DATABASES=sqlite` (or `postgres`) runs one database only.
    let only = std::env::var("BENCH_DATABASES").unwrap_or_default();
    let tmp = tempfile::tempdir().unwrap();
    let mut note = |name: &str, r: &Run| {
        notes.push(format!(
            "{name}: {} receipts in {:.1} s; batch answer p50 {:.0} ms, max {:.0} ms; {} \
             anomalies; seeding {:.1} s, building and signing batches {:.1} s",
            r.receipts, r.seconds, r.batch_p50_ms, r.batch_max_ms, r.anomalies, r.seed_s, r.build_s
        ))
    };
    if only != "postgres" {
        eprintln!("bench: ingestion on SQLite ...");
        let r = ingest(&rt, &tmp.path().join("sqlite"), None, receipts);
        out.insert("ingest_receipts_per_s_sqlite", round(r.rate, 0));
        out.insert("ingest_batch_p50_ms_sqlite", round(r.batch_p50_ms, 1));
        note("SQLite", &r);
    }

    let pg = if only == "sqlite" {
        None
    } else {
        rt.block_on(common::PgDatabase::create())
    };
    if let Some(pg) = &pg {
        eprintln!("bench: ingestion on PostgreSQL ...");
        let r = ingest(&rt, &tmp.path().join("postgres"), Some(&pg.url), receipts);
        out.insert("ingest_receipts_per_s_postgres", round(r.rate, 0));
        out.insert("ingest_batch_p50_ms_postgres", round(r.batch_p50_ms, 1));
        note("PostgreSQL", &r);
    } else {
        notes.push("PostgreSQL: skipped (not reachable, or BENCH_DATABASES=sqlite)".into());
    }
    drop(pg);

    println!(
        "issuance-server tap-log ingestion ({} cores; {UPLOADERS} uploaders, batches of {BATCH} \
         records, each with a card-signed receipt)",
        threads()
    );
    println!("{:<32} | {:>12}", "key", "value");
    println!("{:-<32}-|-{:->12}", "", "");
    for (k, v) in &out {
        println!("{k:<32} | {v:>12}");
    }
    for n in notes {
        println!("note: {n}");
    }
    if let Ok(path) = std::env::var("BENCH_OUT") {
        let v: serde_json::Map<String, Value> = out
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&Value::Object(v)).unwrap(),
        )
        .unwrap();
    }
}
