//! The team-gateway checks around one image request, in the order they run:
//!
//! 1. [`admit`], before any upstream call and any spend: the key may use the model; the key's
//!    and team's rate and concurrency limits ([`limits`](crate::limits)); the request's exact
//!    cost is reserved against the key's and team's budgets ([`budget`](crate::budget)); the
//!    upstream model has room under its caps (waits briefly).
//! 2. The upstream call (the handler's business).
//! 3. [`close`]: settles the reservation with the cost of what was served (or releases it on
//!    failure: failed generations are not billed) and writes the request's ledger row.
//!
//! A router that tries several upstream models calls [`Budgets::reserve`] and
//! [`RateLimits::upstream_permit`] per attempt with the model tried, and settles the attempt that
//! served the request.
//!
//! [`Budgets::reserve`]: crate::budget::Budgets::reserve
//! [`RateLimits::upstream_permit`]: crate::limits::RateLimits::upstream_permit

use serde_json::Value;
use tokio::time::Instant;

use crate::app::AppState;
use crate::auth::ClientKey;
use crate::budget::Reservation;
use crate::error::ApiError;
use crate::ledger::{Outcome, Row};
use crate::limits::{Admission, ModelPermit};
use crate::pricing::{self, Usd};
use crate::request::ImageRequest;

/// What the upstream call gave: the answer body or the error, with the upstream task ids.
pub type RunResult = Result<(Value, Vec<String>), (ApiError, Vec<String>)>;

/// A request let through: its concurrency slots, its budget reservation and its upstream slot.
/// Dropping it releases all three.
pub struct Admitted {
    pub admission: Admission,
    pub reservation: Reservation,
    _upstream: ModelPermit,
}

/// Step 1: refuses (403, 429 `rate_limit_exceeded`, 429 `insufficient_quota`) or admits.
pub async fn admit(
    state: &AppState,
    caller: &ClientKey,
    req: &ImageRequest,
) -> Result<Admitted, ApiError> {
    if !caller.record.allows(req.model.as_str()) {
        return Err(ApiError::model_not_allowed(req.model.as_str()));
    }
    let admission = state.limits.admit(caller, req.n)?;
    let cost = pricing::cost(&state.config.models, req.model, req);
    let reservation = state.budgets.reserve(caller, cost)?;
    let upstream = state.limits.upstream_permit(req.model).await?;
    Ok(Admitted {
        admission,
        reservation,
        _upstream: upstream,
    })
}

/// Step 3: settles or releases, writes the ledger row, and returns the `x-ratelimit-*` headers
/// for the answer.
pub async fn close(
    state: &AppState,
    caller: &ClientKey,
    req: &ImageRequest,
    request_id: &str,
    started: Instant,
    admitted: Option<Admitted>,
    result: &RunResult,
) -> Vec<(&'static str, String)> {
    let headers = admitted
        .as_ref()
        .map(|a| a.admission.headers())
        .unwrap_or_default();
    let outcome = match result {
        Ok((body, task_ids)) => {
            let made = body["data"].as_array().map_or(0, Vec::len);
            let cost = match admitted {
                Some(a) => {
                    let cost = served_cost(a.reservation.amount(), req.n, made);
                    a.reservation.settle(cost);
                    cost
                }
                None => Usd::ZERO,
            };
            Outcome {
                status: 200,
                error_code: None,
                served: Some(req.model),
                cost,
                task_ids: task_ids.clone(),
            }
        }
        Err((e, task_ids)) => Outcome {
            status: e.status.as_u16(),
            error_code: Some(e.code),
            served: None,
            cost: Usd::ZERO,
            task_ids: task_ids.clone(),
        },
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
