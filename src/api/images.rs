//! `POST /v1/images/generations` and `POST /v1/images/edits`: parse the wire form into an
//! immutable [`ImageRequest`] (its [`Head`] first, then the public name resolved to a route),
//! hand it to [`dispatch`](crate::dispatch), and render what comes back — OpenAI's
//! `ImagesResponse` with the `x-imagegate-*` headers, or an SSE stream with keepalives when the
//! client asked for `stream`. Nothing else happens here.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde_json::{json, Map, Value};
use tracing::Instrument as _;

use super::edits::{self, EditParts};
use crate::dispatch::{job_note, Call, Finished, ImagesBody, Item, ServedBy};
use crate::error::{ApiError, ErrorCode};
use crate::jobs::{self, Admitted, JobOptions, Progress};
use crate::keys::ClientKey;
use crate::metrics::JobEvent;
use crate::metrics::UpstreamWait;
use crate::model::Route;
use crate::request::{Head, ImageRequest, Operation};
use crate::routing::Constraints;
use crate::state::{AppState, RequestLog};

/// Response header: the upstream model that served the request.
pub const UPSTREAM_HEADER: &str = "x-imagegate-upstream";
/// Response header: what the request cost upstream, in USD.
pub const COST_HEADER: &str = "x-imagegate-cost-usd";
/// Response header: upstream models tried (1 when the first one served it).
pub const ATTEMPTS_HEADER: &str = "x-imagegate-attempts";
/// Response header: the job of every image answer after admission.
pub const JOB_HEADER: &str = "x-imagegate-job-id";

pub async fn generations(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let checked = call_of(&request)
        .and_then(|(call, opts)| precheck(&state, &request, &call, &opts).map(|()| (call, opts)));
    let (call, opts) = match checked {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let limit = state.config.server.max_body_bytes;
    let parsed = match json_content_type(request.headers()) {
        Err(e) => Err(e),
        Ok(()) => match Bytes::from_request(request, &()).await {
            Ok(body) => json_object(&body),
            Err(e) => Err(body_error(e.status(), limit)),
        },
    }
    .and_then(|fields| {
        let parts = EditParts {
            fields,
            images: Vec::new(),
            mask: None,
        };
        parse(&state, Operation::Generate, parts)
    });
    match parsed {
        Ok((route, req, digest, callback)) => {
            let opts = JobOptions {
                callback_url: callback,
                ..opts
            }
            .implicit_key(&digest);
            answer(state, call, route, req, digest, opts).await
        }
        Err(e) => e.into_response(),
    }
}

pub async fn edits(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let checked = call_of(&request)
        .and_then(|(call, opts)| precheck(&state, &request, &call, &opts).map(|()| (call, opts)));
    let (call, opts) = match checked {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let parsed = match edit_parts(&state, request).await {
        Ok(parts) => parse(&state, Operation::Edit, parts),
        Err(e) => Err(e),
    };
    match parsed {
        Ok((route, req, digest, callback)) => {
            let opts = JobOptions {
                callback_url: callback,
                ..opts
            }
            .implicit_key(&digest);
            answer(state, call, route, req, digest, opts).await
        }
        Err(e) => e.into_response(),
    }
}

/// Bodies from this size on (or of unknown size) are checked against the caller's limits
/// before they are read.
const LARGE_BODY: u64 = 1 << 20;

/// Before a large body is read, a first attempt that the caller's limits refuse anyway is
/// refused (a retry or an `Idempotency-Key` request may join its job: it is let through).
fn precheck(
    state: &AppState,
    request: &Request,
    call: &Call,
    opts: &JobOptions,
) -> Result<(), ApiError> {
    if large_body(request)
        && !opts.sdk_retry
        && opts.idempotency_key.is_none()
        && opts.codex_turn.is_none()
    {
        state.limits.precheck(&call.caller)?;
    }
    Ok(())
}

/// Whether the request's body is at least [`LARGE_BODY`] bytes, or of unknown size.
pub(super) fn large_body(request: &Request) -> bool {
    request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_none_or(|n| n >= LARGE_BODY)
}

/// Who is calling and how: the authenticated key, the routing headers, the request id and the
/// request's upstream clock (set by the metrics layer); and the job headers.
pub(super) fn call_of(request: &Request) -> Result<(Call, JobOptions), ApiError> {
    let caller = request
        .extensions()
        .get::<ClientKey>()
        .cloned()
        .ok_or_else(|| ApiError::unauthorized("No API key."))?;
    let opts = JobOptions::from_headers(request.headers())?;
    let call = Call {
        caller,
        constraints: Constraints::from_headers(request.headers())?,
        request_id: request_id(request.headers()),
        wait: request
            .extensions()
            .get::<UpstreamWait>()
            .cloned()
            .unwrap_or_default(),
    };
    Ok((call, opts))
}

/// The request's head, its public name resolved, then the rest of its fields; the digest that
/// tells a retry of this request from another one; and its `callback_url` (the gateway's own
/// field: never sent upstream).
pub(super) fn parse(
    state: &AppState,
    op: Operation,
    mut parts: EditParts,
) -> Result<(Route, ImageRequest, String, Option<String>), ApiError> {
    let head = Head::from_fields(&parts.fields)?;
    let route = state.resolve_model(head.model.as_deref())?;
    let digest = jobs::digest(op, &parts);
    let callback = match parts.fields.remove("callback_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(url)) => {
            crate::webhooks::check_target(state, "callback_url", &url)?;
            Some(url)
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "callback_url",
                "callback_url must be a URL string.",
            ))
        }
    };
    let req = ImageRequest::from_fields(op, head, &parts.fields, parts.images, parts.mask)?;
    Ok((route, req, digest, callback))
}

pub(super) async fn edit_parts(state: &AppState, request: Request) -> Result<EditParts, ApiError> {
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let limit = state.config.server.max_body_bytes;
    if content_type.starts_with("multipart/form-data") {
        let form = Multipart::from_request(request, &())
            .await
            .map_err(|e| ApiError::bad_body(e.body_text()))?;
        edits::from_multipart(form, limit).await
    } else if content_type.starts_with("application/json") || content_type.is_empty() {
        let body = Bytes::from_request(request, &())
            .await
            .map_err(|e| body_error(e.status(), limit))?;
        edits::from_json(json_object(&body)?)
    } else {
        Err(ApiError::unsupported_media_type(&content_type))
    }
}

/// A generation is JSON: `application/json` (any parameters), or no `Content-Type` at all.
pub(super) fn json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or_default().to_ascii_lowercase();
    let essence = text.split(';').next().unwrap_or_default().trim();
    if essence == "application/json" {
        Ok(())
    } else {
        Err(ApiError::unsupported_media_type(&text))
    }
}

pub(super) fn body_error(status: StatusCode, limit: usize) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(limit)
    } else {
        ApiError::bad_body("The request body could not be read.")
    }
}

/// Parses a JSON object body; anything else is a 400 that says what is wrong.
pub(super) fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
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

pub(super) fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Runs a parsed request as a job (or joins the job it repeats) and renders the answer.
async fn answer(
    state: Arc<AppState>,
    call: Call,
    route: Route,
    req: ImageRequest,
    digest: String,
    opts: JobOptions,
) -> Response {
    // Admission is a future of its own, freed before the wait: a request waiting minutes on its
    // job holds only what the wait needs (memory per waiting request).
    let Started {
        admitted,
        rate_headers,
        first,
        log,
        stream,
        prefix,
        respond_async,
    } = match Box::pin(admit(&state, call, route, req, digest, opts)).await {
        Ok(started) => started,
        Err(res) => return res,
    };
    if respond_async {
        return Box::pin(accepted(&state, &admitted)).await;
    }
    if stream {
        return sse(state, prefix, admitted, first, rate_headers, log);
    }
    let (mut finished, replayed) = outcome(&state, admitted, first).await;
    finished.rate_headers.extend(rate_headers);
    let mut res = render(finished, log);
    if replayed {
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    res
}

/// A request admitted as a job (or joined to one), and what its answer needs.
struct Started {
    admitted: Admitted,
    rate_headers: Vec<(&'static str, String)>,
    first: bool,
    log: RequestLog,
    stream: bool,
    prefix: &'static str,
    respond_async: bool,
}

/// Admits a parsed request: joins the job it repeats, or prepares it and starts its job. A
/// refusal is the answer.
async fn admit(
    state: &Arc<AppState>,
    call: Call,
    route: Route,
    req: ImageRequest,
    digest: String,
    mut opts: JobOptions,
) -> Result<Started, Response> {
    let log = RequestLog::new(&route, &req, state.config.logging.log_prompts);
    // The job's end is posted to the request's callback_url, else to the key's webhook_url.
    if opts.callback_url.is_none() {
        opts.callback_url = call.caller.record.spec.webhook_url.clone();
    }
    if opts.callback_url.is_some() && state.keys.webhook_secret(&call.caller.id).await.is_none() {
        return Err(ApiError::invalid(
            "callback_url",
            "This key has no webhook secret to sign with: set `webhook_secret` on a config-file key, or create one with POST /admin/keys/{id}/webhook-secret.",
        )
        .into_response());
    }
    let stream = req.stream;
    let prefix = match req.op {
        Operation::Generate => "image_generation",
        Operation::Edit => "image_edit",
    };
    // A retry, or a request with a known Idempotency-Key, joins its job: no new admission.
    let joined = state
        .jobs
        .existing(state, &call.caller.id, &digest, &opts)
        .await;
    let (admitted, rate_headers, first) = match joined {
        Err(e) => return Err(e.into_response()),
        Ok(Some(admitted)) => (admitted, Vec::new(), false),
        Ok(None) => {
            let prepared = match state.dispatch().prepare(call, route, req).await {
                Ok(p) => p,
                Err(refused) => return Err(render(*refused, log)),
            };
            let rate_headers = prepared.rate_headers();
            match state.jobs.start(state, prepared, &digest, &opts).await {
                Ok(a @ Admitted::Job(..)) => (a, rate_headers, true),
                Ok(a) => (a, rate_headers, false),
                Err(e) => return Err(e.into_response()),
            }
        }
    };
    Ok(Started {
        admitted,
        rate_headers,
        first,
        log: RequestLog {
            joined: !first,
            ..log
        },
        stream,
        prefix,
        respond_async: opts.respond_async,
    })
}

/// Waits for a job's answer: until it is done, or until the first caller's deadline passes
/// (then a 504 naming the job: the work goes on); a joining request waits up to the longest
/// model deadline. A finished job is replayed (`true`).
async fn outcome(state: &AppState, admitted: Admitted, first: bool) -> (Finished, bool) {
    let (id, mut rx) = match admitted {
        Admitted::Finished(job) => {
            state.metrics.job(JobEvent::Replayed);
            return (Box::pin(jobs::replay(state, &job)).await, true);
        }
        Admitted::Job(id, rx) => (id, rx),
    };
    let patience = state.longest_deadline();
    let wait = async {
        loop {
            let now = rx.borrow_and_update().clone();
            match now {
                Progress::Done(f) => return Some(f),
                Progress::Late if first => return None,
                Progress::Late | Progress::Running => {}
            }
            if rx.changed().await.is_err() {
                // The job's owner is gone without an answer (it panicked): read the store.
                return None;
            }
        }
    };
    let stopping = async {
        state.jobs.draining().await;
        // A job whose task the platform holds is resumed by the next process: its callers are
        // told now. One inside a sync call is drained to its end.
        loop {
            if job_in_progress(state, &id).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let waited = tokio::select! {
        w = tokio::time::timeout(patience, wait) => w.ok().flatten(),
        () = stopping => {
            let e = ApiError::new(
                ErrorCode::ShuttingDown,
                format!("The gateway is restarting. Job {id} goes on in the next process: send the same request again (an SDK retry or the same Idempotency-Key joins the job) or read GET /v1/images/jobs/{id}."),
            );
            let finished = Finished {
                result: Err(e),
                served: ServedBy::default(),
                rate_headers: Vec::new(),
                job_id: Some(id),
            };
            return (finished, false);
        }
    };
    match waited {
        Some(f) => (share(&f), false),
        None => {
            let e = ApiError::new(
                ErrorCode::UpstreamTimeout,
                format!(
                    "The upstream did not finish within the model's deadline; the work goes on.{}",
                    job_note(&id)
                ),
            );
            let finished = Finished {
                result: Err(e),
                served: ServedBy::default(),
                rate_headers: Vec::new(),
                job_id: Some(id),
            };
            (finished, false)
        }
    }
}

/// Whether the job's tasks are with the platform (`in_progress`): then the next process can
/// resume it.
async fn job_in_progress(state: &AppState, id: &str) -> bool {
    matches!(
        state.store().job(id.to_owned()).await,
        Ok(Some(job)) if job.state == crate::store::JobState::InProgress
    )
}

/// A copy of a shared answer for one more waiter.
fn share(f: &Finished) -> Finished {
    Finished {
        result: f.result.clone(),
        served: f.served.clone(),
        rate_headers: f.rate_headers.clone(),
        job_id: f.job_id.clone(),
    }
}

/// `Prefer: respond-async`: 202 with the job object and its `Location`.
async fn accepted(state: &AppState, admitted: &Admitted) -> Response {
    let id = match admitted {
        Admitted::Job(id, _) => id.to_string(),
        Admitted::Finished(job) => job.id.clone(),
    };
    let job = state.store().job(id.clone()).await;
    let job = match job {
        Ok(Some(job)) => job,
        Ok(None) => return ApiError::internal("The job is gone.").into_response(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let mut res = super::body::json(jobs::job_object(&job, None));
    *res.status_mut() = StatusCode::ACCEPTED;
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/images/jobs/{id}")) {
        res.headers_mut().insert(axum::http::header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(JOB_HEADER, v);
    }
    res
}

/// The JSON answer (or error) with the routing, cost, job and rate-limit headers.
fn render(finished: Finished, log: RequestLog) -> Response {
    let Finished {
        result,
        served,
        rate_headers,
        job_id,
    } = finished;
    let mut res = match result {
        Ok(body) => super::body::json_text(body.into_json()),
        Err(error) => error.into_response(),
    };
    served_headers(&mut res, &served);
    add_headers(&mut res, rate_headers);
    if let Some(v) = job_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        res.headers_mut().insert(JOB_HEADER, v);
    }
    res.extensions_mut().insert(log.served(&served));
    res
}

/// `stream: true`: the status is decided now (200), the image follows as one
/// `image_generation.completed` / `image_edit.completed` event per image, with `: keepalive`
/// comments while the upstream works (a 2-minute generation keeps the connection alive).
fn sse(
    state: Arc<AppState>,
    prefix: &'static str,
    admitted: Admitted,
    first: bool,
    headers: Vec<(&'static str, String)>,
    log: RequestLog,
) -> Response {
    let keepalive = state.config.server.keepalive_interval;
    let job_id = match &admitted {
        Admitted::Job(id, _) => id.to_string(),
        Admitted::Finished(job) => job.id.clone(),
    };
    let events = futures_util::stream::once(
        async move {
            let (finished, _) = outcome(&state, admitted, first).await;
            match finished.result {
                Ok(body) => completed_events(prefix, body),
                Err(error) => {
                    // The status went out as 200 before the failure: counted here, not by the
                    // metrics layer.
                    state.metrics.error(error.code.fault());
                    vec![Event::default()
                        .event("error")
                        .data(error.body().to_string())]
                }
            }
        }
        .instrument(tracing::Span::current()),
    )
    .flat_map(|events| {
        futures_util::stream::iter(events.into_iter().map(Ok::<_, std::convert::Infallible>))
    });
    let sse = Sse::new(events).keep_alive(KeepAlive::new().interval(keepalive).text("keepalive"));
    let mut res = sse.into_response();
    res.extensions_mut().insert(log);
    add_headers(&mut res, headers);
    if let Ok(v) = HeaderValue::from_str(&job_id) {
        res.headers_mut().insert(JOB_HEADER, v);
    }
    res
}

fn completed_events(prefix: &str, answer: ImagesBody) -> Vec<Event> {
    let body = Value::Object(answer.head);
    let mut events: Vec<Event> = answer
        .data
        .into_iter()
        .map(|item| {
            let b64 = match item {
                Item::B64(b64) => json!(String::from_utf8_lossy(&b64)),
                Item::Url(_) => Value::Null,
            };
            let payload = json!({
                "type": format!("{prefix}.completed"),
                "b64_json": b64,
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

/// `x-imagegate-upstream`, `x-imagegate-cost-usd` (when a model was tried) and
/// `x-imagegate-attempts`.
fn served_headers(res: &mut Response, by: &ServedBy) {
    let headers = res.headers_mut();
    if let Some(m) = by.model {
        headers.insert(UPSTREAM_HEADER, HeaderValue::from_static(m.as_str()));
        if let Ok(cost) = HeaderValue::from_str(&by.cost.to_string()) {
            headers.insert(COST_HEADER, cost);
        }
    }
    headers.insert(ATTEMPTS_HEADER, HeaderValue::from(by.attempts));
}

fn add_headers(res: &mut Response, headers: Vec<(&'static str, String)>) {
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            res.headers_mut().insert(name, v);
        }
    }
}
