//! Cards after personalization: look-up, revocation with a reason, welfare-point vouchers and
//! signed block orders.

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use shared_crypto::model::{CardBlockBody, VoucherBody};
use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use sqlx::Row;

use crate::auth::{Role, Staff};
use crate::db::{get_array, get_u64, i64_of};
use crate::error::{hex_array, ApiError, ApiResult, Json, Path};
use crate::status::{reason_code, reason_name, REASONS};
use crate::AppState;

/// The card endpoints.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/cards/{serial}", get(show))
        .route("/cards/{serial}/revoke", post(revoke))
        .route("/cards/{serial}/vouchers", post(voucher))
        .route("/cards/{serial}/block-order", post(block_order))
}

/// A card as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CardJson {
    /// Serial (hex).
    pub serial: String,
    /// The application (certificate) it belongs to.
    pub application_id: i64,
    /// `active` or `revoked`.
    pub state: String,
    /// Status index.
    pub status_index: u32,
    /// Card key (hex, compressed).
    pub card_key: String,
    /// Last voucher sequence number granted.
    pub voucher_seq: u32,
    /// When it became active.
    pub activated_at: i64,
    /// When it was revoked.
    pub revoked_at: Option<i64>,
    /// Why it was revoked.
    pub revoke_reason: Option<String>,
    /// The latest credential (hex wire bytes).
    pub credential: String,
}

struct Card {
    id: i64,
    serial: [u8; 8],
    application_id: i64,
    state: String,
    status_index: u32,
    card_key: Vec<u8>,
    voucher_seq: u32,
    activated_at: i64,
    revoked_at: Option<i64>,
    revoke_reason: Option<i64>,
}

fn card_of_row(row: &AnyRow) -> ApiResult<Card> {
    let index = get_u64(row, "status_index")?;
    let seq = get_u64(row, "voucher_seq")?;
    Ok(Card {
        id: row.try_get("id")?,
        serial: get_array(row, "serial")?,
        application_id: row.try_get("application_id")?,
        state: row.try_get("state")?,
        status_index: u32::try_from(index).map_err(|_| anyhow::anyhow!("index out of range"))?,
        card_key: row.try_get("card_key")?,
        voucher_seq: u32::try_from(seq).map_err(|_| anyhow::anyhow!("voucher seq"))?,
        activated_at: row.try_get("activated_at")?,
        revoked_at: row.try_get("revoked_at")?,
        revoke_reason: row.try_get("revoke_reason")?,
    })
}

fn parse_serial(s: &str) -> ApiResult<[u8; 8]> {
    hex::decode(s)
        .ok()
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_serial",
                "a card serial is 8 bytes in hex (16 hex digits)",
            )
        })
}

async fn load_card(conn: &mut AnyConnection, serial: &[u8; 8]) -> ApiResult<Card> {
    let row = sqlx::query(
        "SELECT id, serial, application_id, state, status_index, card_key, voucher_seq, \
         activated_at, revoked_at, revoke_reason FROM cards WHERE serial = $1",
    )
    .bind(serial.to_vec())
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| {
        ApiError::not_found(
            "unknown_card",
            format!(
                "there is no card {} (only confirmed cards exist)",
                hex::encode(serial)
            ),
        )
    })?;
    card_of_row(&row)
}

async fn card_json(conn: &mut AnyConnection, c: Card) -> ApiResult<CardJson> {
    let credential: Vec<u8> = sqlx::query_scalar(
        "SELECT wire FROM credentials WHERE card_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(c.id)
    .fetch_one(conn)
    .await?;
    Ok(CardJson {
        serial: hex::encode(c.serial),
        application_id: c.application_id,
        state: c.state,
        status_index: c.status_index,
        card_key: hex::encode(c.card_key),
        voucher_seq: c.voucher_seq,
        activated_at: c.activated_at,
        revoked_at: c.revoked_at,
        revoke_reason: c
            .revoke_reason
            .map(|r| reason_name(u8::try_from(r).unwrap_or(0)).to_owned()),
        credential: hex::encode(credential),
    })
}

async fn show(
    State(state): State<AppState>,
    staff: Staff,
    Path(serial): Path<String>,
) -> ApiResult<Json<CardJson>> {
    staff.require(&[Role::Clerk, Role::Approver, Role::Admin])?;
    let serial = parse_serial(&serial)?;
    let mut conn = state.db.pool().acquire().await?;
    let c = load_card(&mut conn, &serial).await?;
    Ok(Json(card_json(&mut conn, c).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    reason: String,
}

async fn revoke(
    State(state): State<AppState>,
    staff: Staff,
    Path(serial): Path<String>,
    Json(body): Json<RevokeBody>,
) -> ApiResult<Json<CardJson>> {
    staff.require(&[Role::Approver, Role::Admin])?;
    let serial = parse_serial(&serial)?;
    let reason = reason_code(&body.reason).ok_or_else(|| {
        ApiError::invalid(
            "invalid_reason",
            format!(
                "reason must be one of {}",
                REASONS.map(|(n, _)| n).join(", ")
            ),
        )
    })?;
    let mut tx = state.db.begin_write().await?;
    let card = load_card(tx.conn(), &serial).await?;
    if card.state == "active" {
        let epoch = crate::status::revoke(&mut tx, &[(card.id, card.status_index)], reason).await?;
        // Death or withdrawal ends the certificate: no replacement card may be made for it.
        if body.reason == "deceased" || body.reason == "withdrawn" {
            sqlx::query("UPDATE applications SET state = 'revoked', updated_at = $1 WHERE id = $2")
                .bind(i64_of(crate::now()))
                .bind(card.application_id)
                .execute(tx.conn())
                .await?;
        }
        tx.audit(
            &staff.actor(),
            "card.revoke",
            format!("card:{}", hex::encode(serial)),
            serde_json::json!({"reason": body.reason, "epoch": epoch.epoch}),
        );
        tx.commit().await?;
    } else {
        drop(tx);
    }
    let mut conn = state.db.pool().acquire().await?;
    let c = load_card(&mut conn, &serial).await?;
    Ok(Json(card_json(&mut conn, c).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VoucherRequest {
    amount: u32,
}

async fn voucher(
    State(state): State<AppState>,
    staff: Staff,
    Path(serial): Path<String>,
    Json(body): Json<VoucherRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    staff.require(&[Role::Approver, Role::Admin])?;
    let serial = parse_serial(&serial)?;
    if body.amount == 0 || body.amount > state.config.max_voucher_amount {
        return Err(ApiError::invalid(
            "invalid_amount",
            format!(
                "amount must be 1 to {} points",
                state.config.max_voucher_amount
            ),
        ));
    }
    let mut tx = state.db.begin_write().await?;
    let card = load_card(tx.conn(), &serial).await?;
    if card.state != "active" {
        return Err(ApiError::conflict(
            "card_not_active",
            "points are granted only to an active card",
        ));
    }
    let seq = card
        .voucher_seq
        .checked_add(1)
        .ok_or_else(|| ApiError::conflict("voucher_seq_exhausted", "no more vouchers"))?;
    let now = crate::now();
    let valid_until = now + u64::from(state.config.voucher_validity_days) * 86_400;
    let body_v = VoucherBody {
        card_serial: serial,
        seq,
        amount: body.amount,
        issued_at: now,
        valid_until,
    };
    let wire = shared_crypto::sig::sign(&body_v, &[], &state.keys.voucher)
        .map_err(|_| anyhow::anyhow!("signing the voucher failed"))?;
    sqlx::query("UPDATE cards SET voucher_seq = $1 WHERE id = $2")
        .bind(i64::from(seq))
        .bind(card.id)
        .execute(tx.conn())
        .await?;
    sqlx::query(
        "INSERT INTO vouchers (card_id, seq, amount, valid_until, wire, created_by, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(card.id)
    .bind(i64::from(seq))
    .bind(i64::from(body.amount))
    .bind(i64_of(valid_until))
    .bind(wire.clone())
    .bind(staff.id)
    .bind(i64_of(now))
    .execute(tx.conn())
    .await?;
    tx.audit(
        &staff.actor(),
        "voucher.grant",
        format!("card:{}", hex::encode(serial)),
        serde_json::json!({"seq": seq, "amount": body.amount}),
    );
    tx.commit().await?;
    Ok(Json(serde_json::json!({
        "voucher": hex::encode(wire),
        "voucher_cert": hex::encode(&state.keys.voucher_cert),
        "seq": seq,
    })))
}

async fn block_order(
    State(state): State<AppState>,
    staff: Staff,
    Path(serial): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    staff.require(&[Role::Approver, Role::Admin])?;
    let serial = parse_serial(&serial)?;
    let mut tx = state.db.begin_write().await?;
    let card = load_card(tx.conn(), &serial).await?;
    let Some(reason) = card.revoke_reason else {
        return Err(ApiError::conflict(
            "card_not_revoked",
            "revoke the card (with its reason) before ordering it blocked",
        ));
    };
    let order = CardBlockBody {
        card_serial: serial,
        time: crate::now(),
        reason: u8::try_from(reason).unwrap_or(0),
    };
    let wire = shared_crypto::sig::sign(&order, &[], &state.keys.issuer)
        .map_err(|_| anyhow::anyhow!("signing the block order failed"))?;
    tx.audit(
        &staff.actor(),
        "card.block_order",
        format!("card:{}", hex::encode(serial)),
        serde_json::json!({"reason": reason_name(order.reason)}),
    );
    tx.commit().await?;
    Ok(Json(serde_json::json!({
        "order": hex::encode(wire),
        "issuer_cert": hex::encode(&state.keys.issuer_cert),
    })))
}

/// Validates a hex key id path parameter (used by the terminal log upload too).
pub fn parse_key_id(s: &str) -> ApiResult<[u8; 8]> {
    hex_array::<8>("key_id", s).map_err(|_| {
        ApiError::bad_request(
            "invalid_key_id",
            "a key id is 8 bytes in hex (16 hex digits)",
        )
    })
}
