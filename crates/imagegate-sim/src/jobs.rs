//! Tasks and the job runner shared by every model, plus the poll endpoint
//! (`GET /api/v1/images/generations?task_id=…`).
//!
//! A job is one accepted generation request. It is stored as a task at once (so even the
//! synchronous models can be polled afterwards, as the lite page says), then runs on the task
//! tracker: optionally `pending` for the first 10 % of its latency (async models), `processing`
//! for the rest, then `completed` (result files published) or `failed`. A `[sim:policy]`
//! rejection comes after a quarter of the processing time (moderation answers early); other
//! failures after the full latency; `[sim:stuck]` stays `processing` until shutdown. Terminal
//! states trigger the callback when the request carried one, and a completed job is billed
//! (`billing`). Synchronous handlers simply await the job; the job keeps running if their client
//! goes away. Every task created is listed in the stats (`task_ids`) and reported to the request
//! that created it, for its delivery faults (`delivery`).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use super::api::ApiError;
use super::faults::{Directives, Outcome};
use super::files::publish;
use super::params::Quality;
use super::render::{variant, Format, RenderKey};
use super::state::{lock, new_task_id, now_ms, AppState};
use super::{billing, callbacks, delivery};

/// How many tasks are remembered (oldest forgotten first).
const TASKS_CAP: usize = 50_000;

/// The simulated models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Model {
    Lite,
    All,
    Beta,
    SparkImage,
    SparkEdit,
}

impl Model {
    /// The model name used in requests, the fault table and the request log.
    pub fn name(self) -> &'static str {
        match self {
            Self::Lite => "gpt-image-2-lite",
            Self::All => "gpt-image-2-all",
            Self::Beta => "gpt-image-2-beta",
            Self::SparkImage => "sparkpix-image",
            Self::SparkEdit => "sparkpix-edit",
        }
    }

    /// The `<provider>/<model_name>` form used in callbacks.
    pub fn callback_name(self) -> &'static str {
        match self {
            Self::Lite => "openai/gpt-image-2-lite",
            Self::All => "openai/gpt-image-2-all",
            Self::Beta => "openai/gpt-image-2-beta",
            Self::SparkImage => "sparkpix/sparkpix-image",
            Self::SparkEdit => "sparkpix/sparkpix-edit",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskState {
    Pending,
    Processing,
    Completed,
    Failed,
}

impl TaskState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }
}

/// Why a task failed: `failCode` and `failMsg` of the callback.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub code: &'static str,
    pub msg: String,
}

impl Failure {
    pub fn policy() -> Self {
        Self {
            code: "400",
            msg: "Content policy violation".into(),
        }
    }

    pub fn is_policy(&self) -> bool {
        self.code == "400"
    }

    pub fn internal() -> Self {
        Self {
            code: "500",
            msg: "Internal generation error".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Task {
    pub id: String,
    pub model: Model,
    pub state: TaskState,
    pub create_ms: u64,
    pub complete_ms: Option<u64>,
    pub result_urls: Vec<String>,
    pub failure: Option<Failure>,
    /// How a failed task shows `resultUrls`: 0 absent, 1 `null`, 2 `[]` (cycled across tasks).
    pub failed_shape: u64,
    /// Polls left that answer HTTP 500 (`[sim:pollfail=N]`).
    pub pollfail: u32,
    /// How late every poll answers (`[sim:slowpoll=SECS]`).
    pub slowpoll: Duration,
}

#[derive(Default)]
pub(crate) struct TaskStore {
    map: HashMap<String, Task>,
    order: VecDeque<String>,
}

impl TaskStore {
    fn insert(&mut self, task: Task) {
        while self.order.len() >= TASKS_CAP {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.map.remove(&old);
        }
        self.order.push_back(task.id.clone());
        self.map.insert(task.id.clone(), task);
    }

    pub fn model_of(&self, id: &str) -> Option<String> {
        self.map.get(id).map(|t| t.model.name().to_string())
    }
}

/// One accepted generation request.
pub(crate) struct Job {
    pub model: Model,
    /// Picks the pictures' variants.
    pub prompt: String,
    pub width: u32,
    pub height: u32,
    pub format: Format,
    pub count: usize,
    /// The request's `quality`, for billing (`None`: no such field).
    pub quality: Option<Quality>,
    pub latency: Duration,
    /// Starts `pending` (async models) rather than `processing`.
    pub queued: bool,
    pub directives: Directives,
    pub callback_url: Option<String>,
    /// The request parameters, sent back as the callback's `param` string (long base64 strings
    /// redacted as in the request log, so callbacks stay small).
    pub param: Value,
}

/// How a job ended.
pub(crate) enum JobResult {
    Completed {
        urls: Vec<String>,
        images: Vec<Bytes>,
    },
    Failed(Failure),
}

pub(crate) struct Started {
    pub task_id: String,
    /// `None` when the simulator shut down before the job ended (or it never ends).
    pub handle: JoinHandle<Option<JobResult>>,
}

/// Stores the task, starts the job and reports it to the request (delivery faults, stats).
pub(crate) fn start(state: &AppState, job: Job) -> Started {
    let id = new_task_id();
    let create_ms = now_ms();
    lock(&state.tasks).insert(Task {
        id: id.clone(),
        model: job.model,
        state: if job.queued {
            TaskState::Pending
        } else {
            TaskState::Processing
        },
        create_ms,
        complete_ms: None,
        result_urls: Vec::new(),
        failure: None,
        failed_shape: state.next_failed_shape(),
        pollfail: job.directives.pollfail,
        slowpoll: job.directives.slowpoll.unwrap_or_default(),
    });
    lock(&state.intro).stats.task_created(&id);
    delivery::accepted(job.directives.delivery());
    let handle = state.tracker.spawn(run(state.clone(), id.clone(), job));
    Started {
        task_id: id,
        handle,
    }
}

/// Waits for a started job: its task id and result, or 503 when the simulator shuts down first.
pub(crate) async fn finished(started: Started) -> Result<(String, JobResult), ApiError> {
    match started.handle.await {
        Ok(Some(result)) => Ok((started.task_id, result)),
        _ => Err(ApiError::shutting_down()),
    }
}

fn set_state(state: &AppState, id: &str, s: TaskState) {
    if let Some(t) = lock(&state.tasks).map.get_mut(id) {
        t.state = s;
    }
}

async fn run(state: AppState, id: String, job: Job) -> Option<JobResult> {
    let mut remaining = job.latency;
    if job.queued {
        let queue = job.latency.mul_f64(0.1);
        if !state.sleep(queue).await {
            return None;
        }
        set_state(&state, &id, TaskState::Processing);
        remaining = job.latency.saturating_sub(queue);
    }
    let result = match job.directives.outcome() {
        Outcome::Stuck => {
            state.cancel.cancelled().await;
            return None;
        }
        Outcome::Policy => {
            if !state.sleep(remaining / 4).await {
                return None;
            }
            JobResult::Failed(Failure::policy())
        }
        Outcome::Fail => {
            if !state.sleep(remaining).await {
                return None;
            }
            JobResult::Failed(Failure::internal())
        }
        Outcome::Succeed => {
            let work = async { tokio::join!(render(&state, &job), state.sleep(remaining)) };
            let rendered = tokio::select! {
                () = state.cancel.cancelled() => return None,
                (rendered, _) = work => rendered,
            };
            match rendered {
                Ok(images) => {
                    let urls = images
                        .iter()
                        .map(|b| {
                            let d = &job.directives;
                            publish(&state, b.clone(), job.format, d.nofile, d.slowfile)
                        })
                        .collect();
                    JobResult::Completed { urls, images }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "simulated image encoding failed");
                    JobResult::Failed(Failure::internal())
                }
            }
        }
    };
    finish(&state, &id, &job, &result);
    Some(result)
}

async fn render(state: &AppState, job: &Job) -> Result<Vec<Bytes>, String> {
    let mut out = Vec::with_capacity(job.count);
    for i in 0..job.count {
        let key = RenderKey {
            w: job.width,
            h: job.height,
            format: job.format,
            variant: variant(&job.prompt, i),
            file_bytes: job.directives.file_bytes,
        };
        out.push(state.renders.get(key).await?);
    }
    Ok(out)
}

/// Records the terminal state, bills a success and sends the callback, if any.
fn finish(state: &AppState, id: &str, job: &Job, result: &JobResult) {
    if let JobResult::Completed { urls, .. } = result {
        let each = billing::image_micros(job.model, job.quality, job.width, job.height);
        let images = u64::try_from(urls.len()).unwrap_or(u64::MAX);
        lock(&state.intro)
            .stats
            .bill(job.model.name(), each.saturating_mul(images));
    }
    let task = {
        let mut tasks = lock(&state.tasks);
        let Some(t) = tasks.map.get_mut(id) else {
            return;
        };
        t.complete_ms = Some(now_ms());
        match result {
            JobResult::Completed { urls, .. } => {
                t.state = TaskState::Completed;
                t.result_urls.clone_from(urls);
            }
            JobResult::Failed(f) => {
                t.state = TaskState::Failed;
                t.failure = Some(f.clone());
            }
        }
        t.clone()
    };
    if let Some(url) = &job.callback_url {
        let param = serde_json::to_string(&job.param).unwrap_or_default();
        callbacks::spawn(state, url.clone(), callbacks::body(&task, param));
    }
}

/// The task as the envelope's `data` shows it.
pub(crate) fn view(task: &Task) -> Value {
    let mut data = json!({"taskId": task.id, "state": task.state.name()});
    match task.state {
        TaskState::Pending | TaskState::Processing => {}
        TaskState::Completed => {
            data["resultUrls"] = json!(task.result_urls);
            data["createTime"] = json!(task.create_ms);
            data["completeTime"] = json!(task.complete_ms);
        }
        TaskState::Failed => {
            let msg = task.failure.as_ref().map(|f| f.msg.clone());
            data["failMsg"] = json!(msg);
            match task.failed_shape {
                0 => {}
                1 => data["resultUrls"] = Value::Null,
                _ => data["resultUrls"] = json!([]),
            }
        }
    }
    data
}

/// The current view of a stored task.
pub(crate) fn view_of(state: &AppState, id: &str) -> Option<Value> {
    lock(&state.tasks).map.get(id).map(view)
}

/// `{"code":200,"msg":"success","data":data}`.
pub(crate) fn envelope(data: Value) -> Response {
    Json(json!({"code": 200, "msg": "success", "data": data})).into_response()
}

/// `GET /api/v1/images/generations?task_id=…`.
pub(crate) async fn poll(State(state): State<AppState>, uri: Uri) -> Response {
    let query: HashMap<String, String> = Query::try_from_uri(&uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    let Some(id) = query
        .get("task_id")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    else {
        return ApiError::bad_request("task_id is required").into_response();
    };
    let _in_flight = state.poll_started();
    let slow = lock(&state.tasks).map.get(id).map(|t| t.slowpoll);
    if let Some(d) = slow.filter(|d| !d.is_zero()) {
        if !state.sleep(d).await {
            return ApiError::with(StatusCode::SERVICE_UNAVAILABLE, 503, "shutting down")
                .into_response();
        }
    }
    let data = {
        let mut tasks = lock(&state.tasks);
        let Some(task) = tasks.map.get_mut(id) else {
            return ApiError::with(StatusCode::NOT_FOUND, 404, "task not found").into_response();
        };
        if task.pollfail > 0 {
            task.pollfail -= 1;
            return ApiError::with(
                StatusCode::INTERNAL_SERVER_ERROR,
                500,
                "internal server error",
            )
            .into_response();
        }
        view(task)
    };
    envelope(data)
}
