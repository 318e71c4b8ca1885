//! Jobs in this process: every image request that passed admission runs as a job owned here, not
//! by the HTTP request that started it, so a caller that stops waiting (a deadline, a hang-up, a
//! `Prefer: respond-async`) never cuts paid work short. Waiters — the first caller, a request
//! with the same `Idempotency-Key`, an SDK's retry — watch the job and get the same answer.
//!
//! At startup [`Jobs::resume_all`] takes back every job the last process left unfinished.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::api::edits::EditParts;
use crate::dispatch::{Finished, ImagesBody, JobCtx, Prepared, ServedBy};
use crate::error::ApiError;
use crate::metrics::JobEvent;
use crate::request::{ImageRef, Operation};
use crate::state::AppState;
use crate::store::jobs::{now_ms, IdemKey};
use crate::store::{Created, JobRecord, JobState};

/// Where a job is, as its waiters see it.
#[derive(Clone)]
pub enum Progress {
    Running,
    /// The first caller's deadline passed; the work goes on.
    Late,
    Done(Arc<Finished>),
}

/// The jobs running in this process.
#[derive(Default)]
pub struct Jobs {
    running: Mutex<HashMap<Arc<str>, watch::Receiver<Progress>>>,
    tasks: TaskTracker,
    stopping: CancellationToken,
    /// Cancelled when the gateway starts to drain (see [`Jobs::draining`]).
    draining: CancellationToken,
}

/// How a request asked to be run: the headers that make it a job's retry or an async job.
#[derive(Debug, Clone, Default)]
pub struct JobOptions {
    pub idempotency_key: Option<String>,
    /// `x-stainless-retry-count` ≥ 1: an SDK sending the same request again.
    pub sdk_retry: bool,
    /// Codex's `x-codex-image-turn-id`: see [`implicit_key`](Self::implicit_key).
    pub codex_turn: Option<String>,
    /// `Prefer: respond-async`.
    pub respond_async: bool,
    /// Where the job's end is posted: the request's `callback_url`, else the key's `webhook_url`.
    pub callback_url: Option<String>,
}

impl JobOptions {
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let idempotency_key = match headers.get("idempotency-key") {
            None => None,
            Some(v) => {
                let k = v.to_str().unwrap_or_default().trim();
                if k.is_empty() || k.len() > 255 {
                    return Err(ApiError::invalid(
                        "Idempotency-Key",
                        "The Idempotency-Key header must be 1 to 255 visible ASCII characters.",
                    ));
                }
                Some(k.to_owned())
            }
        };
        // Codex's image tool sends no Idempotency-Key and no retry count, but the same turn id
        // on each retry of one call: with the request's digest it names the call.
        let codex_turn = text("x-codex-image-turn-id")
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 128)
            .map(str::to_owned);
        let sdk_retry = text("x-stainless-retry-count")
            .and_then(|v| v.trim().parse::<u32>().ok())
            .is_some_and(|n| n >= 1);
        let respond_async = headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("respond-async"));
        Ok(Self {
            idempotency_key,
            codex_turn,
            sdk_retry,
            respond_async,
            callback_url: None,
        })
    }
}

/// The implicit key of a Codex image call: `codex:{turn id}:{digest}`.
const CODEX_KEY_PREFIX: &str = "codex:";

/// For a Codex call's implicit key, how long after its job ended a retry still joins it.
fn codex_window(state: &AppState, opts: &JobOptions) -> Option<i64> {
    opts.idempotency_key
        .as_deref()
        .is_some_and(|k| k.starts_with(CODEX_KEY_PREFIX))
        .then(|| ms(state.config.jobs.codex_retry_window))
}

impl JobOptions {
    /// With no `Idempotency-Key`, a Codex turn id and the request's digest stand for one: Codex
    /// retries a 500 or 503 four times with the same turn id, and those retries join the first
    /// job instead of paying for four more images. A different call in the same turn has
    /// another digest, so another key; the same call made again more than
    /// `jobs.codex_retry_window` after the first ended is a new image. (Two identical calls in
    /// flight at once cannot be told from a retry: they share one image.)
    pub fn implicit_key(mut self, digest: &str) -> Self {
        if self.idempotency_key.is_none() {
            if let Some(turn) = self.codex_turn.take() {
                let short = digest.get(..32).unwrap_or(digest);
                self.idempotency_key = Some(format!("{CODEX_KEY_PREFIX}{turn}:{short}"));
            }
        }
        self
    }
}

/// SHA-256 of the canonical request: the operation, every body field (JSON with sorted keys)
/// and every uploaded byte, with its field name.
pub fn digest(op: Operation, parts: &EditParts) -> String {
    let mut h = Sha256::new();
    h.update(match op {
        Operation::Generate => b"generations\n".as_slice(),
        Operation::Edit => b"edits\n".as_slice(),
    });
    // The fields' JSON text, written straight into the hash (the same bytes as the text of the
    // `Value` they make: stored digests stay comparable).
    let _ = serde_json::to_writer(&mut h, &parts.fields);
    let refs = parts.images.iter().map(|r| ("image", r));
    for (name, r) in refs.chain(parts.mask.iter().map(|m| ("mask", m))) {
        h.update(b"\n");
        h.update(name.as_bytes());
        match r {
            ImageRef::Bytes { data, .. } => {
                h.update(b":bytes:");
                h.update((data.len() as u64).to_le_bytes());
                h.update(data);
            }
            ImageRef::Url(u) => {
                h.update(b":url:");
                h.update(u.as_bytes());
            }
        }
    }
    hex::encode(h.finalize())
}

/// A new job id: `imgjob_` and 32 hex digits, a UUIDv7: time first (milliseconds), then 74
/// random bits. Ordered by creation, a new id lands at the end of every index keyed by job id
/// (jobs, their calls, the ledger) instead of on a random page: a request dirties a few pages at
/// the tail of each index rather than one random page per index.
pub fn new_id() -> String {
    format!("imgjob_{}", uuid::Uuid::now_v7().simple())
}

/// How often a job another replica runs is read again by a waiter here.
const REMOTE_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// What a request became.
pub enum Admitted {
    /// A job waiters can watch.
    Job(Arc<str>, watch::Receiver<Progress>),
    /// A finished job, replayed from the store.
    Finished(Box<JobRecord>),
}

impl Jobs {
    fn running(&self) -> MutexGuard<'_, HashMap<Arc<str>, watch::Receiver<Progress>>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn watch(&self, id: &str) -> Option<watch::Receiver<Progress>> {
        self.running().get(id).cloned()
    }

    /// The job this request should join instead of running again: the `Idempotency-Key`'s
    /// (422 when the key was used for another request), or, for an SDK retry, a recent job of
    /// the same key with the same request.
    pub async fn existing(
        &self,
        state: &Arc<AppState>,
        key_id: &str,
        digest: &str,
        opts: &JobOptions,
    ) -> Result<Option<Admitted>, ApiError> {
        let store = state.store();
        let found = if let Some(idem) = &opts.idempotency_key {
            let now = now_ms();
            let rec = store
                .job_by_idempotency_key(key_id.to_owned(), idem.clone())
                .await?;
            match rec {
                Some((job, stored_digest, expires)) => {
                    let live = job.live_for_key(expires, codex_window(state, opts), now);
                    if !live {
                        None
                    } else if stored_digest != digest {
                        return Err(reused());
                    } else {
                        state.metrics.job(JobEvent::JoinedIdempotencyKey);
                        Some(job)
                    }
                }
                None => None,
            }
        } else if opts.sdk_retry {
            let since = now_ms() - ms(state.config.jobs.retry_window);
            let job = store
                .find_retry(key_id.to_owned(), digest.to_owned(), since)
                .await?;
            if job.is_some() {
                state.metrics.job(JobEvent::JoinedSdkRetry);
            }
            job
        } else {
            None
        };
        match found {
            Some(job) => Ok(Some(self.admitted(state, job).await?)),
            None => Ok(None),
        }
    }

    /// A stored job as a waiter joins it: its owner's progress while it runs, else its record.
    /// A job's owner registers it before its first write and unregisters it only after its end
    /// is committed, so an unfinished record with no owner here has just ended: it is read again.
    /// On a shared store the owner may be another replica: the job is watched in the store.
    async fn admitted(&self, state: &Arc<AppState>, job: JobRecord) -> Result<Admitted, ApiError> {
        if job.state.is_terminal() {
            return Ok(Admitted::Finished(Box::new(job)));
        }
        if let Some(rx) = self.watch(&job.id) {
            return Ok(Admitted::Job(job.id.as_str().into(), rx));
        }
        let again = state.store().job(job.id.clone()).await?;
        match again {
            Some(job) if state.store().is_shared() && !job.state.is_terminal() => {
                Ok(self.watch_elsewhere(state, &job.id))
            }
            again => Ok(Admitted::Finished(Box::new(again.unwrap_or(job)))),
        }
    }

    /// A job another replica runs, waited for by reading it in the store until it ends.
    fn watch_elsewhere(&self, state: &Arc<AppState>, id: &str) -> Admitted {
        let id: Arc<str> = id.into();
        let (tx, rx) = watch::channel(Progress::Running);
        let (state, job_id) = (state.clone(), id.clone());
        // Told by the database when any replica ends a job; read again every REMOTE_POLL too,
        // since a notification can be lost.
        let mut ended = state.store().job_ends();
        self.spawn(async move {
            loop {
                let told = async {
                    match ended.as_mut() {
                        Some(rx) => loop {
                            match rx.recv().await {
                                Ok(id) if *id == *job_id => return,
                                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                                    std::future::pending::<()>().await;
                                }
                            }
                        },
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = told => {}
                    () = tokio::time::sleep(REMOTE_POLL) => {}
                }
                match state.store().job(job_id.to_string()).await {
                    Ok(Some(job)) if !job.state.is_terminal() => continue,
                    Ok(_) => break,
                    Err(e) => tracing::warn!(job_id = %job_id, error = %e, "could not read a job another replica runs; trying again"),
                }
            }
            let answer = finished_answer(&state, &job_id).await;
            tx.send_replace(Progress::Done(Arc::new(answer)));
        });
        Admitted::Job(id, rx)
    }

    /// Writes the job of a prepared request and starts it, or joins the job its
    /// `Idempotency-Key` already names (a concurrent duplicate loses the key's insert).
    pub async fn start(
        &self,
        state: &Arc<AppState>,
        prepared: Prepared,
        digest: &str,
        opts: &JobOptions,
    ) -> Result<Admitted, ApiError> {
        let id = new_id();
        let expires = now_ms() + ms(state.config.jobs.idempotency_ttl);
        let idem = opts.idempotency_key.clone().map(|key| IdemKey {
            key,
            expires_ms: expires,
            after_end_ms: codex_window(state, opts),
        });
        let new = state
            .dispatch()
            .new_job(&prepared, &id, digest, idem, opts.callback_url.clone());
        // A job goes into the store before anything is sent upstream. With an Idempotency-Key
        // (its record decides whether the job is new) or for the async API (the caller may read
        // it at once) it is written now; otherwise with its first create's record, in the same
        // transaction (see `JobCtx::unwritten`).
        // The job is registered before it is written, so a request that finds its record (the
        // same Idempotency-Key, a moment later) also finds its owner.
        let job_id: Arc<str> = id.as_str().into();
        let (tx, rx) = watch::channel(Progress::Running);
        let registered = Registered::new(self, job_id.clone(), rx.clone());
        let ctx = if opts.idempotency_key.is_some() || opts.respond_async {
            let created = state.store().create_job(new).await?;
            if let Created::Existing {
                job_id: existing,
                digest: other,
            } = created
            {
                // The request that lost the race is no job: its admission is given back unused.
                drop(registered);
                drop(prepared);
                if other != digest {
                    return Err(reused());
                }
                state.metrics.job(JobEvent::JoinedIdempotencyKey);
                let job = state.store().job(existing).await?.ok_or_else(|| {
                    ApiError::internal("The job of this Idempotency-Key is gone.")
                })?;
                return self.admitted(state, job).await;
            }
            JobCtx::new(&id).claimed(state.store().first_epoch())
        } else {
            JobCtx::unwritten(new).claimed(state.store().first_epoch())
        };
        state.metrics.job(JobEvent::Created);
        registered.keep();
        let state = state.clone();
        let id = job_id.clone();
        // Boxed so the task holds the request once (in `run`), not also as a captured value.
        let prepared = Box::new(prepared);
        self.spawn(async move {
            let _running = state.metrics.job_running();
            let (late_tx, mut late_rx) = tokio::sync::oneshot::channel();
            let dispatch = state.dispatch();
            // Boxed, not pinned in place: `tokio::pin!` moves the future into a second local,
            // and the task would keep room for both while the job waits.
            let mut run = Box::pin(dispatch.run(*prepared, ctx, Some(late_tx)));
            let mut late_seen = false;
            let finished = loop {
                tokio::select! {
                    f = &mut run => break f,
                    r = &mut late_rx, if !late_seen => {
                        late_seen = true;
                        if r.is_ok() {
                            tx.send_replace(Progress::Late);
                        }
                    }
                }
            };
            tx.send_replace(Progress::Done(Arc::new(finished)));
            state.jobs.running().remove(&job_id);
        });
        Ok(Admitted::Job(id, rx))
    }

    /// Takes back every job the last process left unfinished (see `Dispatch::resume`). Their
    /// reservations count against budgets until they are settled.
    pub async fn resume_all(&self, state: &Arc<AppState>) -> anyhow::Result<usize> {
        // Replicas sharing a store take over each other's jobs when a claim lapses (`replicas`).
        if state.store().is_shared() {
            return Ok(0);
        }
        let unfinished = state.store().unfinished_jobs().await?;
        let n = unfinished.len();
        for job in unfinished {
            tracing::info!(job_id = %job.id, state = job.state.as_str(), "resuming a job left unfinished by the last process");
            self.resume(state, job);
        }
        Ok(n)
    }

    /// Settles (or follows to its end) one job an earlier process left unfinished.
    pub fn resume(&self, state: &Arc<AppState>, job: JobRecord) {
        let id: Arc<str> = job.id.as_str().into();
        let (tx, rx) = watch::channel(Progress::Running);
        self.running().insert(id.clone(), rx);
        let state = state.clone();
        self.spawn(async move {
            let _running = state.metrics.job_running();
            state.dispatch().resume(job).await;
            let answer = finished_answer(&state, &id).await;
            tx.send_replace(Progress::Done(Arc::new(answer)));
            state.jobs.running().remove(&id);
        });
    }

    /// Runs a job's work until it ends or the process stops.
    /// The work runs in the span of the request that started it, so its log lines name it.
    fn spawn(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        let stopping = self.stopping.clone();
        // Boxed: a future moved into `select!` would be held twice in the task (as the captured
        // value and as the selected one), and a waiting job is mostly this future.
        let work = Box::pin(work);
        let work = async move {
            tokio::select! {
                () = work => {}
                () = stopping.cancelled() => {}
            }
        };
        self.tasks.spawn(work.in_current_span());
    }

    /// The gateway has begun to stop: callers waiting on a job whose task the platform holds are
    /// told at once (the next process resumes the job, and their retry joins it); only sync
    /// calls are drained.
    pub fn drain(&self) {
        self.draining.cancel();
    }

    /// Resolves when the gateway begins to stop.
    pub async fn draining(&self) {
        self.draining.cancelled().await;
    }

    /// Stops every job where it is (its state is in the store) and waits until they are gone.
    pub async fn stop(&self) {
        self.stopping.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// A job entered in [`Jobs::running`] before it is started; it leaves again when the start is
/// abandoned (an error, a lost Idempotency-Key race, a caller gone) unless it was kept.
struct Registered<'a> {
    jobs: &'a Jobs,
    id: Option<Arc<str>>,
}

impl<'a> Registered<'a> {
    fn new(jobs: &'a Jobs, id: Arc<str>, rx: watch::Receiver<Progress>) -> Self {
        jobs.running().insert(id.clone(), rx);
        Self { jobs, id: Some(id) }
    }

    /// The job started: its task removes it when it ends.
    fn keep(mut self) {
        self.id = None;
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.jobs.running().remove(&id);
        }
    }
}

/// A finished job's answer, as a waiter renders it.
pub async fn finished_answer(state: &AppState, id: &str) -> Finished {
    let job = state.store().job(id.to_owned()).await;
    match job {
        Ok(Some(job)) => replay(state, &job).await,
        Ok(None) => Finished {
            result: Err(ApiError::internal("The job is gone.")),
            served: ServedBy::default(),
            rate_headers: Vec::new(),
            job_id: Some(id.into()),
        },
        Err(e) => Finished {
            result: Err(e.into()),
            served: ServedBy::default(),
            rate_headers: Vec::new(),
            job_id: Some(id.into()),
        },
    }
}

/// A stored job's answer: its images fetched again, or its error.
pub async fn replay(state: &AppState, job: &JobRecord) -> Finished {
    let result = state.dispatch().replay(job).await;
    Finished {
        result,
        served: ServedBy {
            model: job.model.as_deref().and_then(|m| m.parse().ok()),
            cost: crate::model::Usd(job.cost_micros.unwrap_or(0)),
            attempts: job.attempt,
            task_ids: job.calls.iter().filter_map(|c| c.task_id.clone()).collect(),
        },
        rate_headers: Vec::new(),
        job_id: Some(job.id.as_str().into()),
    }
}

/// The `image.job` object of the async API (`GET /v1/images/jobs/{id}`); `answer` is the
/// finished job's answer (its `result` or `error`).
pub fn job_object(job: &JobRecord, answer: Option<&Result<ImagesBody, ApiError>>) -> Value {
    let secs = |ms: i64| ms / 1000;
    let mut o = json!({
        "id": job.id,
        "object": "image.job",
        "status": job.state.as_str(),
        "model": job.public_model,
        "created_at": secs(job.created_ms),
        "completed_at": job.completed_ms.map(secs),
    });
    if let Some(cost) = job.cost_micros {
        o["cost_usd"] = json!(crate::model::Usd(cost).to_string());
    }
    // The upstream model that served it (the last one tried while it runs).
    if let Some(served) = &job.model {
        o["served_model"] = json!(served);
    }
    match answer {
        Some(Ok(body)) => o["result"] = body.to_value(),
        Some(Err(e)) => o["error"] = e.body()["error"].clone(),
        None => {}
    }
    o
}

/// Whether a stored job is finished (a terminal state).
pub fn is_finished(job: &JobRecord) -> bool {
    job.state.is_terminal() && job.state != JobState::Queued
}

fn reused() -> ApiError {
    ApiError::new(
        crate::error::ErrorCode::IdempotencyKeyReused,
        "This Idempotency-Key was already used with a different request. Use a new key for a new request.",
    )
    .with_param("Idempotency-Key")
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    /// The digest hashes the fields' JSON text as before it was written straight into the
    /// hash: digests already stored keep matching the same request.
    #[test]
    fn digest_hashes_the_fields_text() {
        use sha2::{Digest, Sha256};
        let fields = serde_json::json!({"prompt": "a \"cat\" é", "n": 2, "size": "1024x1024"});
        let parts = super::EditParts {
            fields: fields.as_object().unwrap().clone(),
            images: Vec::new(),
            mask: None,
        };
        let mut h = Sha256::new();
        h.update(b"generations\n");
        h.update(fields.to_string().as_bytes());
        assert_eq!(
            super::digest(crate::request::Operation::Generate, &parts),
            hex::encode(h.finalize())
        );
    }

    /// Ids sort by creation (they land at the end of the indexes keyed by job id) and keep the
    /// `imgjob_` + 32 hex digits form.
    #[test]
    fn job_ids_sort_by_creation() {
        let ids: Vec<String> = (0..2_000).map(|_| super::new_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        for id in &ids {
            let hex = id.strip_prefix("imgjob_").unwrap();
            assert!(
                hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                "{id}"
            );
        }
    }
}
