//! What terminals and card-tool fetch without a token (all of it signed): the root key, the
//! trust bundle and the service rules; and the admin endpoint that changes the rules.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use shared_crypto::model::{ServiceRulesBody, TrustBundleBody};
use shared_crypto::Signed;
use sqlx::Row;

use crate::auth::{Role, Staff};
use crate::db::{get_u64, i64_of, WriteTx};
use crate::error::{ApiError, ApiResult, Json};
use crate::status::{not_modified, octets, unchanged};
use crate::AppState;

/// The distribution endpoints.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/root-key", get(root_key))
        .route("/trust-bundle", get(trust_bundle))
        .route("/service-rules", get(service_rules).put(set_service_rules))
}

async fn root_key(State(state): State<AppState>) -> Json<serde_json::Value> {
    let k = state.keys.root.public_key();
    Json(serde_json::json!({
        "public_key": hex::encode(k.to_sec1()),
        "key_id": hex::encode(k.key_id()),
    }))
}

async fn trust_bundle(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let wire = &state.keys.trust_bundle;
    let signed = Signed::decode(wire).map_err(|e| anyhow::anyhow!("trust bundle: {e}"))?;
    let body: TrustBundleBody<'_> = signed
        .decode_trusted()
        .map_err(|e| anyhow::anyhow!("trust bundle: {e}"))?;
    let etag = format!("\"{}\"", body.epoch);
    if not_modified(&headers, &etag) {
        return Ok(unchanged(&etag));
    }
    Ok(octets(&etag, wire))
}

/// The terminal service rules as the admin sets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// A status list older than this makes the terminal ask staff.
    pub max_status_age_s: u32,
    /// Transit: companion's passage window.
    pub companion_window_s: u32,
    /// Transit: anti-passback interval.
    pub passback_s: u32,
    /// Welfare: largest debit in one tap.
    pub max_debit_points: u32,
    /// Rehab: minimum time between two recorded sessions.
    pub rehab_min_interval_s: u32,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            max_status_age_s: 3 * 86_400,
            companion_window_s: 60,
            passback_s: 20,
            max_debit_points: 500,
            rehab_min_interval_s: 3_600,
        }
    }
}

impl Rules {
    fn check(&self) -> ApiResult<()> {
        if self.max_status_age_s < 3_600 || self.max_debit_points == 0 {
            return Err(ApiError::invalid(
                "invalid_rules",
                "max_status_age_s must be at least 3600 and max_debit_points at least 1",
            ));
        }
        Ok(())
    }
}

/// Signs `rules` as epoch `max + 1` inside `tx`; returns the epoch.
pub async fn store_rules(
    tx: &mut WriteTx,
    state_keys: &crate::keys::OfficeKeys,
    rules: Rules,
) -> ApiResult<u64> {
    rules.check()?;
    let last: Option<i64> = sqlx::query_scalar("SELECT MAX(epoch) FROM service_rules")
        .fetch_one(tx.conn())
        .await?;
    let epoch = u64::try_from(last.unwrap_or(0)).unwrap_or(0) + 1;
    let now = crate::now();
    let body = ServiceRulesBody {
        epoch,
        issued_at: now,
        max_status_age_s: rules.max_status_age_s,
        companion_window_s: rules.companion_window_s,
        passback_s: rules.passback_s,
        max_debit_points: rules.max_debit_points,
        rehab_min_interval_s: rules.rehab_min_interval_s,
    };
    let wire = shared_crypto::sig::sign(&body, &[], &state_keys.status)
        .map_err(|_| anyhow::anyhow!("signing the service rules failed"))?;
    sqlx::query(
        "INSERT INTO service_rules (epoch, rules, wire, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(i64_of(epoch))
    .bind(serde_json::to_string(&rules).map_err(anyhow::Error::from)?)
    .bind(wire)
    .bind(i64_of(now))
    .execute(tx.conn())
    .await?;
    Ok(epoch)
}

async fn service_rules(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let row = sqlx::query("SELECT epoch, wire FROM service_rules ORDER BY epoch DESC LIMIT 1")
        .fetch_one(state.db.pool())
        .await?;
    let etag = format!("\"{}\"", get_u64(&row, "epoch")?);
    if not_modified(&headers, &etag) {
        return Ok(unchanged(&etag));
    }
    let wire: Vec<u8> = row.try_get("wire")?;
    Ok(octets(&etag, &wire))
}

async fn set_service_rules(
    State(state): State<AppState>,
    staff: Staff,
    Json(rules): Json<Rules>,
) -> ApiResult<Json<serde_json::Value>> {
    staff.require(&[Role::Admin])?;
    let mut tx = state.db.begin_write().await?;
    let epoch = store_rules(&mut tx, &state.keys, rules).await?;
    tx.audit(
        &staff.actor(),
        "service_rules.set",
        format!("service_rules:{epoch}"),
        serde_json::to_value(rules).map_err(anyhow::Error::from)?,
    );
    tx.commit().await?;
    Ok(Json(serde_json::json!({"epoch": epoch, "rules": rules})))
}
