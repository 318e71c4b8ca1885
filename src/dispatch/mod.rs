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
pub mod results;
#[cfg(test)]
mod tests;

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::budget::{Budgets, Payer};
use crate::catalog;
use crate::config::ModelsConfig;
use crate::error::{ApiError, ErrorCode, RateLimit};
use crate::keys::ClientKey;
use crate::ledger::{self, Row};
use crate::limits::{Admission, RateLimits};
use crate::metrics::{CallOutcome, Metrics, RefusalReason, UpstreamWait};
use crate::model::{ModelId, Route, Usd};
use crate::request::{ImageRef, ImageRequest, Operation};
use crate::routing::health::{Health, HealthView, Verdict};
use crate::routing::{Candidate, Constraints, Routing};
use crate::store::Store;
use crate::upstream::failure::UpstreamError;
use crate::upstream::urls::UrlPolicy;
use crate::upstream::{self, CallCtx, Output, Plan, Upstreams};
pub use attempt::Attempt;

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
/// `x-ratelimit-*` headers. Its ledger row is already written.
#[derive(Debug)]
pub struct Finished {
    pub result: Result<Value, ApiError>,
    pub served: ServedBy,
    pub rate_headers: Vec<(&'static str, String)>,
}

/// An attempt that served the request.
struct Served {
    model: ModelId,
    output: Output,
    by: ServedBy,
}

/// Why no attempt served the request, and what was tried.
struct Failed {
    error: ApiError,
    by: ServedBy,
}

impl Dispatch<'_> {
    /// Steps 1–3: choose, plan, admit. A refusal is closed here (ledger row) and returned as a
    /// [`Finished`] to render.
    pub fn prepare(
        &self,
        call: Call,
        route: Route,
        req: ImageRequest,
    ) -> Result<Prepared, Box<Finished>> {
        let started = Instant::now();
        match self.check(&call, &route, &req) {
            Ok((candidates, first, admission)) => Ok(Prepared {
                call,
                route,
                req,
                candidates,
                first,
                admission,
                started,
            }),
            Err(error) => Err(Box::new(self.close(
                &call,
                &route,
                &req,
                started,
                None,
                Err(error),
                ServedBy::default(),
            ))),
        }
    }

    fn check(
        &self,
        call: &Call,
        route: &Route,
        req: &ImageRequest,
    ) -> Result<(Vec<Candidate>, Plan, Admission), ApiError> {
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
        let (first, candidates) = plan_first(req, route, candidates)?;
        let admission = self.admit(&call.caller, req)?;
        Ok((candidates, first, admission))
    }

    /// Step 1: the key's and its team's rate and concurrency limits (that the key may use the
    /// name at all is checked first of everything, in `check`).
    fn admit(&self, caller: &ClientKey, req: &ImageRequest) -> Result<Admission, ApiError> {
        self.limits
            .admit(caller, req.n)
            .inspect_err(|e| self.count_refusal(caller, e))
    }

    /// Steps 4–8 for a prepared request.
    pub async fn run(&self, p: Prepared) -> Finished {
        let Prepared {
            call,
            route,
            req,
            candidates,
            first,
            admission,
            started,
        } = p;
        let (result, by) = match self.execute(&call, &route, &req, &candidates, first).await {
            Ok(Served { model, output, by }) => {
                let fetch = results::Fetch {
                    upstream: self.upstream,
                    timeout: self.results_timeout,
                    request_id: &call.request_id,
                    model,
                    wait: &call.wait,
                };
                // A download that fails after the upstream billed keeps the cost booked.
                (results::body(fetch, &req, output.images).await, by)
            }
            Err(Failed { error, by }) => (Err(error), by),
        };
        self.close(&call, &route, &req, started, Some(&admission), result, by)
    }

    /// Steps 4–6: the candidates in order until one serves the request.
    async fn execute(
        &self,
        call: &Call,
        route: &Route,
        req: &ImageRequest,
        candidates: &[Candidate],
        first: Plan,
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
            let attempt = match self.reserve(call, route, req, candidate).await {
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
            let ctx = CallCtx {
                deadline: overall.min(Instant::now() + self.models.get(model).deadline),
                request_id: call.request_id.clone(),
                model,
                wait: call.wait.clone(),
            };
            let started = Instant::now();
            let result = self.upstream.execute(plan, &ctx).await;
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
                    attempt.release();
                    by.task_ids = e.task_id.iter().cloned().collect();
                    if !e.kind.fails_over() {
                        return Err(Failed {
                            error: ApiError::from_upstream(&e),
                            by,
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
        Err(Failed { error, by })
    }

    /// Step 4: reserves the candidate's price (429 `insufficient_quota` if it does not fit),
    /// then waits for room under the model's upstream caps.
    async fn reserve(
        &self,
        call: &Call,
        route: &Route,
        req: &ImageRequest,
        candidate: &Candidate,
    ) -> Result<Attempt, ApiError> {
        let caller = &call.caller;
        let reservation = self
            .budgets
            .reserve(caller, candidate.cost())
            .inspect_err(|e| self.count_refusal(caller, e))?;
        let permit = self.limits.upstream_permit(candidate.model).await?;
        let cancelled = ledger::Finished {
            status: 499,
            error_code: Some(ErrorCode::ClientClosedRequest),
            served: Some(candidate.model),
            cost: candidate.cost(),
            task_ids: Vec::new(),
        };
        let (key, team) = (&caller.id, caller.team_id());
        let row = Row::new(
            key,
            team,
            &route.public,
            req,
            &call.request_id,
            0,
            cancelled,
        );
        Ok(Attempt::new(reservation, permit, self.store.clone(), row))
    }

    /// Step 8: writes the ledger row and hands back what to render.
    #[allow(clippy::too_many_arguments)]
    fn close(
        &self,
        call: &Call,
        route: &Route,
        req: &ImageRequest,
        started: Instant,
        admission: Option<&Admission>,
        result: Result<Value, ApiError>,
        by: ServedBy,
    ) -> Finished {
        let (status, error_code) = match &result {
            Ok(_) => (200, None),
            Err(e) => (e.status().as_u16(), Some(e.code)),
        };
        let finished = ledger::Finished {
            status,
            error_code,
            // A failure served nothing, unless the upstream made (and billed) images.
            served: by.model.filter(|_| status < 400 || by.cost > Usd::ZERO),
            cost: by.cost,
            task_ids: by.task_ids.clone(),
        };
        let latency = started.elapsed().as_millis();
        let (key, team) = (&call.caller.id, call.caller.team_id());
        let row = Row::new(
            key,
            team,
            &route.public,
            req,
            &call.request_id,
            latency,
            finished,
        );
        self.store.record(row);
        Finished {
            result,
            served: by,
            rate_headers: admission.map(Admission::headers).unwrap_or_default(),
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

    /// How much of the caller's team budget is spent (`imagegate_budget_used_ratio`).
    fn publish_budget_use(&self, caller: &ClientKey) {
        let (Some(team_id), Some(team)) = (caller.team_id(), caller.team.as_ref()) else {
            return;
        };
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

/// What the upstream charged: every image of a native-`n` call, or one image per successful
/// call when `n` was fanned out (calls that failed are not billed).
fn billed(candidate: &Candidate, out: &Output) -> Usd {
    let images = if catalog::capabilities(candidate.model).native_n {
        out.images.len()
    } else {
        out.calls_ok as usize
    };
    candidate.price.of(images)
}
