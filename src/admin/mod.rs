//! The admin API (`/admin/*`, admin key only — enforced by [`auth`](crate::auth)):
//!
//! | route | what |
//! |---|---|
//! | `POST /admin/keys` | create a key; the answer holds its secret, shown this once |
//! | `GET /admin/keys`, `GET /admin/keys/{id}` | keys (static and dynamic) with their spend |
//! | `PATCH /admin/keys/{id}` | change settings (`null` clears one) |
//! | `POST /admin/keys/{id}/disable`, `…/enable` | switch a key off or on |
//! | `DELETE /admin/keys/{id}` | delete a key (its ledger rows stay) |
//! | `POST /admin/keys/{id}/webhook-secret` | a new `whsec_…` secret for the key's webhooks, shown once |
//! | `POST/GET /admin/teams`, `GET/PATCH/DELETE /admin/teams/{id}` | the same for teams (`DELETE` refuses while keys name the team, unless `?force=true`) |
//! | `GET /admin/usage?group_by=key,day&from=&to=&key=&team=&model=&format=csv` | usage report |
//! | `GET /admin/spend` | current spend against budgets, per key and team |
//! | `GET /admin/upstream-keys` | the upstream key pool (ids, weights, benched or not) |
//! | `GET /admin/jobs`, `GET /admin/jobs/{id}` | every key's jobs; one job with its upstream calls |
//! | `POST /admin/jobs/{id}/resolve` | settle an `unknown` job: `{"outcome": "billed" \| "not_billed"}` |
//!
//! Keys and teams from the config file are listed but not changed here (409): the file is
//! their source of truth. Every change invalidates the key's cache entry before answering, so
//! it applies to the key's next request.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::budget::Payer;
use crate::config::{KeySpec, TeamSpec};
use crate::error::{ApiError, PathId};
use crate::keys::{self, KeyRecord, Source, TeamRecord};
use crate::ledger::{self, GroupBy, UsageQuery};
use crate::state::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/keys", post(create_key).get(list_keys))
        .route(
            "/admin/keys/{id}",
            get(get_key).patch(update_key).delete(delete_key),
        )
        .route("/admin/keys/{id}/disable", post(disable_key))
        .route("/admin/keys/{id}/enable", post(enable_key))
        .route(
            "/admin/keys/{id}/webhook-secret",
            post(rotate_webhook_secret),
        )
        .route("/admin/teams", post(create_team).get(list_teams))
        .route(
            "/admin/teams/{id}",
            get(get_team).patch(update_team).delete(delete_team),
        )
        .route("/admin/usage", get(usage))
        .route("/admin/spend", get(spend))
        .route("/admin/upstream-keys", get(upstream_keys))
        .route("/admin/jobs", get(crate::api::jobs::admin_list))
        .route("/admin/jobs/{id}", get(crate::api::jobs::admin_get))
        .route("/admin/jobs/{id}/resolve", post(crate::api::jobs::resolve))
}

type AdminResult = Result<Response, ApiError>;

// === keys ===

fn key_view(state: &AppState, k: &KeyRecord) -> Value {
    let mut v = serde_json::to_value(&k.spec).unwrap_or_default();
    v["source"] = json!(k.source);
    v["created_at"] = json!(k.created_at);
    v["spend"] = json!(state.budgets.view(&Payer::Key(k.spec.id.clone())));
    v
}

async fn find_key(state: &AppState, id: &str) -> Result<KeyRecord, ApiError> {
    if let Some(k) = state.keys.static_key(id) {
        return Ok((*k).clone());
    }
    let stored = state
        .store()
        .key(id.to_owned())
        .await?
        .ok_or_else(|| ApiError::admin_not_found("key", id))?;
    let digest = hex::decode(&stored.digest)
        .ok()
        .and_then(|d| d.try_into().ok())
        .unwrap_or([0; 32]);
    Ok(KeyRecord::from_store(
        stored.spec,
        digest,
        stored.created_at,
    ))
}

async fn create_key(State(state): State<Arc<AppState>>, body: Bytes) -> AdminResult {
    let mut fields = object(&body)?;
    if fields.contains_key("key") || fields.contains_key("key_sha256") {
        return Err(ApiError::admin_invalid(
            "`key` and `key_sha256` cannot be set: the gateway generates the secret.",
        ));
    }
    if !fields.contains_key("id") {
        let suffix = &keys::generate_secret().map_err(|_| no_randomness())?[6..14];
        fields.insert("id".into(), json!(format!("key-{suffix}")));
    }
    let spec: KeySpec = parse(Value::Object(fields))?;
    check_key(&state, &spec)?;
    if state.keys.static_key(&spec.id).is_some()
        || state.store().key(spec.id.clone()).await?.is_some()
    {
        return Err(ApiError::conflict(format!(
            "A key with id `{}` exists.",
            spec.id
        )));
    }
    let secret = keys::generate_secret().map_err(|_| no_randomness())?;
    let webhook_secret = crate::webhooks::new_secret()?;
    let digest = keys::digest(&secret);
    state
        .store()
        .insert_key(spec.clone(), hex::encode(digest), webhook_secret.clone())
        .await?;
    // A digest tried before the key existed must not stay known as unknown.
    state.keys.invalidate(&digest);
    announce(&state).await;
    let record = KeyRecord::from_store(spec, digest, crate::store::now_secs());
    let mut view = key_view(&state, &record);
    view["secret"] = json!(secret);
    view["webhook_secret"] = json!(webhook_secret);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// `POST /admin/keys/{id}/webhook-secret`: a new secret for a dynamic key's webhooks, shown
/// once; deliveries from now on are signed with it.
async fn rotate_webhook_secret(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
) -> AdminResult {
    if state.keys.static_key(&id).is_some() {
        return Err(ApiError::conflict(format!(
            "Key `{id}` comes from the config file: set its `webhook_secret` there."
        )));
    }
    let secret = crate::webhooks::new_secret()?;
    if !state
        .store()
        .set_webhook_secret(id.clone(), secret.clone())
        .await?
    {
        return Err(ApiError::admin_not_found("key", &id));
    }
    Ok(Json(json!({ "id": id, "webhook_secret": secret })).into_response())
}

fn check_key(state: &AppState, spec: &KeySpec) -> Result<(), ApiError> {
    let mut problems = Vec::new();
    let known = |name: &str| state.config.knows_model(name);
    spec.check("key", &known, &mut problems);
    if let Some(team) = &spec.team {
        if state.keys.team(team).is_none() {
            problems.push(format!("key.team: no team with id `{team}`"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::admin_invalid(problems.join("; ")))
    }
}

async fn list_keys(State(state): State<Arc<AppState>>) -> AdminResult {
    state.budgets.refresh_all().await;
    let mut out: Vec<Value> = state
        .keys
        .static_keys()
        .iter()
        .map(|k| key_view(&state, k))
        .collect();
    for stored in state.store().keys().await? {
        let record = KeyRecord::from_store(stored.spec, [0; 32], stored.created_at);
        out.push(key_view(&state, &record));
    }
    Ok(Json(json!({ "keys": out })).into_response())
}

async fn get_key(State(state): State<Arc<AppState>>, PathId(id): PathId) -> AdminResult {
    state.budgets.refresh_all().await;
    let k = find_key(&state, &id).await?;
    Ok(Json(key_view(&state, &k)).into_response())
}

async fn update_key(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
    body: Bytes,
) -> AdminResult {
    let patch = object(&body)?;
    change_key(&state, &id, patch).await
}

async fn disable_key(State(state): State<Arc<AppState>>, PathId(id): PathId) -> AdminResult {
    let patch = Map::from_iter([("enabled".to_owned(), json!(false))]);
    change_key(&state, &id, patch).await
}

async fn enable_key(State(state): State<Arc<AppState>>, PathId(id): PathId) -> AdminResult {
    let patch = Map::from_iter([("enabled".to_owned(), json!(true))]);
    change_key(&state, &id, patch).await
}

async fn change_key(state: &AppState, id: &str, patch: Map<String, Value>) -> AdminResult {
    let current = find_key(state, id).await?;
    refuse_static(current.source, "key", id)?;
    if patch
        .keys()
        .any(|k| k == "id" || k == "key" || k == "key_sha256")
    {
        return Err(ApiError::admin_invalid(
            "`id`, `key` and `key_sha256` cannot be changed.",
        ));
    }
    let spec: KeySpec = parse(merge(&current.spec, patch))?;
    check_key(state, &spec)?;
    state.store().update_key(spec.clone()).await?;
    state.keys.invalidate(&current.digest);
    announce(state).await;
    let record = KeyRecord::from_store(spec, current.digest, current.created_at.unwrap_or(0));
    Ok(Json(key_view(state, &record)).into_response())
}

async fn delete_key(State(state): State<Arc<AppState>>, PathId(id): PathId) -> AdminResult {
    let current = find_key(&state, &id).await?;
    refuse_static(current.source, "key", &id)?;
    state.store().delete_key(id.clone()).await?;
    state.keys.invalidate(&current.digest);
    announce(&state).await;
    Ok(Json(json!({ "id": id, "deleted": true })).into_response())
}

/// Tells the other replicas that a key or team changed (they forget their cached keys and read
/// the teams again, see `replicas::follow_key_changes`). Redis away: they see it when it is back
/// (the version moves then), and a changed key is read again when its cache entry expires.
async fn announce(state: &AppState) {
    if let Some(cluster) = &state.cluster {
        if let Err(e) = cluster.announce_key_change().await {
            tracing::warn!(error = %e, "could not tell the other replicas about a key or team change");
        }
    }
}

// === teams ===

fn team_view(state: &AppState, t: &TeamRecord) -> Value {
    let mut v = serde_json::to_value(&t.spec).unwrap_or_default();
    v["source"] = json!(t.source);
    v["spend"] = json!(state.budgets.view(&Payer::Team(t.spec.id.clone())));
    v
}

fn find_team(state: &AppState, id: &str) -> Result<Arc<TeamRecord>, ApiError> {
    state
        .keys
        .team(id)
        .ok_or_else(|| ApiError::admin_not_found("team", id))
}

async fn create_team(State(state): State<Arc<AppState>>, body: Bytes) -> AdminResult {
    let spec: TeamSpec = parse(Value::Object(object(&body)?))?;
    check_team(&spec)?;
    if state.keys.team(&spec.id).is_some() {
        return Err(ApiError::conflict(format!(
            "A team with id `{}` exists.",
            spec.id
        )));
    }
    state.store().put_team(spec.clone()).await?;
    let record = TeamRecord::new(spec, Source::Admin);
    let view = team_view(&state, &record);
    state.keys.set_team(record);
    announce(&state).await;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

fn check_team(spec: &TeamSpec) -> Result<(), ApiError> {
    let mut problems = Vec::new();
    spec.check("team", &mut problems);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::admin_invalid(problems.join("; ")))
    }
}

async fn list_teams(State(state): State<Arc<AppState>>) -> AdminResult {
    state.budgets.refresh_all().await;
    let teams: Vec<Value> = state
        .keys
        .teams()
        .iter()
        .map(|t| team_view(&state, t))
        .collect();
    Ok(Json(json!({ "teams": teams })).into_response())
}

async fn get_team(State(state): State<Arc<AppState>>, PathId(id): PathId) -> AdminResult {
    state.budgets.refresh_all().await;
    let t = find_team(&state, &id)?;
    Ok(Json(team_view(&state, &t)).into_response())
}

async fn update_team(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
    body: Bytes,
) -> AdminResult {
    let current = find_team(&state, &id)?;
    refuse_static(current.source, "team", &id)?;
    let patch = object(&body)?;
    if patch.contains_key("id") {
        return Err(ApiError::admin_invalid("`id` cannot be changed."));
    }
    let spec: TeamSpec = parse(merge(&current.spec, patch))?;
    check_team(&spec)?;
    state.store().put_team(spec.clone()).await?;
    let record = TeamRecord::new(spec, Source::Admin);
    let view = team_view(&state, &record);
    state.keys.set_team(record);
    announce(&state).await;
    Ok(Json(view).into_response())
}

/// `DELETE /admin/teams/{id}[?force=true]`: refused (409) while keys name the team, since
/// deleting it would lift their team limits and budget; `force=true` deletes it anyway.
async fn delete_team(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
    Query(q): Query<HashMap<String, String>>,
) -> AdminResult {
    let force = match q.get("force").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::admin_invalid(format!(
                "force `{other}`: use true or false"
            )))
        }
    };
    let current = find_team(&state, &id)?;
    refuse_static(current.source, "team", &id)?;
    if !force {
        let mut members: Vec<String> = state
            .keys
            .static_keys()
            .iter()
            .filter(|k| k.spec.team.as_deref() == Some(id.as_str()))
            .map(|k| k.spec.id.clone())
            .collect();
        members.extend(
            state
                .store()
                .keys()
                .await?
                .into_iter()
                .filter(|k| k.spec.team.as_deref() == Some(id.as_str()))
                .map(|k| k.spec.id),
        );
        if !members.is_empty() {
            let n = members.len();
            return Err(ApiError::conflict(format!(
                "The team `{id}` still has {n} key{} ({}): move or delete {} first, or delete the \
                 team with `?force=true` (the keys then lose its limits and budget).",
                if n == 1 { "" } else { "s" },
                members.join(", "),
                if n == 1 { "it" } else { "them" },
            )));
        }
    }
    state.store().delete_team(id.clone()).await?;
    state.keys.remove_team(&id);
    announce(&state).await;
    Ok(Json(json!({ "id": id, "deleted": true })).into_response())
}

// === reports ===

async fn usage(
    State(state): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> AdminResult {
    let known = ["group_by", "from", "to", "key", "team", "model", "format"];
    if let Some(bad) = q.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::admin_invalid(format!(
            "unknown parameter `{bad}`: use {}",
            known.join(", ")
        )));
    }
    let group_by = GroupBy::parse_list(q.get("group_by").map_or("key", String::as_str))
        .map_err(ApiError::admin_invalid)?;
    for day in [q.get("from"), q.get("to")].into_iter().flatten() {
        if humantime::parse_rfc3339_weak(&format!("{day}T00:00:00Z")).is_err() {
            return Err(ApiError::admin_invalid(format!(
                "`{day}` is not a day like 2026-01-31"
            )));
        }
    }
    let query = UsageQuery {
        group_by: group_by.clone(),
        from: q.get("from").cloned(),
        to: q.get("to").cloned(),
        key: q.get("key").cloned(),
        team: q.get("team").cloned(),
        model: q.get("model").cloned(),
    };
    let rows = state.store().usage(query).await?;
    match q.get("format").map(String::as_str) {
        Some("csv") => Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            ledger::usage_csv(&group_by, &rows),
        )
            .into_response()),
        None | Some("json") => Ok(Json(ledger::usage_json(&group_by, &rows)).into_response()),
        Some(other) => Err(ApiError::admin_invalid(format!(
            "format `{other}`: use json or csv"
        ))),
    }
}

async fn spend(State(state): State<Arc<AppState>>) -> AdminResult {
    state.budgets.refresh_all().await;
    let budget = |monthly: Option<f64>, total: Option<f64>| json!({ "monthly_budget_usd": monthly, "total_budget_usd": total });
    let mut specs: Vec<KeySpec> = state
        .keys
        .static_keys()
        .iter()
        .map(|k| k.spec.clone())
        .collect();
    specs.extend(state.store().keys().await?.into_iter().map(|k| k.spec));
    let keys: Vec<Value> = specs
        .into_iter()
        .map(|k| {
            let mut v = budget(k.monthly_budget_usd, k.total_budget_usd);
            v["team"] = json!(k.team);
            v["spend"] = json!(state.budgets.view(&Payer::Key(k.id.clone())));
            v["id"] = json!(k.id);
            v
        })
        .collect();
    let teams: Vec<Value> = state
        .keys
        .teams()
        .iter()
        .map(|t| {
            let mut v = budget(t.spec.monthly_budget_usd, t.spec.total_budget_usd);
            v["id"] = json!(t.spec.id);
            v["spend"] = json!(state.budgets.view(&Payer::Team(t.spec.id.clone())));
            v
        })
        .collect();
    Ok(Json(json!({ "keys": keys, "teams": teams })).into_response())
}

async fn upstream_keys(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({ "keys": state.upstream.pool.view() }))
}

// === helpers ===

fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(ApiError::admin_invalid("The body must be a JSON object.")),
    }
}

fn parse<T: DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        ApiError::admin_invalid(format!("{path}: {}", e.into_inner()))
    })
}

/// `current` with `patch` applied: a field set to `null` is cleared.
fn merge<T: Serialize>(current: &T, patch: Map<String, Value>) -> Value {
    let mut v = serde_json::to_value(current).unwrap_or_default();
    if let Value::Object(m) = &mut v {
        for (k, val) in patch {
            if val.is_null() {
                m.remove(&k);
            } else {
                m.insert(k, val);
            }
        }
    }
    v
}

fn refuse_static(source: Source, what: &str, id: &str) -> Result<(), ApiError> {
    match source {
        Source::Admin => Ok(()),
        Source::Config => Err(ApiError::conflict(format!(
            "The {what} `{id}` is defined in the config file; change it there."
        ))),
    }
}

fn no_randomness() -> ApiError {
    ApiError::internal("The gateway could not generate a key.")
}
