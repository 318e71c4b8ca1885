//! `GET /admin/upstreams` (admin key): per upstream model, its circuit state, error ratio,
//! latency percentiles by quality, last error class and catalog entry.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::catalog;
use crate::model::ModelId;
use crate::state::AppState;

pub async fn list(State(state): State<Arc<AppState>>) -> Json<Value> {
    let data: Vec<Value> = ModelId::ALL
        .into_iter()
        .map(|m| {
            let mut entry = json!({
                "model": m.as_str(),
                "enabled": state.config.models.get(m).enabled,
                "capabilities": catalog::capabilities(m),
            });
            if let (Some(obj), Ok(Value::Object(health))) = (
                entry.as_object_mut(),
                serde_json::to_value(state.health.snapshot(m)),
            ) {
                obj.extend(health);
            }
            entry
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}
