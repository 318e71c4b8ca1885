//! The application: shared state and **the one place the middleware order lives**.
//!
//! Layers, outermost first (a request passes them top to bottom, the response bottom to top):
//!
//! | # | layer | why |
//! |---|---|---|
//! | 0 | `CatchPanicLayer` | a panic becomes an OpenAI-shaped 500, never a dropped connection |
//! | 1 | `SetSensitiveRequestHeadersLayer(Authorization)` | keys never appear in traces |
//! | 2 | `SetRequestIdLayer` | keeps the caller's `x-request-id` or makes one (UUID) |
//! | 3 | `PropagateRequestIdLayer` | returns `x-request-id` on every response, errors included |
//! | 4 | `access_log` | one line per request; sees 401s and every error |
//! | 5 | `drain::drain_unread_body` | reads what a handler left of the body, so an early answer is not lost to a reset |
//! | 6 | `auth::require_key` | deny by default; inserts [`ClientKey`](crate::auth::ClientKey) |
//! | 7 | `DefaultBodyLimit` | `server.max_body_bytes` for JSON and multipart bodies |
//! | 8 | routes → handlers | `api::routes()` |
//!
//! Request/response extensions: `ClientKey` (auth → handlers, and on the response for the
//! access log; it carries the key's and team's settings); `ApiError` and [`RequestLog`]
//! (handlers → access log, on the response).
//!
//! Per-key limits and budgets are not a layer: images/min needs the parsed `n` and the budget
//! needs the priced request, so the image handlers run them (`api::gate`) after parsing and
//! before any upstream call. Routes: `api::routes()` (the OpenAI surface) and
//! [`admin::routes()`](crate::admin::routes) (`/admin/*`, admin key only, enforced at layer 6).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::auth::{AdminKey, ClientKey};
use crate::budget::Budgets;
use crate::config::Config;
use crate::error::ApiError;
use crate::keys::Registry;
use crate::limits::RateLimits;
use crate::model::ModelId;
use crate::pricing::Usd;
use crate::routing::{Route, Routing};
use crate::store::Store;
use crate::upstream::Upstream;

/// Everything a handler needs, shared behind one `Arc`.
pub struct AppState {
    /// The validated configuration the process started with.
    pub config: Config,
    /// The platform client; holds the upstream keys, which nothing else sees.
    pub upstream: Upstream,
    /// Public names, upstream health and the choice of model.
    pub routing: Routing,
    /// Client keys (static and dynamic) and teams; owns the database handle.
    pub keys: Registry,
    /// The admin key's digest.
    pub admin: AdminKey,
    /// Spend and reservations per key and team (the ledger is the durable truth).
    pub budgets: Budgets,
    /// Rate and concurrency limiters.
    pub limits: RateLimits,
}

impl AppState {
    /// Opens (creating and migrating) the database and loads keys, teams and spend.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let store = Store::open(config.data.dir.as_deref())?;
        let month = crate::ledger::utc_month(std::time::SystemTime::now());
        let (by_key, by_team) = store.spent_blocking(&month)?;
        Ok(Self {
            upstream: Upstream::new(&config)?,
            routing: Routing::new(config.routing.clone()),
            keys: Registry::new(&config, store)?,
            admin: AdminKey::new(&config.admin),
            budgets: Budgets::load(by_key, by_team),
            limits: RateLimits::new(&config.limits),
            config,
        })
    }

    pub fn store(&self) -> &Store {
        &self.keys.store
    }

    /// The public model a request asked for (or the default): a model id, group or alias with
    /// at least one enabled model.
    pub fn resolve_model(&self, requested: Option<&str>) -> Result<Route, ApiError> {
        let name = requested.unwrap_or(&self.config.server.default_model);
        self.routing.resolve(&self.config.models, name)
    }
}

/// What a handler tells the access log about the request it served.
#[derive(Debug, Clone)]
pub struct RequestLog {
    /// The model the request was planned for (the served one once routing picked).
    pub model: Option<ModelId>,
    /// The name the caller asked for: a model id, group or alias.
    pub public_model: Option<Arc<str>>,
    /// The upstream model that served (or last failed) the request.
    pub upstream_model: Option<ModelId>,
    pub cost: Option<Usd>,
    /// Upstream models tried.
    pub attempts: u32,
    pub n: u8,
    pub task_ids: String,
}

/// Builds the router with the full middleware stack (see the table above).
pub fn build_router(state: Arc<AppState>) -> Router {
    let limit = state.config.server.max_body_bytes;
    let middleware = ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("The gateway hit an internal error.").into_response()
        }))
        .layer(SetSensitiveRequestHeadersLayer::new([AUTHORIZATION]))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(middleware::from_fn(access_log))
        .layer(middleware::from_fn(move |req, next| {
            crate::drain::drain_unread_body(limit, req, next)
        }))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_key,
        ))
        .layer(DefaultBodyLimit::max(limit));
    crate::api::routes()
        .merge(crate::admin::routes())
        .route("/healthz", get(|| async { "ok" }))
        .fallback(not_found)
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware)
        .with_state(state)
}

async fn not_found(State(_): State<Arc<AppState>>, req: Request) -> ApiError {
    ApiError::not_found(req.uri().path())
}

/// One line per request: request id, key id, model, status, latency, task ids, error code.
/// Never a secret, a prompt or image bytes.
async fn access_log(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let res = next.run(req).await;
    let key = res.extensions().get::<ClientKey>().map(|k| k.id.clone());
    let log = res.extensions().get::<RequestLog>();
    let error = res.extensions().get::<ApiError>();
    tracing::info!(
        request_id,
        %method,
        path,
        status = res.status().as_u16(),
        latency_ms = start.elapsed().as_millis() as u64,
        key_id = key.as_deref().unwrap_or("-"),
        model = log.and_then(|l| l.public_model.as_deref()).unwrap_or("-"),
        upstream = log.and_then(|l| l.upstream_model).map_or("-", ModelId::as_str),
        cost_usd = %log.and_then(|l| l.cost).unwrap_or_default(),
        attempts = log.map_or(0, |l| l.attempts),
        n = log.map_or(0, |l| l.n),
        task_ids = log.map_or("", |l| l.task_ids.as_str()),
        error_code = error.map_or("", |e| e.code),
        error = error.map_or("", |e| e.message.as_str()),
        "request"
    );
    res
}
