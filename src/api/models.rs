//! `GET /v1/models` and `GET /v1/models/{id}`: every public name in OpenAI's shape — the pinned
//! model ids, the groups and the aliases — that has at least one enabled model behind it; then,
//! with a `[passthrough]`, the text upstream's models (its own list, cached).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::error::PathId;
use crate::model::ModelId;
use crate::state::AppState;

/// 2026-04-21, the gpt-image-2 release: a stable `created` for every listed model.
const CREATED: u64 = 1_776_729_600;

fn model_object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": CREATED, "owned_by": "imagegate"})
}

/// Public names in listing order: pinned ids, groups, aliases.
fn public_names(state: &AppState) -> impl Iterator<Item = &str> {
    let routing = &state.config.routing;
    ModelId::ALL
        .iter()
        .map(|m| m.as_str())
        .chain(routing.groups.keys().map(String::as_str))
        .chain(routing.aliases.keys().map(String::as_str))
        .filter(|name| state.resolve_model(Some(name)).is_ok())
}

pub async fn list(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut data: Vec<Value> = public_names(&state).map(model_object).collect();
    if let Some(text) = &state.text {
        for m in text.models().await {
            let id = m.get("id").and_then(Value::as_str).unwrap_or_default();
            if !id.is_empty() && state.config.routing.members(id).is_none() {
                data.push(m);
            }
        }
    }
    Json(json!({"object": "list", "data": data}))
}

pub async fn retrieve(State(state): State<Arc<AppState>>, PathId(id): PathId) -> Response {
    match state.resolve_model(Some(&id)) {
        Ok(_) => Json(model_object(&id)).into_response(),
        Err(e) => {
            if let Some(text) = &state.text {
                let models = text.models().await;
                if let Some(m) = models
                    .into_iter()
                    .find(|m| m.get("id").and_then(Value::as_str) == Some(id.as_str()))
                {
                    return Json(m).into_response();
                }
            }
            e.into_response()
        }
    }
}
