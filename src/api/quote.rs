//! `POST /v1/images/quote`: the body of a generation or an edit → the model that would serve it
//! and its exact price, and the models it would fall back to. The same parsing, permission,
//! routing and pricing code as the real request; no limit is taken, nothing is sent upstream,
//! no job or ledger row is written.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest as _, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::edits::{self, EditParts};
use super::images::{body_error, call_of, edit_parts, json_content_type, json_object, parse};
use crate::error::ApiError;
use crate::request::Operation;
use crate::state::AppState;

pub async fn quote(State(state): State<Arc<AppState>>, request: Request) -> Response {
    match Box::pin(answer(&state, request)).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn answer(state: &AppState, request: Request) -> Result<Value, ApiError> {
    let (call, _) = call_of(&request)?;
    let multipart = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    let (op, parts) = if multipart {
        (Operation::Edit, edit_parts(state, request).await?)
    } else {
        json_content_type(request.headers())?;
        let limit = state.config.server.max_body_bytes;
        let body = Bytes::from_request(request, &())
            .await
            .map_err(|e| body_error(e.status(), limit))?;
        json_parts(json_object(&body)?)?
    };
    let (route, req, _, _) = parse(state, op, parts)?;
    let (_, candidates) = state.dispatch().choose(&call, &route, &req)?;
    let priced: Vec<Value> = candidates
        .iter()
        .map(|c| json!({"model": c.model.as_str(), "cost_usd": c.cost().to_string()}))
        .collect();
    let Some((first, fallbacks)) = priced.split_first() else {
        return Err(ApiError::internal("No model was chosen."));
    };
    Ok(json!({
        "object": "image.quote",
        "operation": match op {
            Operation::Generate => "generate",
            Operation::Edit => "edit",
        },
        "model": route.public.to_string(),
        "n": req.n,
        "served_model": first["model"],
        "cost_usd": first["cost_usd"],
        "fallbacks": fallbacks,
    }))
}

/// A JSON body is an edit when it carries images (`images`, `image`) or a `mask`, as the JSON
/// edit route reads them; otherwise a generation.
fn json_parts(fields: Map<String, Value>) -> Result<(Operation, EditParts), ApiError> {
    if ["images", "image", "mask"]
        .iter()
        .any(|k| fields.contains_key(*k))
    {
        return Ok((Operation::Edit, edits::from_json(fields)?));
    }
    let parts = EditParts {
        fields,
        images: Vec::new(),
        mask: None,
    };
    Ok((Operation::Generate, parts))
}
