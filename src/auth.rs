//! Client authentication: `Authorization: Bearer <client key>`, deny by default.
//! `/admin/*` takes the admin key (`[admin]` in the config) and only that key.
//!
//! Keys are kept only as SHA-256 digests; a presented key is hashed and looked up, so the
//! comparison never touches a stored secret. The client's key is never forwarded upstream (the
//! upstream client injects the platform key instead).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::config::{AdminConfig, ClientKeyConfig};
use crate::error::ApiError;

/// Routes that need no key: the operator's probes and metrics (`api::ops`).
pub const PUBLIC_ROUTES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The authenticated caller, inserted into request (and response) extensions.
#[derive(Debug, Clone)]
pub struct ClientKey {
    pub id: Arc<str>,
}

/// The prefix of the operator's routes.
pub const ADMIN_PREFIX: &str = "/admin";

/// The operator, inserted into request extensions on `/admin/*`.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

/// Known client keys by SHA-256 digest, and the admin key's digest.
pub struct KeyStore {
    by_digest: HashMap<[u8; 32], Arc<str>>,
    admin: Option<[u8; 32]>,
}

impl KeyStore {
    pub fn new(keys: &[ClientKeyConfig], admin: &AdminConfig) -> Self {
        let admin = match (&admin.key, &admin.key_sha256) {
            (Some(secret), _) => Some(digest(secret)),
            (None, Some(h)) => hex::decode(h).ok().and_then(|d| d.try_into().ok()),
            (None, None) => None,
        };
        let by_digest = keys
            .iter()
            .filter_map(|k| {
                let digest = match (&k.key, &k.key_sha256) {
                    (Some(secret), _) => digest(secret),
                    (None, Some(hex_digest)) => hex::decode(hex_digest).ok()?.try_into().ok()?,
                    (None, None) => return None,
                };
                Some((digest, Arc::from(k.id.as_str())))
            })
            .collect();
        Self { by_digest, admin }
    }

    fn is_admin(&self, presented: &str) -> bool {
        self.admin.is_some_and(|d| d == digest(presented))
    }

    pub fn lookup(&self, presented: &str) -> Option<ClientKey> {
        self.by_digest
            .get(&digest(presented))
            .map(|id| ClientKey { id: id.clone() })
    }
}

/// SHA-256 of a key; `imagegate hash-key` prints the hex form for `key_sha256`.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
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
            Some(k) if state.keys.is_admin(k) => {
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
        Some(k) => match state.keys.lookup(k) {
            Some(key) => key,
            None => return ApiError::unauthorized("Incorrect API key provided.").into_response(),
        },
    };
    req.extensions_mut().insert(key.clone());
    let mut res = next.run(req).await;
    res.extensions_mut().insert(key);
    res
}
