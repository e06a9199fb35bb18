//! Applications: a clerk registers an applicant, an approver who is not the submitter approves
//! or rejects (four-eyes rule). An approved application is the certificate; personalization
//! jobs make its cards.
//!
//! States: `submitted` -> `approved` | `rejected`; `approved` -> `active` when its first card is
//! confirmed; `active` -> `superseded` when a change of category or level (a new application with
//! `supersedes`) gets its card, or `revoked` when its card is revoked for a final reason.
//! One person (one blind index) has at most one application in progress and one active card.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use ring::digest::{digest, SHA256};
use serde::{Deserialize, Serialize};
use shared_crypto::certno::{Category, CertificateNumber, Level, ResidentId};
use shared_crypto::model::{Entitlements, MAX_NAME_LEN};
use sqlx::AnyConnection;
use sqlx::Row;

use crate::auth::{Role, Staff};
use crate::db::{get_u64, i64_of, is_unique_violation};
use crate::error::{ApiError, ApiResult, Json, Path, Query, RawBody};
use crate::keys::DataKey;
use crate::AppState;

/// Largest photo accepted (bytes, after base64 decoding).
pub const MAX_PHOTO_BYTES: usize = 256 * 1024;

/// Entitlement names as the API spells them, with their flag.
pub const ENTITLEMENTS: [(&str, u8); 5] = [
    ("free_transit", Entitlements::FREE_TRANSIT),
    ("companion", Entitlements::COMPANION),
    ("rehab_subsidy", Entitlements::REHAB_SUBSIDY),
    ("quota_employment", Entitlements::QUOTA_EMPLOYMENT),
    ("welfare_points", Entitlements::WELFARE_POINTS),
];

/// The names of the flags set in `bits`.
pub fn entitlement_names(bits: u8) -> Vec<String> {
    ENTITLEMENTS
        .iter()
        .filter(|(_, f)| bits & f != 0)
        .map(|(n, _)| (*n).to_owned())
        .collect()
}

/// The application endpoints.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/applications", post(submit).get(list))
        .route("/applications/search", post(search))
        .route("/applications/{id}", get(show))
        .route("/applications/{id}/photo", get(photo))
        .route("/applications/{id}/approve", post(approve))
        .route("/applications/{id}/reject", post(reject))
}

/// A new application as the clerk sends it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewApplication {
    /// Holder's name (1 to 64 UTF-8 bytes).
    pub name: String,
    /// 18-character resident ID (GB 11643-1999).
    pub resident_id: String,
    /// Disability category 1..=7.
    pub category: u8,
    /// Disability level 1..=4.
    pub level: u8,
    /// 6-digit administrative division code.
    pub region: u32,
    /// Year of birth; when given it must match the resident ID.
    #[serde(default)]
    pub birth_year: Option<u16>,
    /// Entitlement names.
    #[serde(default)]
    pub entitlements: Vec<String>,
    /// JPEG or PNG photo, base64.
    #[serde(default)]
    pub photo: Option<String>,
    /// For a change of category or level: the active application it replaces.
    #[serde(default)]
    pub supersedes: Option<i64>,
}

/// A new application after every check.
#[derive(Debug, Clone)]
pub struct Validated {
    /// Name, trimmed.
    pub name: String,
    /// Resident ID.
    pub resident_id: ResidentId,
    /// Category.
    pub category: Category,
    /// Level.
    pub level: Level,
    /// Region code.
    pub region: u32,
    /// Birth year (from the resident ID).
    pub birth_year: u16,
    /// Entitlement flags.
    pub entitlements: u8,
    /// Photo bytes.
    pub photo: Option<Vec<u8>>,
}

impl NewApplication {
    /// Checks every field with shared-crypto's rules; the first failure is the answer.
    pub fn validate(&self) -> ApiResult<Validated> {
        let name = self.name.trim();
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "invalid_name",
                format!(
                    "the name must be 1 to {MAX_NAME_LEN} bytes of UTF-8 without control characters"
                ),
            ));
        }
        let resident_id = ResidentId::parse(&self.resident_id).map_err(|e| {
            ApiError::invalid(
                format!("resident_id_{}", e.code()),
                format!("the resident ID is not valid: {e}"),
            )
        })?;
        let category = Category::from_digit(self.category).ok_or_else(|| {
            ApiError::invalid(
                "invalid_category",
                "category must be 1 (vision), 2 (hearing), 3 (speech), 4 (physical), \
                 5 (intellectual), 6 (psychosocial) or 7 (multiple)",
            )
        })?;
        let level = Level::new(self.level).ok_or_else(|| {
            ApiError::invalid(
                "invalid_level",
                "level must be 1, 2, 3 or 4 (1 the most severe)",
            )
        })?;
        if !(100_000..=999_999).contains(&self.region) {
            return Err(ApiError::invalid(
                "invalid_region",
                "region must be a 6-digit administrative division code (GB/T 2260)",
            ));
        }
        let birth_year = resident_id.birth_year();
        if let Some(y) = self.birth_year {
            if y != birth_year {
                return Err(ApiError::invalid(
                    "birth_year_mismatch",
                    "birth_year does not match the birth date in the resident ID; leave it out \
                     or correct it",
                ));
            }
        }
        let mut entitlements = 0u8;
        for e in &self.entitlements {
            let flag = ENTITLEMENTS
                .iter()
                .find(|(n, _)| n == e)
                .map(|(_, f)| *f)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "invalid_entitlement",
                        format!(
                            "unknown entitlement; use any of {}",
                            ENTITLEMENTS.map(|(n, _)| n).join(", ")
                        ),
                    )
                })?;
            if entitlements & flag != 0 {
                return Err(ApiError::invalid(
                    "invalid_entitlement",
                    "an entitlement is listed twice",
                ));
            }
            entitlements |= flag;
        }
        let photo = match &self.photo {
            None => None,
            Some(b64) => Some(decode_photo(b64)?),
        };
        Ok(Validated {
            name: name.to_owned(),
            resident_id,
            category,
            level,
            region: self.region,
            birth_year,
            entitlements,
            photo,
        })
    }
}

fn decode_photo(b64: &str) -> ApiResult<Vec<u8>> {
    let bad = |why: &str| ApiError::invalid("invalid_photo", why.to_owned());
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|_| bad("the photo must be base64 (standard alphabet, with padding)"))?;
    if bytes.len() > MAX_PHOTO_BYTES {
        return Err(bad("the photo is larger than 256 KiB; scale it down"));
    }
    if photo_type(&bytes).is_none() {
        return Err(bad("the photo must be a JPEG or PNG image"));
    }
    Ok(bytes)
}

fn photo_type(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else {
        None
    }
}

/// The authenticated-data context of a sealed application field: the field and the person.
pub fn seal_context(field: &str, blind_index: &[u8]) -> Vec<u8> {
    let mut c = format!("application.{field}|").into_bytes();
    c.extend_from_slice(blind_index);
    c
}

/// An application row with its personal data opened.
#[derive(Debug, Clone)]
pub struct Application {
    /// Id.
    pub id: i64,
    /// `new` or `change`.
    pub kind: String,
    /// The application a change replaces.
    pub supersedes: Option<i64>,
    /// State.
    pub state: String,
    /// Blind index of the resident ID.
    pub blind_index: Vec<u8>,
    /// Name.
    pub name: String,
    /// Resident ID.
    pub resident_id: ResidentId,
    /// Category.
    pub category: Category,
    /// Level.
    pub level: Level,
    /// Region.
    pub region: u32,
    /// Birth year.
    pub birth_year: u16,
    /// Entitlement flags.
    pub entitlements: u8,
    /// SHA-256 of the photo.
    pub photo_digest: Option<[u8; 32]>,
    /// Submitting user id.
    pub submitted_by: i64,
    /// Submitting user name.
    pub submitted_by_name: String,
    /// Deciding user id.
    pub decided_by: Option<i64>,
    /// Deciding user name.
    pub decided_by_name: Option<String>,
    /// When decided.
    pub decided_at: Option<i64>,
    /// Approver's note or rejection reason.
    pub decision_note: Option<String>,
    /// When submitted.
    pub created_at: i64,
}

impl Application {
    /// The 20-character certificate number.
    pub fn certificate_number(&self) -> CertificateNumber {
        CertificateNumber::from_parts(self.resident_id, self.category, self.level)
    }
}

const APPLICATION_COLUMNS: &str =
    "a.id, a.kind, a.supersedes, a.state, a.blind_index, a.name_enc, \
     a.resident_id_enc, a.photo_digest, a.category, a.level, a.region, a.birth_year, \
     a.entitlements, a.submitted_by, a.decided_by, a.decided_at, a.decision_note, a.created_at, \
     su.name AS submitted_by_name, du.name AS decided_by_name";

const APPLICATION_FROM: &str = "FROM applications a JOIN users su ON su.id = a.submitted_by \
     LEFT JOIN users du ON du.id = a.decided_by";

fn application_of_row(row: &sqlx::any::AnyRow, key: &DataKey) -> ApiResult<Application> {
    let blind: Vec<u8> = row.try_get("blind_index")?;
    let name_enc: Vec<u8> = row.try_get("name_enc")?;
    let rid_enc: Vec<u8> = row.try_get("resident_id_enc")?;
    let name = String::from_utf8(key.open(&seal_context("name", &blind), &name_enc)?)
        .map_err(|_| anyhow::anyhow!("sealed name is not UTF-8"))?;
    let rid = String::from_utf8(key.open(&seal_context("resident_id", &blind), &rid_enc)?)
        .map_err(|_| anyhow::anyhow!("sealed resident ID is not UTF-8"))?;
    let resident_id = ResidentId::parse(&rid)
        .map_err(|_| anyhow::anyhow!("stored resident ID does not parse"))?;
    let small = |col: &str| -> ApiResult<u8> {
        let v: i64 = row.try_get(col)?;
        u8::try_from(v).map_err(|_| anyhow::anyhow!("{col} out of range").into())
    };
    let photo_digest: Option<Vec<u8>> = row.try_get("photo_digest")?;
    let photo_digest = match photo_digest {
        Some(d) => Some(
            <[u8; 32]>::try_from(d)
                .map_err(|_| anyhow::anyhow!("photo digest has the wrong length"))?,
        ),
        None => None,
    };
    let birth_year: i64 = row.try_get("birth_year")?;
    let region: i64 = row.try_get("region")?;
    Ok(Application {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        supersedes: row.try_get("supersedes")?,
        state: row.try_get("state")?,
        blind_index: blind,
        name,
        resident_id,
        category: Category::from_digit(small("category")?)
            .ok_or_else(|| anyhow::anyhow!("stored category out of range"))?,
        level: Level::new(small("level")?)
            .ok_or_else(|| anyhow::anyhow!("stored level out of range"))?,
        region: u32::try_from(region).map_err(|_| anyhow::anyhow!("region out of range"))?,
        birth_year: u16::try_from(birth_year)
            .map_err(|_| anyhow::anyhow!("birth year out of range"))?,
        entitlements: small("entitlements")?,
        photo_digest,
        submitted_by: row.try_get("submitted_by")?,
        submitted_by_name: row.try_get("submitted_by_name")?,
        decided_by: row.try_get("decided_by")?,
        decided_by_name: row.try_get("decided_by_name")?,
        decided_at: row.try_get("decided_at")?,
        decision_note: row.try_get("decision_note")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Loads application `id` (404 `unknown_application` if there is none).
pub async fn load(conn: &mut AnyConnection, key: &DataKey, id: i64) -> ApiResult<Application> {
    let sql = format!("SELECT {APPLICATION_COLUMNS} {APPLICATION_FROM} WHERE a.id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                "unknown_application",
                format!("there is no application {id}"),
            )
        })?;
    application_of_row(&row, key)
}

/// An application as the API shows it (staff only: it holds personal data).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplicationJson {
    /// Id.
    pub id: i64,
    /// `new` or `change`.
    pub kind: String,
    /// The application a change replaces.
    pub supersedes: Option<i64>,
    /// `submitted`, `approved`, `rejected`, `active`, `superseded` or `revoked`.
    pub state: String,
    /// Name.
    pub name: String,
    /// Resident ID.
    pub resident_id: String,
    /// The 20-character certificate number.
    pub certificate_number: String,
    /// Category 1..=7.
    pub category: u8,
    /// Level 1..=4.
    pub level: u8,
    /// Region code.
    pub region: u32,
    /// Birth year.
    pub birth_year: u16,
    /// Entitlement names.
    pub entitlements: Vec<String>,
    /// SHA-256 of the photo (hex), if there is one.
    pub photo_digest: Option<String>,
    /// Who submitted it.
    pub submitted_by: String,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When decided.
    pub decided_at: Option<i64>,
    /// Approver's note or rejection reason.
    pub decision_note: Option<String>,
    /// When submitted.
    pub created_at: i64,
    /// Serial (hex) of the active card, if any.
    pub active_card: Option<String>,
}

async fn to_json(conn: &mut AnyConnection, a: Application) -> ApiResult<ApplicationJson> {
    let card: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT serial FROM cards WHERE application_id = $1 AND state = 'active'",
    )
    .bind(a.id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(ApplicationJson {
        id: a.id,
        certificate_number: a.certificate_number().to_string(),
        kind: a.kind,
        supersedes: a.supersedes,
        state: a.state,
        name: a.name,
        resident_id: a.resident_id.as_str().to_owned(),
        category: a.category.code(),
        level: a.level.get(),
        region: a.region,
        birth_year: a.birth_year,
        entitlements: entitlement_names(a.entitlements),
        photo_digest: a.photo_digest.map(hex::encode),
        submitted_by: a.submitted_by_name,
        decided_by: a.decided_by_name,
        decided_at: a.decided_at,
        decision_note: a.decision_note,
        created_at: a.created_at,
        active_card: card.map(hex::encode),
    })
}

/// Application states in which a person counts as having a certificate or one in progress.
const LIVE_STATES: &str = "('submitted', 'approved', 'active')";

async fn submit(
    State(state): State<AppState>,
    staff: Staff,
    Json(body): Json<NewApplication>,
) -> ApiResult<(StatusCode, Json<ApplicationJson>)> {
    staff.require(&[Role::Clerk, Role::Admin])?;
    let v = body.validate()?;
    let key = &state.keys.data;
    let blind = key.blind_index(v.resident_id.as_str()).to_vec();
    let mut tx = state.db.begin_write().await?;
    let existing = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id, state FROM applications WHERE blind_index = $1 AND state IN {LIVE_STATES} \
         ORDER BY id"
    )))
    .bind(blind.clone())
    .fetch_all(tx.conn())
    .await?;
    let kind = match body.supersedes {
        None => {
            if let Some(row) = existing.first() {
                let id: i64 = row.try_get("id")?;
                let st: String = row.try_get("state")?;
                return Err(ApiError::conflict(
                    "duplicate_person",
                    format!(
                        "this person already has application {id} ({st}); one certificate per \
                         person: for a new category or level submit a change with \
                         \"supersedes\": {id}, for a lost card start a personalization job"
                    ),
                ));
            }
            "new"
        }
        Some(old_id) => {
            let old = sqlx::query("SELECT blind_index, state FROM applications WHERE id = $1")
                .bind(old_id)
                .fetch_optional(tx.conn())
                .await?
                .ok_or_else(|| {
                    ApiError::not_found(
                        "unknown_application",
                        format!("there is no application {old_id} to supersede"),
                    )
                })?;
            let old_blind: Vec<u8> = old.try_get("blind_index")?;
            let old_state: String = old.try_get("state")?;
            if old_blind != blind {
                return Err(ApiError::invalid(
                    "supersedes_other_person",
                    format!("application {old_id} belongs to another resident ID"),
                ));
            }
            if old_state != "active" {
                return Err(ApiError::conflict(
                    "supersedes_not_active",
                    format!(
                        "application {old_id} is {old_state}; only an active certificate can be \
                         changed"
                    ),
                ));
            }
            for row in &existing {
                let st: String = row.try_get("state")?;
                if st != "active" {
                    let id: i64 = row.try_get("id")?;
                    return Err(ApiError::conflict(
                        "duplicate_person",
                        format!(
                            "this person already has application {id} in progress ({st}); \
                             finish or reject it first"
                        ),
                    ));
                }
            }
            "change"
        }
    };
    let now = i64_of(crate::now());
    let photo_digest = v
        .photo
        .as_ref()
        .map(|p| digest(&SHA256, p).as_ref().to_vec());
    let photo_enc = match &v.photo {
        Some(p) => Some(key.seal(&seal_context("photo", &blind), p)?),
        None => None,
    };
    let inserted = sqlx::query(
        "INSERT INTO applications (blind_index, kind, supersedes, name_enc, resident_id_enc, \
         photo_enc, photo_digest, category, level, region, birth_year, entitlements, state, \
         submitted_by, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'submitted', $13, $14, $15) \
         RETURNING id",
    )
    .bind(blind.clone())
    .bind(kind)
    .bind(body.supersedes)
    .bind(key.seal(&seal_context("name", &blind), v.name.as_bytes())?)
    .bind(key.seal(
        &seal_context("resident_id", &blind),
        v.resident_id.as_str().as_bytes(),
    )?)
    .bind(photo_enc)
    .bind(photo_digest)
    .bind(i64::from(v.category.code()))
    .bind(i64::from(v.level.get()))
    .bind(i64::from(v.region))
    .bind(i64::from(v.birth_year))
    .bind(i64::from(v.entitlements))
    .bind(staff.id)
    .bind(now)
    .bind(now)
    .fetch_one(tx.conn())
    .await;
    let row = match inserted {
        Ok(row) => row,
        Err(e) if is_unique_violation(&e) => {
            return Err(ApiError::conflict(
                "duplicate_person",
                "another application for this person was registered at the same moment",
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let id: i64 = row.try_get("id")?;
    tx.audit(
        &staff.actor(),
        "application.submit",
        format!("application:{id}"),
        serde_json::json!({"kind": kind, "supersedes": body.supersedes}),
    );
    tx.commit().await?;
    let mut conn = state.db.pool().acquire().await?;
    let a = load(&mut conn, key, id).await?;
    Ok((StatusCode::CREATED, Json(to_json(&mut conn, a).await?)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    #[serde(default)]
    after: i64,
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    50
}

const STATES: [&str; 6] = [
    "submitted",
    "approved",
    "rejected",
    "active",
    "superseded",
    "revoked",
];

async fn list(
    State(state): State<AppState>,
    staff: Staff,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<ApplicationJson>>> {
    staff.require(&[Role::Clerk, Role::Approver, Role::Admin])?;
    if let Some(s) = &q.state {
        if !STATES.contains(&s.as_str()) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("state must be one of {}", STATES.join(", ")),
            ));
        }
    }
    let limit = i64::from(q.limit.clamp(1, 200));
    let mut conn = state.db.pool().acquire().await?;
    let rows = match &q.state {
        Some(s) => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {APPLICATION_COLUMNS} {APPLICATION_FROM} \
                 WHERE a.state = $1 AND a.id > $2 ORDER BY a.id LIMIT $3"
            )))
            .bind(s.clone())
            .bind(q.after)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?
        }
        None => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {APPLICATION_COLUMNS} {APPLICATION_FROM} \
                 WHERE a.id > $1 ORDER BY a.id LIMIT $2"
            )))
            .bind(q.after)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?
        }
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let a = application_of_row(row, &state.keys.data)?;
        out.push(to_json(&mut conn, a).await?);
    }
    Ok(Json(out))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    resident_id: String,
}

/// Look-up by resident ID through the blind index (a POST so that the ID never appears in a URL
/// or an access log).
async fn search(
    State(state): State<AppState>,
    staff: Staff,
    Json(body): Json<SearchBody>,
) -> ApiResult<Json<Vec<ApplicationJson>>> {
    staff.require(&[Role::Clerk, Role::Approver, Role::Admin])?;
    let rid = ResidentId::parse(&body.resident_id).map_err(|e| {
        ApiError::invalid(
            format!("resident_id_{}", e.code()),
            format!("the resident ID is not valid: {e}"),
        )
    })?;
    let blind = state.keys.data.blind_index(rid.as_str()).to_vec();
    let mut conn = state.db.pool().acquire().await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {APPLICATION_COLUMNS} {APPLICATION_FROM} WHERE a.blind_index = $1 ORDER BY a.id"
    )))
    .bind(blind)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let a = application_of_row(row, &state.keys.data)?;
        out.push(to_json(&mut conn, a).await?);
    }
    Ok(Json(out))
}

async fn show(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<i64>,
) -> ApiResult<Json<ApplicationJson>> {
    staff.require(&[Role::Clerk, Role::Approver, Role::Admin])?;
    let mut conn = state.db.pool().acquire().await?;
    let a = load(&mut conn, &state.keys.data, id).await?;
    Ok(Json(to_json(&mut conn, a).await?))
}

async fn photo(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<i64>,
) -> ApiResult<impl IntoResponse> {
    staff.require(&[Role::Clerk, Role::Approver, Role::Admin])?;
    let row = sqlx::query("SELECT blind_index, photo_enc FROM applications WHERE id = $1")
        .bind(id)
        .fetch_optional(state.db.pool())
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                "unknown_application",
                format!("there is no application {id}"),
            )
        })?;
    let blind: Vec<u8> = row.try_get("blind_index")?;
    let sealed: Option<Vec<u8>> = row.try_get("photo_enc")?;
    let sealed = sealed
        .ok_or_else(|| ApiError::not_found("no_photo", format!("application {id} has no photo")))?;
    let bytes = state
        .keys
        .data
        .open(&seal_context("photo", &blind), &sealed)?;
    let ct = photo_type(&bytes).unwrap_or("application/octet-stream");
    Ok(([(header::CONTENT_TYPE, ct)], bytes))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

fn check_note(note: &Option<String>) -> ApiResult<()> {
    if let Some(n) = note {
        if n.len() > 500 || n.chars().any(|c| c.is_control() && c != '\n') {
            return Err(ApiError::invalid(
                "invalid_note",
                "a note or reason is at most 500 bytes without control characters",
            ));
        }
    }
    Ok(())
}

async fn approve(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<i64>,
    RawBody(raw): RawBody,
) -> ApiResult<Json<ApplicationJson>> {
    // The body is optional: empty, or `{"note": "..."}`.
    let body: Decision = if raw.iter().all(u8::is_ascii_whitespace) {
        Decision::default()
    } else {
        serde_json::from_slice(&raw).map_err(|e| {
            ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
        })?
    };
    check_note(&body.note)?;
    decide(state, staff, id, true, body.note).await
}

async fn reject(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<i64>,
    Json(body): Json<Decision>,
) -> ApiResult<Json<ApplicationJson>> {
    check_note(&body.reason)?;
    match body.reason.as_deref().map(str::trim) {
        Some(r) if !r.is_empty() => {}
        _ => {
            return Err(ApiError::invalid(
                "reason_required",
                "give the applicant's reason for the rejection in `reason`",
            ))
        }
    }
    decide(state, staff, id, false, body.reason).await
}

/// Approves or rejects, applying the four-eyes rule; a repeat of the same decision by the same
/// approver answers like the first (a retry after a lost answer).
async fn decide(
    state: AppState,
    staff: Staff,
    id: i64,
    approve: bool,
    note: Option<String>,
) -> ApiResult<Json<ApplicationJson>> {
    staff.require(&[Role::Approver, Role::Admin])?;
    let target = if approve { "approved" } else { "rejected" };
    let mut tx = state.db.begin_write().await?;
    let row = sqlx::query(
        "SELECT state, submitted_by, decided_by, kind, supersedes FROM applications WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(tx.conn())
    .await?
    .ok_or_else(|| {
        ApiError::not_found(
            "unknown_application",
            format!("there is no application {id}"),
        )
    })?;
    let current: String = row.try_get("state")?;
    let submitted_by: i64 = row.try_get("submitted_by")?;
    let decided_by: Option<i64> = row.try_get("decided_by")?;
    let supersedes: Option<i64> = row.try_get("supersedes")?;
    if submitted_by == staff.id {
        return Err(ApiError::forbidden(
            "same_user",
            "four-eyes rule: you submitted this application, so another approver must decide it",
        ));
    }
    let repeat = current == target && decided_by == Some(staff.id);
    if !repeat {
        if current != "submitted" {
            return Err(ApiError::conflict(
                "already_decided",
                format!("application {id} is {current}; only a submitted application is decided"),
            ));
        }
        if let (true, Some(old)) = (approve, supersedes) {
            let old_state: Option<String> =
                sqlx::query_scalar("SELECT state FROM applications WHERE id = $1")
                    .bind(old)
                    .fetch_optional(tx.conn())
                    .await?;
            if old_state.as_deref() != Some("active") {
                return Err(ApiError::conflict(
                    "supersedes_not_active",
                    format!(
                        "application {old}, which this one changes, is no longer active; reject \
                         this one and submit a new application"
                    ),
                ));
            }
        }
        let now = i64_of(crate::now());
        sqlx::query(
            "UPDATE applications SET state = $1, decided_by = $2, decided_at = $3, \
             decision_note = $4, updated_at = $5 WHERE id = $6",
        )
        .bind(target)
        .bind(staff.id)
        .bind(now)
        .bind(note)
        .bind(now)
        .bind(id)
        .execute(tx.conn())
        .await?;
        tx.audit(
            &staff.actor(),
            if approve {
                "application.approve"
            } else {
                "application.reject"
            },
            format!("application:{id}"),
            serde_json::json!({}),
        );
        tx.commit().await?;
    } else {
        drop(tx);
    }
    let mut conn = state.db.pool().acquire().await?;
    let a = load(&mut conn, &state.keys.data, id).await?;
    Ok(Json(to_json(&mut conn, a).await?))
}

/// Counts applications per state (for statistics).
pub async fn count_by_state(pool: &sqlx::AnyPool) -> Result<Vec<(String, u64)>, sqlx::Error> {
    let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM applications GROUP BY state")
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("state")?, get_u64(r, "n")?)))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn good() -> NewApplication {
        NewApplication {
            name: " 张三 ".into(),
            resident_id: "11010519491231002X".into(),
            category: 1,
            level: 2,
            region: 110105,
            birth_year: None,
            entitlements: vec!["free_transit".into(), "companion".into()],
            photo: None,
            supersedes: None,
        }
    }

    #[test]
    fn a_good_application_validates() {
        let v = good().validate().unwrap();
        assert_eq!(v.name, "张三");
        assert_eq!(v.birth_year, 1949);
        assert_eq!(v.entitlements, 0x03);
    }

    #[test]
    fn each_rule_has_its_code() {
        type Case = (Box<dyn Fn(&mut NewApplication)>, &'static str);
        let cases: Vec<Case> = vec![
            (Box::new(|a| a.name = "  ".into()), "invalid_name"),
            (Box::new(|a| a.name = "x".repeat(65)), "invalid_name"),
            (Box::new(|a| a.name = "a\u{7}b".into()), "invalid_name"),
            (
                Box::new(|a| a.resident_id = "110105194912310021".into()),
                "resident_id_check_character",
            ),
            (
                Box::new(|a| a.resident_id = "1101051949123100".into()),
                "resident_id_length",
            ),
            (
                Box::new(|a| a.resident_id = "11010519491231002x".into()),
                "resident_id_character",
            ),
            (Box::new(|a| a.category = 8), "invalid_category"),
            (Box::new(|a| a.category = 0), "invalid_category"),
            (Box::new(|a| a.level = 5), "invalid_level"),
            (Box::new(|a| a.region = 12345), "invalid_region"),
            (
                Box::new(|a| a.birth_year = Some(1950)),
                "birth_year_mismatch",
            ),
            (
                Box::new(|a| a.entitlements = vec!["free_lunch".into()]),
                "invalid_entitlement",
            ),
            (
                Box::new(|a| a.entitlements = vec!["companion".into(), "companion".into()]),
                "invalid_entitlement",
            ),
            (Box::new(|a| a.photo = Some("@@@".into())), "invalid_photo"),
            (
                Box::new(|a| {
                    a.photo = Some(base64::engine::general_purpose::STANDARD.encode(b"GIF89a"))
                }),
                "invalid_photo",
            ),
            (
                Box::new(|a| {
                    let mut big = vec![0xFF, 0xD8, 0xFF];
                    big.resize(MAX_PHOTO_BYTES + 1, 0);
                    a.photo = Some(base64::engine::general_purpose::STANDARD.encode(big))
                }),
                "invalid_photo",
            ),
        ];
        for (change, code) in cases {
            let mut a = good();
            change(&mut a);
            let e = a.validate().unwrap_err();
            assert_eq!(e.code(), code, "{e}");
            assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        }
        let mut a = good();
        a.photo = Some(base64::engine::general_purpose::STANDARD.encode(b"\x89PNG\r\n\x1a\nrest"));
        assert!(a.validate().unwrap().photo.is_some());
    }
}
