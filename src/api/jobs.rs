//! The async job API: `GET /v1/images/jobs/{id}` and `GET /v1/images/jobs` for the key that
//! created the jobs (any other key gets 404), and the operator's `GET /admin/jobs[/{id}]` and
//! `POST /admin/jobs/{id}/resolve` (settle a job whose upstream outcome is unknown).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::error::{ApiError, ErrorCode, PathId};
use crate::jobs;
use crate::keys::ClientKey;
use crate::ledger::{Finished, Row};
use crate::model::Usd;
use crate::state::AppState;
use crate::store::{JobRecord, JobState, Op};

/// `GET /v1/images/jobs/{id}`: the job object; a finished job carries its `result` (the body the
/// synchronous call returns, its images fetched again) or its `error`.
pub async fn get(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
    request: Request,
) -> Response {
    let Some(caller) = request.extensions().get::<ClientKey>().cloned() else {
        return ApiError::unauthorized("No API key.").into_response();
    };
    match load(&state, &id).await {
        Ok(Some(job)) if *job.key_id == *caller.id => object(&state, &job).await,
        Ok(_) => not_found(&id).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/images/jobs?limit=&after=`: the caller's jobs, newest first (without results).
pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    let Some(caller) = request.extensions().get::<ClientKey>().cloned() else {
        return ApiError::unauthorized("No API key.").into_response();
    };
    listing(&state, Some(caller.id.to_string()), &q).await
}

/// `GET /admin/jobs?limit=&after=`: every key's jobs.
pub async fn admin_list(
    State(state): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    listing(&state, None, &q).await
}

/// `GET /admin/jobs/{id}`: the job object with what the operator needs: key, team, upstream
/// model, cost, the upstream calls and their task ids.
pub async fn admin_get(State(state): State<Arc<AppState>>, PathId(id): PathId) -> Response {
    match load(&state, &id).await {
        Ok(Some(job)) => {
            let mut v = admin_view(&job);
            let deliveries = state
                .store()
                .webhooks_of(job.id.clone())
                .await
                .unwrap_or_default();
            v["webhooks"] = json!(deliveries);
            Json(v).into_response()
        }
        Ok(None) => not_found(&id).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /admin/jobs/{id}/resolve` with `{"outcome": "billed" | "not_billed"}`: settles a job in
/// state `unknown`. Not billed writes the compensating ledger row and gives the money back.
pub async fn resolve(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
    body: Bytes,
) -> Response {
    // Any body that is not `{"outcome": …}` (not JSON, another type) gets the same 400.
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let billed = match body.get("outcome").and_then(Value::as_str) {
        Some("billed") => true,
        Some("not_billed") => false,
        _ => {
            return ApiError::invalid("outcome", "Set `outcome` to `billed` or `not_billed`.")
                .into_response()
        }
    };
    let job = match load(&state, &id).await {
        Ok(Some(job)) => job,
        Ok(None) => return not_found(&id).into_response(),
        Err(e) => return e.into_response(),
    };
    if job.state != JobState::Unknown {
        return ApiError::new(
            ErrorCode::Conflict,
            format!(
                "Job {id} is {}, not unknown: there is nothing to resolve.",
                job.state.as_str()
            ),
        )
        .into_response();
    }
    let booked = Usd(job.cost_micros.unwrap_or(0));
    let compensation = (!billed).then(|| compensating_row(&job, booked));
    let written = state
        .store()
        .write(vec![Op::Resolve {
            job: id.clone(),
            compensation: compensation.map(Box::new),
        }])
        .await;
    if let Err(e) = written {
        return ApiError::from(e).into_response();
    }
    if !billed {
        state
            .budgets
            .refund(&job.key_id, job.team.as_deref(), booked);
    }
    tracing::info!(job_id = %id, billed, cost_usd = %booked, "an unknown job was resolved by the operator");
    match load(&state, &id).await {
        Ok(Some(job)) => Json(admin_view(&job)).into_response(),
        Ok(None) => not_found(&id).into_response(),
        Err(e) => e.into_response(),
    }
}

fn compensating_row(job: &JobRecord, booked: Usd) -> Row {
    let spec = crate::dispatch::JobSpec::read(&job.spec);
    let finished = Finished {
        status: 200,
        error_code: None,
        served: job.model.as_deref().and_then(|m| m.parse().ok()),
        cost: booked,
        task_ids: Vec::new(),
    };
    let mut row = Row::new(
        &job.key_id,
        job.team.as_deref(),
        &job.public_model,
        &spec.request(),
        &format!("resolve:{}", job.id),
        0,
        finished,
    );
    row.n = 0;
    row.adjusts = Some(job.id.clone());
    row
}

async fn listing(state: &AppState, key: Option<String>, q: &HashMap<String, String>) -> Response {
    let limit = match q.get("limit").map(|l| l.parse::<u32>()) {
        None => 20,
        Some(Ok(l)) if (1..=100).contains(&l) => l,
        Some(_) => {
            return ApiError::invalid("limit", "limit must be a number from 1 to 100.")
                .into_response()
        }
    };
    let after = q.get("after").cloned();
    let found = state.store().jobs(key, limit + 1, after).await;
    match found {
        Ok(mut jobs) => {
            let has_more = jobs.len() > limit as usize;
            jobs.truncate(limit as usize);
            let data: Vec<Value> = jobs.iter().map(|j| jobs::job_object(j, None)).collect();
            Json(json!({
                "object": "list",
                "data": data,
                "first_id": jobs.first().map(|j| j.id.clone()),
                "last_id": jobs.last().map(|j| j.id.clone()),
                "has_more": has_more,
            }))
            .into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn object(state: &AppState, job: &JobRecord) -> Response {
    let answer = if job.state.is_terminal() {
        Some(state.dispatch().replay(job).await)
    } else {
        None
    };
    let mut res = Json(jobs::job_object(job, answer.as_ref())).into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&job.id) {
        res.headers_mut().insert(super::images::JOB_HEADER, v);
    }
    res
}

fn admin_view(job: &JobRecord) -> Value {
    let mut v = jobs::job_object(job, None);
    v["key_id"] = json!(job.key_id);
    v["team"] = json!(job.team);
    v["upstream_model"] = json!(job.model);
    v["attempts"] = json!(job.attempt);
    v["reserved_usd"] = json!(Usd(job.reserved_micros).to_string());
    v["request_id"] = json!(job.request_id);
    v["calls"] = json!(job.calls);
    if let Some(e) = &job.error {
        v["error"] = e.get("error").cloned().unwrap_or_else(|| e.clone());
    }
    v
}

async fn load(state: &AppState, id: &str) -> Result<Option<JobRecord>, ApiError> {
    Ok(state.store().job(id.to_owned()).await?)
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("No job `{id}`.")).with_param("id")
}
