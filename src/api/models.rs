//! `GET /v1/models` and `GET /v1/models/{id}`: the enabled public model ids in OpenAI's shape.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::error::ApiError;
use crate::model::ModelId;

/// 2026-04-21, the gpt-image-2 release: a stable `created` for every listed model.
const CREATED: u64 = 1_776_729_600;

fn model_object(id: ModelId) -> Value {
    json!({"id": id.as_str(), "object": "model", "created": CREATED, "owned_by": "imagegate"})
}

pub async fn list(State(state): State<Arc<AppState>>) -> Json<Value> {
    let data: Vec<Value> = ModelId::ALL
        .into_iter()
        .filter(|m| state.config.models.get(*m).enabled)
        .map(model_object)
        .collect();
    Json(json!({"object": "list", "data": data}))
}

pub async fn retrieve(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match id.parse::<ModelId>() {
        Ok(m) if state.config.models.get(m).enabled => Json(model_object(m)).into_response(),
        _ => ApiError::model_not_found(&id).into_response(),
    }
}
