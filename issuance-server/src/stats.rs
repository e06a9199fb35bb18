//! Statistics for auditors: counts of applications, cards, jobs, revocations, terminals, and tap
//! usage per service, region and day (from the uploaded tap logs, suppressed like
//! [`crate::usage`]). No personal data.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::auth::{Role, Staff};
use crate::db::get_u64;
use crate::error::{ApiResult, Json};
use crate::AppState;

/// The statistics endpoint.
pub fn router() -> Router<AppState> {
    Router::new().route("/stats", get(stats))
}

/// Taps of one service in one region on one day: a cell of the usage table
/// ([`crate::usage`]), suppressed the same way (fewer than 5 distinct cards: counts withheld).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    /// Day (days since 1970-01-01 in the office's time zone).
    pub day: i64,
    /// The same day, `YYYY-MM-DD`.
    pub date: String,
    /// Service name.
    pub service: String,
    /// Terminal's region.
    pub region: u64,
    /// Counts withheld.
    pub suppressed: bool,
    /// Number of taps.
    pub taps: Option<u64>,
    /// Of which accepted.
    pub accepted: Option<u64>,
}

/// The statistics.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    /// Applications per state.
    pub applications: BTreeMap<String, u64>,
    /// Cards per state.
    pub cards: BTreeMap<String, u64>,
    /// Personalization jobs per state.
    pub jobs: BTreeMap<String, u64>,
    /// Current status epoch.
    pub status_epoch: u64,
    /// Current list size.
    pub status_size: u64,
    /// Revoked status indices.
    pub revoked: u64,
    /// Registered terminals.
    pub terminals: u64,
    /// Receipts in the points ledger.
    pub receipts: u64,
    /// Anomalies found in tap logs.
    pub anomalies: u64,
    /// Tap usage, newest day first (at most 500 cells; see `GET /stats/usage` for the rest).
    pub usage: Vec<Usage>,
}

async fn grouped(pool: &sqlx::AnyPool, sql: &'static str) -> ApiResult<BTreeMap<String, u64>> {
    let rows = sqlx::query(sql).fetch_all(pool).await?;
    let mut out = BTreeMap::new();
    for r in rows {
        out.insert(r.try_get("state")?, get_u64(&r, "n")?);
    }
    Ok(out)
}

async fn count(pool: &sqlx::AnyPool, sql: &'static str) -> ApiResult<u64> {
    let row = sqlx::query(sql).fetch_one(pool).await?;
    Ok(get_u64(&row, "n")?)
}

async fn stats(State(state): State<AppState>, staff: Staff) -> ApiResult<Json<Stats>> {
    staff.require(&[Role::Auditor, Role::Admin])?;
    let pool = state.db.pool();
    let mut conn = pool.acquire().await?;
    let epoch = crate::status::current_epoch(&mut conn).await?;
    drop(conn);
    let cells = crate::usage::compute(&state, crate::usage::Filter::default()).await?;
    let usage = cells
        .into_iter()
        .rev()
        .take(500)
        .map(|c| Usage {
            day: c.day,
            date: c.date,
            service: c.service,
            region: u64::from(c.region),
            suppressed: c.suppressed,
            taps: c.taps,
            accepted: c.accepted,
        })
        .collect();
    Ok(Json(Stats {
        applications: grouped(
            pool,
            "SELECT state, COUNT(*) AS n FROM applications GROUP BY state",
        )
        .await?,
        cards: grouped(
            pool,
            "SELECT state, COUNT(*) AS n FROM cards GROUP BY state",
        )
        .await?,
        jobs: grouped(
            pool,
            "SELECT state, COUNT(*) AS n FROM personalization_jobs GROUP BY state",
        )
        .await?,
        status_epoch: epoch.epoch,
        status_size: epoch.size,
        revoked: count(pool, "SELECT COUNT(*) AS n FROM revocations").await?,
        terminals: count(pool, "SELECT COUNT(*) AS n FROM terminals").await?,
        receipts: count(pool, "SELECT COUNT(*) AS n FROM receipts").await?,
        anomalies: count(pool, "SELECT COUNT(*) AS n FROM anomalies").await?,
        usage,
    }))
}
