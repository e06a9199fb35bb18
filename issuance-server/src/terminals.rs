//! Terminals: an admin registers a terminal's public key with its services, region and (optional)
//! location and gets its root-signed Terminal key certificate; terminals upload their signed tap
//! logs ([`crate::ingest`]), which feed the points ledger (each card-signed receipt once) and the
//! anomaly list.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use serde::{Deserialize, Serialize};
use shared_crypto::model::{Role as KeyRole, Service, ServiceSet, MAX_SUBJECT_LEN};
use shared_crypto::PublicKey;
use sqlx::Row;

use crate::auth::{Role, Staff};
use crate::cards::parse_key_id;
use crate::db::{get_array, get_u64, i64_of};
use crate::error::{hex_array, ApiError, ApiResult, Json, Path, RawBody};
use crate::ingest::{self, UploadAnswer, Uploader};
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
    #[serde(default)]
    location: Option<Location>,
}

/// Where a terminal stands, in micro-degrees (WGS 84): latitude -90e6..=90e6, longitude
/// -180e6..=180e6. Used by the impossible-travel check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Location {
    /// Latitude, micro-degrees north (negative: south).
    pub latitude: i64,
    /// Longitude, micro-degrees east (negative: west).
    pub longitude: i64,
}

impl Location {
    fn check(&self) -> ApiResult<()> {
        if (-90_000_000..=90_000_000).contains(&self.latitude)
            && (-180_000_000..=180_000_000).contains(&self.longitude)
        {
            Ok(())
        } else {
            Err(ApiError::invalid(
                "invalid_location",
                "location is {latitude, longitude} in micro-degrees: latitude -90000000 to \
                 90000000, longitude -180000000 to 180000000",
            ))
        }
    }
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
    /// Location, if registered.
    pub location: Option<Location>,
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
    if let Some(l) = &body.location {
        l.check()?;
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
         valid_until, created_by, created_at, latitude, longitude) VALUES ($1, $2, $3, $4, $5, \
         $6, $7, $8, $9, $10, $11) RETURNING id",
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
    .bind(body.location.map(|l| l.latitude))
    .bind(body.location.map(|l| l.longitude))
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
            "located": body.location.is_some(),
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
            location: body.location,
            valid_until,
            certificate: hex::encode(cert),
        }),
    ))
}

async fn list(State(state): State<AppState>, staff: Staff) -> ApiResult<Json<Vec<TerminalJson>>> {
    staff.require(&[Role::Admin, Role::Auditor])?;
    let rows = sqlx::query(
        "SELECT id, key_id, subject, services, region, valid_until, certificate, latitude, \
         longitude FROM terminals ORDER BY id",
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
            location: r
                .try_get::<Option<i64>, _>("latitude")?
                .zip(r.try_get::<Option<i64>, _>("longitude")?)
                .map(|(latitude, longitude)| Location {
                    latitude,
                    longitude,
                }),
            valid_until: get_u64(&r, "valid_until")?,
            certificate: hex::encode(cert),
        });
    }
    Ok(Json(out))
}

/// Accepts a terminal-signed log batch (see [`crate::ingest`]): authenticated by its signature
/// under the registered terminal key, whose root-signed certificate must be valid now and allow
/// the service of every record.
async fn upload_logs(
    State(state): State<AppState>,
    Path(key_id): Path<String>,
    RawBody(wire): RawBody,
) -> ApiResult<Json<UploadAnswer>> {
    let key_id = parse_key_id(&key_id)?;
    let row = sqlx::query("SELECT id, public_key, certificate FROM terminals WHERE key_id = $1")
        .bind(key_id.to_vec())
        .fetch_optional(state.db.pool())
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                "unknown_terminal",
                "no terminal with this key id is registered at this office",
            )
        })?;
    let uploader = Uploader {
        id: row.try_get("id")?,
        key_id,
        public_key: get_array(&row, "public_key")?,
        certificate: row.try_get("certificate")?,
    };
    Ok(Json(ingest::upload(&state, uploader, wire).await?))
}
