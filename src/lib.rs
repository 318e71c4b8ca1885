//! imagegate: an OpenAI-compatible gateway for image generation.
//!
//! # Layout
//! Read top to bottom:
//! - [`serve`] (here): binds nothing, takes a listener and a shutdown future — tests run it on
//!   port 0, `main` on the configured address with SIGTERM/ctrl-c.
//! - [`app`]: shared state and the one documented middleware stack.
//! - `api`: the OpenAI routes (`images`, `edits`, `models`).
//! - [`request`]: the normalised [`request::ImageRequest`] every wire form becomes.
//! - [`upstream`]: the platform client, failure classification, one adapter per upstream shape,
//!   the async task engine and result downloads.
//! - [`error`]: the error policy and the OpenAI error envelope.
//! - The team gateway: [`keys`] (client keys and teams), [`limits`] (rate and concurrency),
//!   [`budget`] (reserve/settle), [`ledger`] (one row per request, usage reports), [`store`]
//!   (SQLite), [`admin`] (`/admin/*`; the `keys`/`teams`/`usage` commands that call it live with
//!   the binary, in `src/cli.rs`).
//! - [`metrics`]: every Prometheus series, declared in one file; the HTTP metrics middleware.
//! - [`config`]: typed configuration; [`demo`]: the demo's configuration, and with the default
//!   `demo` feature the simulator and the gateway together. The upstream simulator is its own
//!   crate, `imagegate-sim` (`crates/imagegate-sim`), a dependency only of that feature and of
//!   the tests.

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
