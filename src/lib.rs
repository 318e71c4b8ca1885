//! imagegate: an OpenAI-compatible gateway for image generation.
//!
//! # Where to look
//!
//! | to change… | open |
//! |---|---|
//! | how the server starts and stops | [`serve`] (here), `main.rs` |
//! | client connections: timeouts for slow clients, connection caps, the drain | [`server`] |
//! | the middleware stack, in order | [`app`] (the numbered layer table) |
//! | an OpenAI route: parsing and the answer's shape | `api/images.rs`, `api/edits.rs` |
//! | the text pass-through (`/v1/responses`, `/v1/chat/completions`) | `api/passthrough.rs` (admit, reserve, book), `upstream/text/` (the call and the relay) |
//! | the MCP server (`imagegate mcp`, `/mcp`) | [`mcp`] |
//! | the web console (`/ui/`) | [`ui`] (serving), `ui/` in the repository (the page) |
//! | what happens to an image request, start to end | [`dispatch`] — admit, choose, plan, reserve, execute with failover, settle, results, close |
//! | which model serves a request | [`routing`] (pure choice), [`catalog`] (what a model can do) |
//! | a model: its id, catalog row, price rule, timings | [`model::registry`] — plus its adapter `upstream/<model>.rs` |
//! | how the platform is called and its answers classified | [`upstream`], `upstream/classify.rs`, [`upstream::failure`] |
//! | prices | [`pricing`]; money is [`model::Usd`] (exact micro-dollars) |
//! | keys, limits, budgets, the ledger | [`keys`], [`limits`], [`budget`], [`ledger`], [`store`] |
//! | an error a client sees | [`error`] ([`error::ErrorCode`]: status, type, fault, retry advice) |
//! | metrics and logs | [`metrics`], the access log in [`app`] |
//! | the operator's API | [`admin`]; the `imagegate keys|teams|usage` commands are `cli.rs`, beside `main.rs` |
//! | configuration | [`config`] |
//!
//! The upstream simulator is its own crate, `imagegate-sim` (`crates/imagegate-sim`), used by
//! `imagegate sim`/`demo` (the default `demo` feature: [`demo`]) and by the tests.
//!
//! # Untrusted bytes
//!
//! Modules that read what clients or the platform send — request parsing, multipart, image
//! headers (`model/image.rs`), transcoding, result downloads, body limits — deny
//! `clippy::indexing_slicing` and `clippy::arithmetic_side_effects`: every index and size sum is
//! checked there. Everywhere, an `#[allow]` carries its `reason`.
//!
//! # Layers
//!
//! Each module belongs to a layer and imports only from layers with a lower number (or its
//! own): no module reaches up. `tests/layers.rs` fails on any `crate::` path, in a `use` or
//! inline, that points to a higher layer than its file's.
//!
//! | layer | modules |
//! |---|---|
//! | L0 domain | [`model`] (ids, sizes, formats, money, routes, the model registry), [`upstream::failure`], [`failpoint`] |
//! | L1 | [`config`], [`error`], [`hook`] (middleware without a boxed future) |
//! | L2 | [`request`] (parsing), [`metrics`] |
//! | L3 | [`pricing`], [`catalog`], [`upstream`] (adapters), [`store`], [`ledger`], [`cluster`] (Redis) |
//! | L4 | [`keys`], [`limits`], [`budget`] |
//! | L5 | [`routing`] (a pure choice) |
//! | L6 | [`dispatch`] |
//! | L7 | [`state`], [`auth`], `api`, [`admin`], `drain`, `shed`, [`jobs`], [`replicas`], [`webhooks`], [`mcp`], [`ui`] |
//! | L8 | [`app`] (router and middleware), [`serve`] and [`server`] (connections), [`demo`], `main` |

pub mod admin;
mod api;
pub mod app;
pub mod auth;
pub mod budget;
pub mod catalog;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod dispatch;
mod drain;
pub mod error;
pub mod failpoint;
pub mod hook;
pub mod jobs;
pub mod keys;
pub mod ledger;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod model;
pub mod pricing;
pub mod replicas;
pub mod request;
pub mod routing;
pub mod server;
mod shed;
pub mod state;
pub mod store;
pub mod ui;
pub mod upstream;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Longest a stopping process waits for its last writes.
const FINAL_FLUSH: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves the gateway on `listener` until `shutdown` resolves, then stops accepting and lets
/// in-flight requests finish for up to `server.drain_timeout`. Jobs still running then are left
/// in the store, for the next process to resume. Connections, their limits and timeouts: [`server`].
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let server_config = config.server.clone();
    let drain = server_config.drain_timeout;
    let state = Arc::new(state::AppState::new(config).await?);
    // Jobs the last process left unfinished are followed to their end (and settled) again.
    let resumed = state.jobs.resume_all(&state).await?;
    if resumed > 0 {
        tracing::info!(jobs = resumed, "resumed unfinished jobs");
    }
    // Built once: every connection and request uses this router (a reference count per request).
    let router = app::build_router(state.clone());
    let stopping = CancellationToken::new();
    let signal = {
        let stopping = stopping.clone();
        let state = state.clone();
        async move {
            shutdown.await;
            state.jobs.drain();
            tracing::info!(
                drain_secs = drain.as_secs(),
                "shutdown requested; draining in-flight requests"
            );
            stopping.cancel();
        }
    };
    // Webhooks from the store's outbox, until the server has stopped.
    let delivering = CancellationToken::new();
    let webhooks = webhooks::deliver(state.clone(), delivering.clone().cancelled_owned());
    // Replicas sharing a store: renew this one's job claims, take over lapsed ones.
    let claims = replicas::claims(state.clone(), delivering.clone().cancelled_owned());
    let keys = replicas::follow_key_changes(state.clone(), delivering.clone().cancelled_owned());
    let circuits = replicas::share_circuits(state.clone(), delivering.clone().cancelled_owned());
    // Redis: concurrency slots given back and renewed.
    let slots = {
        let cluster = state.cluster.clone();
        let stop = delivering.clone();
        async move {
            if let Some(cluster) = cluster {
                tokio::select! {
                    () = cluster.keep_slots() => {}
                    () = stop.cancelled() => {}
                }
            }
        }
    };
    // `run` returns once `stopping` is cancelled and the drain is over.
    let serving = async {
        server::run(&server_config, listener, router, stopping).await;
        delivering.cancel();
    };
    tokio::join!(signal, serving, webhooks, claims, keys, slots, circuits);
    // Jobs still running are stopped where they are: their state is in the store, and the next
    // process resumes them.
    state.jobs.stop().await;
    // Every ledger row of the requests served is on disk before the process goes — unless the
    // database stays away: then the process goes after `FINAL_FLUSH`, and what it could not
    // write is what another replica (or the next process) settles from the jobs' own records.
    if tokio::time::timeout(FINAL_FLUSH, state.store().flush())
        .await
        .is_err()
    {
        tracing::error!(
            waited_s = FINAL_FLUSH.as_secs(),
            "the database did not take the last writes before shutdown; unfinished jobs are settled by the next process"
        );
    }
    Ok(())
}
