//! Revocation status: status-index allocation, epochs, revocations, and the signed status list
//! and deltas that terminals fetch.
//!
//! Status indices are handed out sequentially. The list covers `size` indices, a multiple of
//! [`SIZE_STEP`] above every index handed out, so a terminal can look up any card issued before
//! its list. The epoch moves on (a row in `status_epochs`) whenever the list changes: a
//! revocation, a size step, or age — an epoch older than `status_refresh_s` is replaced by a new
//! one with the same content, so a terminal that syncs never holds a list older than its service
//! rules allow. A delta from epoch E is every index revoked in an epoch after E.
//!
//! The full list for the current epoch is signed once and cached; so are recent deltas.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use shared_crypto::model::{StatusDeltaBody, StatusListBody};
use sqlx::AnyConnection;
use sqlx::Row;
use tokio::sync::Mutex;

use crate::db::{get_u64, i64_of, WriteTx};
use crate::error::{ApiError, ApiResult, Query};
use crate::AppState;

/// The list size grows in steps of this many indices.
pub const SIZE_STEP: u64 = 4096;

/// Reason codes of a revocation (the same numbers as a card block order's reason).
pub const REASONS: [(&str, u8); 5] = [
    ("lost", 1),
    ("stolen", 2),
    ("replaced", 3),
    ("deceased", 4),
    ("withdrawn", 5),
];

/// The code of a reason name.
pub fn reason_code(name: &str) -> Option<u8> {
    REASONS.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

/// The name of a reason code.
pub fn reason_name(code: u8) -> &'static str {
    REASONS
        .iter()
        .find(|(_, c)| *c == code)
        .map(|(n, _)| *n)
        .unwrap_or("unknown")
}

/// One status epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    /// Epoch number (1, 2, ...).
    pub epoch: u64,
    /// List size from this epoch on.
    pub size: u64,
    /// When it began.
    pub created_at: u64,
}

/// The current epoch.
pub async fn current_epoch(conn: &mut AnyConnection) -> Result<Epoch, sqlx::Error> {
    let row = sqlx::query(
        "SELECT epoch, size, created_at FROM status_epochs ORDER BY epoch DESC LIMIT 1",
    )
    .fetch_one(conn)
    .await?;
    Ok(Epoch {
        epoch: get_u64(&row, "epoch")?,
        size: get_u64(&row, "size")?,
        created_at: get_u64(&row, "created_at")?,
    })
}

/// Begins a new epoch with `size` inside `tx`.
pub async fn new_epoch(tx: &mut WriteTx, size: u64) -> Result<Epoch, sqlx::Error> {
    let cur = current_epoch(tx.conn()).await?;
    let e = Epoch {
        epoch: cur.epoch + 1,
        size: size.max(cur.size),
        created_at: crate::now(),
    };
    sqlx::query("INSERT INTO status_epochs (epoch, size, created_at) VALUES ($1, $2, $3)")
        .bind(i64_of(e.epoch))
        .bind(i64_of(e.size))
        .bind(i64_of(e.created_at))
        .execute(tx.conn())
        .await?;
    Ok(e)
}

/// Creates the counters and the first epoch of a new database.
pub async fn init(tx: &mut WriteTx) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO counters (name, value) VALUES ('next_status_index', 0)")
        .execute(tx.conn())
        .await?;
    sqlx::query("INSERT INTO status_epochs (epoch, size, created_at) VALUES (1, $1, $2)")
        .bind(i64_of(SIZE_STEP))
        .bind(i64_of(crate::now()))
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Hands out the next status index; starts a new epoch when the list must grow to cover it.
pub async fn allocate_index(tx: &mut WriteTx) -> ApiResult<u32> {
    let next: i64 = sqlx::query_scalar(
        "UPDATE counters SET value = value + 1 WHERE name = 'next_status_index' RETURNING value",
    )
    .fetch_one(tx.conn())
    .await?;
    let index = u64::try_from(next - 1).map_err(|_| anyhow::anyhow!("status counter broken"))?;
    // A list's size is a u32, so it covers indices 0 ..= u32::MAX - 1: index u32::MAX would lie
    // outside every list a terminal can hold, and its card could never be checked.
    let index = u32::try_from(index)
        .ok()
        .filter(|i| *i < u32::MAX)
        .ok_or_else(|| {
            ApiError::conflict(
                "status_list_full",
                "every status index is used; the office must start a new status list",
            )
        })?;
    let cur = current_epoch(tx.conn()).await?;
    if u64::from(index) >= cur.size {
        let size = (u64::from(index) / SIZE_STEP + 1) * SIZE_STEP;
        new_epoch(tx, size.min(u64::from(u32::MAX))).await?;
    }
    Ok(index)
}

/// Revokes cards `(card_id, status_index)` with `reason` in one new epoch; returns it.
pub async fn revoke(
    tx: &mut WriteTx,
    cards: &[(i64, u32)],
    reason: u8,
) -> Result<Epoch, sqlx::Error> {
    let cur = current_epoch(tx.conn()).await?;
    let e = new_epoch(tx, cur.size).await?;
    let now = i64_of(crate::now());
    for (card_id, index) in cards {
        sqlx::query(
            "INSERT INTO revocations (status_index, card_id, reason, epoch, revoked_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(i64::from(*index))
        .bind(*card_id)
        .bind(i64::from(reason))
        .bind(i64_of(e.epoch))
        .bind(now)
        .execute(tx.conn())
        .await?;
        sqlx::query(
            "UPDATE cards SET state = 'revoked', revoked_at = $1, revoke_reason = $2 WHERE id = $3",
        )
        .bind(now)
        .bind(i64::from(reason))
        .bind(*card_id)
        .execute(tx.conn())
        .await?;
    }
    Ok(e)
}

/// The signed list and deltas, cached per epoch.
#[derive(Debug, Default)]
pub struct StatusCache {
    inner: Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    list: Option<(u64, Arc<Vec<u8>>)>,
    deltas: HashMap<(u64, u64), Arc<Vec<u8>>>,
}

impl StatusCache {
    /// The signed full list of `epoch` (built and signed once per epoch).
    pub async fn full_list(&self, state: &AppState, epoch: Epoch) -> ApiResult<Arc<Vec<u8>>> {
        let mut inner = self.inner.lock().await;
        if let Some((e, wire)) = &inner.list {
            if *e == epoch.epoch {
                return Ok(wire.clone());
            }
        }
        let revoked = revoked_between(state, 0, epoch.epoch).await?;
        let size = u32::try_from(epoch.size).unwrap_or(u32::MAX);
        let list = shared_crypto::status_list::encode(size, revoked)
            .map_err(|e| anyhow::anyhow!("encoding the status list: {e}"))?;
        let body = StatusListBody {
            epoch: epoch.epoch,
            issued_at: crate::now(),
            list: &list,
        };
        let wire = Arc::new(
            shared_crypto::sig::sign(&body, &[], &state.keys.status)
                .map_err(|_| anyhow::anyhow!("signing the status list failed"))?,
        );
        inner.list = Some((epoch.epoch, wire.clone()));
        inner.deltas.retain(|(_, to), _| *to == epoch.epoch);
        Ok(wire)
    }

    /// The signed delta from `from` to `to`.
    pub async fn delta(&self, state: &AppState, from: u64, to: Epoch) -> ApiResult<Arc<Vec<u8>>> {
        let mut inner = self.inner.lock().await;
        if let Some(w) = inner.deltas.get(&(from, to.epoch)) {
            return Ok(w.clone());
        }
        let added = revoked_between(state, from, to.epoch).await?;
        let set = shared_crypto::status_list::encode_index_set(added)
            .map_err(|e| anyhow::anyhow!("encoding the delta: {e}"))?;
        let body = StatusDeltaBody {
            from_epoch: from,
            to_epoch: to.epoch,
            issued_at: crate::now(),
            size: u32::try_from(to.size).unwrap_or(u32::MAX),
            added: &set,
        };
        let wire = Arc::new(
            shared_crypto::sig::sign(&body, &[], &state.keys.status)
                .map_err(|_| anyhow::anyhow!("signing the delta failed"))?,
        );
        if inner.deltas.len() >= 256 {
            inner.deltas.clear();
        }
        inner.deltas.insert((from, to.epoch), wire.clone());
        Ok(wire)
    }
}

/// Indices revoked in epochs `from + 1 ..= to`, ascending.
async fn revoked_between(state: &AppState, from: u64, to: u64) -> ApiResult<Vec<u32>> {
    let rows = sqlx::query(
        "SELECT status_index FROM revocations WHERE epoch > $1 AND epoch <= $2 \
         ORDER BY status_index",
    )
    .bind(i64_of(from))
    .bind(i64_of(to))
    .fetch_all(state.db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            let v: i64 = r.try_get("status_index")?;
            u32::try_from(v).map_err(|_| anyhow::anyhow!("status index out of range").into())
        })
        .collect()
}

/// The current epoch, first replacing it by a fresh one if it is older than
/// `status_refresh_s`.
pub async fn fresh_epoch(state: &AppState) -> ApiResult<Epoch> {
    let mut conn = state.db.pool().acquire().await?;
    let cur = current_epoch(&mut conn).await?;
    drop(conn);
    if crate::now().saturating_sub(cur.created_at) < state.config.status_refresh_s {
        return Ok(cur);
    }
    let mut tx = state.db.begin_write().await?;
    // Another request may have refreshed it while this one waited for the write lock.
    let again = current_epoch(tx.conn()).await?;
    if crate::now().saturating_sub(again.created_at) < state.config.status_refresh_s {
        return Ok(again);
    }
    let e = new_epoch(&mut tx, again.size).await?;
    tx.audit(
        "system",
        "status.refresh",
        format!("epoch:{}", e.epoch),
        serde_json::json!({"previous": again.epoch}),
    );
    tx.commit().await?;
    Ok(e)
}

/// The status-list endpoints (no authentication: everything is signed).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/status-list", get(full))
        .route("/status-list/delta", get(delta))
}

/// Whether `If-None-Match` names `etag` (or `*`).
pub fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(etag))
}

/// A signed object as an octet-stream answer with its ETag.
pub fn octets(etag: &str, wire: &[u8]) -> Response {
    let mut r = (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        wire.to_vec(),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// 304 with the ETag.
pub fn unchanged(etag: &str) -> Response {
    let mut r = StatusCode::NOT_MODIFIED.into_response();
    if let Ok(v) = HeaderValue::from_str(etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

async fn full(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let epoch = fresh_epoch(&state).await?;
    let etag = format!("\"{}\"", epoch.epoch);
    if not_modified(&headers, &etag) {
        return Ok(unchanged(&etag));
    }
    let wire = state.status.full_list(&state, epoch).await?;
    Ok(octets(&etag, &wire))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeltaQuery {
    from: u64,
}

async fn delta(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<DeltaQuery>,
) -> ApiResult<Response> {
    let cur = fresh_epoch(&state).await?;
    let etag = format!("\"{}\"", cur.epoch);
    if q.from == cur.epoch {
        return Ok(unchanged(&etag));
    }
    if q.from > cur.epoch {
        return Err(ApiError::not_found(
            "unknown_epoch",
            format!(
                "epoch {} does not exist yet (the current epoch is {}); fetch the full list",
                q.from, cur.epoch
            ),
        ));
    }
    if q.from == 0 || cur.epoch - q.from > state.config.max_delta_epochs {
        return Err(ApiError::gone(
            "epoch_too_old",
            format!(
                "no delta is kept from epoch {}; fetch the full list at /api/v1/status-list",
                q.from
            ),
        ));
    }
    // If-None-Match only after the refusals: a precondition never turns a 4xx into a 304
    // (RFC 9110 §13.2.1).
    if not_modified(&headers, &etag) {
        return Ok(unchanged(&etag));
    }
    let wire = state.status.delta(&state, q.from, cur).await?;
    Ok(octets(&etag, &wire))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip() {
        for (name, code) in REASONS {
            assert_eq!(reason_code(name), Some(code));
            assert_eq!(reason_name(code), name);
        }
        assert_eq!(reason_code("misplaced"), None);
        assert_eq!(reason_name(9), "unknown");
    }

    #[test]
    fn if_none_match_forms() {
        let mut h = HeaderMap::new();
        assert!(!not_modified(&h, "\"3\""));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"2\", \"3\""),
        );
        assert!(not_modified(&h, "\"3\""));
        assert!(!not_modified(&h, "\"4\""));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("W/\"4\""));
        assert!(not_modified(&h, "\"4\""));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(not_modified(&h, "\"9\""));
    }
}
