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
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
use ipnet::IpNet;

use crate::config::AdminConfig;
use crate::error::{ApiError, RateLimit};
pub use crate::keys::digest;
pub use crate::keys::ClientKey;
use crate::state::AppState;

/// Routes that need no key: the operator's probes and metrics (`api::ops`).
pub const PUBLIC_ROUTES: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/upstream/callback"];

/// Whether `path` is served without a key: [`PUBLIC_ROUTES`] and the console's files (the page
/// asks for a key itself).
pub fn is_public(path: &str) -> bool {
    PUBLIC_ROUTES.contains(&path) || path == crate::ui::PREFIX || path.starts_with("/ui/")
}

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

/// The client's address: the TCP peer's, unless the peer is a trusted proxy — then the nearest
/// address in `X-Forwarded-For` (or `Forwarded: for=`) that is not a trusted proxy. Headers
/// from anyone else are ignored: they would let a client pick its own address.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut chain: Vec<IpAddr> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let text = v.to_str().unwrap_or_default();
        chain.extend(
            text.split(',')
                .filter_map(|a| a.trim().parse::<IpAddr>().ok()),
        );
    }
    if chain.is_empty() {
        for v in headers.get_all("forwarded") {
            let text = v.to_str().unwrap_or_default();
            chain.extend(text.split(',').filter_map(forwarded_for));
        }
    }
    // The right end was added by the nearest proxy: walk left past the trusted ones.
    chain
        .iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or_else(|| chain.first())
        .copied()
        .unwrap_or(peer)
}

/// The `for=` address of one `Forwarded` element: `for=192.0.2.60`, `for="[2001:db8::1]:4711"`.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
    })?;
    let value = value.trim_matches('"');
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    value
        .parse()
        .ok()
        .or_else(|| value.rsplit_once(':')?.0.parse().ok())
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
    if is_public(req.uri().path()) {
        return next.run(req).await;
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| client_ip(c.0.ip(), req.headers(), &state.proxies));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_client_address_comes_from_trusted_proxies_only() {
        let trusted: Vec<IpNet> = ["10.0.0.0/8", "192.0.2.1/32"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let xff = headers(&[("x-forwarded-for", "203.0.113.9, 10.1.1.1")]);
        // An untrusted peer's headers are ignored: it could name any address.
        assert_eq!(
            client_ip(ip("198.51.100.7"), &xff, &trusted),
            ip("198.51.100.7")
        );
        // Through trusted proxies: the nearest untrusted address.
        assert_eq!(client_ip(ip("10.0.0.5"), &xff, &trusted), ip("203.0.113.9"));
        let spoofed = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.9, 10.1.1.1")]);
        assert_eq!(
            client_ip(ip("10.0.0.5"), &spoofed, &trusted),
            ip("203.0.113.9")
        );
        let two = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "192.0.2.1"),
        ]);
        assert_eq!(client_ip(ip("10.0.0.5"), &two, &trusted), ip("203.0.113.9"));
        let fwd = headers(&[(
            "forwarded",
            "for=\"[2001:db8::1]:4711\";proto=https, for=10.2.2.2",
        )]);
        assert_eq!(client_ip(ip("10.0.0.5"), &fwd, &trusted), ip("2001:db8::1"));
        let fwd4 = headers(&[("forwarded", "for=198.51.100.17:8080")]);
        assert_eq!(
            client_ip(ip("10.0.0.5"), &fwd4, &trusted),
            ip("198.51.100.17")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_ip(ip("10.0.0.5"), &HeaderMap::new(), &trusted),
            ip("10.0.0.5")
        );
    }
}
