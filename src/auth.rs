//! Client authentication: `Authorization: Bearer <client key>`, deny by default.
//! `/admin/*` takes the admin key (`[admin]` in the config) and only that key.
//!
//! Keys are kept only as SHA-256 digests; a presented key is hashed and looked up (see
//! [`keys`](crate::keys)), so the comparison never touches a stored secret. Disabled and expired
//! keys are refused here with a 401. The client's key is never forwarded upstream (the
//! upstream client injects the platform key instead).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::config::AdminConfig;
use crate::error::{ApiError, RateLimit};
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

/// Failed authentications per client address: past `server.auth_failures_per_minute`, a failed
/// attempt is answered 429 with `retry-after` instead of 401, so guessing keys is slow. Valid
/// keys are never held back. The address is the TCP peer's.
pub struct AuthFailures {
    limiter: RateLimiter<IpAddr, HashMapStateStore<IpAddr>, DefaultClock>,
    seen: AtomicU64,
}

impl AuthFailures {
    pub fn new(per_minute: NonZeroU32) -> Self {
        Self {
            limiter: RateLimiter::hashmap(Quota::per_minute(per_minute)),
            seen: AtomicU64::new(0),
        }
    }

    /// Counts one failure from `ip`: `Err(wait)` once over the limit.
    fn fail(&self, ip: IpAddr) -> Result<(), Duration> {
        // Forget addresses whose allowance is whole again, now and then.
        if self.seen.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&ip)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// A failed authentication: its 401, or a 429 once the address failed too often.
fn refuse(state: &AppState, peer: Option<IpAddr>, error: ApiError) -> Response {
    let Some(ip) = peer else {
        return error.into_response();
    };
    match state.auth_failures.fail(ip) {
        Ok(()) => error.into_response(),
        Err(wait) => {
            let secs = wait.as_secs().clamp(1, 60);
            ApiError::rate_limited(
                RateLimit::AuthFailures,
                format!("Too many failed authentications from this address; retry in {secs} s."),
                vec![("retry-after", secs.to_string())],
            )
            .into_response()
        }
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
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
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
            _ => refuse(
                &state,
                peer,
                ApiError::unauthorized(
                    "The admin API needs the admin key: `Authorization: Bearer <admin key>`.",
                ),
            ),
        };
    }
    let key = match presented {
        None | Some("") => {
            let e = ApiError::unauthorized(
                "You didn't provide an API key. Send `Authorization: Bearer <key>`.",
            );
            return refuse(&state, peer, e);
        }
        Some(k) => match state.keys.lookup(k).await {
            Ok(Some(record)) => match record.refusal() {
                Some(why) => return refuse(&state, peer, ApiError::unauthorized(why)),
                None => ClientKey {
                    id: Arc::from(record.spec.id.as_str()),
                    team: record.spec.team.as_deref().and_then(|t| state.keys.team(t)),
                    record,
                },
            },
            Ok(None) => {
                let e = ApiError::unauthorized("Incorrect API key provided.");
                return refuse(&state, peer, e);
            }
            Err(e) => return ApiError::from(e).into_response(),
        },
    };
    req.extensions_mut().insert(key.clone());
    let mut res = next.run(req).await;
    res.extensions_mut().insert(key);
    res
}
