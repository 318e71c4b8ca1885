//! The operator's endpoints, outside the OpenAI surface and without a key
//! (`auth::PUBLIC_ROUTES`):
//!
//! - `GET /healthz`: the process is alive.
//! - `GET /readyz`: ready for traffic — the configuration is loaded, the listener is up (this
//!   answer came through it) and at least one upstream model can take a request
//!   ([`AppState::ready_models`]). 503 otherwise. The body also reports whether the upstream's
//!   host answers a TCP connect (`upstream.reachable`, cached 10 s), without changing the status:
//!   every replica shares that upstream, and failing them all at once helps no one. Alert on
//!   `imagegate_upstream_reachable` instead.
//! - `GET /metrics`: Prometheus text format (see [`crate::metrics`]). It holds no secret, prompt
//!   or client key — only configured ids — so it is served on the main listener; keep it off the
//!   public internet at the proxy in front of imagegate.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header::CONTENT_TYPE, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::model::ModelId;
use crate::state::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/upstream/callback", axum::routing::post(upstream_callback))
}

/// `POST /upstream/callback` (no key: the platform posts here when `server.public_url` is set).
/// The body is not trusted (callbacks are unsigned): its `data.taskId` only makes the gateway
/// poll that task now, with its own key. Always 200, so the platform stops re-sending.
async fn upstream_callback(
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Response {
    let task = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.pointer("/data/taskId")
                .and_then(|t| t.as_str())
                .map(str::to_owned)
        });
    let known = task.as_deref().is_some_and(|t| state.upstream.wake(t));
    tracing::debug!(
        task_id = task.as_deref().unwrap_or(""),
        known,
        "upstream callback"
    );
    Json(json!({ "received": true })).into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let models: Vec<&str> = state
        .ready_models()
        .into_iter()
        .map(ModelId::as_str)
        .collect();
    // A replica whose shared database is away cannot take a request (nothing could be
    // recorded before the upstream call): the load balancer sends traffic elsewhere.
    let database = database_up(&state).await;
    let redis = redis_up(&state).await;
    // Redis away only stops traffic when the shared rate limits fail closed.
    let redis_blocks = redis == Some(false)
        && state
            .cluster
            .as_ref()
            .is_some_and(|c| c.fail == crate::config::FailMode::Closed);
    let ready = !models.is_empty() && database && !redis_blocks;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let upstream = state.upstream.reach.check().await;
    state.metrics.upstream_reachable(upstream.reachable);
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "models": models,
        "database": { "up": database },
        "redis": redis.map(|up| json!({ "up": up })),
        "upstream": upstream,
    });
    (status, Json(body)).into_response()
}

async fn database_up(state: &AppState) -> bool {
    let up = state
        .store()
        .ping(std::time::Duration::from_secs(1))
        .await
        .is_ok();
    state.metrics.database_up(up);
    up
}

/// Whether Redis answers (`None` without one).
async fn redis_up(state: &AppState) -> Option<bool> {
    let cluster = state.cluster.as_ref()?;
    let up = cluster.ping().await;
    state.metrics.redis_up(up);
    Some(up)
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    database_up(&state).await;
    redis_up(&state).await;
    // Replicas: the teams' budget use, from the shared database (one process sets it per
    // request, from memory).
    if state.budgets.is_shared() {
        state.budgets.refresh_all().await;
        for team in state.keys.teams() {
            let payer = crate::budget::Payer::Team(team.spec.id.clone());
            if let Some(ratio) = state.budgets.used_ratio(&payer, team.budget) {
                state.metrics.budget_used(&team.spec.id, ratio);
            }
        }
    }
    let upstream = state.upstream.reach.check().await;
    state.metrics.upstream_reachable(upstream.reachable);
    // Circuits move from open to half-open with time, not only with traffic.
    for m in ModelId::ALL {
        if state.config.models.get(m).enabled {
            let circuit = state.health.state(m);
            state.metrics.circuit_state(m, circuit.into());
        }
    }
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}
