//! The one owner of an image request, from admission to ledger row. Read top to bottom:
//!
//! 1. **admit** — the key may use the public name (checked before anything else, so a key hears
//!    nothing of a model it may not use); the key's and team's rate and concurrency limits
//!    ([`limits`](crate::limits));
//! 2. **choose** — [`Routing::choose`] over one [`HealthView`]: the candidates, each with its
//!    [`Price`](crate::pricing::Price), computed once;
//! 3. **plan** — the first candidate whose adapter accepts the request (a pure `plan`): bad input
//!    is refused here, before any upstream call and before a stream starts;
//!
//!    ([`Dispatch::prepare`] runs 1–3 in the order: the key may use the name, its reference URLs
//!    pass the URL policy, choose, plan, then the rate limits — so a refused request uses no
//!    allowance; anything they refuse costs nothing and is closed at once with its ledger row.)
//! 4. **reserve** — per attempt, the candidate's price against the key's and team's budgets and a
//!    slot under the model's upstream caps ([`Attempt`], an RAII guard around the money);
//! 5. **execute with failover** — the attempt runs; a failure that cost nothing
//!    ([`FailureKind::fails_over`](crate::upstream::failure::FailureKind::fails_over)) moves to
//!    the next candidate, at most `routing.max_attempts`, within `routing.request_deadline`;
//! 6. **settle** — a served attempt is booked at what the upstream made (the price per image ×
//!    images billed), a failed one released;
//! 7. **results** — the answer's body: result files fetched and encoded ([`results`]);
//! 8. **close** — the ledger row, whatever happened.
//!
//! [`Dispatch`] holds explicit handles (limits, budgets, health, the upstream, the store,
//! metrics), not the application state, so tests drive it with a fake upstream and a job runner
//! can drive it as well as an HTTP handler. Handlers only parse, call [`Dispatch::prepare`] and
//! [`Dispatch::run`], and render a [`Finished`].

mod attempt;
pub mod job;
pub mod results;
pub use results::{ImagesBody, Item};
#[cfg(test)]
mod tests;

use std::time::Duration;

use tokio::time::Instant;

use crate::budget::{Budgets, Payer};
use crate::catalog;
use crate::config::ModelsConfig;
use crate::error::{ApiError, ErrorCode, RateLimit};
use crate::keys::ClientKey;
use crate::ledger::{self, Row};
use crate::limits::{Admission, RateLimits};
use crate::metrics::{CallOutcome, JobEvent, Metrics, RefusalReason, UpstreamWait};
use crate::model::{ModelId, Route, Usd};
use crate::request::{ImageRef, ImageRequest, Operation, ResponseFormat};
use crate::routing::health::{Health, HealthView, Verdict};
use crate::routing::{Candidate, Constraints, Routing};
use crate::store::{Finish, JobState, Op, Store};
use crate::upstream::failure::Billing;
use crate::upstream::failure::UpstreamError;
use crate::upstream::urls::UrlPolicy;
use crate::upstream::{self, CallCtx, Output, Plan, Upstreams};
pub use attempt::Attempt;
pub use job::{job_note, JobCtx, JobSpec};
use std::sync::Arc;

/// The handles a request needs, borrowed from the application for its duration.
pub struct Dispatch<'a> {
    pub models: &'a ModelsConfig,
    pub routing: &'a Routing,
    pub health: &'a Health,
    pub limits: &'a RateLimits,
    pub budgets: &'a Budgets,
    pub upstream: &'a dyn Upstreams,
    pub store: &'a Store,
    pub metrics: &'a Metrics,
    /// How long result downloads may take.
    pub results_timeout: Duration,
    /// What client reference URLs may be (`[urls]`).
    pub urls: UrlPolicy,
}

/// Who is calling and how: the authenticated key, the caller's routing constraints, the request
/// id (sent upstream) and the request's upstream clock (the gateway's overhead is the rest).
#[derive(Debug, Clone)]
pub struct Call {
    pub caller: ClientKey,
    pub constraints: Constraints,
    pub request_id: String,
    pub wait: UpstreamWait,
}

/// A request that was admitted, routed and planned: everything that could refuse it without
/// spending has run. [`Dispatch::run`] takes it from here.
pub struct Prepared {
    call: Call,
    route: Route,
    req: ImageRequest,
    candidates: Vec<Candidate>,
    first: Plan,
    admission: Admission,
    started: Instant,
}

impl Prepared {
    pub fn operation(&self) -> Operation {
        self.req.op
    }

    /// The `x-ratelimit-*` headers of the admission (a stream sends them before it runs).
    pub fn rate_headers(&self) -> Vec<(&'static str, String)> {
        self.admission.headers()
    }
}

/// What served a request: headers, the ledger row and the access log read it.
#[derive(Debug, Clone, Default)]
pub struct ServedBy {
    /// The model that served it, or the last one tried.
    pub model: Option<ModelId>,
    /// What the upstream billed (zero when nothing was made).
    pub cost: Usd,
    /// Upstream models tried.
    pub attempts: u32,
    pub task_ids: Vec<String>,
}

/// How a request ended: the answer's body or the error, what served it, and the admission's
/// `x-ratelimit-*` headers. Its ledger row is already written (with its job's terminal state).
#[derive(Debug)]
pub struct Finished {
    pub result: Result<results::ImagesBody, ApiError>,
    pub served: ServedBy,
    pub rate_headers: Vec<(&'static str, String)>,
    /// The job, once the request passed admission.
    pub job_id: Option<Arc<str>>,
}

/// An attempt that served the request.
struct Served {
    model: ModelId,
    output: Output,
    by: ServedBy,
}

/// Why no attempt served the request, what was tried, and whether the upstream may have billed
/// it (then it stays booked and nothing fails over).
struct Failed {
    error: ApiError,
    by: ServedBy,
    billing: Billing,
}

/// Told once when the caller's deadline passes while the job's work goes on.
pub type Late = Option<tokio::sync::oneshot::Sender<()>>;

impl Dispatch<'_> {
    /// Steps 1–3: choose, plan, admit. A refusal is closed here (ledger row) and returned as a
    /// [`Finished`] to render.
    pub async fn prepare(
        &self,
        call: Call,
        route: Route,
        req: ImageRequest,
    ) -> Result<Prepared, Box<Finished>> {
        let started = Instant::now();
        match self.check(&call, &route, &req).await {
            Ok((candidates, first, admission)) => Ok(Prepared {
                call,
                route,
                req,
                candidates,
                first,
                admission,
                started,
            }),
            Err(error) => Err(Box::new(
                self.close(
                    &call,
                    &route,
                    &req,
                    started,
                    None,
                    Err(error),
                    ServedBy::default(),
                )
                .await,
            )),
        }
    }

    async fn check(
        &self,
        call: &Call,
        route: &Route,
        req: &ImageRequest,
    ) -> Result<(Vec<Candidate>, Plan, Admission), ApiError> {
        let (first, candidates) = self.choose(call, route, req)?;
        let admission = self.admit(&call.caller, req).await?;
        Ok((candidates, first, admission))
    }

    /// Steps 2–3 without admission: the key may use the name, the reference URLs pass, and the
    /// models that would serve the request, in order, with their exact prices and the first one's
    /// plan. A quote is this and nothing more: no limit is taken, nothing is sent.
    pub(crate) fn choose(
        &self,
        call: &Call,
        route: &Route,
        req: &ImageRequest,
    ) -> Result<(Plan, Vec<Candidate>), ApiError> {
        // Authorization first: a key that may not use the name hears nothing of its health.
        if !call.caller.record.allows(&route.public) {
            return Err(ApiError::model_not_allowed(&route.public));
        }
        self.check_reference_urls(req)?;
        // Observed p90s are only read when the caller set a latency budget.
        let p90_after = call
            .constraints
            .max_latency
            .map(|_| self.routing.config().latency_min_samples);
        let view: HealthView = self.health.view(&route.members, req.quality, p90_after);
        let candidates = self
            .routing
            .choose(self.models, &view, req, route, call.constraints)?;
        plan_first(req, route, candidates)
    }

    /// Step 1: the key's and its team's rate and concurrency limits (that the key may use the
    /// name at all is checked first of everything, in `check`).
    async fn admit(&self, caller: &ClientKey, req: &ImageRequest) -> Result<Admission, ApiError> {
        self.limits
            .admit(caller, req.n)
            .await
            .inspect_err(|e| self.count_refusal(caller, e))
    }

    /// The job a prepared request becomes: written (state `queued`) before anything is sent.
    /// With an `Idempotency-Key`, the key's record decides whether it is new (see
    /// [`crate::store::create`]).
    pub fn new_job(
        &self,
        p: &Prepared,
        id: &str,
        digest: &str,
        idempotency: Option<crate::store::IdemKey>,
        callback_url: Option<String>,
    ) -> crate::store::NewJob {
        crate::store::NewJob {
            id: id.to_owned(),
            key_id: p.call.caller.id.to_string(),
            team: p.call.caller.team_id().map(str::to_owned),
            digest: digest.to_owned(),
            public_model: p.route.public.to_string(),
            spec: serde_json::to_string(&JobSpec::of(&p.req)).unwrap_or_else(|_| "null".to_owned()),
            request_id: p.call.request_id.clone(),
            idempotency,
            callback_url,
        }
    }

    /// Steps 4–8 for a prepared request whose job is written.
    pub async fn run(&self, p: Prepared, job: JobCtx, mut late: Late) -> Finished {
        let Prepared {
            call,
            route,
            req,
            candidates,
            first,
            admission,
            started,
        } = p;
        let executed = self
            .execute(&call, &route, &req, &candidates, first, &job, &mut late)
            .await;
        let (result, by, state, images) = match executed {
            Ok(Served { model, output, by }) => {
                let fetch = results::Fetch {
                    upstream: self.upstream,
                    timeout: self.results_timeout,
                    request_id: &call.request_id,
                    model,
                    wait: &call.wait,
                };
                let stored = job::stored_images(&output.images);
                // A download that fails after the upstream billed keeps the cost booked, and the
                // job keeps the result URLs: the image is still obtainable.
                let body = self.render(fetch, &req, output.images).await;
                (body, by, JobState::Completed, Some(stored))
            }
            Err(Failed { error, by, billing }) => {
                let state = match billing {
                    Billing::NotBilled => JobState::Failed,
                    Billing::Billed | Billing::Unknown => JobState::Unknown,
                };
                if state == JobState::Unknown {
                    self.metrics.job(JobEvent::Unknown);
                    tracing::warn!(job_id = %job.id, request_id = call.request_id, kind = ?error.code, "upstream outcome unknown: the reservation stays booked until an operator resolves the job");
                }
                (Err(error), by, state, None)
            }
        };
        let result = result.map_err(|mut e| {
            if !e.code.should_retry() && state != JobState::Failed {
                e.message.push_str(&job_note(&job.id));
            }
            e
        });
        self.close_job(
            &call, &route, &req, started, &admission, result, by, &job, state, images,
        )
        .await
    }

    /// Step 7 with retries: result files live 7 days upstream, so a failed download is tried
    /// again inside the gateway (with backoff, within `results.timeout` in all) rather than
    /// making the client create (and pay for) the image again — unless trying again cannot
    /// mend it (a file too large or not an image, a URL the policy refuses).
    pub(crate) async fn render(
        &self,
        fetch: results::Fetch<'_>,
        req: &ImageRequest,
        images: Vec<upstream::Image>,
    ) -> Result<results::ImagesBody, ApiError> {
        // Inline images and `url` answers fetch nothing: nothing to try again, nothing to copy.
        let nothing_to_fetch = !req.stream && req.response_format == ResponseFormat::Url
            || images.iter().all(|i| i.b64.is_some());
        if nothing_to_fetch {
            return results::body(fetch, req, images).await;
        }
        let until = Instant::now() + self.results_timeout;
        let mut pause = Duration::from_millis(200);
        loop {
            match results::body(fetch, req, images.clone()).await {
                Err(e)
                    if e.code == ErrorCode::ResultDownloadFailed
                        && !e.lasting
                        && Instant::now() + pause < until =>
                {
                    tracing::info!(
                        request_id = fetch.request_id,
                        retry_in_ms = pause.as_millis() as u64,
                        "result download failed; trying again"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }

    /// Steps 4–6: the candidates in order until one serves the request.
    #[allow(
        clippy::too_many_arguments,
        reason = "one request's parts, passed by reference rather than bundled for one call"
    )]
    async fn execute(
        &self,
        call: &Call,
        route: &Route,
        req: &ImageRequest,
        candidates: &[Candidate],
        first: Plan,
        job: &JobCtx,
        late: &mut Late,
    ) -> Result<Served, Failed> {
        let rules = self.routing.config();
        let overall = Instant::now() + rules.request_deadline;
        let mut by = ServedBy::default();
        let mut last_failure: Option<(ModelId, UpstreamError)> = None;
        let mut refused: Option<ApiError> = None;
        let mut first = Some(first);
        for candidate in candidates {
            if by.attempts >= u32::from(rules.max_attempts) || Instant::now() >= overall {
                break;
            }
            let model = candidate.model;
            let plan = match first.take() {
                Some(plan) => plan,
                // A later model's adapter may refuse what the first accepted (a vendor extra it
                // does not take): it is skipped, not an attempt.
                None => match upstream::plan(model, req) {
                    Ok(p) => p,
                    Err(_) => continue,
                },
            };
            let Some(ticket) = self.health.admit(model) else {
                continue;
            };
            // Budget (429 insufficient_quota) or the model's upstream cap: a later candidate may
            // still fit under its own cap; none fits a budget a cheaper one did not.
            let attempt = match self.reserve(call, &job.id, candidate).await {
                Ok(a) => a,
                Err(e) => {
                    refused.get_or_insert(e);
                    continue;
                }
            };
            if let Some((from, e)) = &last_failure {
                self.metrics.failover(*from, model, e.kind);
            }
            by.attempts += 1;
            by.model = Some(model);
            let config = self.models.get(model);
            let journal = job::JobJournal {
                store: self.store.clone(),
                job: job.clone(),
                attempt: by.attempts,
                model,
                price: candidate.price.unit,
                per_call: !catalog::capabilities(model).native_n,
                reserved: candidate.cost(),
            };
            let started = Instant::now();
            let ctx = CallCtx {
                deadline: started + config.give_up_after,
                call_deadline: started + config.deadline,
                journal: Some(Arc::new(journal)),
                request_id: call.request_id.clone(),
                model,
                wait: call.wait.clone(),
            };
            // The caller hears of its deadline (a 504 naming the job); the work goes on.
            let caller_deadline = overall.min(started + config.deadline);
            let work = self.upstream.execute(plan, &ctx);
            tokio::pin!(work);
            let result = tokio::select! {
                r = &mut work => r,
                () = tokio::time::sleep_until(caller_deadline), if late.is_some() => {
                    if let Some(tell) = late.take() {
                        let _ = tell.send(());
                    }
                    work.await
                }
            };
            let took = started.elapsed();
            match result {
                Ok(output) => {
                    ticket.finish(req.quality, Verdict::Success, took);
                    self.publish_circuit(model);
                    let cost = billed(candidate, &output);
                    attempt.settle(cost);
                    self.publish_budget_use(&call.caller);
                    let m = self.metrics;
                    m.task_done(model, req.quality, CallOutcome::Ok, took);
                    m.images_produced(model, output.images.len());
                    m.cost(call.caller.team_id(), &call.caller.id, model, cost);
                    by.cost = cost;
                    by.task_ids.clone_from(&output.task_ids);
                    return Ok(Served { model, output, by });
                }
                Err(e) => {
                    ticket.finish(req.quality, Verdict::of(e.kind), took);
                    self.publish_circuit(model);
                    let outcome = CallOutcome::Failed(e.kind);
                    self.metrics.task_done(model, req.quality, outcome, took);
                    by.task_ids = e.task_id.iter().cloned().collect();
                    let billing = e.kind.billing();
                    if billing == Billing::NotBilled {
                        attempt.release();
                    } else {
                        // The upstream may have made (and billed) it: booked, never failed over.
                        let booked = candidate.cost();
                        attempt.settle(booked);
                        by.cost = booked;
                        self.metrics
                            .cost(call.caller.team_id(), &call.caller.id, model, booked);
                    }
                    if !e.kind.fails_over() {
                        return Err(Failed {
                            error: ApiError::from_upstream(&e),
                            by,
                            billing,
                        });
                    }
                    tracing::warn!(
                        request_id = call.request_id,
                        model = %model,
                        kind = e.kind.as_str(),
                        attempt = by.attempts,
                        "upstream attempt failed; trying the next model"
                    );
                    last_failure = Some((model, e));
                }
            }
        }
        let error = match (last_failure, refused) {
            (Some((_, e)), _) => ApiError::from_upstream(&e),
            (None, Some(refusal)) => {
                by = ServedBy::default();
                refusal
            }
            (None, None) => ApiError::no_healthy_model(format!(
                "Every model of `{}` is out of rotation right now.",
                route.public
            )),
        };
        Err(Failed {
            error,
            by,
            billing: Billing::NotBilled,
        })
    }

    /// Step 4: reserves the candidate's price (429 `insufficient_quota` if it does not fit),
    /// then waits for room under the model's upstream caps.
    async fn reserve(
        &self,
        call: &Call,
        job_id: &str,
        candidate: &Candidate,
    ) -> Result<Attempt, ApiError> {
        let caller = &call.caller;
        let reservation = self
            .budgets
            .reserve(caller, candidate.cost(), job_id)
            .await
            .inspect_err(|e| self.count_refusal(caller, e))?;
        let permit = self.limits.upstream_permit(candidate.model).await?;
        Ok(Attempt::new(reservation, permit))
    }

    /// Step 8: writes the ledger row and hands back what to render.
    #[allow(
        clippy::too_many_arguments,
        reason = "one request's parts, passed by reference rather than bundled for one call"
    )]
    async fn close(
        &self,
        call: &Call,
        route: &Route,
        req: &ImageRequest,
        started: Instant,
        admission: Option<&Admission>,
        result: Result<results::ImagesBody, ApiError>,
        by: ServedBy,
    ) -> Finished {
        let row = ledger_row(call, route, req, started, &result, &by);
        self.store.record(row).await;
        Finished {
            result,
            served: by,
            rate_headers: admission.map(Admission::headers).unwrap_or_default(),
            job_id: None,
        }
    }

    /// Step 8 for a job: its terminal state and its one ledger row, in one transaction, before
    /// the answer goes out.
    #[allow(
        clippy::too_many_arguments,
        reason = "one request's parts, passed by reference rather than bundled for one call"
    )]
    async fn close_job(
        &self,
        call: &Call,
        route: &Route,
        req: &ImageRequest,
        started: Instant,
        admission: &Admission,
        result: Result<results::ImagesBody, ApiError>,
        by: ServedBy,
        job: &JobCtx,
        state: JobState,
        images: Option<crate::model::JsonText>,
    ) -> Finished {
        let mut row = ledger_row(call, route, req, started, &result, &by);
        row.job_id = Some(job.id.to_string());
        let finish = Finish {
            state,
            status: row.status,
            cost_micros: by.cost.micros(),
            images,
            error: result.as_ref().err().map(ApiError::body),
            row,
        };
        let mut ops: Vec<Op> = job.take_row().map(Op::InsertJob).into_iter().collect();
        ops.push(Op::Finish {
            job: job.id.to_string(),
            epoch: job.epoch(),
            finish: Box::new(finish),
        });
        // A job whose row was never written sent nothing upstream: with a shared database that
        // may be away, its end is queued rather than waited for, so the caller is answered.
        let unwritten = matches!(ops.first(), Some(Op::InsertJob(_)));
        if unwritten && self.store.is_shared() {
            self.store.write_later(ops);
        } else if let Err(e) = self.store.write_durable(ops).await {
            tracing::error!(job_id = %job.id, error = %e, "could not write a job's end");
        }
        crate::failpoint::hit("after_settle");
        self.metrics.job(match state {
            JobState::Completed => JobEvent::Completed,
            JobState::Unknown => JobEvent::Unknown,
            _ => JobEvent::Failed,
        });
        Finished {
            result,
            served: by,
            rate_headers: admission.headers(),
            job_id: Some(job.id.clone()),
        }
    }

    /// Client reference URLs (images and mask) are handed to the platform: they must pass the URL
    /// policy (no loopback, private or link-local address, `https` unless allowed).
    fn check_reference_urls(&self, req: &ImageRequest) -> Result<(), ApiError> {
        let refs = req.images.iter().map(|r| ("image", r));
        for (param, r) in refs.chain(req.mask.iter().map(|m| ("mask", m))) {
            let ImageRef::Url(u) = r else { continue };
            let refused = match reqwest::Url::parse(u) {
                Ok(url) => self.urls.check(&url).err(),
                Err(_) => Some("not a URL".to_owned()),
            };
            if let Some(why) = refused {
                return Err(ApiError::invalid(
                    param,
                    format!("The reference URL `{u}` is refused: {why}."),
                ));
            }
        }
        Ok(())
    }

    /// Counts a 429 of the gateway's own limits by reason (`imagegate_refusals_total`).
    fn count_refusal(&self, caller: &ClientKey, e: &ApiError) {
        let reason = match e.code {
            ErrorCode::InsufficientQuota => RefusalReason::Budget,
            ErrorCode::RateLimitExceeded(RateLimit::Requests) => RefusalReason::RequestRate,
            ErrorCode::RateLimitExceeded(RateLimit::Images) => RefusalReason::ImageRate,
            ErrorCode::RateLimitExceeded(RateLimit::Concurrency) => RefusalReason::Concurrency,
            _ => return,
        };
        self.metrics.refused(caller.team_id(), &caller.id, reason);
    }

    /// How much of the caller's team budget is spent (`imagegate_budget_used_ratio`). Replicas
    /// keep the money in the database: there the gauge is read on each scrape instead
    /// (`/metrics`), not once more per request.
    fn publish_budget_use(&self, caller: &ClientKey) {
        let (Some(team_id), Some(team)) = (caller.team_id(), caller.team.as_ref()) else {
            return;
        };
        if self.budgets.is_shared() {
            return;
        }
        let payer = Payer::Team(team_id.to_owned());
        if let Some(ratio) = self.budgets.used_ratio(&payer, team.budget) {
            self.metrics.budget_used(team_id, ratio);
        }
    }

    fn publish_circuit(&self, model: ModelId) {
        self.metrics
            .circuit_state(model, self.health.state(model).into());
    }
}

/// The ledger row of a finished request. A failure served nothing, unless the upstream made (and
/// billed) images.
fn ledger_row(
    call: &Call,
    route: &Route,
    req: &ImageRequest,
    started: Instant,
    result: &Result<results::ImagesBody, ApiError>,
    by: &ServedBy,
) -> Row {
    let (status, error_code) = match result {
        Ok(_) => (200, None),
        Err(e) => (e.status().as_u16(), Some(e.code)),
    };
    let finished = ledger::Finished {
        status,
        error_code,
        served: by.model.filter(|_| status < 400 || by.cost > Usd::ZERO),
        cost: by.cost,
        task_ids: by.task_ids.clone(),
    };
    let (key, team) = (&call.caller.id, call.caller.team_id());
    let latency = started.elapsed().as_millis();
    Row::new(
        key,
        team,
        &route.public,
        req,
        &call.request_id,
        latency,
        finished,
    )
}

/// Step 3: the first candidate whose adapter accepts `req`, with its plan and the candidates
/// from it on. A `url` answer must be a format the model makes (a pinned model's own check; a
/// group's candidates were filtered by the catalog already).
fn plan_first(
    req: &ImageRequest,
    route: &Route,
    candidates: Vec<Candidate>,
) -> Result<(Plan, Vec<Candidate>), ApiError> {
    let mut first_refusal = None;
    for (i, c) in candidates.iter().enumerate() {
        if let Err(why) = catalog::capabilities(c.model).check_output_format(req) {
            first_refusal.get_or_insert(ApiError::unsupported(
                "output_format",
                format!(
                    "{} {why}; ask for `b64_json` and the gateway converts the image.",
                    c.model
                ),
            ));
            continue;
        }
        match upstream::plan(c.model, req) {
            Ok(plan) => return Ok((plan, candidates[i..].to_vec())),
            Err(e) => {
                first_refusal.get_or_insert(e);
            }
        }
    }
    Err(first_refusal.unwrap_or_else(|| {
        ApiError::no_healthy_model(format!(
            "No model of `{}` can take this request.",
            route.public
        ))
    }))
}

/// What the upstream charged: every image it made (a SparkPix edit may make one per reference),
/// and one image for each fanned-out call whose outcome is unknown (it may have been billed); a
/// call that provably failed made none and is not billed.
fn billed(candidate: &Candidate, out: &Output) -> Usd {
    candidate
        .price
        .of(out.images.len() + out.unsettled as usize)
}
