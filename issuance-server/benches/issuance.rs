//! Batch issuance benchmark (`cargo xtask bench`, or
//! `cargo bench -p issuance-server --bench issuance`).
//!
//! * `ring_sign_per_s`: pure ring ECDSA P-256 signing of credential-sized messages on all cores:
//!   the machine's ceiling.
//! * `credential_sign_per_s`: building and signing credentials (no database) on all cores.
//! * `issuance_per_s_sqlite`, `issuance_per_s_postgres`: `reissue --all` over freshly seeded
//!   active cards: read, signed on all cores, persisted with multi-row INSERTs in one transaction
//!   per page with its audit entry (committed, fsync'd on SQLite).
//! * `approval_p50_ms`, `approval_p99_ms` (and `_postgres`): latency of one approval over HTTP
//!   against the real server process on loopback, 32 concurrent clients.
//!
//! Prints a table and writes the numbers as a flat JSON object to `$BENCH_OUT` if set.
//! `BENCH_CARDS` sets the number of cards (default 200000); `BENCH_ISSUANCE_ONLY=1` leaves out the
//! approval latency (for quick runs while working on batch issuance).
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use issuance_server::batch::{
    reissue_all, seed_synthetic_cards, thread_count, ReissueOptions, ReissueReport,
};
use issuance_server::jobs::{sign_credential, CredentialFields};
use issuance_server::keys::RingSigner;
use issuance_server::office::{init, open, InitOptions};
use serde_json::{json, Value};
use shared_crypto::Signer;

const BIN: &str = env!("CARGO_BIN_EXE_issuance-server");

fn ring_rate(threads: usize, window: Duration) -> f64 {
    let (key, _) = RingSigner::generate().unwrap();
    let key = Arc::new(key);
    // A credential's signature input: tag, signer id, ~290 bytes of body.
    let body = vec![0x5Au8; 290];
    let start = Instant::now();
    let counts: Vec<u64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                let key = key.clone();
                let body = &body;
                s.spawn(move || {
                    let mut n = 0u64;
                    while start.elapsed() < window {
                        for _ in 0..100 {
                            key.sign_parts(&[&[1], &[0; 8], body]).unwrap();
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

fn credential_rate(threads: usize, window: Duration) -> f64 {
    let (key, _) = RingSigner::generate().unwrap();
    let key = Arc::new(key);
    let mut digests = Vec::new();
    for id in 1u8..=9 {
        digests.push(id);
        digests.extend_from_slice(&[id; 16]);
    }
    let start = Instant::now();
    let counts: Vec<u64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                let key = key.clone();
                let digests = &digests;
                s.spawn(move || {
                    let mut card_key = [3u8; 33];
                    card_key[0] = 2;
                    let mut n = 0u64;
                    while start.elapsed() < window {
                        for i in 0..100u32 {
                            sign_credential(
                                &key,
                                &CredentialFields {
                                    serial: [7; 8],
                                    status_index: i,
                                    valid_from: 1,
                                    valid_until: 2,
                                    card_key,
                                    digests,
                                },
                            )
                            .unwrap();
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

/// Seeds `cards` active cards into a fresh office and times `reissue --all` over them: the
/// re-issue's report and the seeding rate.
async fn issuance_rate(data: &Path, url: Option<String>, cards: usize) -> (ReissueReport, f64) {
    init(&InitOptions {
        data: data.to_path_buf(),
        database_url: url.clone(),
        office: "Bench office".into(),
        region: 110105,
        admin: "admin".into(),
    })
    .await
    .unwrap();
    let state = open(data, url.as_deref()).await.unwrap();
    let t = Instant::now();
    seed_synthetic_cards(&state, cards).await.unwrap();
    let seed_s = t.elapsed().as_secs_f64();
    let report = reissue_all(
        &state,
        "bench",
        ReissueOptions {
            validity_s: 5 * 365 * 86_400,
            page: 20_000,
            threads: 0,
        },
    )
    .await
    .unwrap();
    assert_eq!(report.credentials, cards as u64);
    assert!(issuance_server::audit::verify(state.db.pool())
        .await
        .unwrap()
        .is_ok());
    state.db.close().await;
    (report, cards as f64 / seed_s)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn cli(args: &[&str], url: Option<&str>) -> String {
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
        .unwrap()
}

/// p50 and p99 of one approval over HTTP with `clients` concurrent clients, against the real
/// server binary; plus approvals per second.
fn approval_latency(
    data: &Path,
    url: Option<&str>,
    clients: usize,
    per_client: usize,
) -> (f64, f64, f64) {
    let d = data.to_str().unwrap();
    cli(&["init", "--data", d], url);
    let clerk = cli(
        &["user", "add", "clerk", "--role", "clerk", "--data", d],
        url,
    );
    let approver = cli(
        &["user", "add", "appr", "--role", "approver", "--data", d],
        url,
    );
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
        assert!(start.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(50));
    }
    // The applications to approve, submitted by 8 clients.
    let total = clients * per_client;
    let ids: Vec<i64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|t| {
                let (base, clerk) = (&base, &clerk);
                s.spawn(move || {
                    let a = agent();
                    (0..total)
                        .filter(|n| n % 8 == t)
                        .map(|n| {
                            let mut r = a
                                .post(format!("{base}/api/v1/applications"))
                                .header("Authorization", &format!("Bearer {clerk}"))
                                .send_json(common::application(n as u32))
                                .unwrap();
                            assert_eq!(r.status(), 201);
                            r.body_mut().read_json::<Value>().unwrap()["id"]
                                .as_i64()
                                .unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let started = Instant::now();
    let mut lat: Vec<f64> = std::thread::scope(|s| {
        let hs: Vec<_> = ids
            .chunks(per_client)
            .map(|chunk| {
                let (base, approver) = (&base, &approver);
                s.spawn(move || {
                    let a = agent();
                    chunk
                        .iter()
                        .map(|id| {
                            let t = Instant::now();
                            let r = a
                                .post(format!("{base}/api/v1/applications/{id}/approve"))
                                .header("Authorization", &format!("Bearer {approver}"))
                                .send_empty()
                                .unwrap();
                            assert_eq!(r.status(), 200);
                            t.elapsed().as_secs_f64() * 1e3
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let rate = lat.len() as f64 / started.elapsed().as_secs_f64();
    let _ = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status();
    let _ = server.0.wait();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    (pct(0.50), pct(0.99), rate)
}

/// Kills the server process if the benchmark panics.
struct Reaper(std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where a re-issue's time went: the signer's and the writer's busy time against the wall time
/// (each below the wall time when the stages overlap).
fn stages(r: &ReissueReport) -> String {
    format!(
        "re-issue {:.2} s: signing busy {:.2} s, writing busy {:.2} s",
        r.elapsed.as_secs_f64(),
        r.signing.as_secs_f64(),
        r.writing.as_secs_f64()
    )
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let cards: usize = std::env::var("BENCH_CARDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let threads = thread_count(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut out: BTreeMap<&str, f64> = BTreeMap::new();
    let mut notes: Vec<String> = Vec::new();

    eprintln!("bench: ring signing ...");
    out.insert(
        "ring_sign_per_s",
        round(ring_rate(threads, Duration::from_secs(3)), 0),
    );
    out.insert(
        "credential_sign_per_s",
        round(credential_rate(threads, Duration::from_secs(3)), 0),
    );

    let tmp = tempfile::tempdir().unwrap();
    eprintln!("bench: issuance on SQLite ...");
    let (report, seed) = rt.block_on(issuance_rate(&tmp.path().join("sqlite"), None, cards));
    out.insert("issuance_per_s_sqlite", round(report.rate(), 0));
    notes.push(format!(
        "SQLite: {cards} cards seeded at {seed:.0} cards/s (3 rows each); {}",
        stages(&report)
    ));

    let pg = rt.block_on(common::PgDatabase::create());
    if let Some(pg) = &pg {
        eprintln!("bench: issuance on PostgreSQL ...");
        let (report, seed) = rt.block_on(issuance_rate(
            &tmp.path().join("postgres"),
            Some(pg.url.clone()),
            cards,
        ));
        out.insert("issuance_per_s_postgres", round(report.rate(), 0));
        notes.push(format!(
            "PostgreSQL: {cards} cards seeded at {seed:.0} cards/s; {}",
            stages(&report)
        ));
    } else {
        notes.push("PostgreSQL: skipped (not reachable)".into());
    }

    let issuance_only = std::env::var_os("BENCH_ISSUANCE_ONLY").is_some_and(|v| v == "1");
    if issuance_only {
        notes.push("approval latency: left out (BENCH_ISSUANCE_ONLY=1)".into());
    } else {
        eprintln!("bench: approval latency ...");
        let (p50, p99, rate) = approval_latency(&tmp.path().join("http-sqlite"), None, 32, 50);
        out.insert("approval_p50_ms", round(p50, 2));
        out.insert("approval_p99_ms", round(p99, 2));
        out.insert("approvals_per_s_sqlite", round(rate, 0));
        if pg.is_some() {
            let pg2 = rt.block_on(common::PgDatabase::create()).unwrap();
            let (p50, p99, rate) =
                approval_latency(&tmp.path().join("http-postgres"), Some(&pg2.url), 32, 50);
            out.insert("approval_p50_ms_postgres", round(p50, 2));
            out.insert("approval_p99_ms_postgres", round(p99, 2));
            out.insert("approvals_per_s_postgres", round(rate, 0));
        }
    }
    drop(pg);

    println!("issuance-server batch issuance ({threads} signing threads, {cards} credentials per database)");
    println!("{:<28} | {:>12}", "key", "value");
    println!("{:-<28}-|-{:->12}", "", "");
    for (k, v) in &out {
        println!("{k:<28} | {v:>12}");
    }
    for n in notes {
        println!("note: {n}");
    }
    if !issuance_only {
        println!("approval latency: 32 concurrent clients x 50 approvals each, HTTP on loopback");
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
