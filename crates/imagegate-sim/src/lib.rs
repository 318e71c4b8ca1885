//! The upstream simulator (`imagegate sim`): a faithful stand-in for the image platform described in
//! `UPSTREAM.md`, used for offline development, the demo, tests and benchmarks.
//!
//! Its own crate, so the gateway library does not carry it: `imagegate` uses it behind its
//! default `demo` feature (`imagegate sim`, `imagegate demo`) and in its tests.
//!
//! Public surface (used by the gateway's `main.rs` and `demo.rs`, and the tests):
//! - [`SimConfig`]: what the simulator accepts and how fast it runs.
//! - [`serve`]: run it on a listener the caller bound, until `shutdown` resolves.
//! - [`router`]: the same routes as a bare [`axum::Router`] (no shutdown wiring), for embedding.
//!
//! Layout of the crate:
//! - `api`: the `/api/v1` gate (request recording, bearer auth) and the error body type.
//! - `generations`: `POST /api/v1/images/generations` dispatch, `gpt-image-2-lite` and `gpt-image-2-beta`.
//! - `gpt_all`: `gpt-image-2-all` on the JSON endpoint (sync and async modes).
//! - `edits`: `POST /api/v1/images/edits` (multipart, OpenAI `images.edit()` shape).
//! - `sparkpix`: the two SparkPix endpoints.
//! - `jobs`: task store, the job runner shared by every model, and the poll endpoint.
//! - `callbacks`: webhook delivery with the documented retry schedule.
//! - `files`, `render`: result files (real PNG/JPEG bytes) and their in-memory store.
//! - `faults`: prompt directives (`[sim:…]`) and the per-model fault table.
//! - `delivery`, `transport`: faults on a create's answer once its task exists (`reset`,
//!   `truncate`, `stallcreate`), and the listener that lets a handler reset its connection.
//! - `billing`: what the platform would charge, reported in the stats.
//! - `sizes`, `params`: size rules and request field parsing.
//! - `control`: the unauthenticated `/_sim/*` endpoints (faults, request log, stats, reset).
//!
//! Benchmark knobs (used by `bench/run.sh`; every answer keeps the platform's shapes):
//! - `--time-scale 0` makes every simulated latency zero (sync models answer at once).
//! - `[sim:slow=SECS]` in a prompt fixes that request's generation latency (not scaled), e.g.
//!   `[sim:slow=30]` for an async task that completes 30 s after its creation.
//! - `[sim:filebytes=N]` makes the PNG result files exactly N bytes long (a solid picture of the
//!   requested size padded with a private ancillary chunk), so a `b64_json` answer carries
//!   4·N/3 bytes of base64 whatever the picture size: `768` gives a ~1 KB answer,
//!   `1572864` a 2 MiB one.
//!
//! Faults on an accepted create (the task is created, runs, can be polled and is billed as its
//! outcome says; see `faults` and `delivery`):
//! - `[sim:reset]`: the connection is reset once the answer is ready (at once for async creates,
//!   after the generation for sync ones) and no byte of it is written: a reqwest `send()` fails.
//!   `GET /_sim/stats` lists the ids of the tasks created (`task_ids`) to find the task.
//! - `[sim:truncate]`: the status and headers arrive with the full body's `Content-Length`, then
//!   half the body and the connection closes: `send()` succeeds, reading the body fails.
//! - `[sim:stallcreate=SECS]`: the answer is held SECS more seconds (not scaled), released with a
//!   503 on shutdown.
//! - `[sim:nofile=N]`: each result file answers 404 to its first N downloads, then is served
//!   (plain `[sim:nofile]`: never stored, always 404).
//!
//! `GET /_sim/stats` reports billing too: `tasks_billed`, `billed_micros` and `billed_by_model`
//! (micro-dollars per model name): every task that completed successfully, at the model's
//! price per image (see `billing`); failed tasks are not billed, and the faults above do not
//! change billing (the work was done).

mod api;
mod billing;
mod callbacks;
mod control;
mod delivery;
mod edits;
mod faults;
mod files;
mod generations;
mod gpt_all;
mod jobs;
mod params;
mod render;
mod sizes;
mod sparkpix;
mod state;
mod transport;

use std::future::Future;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};

use self::state::Shared;
use self::transport::{ConnHandle, SimListener};

/// How the simulator behaves.
///
/// Every simulated duration (generation latency, pending phase, callback backoff and re-send
/// window) is multiplied by `time_scale`; durations given explicitly in prompt directives
/// (`[sim:slow=SECS]`, `[sim:slowfile=SECS]`) are not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimConfig {
    /// The bearer key the simulator accepts (`Authorization: Bearer <api_key>`).
    pub api_key: String,
    /// Base URL used in result file links (`{public_base_url}/files/…`). `None`: `http://<listener addr>`.
    pub public_base_url: Option<String>,
    /// Multiplies every simulated latency: `1.0` is realistic, `0.01` makes a 2-minute task take 1.2 s.
    /// Must be finite and not negative; `0.0` makes everything immediate.
    pub time_scale: f64,
}

/// Largest accepted request body (16 reference images of a few MiB each fit comfortably).
const BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Serves the simulator on `listener` until `shutdown` resolves.
///
/// On shutdown, pending tasks, callback deliveries and requests held open by `[sim:stuck]`,
/// `[sim:slowfile=…]` or `[sim:stallcreate=…]` are stopped, and the function returns once they
/// are gone.
pub async fn serve(
    config: SimConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    check_config(&config)?;
    let base_url = match &config.public_base_url {
        Some(url) => url.clone(),
        None => format!("http://{}", listener.local_addr()?),
    };
    let shared = Arc::new(Shared::new(config, base_url));
    let app = build(shared.clone()).into_make_service_with_connect_info::<ConnHandle>();
    let cancel = shared.cancel.clone();
    let signal = async move {
        shutdown.await;
        cancel.cancel();
    };
    let served = axum::serve(SimListener(listener), app)
        .with_graceful_shutdown(signal)
        .await;
    // The server can also stop on its own (listener error): stop the background work either way.
    shared.cancel.cancel();
    shared.tracker.close();
    shared.tracker.wait().await;
    served
}

/// The simulator's routes, with result links under `base_url` (e.g. `http://127.0.0.1:8090`).
///
/// Background work (pending tasks, callbacks) started through this router is never cancelled:
/// prefer [`serve`], which stops it on shutdown. Without `serve`'s listener, `[sim:reset]` cannot
/// drop the connection before the answer: the answer's body fails at once instead.
pub fn router(config: SimConfig, base_url: String) -> Router {
    build(Arc::new(Shared::new(config, base_url)))
}

fn check_config(config: &SimConfig) -> std::io::Result<()> {
    if !config.time_scale.is_finite() || config.time_scale < 0.0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "time_scale must be a finite number >= 0, got {}",
                config.time_scale
            ),
        ));
    }
    Ok(())
}

fn build(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route(
            "/api/v1/images/generations",
            post(generations::create).get(jobs::poll),
        )
        .route("/api/v1/images/edits", post(edits::edit))
        .route("/api/v1/images/generations-sync", post(sparkpix::image))
        .route("/api/v1/images/edit", post(sparkpix::edit))
        .route("/api/v1/{*rest}", axum::routing::any(api::not_found))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            delivery::deliver,
        ))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            api::gate,
        ));
    Router::new()
        .route("/files/{name}", get(files::download))
        .route(
            "/_sim/faults",
            get(control::get_faults).post(control::set_faults),
        )
        .route("/_sim/accounts", post(control::set_accounts))
        .route("/_sim/requests", get(control::requests))
        .route("/_sim/stats", get(control::stats))
        .route("/_sim/reset", post(control::reset))
        .merge(api)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(shared)
}
