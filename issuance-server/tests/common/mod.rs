//! Test harness: a fresh office per test on SQLite (a temporary data directory) or PostgreSQL
//! (a uniquely named database on the server of `DATABASE_TEST_URL`, dropped afterwards), driven
//! through the real router with `tower::ServiceExt::oneshot`.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use issuance_server::keys::RingSigner;
use issuance_server::AppState;
use serde_json::{json, Value};
use sqlx::Connection;
use tower::ServiceExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The machine's usual local server (ENVIRONMENT.md: trust auth, database `test`).
pub const PG_DEFAULT_URL: &str = "postgres://root@127.0.0.1:5432/test";

/// Where PostgreSQL tests connect, and whether that was asked for explicitly:
/// `DATABASE_TEST_URL` (explicit: unreachable is a failure), else `DATABASE_TEST_DEFAULT_URL`
/// or [`PG_DEFAULT_URL`] (a guess: unreachable is a skip). The second variable only moves the
/// guess, so that the skip path itself can be tried on a machine where PostgreSQL runs.
pub fn pg_base_url() -> (String, bool) {
    let var = |name: &str| std::env::var(name).ok().filter(|u| !u.is_empty());
    match var("DATABASE_TEST_URL") {
        Some(u) => (u, true),
        None => (
            var("DATABASE_TEST_DEFAULT_URL").unwrap_or_else(|| PG_DEFAULT_URL.to_owned()),
            false,
        ),
    }
}

/// Says that a PostgreSQL test is skipped, where a normal `cargo test` run shows it.
///
/// libtest captures `println!` and `eprintln!` of a passing test (and the skipped test passes),
/// so the notice is written to the process's stderr handle directly, which the capture does not
/// reach: one line per skipped test naming it, and once per test binary a banner with the
/// reason and how to make it a failure instead.
fn report_pg_skip(url: &str, why: &str) {
    use std::io::Write;
    static BANNER: std::sync::Once = std::sync::Once::new();
    let mut err = std::io::stderr().lock();
    BANNER.call_once(|| {
        let _ = writeln!(
            err,
            "\nNOTICE: PostgreSQL is not reachable at {url} ({why}) and DATABASE_TEST_URL is not \
             set:\nNOTICE: the PostgreSQL tests below are SKIPPED (they report `ok` without \
             running). Set DATABASE_TEST_URL to run them; an unreachable DATABASE_TEST_URL fails them."
        );
    });
    let test = std::thread::current()
        .name()
        .unwrap_or("(unnamed test)")
        .to_owned();
    let _ = writeln!(err, "SKIPPED on PostgreSQL: {test}");
}

/// Replaces the database name of a postgres URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let prefix = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{prefix}/{db}?{q}"),
        None => format!("{prefix}/{db}"),
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A PostgreSQL database that exists for one test and is dropped when this is dropped (also when
/// the test panics).
pub struct PgDatabase {
    pub admin_url: String,
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    /// Creates a fresh database, or `None` (after saying so on stderr, see [`report_pg_skip`])
    /// when PostgreSQL is not reachable and `DATABASE_TEST_URL` was not set. When it was set, an
    /// unreachable server fails the test.
    pub async fn create() -> Option<Self> {
        let (admin_url, explicit) = pg_base_url();
        sqlx::any::install_default_drivers();
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            sqlx::AnyConnection::connect(&admin_url),
        )
        .await;
        let failure = match conn {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 10 s".to_owned()),
        };
        let mut conn = match failure {
            Ok(c) => c,
            Err(why) if explicit => panic!(
                "DATABASE_TEST_URL={admin_url} is set but PostgreSQL there is unreachable \
                 ({why}): start it, or unset DATABASE_TEST_URL to skip the PostgreSQL tests"
            ),
            Err(why) => {
                report_pg_skip(&admin_url, &why);
                return None;
            }
        };
        let name = format!(
            "isrv_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            hex::encode(issuance_server::keys::random_bytes::<4>().unwrap())
        );
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let _ = conn.close().await;
        let url = with_database(&admin_url, &name);
        Some(PgDatabase {
            admin_url,
            name,
            url,
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(mut c) = sqlx::AnyConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}

/// One office under test.
pub struct Office {
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    pub state: AppState,
    pub app: Router,
    pub admin: String,
    pub database_url: Option<String>,
    // Dropped last: the pool must be closed before the database goes.
    pub pg: Option<PgDatabase>,
}

/// A response: status, headers, body.
pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub bytes: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?} {}",
                self.status,
                String::from_utf8_lossy(&self.bytes)
            )
        })
    }

    /// Asserts a refusal with `status` and `code` in the contract's error form.
    pub fn refused(&self, status: u16, code: &str) {
        let v = self.json();
        assert_eq!(
            (self.status.as_u16(), v["code"].as_str().unwrap_or("")),
            (status, code),
            "{v}"
        );
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "no message: {v}"
        );
        assert_eq!(v.as_object().unwrap().len(), 2, "extra fields: {v}");
    }
}

impl Office {
    pub async fn new(backend: Backend) -> Option<Office> {
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(PgDatabase::create().await?),
        };
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("office");
        let database_url = pg.as_ref().map(|p| p.url.clone());
        let outcome = issuance_server::office::init(&issuance_server::office::InitOptions {
            data: data.clone(),
            database_url: database_url.clone(),
            office: "Test office".into(),
            region: 110105,
            admin: "admin".into(),
        })
        .await
        .unwrap();
        let state = issuance_server::office::open(&data, database_url.as_deref())
            .await
            .unwrap();
        Some(Office {
            backend,
            app: issuance_server::app(state.clone()),
            state,
            dir: tmp,
            admin: outcome.admin_token,
            database_url,
            pg,
        })
    }

    pub fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("office")
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
            .await
            .unwrap()
            .to_vec();
        assert_ne!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "500: {}",
            String::from_utf8_lossy(&bytes)
        );
        Reply {
            status,
            headers,
            bytes,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(v) => b
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        self.send(req).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// Creates a user with `role` through the API; returns the token.
    pub async fn user(&self, name: &str, role: &str) -> String {
        let r = self
            .post(
                "/api/v1/users",
                &self.admin.clone(),
                json!({"name": name, "role": role}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json());
        r.json()["token"].as_str().unwrap().to_owned()
    }

    /// A clerk, an approver and a second approver.
    pub async fn staff(&self) -> Staff {
        Staff {
            clerk: self.user("clerk", "clerk").await,
            approver: self.user("approver", "approver").await,
            approver2: self.user("approver2", "approver").await,
            auditor: self.user("auditor", "auditor").await,
            admin: self.admin.clone(),
        }
    }

    /// Submits `app` as the clerk and approves it; returns the application id.
    pub async fn approved(&self, s: &Staff, app: Value) -> i64 {
        let r = self.post("/api/v1/applications", &s.clerk, app).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json());
        let id = r.json()["id"].as_i64().unwrap();
        let r = self
            .post(
                &format!("/api/v1/applications/{id}/approve"),
                &s.approver,
                json!({}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json());
        id
    }

    /// Runs a whole personalization for application `id` with a fresh card key; returns the
    /// completed job JSON and the card key.
    pub async fn personalize(&self, s: &Staff, id: i64) -> (Value, RingSigner) {
        let r = self
            .post(
                "/api/v1/personalization-jobs",
                &s.clerk,
                json!({"application_id": id, "card_div_data": "00112233445566778899"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json());
        let job = r.json();
        let jid = job["job_id"].as_i64().unwrap();
        let (card, _) = RingSigner::generate().unwrap();
        let pk = hex::encode(card.public_key().to_sec1());
        let r = self
            .post(
                &format!("/api/v1/personalization-jobs/{jid}/card-key"),
                &s.clerk,
                json!({"card_public_key": pk}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json());
        let r = self
            .post(
                &format!("/api/v1/personalization-jobs/{jid}/confirm"),
                &s.clerk,
                json!({"card_public_key": pk}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json());
        (r.json(), card)
    }

    /// Runs a query on the office's database (for tampering and consistency checks).
    pub async fn sql(&self, sql: &str) -> sqlx::any::AnyQueryResult {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(self.state.db.pool())
            .await
            .unwrap()
    }
}

pub struct Staff {
    pub clerk: String,
    pub approver: String,
    pub approver2: String,
    pub auditor: String,
    pub admin: String,
}

/// `first17` completed with its MOD 11-2 check character (GB 11643-1999), whatever its digits
/// mean: for IDs that are right in every respect but one.
pub fn with_check_character(first17: &str) -> String {
    assert_eq!(first17.len(), 17, "{first17}");
    let weights = [7u32, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = first17
        .bytes()
        .zip(weights)
        .map(|(b, w)| u32::from(b - b'0') * w)
        .sum();
    let check = b"10X98765432"[(sum % 11) as usize] as char;
    format!("{first17}{check}")
}

/// Distinct valid resident IDs for n < 50,000 (region 110105, born 1 January of 1980 + n / 1000,
/// correct check characters).
pub fn resident_id(n: u32) -> String {
    with_check_character(&format!(
        "110105{}0101{:03}",
        1980 + (n / 1000) % 50,
        n % 1000
    ))
}

pub fn application(n: u32) -> Value {
    json!({
        "name": format!("持证人 {n}"),
        "resident_id": resident_id(n),
        "category": 1,
        "level": 2,
        "region": 110105,
        "entitlements": ["free_transit", "companion", "welfare_points"],
    })
}

/// Runs `f` on a fresh office of `backend` (returns early when PostgreSQL is skipped).
pub async fn run<F, Fut>(backend: Backend, f: F)
where
    F: FnOnce(Office) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(office) = Office::new(backend).await else {
        return;
    };
    let db = office.state.db.clone();
    f(office).await;
    db.close().await;
}

/// Declares `mod NAME { sqlite(), postgres() }` running the async fn `NAME(Office)` on both.
/// `postgres()` fails when `DATABASE_TEST_URL` is set but unreachable; without it, and with no
/// PostgreSQL at the default address, it returns early and says so on stderr ([`PgDatabase::create`]).
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $crate::common::run($crate::common::Backend::Sqlite, super::$name).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $crate::common::run($crate::common::Backend::Postgres, super::$name).await;
            }
        }
    )*};
}
