//! Everything behind the gateway: one HTTP client for the platform, the failure classification,
//! one adapter per upstream API shape, the async task engine and result fetching.
//!
//! Reading order: this file (client + [`Upstreams`], the interface the dispatcher uses),
//! [`failure`] and `classify` (answers → failure kinds), then [`plan`] and [`Plan`] (generated
//! from the model registry's one list: the one place a model id is matched to its adapter), then
//! the adapters (`lite`, `all`, `beta`, `sparkpix`), then `task` (polling), `pool` (upstream
//! keys) and `results` (downloading result files).
//!
//! Every adapter is split in two: a pure `plan` that validates the request for that model and
//! builds the upstream body (so bad input is refused before any upstream call), and an `execute`
//! that talks to the platform.

mod body;
mod classify;
pub mod failure;
pub mod pool;
pub mod reach;
pub mod results;
mod task;
pub mod text;
mod transcode;
pub mod urls;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header::AUTHORIZATION, HeaderValue};
use futures_util::future::BoxFuture;
use reqwest::multipart::Form;
use serde_json::Value;
use tokio::time::Instant;

use crate::config::{Config, ModelConfig, ModelsConfig, ResultsConfig};
use crate::error::ApiError;
use crate::metrics::{CallOutcome, Metrics, Phase, UpstreamWait};
use crate::model::{ImageFormat, ModelId};
use crate::request::{self, ImageRequest};

use body::{read_capped, Body};
use classify::{classify, is_policy_message};
pub use failure::{FailureKind, UpstreamError};
pub use results::Image;

/// Removes every upstream key from any text before it can reach a client, a log line or a
/// metric.
#[derive(Clone)]
pub struct Redactor(Vec<String>);

impl Redactor {
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in self.0.iter().filter(|s| !s.is_empty()) {
            out = out.replace(secret.as_str(), "[redacted]");
        }
        out
    }
}

/// Per-request context for upstream calls.
#[derive(Clone)]
pub struct CallCtx {
    /// Polling a task gives up then (`[models.X] give_up_after`): the work is paid for, so it is
    /// followed long after the caller stopped waiting.
    pub deadline: Instant,
    /// A create call must have answered by then (the model's `deadline`).
    pub call_deadline: Instant,
    /// Where each create is recorded before it is sent (the job): `None` only in tests.
    pub journal: Option<Arc<dyn Journal>>,
    /// Sent upstream as `x-request-id`, so one id follows the request end to end.
    pub request_id: String,
    /// The upstream model these calls are for (the metrics' `model` label).
    pub model: ModelId,
    /// The request's upstream clock: every wait on the platform is measured into it, so the
    /// gateway's own overhead is the rest.
    pub wait: UpstreamWait,
}

impl CallCtx {
    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn call_remaining(&self) -> Duration {
        self.call_deadline
            .min(self.deadline)
            .saturating_duration_since(Instant::now())
    }
}

impl std::fmt::Debug for CallCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallCtx")
            .field("request_id", &self.request_id)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

/// Where an attempt's upstream creates are written down before anything else happens, so work
/// the upstream may have accepted is never lost (the job; see `dispatch::journal`).
pub trait Journal: Send + Sync {
    /// A create call is about to be sent: recorded durably first. An error means it is not sent.
    fn submitting(&self) -> BoxFuture<'_, Result<u32, String>>;
    /// Create `seq` answered with an upstream task, made with pool key `key` (polled with it).
    fn accepted<'a>(&'a self, seq: u32, task_id: &'a str, key: &'a str) -> BoxFuture<'a, ()>;
}

/// A create call's answer: the body as received, the journal's number for the call, the pool key
/// used.
pub(crate) struct Created {
    pub body: Body,
    seq: Option<u32>,
    key: usize,
}

impl Created {
    /// The answer parsed (it was checked to be JSON when it was classified).
    pub fn json(&self) -> Result<Value, UpstreamError> {
        parse(&self.body.bytes)
    }

    /// Records the task the create started (see [`Journal::accepted`]).
    async fn accepted(&self, up: &Upstream, task_id: &str, ctx: &CallCtx) {
        if let (Some(journal), Some(seq)) = (&ctx.journal, self.seq) {
            journal.accepted(seq, task_id, up.pool.id(self.key)).await;
        }
    }
}

/// The platform: its base URL, the key pool and two HTTP clients.
pub struct Upstream {
    /// Calls to the platform API (carries a key of the pool).
    http: reqwest::Client,
    /// Result downloads (never carries the key, never follows redirects off the allow-list).
    files: reqwest::Client,
    /// `upstream.base_url`, parsed once: a call's URL is this with the call's path.
    base: reqwest::Url,
    /// The platform keys; each call takes one (see [`pool`]).
    pub pool: pool::KeyPool,
    /// Whether the platform's host answers a TCP connect (cached; see [`reach`]).
    pub reach: reach::Reachability,
    /// What result and reference URLs may be (see [`urls`]).
    pub urls: urls::UrlPolicy,
    /// Largest platform API answer read (`upstream.max_response_bytes`).
    max_response: usize,
    /// Where async tasks ask the platform to post their end (`server.public_url`), if anywhere.
    pub callback_url: Option<String>,
    /// Tasks being polled, each with what wakes its poll loop early (an upstream callback).
    wakers: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Notify>>>,
    /// Slots for task polls (`upstream.max_polls_in_flight`).
    polls: tokio::sync::Semaphore,
    redactor: Redactor,
    results: ResultsConfig,
    models: ModelsConfig,
    metrics: Arc<Metrics>,
}

impl Upstream {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.upstream.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            // Thousands of requests may wait on tasks at once, but polls are brief: keep some idle
            // connections rather than one per waiting request. 10,000 waiting requests polling
            // every 2 s burst past 64 concurrent polls, and each connection over the cap was a
            // new TCP connection per poll (connect, then TIME_WAIT); 256 idle cost about 5 MB.
            .pool_max_idle_per_host(256)
            .build()?;
        let url_policy = urls::UrlPolicy::new(&config.urls);
        let files = reqwest::Client::builder()
            .connect_timeout(config.upstream.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(url_policy.resolver())
            .build()?;
        Ok(Self {
            http,
            files,
            base: reqwest::Url::parse(&config.upstream.base_url)?,
            pool: pool::KeyPool::new(&config.upstream)?,
            reach: reach::Reachability::new(&config.upstream.base_url),
            urls: url_policy,
            max_response: config.upstream.max_response_bytes,
            callback_url: config.server.upstream_callback_url(),
            wakers: std::sync::Mutex::default(),
            polls: tokio::sync::Semaphore::new(config.upstream.max_polls_in_flight),
            redactor: Redactor(config.upstream.pool().into_iter().map(|k| k.key).collect()),
            results: config.results.clone(),
            models: config.models.clone(),
            metrics,
        })
    }

    pub fn model_config(&self, id: ModelId) -> &ModelConfig {
        self.models.get(id)
    }

    /// An upstream callback named `task_id`: its poll loop polls at once. A callback is never
    /// trusted as it is (the platform does not sign them): only the poll's answer counts.
    /// False when no task of that id is being polled here.
    pub fn wake(&self, task_id: &str) -> bool {
        let wakers = self
            .wakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match wakers.get(task_id) {
            Some(n) => {
                n.notify_one();
                true
            }
            None => false,
        }
    }

    /// Registers `task_id`'s poll loop for wake-ups while the guard lives.
    fn waker(&self, task_id: &str) -> Waker<'_> {
        let notify = Arc::new(tokio::sync::Notify::new());
        self.wakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(task_id.to_owned(), notify.clone());
        Waker {
            up: self,
            task_id: task_id.to_owned(),
            notify,
        }
    }

    async fn post_json(
        &self,
        path: &str,
        body: &Value,
        ctx: &CallCtx,
    ) -> Result<Created, UpstreamError> {
        let url = endpoint(&self.base, path);
        let make = || self.http.post(url.clone()).json(body);
        // Boxed (here and in `post_form`): a task is followed for minutes after its create, and
        // the HTTP call's state would otherwise keep its room in every waiting request.
        Box::pin(self.create(&make, ctx)).await
    }

    /// A create call: written down in the journal before it is sent.
    async fn create(
        &self,
        make: &(dyn Fn() -> reqwest::RequestBuilder + Sync),
        ctx: &CallCtx,
    ) -> Result<Created, UpstreamError> {
        let seq = match &ctx.journal {
            Some(journal) => Some(journal.submitting().await.map_err(|e| {
                UpstreamError::new(
                    FailureKind::Unrecorded,
                    format!("the gateway could not record the job, so nothing was sent: {e}"),
                )
            })?),
            None => None,
        };
        let (body, key) = self
            .send(make, ctx, ctx.call_remaining(), Phase::Create, None)
            .await?;
        crate::failpoint::hit("after_create_sent");
        Ok(Created { body, seq, key })
    }

    /// `form` is called once per attempt: a call refused for its key is sent again with another.
    async fn post_form(
        &self,
        path: &str,
        form: &(dyn Fn() -> Form + Sync),
        ctx: &CallCtx,
    ) -> Result<Created, UpstreamError> {
        let url = endpoint(&self.base, path);
        let make = || self.http.post(url.clone()).multipart(form());
        Box::pin(self.create(&make, ctx)).await
    }

    /// A poll, with the pool key that created the task when it is known.
    async fn get_json(
        &self,
        path: &str,
        ctx: &CallCtx,
        limit: Duration,
        key: Option<usize>,
    ) -> Result<Value, UpstreamError> {
        let url = endpoint(&self.base, path);
        let make = || self.http.get(url.clone());
        let (body, _) = self
            .send(&make, ctx, ctx.remaining().min(limit), Phase::Poll, key)
            .await?;
        parse(&body.bytes)
    }

    /// One call to the platform, timed into the request's upstream clock and counted by model,
    /// phase and outcome (once, whichever key of the pool answered it).
    async fn send(
        &self,
        make: &(dyn Fn() -> reqwest::RequestBuilder + Sync),
        ctx: &CallCtx,
        limit: Duration,
        phase: Phase,
        key: Option<usize>,
    ) -> Result<(Body, usize), UpstreamError> {
        let _waiting = ctx.wait.enter();
        let started = Instant::now();
        let result = self.call(make, ctx, limit, key).await;
        let outcome = match &result {
            Ok(_) => CallOutcome::Ok,
            Err(e) => CallOutcome::Failed(e.kind),
        };
        self.metrics
            .upstream_call(ctx.model, phase, outcome, started.elapsed());
        result
    }

    /// Sends one call with a key of the pool. A 401/402 benches that key and sends the same call
    /// with the next one, until a key works or every key was tried (the upstream's own refusal:
    /// nothing was accepted). A `pinned` key (the one that created a task) is the only one used.
    async fn call(
        &self,
        make: &(dyn Fn() -> reqwest::RequestBuilder + Sync),
        ctx: &CallCtx,
        limit: Duration,
        pinned: Option<usize>,
    ) -> Result<(Body, usize), UpstreamError> {
        let until = Instant::now() + limit;
        if let Some((key, auth)) = pinned.and_then(|k| Some((k, self.pool.auth(k)?))) {
            return self
                .send_once(make(), auth, ctx, until)
                .await
                .map(|v| (v, key));
        }
        let mut tried = Vec::new();
        loop {
            let Some((key, auth)) = self.pool.pick(&tried) else {
                return Err(UpstreamError::new(
                    FailureKind::Unauthorized,
                    "no upstream key left to try".to_owned(),
                ));
            };
            tried.push(key);
            let result = self.send_once(make(), auth, ctx, until).await;
            match result {
                Err(e) if self.pool.refused(key, e.kind) && self.pool.pick_possible(&tried) => {
                    tracing::warn!(
                        request_id = %ctx.request_id,
                        upstream_key = self.pool.id(key),
                        kind = ?e.kind,
                        "upstream refused a key; retrying the call with another key"
                    );
                }
                Ok(v) => {
                    self.pool.succeeded(key);
                    return Ok((v, key));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn send_once(
        &self,
        rb: reqwest::RequestBuilder,
        auth: HeaderValue,
        ctx: &CallCtx,
        until: Instant,
    ) -> Result<Body, UpstreamError> {
        let rb = rb
            .header(AUTHORIZATION, auth)
            .header("x-request-id", &ctx.request_id);
        let call = async {
            let res = rb.send().await?;
            let status = res.status().as_u16();
            let retry_after = res
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| Duration::from_secs_f64(s.min(3600.0)));
            let body = read_capped(res, self.max_response).await?;
            Ok::<_, reqwest::Error>((status, retry_after, body))
        };
        let (status, retry_after, body) = match tokio::time::timeout_at(until, call).await {
            Err(_) => return Err(UpstreamError::new(FailureKind::Timeout, String::new())),
            Ok(Err(e)) => return Err(self.transport_error(&e)),
            // The platform answered, and may have made (and billed) images: an answer too long to
            // read is never a reason to try another model (`Download` does not fail over).
            Ok(Ok((_, _, None))) => {
                return Err(UpstreamError::new(
                    FailureKind::Download,
                    format!(
                        "the answer is longer than upstream.max_response_bytes ({})",
                        self.max_response
                    ),
                ))
            }
            Ok(Ok((status, retry_after, Some(body)))) => (status, retry_after, body),
        };
        match classify(status, &body.bytes, &self.redactor) {
            Ok(()) => Ok(body),
            Err(mut e) => {
                if e.kind == FailureKind::RateLimited {
                    e.retry_after = retry_after;
                }
                Err(e)
            }
        }
    }

    fn transport_error(&self, e: &reqwest::Error) -> UpstreamError {
        // Only a failed connect (or a request that could not be built) proves nothing was sent;
        // a connection broken after the request went out may have been accepted.
        let kind = if e.is_connect() || e.is_builder() {
            FailureKind::Connect
        } else if e.is_timeout() {
            FailureKind::Timeout
        } else {
            FailureKind::Unknown
        };
        // reqwest's message names the URL, never the Authorization header; redact anyway.
        UpstreamError::new(kind, self.redactor.redact(&e.without_url_string()))
    }
}

/// A poll loop's registration for upstream callbacks; removed when dropped.
struct Waker<'a> {
    up: &'a Upstream,
    task_id: String,
    notify: Arc<tokio::sync::Notify>,
}

impl Waker<'_> {
    async fn notified(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Waker<'_> {
    fn drop(&mut self) {
        self.up
            .wakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.task_id);
    }
}

trait WithoutUrl {
    fn without_url_string(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_string(&self) -> String {
        let mut s = self.to_string();
        if let Some(url) = self.url() {
            s = s.replace(url.as_str(), "<upstream>");
        }
        s
    }
}

/// A success answer's JSON (checked when it was classified, so this does not fail in practice).
fn parse(body: &[u8]) -> Result<Value, UpstreamError> {
    serde_json::from_slice(body).map_err(|_| {
        UpstreamError::new(
            FailureKind::Malformed,
            "response body is not JSON".to_owned(),
        )
    })
}

/// What an adapter produced: images (inline base64 and/or URL) and the upstream task ids.
#[derive(Debug, Default)]
pub struct Output {
    pub images: Vec<Image>,
    pub task_ids: Vec<String>,
    /// Fanned-out calls that failed in a way the upstream may have billed (a reset after the
    /// request was sent, an unreadable answer, a deadline): each is booked as one image.
    pub unsettled: u32,
}

macro_rules! adapters {
    ($($variant:ident = $id:literal => $adapter:ident),+ $(,)?) => {
        $(mod $adapter;)+

        /// A validated, translated request for one model: built before any upstream call.
        #[derive(Debug)]
        pub enum Plan {
            $($variant($adapter::Plan)),+
        }

        /// Validates `req` for `model` and builds the upstream request. No I/O.
        pub fn plan(model: ModelId, req: &ImageRequest) -> Result<Plan, ApiError> {
            match model {
                $(ModelId::$variant => $adapter::plan(req).map(Plan::$variant)),+
            }
        }

        impl Plan {
            /// The model this plan is for.
            pub fn model(&self) -> ModelId {
                match self {
                    $(Plan::$variant(_) => ModelId::$variant),+
                }
            }
        }

        impl Upstreams for Upstream {
            fn execute<'a>(
                &'a self,
                plan: Plan,
                ctx: &'a CallCtx,
            ) -> BoxFuture<'a, Result<Output, UpstreamError>> {
                // The adapter's own `execute`, straight from the dispatcher's attempt.
                match plan {
                    $(Plan::$variant(p) => Box::pin($adapter::execute(self, p, ctx))),+
                }
            }

            fn fetch_b64<'a>(
                &'a self,
                urls: Vec<String>,
                wanted: ImageFormat,
                ctx: &'a CallCtx,
            ) -> BoxFuture<'a, Result<Vec<results::Encoded>, UpstreamError>> {
                Box::pin(async move {
                    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
                    Upstream::fetch_b64(self, &urls, wanted, ctx).await
                })
            }

            fn check_result_url(&self, url: &str) -> Result<(), String> {
                Upstream::check_result_url(self, url)
            }

            fn resume<'a>(
                &'a self,
                model: ModelId,
                task_id: &'a str,
                key: Option<&'a str>,
                ctx: &'a CallCtx,
            ) -> BoxFuture<'a, Result<Vec<Image>, UpstreamError>> {
                Box::pin(async move {
                    let key = key.and_then(|k| self.pool.index_of(k));
                    let config = self.model_config(model);
                    let urls = task::wait(self, config, task_id, key, ctx).await?;
                    Ok(urls.into_iter().map(Image::url).collect())
                })
            }
        }
    };
}

// One adapter module per model of the registry (`src/upstream/<adapter>.rs`), each with a pure
// `plan(&ImageRequest) -> Result<Plan, ApiError>` and an `execute(&Upstream, Plan, &CallCtx)`.
crate::for_each_model!(adapters);

/// What the dispatcher needs from the platform: run a plan until the images exist, and fetch
/// result files for a `b64_json` answer. [`Upstream`] is the real one; tests give fakes.
pub trait Upstreams: Send + Sync {
    /// Runs a plan against the platform until the images exist (polling async tasks).
    fn execute<'a>(
        &'a self,
        plan: Plan,
        ctx: &'a CallCtx,
    ) -> BoxFuture<'a, Result<Output, UpstreamError>>;

    /// Downloads result files and base64-encodes each in the `wanted` format.
    fn fetch_b64<'a>(
        &'a self,
        urls: Vec<String>,
        wanted: ImageFormat,
        ctx: &'a CallCtx,
    ) -> BoxFuture<'a, Result<Vec<results::Encoded>, UpstreamError>>;

    /// Whether a result URL may be handed to a client as a `url` answer: the URL policy and
    /// `results.allowed_hosts`, as for a download.
    fn check_result_url(&self, url: &str) -> Result<(), String>;

    /// Follows a task an earlier process created (with pool key `key`) to its end.
    fn resume<'a>(
        &'a self,
        model: ModelId,
        task_id: &'a str,
        key: Option<&'a str>,
        ctx: &'a CallCtx,
    ) -> BoxFuture<'a, Result<Vec<Image>, UpstreamError>> {
        let _ = (model, task_id, key, ctx);
        Box::pin(async {
            Err(UpstreamError::new(
                FailureKind::Unknown,
                "this upstream cannot follow tasks".to_owned(),
            ))
        })
    }
}

/// Runs `n` independent calls concurrently and keeps every image that was produced: images the
/// upstream made (and billed) are returned even if a sibling call failed. Fails only if all fail.
async fn fan_out<F, Fut>(n: u8, call: F) -> Result<Output, UpstreamError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Output, UpstreamError>>,
{
    let results = futures_util::future::join_all((0..n).map(|_| call())).await;
    let mut out = Output::default();
    let mut first_err = None;
    for r in results {
        match r {
            Ok(o) => {
                out.images.extend(o.images);
                out.task_ids.extend(o.task_ids);
            }
            Err(e) => {
                tracing::warn!(kind = ?e.kind, error = %e.message, "one of a fanned-out set of upstream calls failed");
                if e.kind.billing() != failure::Billing::NotBilled {
                    out.unsettled += 1;
                    out.task_ids.extend(e.task_id.clone());
                    // When nothing was made, the failure that may have been billed is the
                    // one reported: the attempt then stays booked.
                    if first_err.as_ref().is_none_or(|f: &UpstreamError| {
                        f.kind.billing() == failure::Billing::NotBilled
                    }) {
                        first_err = Some(e);
                    }
                } else {
                    first_err.get_or_insert(e);
                }
            }
        }
    }
    match first_err {
        Some(e) if out.images.is_empty() => Err(e),
        _ => Ok(out),
    }
}

/// An async task's create body with the gateway's `callback_url` (`server.public_url`), if set.
fn with_callback(up: &Upstream, mut body: Value) -> Value {
    if let (Some(url), Some(map)) = (&up.callback_url, body.as_object_mut()) {
        map.insert("callback_url".into(), Value::from(url.as_str()));
    }
    body
}

/// Refuses what the URL-only models (beta, SparkPix) cannot take: uploads, masks, transparency.
fn refuse_url_only(model: ModelId, req: &ImageRequest) -> Result<(), ApiError> {
    if req.has_bytes() {
        return Err(ApiError::unsupported(
            "image",
            format!("{model} takes reference images as URLs only (`images[].image_url` or `image_urls`); upload files with gpt-image-2-all or gpt-image-2-lite."),
        ));
    }
    if req.mask.is_some() {
        return Err(ApiError::unsupported(
            "mask",
            format!("{model} does not support masks; use gpt-image-2-all or gpt-image-2-lite."),
        ));
    }
    if req.transparent() {
        return Err(ApiError::unsupported(
            "background",
            format!("{model} cannot make transparent backgrounds; use gpt-image-2-all."),
        ));
    }
    Ok(())
}

/// The task-envelope reference fields: the one upload → `image_base64`; URLs → `image_url` (a
/// single URL and no upload) or `image_urls`; a mask → `mask_base64`, or `mask_url` where the
/// model takes one. `too_many` explains the refusal of a second upload.
fn envelope_refs(
    model: ModelId,
    req: &ImageRequest,
    body: &mut serde_json::Map<String, Value>,
    too_many: &str,
    mask_url: bool,
) -> Result<(), ApiError> {
    use base64::Engine as _;
    use request::ImageRef;
    let b64 = |data: &[u8]| base64::engine::general_purpose::STANDARD.encode(data);
    let uploads: Vec<&[u8]> = req
        .images
        .iter()
        .filter_map(|r| match r {
            ImageRef::Bytes { data, .. } => Some(data.as_ref()),
            ImageRef::Url(_) => None,
        })
        .collect();
    if uploads.len() > 1 {
        return Err(ApiError::unsupported(
            "image",
            format!("{too_many} Got {} uploads.", uploads.len()),
        ));
    }
    if let Some(data) = uploads.first() {
        body.insert("image_base64".into(), Value::String(b64(data)));
    }
    match req.urls().as_slice() {
        [] => {}
        [one] if uploads.is_empty() => {
            body.insert("image_url".into(), Value::from(*one));
        }
        many => {
            body.insert("image_urls".into(), Value::from(many.to_vec()));
        }
    }
    match &req.mask {
        None => {}
        Some(ImageRef::Bytes { data, .. }) => {
            body.insert("mask_base64".into(), Value::String(b64(data)));
        }
        Some(ImageRef::Url(u)) if mask_url => {
            body.insert("mask_url".into(), Value::from(u.as_str()));
        }
        Some(ImageRef::Url(_)) => {
            return Err(ApiError::unsupported(
                "mask",
                format!("{model} takes the mask as an uploaded PNG, not a URL."),
            ));
        }
    }
    Ok(())
}

/// Collects result URLs from any of the documented shapes: `resultUrls: [..]`, `url: ".."` or
/// `url: [..]` (SparkPix Image Edit can return several images).
fn result_urls(data: &Value) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for key in ["resultUrls", "url", "urls"] {
        let found: Vec<&str> = match data.get(key) {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        for url in found {
            if !urls.iter().any(|u| u == url) {
                urls.push(url.to_owned());
            }
        }
    }
    urls
}

/// The URL of `path` (with its query, if any) on the platform at `base`, whose path is kept as a
/// prefix. Built from the parsed base: a call's URL is not parsed again (host and all) per call.
fn endpoint(base: &reqwest::Url, path: &str) -> reqwest::Url {
    let (path, query) = match path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path, None),
    };
    let prefix = base.path().trim_end_matches('/');
    let mut full = String::with_capacity(prefix.len() + path.len());
    full.push_str(prefix);
    full.push_str(path);
    let mut url = base.clone();
    url.set_path(&full);
    url.set_query(query);
    url.set_fragment(None);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call's URL is the base URL (its path a prefix) with the call's path and query: the same
    /// text the base and path made when each call parsed it whole.
    #[test]
    fn a_call_url_is_the_base_with_the_path() {
        for (base, path, want) in [
            (
                "http://127.0.0.1:9",
                "/api/v1/images/generations",
                "http://127.0.0.1:9/api/v1/images/generations",
            ),
            (
                "https://api.example.com/",
                "/api/v1/tasks/t-1",
                "https://api.example.com/api/v1/tasks/t-1",
            ),
            (
                "https://h.example/prefix/",
                "/api/v1/tasks/a?b=1",
                "https://h.example/prefix/api/v1/tasks/a?b=1",
            ),
            (
                "https://h.example/prefix",
                "/v1/x",
                "https://h.example/prefix/v1/x",
            ),
        ] {
            let base = reqwest::Url::parse(base).unwrap();
            assert_eq!(endpoint(&base, path).as_str(), want, "{base} {path}");
            let old = format!("{}{path}", base.as_str().trim_end_matches('/'));
            assert_eq!(reqwest::Url::parse(&old).unwrap(), endpoint(&base, path));
        }
    }

    #[tokio::test]
    async fn fan_out_keeps_what_was_made() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let out = fan_out(4, || async {
            match calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 2 {
                0 => Ok(Output {
                    images: vec![Image::url("u".to_owned())],
                    ..Output::default()
                }),
                _ => Err(UpstreamError::new(FailureKind::ServerError, String::new())),
            }
        })
        .await
        .unwrap();
        assert_eq!((out.images.len(), out.unsettled), (2, 0));
        let all_fail = fan_out(3, || async {
            Err(UpstreamError::new(FailureKind::Connect, String::new()))
        });
        assert_eq!(all_fail.await.unwrap_err().kind, FailureKind::Connect);
    }

    /// A sibling call whose outcome is unknown (the platform may have made and billed it) is
    /// counted, so the attempt books it; with no image at all, that failure is the one reported.
    #[tokio::test]
    async fn fan_out_counts_calls_that_may_have_been_billed() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let out = fan_out(3, || async {
            match calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 => Ok(Output {
                    images: vec![Image::url("u".to_owned())],
                    ..Output::default()
                }),
                1 => Err(UpstreamError::new(FailureKind::Unknown, String::new())),
                _ => Err(UpstreamError::new(FailureKind::ServerError, String::new())),
            }
        })
        .await
        .unwrap();
        assert_eq!((out.images.len(), out.unsettled), (1, 1));
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let none = fan_out(2, || async {
            match calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 => Err(UpstreamError::new(FailureKind::ServerError, String::new())),
                _ => Err(UpstreamError::new(FailureKind::Unknown, String::new())),
            }
        });
        assert_eq!(none.await.unwrap_err().kind, FailureKind::Unknown);
    }

    #[test]
    fn result_urls_accept_every_shape() {
        let v: Value = serde_json::json!({"url": "a"});
        assert_eq!(result_urls(&v), ["a"]);
        let v: Value = serde_json::json!({"url": ["a", "b"], "resultUrls": ["a", "b"]});
        assert_eq!(result_urls(&v), ["a", "b"]);
    }
}
