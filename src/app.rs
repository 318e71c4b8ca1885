//! The application: shared state and **the one place the middleware order lives**.
//!
//! Before any layer, the connection itself is bounded by [`server`](crate::server): header,
//! idle and body read timeouts, and connection caps.
//!
//! Layers, outermost first (a request passes them top to bottom, the response bottom to top):
//!
//! | # | layer | why |
//! |---|---|---|
//! | 0 | `CatchPanicLayer` | a panic in the layers themselves becomes an OpenAI-shaped 500, never a dropped connection |
//! | 1 | `SetSensitiveRequestHeadersLayer(Authorization)` | keys never appear in traces |
//! | 2 | `SetRequestIdLayer` | keeps the caller's `x-request-id` or makes one (UUID) |
//! | 3 | `PropagateRequestIdLayer` | returns `x-request-id` on every response, errors included |
//! | 4 | `metrics::http::Track` | counts and times every request (401s too) to the end of its body; inserts [`UpstreamWait`] |
//! | 5 | `AccessLog` | one line per request; sees 401s and every error; runs the request in a span carrying its `request_id` |
//! | 5a | `CatchPanicLayer` (inner) | a handler's panic becomes a 500 with its access-log line and request id; counted `gateway_panic` |
//! | 6 | `shed::Shed` | past `server.max_in_flight`, 503 `server_overloaded` before any read or parse (probes excepted) |
//! | 7 | `drain::drain_unread_body` | reads what a handler left of the body, so an early answer is not lost to a reset |
//! | 8 | `auth::require_key` | deny by default (`auth::PUBLIC_ROUTES` and the console's files excepted); inserts `ClientKey` |
//! | 9 | `DefaultBodyLimit` | `server.max_body_bytes` for JSON and multipart bodies |
//! | 10 | routes → handlers | `api::routes()` (OpenAI surface), `api::ops::routes()` (`/healthz`, `/readyz`, `/metrics`), [`mcp`](crate::mcp) (`/mcp`, which calls the routes above through this same stack) |
//!
//! Shared state lives in [`state`](crate::state). Request/response extensions: [`UpstreamWait`]
//! (metrics → handlers → upstream client, and read back by the access log and the metrics); `ClientKey` (auth → handlers, and on the
//! response for the access log; it carries the key's and team's settings); `ApiError` and
//! [`RequestLog`] (handlers → access log and metrics, on the response).
//!
//! Per-key limits and budgets are not a layer: images/min needs the parsed `n` and the budget
//! needs the priced request, so the dispatcher runs them ([`dispatch`](crate::dispatch)) after
//! parsing and before any upstream call. Routes: `api::routes()` (the OpenAI surface),
//! `api::ops::routes()` (`/healthz`, `/readyz`, `/metrics`) and
//! [`admin::routes()`](crate::admin::routes) (`/admin/*`, admin key only, enforced by auth).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::Method;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::error::{ApiError, ErrorCode};
use crate::hook::{After, Before, Hook, HookLayer};
use crate::keys::ClientKey;
use crate::metrics::{Fault, UpstreamWait};
use crate::model::ModelId;
use crate::state::{AppState, RequestLog};

/// Builds the router with the full middleware stack (see the table above).
pub fn build_router(state: Arc<AppState>) -> Router {
    let routes = || {
        crate::api::routes()
            .merge(crate::admin::routes())
            .merge(crate::api::ops::routes())
            .merge(crate::ui::routes())
    };
    // `/mcp` calls the routes in-process, through the whole stack, with the caller's key: they
    // are built once more without `/mcp` (no router holds itself).
    let api = with_middleware(routes(), state.clone());
    let mcp = crate::mcp::routes(api, state.config.server.max_body_bytes);
    with_middleware(routes().merge(mcp), state)
}

/// `routes` behind the middleware stack, with the fallbacks.
fn with_middleware(routes: Router<Arc<AppState>>, state: Arc<AppState>) -> Router {
    let limit = state.config.server.max_body_bytes;
    let panics = state.metrics.clone();
    let middleware = ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(move |_| {
            // Outside the metrics layer (a panic unwinds through it): counted here.
            panics.error(Fault::GatewayPanic);
            ApiError::internal("The gateway hit an internal error.").into_response()
        }))
        .layer(SetSensitiveRequestHeadersLayer::new([AUTHORIZATION]))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(HookLayer(crate::metrics::http::Track(
            state.metrics.clone(),
        )))
        .layer(HookLayer(AccessLog))
        // Inside the access log and the metrics: a handler's panic is answered, counted as
        // `gateway_panic`, logged with its request id, and has its access-log line.
        .layer(CatchPanicLayer::custom(
            |panic: Box<dyn std::any::Any + Send>| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = what, "a request handler panicked");
                ApiError::new(ErrorCode::Panicked, "The gateway hit an internal error.")
                    .into_response()
            },
        ))
        .layer(HookLayer(crate::shed::Shed(state.in_flight.clone())))
        .layer(middleware::from_fn(move |req, next| {
            crate::drain::drain_unread_body(limit, req, next)
        }))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_key,
        ))
        .layer(DefaultBodyLimit::max(limit));
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware)
        .with_state(state)
}

async fn not_found(State(_): State<Arc<AppState>>, req: Request) -> ApiError {
    ApiError::not_found(req.uri().path())
}

/// One line per request: request id, key id, public and upstream model, status, latency,
/// upstream time, cost, attempts, task ids, error code. Never a secret or image bytes; the prompt
/// only with `logging.log_prompts`.
///
/// The request runs inside a `request` span carrying its `request_id`, so every line logged
/// while serving it (a failed fan-out call, an abandoned task) names the request.
#[derive(Clone)]
struct AccessLog;

impl Hook for AccessLog {
    type After = Logged;

    fn before(&self, req: &mut Request) -> Before<Logged> {
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        // At `error` level so it is enabled whenever any line inside it is.
        let span = tracing::error_span!("request", request_id = request_id.as_str());
        let logged = Logged {
            start: Instant::now(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            request_id,
            wait: req.extensions().get::<UpstreamWait>().cloned(),
        };
        Before::Call(logged, span)
    }
}

/// What the access-log line needs from the request.
struct Logged {
    start: Instant,
    method: Method,
    path: String,
    request_id: String,
    wait: Option<UpstreamWait>,
}

impl After for Logged {
    fn after(self, res: Response) -> Response {
        let Self {
            start,
            method,
            path,
            request_id,
            wait,
        } = self;
        let key = res.extensions().get::<ClientKey>().map(|k| k.id.clone());
        let log = res.extensions().get::<RequestLog>();
        let error = res.extensions().get::<ApiError>();
        tracing::info!(
            request_id,
            %method,
            path,
            status = res.status().as_u16(),
            latency_ms = start.elapsed().as_millis() as u64,
            upstream_ms = wait.map_or(0, |w| w.total().as_millis() as u64),
            key_id = key.as_deref().unwrap_or("-"),
            model = log.and_then(|l| l.public_model.as_deref()).unwrap_or("-"),
            upstream_model = log.and_then(|l| l.upstream_model).map_or("-", ModelId::as_str),
            attempts = log.map_or(0, |l| l.attempts),
            n = log.map_or(0, |l| l.n),
            cost_usd = log.and_then(|l| l.cost).map(|c| c.to_string()),
            joined = log.is_some_and(|l| l.joined),
            task_ids = log.map_or("", |l| l.task_ids.as_str()),
            error_code = error.map_or("", |e| e.code.as_str()),
            error = error.map_or("", |e| e.message.as_str()),
            prompt = log.and_then(|l| l.prompt.as_deref()),
            "request"
        );
        res
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    use super::*;

    #[tokio::test]
    async fn a_handler_panic_is_answered_logged_and_counted() {
        let sim = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
        let config = crate::demo::demo_config(sim, "sk-up", sim).unwrap();
        let state = Arc::new(AppState::new(config).await.unwrap());
        let routes = Router::new().route(
            "/v1/boom",
            axum::routing::get(|| async {
                // A value that is not there, as a bug would meet one.
                let found: Option<&str> = std::hint::black_box(None);
                found.map(str::to_owned).unwrap_or_else(|| panic!("boom"))
            }),
        );
        let app = with_middleware(routes, state.clone());
        let res = app
            .oneshot(
                Request::get("/v1/boom")
                    .header("authorization", format!("Bearer {}", crate::demo::DEMO_KEY))
                    .header("x-request-id", "req-boom")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), 500);
        assert_eq!(res.headers()["x-request-id"], "req-boom");
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "internal_error");
        let metrics = state.metrics.render();
        assert!(
            metrics.contains("imagegate_errors_total{fault=\"gateway_panic\"} 1"),
            "{metrics}"
        );
        assert!(!metrics.contains("fault=\"gateway_internal\""), "{metrics}");
        assert!(
            metrics.contains(
                "imagegate_http_requests_total{method=\"GET\",route=\"/v1/boom\",status=\"500\"} 1"
            ),
            "{metrics}"
        );
    }
}
