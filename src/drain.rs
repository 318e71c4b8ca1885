//! Reads what a handler left of the request body before the response goes out.
//!
//! A handler may answer before the body is fully read: auth refuses an upload, validation stops at
//! the 17th image, or a streaming client (the Node SDK) sends the final chunk of a chunked body a
//! moment after the multipart data ended. If the connection then closes with unread bytes in the
//! socket, the kernel resets it and the client loses the response. So the body is shared between
//! the handler and this layer: whatever the handler did not read is read (and discarded) here,
//! within a byte budget and a time limit, and only then is the response returned.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;

/// Longest wait for the rest of a body the handler did not read.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// A body shared with the middleware: the handler reads through it, the middleware reads the rest.
struct SharedBody(Arc<Mutex<Body>>);

impl http_body::Body for SharedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut body = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Pin::new(&mut *body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .size_hint()
    }
}

/// Middleware: see the module docs. `budget` is the most it reads after the handler is done.
pub async fn drain_unread_body(budget: usize, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let shared = Arc::new(Mutex::new(body));
    let req = Request::from_parts(parts, Body::new(SharedBody(shared.clone())));
    let res = next.run(req).await;
    let rest = std::mem::take(&mut *shared.lock().unwrap_or_else(PoisonError::into_inner));
    let drain = async move {
        let mut read = 0usize;
        let mut rest = rest;
        while let Some(Ok(frame)) = rest.frame().await {
            read += frame.data_ref().map_or(0, Bytes::len);
            if read > budget {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
    res
}
