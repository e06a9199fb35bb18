//! The certificate office's issuance server.
//!
//! An axum + sqlx service over SQLite (default) or PostgreSQL: staff register applicants and
//! approve them under a four-eyes rule, card-tool personalizes cards through personalization jobs,
//! the office revokes cards and publishes signed status lists, deltas, trust bundle and service
//! rules, registers terminals and takes in their signed tap logs. Personal data is encrypted at
//! rest, and every change is written to a hash-chained audit log in the same transaction.
//!
//! Layout: [`office`] creates and opens an office (data directory + database), [`keys`] holds
//! the keys, [`db`] the pool and [`db::WriteTx`], [`audit`] the chain; one module per resource
//! with its `router()`; [`error`] the one error type; [`server`] runs it; [`batch`] re-issues in
//! bulk; [`cli`] is the command line. The API is described in `docs/api.md` and served as
//! OpenAPI at `/api/v1/openapi.json`.
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::ops::Deref;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

pub mod anomalies;
pub mod applications;
pub mod audit;
pub mod auth;
pub mod batch;
pub mod cards;
pub mod cli;
pub mod config;
pub mod db;
pub mod distribution;
pub mod error;
pub mod ingest;
pub mod jobs;
pub mod keys;
pub mod ledger;
pub mod office;
pub mod openapi;
pub mod server;
pub mod stats;
pub mod status;
pub mod terminals;
pub mod usage;

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Everything a request handler reaches: database, keys, settings, caches.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

/// The contents of [`AppState`].
#[derive(Debug)]
pub struct Inner {
    /// The database.
    pub db: db::Db,
    /// The office's keys.
    pub keys: Arc<keys::OfficeKeys>,
    /// Settings.
    pub config: config::Config,
    /// Signed status lists and deltas.
    pub status: status::StatusCache,
    /// The data directory.
    pub dir: keys::DataDir,
}

impl AppState {
    /// Bundles an opened office.
    pub fn new(
        db: db::Db,
        keys: Arc<keys::OfficeKeys>,
        config: config::Config,
        dir: keys::DataDir,
    ) -> Self {
        AppState(Arc::new(Inner {
            db,
            keys,
            config,
            status: status::StatusCache::default(),
            dir,
        }))
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Most requests in flight at once; more wait (a bound on memory and connections).
const MAX_IN_FLIGHT: usize = 512;

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .merge(applications::router())
        .merge(jobs::router())
        .merge(cards::router())
        .merge(status::router())
        .merge(distribution::router())
        .merge(terminals::router())
        .merge(auth::router())
        .merge(audit::router())
        .merge(stats::router())
        .merge(usage::router())
        .merge(ledger::router())
        .merge(anomalies::router())
        .route("/openapi.json", get(openapi::document))
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::wrong_method);
    let limit = state.config.max_body_bytes;
    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(healthz))
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::wrong_method)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(log_request))
        .layer(tower::limit::ConcurrencyLimitLayer::new(MAX_IN_FLIGHT))
        .with_state(state)
}

async fn healthz(State(state): State<AppState>) -> Response {
    match sqlx::query("SELECT 1").execute(state.db.pool()).await {
        Ok(_) => axum::Json(serde_json::json!({"status": "ok"})).into_response(),
        Err(e) => error::ApiError::Busy(e.to_string()).into_response(),
    }
}

/// Logs method, route template (never the concrete path or any body: no personal data), status
/// and duration.
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "(no route)".to_owned());
    let start = std::time::Instant::now();
    let response = next.run(req).await;
    tracing::info!(
        %method,
        route,
        status = response.status().as_u16(),
        ms = start.elapsed().as_secs_f64() * 1e3,
        "request"
    );
    response
}
