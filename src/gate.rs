//! The team-gateway checks around one image request, in the order they run:
//!
//! 1. [`admit`], once per request, before any upstream call and any spend: the key may use the
//!    model, and the key's and team's rate and concurrency limits ([`limits`](crate::limits)).
//! 2. [`reserve`], once per upstream attempt ([`failover`](crate::routing::failover) calls it per
//!    candidate with the model it tries): the attempt's exact cost is reserved against the key's
//!    and team's budgets ([`budget`](crate::budget)), and the upstream model's caps give it room
//!    (waiting briefly).
//! 3. The upstream call. A failed attempt is given back with [`Attempt::release`] (failed
//!    generations are not billed); a served one is booked with [`Attempt::settle`] at the cost
//!    of what the upstream made, before the answer is built (a result download that fails
//!    afterwards does not undo what the upstream billed).
//! 4. [`close`]: writes the request's ledger row and gives the `x-ratelimit-*` headers.
//!
//! An attempt dropped without 3 or 4 (the client went away while the upstream worked) is booked
//! in full, with a ledger row of status 499: the upstream may have billed it, and no budget may be
//! overspent because a client hung up.

use tokio::time::Instant;

use crate::budget::{Payer, Reservation};
use crate::error::ApiError;
use crate::keys::ClientKey;
use crate::ledger::{Outcome, Row};
use crate::limits::{Admission, ModelPermit};
use crate::metrics::RefusalReason;
use crate::model::ModelId;
use crate::pricing::{self, Usd};
use crate::request::ImageRequest;
use crate::state::AppState;
use crate::store::Store;

/// Step 1: refuses (403, 429 `rate_limit_exceeded`, 400 for an `n` over images/min) or admits.
/// The admission holds the concurrency slots until dropped.
pub fn admit(
    state: &AppState,
    caller: &ClientKey,
    req: &ImageRequest,
) -> Result<Admission, ApiError> {
    let name = &req.route.public;
    if !caller.record.allows(name) {
        return Err(ApiError::model_not_allowed(name));
    }
    state
        .limits
        .admit(caller, req.n)
        .inspect_err(|e| count_refusal(state, caller, e))
}

/// Counts a 429 of the gateway's own limits by reason (`imagegate_refusals_total`).
fn count_refusal(state: &AppState, caller: &ClientKey, e: &ApiError) {
    let header = |name: &str| e.headers.iter().any(|(h, _)| *h == name);
    let reason = match e.code {
        "insufficient_quota" => RefusalReason::Budget,
        "rate_limit_exceeded" if header("x-ratelimit-limit-requests") => RefusalReason::RequestRate,
        "rate_limit_exceeded" if header("x-ratelimit-limit-images") => RefusalReason::ImageRate,
        "rate_limit_exceeded" => RefusalReason::Concurrency,
        _ => return,
    };
    state.metrics.refused(caller.team_id(), &caller.id, reason);
}

/// Publishes how much of the caller's team budget is spent (`imagegate_budget_used_ratio`).
pub fn publish_budget_use(state: &AppState, caller: &ClientKey) {
    let (Some(team_id), Some(team)) = (caller.team_id(), caller.team.as_ref()) else {
        return;
    };
    let payer = Payer::Team(team_id.to_owned());
    if let Some(ratio) = state.budgets.used_ratio(&payer, team.budget) {
        state.metrics.budget_used(team_id, ratio);
    }
}

/// One upstream attempt: its budget reservation and its upstream slot.
pub struct Attempt {
    model: ModelId,
    reservation: Option<Reservation>,
    _upstream: ModelPermit,
    /// The row written if the attempt is dropped mid-flight.
    orphan: Option<(Store, Row, Instant)>,
}

/// Step 2: reserves the cost of `req` on `model` (429 `insufficient_quota` if it does not fit),
/// then waits for room under the model's upstream caps.
pub async fn reserve(
    state: &AppState,
    caller: &ClientKey,
    req: &ImageRequest,
    model: ModelId,
    request_id: &str,
) -> Result<Attempt, ApiError> {
    let cost = pricing::cost(&state.config.models, model, req);
    let reservation = state
        .budgets
        .reserve(caller, cost)
        .inspect_err(|e| count_refusal(state, caller, e))?;
    let upstream = state.limits.upstream_permit(model).await?;
    let cancelled = Outcome {
        status: 499,
        error_code: Some("client_closed_request"),
        served: Some(model),
        cost,
        task_ids: Vec::new(),
    };
    let row = Row::new(&caller.id, caller.team_id(), req, request_id, 0, cancelled);
    Ok(Attempt {
        model,
        reservation: Some(reservation),
        _upstream: upstream,
        orphan: Some((state.store().clone(), row, Instant::now())),
    })
}

impl Attempt {
    pub fn model(&self) -> ModelId {
        self.model
    }

    /// The attempt failed: nothing is billed.
    pub fn release(mut self) {
        self.orphan = None;
        drop(self.reservation.take());
    }

    /// The attempt served the request for `cost` (at most what was reserved): books it.
    pub fn settle(mut self, cost: Usd) {
        self.orphan = None;
        if let Some(r) = self.reservation.take() {
            let cost = cost.min(r.amount());
            r.settle(cost);
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let Some(r) = self.reservation.take() else {
            return;
        };
        let amount = r.amount();
        r.settle(amount);
        if let Some((store, mut row, started)) = self.orphan.take() {
            row.latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
            store.record(row);
        }
    }
}

/// Step 4: writes the request's ledger row (`outcome`: status, served model, cost settled by the
/// attempt, task ids) and returns the `x-ratelimit-*` headers of its admission.
pub fn close(
    state: &AppState,
    caller: &ClientKey,
    req: &ImageRequest,
    request_id: &str,
    started: Instant,
    admission: Option<&Admission>,
    outcome: Outcome,
) -> Vec<(&'static str, String)> {
    let headers = admission.map(Admission::headers).unwrap_or_default();
    let row = Row::new(
        &caller.id,
        caller.team_id(),
        req,
        request_id,
        started.elapsed().as_millis(),
        outcome,
    );
    state.store().record(row);
    headers
}
