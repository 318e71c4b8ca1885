//! The `{id}` of a route, with OpenAI-shaped errors.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

use super::ApiError;

/// A route's `{id}`. An id axum cannot read (percent-encoded bytes that are not UTF-8) is a 400
/// naming it, in the same error shape as every other answer, not axum's plain-text rejection.
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(Self(id)),
            Err(e) => Err(ApiError::invalid(
                "id",
                format!("The id in the path cannot be read: {}.", e.body_text()),
            )),
        }
    }
}
