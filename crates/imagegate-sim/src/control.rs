//! The unauthenticated control plane under `/_sim/`: the fault table, the request log and the
//! counters that tests and benchmarks read.
//!
//! - `GET /_sim/faults`, `POST /_sim/faults`: read / replace the per-model fault table.
//! - `GET /_sim/requests`: every `/api/v1/*` request received (last 10,000), large base64
//!   strings replaced by `"<base64 N bytes>"` (N: length of the base64 text).
//! - `GET /_sim/stats`: counters, the ids of the tasks created and what the platform would
//!   have billed (see [`Stats`] and `billing`).
//! - `POST /_sim/reset`: clears the request log, the counters and the fault table (tasks and
//!   result files are kept).

use std::collections::{BTreeMap, VecDeque};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

use super::api::ApiError;
use super::faults::{validate_table, FaultTable};
use super::state::{lock, AppState};

/// How many requests the log keeps, and how many task ids the stats list.
const LOG_CAP: usize = 10_000;

/// Strings longer than this that look like base64 are redacted in recorded bodies.
const REDACT_OVER: usize = 200;

/// One recorded `/api/v1/*` request.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RequestRecord {
    pub method: String,
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    pub model: Option<String>,
    /// The caller's `x-request-id` header, if any.
    pub request_id: Option<String>,
    pub auth_ok: bool,
    /// The JSON body (redacted), or `null` when the body was not JSON.
    pub json: Option<Value>,
    /// The multipart parts, or `null` when the body was not multipart.
    pub multipart: Option<Vec<PartRecord>>,
}

/// One part of a recorded multipart body.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PartRecord {
    pub name: String,
    pub filename: Option<String>,
    pub len: usize,
    /// `png`, `jpeg`, `webp` or `other`, from the magic bytes.
    pub kind: &'static str,
    /// The text of a non-file part of at most 200 bytes.
    pub value: Option<String>,
}

/// Counters returned by `GET /_sim/stats`.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Stats {
    /// Every `/api/v1/*` request, authorised or not.
    pub requests: u64,
    /// Authorised `POST`s to the four creation endpoints, whatever their outcome.
    pub creates: u64,
    /// Authorised `GET /api/v1/images/generations` polls.
    pub polls: u64,
    /// Authorised polls per `task_id` (known or not).
    pub polls_by_task: BTreeMap<String, u64>,
    /// The most polls answered at once (a `[sim:slowpoll]` poll counts while it waits).
    pub polls_in_flight_max: u64,
    /// `GET /files/*` requests, found or not.
    pub downloads: u64,
    /// Callback POST attempts (every retry counts).
    pub callbacks_sent: u64,
    /// Callback attempts answered with a 2xx.
    pub callbacks_delivered: u64,
    /// Ids of the tasks created, oldest first (the last 10,000), whatever their outcome or the
    /// fate of their create's answer: how to find the task of a `[sim:reset]` create.
    pub task_ids: VecDeque<String>,
    /// Tasks billed (completed successfully).
    pub tasks_billed: u64,
    /// What the platform would have charged in all, in micro-dollars.
    pub billed_micros: u64,
    /// `billed_micros` per model name (`gpt-image-2-all`, `sparkpix-edit`, …).
    pub billed_by_model: BTreeMap<String, u64>,
}

impl Stats {
    /// Notes a created task.
    pub fn task_created(&mut self, id: &str) {
        if self.task_ids.len() >= LOG_CAP {
            self.task_ids.pop_front();
        }
        self.task_ids.push_back(id.to_string());
    }

    /// Bills one completed task of `model`.
    pub fn bill(&mut self, model: &str, micros: u64) {
        self.tasks_billed += 1;
        self.billed_micros += micros;
        *self.billed_by_model.entry(model.to_string()).or_default() += micros;
    }
}

/// Request log and counters.
#[derive(Debug, Default)]
pub(crate) struct Introspection {
    log: VecDeque<RequestRecord>,
    pub stats: Stats,
}

impl Introspection {
    pub fn record(&mut self, r: RequestRecord) {
        self.stats.requests += 1;
        if self.log.len() >= LOG_CAP {
            self.log.pop_front();
        }
        self.log.push_back(r);
    }
}

/// Replaces every long base64-looking string inside `v` by `"<base64 N bytes>"`.
pub(crate) fn redact(v: Value) -> Value {
    match v {
        Value::String(s) if s.len() > REDACT_OVER && looks_base64(&s) => {
            Value::String(format!("<base64 {} bytes>", s.len()))
        }
        Value::Array(items) => Value::Array(items.into_iter().map(redact).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, redact(v))).collect()),
        other => other,
    }
}

/// Base64 text (standard or URL-safe alphabet), optionally behind a `data:…;base64,` prefix.
fn looks_base64(s: &str) -> bool {
    let body = match s.strip_prefix("data:") {
        Some(rest) => match rest.split_once(";base64,") {
            Some((_, b)) => b,
            None => return false,
        },
        None => s,
    };
    body.bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"+/=-_\r\n".contains(&c))
}

pub(crate) async fn get_faults(State(state): State<AppState>) -> Json<FaultTable> {
    Json(lock(&state.faults).clone())
}

pub(crate) async fn set_faults(State(state): State<AppState>, body: Bytes) -> Response {
    let table: FaultTable = match serde_json::from_slice(&body) {
        Ok(t) => t,
        Err(e) => {
            return ApiError::bad_request(format!("invalid fault table: {e}")).into_response()
        }
    };
    if let Err(msg) = validate_table(&table) {
        return ApiError::bad_request(msg).into_response();
    }
    *lock(&state.faults) = table.clone();
    (StatusCode::OK, Json(table)).into_response()
}

/// `POST /_sim/accounts` `{"<key>": true|false}`: more accepted keys; `false` means the
/// account is out of credits (every call answers 402).
pub(crate) async fn set_accounts(State(state): State<AppState>, body: Bytes) -> Response {
    match serde_json::from_slice::<std::collections::HashMap<String, bool>>(&body) {
        Ok(accounts) => {
            *lock(&state.accounts) = accounts;
            StatusCode::OK.into_response()
        }
        Err(e) => ApiError::bad_request(format!("invalid accounts: {e}")).into_response(),
    }
}

pub(crate) async fn requests(State(state): State<AppState>) -> Json<Vec<RequestRecord>> {
    Json(lock(&state.intro).log.iter().cloned().collect())
}

pub(crate) async fn stats(State(state): State<AppState>) -> Json<Stats> {
    Json(lock(&state.intro).stats.clone())
}

pub(crate) async fn reset(State(state): State<AppState>) -> Json<Value> {
    *lock(&state.intro) = Introspection::default();
    lock(&state.faults).clear();
    Json(json!({"ok": true}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_long_base64_only() {
        let long_b64 = "QUJD".repeat(100);
        let long_text = "a cat, ".repeat(60);
        let v = redact(
            json!({"a": long_b64, "b": [format!("data:image/png;base64,{long_b64}")], "c": long_text}),
        );
        assert_eq!(v["a"], "<base64 400 bytes>");
        assert_eq!(v["b"][0], "<base64 422 bytes>");
        assert_eq!(v["c"], Value::String(long_text));
    }
}
