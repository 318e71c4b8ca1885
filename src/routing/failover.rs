//! Trying candidates in order until one serves the request.
//!
//! Each attempt takes an [`Admission`](super::health::Admission) from the health table (an open
//! circuit is skipped; after its cooldown one request is the probe), reserves the attempt's exact
//! cost against the caller's budgets ([`gate::reserve`]), runs the model's plan, reports the
//! outcome, and settles (served) or releases (failed) the reservation. A failure moves on to the next candidate only when it cost nothing
//! ([`FailureKind::fails_over`](crate::upstream::FailureKind::fails_over)), at most `routing.max_attempts` attempts, all within one
//! `routing.request_deadline`.

use tokio::time::Instant;

use super::health::Outcome;
use super::Candidate;
use crate::error::ApiError;
use crate::gate;
use crate::keys::ClientKey;
use crate::metrics::{self, UpstreamWait};
use crate::model::ModelId;
use crate::pricing::{self, Usd};
use crate::request::ImageRequest;
use crate::state::AppState;
use crate::upstream::{self, CallCtx, Output, Plan, UpstreamError};

/// A request served by `model`, for `cost` (already settled against the budgets), after
/// `attempts` tries.
#[derive(Debug)]
pub struct Served {
    pub output: Output,
    pub model: ModelId,
    pub cost: Usd,
    pub attempts: u32,
}

/// Why the request was not answered. `model` is the last one tried, if any was; `cost` is what
/// the upstream billed anyway (images made whose result files could not be fetched).
#[derive(Debug)]
pub struct Failed {
    pub error: ApiError,
    pub model: Option<ModelId>,
    pub cost: Usd,
    pub attempts: u32,
    pub task_ids: Vec<String>,
}

impl From<ApiError> for Failed {
    fn from(error: ApiError) -> Self {
        Self {
            error,
            model: None,
            cost: Usd::ZERO,
            attempts: 0,
            task_ids: Vec::new(),
        }
    }
}

/// The first candidate whose adapter accepts `req`, with its plan and the candidates from it on:
/// bad input is refused here, before any upstream call (and before a stream starts).
pub fn prepare<'a>(
    req: &mut ImageRequest,
    candidates: &'a [Candidate],
) -> Result<(Plan, &'a [Candidate]), ApiError> {
    let mut first_refusal = None;
    for (i, c) in candidates.iter().enumerate() {
        req.model = c.model;
        if let Err(why) = crate::catalog::capabilities(c.model).check_output_format(req) {
            first_refusal.get_or_insert(ApiError::unsupported(
                "output_format",
                format!(
                    "{} {why}; ask for `b64_json` and the gateway converts the image.",
                    c.model
                ),
            ));
            continue;
        }
        match upstream::plan(req) {
            Ok(plan) => return Ok((plan, &candidates[i..])),
            Err(e) => {
                first_refusal.get_or_insert(e);
            }
        }
    }
    Err(first_refusal.unwrap_or_else(|| {
        ApiError::no_healthy_model(format!(
            "No model of `{}` can take this request.",
            req.route.public
        ))
    }))
}

/// Who a request runs for: the key (budgets, cost), the request id (sent upstream) and the
/// request's upstream clock (the gateway's overhead is the time outside it).
pub struct Caller<'a> {
    pub key: &'a ClientKey,
    pub request_id: &'a str,
    pub wait: &'a UpstreamWait,
}

/// Runs `req` on `candidates` in order (see the module docs), starting with `first`, the plan
/// [`prepare`] made for `candidates[0]`. `req.model` is set to the model of each attempt, so the
/// adapters see the model they serve.
pub async fn run(
    state: &AppState,
    who: &Caller<'_>,
    req: &mut ImageRequest,
    candidates: &[Candidate],
    first: Plan,
) -> Result<Served, Failed> {
    let (caller, request_id) = (who.key, who.request_id);
    let routing = state.routing.config();
    let overall = Instant::now() + routing.request_deadline;
    let mut attempts = 0u32;
    let mut tried = None;
    let mut last_failure: Option<(ModelId, UpstreamError)> = None;
    let mut refused: Option<ApiError> = None;
    let mut first = Some(first);
    for candidate in candidates {
        if attempts >= u32::from(routing.max_attempts) || Instant::now() >= overall {
            break;
        }
        let model = candidate.model;
        req.model = model;
        let plan = match first.take() {
            Some(plan) => plan,
            // A later model's adapter may refuse what the first accepted (a vendor extra it
            // does not take): it is skipped, not an attempt.
            None => match upstream::plan(req) {
                Ok(p) => p,
                Err(_) => continue,
            },
        };
        let Some(admission) = state.routing.health.admit(model) else {
            continue;
        };
        // Budget (429 insufficient_quota) or the model's upstream cap: a later candidate may
        // still fit under its own cap; none fits a budget a cheaper one did not.
        let reservation = match gate::reserve(state, caller, req, model, request_id).await {
            Ok(r) => r,
            Err(e) => {
                refused.get_or_insert(e);
                continue;
            }
        };
        if let Some((from, e)) = &last_failure {
            state.metrics.failover(*from, model, e.kind);
        }
        attempts += 1;
        tried = Some(model);
        let deadline = overall.min(Instant::now() + state.upstream.model_config(model).deadline);
        let ctx = CallCtx {
            deadline,
            request_id: request_id.to_owned(),
            model,
            wait: who.wait.clone(),
        };
        let started = Instant::now();
        let result = upstream::execute(&state.upstream, plan, &ctx).await;
        let took = started.elapsed();
        let m = &state.metrics;
        match result {
            Ok(output) => {
                admission.finish(req.quality, Outcome::Success, took);
                m.circuit_state(model, state.routing.health.state(model).into());
                let cost = billed(state, model, req, &output);
                reservation.settle(cost);
                gate::publish_budget_use(state, caller);
                m.task_done(model, req.quality, metrics::Outcome::Ok, took);
                m.images_produced(model, output.images.len());
                m.cost(caller.team_id(), &caller.id, model, cost);
                return Ok(Served {
                    output,
                    model,
                    cost,
                    attempts,
                });
            }
            Err(e) => {
                admission.finish(req.quality, Outcome::of(e.kind), took);
                m.circuit_state(model, state.routing.health.state(model).into());
                m.task_done(model, req.quality, metrics::Outcome::Failed(e.kind), took);
                reservation.release();
                if !e.kind.fails_over() {
                    return Err(failed(ApiError::from_upstream(&e), tried, attempts, &e));
                }
                tracing::warn!(
                    request_id,
                    model = %model,
                    kind = e.kind.as_str(),
                    attempt = attempts,
                    "upstream attempt failed; trying the next model"
                );
                last_failure = Some((model, e));
            }
        }
    }
    Err(match (last_failure, refused) {
        (Some((_, e)), _) => failed(ApiError::from_upstream(&e), tried, attempts, &e),
        (None, Some(refusal)) => refusal.into(),
        (None, None) => ApiError::no_healthy_model(format!(
            "Every model of `{}` is out of rotation right now.",
            req.route.public
        ))
        .into(),
    })
}

fn failed(error: ApiError, model: Option<ModelId>, attempts: u32, e: &UpstreamError) -> Failed {
    Failed {
        error,
        model,
        cost: Usd::ZERO,
        attempts,
        task_ids: e.task_id.iter().cloned().collect(),
    }
}

/// What the upstream charged: every image of a native-`n` call, or one image per successful
/// call when `n` was fanned out (calls that failed are not billed).
fn billed(state: &AppState, model: ModelId, req: &ImageRequest, out: &Output) -> Usd {
    let unit = pricing::unit_cost(&state.config.models, model, req);
    let images = if crate::catalog::capabilities(model).native_n {
        out.images.len().min(usize::from(req.n))
    } else {
        out.calls_ok as usize
    };
    unit * images as u64
}
