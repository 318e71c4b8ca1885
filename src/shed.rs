//! Load shedding: at most `server.max_in_flight` requests are served at once. Past that, a
//! request is answered 503 `server_overloaded` with `retry-after: 1` before anything else is
//! done with it — no body read, no key lookup, no parse. A request stays in flight until the last
//! byte of its answer (a streamed answer included). The operator's probes (`/healthz`, `/readyz`,
//! `/metrics`) are never shed: an overloaded gateway must still say so.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Span;

use crate::auth::PUBLIC_ROUTES;
use crate::error::ApiError;
use crate::hook::{After, Before, Hook};

/// Refuses a request over the in-flight limit; holds a slot for the others until their answer's
/// body ends.
#[derive(Clone)]
pub struct Shed(pub Arc<Semaphore>);

impl Hook for Shed {
    type After = Slot;

    fn before(&self, req: &mut Request) -> Before<Slot> {
        if PUBLIC_ROUTES.contains(&req.uri().path()) {
            return Before::Call(Slot(None), Span::none());
        }
        match self.0.clone().try_acquire_owned() {
            Ok(slot) => Before::Call(Slot(Some(slot)), Span::none()),
            Err(_) => Before::Answer(ApiError::overloaded().into_response()),
        }
    }
}

/// A request's slot (none for the probes), handed to its answer's body.
pub struct Slot(Option<OwnedSemaphorePermit>);

impl After for Slot {
    fn after(self, res: Response) -> Response {
        let Some(slot) = self.0 else { return res };
        let (parts, body) = res.into_parts();
        Response::from_parts(
            parts,
            Body::new(Held {
                inner: body,
                _slot: slot,
            }),
        )
    }
}

/// An answer's body holding its request's slot until it is dropped. Its own type rather than
/// `map_frame`, which would drop the body's exact size hint (and with it `Content-Length`).
struct Held {
    inner: Body,
    _slot: OwnedSemaphorePermit,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
