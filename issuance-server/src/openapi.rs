//! The OpenAPI 3.1 document of the API, served at `/api/v1/openapi.json`. It is written by hand
//! in `src/openapi.json`; a test checks that every operation it lists is routed.

use axum::http::header;
use axum::response::IntoResponse;

/// The document's text.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// `GET /api/v1/openapi.json`.
pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}
