//! The task engine: turns an upstream task id into images by polling
//! `GET /api/v1/images/generations?task_id=…` with the model's first-poll delay and interval,
//! until `completed`, `failed` or the model's deadline.
//!
//! A poll that fails for a passing reason (connection, 5xx, malformed body, 429) is not the end
//! of the task: the upstream accepted (and will bill) it, so the engine keeps polling until the
//! deadline. Waiting costs one sleeping tokio task per request: no thread, no buffer.

use std::time::Duration;

use serde_json::Value;
use tokio::time::{sleep, Instant};

use super::{result_urls, CallCtx, Created, FailureKind, Output, Upstream, UpstreamError};
use crate::config::ModelConfig;
use crate::upstream::{is_policy_message, Image};

/// Longest single poll call; a hung poll must not eat the whole deadline.
const POLL_CALL_LIMIT: Duration = Duration::from_secs(30);

/// The state of a task as the envelope reports it.
#[derive(Debug, PartialEq)]
pub(super) enum TaskState {
    Running,
    Completed(Vec<String>),
    Failed(String),
}

/// Reads a task envelope's `data`: `{"taskId","state","resultUrls"|"failMsg"}`.
///
/// NOTE(upstream): gpt-image-2-all's async create answers `data.taskId` with no `state`; a missing
/// state is treated as `pending`.
pub(super) fn task_state(data: &Value) -> Result<TaskState, UpstreamError> {
    let state = data
        .get("state")
        .and_then(Value::as_str)
        .unwrap_or("pending");
    match state {
        "pending" | "processing" | "queued" | "running" => Ok(TaskState::Running),
        "completed" | "success" | "succeeded" => {
            let urls = result_urls(data);
            if urls.is_empty() {
                Err(UpstreamError::new(
                    FailureKind::Malformed,
                    "task completed without result URLs".to_owned(),
                ))
            } else {
                Ok(TaskState::Completed(urls))
            }
        }
        "failed" | "fail" | "error" => {
            let msg = data
                .get("failMsg")
                .and_then(Value::as_str)
                .unwrap_or("task failed")
                .to_owned();
            Ok(TaskState::Failed(msg))
        }
        other => Err(UpstreamError::new(
            FailureKind::Malformed,
            format!("unknown task state `{other}`"),
        )),
    }
}

/// The error for a task that ended `failed`.
pub(super) fn failed(up: &Upstream, message: &str) -> UpstreamError {
    let kind = if is_policy_message(message) {
        FailureKind::PolicyRejected
    } else {
        FailureKind::TaskFailed
    };
    UpstreamError::new(kind, up.redactor.redact(message))
}

/// Reads a create answer (`{"code":200,"data":{"taskId",…}}`) and, unless it is already terminal,
/// polls the task to its end.
pub(super) async fn run_envelope(
    up: &Upstream,
    model: &ModelConfig,
    created: Created,
    ctx: &CallCtx,
) -> Result<Output, UpstreamError> {
    // An accepted create with no readable task id: the work may run and be billed.
    let unknown = |why: &str| UpstreamError::new(FailureKind::Malformed, why.to_owned());
    // The answer is read and let go before the wait: a task can be followed for minutes, and
    // thousands may wait at once.
    let (task_id, state) = {
        let body = created.json()?;
        let data = body
            .get("data")
            .ok_or_else(|| unknown("create answer has no `data`"))?;
        let task_id = data
            .get("taskId")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| unknown("create answer has no `taskId`"))?;
        (task_id, task_state(data))
    };
    created.accepted(up, &task_id, ctx).await;
    let key = created.key;
    drop(created);
    let urls = match state {
        Ok(TaskState::Completed(urls)) => urls,
        Ok(TaskState::Failed(msg)) => return Err(failed(up, &msg).with_task(&task_id)),
        // Running, or a state the create answer does not make clear: the task is followed.
        Ok(TaskState::Running) | Err(_) => wait(up, model, &task_id, Some(key), ctx).await?,
    };
    Ok(Output {
        images: urls.into_iter().map(Image::url).collect(),
        task_ids: vec![task_id],
        unsettled: 0,
    })
}

/// Polls `task_id` (with the pool key that created it, when known) until it is terminal or the
/// deadline passes.
pub(super) async fn wait(
    up: &Upstream,
    model: &ModelConfig,
    task_id: &str,
    key: Option<usize>,
    ctx: &CallCtx,
) -> Result<Vec<String>, UpstreamError> {
    let mut watch = AbandonWatch {
        task_id,
        armed: true,
    };
    // The whole wait, sleeps between polls included, is time on the upstream.
    let _waiting = ctx.wait.enter();
    let _in_flight = up.metrics.task_in_flight(ctx.model);
    let mut polls = 0;
    let result = poll(up, model, task_id, key, ctx, &mut polls).await;
    up.metrics.task_polls(ctx.model, polls);
    watch.armed = false;
    result
}

async fn poll(
    up: &Upstream,
    model: &ModelConfig,
    task_id: &str,
    key: Option<usize>,
    ctx: &CallCtx,
    polls: &mut u32,
) -> Result<Vec<String>, UpstreamError> {
    let path = format!("/api/v1/images/generations?task_id={}", encode(task_id));
    let timeout = || UpstreamError::new(FailureKind::Timeout, String::new()).with_task(task_id);
    let mut next = Instant::now() + model.first_poll_delay;
    let mut failures = 0u32;
    // An upstream callback (with `server.public_url`) polls at once; the timer stays the net.
    let waker = up.waker(task_id);
    loop {
        if next >= ctx.deadline {
            tokio::select! {
                () = sleep_until_deadline(ctx) => return Err(timeout()),
                () = waker.notified() => {}
            }
        } else {
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = waker.notified() => {
                    tracing::debug!(task_id, "upstream callback: polling now");
                }
            }
        }
        // A slot among `upstream.max_polls_in_flight`; a poll that waits for one past the
        // deadline is not sent.
        let Ok(Ok(_slot)) = tokio::time::timeout_at(ctx.deadline, up.polls.acquire()).await else {
            return Err(timeout());
        };
        *polls += 1;
        // Boxed: the call's state exists only while a poll is in flight, not while the task
        // sleeps between polls (most of a waiting job's life).
        let answer = match Box::pin(up.get_json(&path, ctx, POLL_CALL_LIMIT, key)).await {
            Ok(v) => {
                failures = 0;
                next = Instant::now() + next_poll(model.poll_interval, 0, None, fastrand::f64());
                v
            }
            Err(e) if e.kind.is_transient() || e.kind == FailureKind::Timeout => {
                failures = failures.saturating_add(1);
                let wait = next_poll(
                    model.poll_interval,
                    failures,
                    e.retry_after,
                    fastrand::f64(),
                );
                next = Instant::now() + wait;
                tracing::debug!(task_id, polls = *polls, kind = ?e.kind, wait_ms = wait.as_millis() as u64, "poll failed; polling again");
                continue;
            }
            Err(e) => return Err(e.with_task(task_id)),
        };
        let Some(data) = answer.get("data") else {
            tracing::debug!(
                task_id,
                polls = *polls,
                "poll answer without data; polling again"
            );
            continue;
        };
        match task_state(data) {
            Ok(TaskState::Running) => {}
            Ok(TaskState::Completed(urls)) => {
                tracing::debug!(task_id, polls = *polls, "task completed");
                return Ok(urls);
            }
            Ok(TaskState::Failed(msg)) => return Err(failed(up, &msg).with_task(task_id)),
            // `completed` without result URLs, or a state the docs do not name: the task was
            // accepted and may yet be billed, so it is followed until it makes sense or the
            // deadline passes (then its outcome is unknown).
            Err(e) => {
                failures = failures.saturating_add(1);
                next = Instant::now()
                    + next_poll(model.poll_interval, failures, None, fastrand::f64());
                tracing::warn!(task_id, polls = *polls, error = %e.message, "task answer not understood; polling again");
            }
        }
    }
}

/// Logs a task left behind when its job stops being followed before the task ended (the gateway
/// is stopping; a client going away does not stop a job): the upstream may still finish and bill
/// it, so it is never dropped silently — the job stays in the store for the next start.
struct AbandonWatch<'a> {
    task_id: &'a str,
    armed: bool,
}

impl Drop for AbandonWatch<'_> {
    fn drop(&mut self) {
        if self.armed {
            tracing::warn!(
                task_id = self.task_id,
                "stopped following an upstream task before its end (the gateway is stopping); its job is kept, and the next start resumes it"
            );
        }
    }
}

/// The wait before the next poll: the interval with ±10% jitter (so tasks started together do not
/// poll together); after `failures` failed polls in a row, doubled per failure up to 8× the
/// interval (±25% jitter); and never less than the upstream's own `retry-after`. `unit` is a
/// random number in `0..1`.
fn next_poll(
    interval: Duration,
    failures: u32,
    retry_after: Option<Duration>,
    unit: f64,
) -> Duration {
    let (factor, spread) = match failures {
        0 => (1.0, 0.1),
        n => (f64::from(1u32 << n.min(3)), 0.25),
    };
    let jitter = 1.0 + spread * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
    let wait = interval.mul_f64(factor * jitter);
    retry_after.map_or(wait, |r| wait.max(r))
}

async fn sleep_until_deadline(ctx: &CallCtx) {
    sleep(ctx.deadline.saturating_duration_since(Instant::now())).await;
}

/// Percent-encodes a task id for the query string.
fn encode(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_back_off_with_jitter_and_honour_retry_after() {
        let i = Duration::from_secs(2);
        let ms = |d: Duration| d.as_millis();
        // Healthy: the interval ±10%.
        assert_eq!(ms(next_poll(i, 0, None, 0.5)), 2000);
        assert_eq!(ms(next_poll(i, 0, None, 0.0)), 1800);
        assert_eq!(ms(next_poll(i, 0, None, 1.0)), 2200);
        // Failing: doubled per failure, capped at 8x, ±25%.
        assert_eq!(ms(next_poll(i, 1, None, 0.5)), 4000);
        assert_eq!(ms(next_poll(i, 2, None, 0.5)), 8000);
        assert_eq!(ms(next_poll(i, 3, None, 0.5)), 16000);
        assert_eq!(ms(next_poll(i, 30, None, 0.5)), 16000);
        assert_eq!(ms(next_poll(i, 1, None, 0.0)), 3000);
        // A 429's retry-after is the least wait.
        let after = Some(Duration::from_secs(30));
        assert_eq!(ms(next_poll(i, 1, after, 0.5)), 30000);
        assert_eq!(
            ms(next_poll(i, 3, Some(Duration::from_secs(1)), 0.5)),
            16000
        );
    }
    use serde_json::json;

    #[test]
    fn reads_every_state() {
        assert_eq!(
            task_state(&json!({"taskId":"t"})).unwrap(),
            TaskState::Running
        );
        assert_eq!(
            task_state(&json!({"state":"completed","resultUrls":["u"]})).unwrap(),
            TaskState::Completed(vec!["u".to_owned()])
        );
        assert_eq!(
            task_state(&json!({"state":"failed","resultUrls":null,"failMsg":"boom"})).unwrap(),
            TaskState::Failed("boom".to_owned())
        );
        let e = task_state(&json!({"state":"completed","resultUrls":[]})).unwrap_err();
        assert_eq!(e.kind, FailureKind::Malformed);
    }

    #[test]
    fn encodes_task_ids() {
        assert_eq!(encode("ab-1_2"), "ab-1_2");
        assert_eq!(encode("a b&c"), "a%20b%26c");
    }
}
