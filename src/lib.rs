//! imagegate: an OpenAI-compatible gateway for image generation.
//!
//! # Where to look
//!
//! | to change… | open |
//! |---|---|
//! | how the server starts and stops | [`serve`] (here), `main.rs` |
//! | the middleware stack, in order | [`app`] (the numbered layer table) |
//! | an OpenAI route: parsing and the answer's shape | `api/images.rs`, `api/edits.rs` |
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
//! # Layers
//!
//! Each module belongs to a layer and imports only from layers with a lower number (or its
//! own): no module reaches up. `tests/layers.rs` fails on any `crate::` path, in a `use` or
//! inline, that points to a higher layer than its file's.
//!
//! | layer | modules |
//! |---|---|
//! | L0 domain | [`model`] (ids, sizes, formats, money, routes, the model registry), [`upstream::failure`] |
//! | L1 | [`config`], [`error`] |
//! | L2 | [`request`] (parsing), [`metrics`] |
//! | L3 | [`pricing`], [`catalog`], [`upstream`] (adapters), [`store`], [`ledger`] |
//! | L4 | [`keys`], [`limits`], [`budget`] |
//! | L5 | [`routing`] (a pure choice) |
//! | L6 | [`dispatch`] |
//! | L7 | [`state`], [`auth`], `api`, [`admin`], `drain`, `shed` |
//! | L8 | [`app`] (router and middleware), [`serve`], [`demo`], `main` |

pub mod admin;
mod api;
pub mod app;
pub mod auth;
pub mod budget;
pub mod catalog;
pub mod config;
pub mod demo;
pub mod dispatch;
mod drain;
pub mod error;
pub mod keys;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod pricing;
pub mod request;
pub mod routing;
mod shed;
pub mod state;
pub mod store;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Serves the gateway on `listener` until `shutdown` resolves, then stops accepting and lets
/// in-flight requests (including ones waiting on upstream tasks) finish for up to
/// `server.drain_timeout`.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let drain = config.server.drain_timeout;
    let state = Arc::new(state::AppState::new(config)?);
    let router = app::build_router(state.clone());
    let stopping = CancellationToken::new();
    let signal = {
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            tracing::info!(
                drain_secs = drain.as_secs(),
                "shutdown requested; draining in-flight requests"
            );
            stopping.cancel();
        }
    };
    // Answers are written whole (or as a few large buffers): send the last segment at once
    // rather than wait for the client's ACK of the previous one.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY on a client connection");
        }
    });
    // `into_make_service` resolves the routes once; serving the `Router` itself would rebuild its
    // route table for every connection (about 20 KiB each, held while the connection lives).
    let server = axum::serve(listener, router.into_make_service()).with_graceful_shutdown(signal);
    tokio::select! {
        result = server => result?,
        () = async { stopping.cancelled().await; tokio::time::sleep(drain).await } => {
            tracing::warn!("drain timeout reached; abandoning remaining requests");
        }
    }
    // Every ledger row of the requests served is on disk before the process goes.
    state.store().flush().await;
    Ok(())
}
