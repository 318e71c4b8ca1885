//! The upstream simulator (`imagegate sim`): a faithful stand-in for the image platform described in
//! `UPSTREAM.md`, used for offline development, the demo, tests and benchmarks.
//!
//! Public surface (used by `main.rs`, `demo.rs` and the tests):
//! - [`SimConfig`]: what the simulator accepts and how fast it runs.
//! - [`serve`]: run it on a listener the caller bound, until `shutdown` resolves.

use std::future::Future;

use serde::{Deserialize, Serialize};

/// How the simulator behaves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimConfig {
    /// The bearer key the simulator accepts (`Authorization: Bearer <api_key>`).
    pub api_key: String,
    /// Base URL used in result file links (`{public_base_url}/files/…`). `None`: `http://<listener addr>`.
    pub public_base_url: Option<String>,
    /// Multiplies every simulated latency: `1.0` is realistic, `0.01` makes a 2-minute task take 1.2 s.
    pub time_scale: f64,
}

/// Serves the simulator on `listener` until `shutdown` resolves.
pub async fn serve(
    _config: SimConfig,
    _listener: tokio::net::TcpListener,
    _shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    Err(std::io::Error::other("simulator not built yet"))
}
