//! The team-gateway checks around one image request, in the order they run:
//!
//! 1. [`admit`], once per request, before any upstream call and any spend: the key may use the
//!    model, and the key's and team's rate and concurrency limits ([`limits`](crate::limits)).
//! 2. [`reserve`], once per upstream attempt (a router that tries several upstream models calls
//!    it per candidate with the model it tries): the attempt's exact cost is reserved against the
//!    key's and team's budgets ([`budget`](crate::budget)), and the upstream model's caps give it
//!    room (waiting briefly).
//! 3. The upstream call (the handler's business). A failed attempt that another candidate will
//!    retry is given back with [`Attempt::release`].
//! 4. [`close`]: settles the last attempt with the cost of the images made (or releases it on
//!    failure: failed generations are not billed) and writes the request's ledger row.
//!
//! An attempt dropped without 3 or 4 (the client went away while the upstream worked) is booked
//! in full, with a ledger row of status 499: the upstream may have billed it, and no budget may be
//! overspent because a client hung up.

use serde_json::Value;
use tokio::time::Instant;

use crate::app::AppState;
use crate::auth::ClientKey;
use crate::budget::Reservation;
use crate::error::ApiError;
use crate::ledger::{Outcome, Row};
use crate::limits::{Admission, ModelPermit};
use crate::model::ModelId;
use crate::pricing::{self, Usd};
use crate::request::ImageRequest;
use crate::store::Store;

/// What the upstream call gave: the answer body or the error, with the upstream task ids.
pub type RunResult = Result<(Value, Vec<String>), (ApiError, Vec<String>)>;

/// Step 1: refuses (403, 429 `rate_limit_exceeded`, 400 for an `n` over images/min) or admits.
/// The admission holds the concurrency slots until dropped.
pub fn admit(
    state: &AppState,
    caller: &ClientKey,
    req: &ImageRequest,
) -> Result<Admission, ApiError> {
    if !caller.record.allows(req.model.as_str()) {
        return Err(ApiError::model_not_allowed(req.model.as_str()));
    }
    state.limits.admit(caller, req.n)
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
    let reservation = state.budgets.reserve(caller, cost)?;
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

    /// The attempt served the request with `made` of `n` images: books their cost.
    pub fn settle(mut self, n: u8, made: usize) -> Usd {
        self.orphan = None;
        let Some(r) = self.reservation.take() else {
            return Usd::ZERO;
        };
        let cost = served_cost(r.amount(), n, made);
        r.settle(cost);
        cost
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
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = store.insert_row(row).await {
                        tracing::error!(error = %e, "could not write the ledger row");
                    }
                });
            }
        }
    }
}

/// What a request holds while it runs; dropping it releases the slots.
#[derive(Default)]
pub struct Held {
    pub admission: Option<Admission>,
    pub attempt: Option<Attempt>,
}

/// Step 4: settles or releases the attempt, writes the ledger row, and returns the
/// `x-ratelimit-*` headers for the answer.
pub async fn close(
    state: &AppState,
    caller: &ClientKey,
    req: &ImageRequest,
    request_id: &str,
    started: Instant,
    held: Held,
    result: &RunResult,
) -> Vec<(&'static str, String)> {
    let headers = held
        .admission
        .as_ref()
        .map(Admission::headers)
        .unwrap_or_default();
    let outcome = match result {
        Ok((body, task_ids)) => {
            let made = body["data"].as_array().map_or(0, Vec::len);
            let (served, cost) = match held.attempt {
                Some(a) => (a.model(), a.settle(req.n, made)),
                None => (req.model, Usd::ZERO),
            };
            Outcome {
                status: 200,
                error_code: None,
                served: Some(served),
                cost,
                task_ids: task_ids.clone(),
            }
        }
        Err((e, task_ids)) => {
            if let Some(a) = held.attempt {
                a.release();
            }
            Outcome {
                status: e.status.as_u16(),
                error_code: Some(e.code),
                served: None,
                cost: Usd::ZERO,
                task_ids: task_ids.clone(),
            }
        }
    };
    let row = Row::new(
        &caller.id,
        caller.team_id(),
        req,
        request_id,
        started.elapsed().as_millis(),
        outcome,
    );
    if let Err(e) = state.store().insert_row(row).await {
        tracing::error!(request_id, error = %e, "could not write the ledger row");
    }
    headers
}

/// The cost of the images actually made: the upstream bills per image, so a fanned-out request
/// that made 2 of 4 costs half its reservation.
fn served_cost(reserved: Usd, n: u8, made: usize) -> Usd {
    let n = u64::from(n.max(1));
    let made = (made as u64).min(n);
    Usd(reserved.micros() / n * made)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_fan_out_costs_what_was_made() {
        assert_eq!(served_cost(Usd(40_000), 4, 2), Usd(20_000));
        assert_eq!(served_cost(Usd(40_000), 4, 9), Usd(40_000));
        assert_eq!(served_cost(Usd(10_000), 1, 1), Usd(10_000));
    }
}
