//! Callback delivery, as the task/callback contract describes it: on a terminal state, one
//! `POST` to the request's callback URL with `Content-Type: application/json` and no signature
//! header; on failure 3 retries with backoff 1 s / 2 s / 4 s (10 s timeout per attempt), then a
//! re-send every 60 s until a 2xx or until 30 minutes after the first attempt.
//!
//! Every one of these durations is multiplied by the time scale, except that the per-attempt
//! timeout never drops below 2 s (a tiny scale would otherwise time out local receivers).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::jobs::{Task, TaskState};
use super::state::{lock, AppState};

const BACKOFF_SECS: [f64; 3] = [1.0, 2.0, 4.0];
const ATTEMPT_TIMEOUT_SECS: f64 = 10.0;
const MIN_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const RESEND_EVERY_SECS: f64 = 60.0;
const RESEND_WINDOW_SECS: f64 = 30.0 * 60.0;

/// The callback body for a task in a terminal state; `param` is the request as a JSON string.
///
/// `resultJson` is the JSON string `{"resultUrls":[…]}` when completed; when failed it is `null`
/// or `"{\"resultUrls\":[]}"`, alternating across tasks (the contract allows both).
pub(crate) fn body(task: &Task, param: String) -> Value {
    let completed = task.state == TaskState::Completed;
    let result_json = if completed {
        Value::String(json!({"resultUrls": task.result_urls}).to_string())
    } else if task.failed_shape.is_multiple_of(2) {
        Value::Null
    } else {
        Value::String(json!({"resultUrls": []}).to_string())
    };
    let complete = task.complete_ms.unwrap_or(task.create_ms);
    json!({
        "code": 200,
        "msg": "success",
        "data": {
            "taskId": task.id,
            "model": task.model.callback_name(),
            "state": task.state.name(),
            "param": param,
            "resultJson": result_json,
            "failCode": task.failure.as_ref().map(|f| f.code),
            "failMsg": task.failure.as_ref().map(|f| f.msg.clone()),
            "costTime": complete.saturating_sub(task.create_ms),
            "completeTime": complete,
            "createTime": task.create_ms,
        }
    })
}

/// Starts delivering `body` to `url` in the background.
pub(crate) fn spawn(state: &AppState, url: String, body: Value) {
    let st = state.clone();
    state
        .tracker
        .spawn(async move { deliver(st, url, body).await });
}

async fn deliver(state: AppState, url: String, body: Value) {
    let payload = body.to_string();
    let timeout = state
        .scaled(ATTEMPT_TIMEOUT_SECS)
        .max(MIN_ATTEMPT_TIMEOUT)
        .min(Duration::from_secs_f64(ATTEMPT_TIMEOUT_SECS));
    let started = Instant::now();
    if attempt(&state, &url, &payload, timeout).await {
        return;
    }
    for secs in BACKOFF_SECS {
        if !state.sleep(state.scaled(secs)).await {
            return;
        }
        if attempt(&state, &url, &payload, timeout).await {
            return;
        }
    }
    let window = state.scaled(RESEND_WINDOW_SECS);
    let every = state
        .scaled(RESEND_EVERY_SECS)
        .max(Duration::from_millis(1));
    while started.elapsed() + every <= window {
        if !state.sleep(every).await {
            return;
        }
        if attempt(&state, &url, &payload, timeout).await {
            return;
        }
    }
    tracing::debug!(%url, "simulated callback abandoned after the re-send window");
}

/// One POST; `true` on a 2xx answer.
async fn attempt(state: &AppState, url: &str, payload: &str, timeout: Duration) -> bool {
    lock(&state.intro).stats.callbacks_sent += 1;
    let sent = state
        .http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .timeout(timeout)
        .body(payload.to_string())
        .send();
    let ok = tokio::select! {
        () = state.cancel.cancelled() => false,
        r = sent => matches!(r, Ok(resp) if resp.status().is_success()),
    };
    if ok {
        lock(&state.intro).stats.callbacks_delivered += 1;
    }
    ok
}
