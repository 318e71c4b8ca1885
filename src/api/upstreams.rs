//! `GET /admin/upstreams` (admin key): per upstream model, its circuit state, error ratio,
//! latency percentiles by quality, last error class, catalog entry and prices (`price_usd`,
//! `edit_price_usd` or `price_matrix_usd`, as configured).

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
            let config = state.config.models.get(m);
            let matrix = config.price_matrix_usd.as_ref().map(|tiers| {
                tiers
                    .iter()
                    .map(|(tier, q)| {
                        (
                            tier.clone(),
                            json!({"low": q.low, "medium": q.medium, "high": q.high}),
                        )
                    })
                    .collect::<serde_json::Map<_, _>>()
            });
            let mut entry = json!({
                "model": m.as_str(),
                "enabled": config.enabled,
                "capabilities": catalog::capabilities(m),
                "price_usd": config.price_usd,
                "edit_price_usd": config.edit_price_usd,
                "price_matrix_usd": matrix,
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
