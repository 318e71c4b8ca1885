//! The `/api/v1` gate and the platform's error body.
//!
//! Every `/api/v1/*` request passes through [`gate`], which buffers the body, records the request
//! for `GET /_sim/requests`, counts it in the stats, and checks `Authorization: Bearer <key>`
//! (401 `{"code":401,"msg":"Invalid API key"}` otherwise) before the handler sees it.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::control::{redact, PartRecord, RequestRecord};
use super::render::sniff;
use super::state::{lock, AppState};
use super::BODY_LIMIT;

/// The endpoints counted as creates in the stats.
const CREATE_PATHS: [&str; 4] = [
    "/api/v1/images/generations",
    "/api/v1/images/edits",
    "/api/v1/images/generations-sync",
    "/api/v1/images/edit",
];

/// An error answer: HTTP `status` with body `{"code":code,"msg":msg}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: u16,
    msg: String,
}

impl ApiError {
    pub fn with(status: StatusCode, code: u16, msg: impl Into<String>) -> Self {
        Self {
            status,
            code,
            msg: msg.into(),
        }
    }

    /// HTTP 400 with `code: 400`.
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::with(StatusCode::BAD_REQUEST, 400, msg)
    }

    /// HTTP 503, used when the simulator shuts down under a waiting request.
    pub fn shutting_down() -> Self {
        Self::with(
            StatusCode::SERVICE_UNAVAILABLE,
            503,
            "service shutting down",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"code": self.code, "msg": self.msg})),
        )
            .into_response()
    }
}

/// Handler result: a full response or an error body.
pub(crate) type ApiResult = Result<Response, ApiError>;

/// Unknown `/api/v1/*` paths.
pub(crate) async fn not_found() -> ApiError {
    ApiError::with(StatusCode::NOT_FOUND, 404, "not found")
}

/// Records, counts and authenticates every `/api/v1/*` request.
pub(crate) async fn gate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, BODY_LIMIT).await else {
        return ApiError::with(StatusCode::PAYLOAD_TOO_LARGE, 413, "request body too large")
            .into_response();
    };
    let token = bearer(&parts.headers);
    let account = lock(&state.accounts).get(token).copied();
    let auth_ok = (!token.is_empty() && token == state.config.api_key) || account.is_some();
    let path = parts.uri.path().to_string();
    let is_multipart = content_type(&parts.headers).starts_with("multipart/form-data");
    let (json, multipart) = if is_multipart {
        let mut probe = Request::new(Body::from(bytes.clone()));
        *probe.headers_mut() = parts.headers.clone();
        *probe.extensions_mut() = parts.extensions.clone();
        (None, Some(multipart_summary(probe).await))
    } else {
        let json = serde_json::from_slice::<Value>(&bytes).ok().map(redact);
        (json, None)
    };
    let query: HashMap<String, String> = Query::try_from_uri(&parts.uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    let task_id = query.get("task_id").cloned();
    let model = request_model(
        &state,
        &path,
        json.as_ref(),
        multipart.as_deref(),
        task_id.as_deref(),
    );
    let is_poll = parts.method == Method::GET && path == "/api/v1/images/generations";
    let is_create = parts.method == Method::POST && CREATE_PATHS.contains(&path.as_str());
    let record = RequestRecord {
        method: parts.method.to_string(),
        path,
        query: parts.uri.query().map(str::to_string),
        model,
        request_id: parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        auth_ok,
        json,
        multipart,
    };
    {
        let mut intro = lock(&state.intro);
        intro.record(record);
        if auth_ok {
            if is_create {
                intro.stats.creates += 1;
            }
            if is_poll {
                intro.stats.polls += 1;
                if let Some(id) = task_id {
                    *intro.stats.polls_by_task.entry(id).or_default() += 1;
                }
            }
        }
    }
    if !auth_ok {
        return ApiError::with(StatusCode::UNAUTHORIZED, 401, "Invalid API key").into_response();
    }
    if account == Some(false) {
        return ApiError::with(StatusCode::PAYMENT_REQUIRED, 402, "insufficient credits")
            .into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// The bearer token, or `""`.
fn bearer(headers: &HeaderMap) -> &str {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return "";
    };
    let mut it = value.trim().splitn(2, ' ');
    let scheme = it.next().unwrap_or_default();
    let token = it.next().unwrap_or_default().trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        token
    } else {
        ""
    }
}

pub(crate) fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// The parts of a multipart body, as recorded (file parts by size and kind, short text values).
async fn multipart_summary(probe: Request) -> Vec<PartRecord> {
    let mut out = Vec::new();
    let Ok(mut mp) = axum::extract::Multipart::from_request(probe, &()).await else {
        return out;
    };
    while let Ok(Some(field)) = mp.next_field().await {
        let name = field.name().unwrap_or_default().to_string();
        let filename = field.file_name().map(str::to_string);
        let Ok(data) = field.bytes().await else { break };
        let value = match (&filename, std::str::from_utf8(&data)) {
            (None, Ok(text)) if text.len() <= 200 => Some(text.to_string()),
            _ => None,
        };
        out.push(PartRecord {
            name,
            filename,
            len: data.len(),
            kind: sniff(&data).name(),
            value,
        });
    }
    out
}

/// The model a request targets: the body's `model`, else the one implied by the path (SparkPix
/// endpoints, the multipart edit endpoint), else, for a poll, the polled task's model.
fn request_model(
    state: &AppState,
    path: &str,
    json: Option<&Value>,
    multipart: Option<&[PartRecord]>,
    task_id: Option<&str>,
) -> Option<String> {
    let from_body = json
        .and_then(|j| j.get("model"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            multipart?
                .iter()
                .find(|p| p.name == "model")
                .and_then(|p| p.value.clone())
        });
    if from_body.is_some() {
        return from_body;
    }
    match path {
        "/api/v1/images/edits" => Some("gpt-image-2-all".into()),
        "/api/v1/images/generations-sync" => Some("sparkpix-image".into()),
        "/api/v1/images/edit" => Some("sparkpix-edit".into()),
        _ => task_id.and_then(|id| lock(&state.tasks).model_of(id)),
    }
}
