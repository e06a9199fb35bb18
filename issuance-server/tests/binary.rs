//! Tests of the real `issuance-server` binary: the commands, `--help`, serving over HTTP,
//! graceful shutdown on SIGTERM and SIGINT with a request in flight, a SIGKILL in the middle of a
//! batch of approvals and personalization jobs followed by a restart, `audit verify` finding a
//! tampered row, and no personal data, token or key in the most verbose log. The database tests
//! run on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
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
        Server::start_logging(data, database_url, "warn", Stdio::null(), Stdio::inherit())
    }

    /// Starts `serve` with `RUST_LOG=rust_log` and its output going to `stdout` and `stderr`.
    fn start_logging(
        data: &Path,
        database_url: Option<&str>,
        rust_log: &str,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Server {
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
        .env("RUST_LOG", rust_log)
        .stdout(stdout)
        .stderr(stderr);
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

impl Server {
    /// `host:port` of the server.
    fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// Sends `kill -<signal>` to the server.
    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Waits for the server to exit on its own.
    fn wait_exit(&mut self, why: &str) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no exit after {why}"
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

/// An application with a photo of about 120 KiB, so that its body takes a while to send.
fn large_application(n: u32) -> Vec<u8> {
    let mut photo = b"\xFF\xD8\xFF".to_vec();
    photo.extend((0..120 * 1024u32).map(|i| (i % 251) as u8));
    let mut app = application(n);
    app["photo"] = json!(base64::engine::general_purpose::STANDARD.encode(photo));
    app.to_string().into_bytes()
}

/// Sends the head of a `POST /api/v1/applications` with `body` and half of the body, so that
/// the request is in flight (the server waits for the rest); returns how much was sent. The
/// server closes the connection after its answer (`Connection: close`).
fn send_head_and_half(w: &mut impl Write, host: &str, admin: &str, body: &[u8]) -> usize {
    write!(
        w,
        "POST /api/v1/applications HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {admin}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    let half = body.len() / 2;
    w.write_all(&body[..half]).unwrap();
    w.flush().unwrap();
    half
}

fn serve_and_stop(backend: Backend, url: Option<String>, signal: &str) {
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
    // A connection that never sends a request does not hold up the stop.
    let _idle = std::net::TcpStream::connect(server.addr()).unwrap();
    // A request in flight when the signal comes: its headers and half of its body are sent.
    let body = large_application(1);
    let mut inflight = std::net::TcpStream::connect(server.addr()).unwrap();
    inflight
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let half = send_head_and_half(&mut inflight, server.addr(), &admin, &body);
    // Time for the server to read the head and start the handler, which now waits for the rest.
    std::thread::sleep(Duration::from_millis(500));
    server.signal(signal);
    // The server stops listening at once but waits for the request it is in.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "{backend:?}: the server exited on SIG{signal} with a request in flight"
    );
    assert!(
        std::net::TcpStream::connect(server.addr()).is_err(),
        "{backend:?}: a new connection was accepted after SIG{signal}"
    );
    inflight.write_all(&body[half..]).unwrap();
    let mut response = Vec::new();
    inflight.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 201"),
        "{backend:?} SIG{signal}: {response}"
    );
    let json_start = response.find("\r\n\r\n").unwrap() + 4;
    let created: Value = serde_json::from_str(&response[json_start..]).unwrap();
    assert_eq!(created["state"], "submitted", "{created}");
    // Then a graceful exit with status 0, soon.
    let answered = Instant::now();
    let status = server.wait_exit(&format!("SIG{signal}"));
    assert!(status.success(), "{backend:?} SIG{signal}: {status:?}");
    assert!(
        answered.elapsed() < Duration::from_secs(5),
        "{backend:?}: the stop took {:?} after the last answer",
        answered.elapsed()
    );
    // The answered request was committed, with its audit row, and the chain is intact.
    let v = bin(
        &["audit", "verify", "--data", data.to_str().unwrap()],
        url.as_deref(),
    );
    assert!(v.status.success(), "{}{}", stdout(&v), stderr(&v));
    assert!(stdout(&v).contains("intact: 3 rows"), "{}", stdout(&v));
}

/// Runs the blocking scenario `f` against a fresh PostgreSQL database (its URL), which lives until
/// `f` returns; without PostgreSQL it returns at once (`PgDatabase::create` said why).
async fn on_fresh_postgres(f: impl FnOnce(String) + Send + 'static) {
    let Some(pg) = PgDatabase::create().await else {
        return;
    };
    let url = pg.url.clone();
    tokio::task::spawn_blocking(move || f(url)).await.unwrap();
}

#[test]
fn serves_and_stops_gracefully_on_sigterm_on_sqlite() {
    serve_and_stop(Backend::Sqlite, None, "TERM");
}

#[test]
fn serves_and_stops_gracefully_on_sigint_on_sqlite() {
    serve_and_stop(Backend::Sqlite, None, "INT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_and_stops_gracefully_on_postgres() {
    for signal in ["TERM", "INT"] {
        // One database per office: init refuses a database that has one.
        on_fresh_postgres(move |url| serve_and_stop(Backend::Postgres, Some(url), signal)).await;
    }
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
    on_fresh_postgres(|url| crash_and_resume(Some(url))).await;
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
    on_fresh_postgres(|url| tampering_detected(Some(url))).await;
}

/// A POST with a raw body; returns the status.
fn post_raw(a: &ureq::Agent, url: &str, token: &str, body: &str) -> u16 {
    let mut resp = a
        .post(url)
        .header("Authorization", &format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .send(body)
        .unwrap();
    let status = resp.status().as_u16();
    let _ = resp.body_mut().read_to_string();
    assert_ne!(status, 500);
    status
}

/// Everything that must never reach a log, and why.
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn add(&mut self, what: &str, needle: impl Into<String>) {
        let needle = needle.into();
        assert!(
            needle.len() >= 6,
            "{what}: needle too short to mean anything"
        );
        self.0.push((what.to_owned(), needle));
    }

    /// A value in the forms a log line could show it: as is, and as lower- and upper-case hex
    /// of its bytes (how byte fields are printed).
    fn add_text(&mut self, what: &str, value: &str) {
        self.add(what, value);
        self.add(&format!("{what} (hex)"), hex::encode(value.as_bytes()));
        self.add(
            &format!("{what} (HEX)"),
            hex::encode_upper(value.as_bytes()),
        );
    }

    /// Key bytes: every 12-byte run of them as hex, the whole as base64, and 8-byte runs as
    /// `Debug` prints a byte slice (`[1, 2, ...]`).
    fn add_key(&mut self, what: &str, bytes: &[u8]) {
        for w in bytes.windows(12) {
            self.add(&format!("{what} (hex)"), hex::encode(w));
            self.add(&format!("{what} (HEX)"), hex::encode_upper(w));
        }
        for w in bytes.windows(8).step_by(4) {
            self.add(
                &format!("{what} (Debug)"),
                format!("{w:?}").trim_matches(['[', ']']),
            );
        }
        self.add(
            &format!("{what} (base64)"),
            base64::engine::general_purpose::STANDARD.encode(bytes),
        );
    }
}

/// The server at `RUST_LOG=trace` through registration, approval, personalization, revocation,
/// vouchers, searches and refused requests: nothing personal, no token and no key in its output.
fn personal_data_never_logged(url: Option<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("office");
    let d = data.to_str().unwrap().to_owned();
    let u = url.as_deref();
    let admin = token_of(&bin(&["init", "--data", &d], u));
    let clerk = token_of(&bin(
        &["user", "add", "clerk", "--role", "clerk", "--data", &d],
        u,
    ));
    let approver = token_of(&bin(
        &["user", "add", "appr", "--role", "approver", "--data", &d],
        u,
    ));
    let out_path = tmp.path().join("stdout.log");
    let err_path = tmp.path().join("stderr.log");
    let mut server = Server::start_logging(
        &data,
        u,
        "trace",
        Stdio::from(std::fs::File::create(&out_path).unwrap()),
        Stdio::from(std::fs::File::create(&err_path).unwrap()),
    );
    let base = server.base.clone();
    let a = agent();
    let mut secrets = Secrets(Vec::new());
    for (what, t) in [
        ("admin token", &admin),
        ("clerk token", &clerk),
        ("approver token", &approver),
    ] {
        secrets.add(what, t.as_str());
    }

    // Three applicants, each with a name nothing else in a log could contain.
    let names = ["王芳测试甲", "李强测试乙", "Ottilie Vandermeer"];
    let mut ids = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let n = 40 + i as u32;
        let mut app = application(n);
        app["name"] = json!(name);
        let mut photo = b"\x89PNG\r\n\x1a\n".to_vec();
        photo.extend(
            format!("photo of applicant {n}, private")
                .bytes()
                .cycle()
                .take(600),
        );
        app["photo"] = json!(base64::engine::general_purpose::STANDARD.encode(&photo));
        let (st, created) = call(
            &a,
            "POST",
            &format!("{base}/api/v1/applications"),
            &clerk,
            Some(app.clone()),
        )
        .unwrap();
        assert_eq!(st, 201, "{created}");
        secrets.add_text("applicant name", name);
        secrets.add_text("resident ID", app["resident_id"].as_str().unwrap());
        secrets.add_text(
            "certificate number",
            created["certificate_number"].as_str().unwrap(),
        );
        secrets.add("photo (base64)", &app["photo"].as_str().unwrap()[..40]);
        secrets.add("photo", "photo of applicant");
        ids.push(created["id"].as_i64().unwrap());
        // The same person again: refused as a duplicate.
        let (st, _) = call(
            &a,
            "POST",
            &format!("{base}/api/v1/applications"),
            &clerk,
            Some(app),
        )
        .unwrap();
        assert_eq!(st, 409);
    }
    // Approve two, reject one; personalize both approved, revoke one, grant a voucher.
    for id in &ids[..2] {
        let (st, _) = call(
            &a,
            "POST",
            &format!("{base}/api/v1/applications/{id}/approve"),
            &approver,
            None,
        )
        .unwrap();
        assert_eq!(st, 200);
    }
    let (st, _) = call(
        &a,
        "POST",
        &format!("{base}/api/v1/applications/{}/reject", ids[2]),
        &approver,
        Some(json!({"reason": "documents missing"})),
    )
    .unwrap();
    assert_eq!(st, 200);
    let mut serials = Vec::new();
    for id in &ids[..2] {
        let (st, job) = call(
            &a,
            "POST",
            &format!("{base}/api/v1/personalization-jobs"),
            &clerk,
            Some(json!({"application_id": id, "card_div_data": "00112233445566778899"})),
        )
        .unwrap();
        assert_eq!(st, 201, "{job}");
        for k in ["enc", "mac", "dek"] {
            secrets.add("SCP03 card key", job["scp03"][k].as_str().unwrap());
        }
        let jid = job["job_id"].as_i64().unwrap();
        let (card, _) = RingSigner::generate().unwrap();
        let body = json!({"card_public_key": hex::encode(card.public_key().to_sec1())});
        let (st, _) = call(
            &a,
            "POST",
            &format!("{base}/api/v1/personalization-jobs/{jid}/card-key"),
            &clerk,
            Some(body.clone()),
        )
        .unwrap();
        assert_eq!(st, 200);
        let (st, done) = call(
            &a,
            "POST",
            &format!("{base}/api/v1/personalization-jobs/{jid}/confirm"),
            &clerk,
            Some(body),
        )
        .unwrap();
        assert_eq!((st, done["state"].as_str()), (200, Some("completed")));
        serials.push(done["card_serial"].as_str().unwrap().to_owned());
    }
    let (st, _) = call(
        &a,
        "POST",
        &format!("{base}/api/v1/cards/{}/vouchers", serials[0]),
        &approver,
        Some(json!({"amount": 20})),
    )
    .unwrap();
    assert_eq!(st, 200);
    let (st, _) = call(
        &a,
        "POST",
        &format!("{base}/api/v1/cards/{}/revoke", serials[1]),
        &approver,
        Some(json!({"reason": "lost"})),
    )
    .unwrap();
    assert_eq!(st, 200);
    // Lookups by resident ID: found, and not found.
    let rid = application(40)["resident_id"].as_str().unwrap().to_owned();
    let (st, found) = call(
        &a,
        "POST",
        &format!("{base}/api/v1/applications/search"),
        &approver,
        Some(json!({"resident_id": rid})),
    )
    .unwrap();
    assert_eq!((st, found[0]["name"].as_str()), (200, Some(names[0])));
    let absent = common::resident_id(49);
    secrets.add_text("resident ID searched for", &absent);
    let (st, none) = call(
        &a,
        "POST",
        &format!("{base}/api/v1/applications/search"),
        &approver,
        Some(json!({"resident_id": absent})),
    )
    .unwrap();
    assert_eq!((st, none), (200, json!([])));
    for id in &ids {
        let (st, _) = call(
            &a,
            "GET",
            &format!("{base}/api/v1/applications/{id}"),
            &clerk,
            None,
        )
        .unwrap();
        assert_eq!(st, 200);
        let (st, _) = call(
            &a,
            "GET",
            &format!("{base}/api/v1/applications/{id}/photo"),
            &approver,
            None,
        )
        .unwrap();
        assert_eq!(st, 200);
    }

    // Refused requests that carry personal data in every place a request can.
    let apps = format!("{base}/api/v1/applications");
    let bogus = "0f".repeat(32);
    secrets.add("unknown token", bogus.as_str());
    let (st, _) = call(&a, "GET", &apps, &bogus, None).unwrap();
    assert_eq!(st, 401);
    let (st, _) = call(&a, "POST", &apps, &approver, Some(application(41))).unwrap();
    assert_eq!(st, 403, "wrong role");
    // The resident ID as a number: the JSON error names the value it could not take.
    let as_number = format!(
        r#"{{"name":"{}","resident_id":{},"category":1,"level":2,"region":110105}}"#,
        names[2],
        &rid[..17]
    );
    assert_eq!(post_raw(&a, &apps, &clerk, &as_number), 422);
    let truncated = format!(r#"{{"name":"{}","resident_id":"{rid}"#, names[1]);
    assert_eq!(post_raw(&a, &apps, &clerk, &truncated), 400);
    let mut bad_check = application(47);
    bad_check["name"] = json!(names[1]);
    let wrong = if rid.ends_with('1') { "2" } else { "1" };
    let bad_id = format!("{}{wrong}", &rid[..17]);
    secrets.add_text("mistyped resident ID", &bad_id);
    bad_check["resident_id"] = json!(bad_id);
    let (st, _) = call(&a, "POST", &apps, &clerk, Some(bad_check)).unwrap();
    assert_eq!(st, 422);
    let (st, _) = call(
        &a,
        "POST",
        &format!("{base}/api/v1/applications/search"),
        &approver,
        Some(json!({"resident_id": rid, "name": names[0]})),
    )
    .unwrap();
    assert_eq!(st, 422, "unknown field");
    // In the path and in the query.
    // (An 18-digit ID without an X parses as an application id: no such application.)
    let (st, _) = call(&a, "GET", &format!("{apps}/{rid}"), &clerk, None).unwrap();
    assert_eq!(st, 404);
    let (st, _) = call(&a, "GET", &format!("{apps}/{}X", &rid[..17]), &clerk, None).unwrap();
    assert_eq!(st, 400);
    let (st, _) = call(&a, "GET", &format!("{base}/api/v1/{rid}"), &clerk, None).unwrap();
    assert_eq!(st, 404);
    let (st, _) = call(&a, "GET", &format!("{apps}?state={rid}"), &clerk, None).unwrap();
    assert_eq!(st, 400);
    let (st, _) = call(&a, "POST", &format!("{base}/api/v1/personalization-jobs/4242/confirm"), &clerk, Some(json!({"card_public_key": hex::encode(RingSigner::generate().unwrap().0.public_key().to_sec1())}))).unwrap();
    assert_eq!(st, 404);

    server.signal("TERM");
    let status = server.wait_exit("SIGTERM");
    assert!(status.success(), "{status:?}");

    // The office's secret keys.
    for f in [
        "root.p8",
        "issuer.p8",
        "status-signer.p8",
        "voucher.p8",
        "scp03-master.key",
        "data.key",
    ] {
        secrets.add_key(f, &std::fs::read(data.join("keys").join(f)).unwrap());
    }
    let log =
        std::fs::read_to_string(&out_path).unwrap() + &std::fs::read_to_string(&err_path).unwrap();
    // The log really is the most verbose one and saw the workload (or this test proves nothing).
    for evidence in [
        "TRACE",
        "DEBUG",
        "sqlx::query",
        "route=\"/api/v1/applications\"",
        "status=422",
        "status=401",
    ] {
        assert!(
            log.contains(evidence),
            "the log lacks {evidence:?}:\n{}",
            &log[..log.len().min(4000)]
        );
    }
    assert!(
        !log.contains('\u{1b}'),
        "terminal colour codes in a log written to a file"
    );
    let leaks: Vec<String> = secrets
        .0
        .iter()
        .filter(|(_, needle)| log.contains(needle.as_str()))
        .map(|(what, needle)| {
            let at = log.find(needle.as_str()).unwrap();
            let line_start = log[..at].rfind('\n').map_or(0, |i| i + 1);
            let line_end = log[at..].find('\n').map_or(log.len(), |i| at + i);
            format!("{what} {needle:?} in: {}", &log[line_start..line_end])
        })
        .collect();
    assert!(
        leaks.is_empty(),
        "{} leak(s) in {} bytes of log:\n{}",
        leaks.len(),
        log.len(),
        leaks.join("\n")
    );
}

#[test]
fn personal_data_never_logged_on_sqlite() {
    personal_data_never_logged(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_never_logged_on_postgres() {
    on_fresh_postgres(|url| personal_data_never_logged(Some(url))).await;
}

/// A throw-away office CA and a server certificate it signed for `localhost` and 127.0.0.1,
/// made at run time (PEM text: CA certificate, server certificate, server key).
fn office_ca() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Test certificate office CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "issuance server");
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// An HTTPS agent that trusts only `ca_pem`.
fn tls_agent(ca_pem: &str) -> ureq::Agent {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let ca = Certificate::from_pem(ca_pem.as_bytes()).unwrap().to_owned();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .tls_config(
            TlsConfig::builder()
                .root_certs(RootCerts::new_with_certs(&[ca]))
                .build(),
        )
        .build()
        .into()
}

/// A raw TLS stream to `addr` trusting `ca_pem` (to send a request by halves).
fn raw_tls(
    addr: &str,
    ca_pem: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

#[test]
fn serves_https_with_the_offices_certificate_and_stops_gracefully() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("office");
    let admin = token_of(&bin(&["init", "--data", data.to_str().unwrap()], None));
    let (ca, cert, key) = office_ca();
    let cert_file = tmp.path().join("server.pem");
    let key_file = tmp.path().join("server.key");
    std::fs::write(&cert_file, &cert).unwrap();
    std::fs::write(&key_file, &key).unwrap();

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut server = Server {
        child: Command::new(BIN)
            .args(["serve", "--data", data.to_str().unwrap(), "--listen", &addr])
            .arg("--tls-cert")
            .arg(&cert_file)
            .arg("--tls-key")
            .arg(&key_file)
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
        base: format!("http://{addr}"),
    };
    let https = format!("https://localhost:{port}");
    let a = tls_agent(&ca);
    let start = Instant::now();
    while a.get(format!("{https}/healthz")).call().is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "no HTTPS server");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, me) = call(&a, "GET", &format!("{https}/api/v1/me"), &admin, None).unwrap();
    assert_eq!((status, me["role"].as_str()), (200, Some("admin")));

    // A client that trusts another CA learns nothing, and plain HTTP gets no answer.
    let (other_ca, _, _) = office_ca();
    let e = tls_agent(&other_ca)
        .get(format!("{https}/api/v1/me"))
        .header("Authorization", &format!("Bearer {admin}"))
        .call()
        .unwrap_err();
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    assert!(agent()
        .get(format!("http://{addr}/healthz"))
        .call()
        .is_err());

    // A connection that never starts its handshake holds up neither other clients nor the stop.
    let _idle = std::net::TcpStream::connect(&addr).unwrap();
    let (status, _) = call(&a, "GET", &format!("{https}/api/v1/me"), &admin, None).unwrap();
    assert_eq!(status, 200);

    // A request in flight over TLS when SIGTERM comes is answered, then the server exits 0.
    let body = large_application(1);
    let mut inflight = raw_tls(&addr, &ca);
    let half = send_head_and_half(&mut inflight, "localhost", &admin, &body);
    std::thread::sleep(Duration::from_millis(500));
    server.signal("TERM");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the HTTPS server exited on SIGTERM with a request in flight"
    );
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "a new connection was accepted after SIGTERM"
    );
    inflight.write_all(&body[half..]).unwrap();
    inflight.flush().unwrap();
    let mut response = Vec::new();
    // The server closes the TLS session after its answer (Connection: close).
    let _ = inflight.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let answered = Instant::now();
    let status = server.wait_exit("SIGTERM");
    assert!(status.success(), "{status:?}");
    // Well before the idle connection's 10 s handshake limit.
    assert!(
        answered.elapsed() < Duration::from_secs(5),
        "the stop waited {:?} for the idle connection",
        answered.elapsed()
    );
    let v = bin(&["audit", "verify", "--data", data.to_str().unwrap()], None);
    assert!(stdout(&v).contains("intact: 3 rows"), "{}", stdout(&v));
}

#[test]
fn refuses_plain_http_off_loopback_and_half_given_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("office");
    token_of(&bin(&["init", "--data", data.to_str().unwrap()], None));
    let before = snapshot(&data);
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--data", data.to_str().unwrap()];
        args.extend_from_slice(extra);
        bin(&args, None)
    };
    let o = serve(&["--listen", "0.0.0.0:0"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("refusing to serve plain HTTP on 0.0.0.0:0"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("--tls-cert"), "{}", stderr(&o));
    // A certificate without its key is a usage error.
    let o = serve(&["--tls-cert", "x.pem"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--tls-key"), "{}", stderr(&o));
    // Unreadable or mismatched TLS files: a clear message, and the office is untouched.
    let (_, cert, _) = office_ca();
    let (_, _, other_key) = office_ca();
    let cert_file = tmp.path().join("server.pem");
    let key_file = tmp.path().join("server.key");
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, other_key).unwrap();
    let o = serve(&[
        "--listen",
        "0.0.0.0:0",
        "--tls-cert",
        cert_file.to_str().unwrap(),
        "--tls-key",
        key_file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("does not belong to the certificate"),
        "{}",
        stderr(&o)
    );
    assert_eq!(snapshot(&data), before);
}
