//! The hash-chained audit log.
//!
//! Row `n` stores `prev_hash` (the hash of row `n - 1`, 32 zero bytes for row 1) and
//! `hash = SHA-256(prev_hash || canonical(row))`, where the canonical form is
//! `"audit-v1" || seq (u64 BE) || at (u64 BE)` followed by actor, action, object and details, each
//! as a u32 BE length and its UTF-8 bytes. Sequence numbers run 1, 2, 3, ... without gaps, and the
//! one-row `audit_head` table holds the last sequence number and hash.
//!
//! [`verify`] walks the chain and reports the first broken row: an edited row no longer matches
//! its hash; a deleted row leaves a gap in the numbers (or, at the end, a head that points past
//! the log); an inserted row either breaks the numbering, or breaks the `prev_hash` link of the
//! row after it, or (at the end) does not match the head. The head is the anchor: print it with
//! `issuance-server audit verify` and keep it elsewhere to detect a rewrite of the whole chain.

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use ring::digest::{digest, SHA256};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use sqlx::{AnyPool, Row};

use crate::auth::{Role, Staff};
use crate::db::{get_array, get_u64, i64_of};
use crate::error::{ApiResult, Json, Query};
use crate::AppState;

/// The chain's head: the last sequence number and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Last sequence number (0 for an empty log).
    pub seq: u64,
    /// Hash of that row (zeros for an empty log).
    pub hash: [u8; 32],
    /// Whether the `audit_head` row exists yet.
    exists: bool,
}

impl Head {
    /// The head of an empty log.
    pub fn genesis() -> Self {
        Head {
            seq: 0,
            hash: [0u8; 32],
            exists: false,
        }
    }

    /// Reads `seq, hash` from an `audit_head` row.
    pub fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Head {
            seq: get_u64(row, "seq")?,
            hash: get_array(row, "hash")?,
            exists: true,
        })
    }
}

/// One audit entry before it is chained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Unix seconds.
    pub at: u64,
    /// Who: `user:<name>`, `cli`, `system` or `terminal:<key id>`.
    pub actor: String,
    /// What, as `object.verb` (`application.approve`, ...).
    pub action: String,
    /// The object's id (`application:12`, `card:0011..`).
    pub object: String,
    /// JSON details (never personal data).
    pub details: String,
}

/// The canonical bytes of a row (see the module documentation).
pub fn canonical(seq: u64, e: &AuditEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        8 + 16 + 16 + e.actor.len() + e.action.len() + e.object.len() + e.details.len(),
    );
    out.extend_from_slice(b"audit-v1");
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&e.at.to_be_bytes());
    for field in [&e.actor, &e.action, &e.object, &e.details] {
        let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out
}

/// `SHA-256(prev_hash || canonical(row))`.
pub fn chain_hash(prev: &[u8; 32], seq: u64, e: &AuditEntry) -> [u8; 32] {
    let mut input = prev.to_vec();
    input.extend_from_slice(&canonical(seq, e));
    let d = digest(&SHA256, &input);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Appends `entries` after `head` inside the caller's transaction and moves the head.
pub async fn append(
    conn: &mut AnyConnection,
    head: Head,
    entries: &[AuditEntry],
) -> Result<Head, sqlx::Error> {
    let mut cur = head;
    for e in entries {
        let seq = cur.seq + 1;
        let hash = chain_hash(&cur.hash, seq, e);
        sqlx::query(
            "INSERT INTO audit_log (seq, at, actor, action, object, details, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(i64_of(seq))
        .bind(i64_of(e.at))
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.object)
        .bind(&e.details)
        .bind(cur.hash.to_vec())
        .bind(hash.to_vec())
        .execute(&mut *conn)
        .await?;
        cur = Head {
            seq,
            hash,
            exists: cur.exists,
        };
    }
    if head.exists {
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(i64_of(cur.seq))
            .bind(cur.hash.to_vec())
            .execute(&mut *conn)
            .await?;
    } else {
        sqlx::query("INSERT INTO audit_head (id, seq, hash) VALUES (1, $1, $2)")
            .bind(i64_of(cur.seq))
            .bind(cur.hash.to_vec())
            .execute(&mut *conn)
            .await?;
    }
    cur.exists = true;
    Ok(cur)
}

/// The first thing wrong with the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Broken {
    /// Rows are missing: the numbers jump.
    #[error("audit row {expected} is missing (the next row is {found}): rows were deleted")]
    Gap {
        /// The sequence number expected.
        expected: u64,
        /// The one found.
        found: u64,
    },
    /// A row's `prev_hash` does not match the row before it.
    #[error(
        "audit row {seq} does not continue row {}: a row was inserted or replaced before it",
        seq - 1
    )]
    Link {
        /// The row.
        seq: u64,
    },
    /// A row's content does not match its hash.
    #[error("audit row {seq} was edited: its content does not match its hash")]
    Edited {
        /// The row.
        seq: u64,
    },
    /// The log ends before the head.
    #[error(
        "the audit log ends at row {last} but its head is row {head}: rows were deleted at the end"
    )]
    Truncated {
        /// Last row present.
        last: u64,
        /// The head's row.
        head: u64,
    },
    /// Rows after the head, or a head whose hash is not the last row's.
    #[error("the audit log's head (row {head}) does not match its last row {last}: rows were added or the head was changed")]
    Head {
        /// Last row present.
        last: u64,
        /// The head's row.
        head: u64,
    },
    /// The head row is missing.
    #[error("the audit head is missing")]
    NoHead,
}

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// Number of rows.
    pub rows: u64,
    /// Hash of the last row (hex): keep it elsewhere to detect a rewrite of the whole chain.
    pub head_hash: String,
}

/// Walks the whole chain (see the module documentation).
pub async fn verify(pool: &AnyPool) -> anyhow::Result<Result<Verified, Broken>> {
    let head_row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_optional(pool)
        .await?;
    let Some(head_row) = head_row else {
        return Ok(Err(Broken::NoHead));
    };
    let head = Head::from_row(&head_row)?;
    let mut prev = [0u8; 32];
    let mut last = 0u64;
    loop {
        let rows = sqlx::query(
            "SELECT seq, at, actor, action, object, details, prev_hash, hash FROM audit_log \
             WHERE seq > $1 ORDER BY seq LIMIT 5000",
        )
        .bind(i64_of(last))
        .fetch_all(pool)
        .await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let seq = get_u64(row, "seq")?;
            if seq != last + 1 {
                return Ok(Err(Broken::Gap {
                    expected: last + 1,
                    found: seq,
                }));
            }
            let stored_prev: Vec<u8> = row.try_get("prev_hash")?;
            if stored_prev != prev {
                return Ok(Err(Broken::Link { seq }));
            }
            let entry = AuditEntry {
                at: get_u64(row, "at")?,
                actor: row.try_get("actor")?,
                action: row.try_get("action")?,
                object: row.try_get("object")?,
                details: row.try_get("details")?,
            };
            let stored: Vec<u8> = row.try_get("hash")?;
            let hash = chain_hash(&prev, seq, &entry);
            if stored != hash {
                return Ok(Err(Broken::Edited { seq }));
            }
            prev = hash;
            last = seq;
        }
    }
    if last < head.seq {
        return Ok(Err(Broken::Truncated {
            last,
            head: head.seq,
        }));
    }
    if last != head.seq || prev != head.hash {
        return Ok(Err(Broken::Head {
            last,
            head: head.seq,
        }));
    }
    Ok(Ok(Verified {
        rows: last,
        head_hash: hex::encode(prev),
    }))
}

/// The audit endpoints (auditor, admin).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/audit", get(list))
        .route("/audit/verify", get(verify_endpoint))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    after: u64,
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    100
}

/// One audit row as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct AuditRow {
    /// Sequence number.
    pub seq: u64,
    /// Unix seconds.
    pub at: u64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub object: String,
    /// Details.
    pub details: serde_json::Value,
    /// Hash of the row (hex).
    pub hash: String,
}

async fn list(
    State(state): State<AppState>,
    staff: Staff,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<AuditRow>>> {
    staff.require(&[Role::Auditor, Role::Admin])?;
    let limit = q.limit.clamp(1, 1000);
    let rows = sqlx::query(
        "SELECT seq, at, actor, action, object, details, hash FROM audit_log \
         WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(i64_of(q.after))
    .bind(i64::from(limit))
    .fetch_all(state.db.pool())
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let details: String = row.try_get("details")?;
        let hash: Vec<u8> = row.try_get("hash")?;
        out.push(AuditRow {
            seq: get_u64(&row, "seq")?,
            at: get_u64(&row, "at")?,
            actor: row.try_get("actor")?,
            action: row.try_get("action")?,
            object: row.try_get("object")?,
            details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
            hash: hex::encode(hash),
        });
    }
    Ok(Json(out))
}

async fn verify_endpoint(
    State(state): State<AppState>,
    staff: Staff,
) -> ApiResult<Json<serde_json::Value>> {
    staff.require(&[Role::Auditor, Role::Admin])?;
    Ok(Json(match verify(state.db.pool()).await? {
        Ok(v) => serde_json::json!({"ok": true, "rows": v.rows, "head_hash": v.head_hash}),
        Err(b) => serde_json::json!({"ok": false, "problem": b, "message": b.to_string()}),
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(actor: &str, details: &str) -> AuditEntry {
        AuditEntry {
            at: 5,
            actor: actor.into(),
            action: "a.b".into(),
            object: "x:1".into(),
            details: details.into(),
        }
    }

    #[test]
    fn canonical_form_is_unambiguous() {
        // Moving a byte from one field to the next changes the canonical form.
        let a = canonical(1, &entry("ab", "c"));
        let b = canonical(1, &entry("a", "bc"));
        assert_ne!(a, b);
        assert_ne!(
            canonical(1, &entry("a", "b")),
            canonical(2, &entry("a", "b"))
        );
        assert_eq!(&a[..8], b"audit-v1");
    }

    #[test]
    fn hash_depends_on_the_previous_hash() {
        let e = entry("a", "{}");
        assert_ne!(chain_hash(&[0; 32], 1, &e), chain_hash(&[1; 32], 1, &e));
        // Known answer for the empty-prev, first-row case, computed independently:
        // sha256(32 zero bytes || "audit-v1" || 1u64 || 5u64 || 1u32 "a" || 3u32 "a.b" || 3u32 "x:1" || 2u32 "{}").
        let mut input = vec![0u8; 32];
        input.extend_from_slice(b"audit-v1");
        input.extend_from_slice(&1u64.to_be_bytes());
        input.extend_from_slice(&5u64.to_be_bytes());
        for f in ["a", "a.b", "x:1", "{}"] {
            input.extend_from_slice(&(f.len() as u32).to_be_bytes());
            input.extend_from_slice(f.as_bytes());
        }
        let d = digest(&SHA256, &input);
        assert_eq!(chain_hash(&[0; 32], 1, &e).as_slice(), d.as_ref());
    }
}
