//! The server's one error type and the extractors that turn every malformed request into it.
//!
//! Every refusal is a 4xx with `{"code": "...", "message": "..."}`: `code` is stable and
//! machine-readable, `message` tells a person what to do. Internal failures are logged (without
//! personal data: sqlx errors carry no bound values) and answered with a plain 500; the tests
//! treat any 500 as a bug.

use std::borrow::Cow;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Result of a handler or of the logic under it.
pub type ApiResult<T> = Result<T, ApiError>;

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A refusal the client can act on (4xx).
    #[error("{status} {code}: {message}")]
    Refused {
        /// HTTP status (4xx).
        status: StatusCode,
        /// Stable machine-readable reason.
        code: Cow<'static, str>,
        /// What the person should do.
        message: String,
    },
    /// The database is busy (SQLite lock wait or pool exhausted): retry later (503).
    #[error("busy: {0}")]
    Busy(String),
    /// A bug or an environment failure (500). Logged, never shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// Stable machine-readable reason.
    pub code: String,
    /// Human text saying what to do.
    pub message: String,
}

impl ApiError {
    /// A refusal with `status`.
    pub fn refused(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        ApiError::Refused {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::refused(StatusCode::BAD_REQUEST, code, message)
    }

    /// 422: the request is well formed but a value breaks a rule.
    pub fn invalid(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::refused(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 401: no or no valid bearer token.
    pub fn unauthorized(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::refused(StatusCode::UNAUTHORIZED, code, message)
    }

    /// 403: authenticated, but not allowed.
    pub fn forbidden(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::refused(StatusCode::FORBIDDEN, code, message)
    }

    /// 404: no such object.
    pub fn not_found(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::refused(StatusCode::NOT_FOUND, code, message)
    }

    /// 409: the object's state does not allow this.
    pub fn conflict(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::refused(StatusCode::CONFLICT, code, message)
    }

    /// 410: what was asked for no longer exists.
    pub fn gone(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::refused(StatusCode::GONE, code, message)
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Refused { status, .. } => *status,
            ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code.
    pub fn code(&self) -> &str {
        match self {
            ApiError::Refused { code, .. } => code,
            ApiError::Busy(_) => "busy",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if crate::db::is_busy(&e) {
            return ApiError::Busy(e.to_string());
        }
        ApiError::Internal(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (code, message) = match self {
            ApiError::Refused { code, message, .. } => (code.into_owned(), message),
            ApiError::Busy(detail) => {
                tracing::warn!(%detail, "database busy");
                (
                    "busy".to_owned(),
                    "the server is busy; retry the request in a moment".to_owned(),
                )
            }
            ApiError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "internal error");
                (
                    "internal".to_owned(),
                    "internal error; the request was not carried out (see the server log)"
                        .to_owned(),
                )
            }
        };
        (status, axum::Json(ErrorBody { code, message })).into_response()
    }
}

/// A JSON body whose rejections are [`ApiError`]s (400 syntax, 422 fields, 413 too large,
/// 415 wrong content type).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::JsonDataError(e) => ApiError::invalid(
            "invalid_body",
            format!(
                "the JSON body does not have the expected fields: {}",
                e.body_text()
            ),
        ),
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request(
            "invalid_json",
            format!("the body is not valid JSON: {}", e.body_text()),
        ),
        JsonRejection::MissingJsonContentType(_) => ApiError::refused(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with `Content-Type: application/json`",
        ),
        JsonRejection::BytesRejection(b) => bytes_rejection(b),
        other => ApiError::bad_request("invalid_body", other.body_text()),
    }
}

fn bytes_rejection(b: BytesRejection) -> ApiError {
    if b.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is larger than the server accepts (photos at most 256 KiB)",
        )
    } else {
        ApiError::bad_request("invalid_body", b.body_text())
    }
}

/// A raw body (octet-stream uploads) whose rejections are [`ApiError`]s.
#[derive(Debug, Clone)]
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(bytes_rejection)
    }
}

/// Path parameters whose rejections are [`ApiError`]s (400 `invalid_path`).
#[derive(Debug, Clone, Copy)]
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|r: PathRejection| {
                ApiError::bad_request(
                    "invalid_path",
                    format!("a path parameter is malformed: {}", r.body_text()),
                )
            })
    }
}

/// Query parameters whose rejections are [`ApiError`]s (400 `invalid_query`).
#[derive(Debug, Clone, Copy)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|r: QueryRejection| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("a query parameter is malformed: {}", r.body_text()),
                )
            })
    }
}

/// Fallback for unknown paths: a JSON 404.
pub async fn no_route() -> ApiError {
    ApiError::not_found(
        "no_such_endpoint",
        "there is no endpoint at this path; the API is described at /api/v1/openapi.json",
    )
}

/// Fallback for a known path with another method: a JSON 405.
pub async fn wrong_method() -> ApiError {
    ApiError::refused(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take this HTTP method; see /api/v1/openapi.json",
    )
}

/// Parses a lower-case or upper-case hex string of exactly `N` bytes.
pub fn hex_array<const N: usize>(field: &'static str, s: &str) -> ApiResult<[u8; N]> {
    let v = hex::decode(s).map_err(|_| {
        ApiError::invalid(
            format!("invalid_{field}"),
            format!("`{field}` must be {N} bytes in hex ({} hex digits)", 2 * N),
        )
    })?;
    v.try_into().map_err(|_| {
        ApiError::invalid(
            format!("invalid_{field}"),
            format!("`{field}` must be {N} bytes in hex ({} hex digits)", 2 * N),
        )
    })
}
