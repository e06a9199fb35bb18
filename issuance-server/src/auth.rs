//! Staff accounts, bearer tokens and roles.
//!
//! A token is 32 random bytes shown once as 64 hex digits; the database keeps only its SHA-256.
//! Roles: `clerk` (applications, personalization jobs), `approver` (approve/reject, revoke,
//! vouchers, block orders), `auditor` (audit log, statistics), `admin` (everything, and users,
//! terminals, service rules).

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use ring::digest::{digest, SHA256};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::db::{get_u64, is_unique_violation, WriteTx};
use crate::error::{ApiError, ApiResult, Json, Path};
use crate::AppState;

/// A staff role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Registers applicants and runs personalization jobs.
    Clerk,
    /// Approves or rejects applications (not their own), revokes cards, grants points.
    Approver,
    /// Reads the audit log and statistics.
    Auditor,
    /// Everything, plus users, terminals and service rules.
    Admin,
}

impl Role {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Clerk => "clerk",
            Role::Approver => "approver",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    /// Parses [`Role::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        [Role::Clerk, Role::Approver, Role::Auditor, Role::Admin]
            .into_iter()
            .find(|r| r.name() == s)
    }
}

/// SHA-256 of a token as stored.
pub fn token_hash(token: &str) -> Vec<u8> {
    digest(&SHA256, token.as_bytes()).as_ref().to_vec()
}

/// A fresh token (64 hex digits).
pub fn new_token() -> anyhow::Result<String> {
    Ok(hex::encode(crate::keys::random_bytes::<32>()?))
}

/// The authenticated member of staff making a request.
#[derive(Debug, Clone)]
pub struct Staff {
    /// User id.
    pub id: i64,
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
}

impl Staff {
    /// Refuses (403 `wrong_role`) unless the user has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> ApiResult<()> {
        if roles.contains(&self.role) {
            return Ok(());
        }
        let names: Vec<&str> = roles.iter().map(|r| r.name()).collect();
        Err(ApiError::forbidden(
            "wrong_role",
            format!(
                "this needs the role {}; your account `{}` is {}",
                names.join(" or "),
                self.name,
                self.role.name()
            ),
        ))
    }

    /// The audit actor string.
    pub fn actor(&self) -> String {
        format!("user:{}", self.name)
    }
}

impl FromRequestParts<AppState> for Staff {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let missing = || {
            ApiError::unauthorized(
                "unauthorized",
                "send your staff token as `Authorization: Bearer <token>`",
            )
        };
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(missing)?
            .to_str()
            .map_err(|_| missing())?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(missing)?
            .trim();
        let row = sqlx::query("SELECT id, name, role, active FROM users WHERE token_hash = $1")
            .bind(token_hash(token))
            .fetch_optional(state.db.pool())
            .await?;
        let invalid = || {
            ApiError::unauthorized(
                "invalid_token",
                "this token is not valid (unknown or disabled account); ask an admin for a new one",
            )
        };
        let row = row.ok_or_else(invalid)?;
        let active: i64 = row.try_get("active")?;
        if active != 1 {
            return Err(invalid());
        }
        let role: String = row.try_get("role")?;
        Ok(Staff {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            role: Role::from_name(&role)
                .ok_or_else(|| anyhow::anyhow!("user has an unknown role in the database"))?,
        })
    }
}

/// Checks a login name: 1 to 64 of `A-Z a-z 0-9 . _ @ -`.
pub fn check_user_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "invalid_user_name",
            "a user name is 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '@' and '-'",
        ))
    }
}

/// Creates a user inside `tx`; returns the id and the token (shown once).
pub async fn create_user(
    tx: &mut WriteTx,
    actor: &str,
    name: &str,
    role: Role,
) -> ApiResult<(i64, String)> {
    check_user_name(name)?;
    let token = new_token()?;
    let r = sqlx::query(
        "INSERT INTO users (name, role, token_hash, active, created_at) \
         VALUES ($1, $2, $3, 1, $4) RETURNING id",
    )
    .bind(name)
    .bind(role.name())
    .bind(token_hash(&token))
    .bind(crate::db::i64_of(crate::now()))
    .fetch_one(tx.conn())
    .await;
    let row = match r {
        Ok(row) => row,
        Err(e) if is_unique_violation(&e) => {
            return Err(ApiError::conflict(
                "duplicate_user",
                format!("a user named `{name}` exists already; choose another name"),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let id: i64 = row.try_get("id")?;
    tx.audit(
        actor,
        "user.create",
        format!("user:{id}"),
        serde_json::json!({"name": name, "role": role.name()}),
    );
    Ok((id, token))
}

/// Staff endpoints.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users", post(add).get(list))
        .route("/users/{id}/disable", post(disable))
        .route("/me", get(me))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    role: Role,
}

/// A user as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct UserJson {
    /// Id.
    pub id: i64,
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Whether the account may log in.
    pub active: bool,
    /// The token, only in the answer that created it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

async fn add(
    State(state): State<AppState>,
    staff: Staff,
    Json(body): Json<NewUser>,
) -> ApiResult<(StatusCode, Json<UserJson>)> {
    staff.require(&[Role::Admin])?;
    let mut tx = state.db.begin_write().await?;
    let (id, token) = create_user(&mut tx, &staff.actor(), &body.name, body.role).await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(UserJson {
            id,
            name: body.name,
            role: body.role,
            active: true,
            token: Some(token),
        }),
    ))
}

fn user_of_row(row: &sqlx::any::AnyRow) -> ApiResult<UserJson> {
    let role: String = row.try_get("role")?;
    let active: i64 = row.try_get("active")?;
    Ok(UserJson {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: Role::from_name(&role).ok_or_else(|| anyhow::anyhow!("unknown role in database"))?,
        active: active == 1,
        token: None,
    })
}

async fn list(State(state): State<AppState>, staff: Staff) -> ApiResult<Json<Vec<UserJson>>> {
    staff.require(&[Role::Admin])?;
    let rows = sqlx::query("SELECT id, name, role, active FROM users ORDER BY id")
        .fetch_all(state.db.pool())
        .await?;
    rows.iter()
        .map(user_of_row)
        .collect::<ApiResult<_>>()
        .map(Json)
}

async fn disable(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<i64>,
) -> ApiResult<Json<UserJson>> {
    staff.require(&[Role::Admin])?;
    if id == staff.id {
        return Err(ApiError::conflict(
            "cannot_disable_self",
            "you cannot disable your own account; ask another admin",
        ));
    }
    let mut tx = state.db.begin_write().await?;
    let row = sqlx::query("SELECT id, name, role, active FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(tx.conn())
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_user", format!("there is no user {id}")))?;
    let mut user = user_of_row(&row)?;
    if user.active {
        sqlx::query("UPDATE users SET active = 0 WHERE id = $1")
            .bind(id)
            .execute(tx.conn())
            .await?;
        tx.audit(
            &staff.actor(),
            "user.disable",
            format!("user:{id}"),
            serde_json::json!({}),
        );
        tx.commit().await?;
        user.active = false;
    }
    Ok(Json(user))
}

async fn me(staff: Staff) -> Json<serde_json::Value> {
    Json(serde_json::json!({"id": staff.id, "name": staff.name, "role": staff.role}))
}

/// Counts users (for `init`'s refusal check).
pub async fn user_count(pool: &sqlx::AnyPool) -> Result<u64, sqlx::Error> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM users")
        .fetch_one(pool)
        .await?;
    get_u64(&row, "n")
}
