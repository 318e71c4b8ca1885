//! A request's job: what is stored of it ([`JobSpec`], the images made), the journal its upstream
//! creates are written to before they are sent ([`JobJournal`]), and what happens to a job an
//! earlier process left unfinished ([`Dispatch::resume`]) or a finished one asked for again
//! ([`Dispatch::replay`]).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::{results, Dispatch};
use crate::budget::Payer;
use crate::config::Budget;
use crate::error::{ApiError, ErrorCode};
use crate::ledger::Row;
use crate::metrics::{JobEvent, UpstreamWait};
use crate::model::{ImageFormat, JsonText, JsonWriter, ModelId, Quality, Size, Text, Usd};
use crate::request::{ImageRequest, Operation, ResponseFormat};
use crate::store::jobs::{Finish, NewJob};
use crate::store::{CallRecord, Epoch, JobRecord, JobState, Op, Store};
use crate::upstream::failure::{Billing, FailureKind, UpstreamError};
use crate::upstream::{CallCtx, Image, Journal};

/// What a job keeps of its request: enough to book it and to render its answer again. Never the
/// prompt or uploads (a job that was never submitted is failed unbilled; nothing needs them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    pub edit: bool,
    pub n: u8,
    pub size: Option<String>,
    pub quality: String,
    pub url: bool,
    pub output_format: Option<String>,
    pub background: Option<String>,
}

impl JobSpec {
    pub fn of(req: &ImageRequest) -> Self {
        Self {
            edit: req.op == Operation::Edit,
            n: req.n,
            size: req.size.map(|s| s.to_string()),
            quality: req.quality.as_str().to_owned(),
            url: req.response_format == ResponseFormat::Url && !req.stream,
            output_format: req.output_format.map(|f| f.as_str().to_owned()),
            background: req.background.clone(),
        }
    }

    pub fn read(v: &Value) -> Self {
        serde_json::from_value(v.clone()).unwrap_or(Self {
            edit: false,
            n: 1,
            size: None,
            quality: "auto".to_owned(),
            url: false,
            output_format: None,
            background: None,
        })
    }

    /// The request as far as booking and rendering need it (no prompt, no references).
    pub fn request(&self) -> ImageRequest {
        ImageRequest {
            op: if self.edit {
                Operation::Edit
            } else {
                Operation::Generate
            },
            prompt: String::new(),
            n: self.n,
            size: self.size.as_deref().and_then(Size::parse),
            quality: Quality::parse(&self.quality).unwrap_or(Quality::Auto),
            response_format: if self.url {
                ResponseFormat::Url
            } else {
                ResponseFormat::B64Json
            },
            output_format: self.output_format.as_deref().and_then(ImageFormat::parse),
            background: self.background.clone(),
            images: Vec::new(),
            mask: None,
            extras: Map::new(),
            stream: false,
        }
    }
}

/// What a job keeps of its images, as the JSON text `[{"url": …} | {"b64_json": …}]`: the
/// upstream's URLs, or the inline base64 when the upstream gave no URL (gpt-image-2-all's
/// OpenAI-shaped answers), written from the buffer the answer arrived in.
pub fn stored_images(images: &[Image]) -> JsonText {
    let mut w = JsonWriter::new();
    w.raw("[");
    let mut first = true;
    for image in images {
        let sep = if first { "" } else { "," };
        match (&image.url, &image.b64) {
            (Some(url), _) => w.raw(sep).raw("{\"url\":").value(url).raw("}"),
            (None, Some(b64)) => w.raw(sep).raw("{\"b64_json\":").text(b64).raw("}"),
            (None, None) => continue,
        };
        first = false;
    }
    w.raw("]");
    w.finish()
}

fn images_of(stored: Option<&Value>) -> Vec<Image> {
    let Some(Value::Array(items)) = stored else {
        return Vec::new();
    };
    items
        .iter()
        .map(|i| Image {
            url: i.get("url").and_then(Value::as_str).map(str::to_owned),
            b64: i
                .get("b64_json")
                .and_then(Value::as_str)
                .map(|s| Text::new(Bytes::from(s.to_owned()))),
        })
        .collect()
}

/// A job in flight: its id, the numbering of its upstream creates (across attempts), and its
/// row when it is not written yet: then the first write of the job (its first create's
/// `submitting`, or its end) inserts it in the same transaction — still before anything is sent
/// upstream, one commit fewer per request.
#[derive(Clone)]
pub struct JobCtx {
    pub id: Arc<str>,
    calls: Arc<AtomicU32>,
    unwritten: Arc<Mutex<Option<Arc<NewJob>>>>,
    /// The claim its writes are made under (a shared store's lease), if any.
    epoch: Epoch,
}

impl JobCtx {
    /// A job whose row is written.
    pub fn new(id: &str) -> Self {
        Self {
            id: id.into(),
            calls: Arc::new(AtomicU32::new(0)),
            unwritten: Arc::default(),
            epoch: None,
        }
    }

    /// The job's writes are made under this claim (see [`Epoch`]).
    pub fn claimed(mut self, epoch: Epoch) -> Self {
        self.epoch = epoch;
        self
    }

    /// The claim this job's writes are made under.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// A job whose row goes in with its first write.
    pub fn unwritten(job: NewJob) -> Self {
        let ctx = Self::new(&job.id);
        *ctx.lock() = Some(Arc::new(job));
        ctx
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<NewJob>>> {
        self.unwritten
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The row to insert with this write, if it is not written yet.
    pub(super) fn take_row(&self) -> Option<Arc<NewJob>> {
        self.lock().take()
    }

    /// A write that carried the row failed: the next one carries it.
    pub(super) fn put_back(&self, row: Option<Arc<NewJob>>) {
        if row.is_some() {
            *self.lock() = row;
        }
    }
}

/// Where one attempt's creates are written before they are sent (see [`Journal`]).
pub(super) struct JobJournal {
    pub store: Store,
    pub job: JobCtx,
    pub attempt: u32,
    pub model: ModelId,
    /// The attempt's price per unit, whether a unit is a call (fanned-out `n`), and what is
    /// reserved: written with the first create so a restart can settle the job.
    pub price: Usd,
    pub per_call: bool,
    pub reserved: Usd,
}

impl Journal for JobJournal {
    fn submitting(&self) -> BoxFuture<'_, Result<u32, String>> {
        let seq = self.job.calls.fetch_add(1, Ordering::Relaxed);
        let job = self.job.id.clone();
        let (attempt, model) = (self.attempt, self.model.as_str());
        let (price, per_call, reserved) =
            (self.price.micros(), self.per_call, self.reserved.micros());
        let row = self.job.take_row();
        let epoch = self.job.epoch();
        Box::pin(async move {
            let carried = row.clone();
            let mut ops: Vec<Op> = row.map(Op::InsertJob).into_iter().collect();
            ops.push(Op::Attempt {
                job: job.to_string(),
                epoch,
                attempt,
                model: model.to_owned(),
                price_micros: price,
                per_call,
                reserved_micros: reserved,
            });
            ops.push(Op::Submitting {
                job: job.to_string(),
                epoch,
                seq,
                attempt,
                model: model.to_owned(),
            });
            let written = self.store.write(ops).await;
            if let Err(e) = written {
                self.job.put_back(carried);
                return Err(e.to_string());
            }
            Ok(seq)
        })
    }

    fn accepted<'a>(&'a self, seq: u32, task_id: &'a str, key: &'a str) -> BoxFuture<'a, ()> {
        let job = self.job.id.clone();
        let (task, key) = (task_id.to_owned(), key.to_owned());
        Box::pin(async move {
            let write = self.store.write_durable(vec![Op::CallEnded {
                job: job.to_string(),
                epoch: self.job.epoch(),
                seq,
                state: JobState::InProgress,
                task_id: Some(task),
                key: Some(key),
            }]);
            // The writer retries until the database takes it; a refusal cannot lose the task,
            // which is followed either way.
            if let Err(e) = write.await {
                tracing::error!(job_id = %self.job.id, task_id, error = %e, "could not record an upstream task id");
            }
            crate::failpoint::hit("after_task_id");
        })
    }
}

/// The error message's tail for an answer whose work may go on: where to find it.
pub fn job_note(id: &str) -> String {
    format!(" The work is kept as job {id}: GET /v1/images/jobs/{id} (do not retry: a retry may pay again).")
}

impl Dispatch<'_> {
    /// The answer of a finished job, asked for again (a replay, a job read): a completed job's
    /// images rendered afresh from what it kept, or its error.
    pub async fn replay(&self, job: &JobRecord) -> Result<results::ImagesBody, ApiError> {
        match job.state {
            JobState::Completed => {
                let spec = JobSpec::read(&job.spec);
                let req = spec.request();
                let model = job
                    .model
                    .as_deref()
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(ModelId::All);
                let wait = UpstreamWait::default();
                let fetch = results::Fetch {
                    upstream: self.upstream,
                    timeout: self.results_timeout,
                    request_id: &job.request_id,
                    model,
                    wait: &wait,
                };
                self.render(fetch, &req, images_of(job.images.as_ref()))
                    .await
            }
            _ => Err(job
                .error
                .as_ref()
                .map(|e| ApiError::from_body(e.get("error").unwrap_or(e)))
                .unwrap_or_else(|| ApiError::internal("The job ended without an answer."))),
        }
    }

    /// Settles a job an earlier process left unfinished: a `queued` one was never sent (failed,
    /// not billed); one whose create may have been sent without an answer is an unknown outcome
    /// (booked); one whose tasks are known is followed to its end with the keys that created them.
    pub async fn resume(&self, job: JobRecord) -> JobState {
        let payers = payers(&job);
        let reserved = Usd(job.reserved_micros);
        let calls: Vec<_> = job
            .calls
            .iter()
            .filter(|c| c.attempt == job.attempt)
            .cloned()
            .collect();
        let spec = JobSpec::read(&job.spec);
        let req = spec.request();
        let started = Instant::now();
        let reservation = self
            .budgets
            .reserve_job(&payers, &job.key_id, job.team.as_deref(), reserved, &job.id)
            .await
            .ok();
        let (state, cost, images, error) = if job.state == JobState::Queued || calls.is_empty() {
            let e = ApiError::new(
                ErrorCode::UpstreamUnavailable,
                "The gateway restarted before this request was sent upstream; nothing was billed. Send it again.",
            );
            (JobState::Failed, Usd::ZERO, None, Some(e))
        } else if calls.iter().any(|c| c.task_id.is_none()) {
            // A create was sent (or about to be) and its answer is lost: it may have been billed.
            tracing::warn!(job_id = %job.id, "a job's upstream create has no recorded answer: its outcome is unknown and its cost stays booked until an operator resolves it");
            self.metrics.job(JobEvent::Unknown);
            let e = ApiError::new(
                ErrorCode::UpstreamOutcomeUnknown,
                format!("The gateway stopped while the upstream was being asked; it may have made (and billed) the images.{}", job_note(&job.id)),
            );
            (JobState::Unknown, reserved, None, Some(e))
        } else {
            self.metrics.job(JobEvent::Resumed);
            self.follow(&job, &calls).await
        };
        if let Some(r) = reservation {
            r.settle(cost);
        }
        let status = match &error {
            Some(e) if state != JobState::Completed => e.status().as_u16(),
            _ => 200,
        };
        let model = job.model.as_deref().and_then(|m| m.parse::<ModelId>().ok());
        let finished = crate::ledger::Finished {
            status,
            error_code: error.as_ref().map(|e| e.code),
            served: model.filter(|_| cost > Usd::ZERO || state == JobState::Completed),
            cost,
            task_ids: calls.iter().filter_map(|c| c.task_id.clone()).collect(),
        };
        let mut row = Row::new(
            &job.key_id,
            job.team.as_deref(),
            &job.public_model,
            &req,
            &job.request_id,
            started.elapsed().as_millis(),
            finished,
        );
        row.job_id = Some(job.id.clone());
        let finish = Finish {
            state,
            status,
            cost_micros: cost.micros(),
            images,
            error: error.map(|e| e.body()),
            row,
        };
        let end = Op::Finish {
            job: job.id.clone(),
            epoch: job.epoch,
            finish: Box::new(finish),
        };
        if let Err(e) = self.store.write_durable(vec![end]).await {
            tracing::error!(job_id = %job.id, error = %e, "could not settle a resumed job");
        }
        state
    }

    /// Polls the job's known tasks to their end and prices what they made.
    async fn follow(
        &self,
        job: &JobRecord,
        calls: &[CallRecord],
    ) -> (JobState, Usd, Option<JsonText>, Option<ApiError>) {
        let model: ModelId = match job.model.as_deref().and_then(|m| m.parse().ok()) {
            Some(m) => m,
            None => ModelId::Beta,
        };
        let config = self.models.get(model);
        let ctx = CallCtx {
            deadline: Instant::now() + config.give_up_after,
            call_deadline: Instant::now() + config.deadline,
            journal: None,
            request_id: job.request_id.clone(),
            model,
            wait: UpstreamWait::default(),
        };
        let polls = calls.iter().map(|c| {
            let task = c.task_id.clone().unwrap_or_default();
            let key = c.upstream_key.clone();
            let ctx = &ctx;
            async move {
                self.upstream
                    .resume(model, &task, key.as_deref(), ctx)
                    .await
            }
        });
        let results = futures_util::future::join_all(polls).await;
        let price = Usd(job.price_micros);
        let mut images = Vec::new();
        let mut unknown_calls = 0usize;
        let mut first_err: Option<UpstreamError> = None;
        for r in results {
            match r {
                Ok(made) => images.extend(made),
                Err(e) => {
                    if e.kind.billing() != Billing::NotBilled {
                        unknown_calls += 1;
                    }
                    first_err.get_or_insert(e);
                }
            }
        }
        // Billed per image made; a call whose outcome is unknown is booked at one image.
        let made = Usd(price.micros().saturating_mul(images.len() as u64));
        let unknown = Usd(price.micros().saturating_mul(unknown_calls as u64));
        let cost = made + unknown;
        if !images.is_empty() {
            (
                JobState::Completed,
                cost,
                Some(stored_images(&images)),
                None,
            )
        } else {
            let e = first_err
                .unwrap_or_else(|| UpstreamError::new(FailureKind::Unknown, String::new()));
            let mut error = ApiError::from_upstream(&e);
            if unknown_calls > 0 {
                error.message.push_str(&job_note(&job.id));
                (JobState::Unknown, cost, None, Some(error))
            } else {
                (JobState::Failed, Usd::ZERO, None, Some(error))
            }
        }
    }
}

/// The payers of a stored job, with no limit: its money was reserved when it was admitted.
fn payers(job: &JobRecord) -> Vec<(Payer, Budget)> {
    let mut payers = vec![(Payer::Key(job.key_id.clone()), Budget::default())];
    if let Some(team) = &job.team {
        payers.push((Payer::Team(team.clone()), Budget::default()));
    }
    payers
}
