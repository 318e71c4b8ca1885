//! The benchmark's floor for a Rust hop: the gateway's own HTTP stack (tokio, hyper through
//! axum, reqwest) forwarding a request to the upstream and its answer back, with nothing else —
//! no auth, limits, store, metrics or log. The benchmark measures it next to nginx and the
//! gateway to tell the stack's cost from the gateway's own.
//!
//! `bare_hop LISTEN UPSTREAM_BASE` (e.g. `127.0.0.1:8081 http://127.0.0.1:8080`).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt as _;
use std::sync::Arc;

struct Hop {
    client: reqwest::Client,
    upstream: String,
}

async fn forward(State(hop): State<Arc<Hop>>, headers: HeaderMap, body: Bytes) -> Response {
    let mut req = hop.client.post(&hop.upstream).body(body);
    for name in [
        axum::http::header::CONTENT_TYPE,
        axum::http::header::AUTHORIZATION,
    ] {
        if let Some(v) = headers.get(&name) {
            req = req.header(name, v);
        }
    }
    let res = match req.send().await {
        Ok(res) => res,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = res.status();
    let ct = res.headers().get(axum::http::header::CONTENT_TYPE).cloned();
    match res.bytes().await {
        Ok(bytes) => {
            let mut out = (status, bytes).into_response();
            if let Some(ct) = ct {
                out.headers_mut()
                    .insert(axum::http::header::CONTENT_TYPE, ct);
            }
            out
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(base)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: bare_hop LISTEN UPSTREAM_BASE");
    };
    let hop = Arc::new(Hop {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?,
        upstream: format!("{}/api/v1/images/generations", base.trim_end_matches('/')),
    });
    let app = axum::Router::new()
        .fallback(axum::routing::post(forward))
        .with_state(hop);
    // No Nagle delay on answers, as in the gateway and nginx (`tcp_nodelay`).
    let listener = tokio::net::TcpListener::bind(&listen).await?.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}
