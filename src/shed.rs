//! Load shedding: at most `server.max_in_flight` requests are served at once. Past that, a
//! request is answered 503 `server_overloaded` with `retry-after: 1` before anything else is
//! done with it — no body read, no key lookup, no parse. A request stays in flight until the last
//! byte of its answer (a streamed answer included). The operator's probes (`/healthz`, `/readyz`,
//! `/metrics`) are never shed: an overloaded gateway must still say so.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use tokio::sync::Semaphore;

use crate::auth::PUBLIC_ROUTES;
use crate::error::ApiError;

/// Refuses a request over the in-flight limit; holds a slot for the others until their answer's
/// body ends.
pub async fn shed(State(slots): State<Arc<Semaphore>>, req: Request, next: Next) -> Response {
    if PUBLIC_ROUTES.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let Ok(slot) = slots.try_acquire_owned() else {
        return ApiError::overloaded().into_response();
    };
    // The slot lives as long as the answer's body: it is dropped with it.
    next.run(req).await.map(|body| {
        Body::new(body.map_frame(move |frame| {
            let _held = &slot;
            frame
        }))
    })
}
