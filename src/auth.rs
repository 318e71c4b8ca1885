//! Client authentication: `Authorization: Bearer <client key>`, deny by default.
//! `/admin/*` takes the admin key (`[admin]` in the config) and only that key.
//!
//! Keys are kept only as SHA-256 digests; a presented key is hashed and looked up (see
//! [`keys`](crate::keys)), so the comparison never touches a stored secret. Disabled and expired
//! keys are refused here with a 401. The client's key is never forwarded upstream (the
//! upstream client injects the platform key instead).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::AdminConfig;
use crate::error::ApiError;
pub use crate::keys::digest;
pub use crate::keys::ClientKey;
use crate::state::AppState;

/// Routes that need no key: the operator's probes and metrics (`api::ops`).
pub const PUBLIC_ROUTES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The prefix of the operator's routes.
pub const ADMIN_PREFIX: &str = "/admin";

/// The operator, inserted into request extensions on `/admin/*`.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

/// The admin key's digest, if one is configured.
pub struct AdminKey(Option<[u8; 32]>);

impl AdminKey {
    pub fn new(admin: &AdminConfig) -> Self {
        Self(match (&admin.key, &admin.key_sha256) {
            (Some(secret), _) => Some(digest(secret)),
            (None, Some(h)) => hex::decode(h).ok().and_then(|d| d.try_into().ok()),
            (None, None) => None,
        })
    }

    /// Compares digests in constant time: how long it takes says nothing of how much matched.
    fn matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq as _;
        self.0
            .is_some_and(|d| bool::from(d.ct_eq(&digest(presented))))
    }
}

pub async fn require_key(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    if PUBLIC_ROUTES.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let path = req.uri().path();
    if path == ADMIN_PREFIX || path.starts_with("/admin/") {
        return match presented {
            Some(k) if state.admin.matches(k) => {
                req.extensions_mut().insert(Admin);
                next.run(req).await
            }
            _ => ApiError::unauthorized(
                "The admin API needs the admin key: `Authorization: Bearer <admin key>`.",
            )
            .into_response(),
        };
    }
    let key = match presented {
        None | Some("") => {
            return ApiError::unauthorized(
                "You didn't provide an API key. Send `Authorization: Bearer <key>`.",
            )
            .into_response()
        }
        Some(k) => match state.keys.lookup(k).await {
            Ok(Some(record)) => match record.refusal() {
                Some(why) => return ApiError::unauthorized(why).into_response(),
                None => ClientKey {
                    id: Arc::from(record.spec.id.as_str()),
                    team: record.spec.team.as_deref().and_then(|t| state.keys.team(t)),
                    record,
                },
            },
            Ok(None) => {
                return ApiError::unauthorized("Incorrect API key provided.").into_response()
            }
            Err(e) => return ApiError::from(e).into_response(),
        },
    };
    req.extensions_mut().insert(key.clone());
    let mut res = next.run(req).await;
    res.extensions_mut().insert(key);
    res
}
