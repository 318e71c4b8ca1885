//! `POST /v1/images/generations` and `POST /v1/images/edits`: parse → normalise
//! ([`ImageRequest`]) → choose candidate models (`routing`) → plan (model checks, no I/O) →
//! execute upstream with failover → answer as OpenAI's `ImagesResponse` with the
//! `x-imagegate-*` headers, or as an SSE stream with keepalives when the client asked for `stream`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header::CONTENT_TYPE, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde_json::{json, Map, Value};
use tokio::time::Instant;
use tracing::Instrument as _;

use super::edits::{self, EditParts};
use crate::error::ApiError;
use crate::gate;
use crate::keys::ClientKey;
use crate::ledger::Outcome;
use crate::limits::Admission;
use crate::metrics::{Fault, UpstreamWait};
use crate::model::Usd;
use crate::model::{ImageFormat, ModelId, Quality};
use crate::request::{ImageRequest, Operation, ResponseFormat};
use crate::routing::failover::{self, Caller, Failed};
use crate::routing::{Candidate, Constraints};
use crate::state::{AppState, RequestLog};
use crate::upstream::{results, CallCtx, Image, Plan};

/// Response header: the upstream model that served the request.
pub const UPSTREAM_HEADER: &str = "x-imagegate-upstream";
/// Response header: what the request cost upstream, in USD.
pub const COST_HEADER: &str = "x-imagegate-cost-usd";
/// Response header: upstream models tried (1 when the first one served it).
pub const ATTEMPTS_HEADER: &str = "x-imagegate-attempts";

pub async fn generations(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let call = match Call::from_request(&request) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
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
        Ok(req) => answer(state, call, req).await,
        Err(e) => e.into_response(),
    }
}

pub async fn edits(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let call = match Call::from_request(&request) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    match edit_request(&state, request).await {
        Ok(req) => answer(state, call, req).await,
        Err(e) => e.into_response(),
    }
}

/// Who is calling and how: the authenticated key, the routing headers, the request id and the
/// request's upstream clock (set by the metrics layer).
struct Call {
    caller: ClientKey,
    limits: Constraints,
    request_id: String,
    wait: UpstreamWait,
}

impl Call {
    fn from_request(request: &Request) -> Result<Self, ApiError> {
        let caller = request
            .extensions()
            .get::<ClientKey>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("No API key."))?;
        Ok(Self {
            caller,
            limits: Constraints::from_headers(request.headers())?,
            request_id: request_id(request.headers()),
            wait: request
                .extensions()
                .get::<UpstreamWait>()
                .cloned()
                .unwrap_or_default(),
        })
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

/// Routes, admits and runs a request, then answers.
///
/// Everything that can refuse it without spending runs first, before any upstream call: the
/// candidates (no model fits → 400/503), the first candidate's plan (bad input → 400), the key's
/// access and rate limits (403/429). Budgets are reserved per attempt by
/// [`failover::run`]. The served model, its cost and the attempts are returned as
/// `x-imagegate-*` headers; the key's limits as `x-ratelimit-*`.
async fn answer(state: Arc<AppState>, call: Call, mut req: ImageRequest) -> Response {
    let started = Instant::now();
    let checked = (|| {
        let candidates =
            state
                .routing
                .candidates(&state.config.models, &req, &req.route, call.limits)?;
        let (plan, rest) = failover::prepare(&mut req, &candidates)?;
        let rest = rest.to_vec();
        let admission = gate::admit(&state, &call.caller, &req)?;
        Ok::<_, ApiError>((plan, rest, admission))
    })();
    let (plan, candidates, admission) = match checked {
        Ok(c) => c,
        Err(e) => return finish(&state, &call, &req, started, None, Err(e.into())),
    };
    if req.stream {
        return stream(state, call, req, candidates, plan, admission, started);
    }
    let result = run(&state, &call, &mut req, &candidates, plan).await;
    finish(&state, &call, &req, started, Some(&admission), result)
}

/// Writes the ledger row ([`gate::close`]), then answers with the routing and rate-limit headers.
fn finish(
    state: &AppState,
    call: &Call,
    req: &ImageRequest,
    started: Instant,
    admission: Option<&Admission>,
    result: Result<(Value, ServedBy), Failed>,
) -> Response {
    let (res, by) = match result {
        Ok((body, by)) => (super::body::json(body), by),
        Err(failed) => (
            failed.error.clone().into_response(),
            ServedBy::from_failed(&failed),
        ),
    };
    let outcome = by.outcome(res.status().as_u16(), res.extensions().get::<ApiError>());
    let id = &call.request_id;
    let headers = gate::close(state, &call.caller, req, id, started, admission, outcome);
    let mut res = with_log(state, res, req, Some(&by));
    add_headers(&mut res, headers);
    res
}

/// What the answer says about how it was served (headers, ledger row and the access log).
#[derive(Debug, Clone, Default)]
pub struct ServedBy {
    pub model: Option<ModelId>,
    /// What the upstream billed (zero when nothing was made).
    pub cost: Usd,
    pub attempts: u32,
    pub task_ids: Vec<String>,
}

impl ServedBy {
    fn from_failed(f: &Failed) -> Self {
        Self {
            model: f.model,
            cost: f.cost,
            attempts: f.attempts,
            task_ids: f.task_ids.clone(),
        }
    }

    fn outcome(&self, status: u16, error: Option<&ApiError>) -> Outcome {
        Outcome {
            status,
            error_code: error.map(|e| e.code),
            // A failure served nothing, unless the upstream made (and billed) images.
            served: self.model.filter(|_| status < 400 || self.cost > Usd::ZERO),
            cost: self.cost,
            task_ids: self.task_ids.clone(),
        }
    }
}

async fn run(
    state: &AppState,
    call: &Call,
    req: &mut ImageRequest,
    candidates: &[Candidate],
    plan: Plan,
) -> Result<(Value, ServedBy), Failed> {
    let id = &call.request_id;
    let who = Caller {
        key: &call.caller,
        request_id: id,
        wait: &call.wait,
    };
    let served = failover::run(state, &who, req, candidates, plan).await?;
    let by = ServedBy {
        model: Some(served.model),
        cost: served.cost,
        attempts: served.attempts,
        task_ids: served.output.task_ids.clone(),
    };
    let format = if req.stream {
        ResponseFormat::B64Json
    } else {
        req.response_format
    };
    match materialize(state, call, req, served.output.images, format).await {
        Ok(body) => Ok((body, by)),
        Err(error) => Err(Failed {
            error,
            model: by.model,
            cost: by.cost,
            attempts: by.attempts,
            task_ids: by.task_ids,
        }),
    }
}

/// Builds the `ImagesResponse`. `b64_json` is taken as the upstream sent it when it sent one in
/// the wanted format; result URLs are downloaded concurrently otherwise, and converted when the
/// model made another format. `url` answers the upstream URL as is.
///
/// The answer's `size` and `output_format` describe the bytes delivered, read from the image
/// itself; a `url` answer, whose bytes the gateway never holds, leaves them out.
async fn materialize(
    state: &AppState,
    call: &Call,
    req: &ImageRequest,
    images: Vec<Image>,
    format: ResponseFormat,
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
                request_id: call.request_id.clone(),
                model: req.model,
                wait: call.wait.clone(),
            };
            // OpenAI's default output format is PNG.
            let wanted = req.output_format.unwrap_or(ImageFormat::Png);
            let mut fetched = state
                .upstream
                .fetch_b64(&to_fetch, wanted, &ctx)
                .await?
                .into_iter();
            for img in images {
                let enc = match img.b64 {
                    Some(b64) => results::inline(b64, wanted).await,
                    None => match fetched.next() {
                        Some(enc) => enc,
                        None => continue,
                    },
                };
                learned_format = learned_format.or(enc.format);
                learned_size = learned_size.or(enc.size);
                data.push(json!({ "b64_json": enc.b64 }));
            }
        }
    }
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut body = json!({ "created": created, "data": data });
    if let Some(size) = learned_size {
        body["size"] = json!(size.to_string());
    }
    if req.quality != Quality::Auto {
        body["quality"] = json!(req.quality.as_str());
    }
    if let Some(f) = learned_format {
        body["output_format"] = json!(f.as_str());
    }
    if let Some(bg @ ("transparent" | "opaque")) = req.background.as_deref() {
        body["background"] = json!(bg);
    }
    Ok(body)
}

/// `stream: true`: the status is decided now (200), the image follows as one
/// `image_generation.completed` / `image_edit.completed` event per image, with `: keepalive`
/// comments while the upstream works (a 2-minute generation keeps the connection alive).
fn stream(
    state: Arc<AppState>,
    call: Call,
    req: ImageRequest,
    candidates: Vec<Candidate>,
    plan: Plan,
    admission: Admission,
    started: Instant,
) -> Response {
    let keepalive = state.config.server.keepalive_interval;
    let prefix = match req.op {
        Operation::Generate => "image_generation",
        Operation::Edit => "image_edit",
    };
    let log_req = req.clone();
    let state_for_log = state.clone();
    let headers = admission.headers();
    let events = futures_util::stream::once(
        async move {
            let mut req = req;
            let result = run(&state, &call, &mut req, &candidates, plan).await;
            let (status, error, by) = match &result {
                Ok((_, by)) => (200, None, by.clone()),
                Err(f) => (
                    f.error.status.as_u16(),
                    Some(&f.error),
                    ServedBy::from_failed(f),
                ),
            };
            let outcome = by.outcome(status, error);
            let id = &call.request_id;
            gate::close(
                &state,
                &call.caller,
                &req,
                id,
                started,
                Some(&admission),
                outcome,
            );
            match result {
                Ok((body, _)) => completed_events(prefix, body),
                Err(failed) => {
                    // The status went out as 200 before the failure: counted here, not by the
                    // metrics layer.
                    state.metrics.error(Fault::of(&failed.error));
                    let body = failed.error.body().to_string();
                    vec![Event::default().event("error").data(body)]
                }
            }
        }
        .instrument(tracing::Span::current()),
    )
    .flat_map(|events| {
        futures_util::stream::iter(events.into_iter().map(Ok::<_, std::convert::Infallible>))
    });
    let sse = Sse::new(events).keep_alive(KeepAlive::new().interval(keepalive).text("keepalive"));
    let mut res = with_log(&state_for_log, sse.into_response(), &log_req, None);
    add_headers(&mut res, headers);
    res
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

/// The `x-ratelimit-*` headers of the request's admission.
fn add_headers(res: &mut Response, headers: Vec<(&'static str, String)>) {
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            res.headers_mut().insert(name, v);
        }
    }
}

fn with_log(
    state: &AppState,
    mut res: Response,
    req: &ImageRequest,
    by: Option<&ServedBy>,
) -> Response {
    if let Some(by) = by {
        let headers = res.headers_mut();
        if let Some(m) = by.model {
            headers.insert(UPSTREAM_HEADER, HeaderValue::from_static(m.as_str()));
            if let Ok(cost) = HeaderValue::from_str(&by.cost.to_string()) {
                headers.insert(COST_HEADER, cost);
            }
        }
        headers.insert(ATTEMPTS_HEADER, HeaderValue::from(by.attempts));
    }
    res.extensions_mut().insert(RequestLog {
        public_model: Some(req.route.public.clone()),
        upstream_model: by.and_then(|b| b.model),
        cost: by.map(|b| b.cost),
        attempts: by.map_or(0, |b| b.attempts),
        n: req.n,
        task_ids: by.map(|b| b.task_ids.join(",")).unwrap_or_default(),
        prompt: state.config.logging.log_prompts.then(|| req.prompt.clone()),
    });
    res
}
