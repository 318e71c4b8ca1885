//! The OpenAI-compatible surface. Every route is served with and without the `/v1` prefix,
//! because the SDKs append paths to whatever `base_url` the user gave. `/admin/*` is the
//! operator's (admin key, see `auth`).

mod body;
pub(crate) mod edits;
mod images;
pub(crate) mod jobs;
mod me;
mod models;
pub(crate) mod ops;
mod passthrough;
mod quote;
mod upstreams;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::state::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    let api = Router::new()
        .route("/images/generations", post(images::generations))
        .route("/images/edits", post(images::edits))
        .route("/images/jobs", get(jobs::list))
        .route("/images/jobs/{id}", get(jobs::get))
        .route("/images/quote", post(quote::quote))
        .route("/me", get(me::me))
        .route("/responses", post(passthrough::responses))
        .route("/chat/completions", post(passthrough::chat_completions))
        .route("/models", get(models::list))
        .route("/models/{id}", get(models::retrieve));
    Router::new()
        .nest("/v1", api.clone())
        .merge(api)
        .route("/admin/upstreams", get(upstreams::list))
}
