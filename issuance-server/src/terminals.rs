//! Terminals: an admin registers a terminal's public key with its services and region and gets
//! its root-signed Terminal key certificate; terminals upload their signed tap logs, which feed
//! the points ledger (each card-signed receipt once) and the anomaly list.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use serde::{Deserialize, Serialize};
use shared_crypto::model::{
    LogBatchBody, Outcome, ReceiptBody, Role as KeyRole, Service, ServiceSet, MAX_SUBJECT_LEN,
};
use shared_crypto::{PublicKey, Signed};
use sqlx::Row;

use crate::auth::{Role, Staff};
use crate::cards::parse_key_id;
use crate::db::{get_u64, i64_of, WriteTx};
use crate::error::{hex_array, ApiError, ApiResult, Json, Path, RawBody};
use crate::keys::{certify, CertRequest};
use crate::AppState;

/// The terminal endpoints.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/terminals", post(register).get(list))
        .route("/terminals/{key_id}/logs", post(upload_logs))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTerminal {
    subject: String,
    public_key: String,
    services: Vec<String>,
    region: u32,
}

/// A registered terminal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TerminalJson {
    /// Id.
    pub terminal_id: i64,
    /// Key id (hex).
    pub key_id: String,
    /// Subject.
    pub subject: String,
    /// Services.
    pub services: Vec<String>,
    /// Region.
    pub region: u32,
    /// End of the certificate's validity.
    pub valid_until: u64,
    /// The root-signed certificate (hex).
    pub certificate: String,
}

fn service_names(bits: u8) -> Vec<String> {
    Service::ALL
        .iter()
        .filter(|s| ServiceSet(bits).contains(**s))
        .map(|s| s.name().to_owned())
        .collect()
}

async fn register(
    State(state): State<AppState>,
    staff: Staff,
    Json(body): Json<NewTerminal>,
) -> ApiResult<(StatusCode, Json<TerminalJson>)> {
    staff.require(&[Role::Admin])?;
    let subject = body.subject.trim();
    if subject.is_empty()
        || subject.len() > MAX_SUBJECT_LEN
        || subject.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(
            "invalid_subject",
            format!("subject must be 1 to {MAX_SUBJECT_LEN} bytes without control characters"),
        ));
    }
    let key_bytes: [u8; 33] = hex_array("public_key", &body.public_key)?;
    let public = PublicKey::from_sec1(&key_bytes).map_err(|_| {
        ApiError::invalid(
            "invalid_public_key",
            "public_key is not a compressed P-256 point (33 bytes, 02 or 03 first)",
        )
    })?;
    if body.services.is_empty() {
        return Err(ApiError::invalid(
            "invalid_services",
            "name at least one service: transit, employment, rehab, welfare",
        ));
    }
    let mut services = ServiceSet::NONE;
    for s in &body.services {
        let svc = Service::from_name(s).ok_or_else(|| {
            ApiError::invalid(
                "invalid_services",
                "unknown service; use transit, employment, rehab or welfare",
            )
        })?;
        services.0 |= svc.bit();
    }
    if body.region != 0 && !(100_000..=999_999).contains(&body.region) {
        return Err(ApiError::invalid(
            "invalid_region",
            "region must be a 6-digit administrative division code, or 0 for national",
        ));
    }
    let now = crate::now();
    let valid_until = now + u64::from(state.config.terminal_validity_days) * 86_400;
    let cert = certify(
        &state.keys.root,
        &CertRequest {
            role: KeyRole::Terminal,
            subject,
            region: body.region,
            services,
            public,
            valid_from: now,
            valid_until,
        },
    )?;
    let key_id = public.key_id();
    let mut tx = state.db.begin_write().await?;
    let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM terminals WHERE key_id = $1")
        .bind(key_id.to_vec())
        .fetch_optional(tx.conn())
        .await?;
    if let Some(id) = exists {
        return Err(ApiError::conflict(
            "duplicate_terminal",
            format!(
                "this key is registered already as terminal {id}; every terminal needs its own key"
            ),
        ));
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO terminals (key_id, subject, public_key, services, region, certificate, \
         valid_until, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         RETURNING id",
    )
    .bind(key_id.to_vec())
    .bind(subject)
    .bind(key_bytes.to_vec())
    .bind(i64::from(services.0))
    .bind(i64::from(body.region))
    .bind(cert.clone())
    .bind(i64_of(valid_until))
    .bind(staff.id)
    .bind(i64_of(now))
    .fetch_one(tx.conn())
    .await?;
    tx.audit(
        &staff.actor(),
        "terminal.register",
        format!("terminal:{id}"),
        serde_json::json!({
            "key_id": hex::encode(key_id),
            "services": service_names(services.0),
            "region": body.region,
        }),
    );
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(TerminalJson {
            terminal_id: id,
            key_id: hex::encode(key_id),
            subject: subject.to_owned(),
            services: service_names(services.0),
            region: body.region,
            valid_until,
            certificate: hex::encode(cert),
        }),
    ))
}

async fn list(State(state): State<AppState>, staff: Staff) -> ApiResult<Json<Vec<TerminalJson>>> {
    staff.require(&[Role::Admin, Role::Auditor])?;
    let rows = sqlx::query(
        "SELECT id, key_id, subject, services, region, valid_until, certificate FROM terminals \
         ORDER BY id",
    )
    .fetch_all(state.db.pool())
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let key_id: Vec<u8> = r.try_get("key_id")?;
        let cert: Vec<u8> = r.try_get("certificate")?;
        let services = u8::try_from(get_u64(&r, "services")?).unwrap_or(0);
        out.push(TerminalJson {
            terminal_id: r.try_get("id")?,
            key_id: hex::encode(key_id),
            subject: r.try_get("subject")?,
            services: service_names(services),
            region: u32::try_from(get_u64(&r, "region")?).unwrap_or(0),
            valid_until: get_u64(&r, "valid_until")?,
            certificate: hex::encode(cert),
        });
    }
    Ok(Json(out))
}

async fn anomaly(
    tx: &mut WriteTx,
    kind: &str,
    terminal_id: i64,
    serial: Option<&[u8; 8]>,
    detail: String,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO anomalies (kind, terminal_id, card_serial, detail, found_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(kind)
    .bind(terminal_id)
    .bind(serial.map(|s| s.to_vec()))
    .bind(detail)
    .bind(i64_of(crate::now()))
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Accepts a terminal-signed log batch: verified with the registered terminal key, stored once
/// (a repeated batch answers `duplicate: true`), each card-signed receipt verified with the
/// card's key and kept once per (card, counter).
async fn upload_logs(
    State(state): State<AppState>,
    Path(key_id): Path<String>,
    RawBody(wire): RawBody,
) -> ApiResult<Json<serde_json::Value>> {
    let key_id = parse_key_id(&key_id)?;
    let row = sqlx::query("SELECT id, public_key FROM terminals WHERE key_id = $1")
        .bind(key_id.to_vec())
        .fetch_optional(state.db.pool())
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                "unknown_terminal",
                "no terminal with this key id is registered at this office",
            )
        })?;
    let terminal_id: i64 = row.try_get("id")?;
    let pk: Vec<u8> = row.try_get("public_key")?;
    let terminal_key =
        PublicKey::from_sec1(&pk).map_err(|_| anyhow::anyhow!("stored terminal key invalid"))?;
    let signed = Signed::decode(&wire).map_err(|e| {
        ApiError::bad_request(
            "malformed_batch",
            format!("the body is not a signed object: {e}"),
        )
    })?;
    let batch: LogBatchBody<'_> = signed.open(&[], &terminal_key).map_err(|e| {
        ApiError::refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            e.code(),
            format!("the log batch does not verify under this terminal's key: {e}"),
        )
    })?;
    if batch.terminal != key_id {
        return Err(ApiError::invalid(
            "wrong_terminal",
            "the batch names another terminal than the URL",
        ));
    }
    batch.check_sequence().map_err(|_| {
        ApiError::invalid(
            "malformed_batch",
            "the batch's records do not run from first_seq to last_seq without gaps",
        )
    })?;

    let mut tx = state.db.begin_write().await?;
    let existing: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT wire FROM log_batches WHERE terminal_id = $1 AND first_seq = $2",
    )
    .bind(terminal_id)
    .bind(i64::from(batch.first_seq))
    .fetch_optional(tx.conn())
    .await?;
    if let Some(w) = existing {
        if w == wire.as_ref() {
            return Ok(Json(serde_json::json!({"accepted": 0, "duplicate": true})));
        }
        return Err(ApiError::conflict(
            "batch_conflict",
            "a different batch starting at the same sequence number was uploaded before",
        ));
    }
    let batch_id: i64 = sqlx::query_scalar(
        "INSERT INTO log_batches (terminal_id, first_seq, last_seq, terminal_time, wire, \
         received_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(terminal_id)
    .bind(i64::from(batch.first_seq))
    .bind(i64::from(batch.last_seq))
    .bind(i64_of(batch.created_at))
    .bind(wire.to_vec())
    .bind(i64_of(crate::now()))
    .fetch_one(tx.conn())
    .await?;
    let mut accepted = 0u64;
    let mut receipts = 0u64;
    let mut anomalies = 0u64;
    for rec in batch.records.iter() {
        let done = sqlx::query(
            "INSERT INTO taps (terminal_id, seq, time, service, outcome, reason, card_serial, \
             status_index, status_epoch, batch_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT DO NOTHING",
        )
        .bind(terminal_id)
        .bind(i64::from(rec.seq))
        .bind(i64_of(rec.time))
        .bind(i64::from(rec.service as u8))
        .bind(i64::from(rec.outcome as u8))
        .bind(i64::from(rec.reason as u8))
        .bind(rec.card_serial.map(|s| s.to_vec()))
        .bind(rec.status_index.map(i64::from))
        .bind(i64_of(rec.status_epoch))
        .bind(batch_id)
        .execute(tx.conn())
        .await?;
        if done.rows_affected() == 0 {
            continue; // an overlapping batch carried this record already
        }
        accepted += 1;
        if let (Outcome::Accepted, Some(serial)) = (rec.outcome, rec.card_serial) {
            let revoked_epoch: Option<i64> = sqlx::query_scalar(
                "SELECT r.epoch FROM revocations r JOIN cards c ON c.id = r.card_id \
                 WHERE c.serial = $1",
            )
            .bind(serial.to_vec())
            .fetch_optional(tx.conn())
            .await?;
            if let Some(e) = revoked_epoch {
                if i64_of(rec.status_epoch) < e {
                    anomalies += 1;
                    anomaly(
                        &mut tx,
                        "revoked_card_accepted",
                        terminal_id,
                        Some(&serial),
                        format!(
                            "tap {} used status epoch {} but the card was revoked in epoch {e}",
                            rec.seq, rec.status_epoch
                        ),
                    )
                    .await?;
                }
            }
        }
        let Some(receipt) = rec.receipt else { continue };
        let Some(serial) = rec.card_serial else {
            anomalies += 1;
            anomaly(
                &mut tx,
                "bad_receipt",
                terminal_id,
                None,
                format!("tap {} has a receipt but no card", rec.seq),
            )
            .await?;
            continue;
        };
        let card_key: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT card_key FROM cards WHERE serial = $1")
                .bind(serial.to_vec())
                .fetch_optional(tx.conn())
                .await?;
        let verified = card_key
            .as_deref()
            .and_then(|k| PublicKey::from_sec1(k).ok())
            .and_then(|k| receipt.open::<ReceiptBody>(&[], &k).ok());
        let Some(r) = verified.filter(|r| r.card_serial == serial && r.terminal == key_id) else {
            anomalies += 1;
            anomaly(
                &mut tx,
                "bad_receipt",
                terminal_id,
                Some(&serial),
                format!(
                    "tap {}: the receipt does not verify with the card's key",
                    rec.seq
                ),
            )
            .await?;
            continue;
        };
        let receipt_wire = receipt.to_vec();
        let stored: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT wire FROM receipts WHERE card_serial = $1 AND counter = $2")
                .bind(serial.to_vec())
                .bind(i64::from(r.counter))
                .fetch_optional(tx.conn())
                .await?;
        match stored {
            Some(w) if w == receipt_wire => {}
            Some(_) => {
                anomalies += 1;
                anomaly(
                    &mut tx,
                    "counter_seen_twice",
                    terminal_id,
                    Some(&serial),
                    format!("two different receipts with purse counter {}", r.counter),
                )
                .await?;
            }
            None => {
                sqlx::query(
                    "INSERT INTO receipts (card_serial, counter, amount, balance_after, \
                     terminal_id, time, reference, wire) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(serial.to_vec())
                .bind(i64::from(r.counter))
                .bind(i64::from(r.amount))
                .bind(i64::from(r.balance_after))
                .bind(terminal_id)
                .bind(i64_of(r.time))
                .bind(r.reference.to_vec())
                .bind(receipt_wire)
                .execute(tx.conn())
                .await?;
                receipts += 1;
            }
        }
    }
    tx.audit(
        &format!("terminal:{}", hex::encode(key_id)),
        "logs.upload",
        format!("log_batch:{batch_id}"),
        serde_json::json!({
            "first_seq": batch.first_seq,
            "last_seq": batch.last_seq,
            "accepted": accepted,
            "receipts": receipts,
            "anomalies": anomalies,
        }),
    );
    tx.commit().await?;
    Ok(Json(
        serde_json::json!({"accepted": accepted, "duplicate": false}),
    ))
}
