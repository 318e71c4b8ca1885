//! `GET /v1/me`: the calling key as it sees itself — its limits, models, budgets and spend, its
//! team's, and its usage of the last 30 days by day and model. Never a secret: no key, no
//! digest, no webhook secret.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::budget::Payer;
use crate::error::ApiError;
use crate::keys::ClientKey;
use crate::ledger::{self, GroupBy, UsageQuery};
use crate::state::AppState;

/// How far back `usage` goes.
const USAGE_DAYS: u64 = 30;

pub async fn me(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let Some(caller) = request.extensions().get::<ClientKey>().cloned() else {
        return ApiError::unauthorized("No API key.").into_response();
    };
    let spec = &caller.record.spec;
    let mut payers = vec![Payer::Key(spec.id.clone())];
    if let Some(team) = caller.team_id() {
        payers.push(Payer::Team(team.to_owned()));
    }
    state.budgets.refresh(&payers).await;
    let mut me = json!({
        "object": "key",
        "id": spec.id,
        "name": spec.name,
        "models": spec.models,
        "expires_at": spec.expires_at,
        "webhook_url": spec.webhook_url,
        "limits": {
            "requests_per_minute": spec.requests_per_minute,
            "images_per_minute": spec.images_per_minute,
            "max_concurrent": spec.max_concurrent,
        },
        "budget": {
            "monthly_usd": spec.monthly_budget_usd,
            "total_usd": spec.total_budget_usd,
        },
        "spend": state.budgets.view(&Payer::Key(spec.id.clone())),
        "team": Value::Null,
    });
    if let Some(team) = &caller.team {
        let t = &team.spec;
        me["team"] = json!({
            "id": t.id,
            "name": t.name,
            "limits": {
                "requests_per_minute": t.requests_per_minute,
                "images_per_minute": t.images_per_minute,
                "max_concurrent": t.max_concurrent,
            },
            "budget": {
                "monthly_usd": t.monthly_budget_usd,
                "total_usd": t.total_budget_usd,
            },
            "spend": state.budgets.view(&Payer::Team(t.id.clone())),
        });
    }
    let since = SystemTime::now()
        .checked_sub(Duration::from_secs(USAGE_DAYS * 86_400))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let group_by = vec![GroupBy::Day, GroupBy::Model];
    let query = UsageQuery {
        group_by: group_by.clone(),
        from: Some(ledger::utc_day(since)),
        to: None,
        key: Some(spec.id.clone()),
        team: None,
        model: None,
    };
    match state.store().usage(query).await {
        Ok(rows) => me["usage"] = ledger::usage_json(&group_by, &rows),
        Err(e) => return ApiError::from(e).into_response(),
    }
    Json(me).into_response()
}
