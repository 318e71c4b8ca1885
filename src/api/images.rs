//! `POST /v1/images/generations` and `POST /v1/images/edits`: parse → normalise
//! ([`ImageRequest`]) → plan (model checks, no I/O) → execute upstream → answer as OpenAI's
//! `ImagesResponse`, or as an SSE stream with keepalives when the client asked for `stream`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header::CONTENT_TYPE, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::StreamExt as _;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::edits::{self, EditParts};
use crate::app::{AppState, RequestLog};
use crate::error::ApiError;
use crate::model::{image_dimensions, ImageFormat, Quality};
use crate::request::{ImageRequest, Operation, ResponseFormat};
use crate::upstream::{self, CallCtx, Image};

pub async fn generations(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let id = request_id(request.headers());
    let limit = state.config.server.max_body_bytes;
    let result = match Bytes::from_request(request, &()).await {
        Ok(body) => json_object(&body),
        Err(e) => Err(body_error(e.status(), limit)),
    };
    let result = result.and_then(|fields| {
        ImageRequest::from_fields(Operation::Generate, &fields, Vec::new(), None, &|m| {
            state.resolve_model(m)
        })
    });
    match result {
        Ok(req) => answer(state, req, id).await,
        Err(e) => e.into_response(),
    }
}

pub async fn edits(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let id = request_id(request.headers());
    match edit_request(&state, request).await {
        Ok(req) => answer(state, req, id).await,
        Err(e) => e.into_response(),
    }
}

async fn edit_request(state: &Arc<AppState>, request: Request) -> Result<ImageRequest, ApiError> {
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let limit = state.config.server.max_body_bytes;
    let parts: EditParts = if content_type.starts_with("multipart/form-data") {
        let form = Multipart::from_request(request, &())
            .await
            .map_err(|e| ApiError::bad_body(e.body_text()))?;
        edits::from_multipart(form, limit).await?
    } else if content_type.starts_with("application/json") || content_type.is_empty() {
        let body = Bytes::from_request(request, &())
            .await
            .map_err(|e| body_error(e.status(), limit))?;
        edits::from_json(json_object(&body)?)?
    } else {
        return Err(ApiError::unsupported_media_type(&content_type));
    };
    ImageRequest::from_fields(
        Operation::Edit,
        &parts.fields,
        parts.images,
        parts.mask,
        &|m| state.resolve_model(m),
    )
}

fn body_error(status: StatusCode, limit: usize) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(limit)
    } else {
        ApiError::bad_body("The request body could not be read.")
    }
}

/// Parses a JSON object body; anything else is a 400 that says what is wrong.
fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_body(
            "The request body must be a JSON object.",
        )),
        Err(e) => Err(ApiError::bad_body(format!(
            "The request body is not valid JSON: {e}"
        ))),
    }
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Plans (refusing bad input before any upstream call), then runs and answers.
async fn answer(state: Arc<AppState>, req: ImageRequest, request_id: String) -> Response {
    let plan = match upstream::plan(&req) {
        Ok(p) => p,
        Err(e) => return with_log(e.into_response(), &req, &[]),
    };
    let deadline = Instant::now() + state.upstream.model_config(req.model).deadline;
    let ctx = CallCtx {
        deadline,
        request_id,
    };
    if req.stream {
        return stream(state, req, plan, ctx);
    }
    match run(&state, &req, plan, &ctx).await {
        Ok((body, task_ids)) => with_log(super::body::json(body), &req, &task_ids),
        Err((e, task_ids)) => with_log(e.into_response(), &req, &task_ids),
    }
}

type RunError = (ApiError, Vec<String>);

async fn run(
    state: &AppState,
    req: &ImageRequest,
    plan: upstream::Plan,
    ctx: &CallCtx,
) -> Result<(Value, Vec<String>), RunError> {
    let out = upstream::execute(&state.upstream, plan, ctx)
        .await
        .map_err(|e| {
            let ids = e.task_id.iter().cloned().collect();
            (ApiError::from(e), ids)
        })?;
    let format = if req.stream {
        ResponseFormat::B64Json
    } else {
        req.response_format
    };
    let body = materialize(state, req, out.images, format, &ctx.request_id)
        .await
        .map_err(|e| (e, out.task_ids.clone()))?;
    Ok((body, out.task_ids))
}

/// Builds the `ImagesResponse`. `b64_json` is taken as the upstream sent it when it sent one;
/// result URLs are downloaded concurrently otherwise. `url` answers the upstream URL as is.
async fn materialize(
    state: &AppState,
    req: &ImageRequest,
    images: Vec<Image>,
    format: ResponseFormat,
    request_id: &str,
) -> Result<Value, ApiError> {
    let mut data = Vec::with_capacity(images.len());
    let mut learned_format = None;
    let mut learned_size = None;
    match format {
        ResponseFormat::Url => {
            for img in images {
                // NOTE: an answer with no URL at all (inline base64 only) is returned as b64_json.
                data.push(match (img.url, img.b64) {
                    (Some(url), _) => json!({ "url": url }),
                    (None, Some(b64)) => json!({ "b64_json": b64 }),
                    (None, None) => continue,
                });
            }
        }
        ResponseFormat::B64Json => {
            let to_fetch: Vec<&str> = images
                .iter()
                .filter(|i| i.b64.is_none())
                .filter_map(|i| i.url.as_deref())
                .collect();
            let ctx = CallCtx {
                deadline: Instant::now() + state.config.results.timeout,
                request_id: request_id.to_owned(),
            };
            // OpenAI's default output format is PNG.
            let wanted = req.output_format.unwrap_or(ImageFormat::Png);
            let mut fetched = state
                .upstream
                .fetch_b64(&to_fetch, wanted, &ctx)
                .await?
                .into_iter();
            for img in images {
                let b64 = match img.b64 {
                    Some(b64) => {
                        let head = peek_b64(&b64);
                        learned_format = learned_format.or_else(|| ImageFormat::sniff(&head));
                        learned_size = learned_size.or_else(|| image_dimensions(&head));
                        b64
                    }
                    None => match fetched.next() {
                        Some(enc) => {
                            learned_format = learned_format.or(enc.format);
                            learned_size = learned_size.or(enc.size);
                            enc.b64
                        }
                        None => continue,
                    },
                };
                data.push(json!({ "b64_json": b64 }));
            }
        }
    }
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut body = json!({ "created": created, "data": data });
    if let Some(size) = learned_size.or(req.size) {
        body["size"] = json!(size.to_string());
    }
    if req.quality != Quality::Auto {
        body["quality"] = json!(req.quality.as_str());
    }
    if let Some(f) = learned_format.or(req.output_format) {
        body["output_format"] = json!(f.as_str());
    }
    if let Some(bg @ ("transparent" | "opaque")) = req.background.as_deref() {
        body["background"] = json!(bg);
    }
    Ok(body)
}

/// Decodes the first bytes of a base64 image: enough for the magic number and a PNG's IHDR.
fn peek_b64(b64: &str) -> Vec<u8> {
    let head = &b64.as_bytes()[..b64.len().min(32)];
    base64::engine::general_purpose::STANDARD
        .decode(head)
        .unwrap_or_default()
}

/// `stream: true`: the status is decided now (200), the image follows as one
/// `image_generation.completed` / `image_edit.completed` event per image, with `: keepalive`
/// comments while the upstream works (a 2-minute generation keeps the connection alive).
fn stream(state: Arc<AppState>, req: ImageRequest, plan: upstream::Plan, ctx: CallCtx) -> Response {
    let keepalive = state.config.server.keepalive_interval;
    let prefix = match req.op {
        Operation::Generate => "image_generation",
        Operation::Edit => "image_edit",
    };
    let log_req = req.clone();
    let events = futures_util::stream::once(async move {
        match run(&state, &req, plan, &ctx).await {
            Ok((body, _)) => completed_events(prefix, body),
            Err((e, _)) => vec![Event::default().event("error").data(e.body().to_string())],
        }
    })
    .flat_map(|events| {
        futures_util::stream::iter(events.into_iter().map(Ok::<_, std::convert::Infallible>))
    });
    let sse = Sse::new(events).keep_alive(KeepAlive::new().interval(keepalive).text("keepalive"));
    with_log(sse.into_response(), &log_req, &[])
}

fn completed_events(prefix: &str, mut body: Value) -> Vec<Event> {
    let items = match body["data"].take() {
        Value::Array(items) => items,
        _ => Vec::new(),
    };
    let mut events: Vec<Event> = items
        .into_iter()
        .map(|mut item| {
            let payload = json!({
                "type": format!("{prefix}.completed"),
                "b64_json": item["b64_json"].take(),
                "created_at": body["created"],
                "size": body.get("size").cloned().unwrap_or(json!("auto")),
                "quality": body.get("quality").cloned().unwrap_or(json!("auto")),
                "output_format": body.get("output_format").cloned().unwrap_or(json!("png")),
                "background": body.get("background").cloned().unwrap_or(json!("auto")),
            });
            Event::default()
                .event(format!("{prefix}.completed"))
                .data(payload.to_string())
        })
        .collect();
    events.push(Event::default().data("[DONE]"));
    events
}

fn with_log(mut res: Response, req: &ImageRequest, task_ids: &[String]) -> Response {
    res.extensions_mut().insert(RequestLog {
        model: Some(req.model),
        n: req.n,
        task_ids: task_ids.join(","),
    });
    res
}
