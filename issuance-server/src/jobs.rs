//! Personalization jobs, card-tool's side of issuance (the contract in docs/api.md):
//!
//! 1. `POST /personalization-jobs` for an approved (or, for a replacement card, active)
//!    application: a card serial, a status index, the attribute values with fresh salts, the
//!    card's SCP03 keys diversified from the office master key, and the root key.
//! 2. `POST /personalization-jobs/{id}/card-key`: the key generated on the card; the answer is
//!    the Issuer-signed credential.
//! 3. `POST /personalization-jobs/{id}/confirm`: the card is written and locked; it becomes the
//!    certificate's active card, and a previous active card of the same person is revoked in
//!    the same transaction.
//!
//! Every step can be repeated with the same answer. A job abandoned half-way is resumed by
//! asking for it again (same application; with another blank card's div data it restarts with
//! that card), so a crash at any moment leaves a job that can be finished.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use shared_crypto::model::{
    attribute_digest, AttributeDigest, AttributeId, AttributeValue, CredentialBody, Entitlements,
    MAX_VALUE_LEN, NONCE_LEN,
};
use shared_crypto::wire::ItemsBuf;
use shared_crypto::{PublicKey, Signer};
use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use sqlx::Row;

use crate::applications::{self, Application};
use crate::auth::{Role, Staff};
use crate::db::{get_array, get_u64, i64_of, WriteTx};
use crate::error::{hex_array, ApiError, ApiResult, Json, Path};
use crate::keys::{random_bytes, OfficeKeys, RingSigner};
use crate::AppState;

/// The job endpoints.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/personalization-jobs", post(create))
        .route("/personalization-jobs/{id}", get(show))
        .route("/personalization-jobs/{id}/card-key", post(card_key))
        .route("/personalization-jobs/{id}/confirm", post(confirm))
}

/// One attribute for the card: id, salt and canonical value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobAttribute {
    /// Attribute id.
    pub attribute: u8,
    /// 16-byte salt (hex).
    pub salt: String,
    /// Canonical value bytes (hex).
    pub value: String,
}

/// The card's static SCP03 keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scp03Json {
    /// Key version number.
    pub kvn: u8,
    /// Key-ENC (hex).
    pub enc: String,
    /// Key-MAC (hex).
    pub mac: String,
    /// Key-DEK (hex).
    pub dek: String,
}

/// A personalization job as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobJson {
    /// Job id.
    pub job_id: i64,
    /// The application (certificate) it issues a card for.
    pub application_id: i64,
    /// `created`, `key_bound` or `completed`.
    pub state: String,
    /// Card serial (hex, 8 bytes).
    pub card_serial: String,
    /// Status index.
    pub status_index: u32,
    /// The card's SCP03 keys.
    pub scp03: Scp03Json,
    /// Root public key (hex, 33 bytes).
    pub root_key: String,
    /// Start of validity.
    pub valid_from: u64,
    /// End of validity.
    pub valid_until: u64,
    /// Attributes in id order.
    pub attributes: Vec<JobAttribute>,
    /// Welfare points on the new card.
    pub initial_points: u32,
}

/// One attribute of a card: its id, its fresh salt and its canonical value bytes.
pub type SaltedAttribute = (AttributeId, [u8; NONCE_LEN], Vec<u8>);

/// The stored form of a credential's digests: `id (1 byte) || digest (16 bytes)` per attribute,
/// in id order.
pub fn digests_raw(attrs: &[SaltedAttribute]) -> Vec<u8> {
    let mut out = Vec::with_capacity(attrs.len() * 17);
    for (id, salt, value) in attrs {
        out.push(*id as u8);
        out.extend_from_slice(&attribute_digest(salt, *id, value));
    }
    out
}

/// The digest list of a credential from its stored form.
pub fn digest_items(raw: &[u8]) -> anyhow::Result<ItemsBuf> {
    let mut items = ItemsBuf::new();
    for chunk in raw.chunks(17) {
        let (&id, digest) = chunk
            .split_first()
            .ok_or_else(|| anyhow::anyhow!("empty digest entry"))?;
        let attribute =
            AttributeId::try_from(id).map_err(|_| anyhow::anyhow!("stored attribute id {id}"))?;
        let digest: [u8; 16] = digest
            .try_into()
            .map_err(|_| anyhow::anyhow!("stored digest has the wrong length"))?;
        items.push(&AttributeDigest { attribute, digest });
    }
    Ok(items)
}

/// What a credential binds.
#[derive(Debug, Clone, Copy)]
pub struct CredentialFields<'a> {
    /// Card serial.
    pub serial: [u8; 8],
    /// Status index.
    pub status_index: u32,
    /// Start of validity.
    pub valid_from: u64,
    /// End of validity.
    pub valid_until: u64,
    /// The card's key (compressed SEC1).
    pub card_key: [u8; 33],
    /// Stored digests ([`digests_raw`]).
    pub digests: &'a [u8],
}

/// Signs a credential with the Issuer key; returns the wire bytes.
pub fn sign_credential(issuer: &RingSigner, f: &CredentialFields<'_>) -> anyhow::Result<Vec<u8>> {
    let items = digest_items(f.digests)?;
    let body = CredentialBody {
        card_serial: f.serial,
        status_index: f.status_index,
        valid_from: f.valid_from,
        valid_until: f.valid_until,
        card_key: shared_crypto::sig::PublicKeyBytes::from(shared_crypto::wire::ByteArray(
            f.card_key,
        )),
        digests: items.as_items(),
    };
    shared_crypto::sig::sign(&body, &[], issuer)
        .map_err(|_| anyhow::anyhow!("signing the credential failed"))
}

/// The attribute values of an application's card, each with a fresh salt, in id order.
fn attributes_of(a: &Application, valid_until: u64) -> ApiResult<Vec<SaltedAttribute>> {
    let mut values = vec![
        AttributeValue::Name(&a.name),
        AttributeValue::CertificateNumber(a.certificate_number()),
        AttributeValue::Category(a.category),
        AttributeValue::Level(a.level),
        AttributeValue::Region(a.region),
        AttributeValue::BirthYear(a.birth_year),
        AttributeValue::Entitlements(Entitlements(a.entitlements)),
    ];
    if let Some(d) = a.photo_digest {
        values.push(AttributeValue::PhotoDigest(d));
    }
    values.push(AttributeValue::CertificateExpiry(valid_until));
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        let mut buf = [0u8; MAX_VALUE_LEN];
        let bytes = v.encode(&mut buf).to_vec();
        out.push((v.id(), random_bytes::<NONCE_LEN>()?, bytes));
    }
    Ok(out)
}

fn attributes_context(serial: &[u8]) -> Vec<u8> {
    let mut c = b"job.attributes|".to_vec();
    c.extend_from_slice(serial);
    c
}

/// A job row.
struct Job {
    id: i64,
    application_id: i64,
    state: String,
    serial: [u8; 8],
    status_index: u32,
    div_data: [u8; 10],
    valid_from: u64,
    valid_until: u64,
    attributes_enc: Vec<u8>,
    digests: Vec<u8>,
    initial_points: u32,
    card_key: Option<Vec<u8>>,
    credential: Option<Vec<u8>>,
}

const JOB_COLUMNS: &str = "id, application_id, state, card_serial, status_index, div_data, \
     valid_from, valid_until, attributes_enc, digests, initial_points, card_key, credential";

fn job_of_row(row: &AnyRow) -> ApiResult<Job> {
    let index = get_u64(row, "status_index")?;
    let points = get_u64(row, "initial_points")?;
    Ok(Job {
        id: row.try_get("id")?,
        application_id: row.try_get("application_id")?,
        state: row.try_get("state")?,
        serial: get_array(row, "card_serial")?,
        status_index: u32::try_from(index).map_err(|_| anyhow::anyhow!("index out of range"))?,
        div_data: get_array(row, "div_data")?,
        valid_from: get_u64(row, "valid_from")?,
        valid_until: get_u64(row, "valid_until")?,
        attributes_enc: row.try_get("attributes_enc")?,
        digests: row.try_get("digests")?,
        initial_points: u32::try_from(points).map_err(|_| anyhow::anyhow!("points"))?,
        card_key: row.try_get("card_key")?,
        credential: row.try_get("credential")?,
    })
}

async fn load_job(conn: &mut AnyConnection, id: i64) -> ApiResult<Job> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM personalization_jobs WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| {
        ApiError::not_found(
            "unknown_job",
            format!("there is no personalization job {id}; create one for the application"),
        )
    })?;
    job_of_row(&row)
}

fn job_json(keys: &OfficeKeys, kvn: u8, job: &Job) -> ApiResult<JobJson> {
    let plain = keys
        .data
        .open(&attributes_context(&job.serial), &job.attributes_enc)?;
    let attributes: Vec<JobAttribute> =
        serde_json::from_slice(&plain).map_err(anyhow::Error::from)?;
    let k = keys.card_keys(&job.div_data);
    Ok(JobJson {
        job_id: job.id,
        application_id: job.application_id,
        state: job.state.clone(),
        card_serial: hex::encode(job.serial),
        status_index: job.status_index,
        scp03: Scp03Json {
            kvn,
            enc: hex::encode(k.enc),
            mac: hex::encode(k.mac),
            dek: hex::encode(k.dek),
        },
        root_key: hex::encode(keys.root.public_key().to_sec1()),
        valid_from: job.valid_from,
        valid_until: job.valid_until,
        attributes,
        initial_points: job.initial_points,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewJob {
    application_id: i64,
    card_div_data: String,
}

/// Whether the certificate may get a card: approved (first card) or active (a replacement); a
/// change must still have an active certificate to replace.
async fn check_issuable(tx: &mut WriteTx, a: &Application) -> ApiResult<()> {
    if a.state != "approved" && a.state != "active" {
        return Err(ApiError::conflict(
            "application_not_approved",
            format!(
                "application {} is {}; a card is made only for an approved application (or an \
                 active one, to replace a lost card)",
                a.id, a.state
            ),
        ));
    }
    if let (Some(old), "approved") = (a.supersedes, a.state.as_str()) {
        let st: Option<String> = sqlx::query_scalar("SELECT state FROM applications WHERE id = $1")
            .bind(old)
            .fetch_optional(tx.conn())
            .await?;
        if st.as_deref() != Some("active") {
            return Err(ApiError::conflict(
                "supersedes_not_active",
                format!("application {old}, which this one changes, is no longer active"),
            ));
        }
    }
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    staff: Staff,
    Json(body): Json<NewJob>,
) -> ApiResult<(StatusCode, Json<JobJson>)> {
    staff.require(&[Role::Clerk, Role::Admin])?;
    let div: [u8; 10] = hex_array("card_div_data", &body.card_div_data)?;
    let keys = &state.keys;
    let mut tx = state.db.begin_write().await?;
    let a = applications::load(tx.conn(), &keys.data, body.application_id).await?;
    check_issuable(&mut tx, &a).await?;

    let open = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM personalization_jobs \
         WHERE application_id = $1 AND state IN ('created', 'key_bound')"
    )))
    .bind(a.id)
    .fetch_optional(tx.conn())
    .await?;
    if let Some(row) = open {
        let mut job = job_of_row(&row)?;
        if job.div_data != div {
            // Another blank card: its keys differ and a credential bound to the old card's key
            // is useless, so the job starts again from `created` (same serial and index).
            sqlx::query(
                "UPDATE personalization_jobs SET div_data = $1, state = 'created', \
                 card_key = NULL, credential = NULL, updated_at = $2 WHERE id = $3",
            )
            .bind(div.to_vec())
            .bind(i64_of(crate::now()))
            .bind(job.id)
            .execute(tx.conn())
            .await?;
            tx.audit(
                &staff.actor(),
                "job.restart",
                format!("job:{}", job.id),
                serde_json::json!({"application": a.id}),
            );
            tx.commit().await?;
            job.div_data = div;
            job.state = "created".into();
        }
        return Ok((
            StatusCode::OK,
            Json(job_json(keys, state.config.scp03_kvn, &job)?),
        ));
    }

    // A fresh serial; writers are serialized, so checking first is race-free.
    let serial = loop {
        let s = random_bytes::<8>()?;
        let used: Option<i64> =
            sqlx::query_scalar("SELECT id FROM personalization_jobs WHERE card_serial = $1")
                .bind(s.to_vec())
                .fetch_optional(tx.conn())
                .await?;
        if used.is_none() {
            break s;
        }
    };
    let status_index = crate::status::allocate_index(&mut tx).await?;
    let now = crate::now();
    let valid_until = now + state.config.credential_validity_s();
    let attrs = attributes_of(&a, valid_until)?;
    let json_attrs: Vec<JobAttribute> = attrs
        .iter()
        .map(|(id, salt, value)| JobAttribute {
            attribute: *id as u8,
            salt: hex::encode(salt),
            value: hex::encode(value),
        })
        .collect();
    let sealed = keys.data.seal(
        &attributes_context(&serial),
        &serde_json::to_vec(&json_attrs).map_err(anyhow::Error::from)?,
    )?;
    let points = if a.entitlements & Entitlements::WELFARE_POINTS != 0 {
        state.config.welfare_initial_points
    } else {
        0
    };
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO personalization_jobs (application_id, state, card_serial, status_index, \
         div_data, valid_from, valid_until, attributes_enc, digests, initial_points, created_by, \
         created_at, updated_at) \
         VALUES ($1, 'created', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
    )
    .bind(a.id)
    .bind(serial.to_vec())
    .bind(i64::from(status_index))
    .bind(div.to_vec())
    .bind(i64_of(now))
    .bind(i64_of(valid_until))
    .bind(sealed)
    .bind(digests_raw(&attrs))
    .bind(i64::from(points))
    .bind(staff.id)
    .bind(i64_of(now))
    .bind(i64_of(now))
    .fetch_one(tx.conn())
    .await?;
    tx.audit(
        &staff.actor(),
        "job.create",
        format!("job:{id}"),
        serde_json::json!({
            "application": a.id,
            "card_serial": hex::encode(serial),
            "status_index": status_index,
        }),
    );
    tx.commit().await?;
    let mut conn = state.db.pool().acquire().await?;
    let job = load_job(&mut conn, id).await?;
    Ok((
        StatusCode::CREATED,
        Json(job_json(keys, state.config.scp03_kvn, &job)?),
    ))
}

async fn show(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<i64>,
) -> ApiResult<Json<JobJson>> {
    staff.require(&[Role::Clerk, Role::Admin])?;
    let mut conn = state.db.pool().acquire().await?;
    let job = load_job(&mut conn, id).await?;
    Ok(Json(job_json(&state.keys, state.config.scp03_kvn, &job)?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CardKeyBody {
    card_public_key: String,
}

fn parse_card_key(s: &str) -> ApiResult<[u8; 33]> {
    let bytes: [u8; 33] = hex_array("card_public_key", s)?;
    PublicKey::from_sec1(&bytes).map_err(|_| {
        ApiError::invalid(
            "invalid_card_public_key",
            "card_public_key is not a compressed P-256 point (33 bytes, 02 or 03 first)",
        )
    })?;
    Ok(bytes)
}

async fn card_key(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<i64>,
    Json(body): Json<CardKeyBody>,
) -> ApiResult<Json<serde_json::Value>> {
    staff.require(&[Role::Clerk, Role::Admin])?;
    let key = parse_card_key(&body.card_public_key)?;
    let mut tx = state.db.begin_write().await?;
    let job = load_job(tx.conn(), id).await?;
    let same_key = job.card_key.as_deref() == Some(&key[..]);
    if job.state == "completed" && !same_key {
        return Err(ApiError::conflict(
            "job_completed",
            format!("job {id} is completed with another card; start a new job for a new card"),
        ));
    }
    if same_key {
        if let Some(c) = &job.credential {
            return Ok(Json(serde_json::json!({"credential": hex::encode(c)})));
        }
    }
    let a = applications::load(tx.conn(), &state.keys.data, job.application_id).await?;
    check_issuable(&mut tx, &a).await?;
    let used: Option<i64> = sqlx::query_scalar("SELECT id FROM cards WHERE card_key = $1")
        .bind(key.to_vec())
        .fetch_optional(tx.conn())
        .await?;
    let used_by_job: Option<i64> =
        sqlx::query_scalar("SELECT id FROM personalization_jobs WHERE card_key = $1 AND id <> $2")
            .bind(key.to_vec())
            .bind(id)
            .fetch_optional(tx.conn())
            .await?;
    if used.is_some() || used_by_job.is_some() {
        return Err(ApiError::conflict(
            "card_key_in_use",
            "this public key belongs to another card: every card generates its own key",
        ));
    }
    let credential = sign_credential(
        &state.keys.issuer,
        &CredentialFields {
            serial: job.serial,
            status_index: job.status_index,
            valid_from: job.valid_from,
            valid_until: job.valid_until,
            card_key: key,
            digests: &job.digests,
        },
    )?;
    sqlx::query(
        "UPDATE personalization_jobs SET state = 'key_bound', card_key = $1, credential = $2, \
         updated_at = $3 WHERE id = $4",
    )
    .bind(key.to_vec())
    .bind(credential.clone())
    .bind(i64_of(crate::now()))
    .bind(id)
    .execute(tx.conn())
    .await?;
    tx.audit(
        &staff.actor(),
        "job.bind_key",
        format!("job:{id}"),
        serde_json::json!({
            "card_key_id": hex::encode(shared_crypto::sig::key_id_of(&key)),
            "replaced": job.card_key.is_some(),
        }),
    );
    tx.commit().await?;
    Ok(Json(
        serde_json::json!({"credential": hex::encode(credential)}),
    ))
}

async fn confirm(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<i64>,
    Json(body): Json<CardKeyBody>,
) -> ApiResult<Json<JobJson>> {
    staff.require(&[Role::Clerk, Role::Admin])?;
    let key = parse_card_key(&body.card_public_key)?;
    let keys = &state.keys;
    let mut tx = state.db.begin_write().await?;
    let mut job = load_job(tx.conn(), id).await?;
    let Some(bound) = job.card_key.clone() else {
        return Err(ApiError::conflict(
            "no_card_key",
            format!("job {id} has no card key yet: submit it to /card-key first"),
        ));
    };
    if bound != key {
        return Err(ApiError::conflict(
            "key_mismatch",
            "this is not the key the credential was issued for: confirm with the card that \
             received the credential",
        ));
    }
    if job.state == "completed" {
        drop(tx);
        return Ok(Json(job_json(keys, state.config.scp03_kvn, &job)?));
    }
    let a = applications::load(tx.conn(), &keys.data, job.application_id).await?;
    check_issuable(&mut tx, &a).await?;
    let credential = job
        .credential
        .clone()
        .ok_or_else(|| anyhow::anyhow!("key_bound job without credential"))?;

    // Any active card of this person (a lost card being replaced, or the card of the
    // certificate a change supersedes) is revoked first: never two active cards.
    let previous = sqlx::query(
        "SELECT id, status_index, application_id, serial FROM cards \
         WHERE blind_index = $1 AND state = 'active'",
    )
    .bind(a.blind_index.clone())
    .fetch_all(tx.conn())
    .await?;
    let mut revoked = Vec::new();
    for row in &previous {
        let card_id: i64 = row.try_get("id")?;
        let index = u32::try_from(get_u64(row, "status_index")?)
            .map_err(|_| anyhow::anyhow!("status index out of range"))?;
        let serial: Vec<u8> = row.try_get("serial")?;
        revoked.push((card_id, index, hex::encode(serial)));
    }
    if !revoked.is_empty() {
        let list: Vec<(i64, u32)> = revoked.iter().map(|(c, i, _)| (*c, *i)).collect();
        let epoch = crate::status::revoke(&mut tx, &list, 3).await?;
        for (_, _, serial) in &revoked {
            tx.audit(
                &staff.actor(),
                "card.revoke",
                format!("card:{serial}"),
                serde_json::json!({"reason": "replaced", "epoch": epoch.epoch, "by_job": id}),
            );
        }
    }
    if let Some(old) = a.supersedes {
        sqlx::query(
            "UPDATE applications SET state = 'superseded', updated_at = $1 \
             WHERE id = $2 AND state = 'active'",
        )
        .bind(i64_of(crate::now()))
        .bind(old)
        .execute(tx.conn())
        .await?;
    }
    let now = i64_of(crate::now());
    let card_id: i64 = sqlx::query_scalar(
        "INSERT INTO cards (serial, application_id, blind_index, job_id, status_index, card_key, \
         digests, state, voucher_seq, activated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', 0, $8) RETURNING id",
    )
    .bind(job.serial.to_vec())
    .bind(a.id)
    .bind(a.blind_index.clone())
    .bind(job.id)
    .bind(i64::from(job.status_index))
    .bind(key.to_vec())
    .bind(job.digests.clone())
    .bind(now)
    .fetch_one(tx.conn())
    .await?;
    sqlx::query(
        "INSERT INTO credentials (card_id, issuer_key_id, valid_from, valid_until, wire, \
         created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(card_id)
    .bind(keys.issuer.key_id().to_vec())
    .bind(i64_of(job.valid_from))
    .bind(i64_of(job.valid_until))
    .bind(credential)
    .bind(now)
    .execute(tx.conn())
    .await?;
    sqlx::query(
        "UPDATE personalization_jobs SET state = 'completed', updated_at = $1 WHERE id = $2",
    )
    .bind(now)
    .bind(job.id)
    .execute(tx.conn())
    .await?;
    sqlx::query("UPDATE applications SET state = 'active', updated_at = $1 WHERE id = $2")
        .bind(now)
        .bind(a.id)
        .execute(tx.conn())
        .await?;
    tx.audit(
        &staff.actor(),
        "job.confirm",
        format!("job:{id}"),
        serde_json::json!({
            "application": a.id,
            "card_serial": hex::encode(job.serial),
            "replaced": revoked.iter().map(|(_, _, s)| s.clone()).collect::<Vec<_>>(),
        }),
    );
    tx.commit().await?;
    job.state = "completed".into();
    Ok(Json(job_json(keys, state.config.scp03_kvn, &job)?))
}
