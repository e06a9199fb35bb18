//! Tests of the real `issuance-server` binary: the commands, `--help`, serving over HTTP,
//! graceful shutdown on SIGTERM, a SIGKILL in the middle of a batch of approvals and
//! personalization jobs followed by a restart, and `audit verify` finding a tampered row. The
//! database tests run on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{application, Backend, PgDatabase};
use issuance_server::keys::RingSigner;
use serde_json::{json, Value};
use sqlx::{Connection, Row};

const BIN: &str = env!("CARGO_BIN_EXE_issuance-server");

fn bin(args: &[&str], database_url: Option<&str>) -> Output {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("ISSUANCE_DATA");
    if let Some(u) = database_url {
        c.env("DATABASE_URL", u);
    }
    c.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The token printed by `init` or `user add`.
fn token_of(o: &Output) -> String {
    assert!(o.status.success(), "{}{}", stdout(o), stderr(o));
    stdout(o)
        .lines()
        .find_map(|l| l.split("): ").nth(1).map(str::trim).map(str::to_owned))
        .unwrap()
}

/// Every file of a directory with its contents, for "nothing changed" checks.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(data: &Path, database_url: Option<&str>) -> Server {
        let port = free_port();
        let mut c = Command::new(BIN);
        c.args([
            "serve",
            "--data",
            data.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
        if let Some(u) = database_url {
            c.env("DATABASE_URL", u);
        }
        let child = c.spawn().unwrap();
        let s = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let start = Instant::now();
        loop {
            if let Ok(r) = agent().get(format!("{}/healthz", s.base)).call() {
                if r.status() == 200 {
                    return s;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "server did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// A JSON call; `Err` when the server is unreachable (it was killed).
fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> Result<(u16, Value), ureq::Error> {
    let auth = format!("Bearer {token}");
    let mut resp = match (method, body) {
        ("GET", _) => agent.get(url).header("Authorization", &auth).call()?,
        (_, Some(b)) => agent
            .post(url)
            .header("Authorization", &auth)
            .send_json(b)?,
        (_, None) => agent
            .post(url)
            .header("Authorization", &auth)
            .send_empty()?,
    };
    let status = resp.status().as_u16();
    let v = resp.body_mut().read_json::<Value>().unwrap_or(Value::Null);
    assert_ne!(status, 500, "{v}");
    Ok((status, v))
}

#[test]
fn help_teaches_every_command() {
    let top = bin(&["--help"], None);
    assert!(top.status.success());
    let text = stdout(&top);
    for needle in [
        "init",
        "serve",
        "user",
        "audit",
        "reissue",
        "DATABASE_URL",
        "four",
        "approver",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
    for (args, needle) in [
        (vec!["init", "--help"], "Refuses"),
        (vec!["serve", "--help"], "127.0.0.1:8080"),
        (vec!["user", "add", "--help"], "clerk"),
        (vec!["audit", "verify", "--help"], "edited"),
        (vec!["reissue", "--help"], "--all"),
    ] {
        let o = bin(&args, None);
        assert!(o.status.success(), "{args:?}");
        assert!(
            stdout(&o).contains(needle),
            "{args:?} --help lacks {needle}"
        );
    }
    let bad = bin(
        &[
            "user",
            "add",
            "x",
            "--role",
            "king",
            "--data",
            "/nonexistent",
        ],
        None,
    );
    assert!(!bad.status.success());
    let missing = bin(&["serve", "--data", "/nonexistent/office"], None);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("init"), "{}", stderr(&missing));
}

#[test]
fn init_refuses_an_existing_office_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("office");
    let d = data.to_str().unwrap();
    let first = bin(
        &[
            "init", "--data", d, "--office", "Office A", "--region", "110105",
        ],
        None,
    );
    let token = token_of(&first);
    assert_eq!(token.len(), 64);
    let before = snapshot(&data);
    let second = bin(&["init", "--data", d], None);
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains("nothing was changed"),
        "{}",
        stderr(&second)
    );
    assert_eq!(snapshot(&data), before);
    // A non-empty directory that is no office is refused too; an empty one is used.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    assert!(!bin(&["init", "--data", other.to_str().unwrap()], None)
        .status
        .success());
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1);
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    token_of(&bin(&["init", "--data", empty.to_str().unwrap()], None));
    // Key files are private.
    use std::os::unix::fs::PermissionsExt;
    for f in [
        "root.p8",
        "issuer.p8",
        "status-signer.p8",
        "voucher.p8",
        "scp03-master.key",
        "data.key",
    ] {
        let mode = std::fs::metadata(data.join("keys").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    // `user add` prints a working token; `audit verify` passes.
    let clerk = token_of(&bin(
        &["user", "add", "alice", "--role", "clerk", "--data", d],
        None,
    ));
    assert_ne!(clerk, token);
    let v = bin(&["audit", "verify", "--data", d], None);
    assert!(v.status.success());
    assert!(stdout(&v).contains("intact: 3 rows"), "{}", stdout(&v));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_on_postgres_refuses_a_used_database() {
    let Some(pg) = PgDatabase::create().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let url = pg.url.clone();
    let (a2, b2) = (a.clone(), b.clone());
    let (first, second) = tokio::task::spawn_blocking(move || {
        let first = bin(&["init", "--data", a2.to_str().unwrap()], Some(&url));
        let second = bin(&["init", "--data", b2.to_str().unwrap()], Some(&url));
        (first, second)
    })
    .await
    .unwrap();
    token_of(&first);
    assert!(
        !a.join("issuance.db").exists(),
        "PostgreSQL office has no SQLite file"
    );
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains("already belongs to an office"),
        "{}",
        stderr(&second)
    );
    assert!(!b.exists(), "a refused init leaves nothing behind");
    // Serving without DATABASE_URL is refused instead of creating an empty SQLite database.
    let o = bin(&["serve", "--data", a.to_str().unwrap()], None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("DATABASE_URL"), "{}", stderr(&o));
}

fn serve_and_stop(backend: Backend, url: Option<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("office");
    let admin = token_of(&bin(
        &["init", "--data", data.to_str().unwrap()],
        url.as_deref(),
    ));
    let mut server = Server::start(&data, url.as_deref());
    let a = agent();
    let (status, me) = call(
        &a,
        "GET",
        &format!("{}/api/v1/me", server.base),
        &admin,
        None,
    )
    .unwrap();
    assert_eq!(
        (status, me["role"].as_str()),
        (200, Some("admin")),
        "{backend:?}"
    );
    let (status, _) = call(
        &a,
        "GET",
        &format!("{}/api/v1/openapi.json", server.base),
        "",
        None,
    )
    .unwrap();
    assert_eq!(status, 200);
    // SIGTERM: a graceful exit with status 0.
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn serves_and_stops_gracefully_on_sqlite() {
    serve_and_stop(Backend::Sqlite, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_and_stops_gracefully_on_postgres() {
    let Some(pg) = PgDatabase::create().await else {
        return;
    };
    let url = pg.url.clone();
    tokio::task::spawn_blocking(move || serve_and_stop(Backend::Postgres, Some(url)))
        .await
        .unwrap();
}

/// One application's path through the office, step by step over HTTP; stops at the first
/// connection error (the server was killed).
fn work_on(
    a: &ureq::Agent,
    base: &str,
    clerk: &str,
    approver: &str,
    id: i64,
    steps: &AtomicUsize,
) -> Result<(), ureq::Error> {
    let (st, _) = call(
        a,
        "POST",
        &format!("{base}/api/v1/applications/{id}/approve"),
        approver,
        None,
    )?;
    assert_eq!(st, 200);
    steps.fetch_add(1, Ordering::Relaxed);
    let (st, job) = call(
        a,
        "POST",
        &format!("{base}/api/v1/personalization-jobs"),
        clerk,
        Some(json!({"application_id": id, "card_div_data": "00112233445566778899"})),
    )?;
    assert!(st == 201 || st == 200, "{st} {job}");
    steps.fetch_add(1, Ordering::Relaxed);
    let jid = job["job_id"].as_i64().unwrap();
    let (card, _) = RingSigner::generate().unwrap();
    let pk = hex::encode(card.public_key().to_sec1());
    let body = json!({"card_public_key": pk});
    let (st, _) = call(
        a,
        "POST",
        &format!("{base}/api/v1/personalization-jobs/{jid}/card-key"),
        clerk,
        Some(body.clone()),
    )?;
    assert_eq!(st, 200);
    steps.fetch_add(1, Ordering::Relaxed);
    let (st, _) = call(
        a,
        "POST",
        &format!("{base}/api/v1/personalization-jobs/{jid}/confirm"),
        clerk,
        Some(body),
    )?;
    assert_eq!(st, 200);
    steps.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Finishes whatever state application `id` was left in; every step must succeed.
fn finish(a: &ureq::Agent, base: &str, clerk: &str, approver: &str, id: i64) {
    let (_, app) = call(
        a,
        "GET",
        &format!("{base}/api/v1/applications/{id}"),
        clerk,
        None,
    )
    .unwrap();
    match app["state"].as_str().unwrap() {
        "submitted" => {
            let (st, _) = call(
                a,
                "POST",
                &format!("{base}/api/v1/applications/{id}/approve"),
                approver,
                None,
            )
            .unwrap();
            assert_eq!(st, 200);
        }
        "approved" => {}
        "active" => return,
        other => panic!("application {id} is {other}"),
    }
    // Resume the unfinished job (or create one) with another blank card.
    let (st, job) = call(
        a,
        "POST",
        &format!("{base}/api/v1/personalization-jobs"),
        clerk,
        Some(json!({"application_id": id, "card_div_data": "aabbccddeeff00112233"})),
    )
    .unwrap();
    assert!(st == 200 || st == 201, "{st} {job}");
    assert_eq!(job["state"], "created");
    let jid = job["job_id"].as_i64().unwrap();
    let (card, _) = RingSigner::generate().unwrap();
    let body = json!({"card_public_key": hex::encode(card.public_key().to_sec1())});
    let (st, _) = call(
        a,
        "POST",
        &format!("{base}/api/v1/personalization-jobs/{jid}/card-key"),
        clerk,
        Some(body.clone()),
    )
    .unwrap();
    assert_eq!(st, 200);
    let (st, done) = call(
        a,
        "POST",
        &format!("{base}/api/v1/personalization-jobs/{jid}/confirm"),
        clerk,
        Some(body),
    )
    .unwrap();
    assert_eq!((st, done["state"].as_str()), (200, Some("completed")));
}

/// The database after the crash: nothing half-written.
async fn check_consistency(url: &str) {
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(url).await.unwrap();
    let q = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql);
    // Every decision is audited exactly once, and no undecided application has one.
    let decided_without_audit = q(
        "SELECT COUNT(*) FROM applications a WHERE a.state <> 'submitted' AND \
         (SELECT COUNT(*) FROM audit_log l WHERE l.action = 'application.approve' AND \
          l.object = 'application:' || CAST(a.id AS TEXT)) <> 1",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(decided_without_audit, 0);
    let audited_but_submitted = q(
        "SELECT COUNT(*) FROM applications a WHERE a.state = 'submitted' AND EXISTS \
         (SELECT 1 FROM audit_log l WHERE l.action = 'application.approve' AND \
          l.object = 'application:' || CAST(a.id AS TEXT))",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(audited_but_submitted, 0);
    // Jobs: a bound key always has its credential; a completed job always has its card, its
    // credential row and an active application.
    let bad_jobs = q("SELECT COUNT(*) FROM personalization_jobs j WHERE \
         (j.state = 'key_bound' AND (j.credential IS NULL OR j.card_key IS NULL)) OR \
         (j.state = 'created' AND j.credential IS NOT NULL) OR \
         (j.state = 'completed' AND NOT EXISTS (SELECT 1 FROM cards c JOIN credentials r \
            ON r.card_id = c.id JOIN applications a ON a.id = c.application_id \
            WHERE c.job_id = j.id AND a.state = 'active'))")
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(bad_jobs, 0);
    let active_without_card = q(
        "SELECT COUNT(*) FROM applications a WHERE a.state = 'active' AND NOT EXISTS \
         (SELECT 1 FROM cards c WHERE c.application_id = a.id AND c.state = 'active')",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(active_without_card, 0);
    let audit_rows = q("SELECT COUNT(*) FROM audit_log")
        .fetch_one(&mut c)
        .await
        .unwrap();
    let head: i64 = sqlx::query("SELECT seq FROM audit_head WHERE id = 1")
        .fetch_one(&mut c)
        .await
        .unwrap()
        .try_get("seq")
        .unwrap();
    assert_eq!(audit_rows, head);
    let _ = c.close().await;
}

fn crash_and_resume(url: Option<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("office");
    let d = data.to_str().unwrap().to_owned();
    let u = url.as_deref();
    token_of(&bin(&["init", "--data", &d], u));
    let clerk = token_of(&bin(
        &["user", "add", "clerk", "--role", "clerk", "--data", &d],
        u,
    ));
    let approver = token_of(&bin(
        &["user", "add", "appr", "--role", "approver", "--data", &d],
        u,
    ));
    let server = Server::start(&data, u);
    let a = agent();
    const N: u32 = 48;
    let mut ids = Vec::new();
    for n in 0..N {
        let (st, app) = call(
            &a,
            "POST",
            &format!("{}/api/v1/applications", server.base),
            &clerk,
            Some(application(n)),
        )
        .unwrap();
        assert_eq!(st, 201, "{app}");
        ids.push(app["id"].as_i64().unwrap());
    }
    // Eight clients work through the batch; the server is killed part-way.
    let steps = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for chunk in ids.chunks(ids.len() / 8) {
        let chunk = chunk.to_vec();
        let (base, clerk, approver, steps) = (
            server.base.clone(),
            clerk.clone(),
            approver.clone(),
            steps.clone(),
        );
        workers.push(std::thread::spawn(move || {
            let a = agent();
            for id in chunk {
                if work_on(&a, &base, &clerk, &approver, id, &steps).is_err() {
                    return;
                }
            }
        }));
    }
    let target = (N as usize * 4) / 2;
    let start = Instant::now();
    while steps.load(Ordering::Relaxed) < target {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "workload stalled"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut server = server;
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    for w in workers {
        w.join().unwrap();
    }
    let done_before = steps.load(Ordering::Relaxed);
    assert!(
        done_before < N as usize * 4,
        "the kill came after the batch finished"
    );

    // After the crash: the chain verifies, nothing is half-written.
    let v = bin(&["audit", "verify", "--data", &d], u);
    assert!(v.status.success(), "{}{}", stdout(&v), stderr(&v));
    let db_url = url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}?mode=rw", data.join("issuance.db").display()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(check_consistency(&db_url));

    // Restart: every application can be finished, whatever step it stopped at.
    let server = Server::start(&data, u);
    for id in &ids {
        finish(&a, &server.base, &clerk, &approver, *id);
    }
    rt.block_on(check_consistency(&db_url));
    rt.block_on(async {
        let mut c = sqlx::AnyConnection::connect(&db_url).await.unwrap();
        let active: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM cards WHERE state = 'active'")
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(active, i64::from(N), "one active card per certificate");
        let _ = c.close().await;
    });
    let v = bin(&["audit", "verify", "--data", &d], u);
    assert!(v.status.success(), "{}", stdout(&v));
}

#[test]
fn sigkill_mid_batch_leaves_everything_resumable_on_sqlite() {
    crash_and_resume(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_leaves_everything_resumable_on_postgres() {
    let Some(pg) = PgDatabase::create().await else {
        return;
    };
    let url = pg.url.clone();
    tokio::task::spawn_blocking(move || crash_and_resume(Some(url)))
        .await
        .unwrap();
}

fn tampering_detected(url: Option<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("office");
    let d = data.to_str().unwrap().to_owned();
    let u = url.as_deref();
    token_of(&bin(&["init", "--data", &d], u));
    for name in ["a", "b", "c"] {
        token_of(&bin(
            &["user", "add", name, "--role", "clerk", "--data", &d],
            u,
        ));
    }
    let ok = bin(&["audit", "verify", "--data", &d], u);
    assert!(ok.status.success());
    let db_url = url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}?mode=rw", data.join("issuance.db").display()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let mut c = sqlx::AnyConnection::connect(&db_url).await.unwrap();
        // An insider makes user b an admin in the audit trail.
        sqlx::query(
            "UPDATE audit_log SET details = '{\"name\":\"b\",\"role\":\"admin\"}' WHERE seq = 4",
        )
        .execute(&mut c)
        .await
        .unwrap();
        let _ = c.close().await;
    });
    let bad = bin(&["audit", "verify", "--data", &d], u);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stdout(&bad).contains("audit row 4 was edited"),
        "{}",
        stdout(&bad)
    );
}

#[test]
fn tampered_audit_row_is_detected_on_sqlite() {
    tampering_detected(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_audit_row_is_detected_on_postgres() {
    let Some(pg) = PgDatabase::create().await else {
        return;
    };
    let url = pg.url.clone();
    tokio::task::spawn_blocking(move || tampering_detected(Some(url)))
        .await
        .unwrap();
}
