//! Statistics for auditors: counts of applications, cards, jobs, revocations, terminals, and tap
//! usage per service, region and day (from the uploaded tap logs). No personal data.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use shared_crypto::model::Service;
use sqlx::Row;

use crate::auth::{Role, Staff};
use crate::db::get_u64;
use crate::error::{ApiResult, Json};
use crate::AppState;

/// The statistics endpoint.
pub fn router() -> Router<AppState> {
    Router::new().route("/stats", get(stats))
}

/// Taps of one service in one region on one day.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    /// Day (Unix seconds / 86400).
    pub day: u64,
    /// Service name.
    pub service: String,
    /// Terminal's region.
    pub region: u64,
    /// Number of taps.
    pub taps: u64,
    /// Of which accepted.
    pub accepted: u64,
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
    /// Tap usage, newest day first (at most 500 rows).
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
    let rows = sqlx::query(
        "SELECT t.time / 86400 AS day, t.service AS service, m.region AS region, \
         COUNT(*) AS taps, \
         COUNT(CASE WHEN t.outcome = 0 THEN 1 END) AS accepted \
         FROM taps t JOIN terminals m ON m.id = t.terminal_id \
         GROUP BY t.time / 86400, t.service, m.region \
         ORDER BY day DESC, service, region LIMIT 500",
    )
    .fetch_all(pool)
    .await?;
    let mut usage = Vec::with_capacity(rows.len());
    for r in rows {
        let service = u8::try_from(get_u64(&r, "service")?).unwrap_or(u8::MAX);
        usage.push(Usage {
            day: get_u64(&r, "day")?,
            service: Service::try_from(service)
                .map(|s| s.name().to_owned())
                .unwrap_or_else(|_| format!("service {service}")),
            region: get_u64(&r, "region")?,
            taps: get_u64(&r, "taps")?,
            accepted: get_u64(&r, "accepted")?,
        });
    }
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
